"""Every metric comfyfleet exports, by sample name: what dashboards and alert rules may query."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from comfyfleet.observability.fleet import fleet_families
from comfyfleet.observability.metrics import JobMetrics

# The suffixes of a family's samples, by type (OpenMetrics' _created is left out: dashboards never use it).
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
            "summary": ("_sum", "_count", "")}


def _registries() -> list[CollectorRegistry]:
    from comfyfleet.api.metrics import Metrics
    from comfyfleet.operator.metrics import OperatorMetrics

    # No Dispatcher: the fleet figures come from fleet_families() without reading Redis.
    return [Metrics(None).registry, JobMetrics().registry, OperatorMetrics().registry]


def exported_families() -> dict[str, str]:
    """Family name -> type, of the API (HTTP, fleet, webhooks, Firestore mirror), the dispatcher (engine + job
    metrics) and the operator."""
    families: dict[str, str] = {}
    for registry in _registries():
        for metric in registry.collect():
            families[metric.name] = metric.type
    for metric in [*fleet_families().values(), *_engine_families(), *_webhook_families(), *_firestore_families(),
                   *_stream_families(), *_usage_families()]:
        families[metric.name] = metric.type
    return families


def _engine_families() -> list[Metric]:
    """The dispatcher's own figures (dispatch/probe.py), collected from an idle stand-in of its engine."""
    from types import SimpleNamespace

    from comfyfleet.dispatch.probe import EngineCollector

    scheduler = SimpleNamespace(passes=0, claimed=0, lock_held_seconds=0.0)
    idle = SimpleNamespace(slots=0, tasks={}, holding=set(), d=SimpleNamespace(scheduler=scheduler))
    return list(EngineCollector(idle).collect())  # type: ignore[arg-type]


def exported_samples() -> set[str]:
    """Every sample name a PromQL expression can select."""
    return {name + suffix for name, kind in exported_families().items() for suffix in SUFFIXES.get(kind, ("",))}


def referenced_metrics(expr: str) -> set[str]:
    """The comfyfleet sample names a PromQL expression selects."""
    import re

    return set(re.findall(r"\bcomfyfleet_[a-zA-Z0-9_]+", expr))


def _webhook_families() -> list[Metric]:
    """The API's webhook delivery figures (webhooks/metrics.py), collected over an empty stand-in of Redis."""
    from types import SimpleNamespace

    from comfyfleet.keys import Keys
    from comfyfleet.webhooks.metrics import WebhookCollector

    empty = SimpleNamespace(hgetall=lambda key: {}, zcard=lambda key: 0)
    return list(WebhookCollector(empty, Keys()).collect())  # type: ignore[arg-type]


def _usage_families() -> list[Metric]:
    """GPU-seconds per pool (usage.py UsageCollector), from a stand-in book with nothing counted yet."""
    from types import SimpleNamespace

    from comfyfleet.usage import UsageCollector

    return list(UsageCollector(SimpleNamespace(totals=lambda: {})).collect())  # type: ignore[arg-type]


def _stream_families() -> list[Metric]:
    """The API's job event streams (api/metrics.py StreamCollector), from an idle gate and hub."""
    from types import SimpleNamespace

    from comfyfleet.api.events import StreamGate
    from comfyfleet.api.metrics import StreamCollector

    return list(StreamCollector(StreamGate(limit=1), SimpleNamespace(reconnects=0)).collect())  # type: ignore[arg-type]


def _firestore_families() -> list[Metric]:
    """The Firestore write-behind's figures (store/firestore/metrics.py), from an idle stand-in mirror."""
    from types import SimpleNamespace

    from comfyfleet.store.firestore.metrics import MirrorCollector

    idle = SimpleNamespace(backlog=lambda: 0, written=0, write_errors=0, last_success=0.0)
    return list(MirrorCollector(idle).collect())  # type: ignore[arg-type]
