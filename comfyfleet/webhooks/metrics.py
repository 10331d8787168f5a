"""Webhook delivery figures for Prometheus, read from the outbox's counters in Redis at scrape time.

The counters live in Redis so every deliverer process (API replicas, dispatchers) adds to one set of figures.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from comfyfleet.keys import Keys
from comfyfleet.webhooks.outbox import WebhookKeys, counters


class WebhookCollector(Collector):
    """comfyfleet_webhook_deliveries_total{result}, comfyfleet_webhook_delivery_failures_total, backlog."""

    def __init__(self, conn: redis.Redis, keys: Keys):
        self.conn = conn
        self.keys = keys

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = counters(self.conn, self.keys)
        done = CounterMetricFamily("comfyfleet_webhook_deliveries", "Webhook deliveries that ended",
                                   labels=["result"])
        done.add_metric(["delivered"], stats.get("delivered", 0))
        done.add_metric(["gave_up"], stats.get("gave_up", 0))
        yield done
        yield CounterMetricFamily("comfyfleet_webhook_delivery_failures",
                                  "Webhook delivery attempts that failed (each retry counts)",
                                  value=stats.get("failed_attempts", 0))
        yield GaugeMetricFamily("comfyfleet_webhook_backlog", "Webhook deliveries waiting for an attempt",
                                value=int(self.conn.zcard(WebhookKeys.of(self.keys).due)))
