"""Prometheus metrics of the operator, served by prometheus_client on OperatorSettings.metrics_port."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from comfyfleet.operator.capacity import CapacityVerdict
from comfyfleet.operator.models import WorkerState

WORKER_STATES: tuple[WorkerState, ...] = ("Starting", "Idle", "Busy", "Unhealthy", "Terminating")


class OperatorMetrics:
    """Gauges of every pool's pods, desired replicas and queue; counters of scale actions and jobs.

    Its own CollectorRegistry, so tests (and an embedded operator) can build several without
    clashing in prometheus_client's global registry.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        pool = ["namespace", "pool"]
        self.pods = Gauge("comfyfleet_operator_pods", "Worker pods per pool and state", [*pool, "state"],
                          registry=self.registry)
        self.desired = Gauge("comfyfleet_operator_desired_replicas", "Replicas each pool converges to", pool,
                             registry=self.registry)
        self.queue = Gauge("comfyfleet_operator_queue_depth", "Queued jobs each pool can run", pool,
                           registry=self.registry)
        self.scale_actions = Counter("comfyfleet_operator_scale_actions", "Pods created, removed or replaced",
                                     [*pool, "action"], registry=self.registry)
        self.jobs_submitted = Counter("comfyfleet_operator_jobs_submitted", "GenerationJobs queued",
                                      ["namespace"], registry=self.registry)
        self.reconcile_errors = Counter("comfyfleet_operator_reconcile_errors", "Failed reconcile passes",
                                        [*pool], registry=self.registry)
        # capacity: dispatch slots against ready pods, fleet-wide (every pool shares the dispatchers).
        self.dispatchers = Gauge("comfyfleet_operator_dispatchers", "Live dispatcher processes",
                                 registry=self.registry)
        self.dispatch_slots = Gauge("comfyfleet_operator_dispatch_slots",
                                    "Jobs the live dispatchers can run at once (sum of their caps)",
                                    registry=self.registry)
        self.dispatch_slots_needed = Gauge("comfyfleet_operator_dispatch_slots_needed",
                                           "Slots the ready pods need (one each, two when prefetching)",
                                           registry=self.registry)
        self.dispatch_slots_short = Gauge("comfyfleet_operator_dispatch_slots_short",
                                          "Slots missing: ready pods that can sit idle while jobs wait (alert > 0)",
                                          registry=self.registry)

    def observe_pool(self, namespace: str, pool: str, states: Iterable[str], desired: int, queue: int) -> None:
        """Record one reconcile pass of a pool."""
        counts: dict[str, int] = dict.fromkeys(WORKER_STATES, 0)
        for state in states:
            counts[state] = counts.get(state, 0) + 1
        for state, count in counts.items():
            self.pods.labels(namespace, pool, state).set(count)
        self.desired.labels(namespace, pool).set(desired)
        self.queue.labels(namespace, pool).set(queue)

    def observe_capacity(self, verdict: CapacityVerdict) -> None:
        """Record the fleet's dispatch capacity as seen by the latest pass (of any pool)."""
        self.dispatchers.set(verdict.slots.dispatchers)
        self.dispatch_slots.set(verdict.slots.slots)
        self.dispatch_slots_needed.set(verdict.demand.needed)
        self.dispatch_slots_short.set(verdict.shortfall)

    def count_actions(self, namespace: str, pool: str, created: int, removed: int, replaced: int) -> None:
        for action, count in (("create", created), ("remove", removed), ("replace", replaced)):
            if count:
                self.scale_actions.labels(namespace, pool, action).inc(count)

    def forget_pool(self, namespace: str, pool: str) -> None:
        """Drop a deleted pool's gauges (its counters stay: they are totals)."""
        for state in WORKER_STATES:
            _remove(self.pods, namespace, pool, state)
        _remove(self.desired, namespace, pool)
        _remove(self.queue, namespace, pool)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve /metrics on port in a background thread (port 0: not served)."""
        if port:
            start_http_server(port, addr=addr, registry=self.registry)


def _remove(metric: Gauge, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass  # never observed: nothing to drop
