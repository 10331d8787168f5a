"""Dispatch under trouble: cancels, crashed pods, timeouts, priorities, unhealthy pods coming back."""

from __future__ import annotations

from datetime import datetime

import httpx

from tests.support.stack import ADMIN, auth, wait_until


def txt2img(seed: int, steps: int = 4, **extra) -> dict:
    return {"template": "txt2img", "params": {"seed": seed, "steps": steps}, **extra}


def sim_queue(url: str) -> dict:
    return httpx.get(f"{url}/queue", timeout=5).json()


def test_cancel_queued_and_running_jobs(sim_factory, stack_factory):
    sim = sim_factory(step_seconds=0.2)
    stack = stack_factory([sim.url], workers=2)
    stack.wait_workers_ready(1)
    running = stack.generate(txt2img(1, steps=100)).json()["jobId"]
    stack.wait_state(running, "running")
    queued = stack.generate(txt2img(2, steps=2)).json()["jobId"]
    assert stack.job(queued)["state"] == "queued", "one pod, busy: the second job waits in the queue"

    r = stack.http.delete(f"/api/comfyui/job/{queued}", headers=auth())
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    r = stack.http.delete(f"/api/comfyui/job/{running}", headers=auth())
    assert r.status_code == 200 and r.json()["cancelRequested"] is True
    done = stack.wait_state(running, timeout=20)
    assert done["state"] == "cancelled" and done["error"]["code"] == "cancelled"
    assert done["progress"]["value"] < 100, "interrupted before the sampler finished"
    assert stack.job(queued)["attempts"] == 0, "the queued job never ran"
    wait_until(lambda: sim_queue(sim.url) == {"queue_running": [], "queue_pending": []}, what="pod idle")

    again = stack.http.delete(f"/api/comfyui/job/{running}", headers=auth())
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    after = stack.generate(txt2img(3, steps=2)).json()["jobId"]
    assert stack.wait_state(after)["state"] == "succeeded", "the pod was freed for the next job"


def test_killed_simulator_mid_job_retries_on_another(sim_factory, stack_factory):
    sims = [sim_factory(step_seconds=0.1), sim_factory(step_seconds=0.1)]
    stack = stack_factory([s.url for s in sims], workers=2)
    stack.wait_workers_ready(2)
    job_id = stack.generate(txt2img(4, steps=40)).json()["jobId"]
    running = stack.wait_state(job_id, "running")
    first_pod = running["worker"]
    victim = next(s for s in sims if first_pod.endswith(s.url))
    victim.kill()
    done = stack.wait_state(job_id, timeout=60)
    assert done["state"] == "succeeded", done["error"]
    assert done["attempts"] == 2 and done["worker"] != first_pod
    workers = {w["id"]: w["state"] for w in stack.http.get("/api/comfyui/workers", headers=auth()).json()["workers"]}
    assert workers[first_pod] == "unhealthy"


def test_job_exceeding_its_timeout_fails_with_timeout_error(sim_factory, stack_factory):
    sim = sim_factory(step_seconds=0.2)
    stack = stack_factory([sim.url], workers=1)
    stack.wait_workers_ready(1)
    job_id = stack.generate(txt2img(5, steps=120, timeoutSeconds=5)).json()["jobId"]
    done = stack.wait_state(job_id, timeout=40)
    assert done["state"] == "failed" and done["error"]["code"] == "timeout"
    assert "5 s" in done["error"]["message"] and done["attempts"] == 1, "a timeout is not retried"
    wait_until(lambda: sim_queue(sim.url)["queue_running"] == [], what="the pod to be interrupted")


def test_priority_order_holds_with_many_workers(sim_factory, stack_factory):
    sim = sim_factory(step_seconds=0.05)
    stack = stack_factory([sim.url], workers=3)
    stack.wait_workers_ready(1)
    blocker = stack.generate(txt2img(100, steps=40)).json()["jobId"]
    stack.wait_state(blocker, "running")
    low = [stack.generate(txt2img(200 + i, priority=1)).json()["jobId"] for i in range(3)]
    high = [stack.generate(txt2img(300 + i, priority=9)).json()["jobId"] for i in range(3)]
    assert all(stack.job(j)["state"] == "queued" for j in low + high), "no job waits inside an RQ worker"
    finished = [stack.wait_state(j, timeout=60) for j in low + high]
    assert all(j["state"] == "succeeded" for j in finished)
    started = sorted(finished, key=lambda j: datetime.fromisoformat(j["startedAt"]))
    assert [j["jobId"] for j in started] == high + low


def test_unhealthy_worker_is_skipped_and_readmitted(sim_factory, stack_factory):
    a = sim_factory()
    b = sim_factory()
    stack = stack_factory([a.url, b.url], workers=2)
    stack.wait_workers_ready(2)
    b_port = int(b.url.rsplit(":", 1)[1])
    b.kill()

    def states() -> dict[str, str]:
        body = stack.http.get("/api/comfyui/workers", headers=auth(ADMIN)).json()  # URLs are for admins
        return {w["url"]: w["state"] for w in body["workers"]}

    wait_until(lambda: states()[b.url] == "unhealthy", what="b marked unhealthy")
    jobs = [stack.generate(txt2img(400 + i, steps=1)).json()["jobId"] for i in range(4)]
    done = [stack.wait_state(j) for j in jobs]
    assert {d["state"] for d in done} == {"succeeded"}
    assert {d["worker"] for d in done} == {f"url:{a.url}"}, "the unhealthy pod got nothing"

    revived = sim_factory(port=b_port)
    assert revived.url == b.url
    wait_until(lambda: states()[b.url] == "ready", what="b re-admitted")
    more = [stack.generate(txt2img(500 + i, steps=1)).json()["jobId"] for i in range(6)]
    workers = {stack.wait_state(j)["worker"] for j in more}
    assert f"url:{b.url}" in workers, "the recovered pod takes jobs again"


def test_wedged_pod_is_taken_out_of_rotation(sim_factory, stack_factory):

    wedged = sim_factory(hang=True)
    stack = stack_factory([wedged.url], workers=1)
    stack.wait_workers_ready(1)
    job_id = stack.generate(txt2img(8, steps=2, timeoutSeconds=5)).json()["jobId"]
    done = stack.wait_state(job_id, timeout=60)
    assert done["state"] == "failed" and done["error"]["code"] == "timeout"

    def wedged_state() -> dict | None:
        [worker] = stack.http.get("/api/comfyui/workers", headers=auth(ADMIN)).json()["workers"]  # errors: admins
        return worker if worker["state"] == "unhealthy" else None

    worker = wait_until(wedged_state, timeout=20, what="the wedged pod to leave rotation")
    assert "not tracking" in worker["lastError"], worker
    healthy = sim_factory()
    stack.http.post("/api/comfyui/workers", json={"url": healthy.url}, headers=auth(ADMIN)).raise_for_status()
    second = stack.wait_state(stack.generate(txt2img(9, steps=2)).json()["jobId"], timeout=30)
    assert second["state"] == "succeeded" and second["worker"] == f"url:{healthy.url}"
