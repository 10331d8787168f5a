"""The operator process (`comfyfleet operator`): kopf settings, handler registration, liveness, metrics.

Registration is explicit, into a registry built here (`build_registry`), not by decorators at
import time: importing a handler module has no side effects, and tests can build an operator
with other intervals. kopf keeps its bookkeeping where our CRDs let it live: handler progress and
the last-handled spec go into `comfyfleet.io/...` annotations (the status schemas are structural
and would prune kopf's own status fields), and the finalizer is `comfyfleet.io/finalizer`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
import redis

from comfyfleet.observability.logs import setup_logging
from comfyfleet.operator import job_handlers, reaction, registration, workers
from comfyfleet.operator.builders import LABEL_COMPONENT, LABEL_MANAGED_BY, MANAGED_BY
from comfyfleet.operator.models import ANNOTATION_PREFIX, GROUP, JOB_PLURAL, VERSION, WORKER_PLURAL
from comfyfleet.operator.runtime import Runtime
from comfyfleet.settings import OperatorSettings

log = logging.getLogger(__name__)

FINALIZER = f"{GROUP}/finalizer"
LIVENESS_PATH = "/healthz"
# Watch requests are cut by the server after this long and re-established by kopf, so a silently
# dropped connection (load balancer idle timeout) can never leave the operator deaf for long.
WATCH_SERVER_TIMEOUT_SECONDS = 300
WATCH_CLIENT_TIMEOUT_SECONDS = WATCH_SERVER_TIMEOUT_SECONDS + 30
WATCH_CONNECT_TIMEOUT_SECONDS = 30
# The worker pods, the only pods the operator watches (server-side: kopf asks the API for these only).
WORKER_POD_LABELS = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: "worker"}
PODS = ("", "v1", "pods")
# A reconcile pass takes well under a second (probes time out after spec.probe.timeoutSeconds).
CANCELLATION_POLLING_SECONDS = 1.0


def build_settings(settings: OperatorSettings) -> kopf.OperatorSettings:
    """kopf's settings: annotation persistence, our finalizer, posting, peering and watch timeouts."""
    kopf_settings = kopf.OperatorSettings()
    kopf_settings.persistence.finalizer = FINALIZER
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=ANNOTATION_PREFIX)
    # Events: only the handlers' explicit ones (scale actions, replacements, job outcomes). Log lines
    # as events (`loggers`) would flood `kubectl describe` from a timer that runs every few seconds;
    # the level must stay INFO or kopf drops the explicit kopf.info() events too.
    kopf_settings.posting.level = logging.INFO
    kopf_settings.posting.loggers = False
    kopf_settings.peering.standalone = not settings.peering_name
    kopf_settings.peering.mandatory = bool(settings.peering_name)
    kopf_settings.peering.name = settings.peering_name or "default"
    kopf_settings.peering.clusterwide = not settings.namespace
    # A timer caught mid-pass when its object is deleted is re-checked after this long before kopf
    # releases the finalizer; kopf's 60 s default would hold every pool deletion for a minute.
    kopf_settings.background.cancellation_polling = CANCELLATION_POLLING_SECONDS
    kopf_settings.watching.server_timeout = WATCH_SERVER_TIMEOUT_SECONDS
    kopf_settings.watching.client_timeout = WATCH_CLIENT_TIMEOUT_SECONDS
    kopf_settings.watching.connect_timeout = WATCH_CONNECT_TIMEOUT_SECONDS
    # The pod watch (registration.py) needs only the pools' pods, not every pod of the cluster.
    kopf_settings.watching.label_selectors[PODS] = ",".join(f"{k}={v}" for k, v in sorted(WORKER_POD_LABELS.items()))
    return kopf_settings


def build_registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    """All handlers, registered with explicit ids (`<kind>_<event>`), plus kopf's client login
    (in-cluster ServiceAccount, else the kubeconfig in $KUBECONFIG)."""
    registry = kopf.OperatorRegistry()
    pool = (GROUP, VERSION, WORKER_PLURAL)
    job = (GROUP, VERSION, JOB_PLURAL)
    interval = settings.probe_interval_seconds
    # A failed pass (API or Redis hiccup) is retried on the next interval, not after kopf's 60 s default.
    on = kopf.on
    on.create(*pool, id="comfyuiworker_create", backoff=interval, registry=registry)(workers.comfyuiworker_create)
    on.update(*pool, id="comfyuiworker_update", backoff=interval, registry=registry)(workers.comfyuiworker_update)
    on.resume(*pool, id="comfyuiworker_resume", backoff=interval, registry=registry)(workers.comfyuiworker_resume)
    on.delete(*pool, id="comfyuiworker_delete", backoff=interval, registry=registry)(workers.comfyuiworker_delete)
    kopf.timer(*pool, id="comfyuiworker_reconcile", interval=interval, backoff=interval,
               registry=registry)(workers.comfyuiworker_reconcile)

    sync = settings.job_sync_interval_seconds
    on.create(*job, id="generationjob_create", backoff=sync, registry=registry)(job_handlers.generationjob_create)
    on.delete(*job, id="generationjob_delete", backoff=sync, registry=registry)(job_handlers.generationjob_delete)
    kopf.timer(*job, id="generationjob_sync", interval=sync, backoff=sync, when=job_handlers.job_not_final,
               registry=registry)(job_handlers.generationjob_sync)

    # Pods turning Ready (or going away) are published (withdrawn) at once, between timer ticks.
    on.event(*PODS, id="worker_pod_event", labels=WORKER_POD_LABELS, registry=registry)(registration.worker_pod_event)
    on.startup(id="pod_registration", registry=registry)(registration.registration_startup)

    on.login(id="login", registry=registry)(kopf.login_via_client)
    on.probe(id="redis", registry=registry)(probe_redis)
    # Autoscaled pools also scale up on queue wake-ups, between timer ticks (operator/reaction.py).
    on.startup(id="scale_up_reaction", registry=registry)(reaction.reaction_startup)
    on.cleanup(id="operator_cleanup", registry=registry)(operator_cleanup)
    return registry


async def probe_redis(memo: kopf.Memo, **_: Any) -> bool:
    """Liveness: the dispatch store answers (a failing probe makes /healthz answer 500)."""
    runtime: Runtime = memo.runtime
    try:
        return bool(await asyncio.to_thread(runtime.dispatcher.conn.ping))
    except redis.RedisError as exc:
        raise kopf.PermanentError(f"redis is unreachable: {exc}") from exc


async def operator_cleanup(memo: kopf.Memo, **_: Any) -> None:
    await reaction.stop_reaction(memo)
    await registration.stop_registration(memo)
    memo.runtime.close()


# kopf's success line of the pod watch's handler, logged for every event of every worker pod.
POD_EVENT_SUCCESS = "Handler 'worker_pod_event' succeeded."


class QuietTimerSuccess(logging.Filter):
    """Drop kopf's "Timer '...' succeeded." lines (the pool timer runs every probe interval per pool)
    and the pod watch handler's success lines (one per pod event), so they do not drown everything
    else; failures and everything the handlers log still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        message = record.getMessage()
        timer = message.startswith("Timer ") and message.endswith(" succeeded.")
        return not (timer or message == POD_EVENT_SUCCESS)


def configure_logging(settings: OperatorSettings) -> None:
    # comfyfleet.observability.logs: text or JSON lines with the job fields, per-component levels.
    setup_logging("operator", settings).addFilter(QuietTimerSuccess())
    # One line per probe request and per /healthz hit is noise at INFO; their errors still show.
    for noisy in ("httpx", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def run() -> None:
    """Run the operator until SIGTERM/SIGINT (`comfyfleet operator`)."""
    settings = OperatorSettings()
    configure_logging(settings)
    runtime = Runtime.create(settings)
    runtime.metrics.serve(settings.metrics_port)
    liveness = f"http://0.0.0.0:{settings.liveness_port}{LIVENESS_PATH}" if settings.liveness_port else None
    log.info("comfyfleet operator: %s, probe interval %ss, redis prefix %r",
             f"namespace {settings.namespace}" if settings.namespace else "all namespaces",
             settings.probe_interval_seconds, settings.redis_prefix)
    kopf.run(
        registry=build_registry(settings),
        settings=build_settings(settings),
        memo=kopf.Memo(runtime=runtime),
        clusterwide=not settings.namespace,
        namespaces=[settings.namespace] if settings.namespace else [],
        liveness_endpoint=liveness,
    )
