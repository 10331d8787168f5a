"""Many simulated pods in one simulator process, over real HTTP and websockets.

Each pod must look exactly like a lone simulator (and so like ComfyUI 0.3.64) and share nothing with
its neighbours but the process: not the queue, history, prompt numbers, folders, knobs, nor a crash.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import websockets

from tests.integration.test_sim_protocol import (
    CLIENT,
    REQUEST,
    connect,
    history,
    norm,
    post,
    queue,
    recv,
    txt2img,
    until_done,
)
from tests.support.procs import REPO_ROOT, free_port, wait_for
from tests.support.sim import FleetPod, running_sim_fleet
from tests.unit.sim.recorded import capture


async def run_to_end(pod: FleetPod, body: dict) -> tuple[str, list[dict]]:
    """Post on a fresh socket and collect the frames up to `executing` null."""
    ws = await connect(pod)
    try:
        pid = post(pod, {**body, "client_id": CLIENT}).json()["prompt_id"]
        return pid, await until_done(ws, pid)
    finally:
        await ws.close()


async def test_a_fleet_pod_matches_the_captures(tmp_path: Path) -> None:
    with running_sim_fleet(tmp_path, 2) as fleet:
        pod = fleet.pods[1]
        pid, frames = await run_to_end(pod, {"prompt": REQUEST["prompt"]})
        run = capture("ws_basic_run.json")
        # the hello frame of connect() is consumed; the capture starts with the two enqueue statuses
        assert norm(frames, pid) == norm([m["json"] for m in run["messages"]], run["prompt_id"])
        assert [p.name for p in (pod.output_dir / "probe").iterdir()] == ["basic_00001_.png"]
        assert not (fleet.pods[0].output_dir / "probe").exists()


async def test_pods_keep_their_own_queue_history_numbers_and_knobs(tmp_path: Path) -> None:
    knobs = {1: {"failure_rate": 1.0}, 2: {"hang": True}}
    with running_sim_fleet(tmp_path, 3, step_seconds=0.01, pod_knobs=knobs) as fleet:
        ok, failing, hung = fleet.pods
        stuck = post(hung, {"prompt": txt2img(prefix="hung/img")}).json()
        wait_for(lambda: queue(hung)["queue_running"], what="the hung pod's running prompt")

        first, frames = await run_to_end(ok, {"prompt": txt2img(prefix="ok/img")})
        assert frames[-3]["type"] == "execution_success"
        second, frames = await run_to_end(failing, {"prompt": txt2img(prefix="bad/img")})
        assert frames[-3]["type"] == "execution_error"
        assert frames[-3]["data"]["exception_type"] == "torch.OutOfMemoryError"

        # Every pod numbers its own prompts from 0 and keeps only its own history.
        assert stuck["number"] == 0
        assert history(ok, first)[first]["prompt"][0] == 0 and history(failing, second)[second]["prompt"][0] == 0
        assert list(httpx.get(ok.url + "/history").json()) == [first]
        assert list(httpx.get(failing.url + "/history").json()) == [second]
        assert httpx.get(hung.url + "/history").json() == {}
        assert [r[1] for r in queue(hung)["queue_running"]] == [stuck["prompt_id"]]
        assert queue(ok) == {"queue_running": [], "queue_pending": []}
        # ... and writes into its own folder.
        assert [p.name for p in (ok.output_dir / "ok").iterdir()] == ["img_00001_.png"]
        assert not (failing.output_dir / "bad").exists() and not (hung.output_dir / "hung").exists()
        assert not (fleet.data_dir / "output").exists()


async def test_every_pod_runs_a_prompt_at_the_same_time(tmp_path: Path) -> None:
    # hung pods never finish, so all of them running at once shows a worker per pod without timing anything
    with running_sim_fleet(tmp_path, 20, hang=True) as fleet:
        ids = [post(pod, {"prompt": txt2img(seed=i)}).json()["prompt_id"] for i, pod in enumerate(fleet.pods)]

        def all_running() -> bool:
            return [[r[1] for r in queue(pod)["queue_running"]] for pod in fleet.pods] == [[i] for i in ids]

        wait_for(all_running, timeout=20, what="a running prompt on every pod")


async def test_a_crashed_pod_goes_silent_and_the_others_carry_on(tmp_path: Path) -> None:
    with running_sim_fleet(tmp_path, 3, step_seconds=0.02, pod_knobs={1: {"crash_after_steps": 2}}) as fleet:
        healthy, doomed, other = fleet.pods
        watcher = await connect(healthy, "watcher")  # a socket open on a neighbour before the crash
        ws = await connect(doomed)
        post(doomed, {"prompt": txt2img(steps=50), "client_id": CLIENT})
        progress = []
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                frame = await recv(ws)
                if frame["type"] == "progress":
                    progress.append(frame["data"]["value"])
        assert progress == [1, 2]

        def refused() -> bool:
            try:
                httpx.get(doomed.url + "/system_stats", timeout=2)
            except httpx.ConnectError:
                return True
            return False

        wait_for(refused, what="the crashed pod to stop listening")
        assert fleet.alive()
        for pod in (healthy, other):
            _, frames = await run_to_end(pod, {"prompt": txt2img(steps=2)})
            assert frames[-3]["type"] == "execution_success"
        pid = post(healthy, {"prompt": txt2img(steps=2, seed=9), "client_id": "watcher"}).json()["prompt_id"]
        assert (await until_done(watcher, pid))[-1]["data"] == {"node": None, "prompt_id": pid}
        await watcher.close()
        assert "pod 1" in fleet.log_text() and "crashed" in fleet.log_text()


def test_pods_on_loopback_addresses_share_a_port(tmp_path: Path) -> None:
    port = free_port("127.0.0.2")
    with running_sim_fleet(tmp_path, 1, hosts=["127.0.0.2", "127.0.0.3"], port=port) as fleet:
        assert fleet.urls == [f"http://127.0.0.2:{port}", f"http://127.0.0.3:{port}"]
        a, b = fleet.pods
        pid = post(a, {"prompt": txt2img(steps=1)}).json()["prompt_id"]
        wait_for(lambda: history(a, pid), what="the prompt on 127.0.0.2")
        assert history(b, pid) == {}
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.4:{port}/system_stats")


def test_explicit_ports(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    with running_sim_fleet(tmp_path, 1, ports=ports) as fleet:
        assert fleet.urls == [f"http://127.0.0.1:{p}" for p in ports]
        for pod in fleet.pods:
            assert httpx.get(pod.url + "/system_stats").json()["system"]["comfyui_version"] == "0.3.64"


def test_a_slow_starting_pod_is_listed_but_refuses_until_ready(tmp_path: Path) -> None:
    with running_sim_fleet(tmp_path, 2, pod_knobs={1: {"slow_start_seconds": 5.0}}) as fleet:
        fast, slow = fleet.pods
        assert httpx.get(fast.url + "/system_stats").status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(slow.url + "/system_stats")
        wait_for(lambda: httpx.get(slow.url + "/system_stats").status_code == 200, timeout=30, what="slow pod")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--count", "2", "--pod-knobs", '{"5": {"hang": true}}'], "pod_knobs name pods [5], but only 2"),
        (["--count", "2", "--pod-knobs", '{"0": {"steps": 3}}'], "unknown knobs ['steps']"),
        (["--count", "2", "--pod-knobs", '{"0": {"failure_rate": 3}}'], "failure_rate"),
        (["--ports", "1,2", "--count", "2"], "give ports or count, not both"),
        (["--slow-node", "Nope"], "unknown node class 'Nope'"),
    ],
)
def test_bad_fleet_flags_exit_2_naming_the_setting(tmp_path: Path, args: list[str], message: str) -> None:
    cmd = [sys.executable, "-m", "comfyfleet.sim", "--port", "0", "--data-dir", str(tmp_path), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


def test_print_urls(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "comfyfleet.sim", "--port", "0", "--count", "3", "--print-urls",
           "--data-dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO_ROOT)
    try:
        assert proc.stdout is not None
        urls = [proc.stdout.readline().strip() for _ in range(3)]
        assert len(set(urls)) == 3 and all(u.startswith("http://127.0.0.1:") for u in urls)
        assert all(httpx.get(u + "/system_stats").status_code == 200 for u in urls)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
