"""Fault tests with real processes (issue 9): the TCP proxy utility, and the API restarted under streaming clients.

The dispatcher-dependent faults (Redis restart with AOF, output store failing, hung pod, network faults
between dispatcher and pod through TcpProxy) belong with the new dispatcher; see RELIABILITY.md.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.support.stack import ALICE, FINAL, auth
from tests.support.tcpproxy import TcpProxy


def test_tcp_proxy_passes_delays_stalls_and_resets(sim_factory):
    sim = sim_factory()
    proxy = TcpProxy("127.0.0.1", sim.port)
    try:
        assert httpx.get(f"{proxy.url}/system_stats", timeout=5).status_code == 200
        proxy.delay(0.3)
        started = time.monotonic()
        assert httpx.get(f"{proxy.url}/system_stats", timeout=5).status_code == 200
        assert time.monotonic() - started >= 0.3, "the delay applies"  # a lower bound, not a speed claim
        proxy.stall()
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(f"{proxy.url}/system_stats", timeout=1)
        proxy.reset()
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError)):
            httpx.get(f"{proxy.url}/system_stats", timeout=2)
        proxy.heal()
        assert httpx.get(f"{proxy.url}/system_stats", timeout=5).status_code == 200
    finally:
        proxy.stop()


def follow(url: str, job_id: str, seen: list[dict], errors: list[str], stop: threading.Event) -> None:
    """A client that follows a job's SSE stream and reconnects (with a short pause) when the stream breaks."""
    while not stop.is_set():
        try:
            with httpx.stream("GET", f"{url}/api/comfyui/job/{job_id}/events", headers=auth(ALICE),
                              timeout=httpx.Timeout(30, connect=2)) as r:
                if r.status_code != 200:
                    errors.append(f"HTTP {r.status_code}")
                    time.sleep(0.3)
                    continue
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        seen.append(json.loads(line[6:]))
                        if seen[-1]["state"] in FINAL:
                            return
        except httpx.HTTPError as exc:
            errors.append(type(exc).__name__)
            time.sleep(0.3)


def test_clients_streaming_through_an_api_restart_see_the_final_state(sim_factory, stack_factory):
    sim = sim_factory(step_seconds=0.15)
    stack = stack_factory([sim.url], workers=1)
    stack.wait_workers_ready(1)
    jobs = [stack.generate({"template": "txt2img", "params": {"seed": 100 + i, "steps": 40}}).json()["jobId"]
            for i in range(3)]
    stop = threading.Event()
    streams = {j: ([], []) for j in jobs}
    threads = [threading.Thread(target=follow, args=(stack.url, j, *streams[j], stop), daemon=True) for j in jobs]
    for t in threads:
        t.start()
    stack.wait_state(jobs[0], ("running", *FINAL))
    api = stack.procs[0]
    api.stop()  # SIGTERM: every open stream is cut
    stack.start_api()  # same port: the clients' reconnects land on the new process
    for t in threads:
        t.join(timeout=120)
    stop.set()
    for job_id, (seen, errors) in streams.items():
        assert seen and seen[-1]["state"] == "succeeded", (job_id, seen[-1:] if seen else None, errors)
        assert stack.job(job_id)["attempts"] == 1, "the restart did not run the job twice"
    assert any(errors for _, errors in streams.values()), "the restart really cut the streams"
