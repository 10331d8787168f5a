"""Pure parts of ComfyClient: ids and URLs (no server)."""

from __future__ import annotations

from comfyfleet.comfy import ComfyClient


async def test_each_client_has_its_own_client_id_and_socket_url():
    async with ComfyClient("http://10.0.0.7:8188/") as a, ComfyClient("http://10.0.0.7:8188") as b:
        assert a.client_id != b.client_id and len(a.client_id) == 32
        assert a.ws_url() == f"ws://10.0.0.7:8188/ws?clientId={a.client_id}"
        assert a.ws_url("other") == "ws://10.0.0.7:8188/ws?clientId=other"


async def test_tls_and_path_prefix_are_kept():
    async with ComfyClient("https://pods.example/comfy/api", client_id="w1") as client:
        assert client.client_id == "w1"
        assert client.ws_url() == "wss://pods.example/comfy/api/ws?clientId=w1"
