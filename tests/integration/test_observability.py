"""Job-level metrics, JSON logs and bounded labels, scraped from the real API and dispatch worker during a run."""

from __future__ import annotations

import json
import re

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from comfyfleet.dispatch.service import Dispatcher
from comfyfleet.fairuse.pools import declare_pool
from comfyfleet.jobs.templates import TEMPLATES
from comfyfleet.observability.catalog import exported_families
from comfyfleet.settings import DispatchSettings
from tests.support.procs import free_port, wait_for
from tests.support.stack import ALICE, auth

# Label names comfyfleet's metrics may carry; a user or job id label would make series unbounded.
ALLOWED_LABELS = {"pool", "template", "state", "error_code", "reason", "stage", "phase", "endpoint", "priority",
                  "method", "route", "status", "le", "namespace", "action", "result"}


def txt2img(seed: int, steps: int = 4, **body) -> dict:
    return {"template": "txt2img", "params": {"seed": seed, "steps": steps, "prompt": "a red fox"}, **body}


def scrape(url: str) -> dict:
    text = httpx.get(url, timeout=10).text
    return {f.name: f for f in text_string_to_metric_families(text) if f.name.startswith("comfyfleet_")}


def samples(families: dict, name: str, **labels: str) -> list:
    return [s for f in families.values() for s in f.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def value(families: dict, name: str, **labels: str) -> float:
    return sum(s.value for s in samples(families, name, **labels))


def check_bounded(families: dict, forbidden: set[str], pools: set[str]) -> None:
    catalog = exported_families()
    for name, family in families.items():
        if name.endswith("_created") and name.removesuffix("_created") in catalog:
            continue  # prometheus_client's creation timestamps of counters and histograms
        assert catalog.get(name) == family.type, f"{name} ({family.type}) is not in the catalogue as such"
        for s in family.samples:
            assert set(s.labels) <= ALLOWED_LABELS, (s.name, s.labels)
            assert not forbidden & set(s.labels.values()), (s.name, s.labels)
            if "pool" in s.labels:
                assert s.labels["pool"] in pools | {"unassigned", "any", "other"}, s
            if "template" in s.labels:
                assert s.labels["template"] in set(TEMPLATES) | {"custom", "other"}, s


def test_metrics_and_logs_during_a_run(sim_factory, stack_factory):
    sim = sim_factory(step_seconds=0.1)
    port = free_port()
    stack = stack_factory([sim.url], workers=1, env={"COMFYFLEET_DISPATCHER_PORT": str(port),
                                                     "COMFYFLEET_LOG_FORMAT": "json"})
    dispatch_url = f"http://127.0.0.1:{port}/metrics"
    endpoint_id = stack.wait_workers_ready(1)["workers"][0]["id"]
    wait_for(lambda: httpx.get(dispatch_url, timeout=2).status_code == 200, timeout=20, what="dispatch /metrics")

    # One job waits for a pool nobody serves (declared, as the operator declares a pool scaled to zero, so the
    # API accepts it), then is cancelled in the queue.
    declare_pool(Dispatcher(redis.Redis.from_url(stack.redis_url),
                            DispatchSettings(redis_url=stack.redis_url, redis_prefix=stack.prefix)), "nowhere")
    stuck = stack.generate(txt2img(1, pool="nowhere")).json()["jobId"]
    first = stack.generate(txt2img(2, steps=20)).json()["jobId"]
    second = stack.generate(txt2img(3)).json()["jobId"]
    stack.wait_state(first, "running")
    during_api, during_dispatch = scrape(f"{stack.url}/metrics"), scrape(dispatch_url)
    assert value(during_api, "comfyfleet_queue_jobs", pool="other") == 1, "the stuck job names an unknown pool"
    assert value(during_api, "comfyfleet_queue_oldest_job_age_seconds", pool="other") > 0
    assert value(during_api, "comfyfleet_endpoints", pool="default", state="busy") == 1
    assert value(during_dispatch, "comfyfleet_job_queue_wait_seconds_count", pool="default",
                 template="txt2img") >= 1, "the running job's claim is counted while it runs"

    for job_id in (first, second):
        stack.wait_state(job_id, "succeeded")
    assert stack.http.delete(f"/api/comfyui/job/{stuck}", headers=auth(ALICE)).status_code in (200, 202)
    stack.wait_state(stuck, "cancelled")
    api, dispatch = scrape(f"{stack.url}/metrics"), scrape(dispatch_url)

    assert value(dispatch, "comfyfleet_job_outcomes_total", pool="default", template="txt2img", state="succeeded",
                 error_code="none") == 2
    assert value(dispatch, "comfyfleet_job_queue_wait_seconds_count", pool="default") == 2
    assert value(dispatch, "comfyfleet_job_execution_seconds_count", pool="default", template="txt2img") == 2
    assert value(dispatch, "comfyfleet_job_execution_seconds_sum", pool="default") > 0
    for phase in ("claim_to_prompt", "finish_to_stored"):
        assert value(dispatch, "comfyfleet_job_dispatch_overhead_seconds_count", pool="default", phase=phase) == 2
    busy = value(dispatch, "comfyfleet_endpoint_busy_seconds_total", pool="default", endpoint=endpoint_id)
    assert busy == value(dispatch, "comfyfleet_job_execution_seconds_sum", pool="default") and busy > 0
    assert value(api, "comfyfleet_job_cancels_total", pool="unassigned", stage="queued") == 1
    assert value(api, "comfyfleet_job_outcomes_total", state="cancelled", error_code="cancelled") == 1
    assert value(api, "comfyfleet_queue_jobs", pool="other") == 0

    forbidden = {first, second, stuck, "alice", "nowhere"}
    for families in (during_api, during_dispatch, api, dispatch):
        check_bounded(families, forbidden, pools={"default"})

    # JSON log lines of the dispatch worker carry the job's fields, and never the workflow or a token.
    log_text = "\n".join(w.log_text() for w in stack.workers)
    records = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    assert records, log_text[-2000:]
    mine = [r for r in records if r.get("job_id") == first]
    assert mine and all(r["user"] == "alice" and r["component"] == "dispatch" for r in mine)
    assert any(r.get("endpoint") == endpoint_id and r.get("pool") == "default" for r in mine)
    assert "KSampler" not in log_text and ALICE not in log_text
    assert not re.search(r'"workflow"\s*:', log_text)


def test_status_and_jobs_commands_read_the_public_api(sim_factory, stack_factory):
    import subprocess
    import sys

    from tests.support.procs import REPO_ROOT
    from tests.support.stack import ADMIN

    sim = sim_factory()
    stack = stack_factory([sim.url], workers=1)
    endpoint_id = stack.wait_workers_ready(1)["workers"][0]["id"]
    done = stack.generate(txt2img(4)).json()["jobId"]
    stack.wait_state(done, "succeeded")
    declare_pool(Dispatcher(redis.Redis.from_url(stack.redis_url),
                            DispatchSettings(redis_url=stack.redis_url, redis_prefix=stack.prefix)), "nowhere")
    stuck = stack.generate(txt2img(5, pool="nowhere")).json()["jobId"]

    def cli(*args: str, token: str = ALICE) -> str:
        out = subprocess.run([sys.executable, "-m", "comfyfleet", *args, "--api", stack.url, "--token", token],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    status = cli("status", "--no-color")
    rows = {line.split()[0]: line.split()[1:] for line in status.splitlines() if line.split()[:1] in (["default"],
                                                                                                      ["other"])}
    assert rows["default"][:4] == ["1", "0", "0", "0"], status
    assert rows["other"][3] == "1" and rows["other"][4] != "-", "the stuck job is counted with its age"
    assert endpoint_id in status and "waiting 1 (p5:1)" in status

    jobs = cli("jobs", "--limit", "5", "--color")
    assert "\x1b[32msucceeded\x1b[0m" in jobs and "\x1b[33mqueued\x1b[0m" in jobs
    assert done[:8] in jobs and stuck[:8] in jobs
    assert cli("jobs", "--user", "alice", token=ADMIN).count("\n") == 3, "an admin lists alice's 2 jobs"

    refused = subprocess.run([sys.executable, "-m", "comfyfleet", "status", "--api", stack.url, "--token", "wrong"],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr



def test_a_retry_is_counted_by_its_reason(sim_factory, stack_factory):
    sims = [sim_factory(step_seconds=0.1), sim_factory(step_seconds=0.1)]
    port = free_port()
    stack = stack_factory([s.url for s in sims], workers=1, env={"COMFYFLEET_DISPATCHER_PORT": str(port)})
    stack.wait_workers_ready(2)
    job_id = stack.generate(txt2img(6, steps=40)).json()["jobId"]
    first_pod = stack.wait_state(job_id, "running")["worker"]
    next(s for s in sims if first_pod.endswith(s.url)).kill()  # the pod dies mid-job: retried elsewhere
    done = stack.wait_state(job_id, timeout=60)
    assert done["state"] == "succeeded" and done["attempts"] == 2, done["error"]
    metrics = scrape(f"http://127.0.0.1:{port}/metrics")
    assert value(metrics, "comfyfleet_job_retries_total", pool="default", reason="worker_lost") == 1
    assert value(metrics, "comfyfleet_job_outcomes_total", state="succeeded", error_code="none") == 1
    assert value(metrics, "comfyfleet_job_queue_wait_seconds_count") == 1, "queue wait counts first attempts only"
    busy = {s.labels["endpoint"]: s.value for s in samples(metrics, "comfyfleet_endpoint_busy_seconds_total")}
    assert busy.get(done["worker"], 0) > 0
