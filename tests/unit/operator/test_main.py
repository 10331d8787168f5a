"""Operator registration: kopf settings and the handler set (no cluster needed)."""

from __future__ import annotations

import logging

import kopf

from comfyfleet.operator import main
from comfyfleet.settings import OperatorSettings


def test_kopf_settings_keep_state_in_our_annotations_and_finalizer() -> None:
    settings = main.build_settings(OperatorSettings())
    assert settings.persistence.finalizer == "comfyfleet.io/finalizer"
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert isinstance(settings.persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)
    assert settings.peering.standalone and not settings.peering.mandatory
    assert settings.peering.clusterwide
    assert settings.background.cancellation_polling <= 5


def test_peering_and_namespace_follow_the_settings() -> None:
    settings = main.build_settings(OperatorSettings(peering_name="comfyfleet", namespace="gpu"))
    assert not settings.peering.standalone and settings.peering.mandatory
    assert settings.peering.name == "comfyfleet" and not settings.peering.clusterwide


def test_every_handler_is_registered_with_its_id() -> None:
    registry = main.build_registry(OperatorSettings(probe_interval_seconds=0.5))
    ids = {h.id for h in registry._changing.get_all_handlers()}  # kopf has no public listing
    ids |= {h.id for h in registry._spawning.get_all_handlers()}
    assert {
        "comfyuiworker_create", "comfyuiworker_update", "comfyuiworker_resume", "comfyuiworker_delete",
        "comfyuiworker_reconcile", "generationjob_create", "generationjob_delete", "generationjob_sync",
    } <= ids
    timers = {h.id: h for h in registry._spawning.get_all_handlers()}
    assert timers["comfyuiworker_reconcile"].interval == 0.5  # type: ignore[attr-defined]  # a TimerHandler
    activities = {h.id for h in registry._activities.get_all_handlers()}
    assert {"login", "redis", "pod_registration"} <= activities
    watching = {h.id for h in registry._watching.get_all_handlers()}
    assert "worker_pod_event" in watching


def test_the_pod_watch_asks_the_api_for_worker_pods_only() -> None:
    settings = main.build_settings(OperatorSettings())
    selectors = dict(settings.watching.label_selectors.items())
    assert list(selectors.values()) == ["app.kubernetes.io/component=worker,app.kubernetes.io/managed-by=comfyfleet"]


def test_timer_success_lines_are_dropped() -> None:
    quiet = main.QuietTimerSuccess()

    def record(level: int, msg: str) -> logging.LogRecord:
        return logging.LogRecord("kopf.objects", level, __file__, 1, msg, None, None)

    assert not quiet.filter(record(logging.INFO, "Timer 'comfyuiworker_reconcile' succeeded."))
    assert quiet.filter(record(logging.ERROR, "Timer 'comfyuiworker_reconcile' failed temporarily: x"))
    assert quiet.filter(record(logging.INFO, "Handler 'comfyuiworker_create' succeeded."))
    assert not quiet.filter(record(logging.INFO, "Handler 'worker_pod_event' succeeded."))  # one per pod event
    assert quiet.filter(record(logging.ERROR, "Handler 'worker_pod_event' failed with an exception. Will ignore."))
