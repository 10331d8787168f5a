"""Optional OpenTelemetry traces of a job's life: API request, queue wait, claim, prompt on the pod, output store.

Off by default: nothing here imports OpenTelemetry until `setup_tracing` is given an OTLP endpoint (or, in
tests, an exporter). The API request span's context travels on the job record as a W3C `traceparent`, so
the dispatcher's spans (another process, maybe another machine, and later) join the same trace. The pod's
own execution timestamps become span events of the prompt span, so a slow job shows where the time went.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from comfyfleet.jobs.model import Job, JobState

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from comfyfleet.observability.metrics import Attempt
    from comfyfleet.settings import CommonSettings

log = logging.getLogger(__name__)

_provider: TracerProvider | None = None
_tracer: Tracer | None = None


class TracingUnavailable(RuntimeError):
    """An OTLP endpoint is configured but the OpenTelemetry packages are not installed."""


def enabled() -> bool:
    return _tracer is not None


def setup_tracing(component: str, settings: CommonSettings, exporter: SpanExporter | None = None) -> bool:
    """Trace this process when settings.otlp_endpoint (or an exporter) is given; the first setup wins."""
    global _provider, _tracer
    if _tracer is not None:
        return True
    if exporter is None and not settings.otlp_endpoint:
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        raise TracingUnavailable(
            "COMFYFLEET_OTLP_ENDPOINT is set but OpenTelemetry is not installed: pip install 'comfyfleet[otel]'"
        ) from exc
    provider = TracerProvider(resource=Resource.create({"service.name": f"comfyfleet-{component}"}),
                              sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.otlp_endpoint.rstrip("/")
        if not endpoint.endswith("/v1/traces"):
            endpoint += "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    _provider, _tracer = provider, provider.get_tracer("comfyfleet")
    log.info("tracing on: %s spans to %s", component, "a test exporter" if exporter else settings.otlp_endpoint)
    return True


def shutdown_tracing() -> None:
    """Flush and forget the provider (tests; a process exiting cleanly)."""
    global _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
    _provider = _tracer = None


# --- W3C trace context on the job record ----------------------------------------------------------
def current_traceparent() -> str | None:
    """The current span as a W3C traceparent header value, or None (tracing off, no span, not sampled)."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex trace id inside a traceparent (what log lines and the job record show)."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def with_trace_context(job: Job) -> Job:
    """The job with the current span's traceparent on it (unchanged when tracing is off or it has one)."""
    if job.traceparent is not None:
        return job
    parent = current_traceparent()
    return job.model_copy(update={"traceparent": parent}) if parent else job


def _parent_context(job: Job) -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if not job.traceparent:
        return None
    return TraceContextTextMapPropagator().extract({"traceparent": job.traceparent})


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def _job_attributes(job: Job, pool: str | None, endpoint: str | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {"comfyfleet.job_id": job.id, "comfyfleet.attempt": job.attempts,
                             "comfyfleet.template": job.template or "custom"}
    if pool:
        attrs["comfyfleet.pool"] = pool
    if endpoint:
        attrs["comfyfleet.endpoint"] = endpoint
    return attrs


# --- the dispatcher's spans -----------------------------------------------------------------------
def record_queue_wait(job: Job, pool: str | None, endpoint: str | None, queued_at: datetime,
                      claimed_at: datetime) -> None:
    """The `queue wait` span of an attempt: queued (or re-queued) until claimed."""
    if _tracer is None:
        return
    span = _tracer.start_span("queue wait", context=_parent_context(job), start_time=_ns(queued_at.timestamp()),
                              attributes=_job_attributes(job, pool, endpoint))
    span.end(end_time=_ns(claimed_at.timestamp()))


def record_attempt(job: Job, attempt: Attempt) -> None:
    """The claim, prompt and output-store spans of one settled attempt (times from the Attempt)."""
    if _tracer is None:
        return
    from opentelemetry.trace import Status, StatusCode

    parent = _parent_context(job)
    attrs = _job_attributes(job, attempt.pool, attempt.endpoint)
    attrs["comfyfleet.attempt"] = attempt.attempt
    if attempt.dispatched_at is not None:
        end = attempt.prompt_started_at or attempt.prompt_finished_at or attempt.dispatched_at
        span = _tracer.start_span("claim", context=parent, start_time=_ns(attempt.dispatched_at), attributes=attrs)
        span.end(end_time=_ns(max(end, attempt.dispatched_at)))
    if attempt.prompt_started_at is not None:
        finished = attempt.prompt_finished_at or attempt.prompt_started_at
        span = _tracer.start_span("prompt", context=parent, start_time=_ns(attempt.prompt_started_at),
                                  attributes=attrs)
        for kind, stamp_ms in attempt.pod_events:  # ComfyUI's own clock, as it reported each step
            span.add_event(kind, attributes={"comfyui.timestamp_ms": stamp_ms}, timestamp=stamp_ms * 1_000_000)
        pod_seconds = attempt.pod_execution_seconds()
        if pod_seconds is not None:
            span.set_attribute("comfyui.execution_seconds", pod_seconds)
        if job.state is not JobState.SUCCEEDED and job.error is not None:
            span.set_status(Status(StatusCode.ERROR, job.error.code.value))
            span.set_attribute("comfyfleet.error_code", job.error.code.value)
        span.end(end_time=_ns(max(finished, attempt.prompt_started_at)))
    if attempt.prompt_finished_at is not None and attempt.outputs_stored_at is not None:
        span = _tracer.start_span("output store", context=parent, start_time=_ns(attempt.prompt_finished_at),
                                  attributes=attrs)
        span.end(end_time=_ns(max(attempt.outputs_stored_at, attempt.prompt_finished_at)))


# --- the API's request spans ----------------------------------------------------------------------
class TracingMiddleware:
    """One SERVER span per HTTP request, named by route template (never the raw path or any header)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _tracer is None:
            await self.app(scope, receive, send)
            return
        from opentelemetry.trace import SpanKind, Status, StatusCode

        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        method = scope["method"]
        with _tracer.start_as_current_span(f"{method}", kind=SpanKind.SERVER,
                                           attributes={"http.request.method": method}) as span:
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                route = getattr(scope.get("route"), "path", "unmatched")
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status["code"])
                if status["code"] >= 500:
                    span.set_status(Status(StatusCode.ERROR))
