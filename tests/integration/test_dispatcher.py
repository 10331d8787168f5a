"""The asyncio dispatcher under faults: killed with jobs in flight, Redis restarted under it."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import redis

from tests.support.procs import ManagedProcess, free_port, wait_for
from tests.support.stack import ADMIN, Stack, auth, wait_until


def txt2img(seed: int, steps: int) -> dict:
    return {"template": "txt2img", "params": {"seed": seed, "steps": steps, "width": 64, "height": 64}}


def prompts_posted(sims: list) -> int:
    """How many prompts the simulators accepted, from their own logs ("got prompt", as ComfyUI logs it)."""
    return sum(s.proc.log_text().count("got prompt") for s in sims)


def running(stack: Stack, ids: list[str]) -> bool:
    return all(stack.job(j)["state"] == "running" for j in ids)


def test_dispatcher_killed_with_ten_jobs_in_flight_loses_none_and_runs_none_twice(sim_factory, stack_factory):
    sims = [sim_factory(step_seconds=0.25) for _ in range(10)]
    stack = stack_factory([s.url for s in sims], workers=1,
                          env={"COMFYFLEET_DELETE_POD_HISTORY": "false"})
    stack.wait_workers_ready(10, timeout=60)
    ids = [stack.generate(txt2img(100 + i, steps=40)).json()["jobId"] for i in range(10)]
    wait_until(lambda: running(stack, ids), timeout=60, what="ten jobs running")
    stack.workers[0].kill()  # SIGKILL: no hand-over, its deadlines simply stop being renewed
    killed_at = time.monotonic()
    stack.add_worker()
    lease_ttl = float(stack.env["COMFYFLEET_LEASE_TTL_SECONDS"])
    finals = [stack.wait_state(j, timeout=60) for j in ids]
    assert [f["state"] for f in finals] == ["succeeded"] * 10, [f["error"] for f in finals]
    assert all(f["attempts"] == 1 for f in finals), "adopted, not retried"
    assert prompts_posted(sims) == 10, "each prompt was posted once: the new dispatcher attached to them"
    recovered_in = time.monotonic() - killed_at
    assert recovered_in < lease_ttl + 10 + 40 * 0.25, recovered_in
    for f in finals:
        history = json.loads(_get(f"{_sim_of(sims, f['worker']).url}/history/{f['jobId']}"))
        assert history[f["jobId"]]["status"]["status_str"] == "success"


def test_redis_restarted_while_jobs_run(sim_factory, tmp_path: Path):
    """Redis with AOF (the chart's setting) restarts under running jobs: the dispatcher and API recover on
    their own; every job ends succeeded, none lost, none posted twice."""
    server = _AofRedis(tmp_path / "redis")
    sims = [sim_factory(step_seconds=0.2) for _ in range(3)]
    stack = Stack(tmp_path / "stack", server.url, [s.url for s in sims], workers=1,
                  env={"COMFYFLEET_DELETE_POD_HISTORY": "false"})
    try:
        stack.wait_workers_ready(3, timeout=60)
        ids = [stack.generate(txt2img(200 + i, steps=25)).json()["jobId"] for i in range(5)]
        wait_until(lambda: running(stack, ids[:3]), timeout=60, what="three jobs running")
        server.restart(down_for=2.0)
        finals = [stack.wait_state(j, timeout=120) for j in ids]
        assert [f["state"] for f in finals] == ["succeeded"] * 5, [f["error"] for f in finals]
        assert prompts_posted(sims) == 5
        assert stack.workers[0].alive(), "the dispatcher survived the outage"
        after = stack.generate(txt2img(299, steps=2)).json()["jobId"]
        assert stack.wait_state(after, timeout=60)["state"] == "succeeded"
    finally:
        stack.stop()
        server.stop()


class _AofRedis:
    def __init__(self, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = self._start()

    def _start(self) -> ManagedProcess:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        proc = ManagedProcess([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.workdir)],
                              log_path=self.workdir / "redis.log")
        wait_for(lambda: redis.Redis.from_url(self.url).ping(), timeout=15, what="redis-server")
        return proc

    def restart(self, down_for: float) -> None:
        self.proc.stop()  # SIGTERM: Redis flushes its AOF on a clean shutdown
        time.sleep(down_for)
        self.proc = self._start()

    def stop(self) -> None:
        self.proc.stop()


def _sim_of(sims: list, endpoint_id: str):  # noqa: ANN202
    return next(s for s in sims if endpoint_id == f"url:{s.url}")


def _get(url: str) -> str:
    import httpx

    return httpx.get(url, headers=auth(), timeout=10).text


def test_prefetch_queues_the_next_prompt_on_the_pod_and_cancel_removes_it(sim_factory, stack_factory):
    sim = sim_factory(step_seconds=0.1)
    stack = stack_factory([sim.url], workers=1, env={"COMFYFLEET_COMFYUI_PREFETCH": "1"})
    stack.wait_workers_ready(1)
    ids = [stack.generate(txt2img(300 + i, steps=60)).json()["jobId"] for i in range(3)]
    seen: list[tuple[list[str], list[str]]] = []

    def pod_queue() -> tuple[list[str], list[str]]:
        body = json.loads(_get(f"{sim.url}/queue"))
        seen.append(([e[1] for e in body["queue_running"]], [e[1] for e in body["queue_pending"]]))
        return seen[-1]

    running_and_next = wait_until(lambda: (lambda q: q if len(q[0]) == 1 and len(q[1]) == 1 else None)(pod_queue()),
                                  timeout=30, what="one prompt running and the next queued behind it on the pod")
    [current], [ahead] = running_and_next
    # (On a loaded machine the pair seen may already be the second and third job.)
    assert ids.index(ahead) == ids.index(current) + 1, "FIFO: the next job is the one committed behind"
    for later in ids[ids.index(ahead) + 1:]:
        assert stack.job(later)["state"] == "queued", "only one job is committed ahead"
    assert stack.http.delete(f"/api/comfyui/job/{ahead}", headers=auth()).status_code == 200
    wait_until(lambda: ahead not in pod_queue()[1], timeout=10, what="the prefetched prompt off the pod's queue")
    assert stack.wait_state(ahead, timeout=30)["state"] == "cancelled"
    for other in (j for j in ids if j != ahead):
        assert stack.wait_state(other, timeout=60)["state"] == "succeeded"
    assert all(len(pending) <= 1 for _, pending in seen), "never more than one prompt committed ahead"
    assert prompts_posted([sim]) == 3


def test_out_of_memory_is_retried_then_fails_with_its_code(sim_factory, stack_factory):
    sim = sim_factory(failure_rate=1.0)  # every prompt fails with a CUDA out-of-memory error
    stack = stack_factory([sim.url], workers=1)
    stack.wait_workers_ready(1)
    done = stack.wait_state(stack.generate(txt2img(400, steps=2)).json()["jobId"], timeout=60)
    assert done["state"] == "failed" and done["error"]["code"] == "out_of_memory", done["error"]
    assert done["attempts"] == 3, "OOM is retried (after POST /free) until attempts run out"
    assert prompts_posted([sim]) == 3


def test_an_output_store_outage_is_retried_and_then_a_clear_error(sim_factory, stack_factory):
    sim = sim_factory(step_seconds=0.05)
    stack = stack_factory([sim.url], workers=1, env={"COMFYFLEET_STORE_RETRY_SECONDS": "6"})
    stack.wait_workers_ready(1)
    owner_dir = stack.tmp / "data" / "outputs" / "alice"
    owner_dir.parent.mkdir(parents=True, exist_ok=True)
    owner_dir.write_text("not a folder")  # every write under it fails, as an unreachable bucket would

    first = stack.generate(txt2img(401, steps=20)).json()["jobId"]
    wait_until(lambda: "storing" in stack.workers[0].log_text(), timeout=30, what="a failed store attempt")
    owner_dir.unlink()  # the store comes back within the retry window
    done = stack.wait_state(first, timeout=30)
    assert done["state"] == "succeeded" and done["outputs"], done["error"]

    shutil.rmtree(owner_dir)
    owner_dir.write_text("not a folder")  # and now it stays down
    second = stack.wait_state(stack.generate(txt2img(402, steps=2)).json()["jobId"], timeout=60)
    assert second["state"] == "failed" and second["error"]["code"] == "storage_error", second["error"]
    assert "retried" in second["error"]["message"]
    history = json.loads(_get(f"{sim.url}/history/{second['jobId']}"))
    assert second["jobId"] in history, "the pod keeps the prompt's outputs when they could not be stored"


def _history_ts(history: dict, prompt_id: str, message: str) -> int:
    """A prompt's own timestamp (ms) for one of the messages in its /history status."""
    for name, data in history[prompt_id]["status"]["messages"]:
        if name == message:
            return int(data["timestamp"])
    raise AssertionError(f"{message} not in the history of {prompt_id}: {history[prompt_id]['status']}")


def test_cancel_during_a_node_that_outlasts_the_grace_period(sim_factory, stack_factory):
    """ComfyUI interrupts only between nodes: the job still ends cancelled, and the pod takes its next prompt
    only after the old one has really ended there."""
    sim = sim_factory(step_seconds=0.02, slow_node_seconds=8)  # VAEDecode: 8 s, deaf to interrupts
    stack = stack_factory([sim.url], workers=1, env={"COMFYFLEET_CANCEL_GRACE_SECONDS": "2",
                                                     "COMFYFLEET_DELETE_POD_HISTORY": "false"})
    stack.wait_workers_ready(1)
    first = stack.generate(txt2img(500, steps=5)).json()["jobId"]
    wait_until(lambda: stack.job(first)["progress"]["node"] == "8", timeout=30, what="the job in its slow node")
    second = stack.generate(txt2img(501, steps=5)).json()["jobId"]
    assert stack.http.delete(f"/api/comfyui/job/{first}", headers=auth()).status_code == 200
    cancelled = stack.wait_state(first, timeout=20)
    assert cancelled["state"] == "cancelled" and cancelled["error"]["code"] == "cancelled", cancelled["error"]
    assert stack.job(second)["state"] == "queued", "the pod is held while ComfyUI still runs the old prompt"
    done = stack.wait_state(second, timeout=60)
    assert done["state"] == "succeeded", done["error"]
    history = json.loads(_get(f"{sim.url}/history"))
    assert history[first]["status"]["status_str"] == "error", "interrupted at the node boundary, on the pod"
    old_end = _history_ts(history, first, "execution_interrupted")
    assert _history_ts(history, second, "execution_start") >= old_end
    assert prompts_posted([sim]) == 2


def test_fifty_pods_in_one_simulator_process_run_fifty_jobs_at_once(tmp_path: Path, stack_factory):
    from tests.support.sim import start_sim_fleet

    fleet = start_sim_fleet(tmp_path / "fleet", 50, step_seconds=0.25)
    try:
        # One process hosts all 50 pods: on a loaded machine its answers to probes slow down while every pod
        # runs, so probes are patient here (a slow probe is not a dead pod).
        stack = stack_factory(fleet.urls, workers=1, env={"COMFYFLEET_HEALTH_INTERVAL_SECONDS": "2",
                                                          "COMFYFLEET_PROBE_TIMEOUT_SECONDS": "15",
                                                          "COMFYFLEET_UNHEALTHY_AFTER_FAILURES": "5"})
        stack.wait_workers_ready(50, timeout=90)
        # 30 s jobs: all 50 are still running when the last one is submitted, even on a loaded machine.
        ids = [stack.generate(txt2img(600 + i, steps=120)).json()["jobId"] for i in range(50)]

        def busy() -> int:  # (current jobs are shown to admins only)
            body = stack.http.get("/api/comfyui/workers", headers=auth(ADMIN)).json()
            return sum(1 for w in body["workers"] if w["currentJob"])

        wait_until(lambda: busy() == 50, timeout=60, what="all 50 pods busy at once under one dispatcher")
        finals = [stack.wait_state(j, timeout=180) for j in ids]
        assert [f["state"] for f in finals] == ["succeeded"] * 50
        assert len({f["worker"] for f in finals}) == 50, "one job per pod"
    finally:
        fleet.stop()


def _pod_files(sim) -> tuple[list[Path], list[Path]]:
    """A simulated pod's job upload folders and the test's output files."""
    return list(sim.input_dir.glob("comfyfleet-*")), list(sim.output_dir.rglob("clean_*.png"))


def test_pods_stay_clean_once_outputs_are_stored(sim_factory, stack_factory, tmp_path: Path):
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("RGB", (16, 16), "red").save(image)
    import base64

    data = base64.b64encode(image.read_bytes()).decode()
    graph_with_input = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "clean", "images": ["2", 0]}},
    }
    body = {"workflow": graph_with_input, "inputImages": {"in.png": data}}
    # `plain` acts as a ComfyUI without the worker image's node: a POST to the route answers 405, as real ComfyUI's
    # static frontend route does; the dispatcher asks once, says so, and keeps the pod's files.
    clean, plain = sim_factory(step_seconds=0.05), sim_factory(cleanup_route=False)
    for sim, keeps in ((clean, False), (plain, True)):
        stack = stack_factory([sim.url], workers=1)
        stack.wait_workers_ready(1)
        for _ in range(2):
            done = stack.wait_state(stack.generate(body).json()["jobId"], timeout=60)
            assert done["state"] == "succeeded", done["error"]
            # the pod is cleaned once the job is settled (the client does not wait for it): poll, do not race it
            wait_until(lambda s=sim, j=done["jobId"]: j not in json.loads(_get(f"{s.url}/history")), timeout=10,
                       what="the prompt left the pod's history")
        if keeps:
            uploads, outputs = _pod_files(sim)
            assert len(uploads) == 2 and len(outputs) == 2, "a pod without the cleanup route keeps its files"
            wait_until(lambda st=stack: "has no /comfyfleet/cleanup route" in st.logs(), timeout=10)
            assert stack.logs().count("has no /comfyfleet/cleanup route") == 1, "asked once, not at every job"
        else:
            wait_until(lambda s=sim: _pod_files(s) == ([], []), timeout=10,
                       what="uploads and outputs deleted once stored")
            # a cancelled job's interrupted prompt and its uploads leave the pod too
            slow = stack.generate({**txt2img(41, steps=150), "inputImages": {"in.png": data}}).json()["jobId"]
            stack.wait_state(slow, states="running", timeout=30)
            assert stack.http.delete(f"/api/comfyui/job/{slow}", headers=auth()).status_code == 200
            assert stack.wait_state(slow, timeout=30)["state"] == "cancelled"
            wait_until(lambda s=sim, j=slow: j not in json.loads(_get(f"{s.url}/history"))
                       and not list(s.input_dir.glob("comfyfleet-*")), timeout=10,
                       what="the interrupted prompt's history entry and uploads deleted")
        stack.stop()


def test_rq_keeps_a_truthful_record_of_the_dispatcher_and_its_jobs(sim_factory, stack_factory):
    from rq import Worker
    from rq.job import Job as RQJob
    from rq.registry import FinishedJobRegistry, StartedJobRegistry

    from comfyfleet.dispatch.rqconf import SERIALIZER

    sims = [sim_factory(step_seconds=0.1) for _ in range(2)]
    stack = stack_factory([s.url for s in sims], workers=1)
    stack.wait_workers_ready(2)
    conn = redis.Redis.from_url(stack.redis_url)
    ids = [stack.generate(txt2img(700 + i, steps=40)).json()["jobId"] for i in range(2)]
    wait_until(lambda: running(stack, ids), timeout=30, what="both jobs running")
    [worker] = [w for w in Worker.all(connection=conn) if w.name.startswith("dispatcher-")
                and stack.prefix in ",".join(w.queue_names())]
    assert worker.get_state() == "busy"
    executions = worker.get_current_executions(refresh=True)
    assert sorted(e.job_id for e in executions) == sorted(ids), "one RQ execution per job in flight"
    queue_name = f"{stack.prefix}-p05"
    assert sorted(StartedJobRegistry(queue_name, connection=conn).get_job_ids()) == sorted(ids)
    for j in ids:
        assert stack.wait_state(j, timeout=60)["state"] == "succeeded"
    wait_until(lambda: sorted(FinishedJobRegistry(queue_name, connection=conn).get_job_ids()) == sorted(ids),
               timeout=10, what="RQ's finished registry")
    assert all(RQJob.fetch(j, connection=conn, serializer=SERIALIZER).get_status() == "finished" for j in ids)
    assert StartedJobRegistry(queue_name, connection=conn).get_job_ids() == []


def test_network_faults_between_dispatcher_and_pod(sim_factory, stack_factory):
    """Through a TCP proxy: a connection reset mid-job (the shared websocket and pooled HTTP connections
    drop) and a stalled path (no byte moves for a while) both end with the job succeeded, its prompt posted
    once; a path that stays reset sends the job back to the queue (worker_lost) and the pod out of rotation,
    and once the path heals the retry succeeds."""
    from tests.support.tcpproxy import TcpProxy

    sim = sim_factory(step_seconds=0.1)
    proxy = TcpProxy("127.0.0.1", sim.port)
    try:
        stack = stack_factory([proxy.url], workers=1, env={"COMFYFLEET_DELETE_POD_HISTORY": "false"})
        stack.wait_workers_ready(1)

        job = stack.generate(txt2img(800, steps=40)).json()["jobId"]
        wait_until(lambda: running(stack, [job]), timeout=30, what="the job running")
        proxy.reset()
        time.sleep(0.3)
        proxy.heal()
        assert stack.wait_state(job, timeout=60)["state"] == "succeeded"

        job = stack.generate(txt2img(801, steps=40)).json()["jobId"]
        wait_until(lambda: running(stack, [job]), timeout=30, what="the job running")
        proxy.stall()
        time.sleep(2.0)
        proxy.heal()
        assert stack.wait_state(job, timeout=60)["state"] == "succeeded"
        assert prompts_posted([sim]) == 2, "neither fault made the dispatcher post a prompt twice"

        job = stack.generate(txt2img(802, steps=60)).json()["jobId"]
        wait_until(lambda: running(stack, [job]), timeout=30, what="the job running")
        proxy.reset()  # and it stays so: the pod is unreachable
        waiting = stack.wait_state(job, "queued", timeout=60, token=ADMIN)
        assert waiting["error"]["code"] == "worker_lost", "back in the queue for a retry, not hanging"
        workers = stack.http.get("/api/comfyui/workers", headers=auth(ADMIN)).json()["workers"]
        assert workers[0]["state"] == "unhealthy", "and the unreachable pod is out of rotation"
        proxy.heal()
        done = stack.wait_state(job, timeout=90)
        assert done["state"] == "succeeded" and done["attempts"] == 2, done["error"]
    finally:
        proxy.stop()


def test_the_same_graph_twice_on_one_pod_stores_both_outputs(sim_factory, stack_factory):
    """ComfyUI answers a repeated graph from its cache; each job saves into its own output folder on the pod,
    so the second job's outputs exist even though the first job's were deleted once stored."""
    sim = sim_factory()  # caching on, as ComfyUI runs by default
    stack = stack_factory([sim.url], workers=1)
    stack.wait_workers_ready(1)
    firsts = [stack.wait_state(stack.generate({"template": "weightless"}).json()["jobId"], timeout=60)
              for _ in range(2)]
    assert [f["state"] for f in firsts] == ["succeeded", "succeeded"], [f["error"] for f in firsts]
    assert all(f["outputs"] for f in firsts) and all(f["attempts"] == 1 for f in firsts)
    wait_until(lambda: not list(sim.output_dir.rglob("*.png")), timeout=10,
               what="both jobs' files deleted from the pod once stored (after each job settled)")
