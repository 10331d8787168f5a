"""Job-level Prometheus metrics: what a job's life tells (pure functions) and where it goes (a sink).

Labels are bounded on purpose: `pool` is the pool of the endpoint that ran the job (from the registry,
never the request), `template` a known template name or `custom`, `state`/`error_code`/`reason` enums,
`endpoint` one per ComfyUI endpoint. Never a user or a job id: those go to logs and traces.

Where observations go (`configure_sink`): the registry a process serves. The dispatcher (one long-lived
asyncio process) records into the families on its /metrics port; the API and the operator record the few
outcomes they settle themselves (jobs cancelled in the queue) into theirs. Prometheus sums across targets.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram

from comfyfleet.jobs.model import Job, JobState

log = logging.getLogger(__name__)

# Queue waits run from milliseconds (a free pod) to an hour (a pool scaling up from zero behind a backlog).
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# Pod execution: a weightless graph takes ~0.1 s, SDXL 5-40 s per image, video/upscale graphs minutes.
EXECUTION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
# Dispatch overhead is ~50 ms on the bench (README "Benchmarks"); seconds mean something is wrong.
OVERHEAD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

Kind = Literal["histogram", "counter"]


@dataclass(frozen=True)
class MetricSpec:
    kind: Kind
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


# The one table of job-level families (exported names: histograms add _bucket/_sum/_count, counters _total).
JOB_METRICS: dict[str, MetricSpec] = {
    "comfyfleet_job_queue_wait_seconds": MetricSpec(
        "histogram", "Seconds a job waited in the queue, created to claimed by an endpoint (first attempts)",
        ("pool", "template"), WAIT_BUCKETS),
    "comfyfleet_job_execution_seconds": MetricSpec(
        "histogram", "Seconds the ComfyUI endpoint spent executing a prompt, from its own execution timestamps",
        ("pool", "template"), EXECUTION_BUCKETS),
    "comfyfleet_job_dispatch_overhead_seconds": MetricSpec(
        "histogram", "Seconds dispatch adds: claim to prompt started on the pod (phase=claim_to_prompt), "
        "prompt finished to outputs stored (phase=finish_to_stored)", ("pool", "phase"), OVERHEAD_BUCKETS),
    "comfyfleet_job_outcomes_total": MetricSpec(
        "counter", "Jobs that reached a final state, by state and error code", ("pool", "template", "state",
                                                                                  "error_code")),
    "comfyfleet_job_retries_total": MetricSpec(
        "counter", "Attempts that failed and went back to the queue for a retry, by reason", ("pool", "reason")),
    "comfyfleet_job_cancels_total": MetricSpec(
        "counter", "Jobs cancelled, by the stage they were in (queued or running)", ("pool", "stage")),
    "comfyfleet_endpoint_busy_seconds_total": MetricSpec(
        "counter", "Seconds each ComfyUI endpoint spent executing prompts (rate() of it is GPU-busy fraction)",
        ("pool", "endpoint")),
}

UNASSIGNED = "unassigned"  # pool label of a job that never reached an endpoint
CUSTOM_TEMPLATE = "custom"  # template label of a job that sent its own graph


@dataclass(frozen=True)
class Observation:
    """One sample for one family of JOB_METRICS: observe (histogram) or add (counter) `value`."""

    metric: str
    labels: dict[str, str]
    value: float


@dataclass
class Attempt:
    """What one attempt of one job showed, collected by the runner as it goes (times are epoch seconds)."""

    job_id: str
    attempt: int
    endpoint: str | None
    pool: str | None
    template: str | None
    dispatched_at: float | None = None
    # When the dispatcher saw the prompt start on the pod (its execution_start event arrived).
    prompt_started_at: float | None = None
    # The pod's own execution timestamps in epoch milliseconds: (event type, timestamp) as ComfyUI sent them.
    pod_events: list[tuple[str, int]] = field(default_factory=list)
    # When the dispatcher learnt the prompt had finished (the run returned its result).
    prompt_finished_at: float | None = None
    outputs_stored_at: float | None = None

    def pod_execution_seconds(self) -> float | None:
        """execution_start to the first end event (success, error, interrupted), by the pod's clock."""
        start = next((ts for kind, ts in self.pod_events if kind == "execution_start"), None)
        end = next((ts for kind, ts in self.pod_events if kind in END_EVENTS), None)
        if start is None or end is None or end < start:
            return None
        return (end - start) / 1000.0


END_EVENTS = ("execution_success", "execution_error", "execution_interrupted")


# --- labels (pure) --------------------------------------------------------------------------------
def template_label(template: str | None) -> str:
    """A known template's name, `custom` for an own graph, `other` for anything else (bounded)."""
    from comfyfleet.jobs.templates import TEMPLATES

    if template is None:
        return CUSTOM_TEMPLATE
    return template if template in TEMPLATES else "other"


def pool_label(pool: str | None) -> str:
    return pool or UNASSIGNED


# --- what to observe (pure) -----------------------------------------------------------------------
def queue_wait(job: Job) -> float | None:
    """Seconds a job's first attempt waited, created to claimed (dispatched); None for later attempts.

    Only first attempts count: a retry's wait includes its backoff, which says nothing about capacity, and the
    record keeps no time of the re-queue once it is dispatched again.
    """
    if job.attempts != 1 or job.dispatched_at is None:
        return None
    return max(0.0, (job.dispatched_at - job.created_at).total_seconds())


def claim_observations(job: Job, endpoint_pool: str | None) -> list[Observation]:
    """The queue wait of a job just claimed (job: its dispatched record)."""
    wait = queue_wait(job)
    if wait is None:
        return []
    labels = {"pool": pool_label(endpoint_pool), "template": template_label(job.template)}
    return [Observation("comfyfleet_job_queue_wait_seconds", labels, wait)]


def attempt_observations(job: Job, attempt: Attempt | None) -> list[Observation]:
    """Everything one attempt tells, given the job's record after the attempt was settled.

    attempt is None for a job settled without running (failed fast, cancelled in the queue, failed outside
    its runner): then only its outcome counts.
    """
    pool = pool_label(attempt.pool if attempt else None)
    template = template_label(job.template)
    out: list[Observation] = []
    if attempt is not None:
        out += _timing_observations(job, attempt, pool, template)
    if job.state.is_terminal:
        code = job.error.code.value if job.error is not None else "none"
        out.append(Observation("comfyfleet_job_outcomes_total",
                               {"pool": pool, "template": template, "state": job.state.value, "error_code": code}, 1))
        if job.state is JobState.CANCELLED:
            stage = "running" if attempt is not None else "queued"
            out.append(Observation("comfyfleet_job_cancels_total", {"pool": pool, "stage": stage}, 1))
    elif job.state is JobState.QUEUED and job.error is not None:
        out.append(Observation("comfyfleet_job_retries_total", {"pool": pool, "reason": job.error.code.value}, 1))
    return out


def _timing_observations(job: Job, a: Attempt, pool: str, template: str) -> list[Observation]:
    out: list[Observation] = []
    if a.dispatched_at is not None and a.prompt_started_at is not None:
        out.append(Observation("comfyfleet_job_dispatch_overhead_seconds", {"pool": pool, "phase": "claim_to_prompt"},
                               max(0.0, a.prompt_started_at - a.dispatched_at)))
    execution = a.pod_execution_seconds()
    if execution is None and a.prompt_started_at is not None and a.prompt_finished_at is not None:
        execution = max(0.0, a.prompt_finished_at - a.prompt_started_at)  # no pod timestamps: our own clock
    if execution is not None:
        out.append(Observation("comfyfleet_job_execution_seconds", {"pool": pool, "template": template}, execution))
        if a.endpoint:
            out.append(Observation("comfyfleet_endpoint_busy_seconds_total", {"pool": pool, "endpoint": a.endpoint},
                                   execution))
    if job.state is JobState.SUCCEEDED and a.prompt_finished_at is not None and a.outputs_stored_at is not None:
        out.append(Observation("comfyfleet_job_dispatch_overhead_seconds", {"pool": pool, "phase": "finish_to_stored"},
                               max(0.0, a.outputs_stored_at - a.prompt_finished_at)))
    return out


# --- where observations go ------------------------------------------------------------------------
class Sink(Protocol):
    def record(self, observations: Sequence[Observation]) -> None: ...


class JobMetrics:
    """The JOB_METRICS families in one CollectorRegistry; records observations into them."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.families: dict[str, Histogram | Counter] = {}
        for name, spec in JOB_METRICS.items():
            if spec.kind == "histogram":
                self.families[name] = Histogram(name, spec.help, spec.labels, buckets=spec.buckets,
                                                registry=self.registry)
            else:
                self.families[name] = Counter(name, spec.help, spec.labels, registry=self.registry)

    def record(self, observations: Sequence[Observation]) -> None:
        for o in observations:
            family = self.families.get(o.metric)
            if family is None or set(o.labels) != set(JOB_METRICS[o.metric].labels):
                log.warning("dropping malformed observation %s %s", o.metric, o.labels)
                continue
            child = family.labels(**o.labels)
            if isinstance(child, Histogram):
                child.observe(o.value)
            else:
                child.inc(o.value)


_sink: Sink | None = None


def configure_sink(sink: Sink | None) -> None:
    """Where this process's observe_* calls go (None: a private JobMetrics nobody serves)."""
    global _sink
    _sink = sink


def current_sink() -> Sink:
    global _sink
    if _sink is None:
        _sink = JobMetrics()
    return _sink


def emit(observations: list[Observation]) -> None:
    if not observations:
        return
    try:
        current_sink().record(observations)
    except Exception as exc:  # noqa: BLE001 - observing must never fail a job: log and carry on
        log.warning("could not record job observations %s: %s", [o.metric for o in observations], exc)


# --- serving --------------------------------------------------------------------------------------
def register_job_metrics(registry: CollectorRegistry) -> JobMetrics:
    """Put the job families into a process's served registry and make it this process's sink."""
    metrics = JobMetrics(registry)
    configure_sink(metrics)
    return metrics
