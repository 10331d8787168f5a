"""Job-level Prometheus metrics: what a job's life tells (pure functions) and where it goes (a sink).

Labels are bounded on purpose: `pool` is the pool of the endpoint that ran the job (from the registry,
never the request), `template` a known template name or `custom`, `state`/`error_code`/`reason` enums,
`endpoint` one per ComfyUI endpoint. Never a user or a job id: those go to logs and traces.

Where observations go (`configure_sink`):
- a long-lived dispatcher process records into its own `JobMetrics` and serves them (`start_dispatcher_metrics`);
- a forked RQ work horse dies with everything it observed, so today's RQ worker sends its observations
  through a capped Redis list (`RedisRelay`) and whichever dispatcher process serves /metrics drains it at
  scrape time (`start_worker_metrics`). Totals stay right however many processes observe or serve.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.metrics_core import Metric

from comfyfleet.jobs.model import Job, JobState

if TYPE_CHECKING:
    import redis

    from comfyfleet.settings import DispatchSettings

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
        "histogram", "Seconds a job waited in the queue (since created, or re-queued for a retry) until claimed",
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

    def to_json(self) -> dict[str, Any]:
        return {"m": self.metric, "l": self.labels, "v": self.value}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Observation:
        return cls(metric=str(data["m"]), labels={str(k): str(v) for k, v in data["l"].items()}, value=float(data["v"]))


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
def claim_observations(job: Job, endpoint_pool: str | None, now: datetime) -> list[Observation]:
    """Queue wait of a job just claimed, read from its record as it was in the queue.

    A job claimed while still marked dispatched/running was abandoned by a dead RQ worker; its wait is not a
    queue wait, so nothing is observed for it.
    """
    if job.state is not JobState.QUEUED:
        return []
    queued_at = job.created_at if job.attempts == 0 else job.updated_at
    wait = max(0.0, (now - queued_at).total_seconds())
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


# A relay nobody drains (no dispatcher serves /metrics) stops growing here: ~100 bytes an entry, ~1.5 MB.
RELAY_CAP = 15_000
# Entries popped per Redis round trip while draining.
RELAY_BATCH = 500


class RedisRelay:
    """Observations of short-lived processes (RQ work horses) on a capped Redis list, drained by a server."""

    def __init__(self, conn: redis.Redis, key: str, cap: int = RELAY_CAP):
        self.conn = conn
        self.key = key
        self.cap = cap

    def record(self, observations: Sequence[Observation]) -> None:
        if not observations:
            return
        with self.conn.pipeline(transaction=False) as pipe:
            pipe.rpush(self.key, json.dumps([o.to_json() for o in observations]))
            pipe.ltrim(self.key, -self.cap, -1)
            pipe.execute()

    def drain_into(self, sink: Sink) -> int:
        """Move everything queued so far into sink; returns how many observations moved."""
        moved = 0
        while True:
            raw = self.conn.lpop(self.key, RELAY_BATCH)
            if not isinstance(raw, list) or not raw:
                return moved
            for entry in raw:
                try:
                    batch = [Observation.from_json(d) for d in json.loads(entry)]
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("dropping a malformed relayed observation: %s", exc)
                    continue
                sink.record(batch)
                moved += len(batch)
            if len(raw) < RELAY_BATCH:
                return moved


class RelayDrain:
    """A collector registered first in a registry: each scrape first drains the relay into the families."""

    def __init__(self, relay: RedisRelay, sink: Sink):
        self.relay = relay
        self.sink = sink

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            self.relay.drain_into(self.sink)
        except Exception as exc:  # a Redis outage must not break the scrape of everything else
            log.warning("could not drain relayed job observations: %s", exc)
        return iter(())


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
    except Exception as exc:  # observing must never fail a job: log and carry on
        log.warning("could not record job observations %s: %s", [o.metric for o in observations], exc)


# --- serving --------------------------------------------------------------------------------------
def serve_registry(registry: CollectorRegistry, port: int, addr: str = "0.0.0.0") -> bool:
    """Serve registry's /metrics on port in a background thread; False when the port is taken."""
    try:
        start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        log.warning("metrics port %s not served by this process (%s); another process here serves it", port, exc)
        return False
    return True


def start_dispatcher_metrics(settings: DispatchSettings, addr: str = "0.0.0.0") -> JobMetrics:
    """For one long-lived dispatcher process: record observations here and serve them on dispatch_metrics_port."""
    metrics = JobMetrics()
    configure_sink(metrics)
    if settings.dispatch_metrics_port:
        serve_registry(metrics.registry, settings.dispatch_metrics_port, addr)
    return metrics


def relay_key(prefix: str) -> str:
    return f"{prefix}:obs:relay"


def start_worker_metrics(settings: DispatchSettings, conn: redis.Redis, addr: str = "0.0.0.0") -> RedisRelay | None:
    """For today's forking RQ worker: observations go through the Redis relay (work horses die with their
    memory); the process that gets dispatch_metrics_port serves them, draining the relay at each scrape.
    Without a port nobody would drain the relay, so observations then stay in this process, unserved."""
    if not settings.dispatch_metrics_port:
        configure_sink(JobMetrics())
        return None
    relay = RedisRelay(conn, relay_key(settings.redis_prefix))
    configure_sink(relay)
    if settings.dispatch_metrics_port:
        registry = CollectorRegistry()
        metrics_sink: list[JobMetrics] = []
        registry.register(RelayDrain(relay, _Deferred(metrics_sink)))  # first: drain before families collect
        metrics_sink.append(JobMetrics(registry))
        serve_registry(registry, settings.dispatch_metrics_port, addr)
    return relay


class _Deferred:
    """A sink that forwards to the JobMetrics created after the drain was registered."""

    def __init__(self, holder: list[JobMetrics]):
        self.holder = holder

    def record(self, observations: Sequence[Observation]) -> None:
        if self.holder:
            self.holder[0].record(observations)
