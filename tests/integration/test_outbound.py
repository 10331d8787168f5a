"""The outbound policy against real sockets: loopback refused unless allow-listed, redirects re-checked,
limits enforced, and TLS to the checked address with the certificate checked against the name."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyfleet.net.fetch import FetchError, fetch
from comfyfleet.net.policy import UrlPolicy, UrlPolicyError
from tests.support.receiver import Receiver, Reply, self_signed


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


ALLOW_LOOPBACK = UrlPolicy.build(["127.0.0.1"], timeout_seconds=5)


async def test_loopback_is_refused_by_default_and_reached_when_allow_listed(receiver: Receiver) -> None:
    with pytest.raises(UrlPolicyError, match="plain http"):
        await fetch(receiver.url + "/x", UrlPolicy())
    with pytest.raises(UrlPolicyError, match="loopback"):
        await fetch(receiver.url + "/x", UrlPolicy(allow_http=True))
    with pytest.raises(UrlPolicyError, match="loopback"):  # a name is judged by what it resolves to
        await fetch(f"http://localhost:{receiver.port}/x", UrlPolicy(allow_http=True))
    assert receiver.received == [], "nothing was sent to a refused address"
    result = await fetch(receiver.url + "/x", ALLOW_LOOPBACK, method="POST", content=b"hi",
                         headers={"x-test": "1"})
    assert result.status == 200 and result.body == b"ok"
    [got] = receiver.received
    assert (got.method, got.body, got.headers["x-test"]) == ("POST", b"hi", "1")
    assert got.headers["host"] == f"127.0.0.1:{receiver.port}"


async def test_redirects_are_followed_only_under_the_policy(receiver: Receiver) -> None:
    receiver.routes["/hop"] = Reply(302, b"", {"location": "/final"})
    receiver.routes["/final"] = Reply(200, b"landed")
    receiver.routes["/escape"] = Reply(307, b"", {"location": "http://169.254.169.254/latest/meta-data/"})
    receiver.routes["/inside"] = Reply(307, b"", {"location": f"http://127.0.0.2:{receiver.port}/final"})
    receiver.routes["/loop"] = Reply(302, b"", {"location": "/loop"})
    result = await fetch(receiver.url + "/hop", ALLOW_LOOPBACK)
    assert (result.status, result.body, result.url) == (200, b"landed", receiver.url + "/final")
    with pytest.raises(UrlPolicyError, match="plain http"):
        await fetch(receiver.url + "/escape", ALLOW_LOOPBACK)
    with_http = UrlPolicy.build(["127.0.0.1"], allow_http=True, timeout_seconds=5)
    with pytest.raises(UrlPolicyError, match="metadata"):
        await fetch(receiver.url + "/escape", with_http)
    with pytest.raises(UrlPolicyError, match="loopback"):
        await fetch(receiver.url + "/inside", with_http)
    with pytest.raises(FetchError, match="redirects"):
        await fetch(receiver.url + "/loop", ALLOW_LOOPBACK)


async def test_size_and_time_limits(receiver: Receiver) -> None:
    receiver.routes["/big"] = Reply(200, b"x" * 5000)
    receiver.routes["/slow"] = Reply(200, b"late", delay=3)
    small = UrlPolicy.build(["127.0.0.1"], max_bytes=4096, timeout_seconds=1)
    with pytest.raises(FetchError, match="limit of 4096"):
        await fetch(receiver.url + "/big", small)
    with pytest.raises(FetchError, match="within 1 s"):
        await fetch(receiver.url + "/slow", small)


async def test_tls_goes_to_the_checked_address_and_verifies_the_name(tmp_path: Path) -> None:
    """hooks.test resolves (by our resolver) to loopback once; the request reaches that address over TLS with
    SNI and the certificate check on hooks.test, so no second DNS answer is ever consulted."""
    server_ctx, client_ctx = self_signed(tmp_path, "hooks.test")
    server = Receiver(tls=server_ctx)
    lookups: list[str] = []

    async def resolver(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        lookups.append(host)
        return [ipaddress.ip_address("127.0.0.1")]

    try:
        policy = UrlPolicy.build(["hooks.test"], timeout_seconds=5)
        result = await fetch(f"https://hooks.test:{server.port}/in", policy, verify=client_ctx, resolver=resolver)
        assert result.status == 200 and lookups == ["hooks.test"]
        assert server.received[0].headers["host"] == f"hooks.test:{server.port}"
        wrong = UrlPolicy.build(["other.test"], timeout_seconds=5)
        with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED|certificate|hostname"):
            await fetch(f"https://other.test:{server.port}/in", wrong, verify=client_ctx, resolver=resolver)
        with pytest.raises(UrlPolicyError, match="loopback"):  # the name is not trusted: its address is checked
            await fetch(f"https://hooks.test:{server.port}/in", UrlPolicy(), verify=client_ctx, resolver=resolver)
    finally:
        server.stop()
