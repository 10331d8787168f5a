"""Prometheus figures of the Firestore write-behind, read from the mirror at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from comfyfleet.store.firestore.mirror import FirestoreMirror


class MirrorCollector(Collector):
    """Prometheus figures of the write-behind: backlog (read from Redis at scrape time), writes, failures."""

    def __init__(self, mirror: FirestoreMirror):
        self.mirror = mirror

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily("comfyfleet_firestore_backlog", "Job records waiting to be written to Firestore",
                                value=self.mirror.backlog())
        yield CounterMetricFamily("comfyfleet_firestore_records_written", "Job records written to Firestore",
                                  value=self.mirror.written)
        yield CounterMetricFamily("comfyfleet_firestore_write_failures", "Failed Firestore batch writes",
                                  value=self.mirror.write_errors)
        if self.mirror.last_success is not None:
            yield GaugeMetricFamily("comfyfleet_firestore_last_write_timestamp_seconds",
                                    "When a batch was last written to Firestore", value=self.mirror.last_success)
