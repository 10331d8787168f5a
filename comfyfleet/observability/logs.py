"""Log lines that say which job they are about: text locally, one JSON object per line in clusters.

Every line carries what is known of its job (job_id, pool, endpoint, attempt, user, trace_id) from a context
variable (`bind_job`, `log_context`) or from `extra=job_fields(...)`. Only those fields and the message are
written: never request headers, tokens or workflow bodies; a bearer token that slips into a message is
masked, and very long messages are cut. The same setup serves the API, the dispatcher and the operator;
levels can differ per component (`COMFYFLEET_LOG_LEVELS=dispatch=DEBUG,operator=WARNING`).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from comfyfleet.jobs.model import Job
    from comfyfleet.settings import CommonSettings

FIELDS = ("job_id", "pool", "endpoint", "attempt", "user", "trace_id")

# The loggers each component's level applies to (its own package and the libraries it drives).
COMPONENT_LOGGERS: dict[str, tuple[str, ...]] = {
    "api": ("comfyfleet.api", "uvicorn", "fastapi"),
    "dispatch": ("comfyfleet.dispatch", "comfyfleet.comfy", "comfyfleet.store", "comfyfleet.observability", "rq"),
    "operator": ("comfyfleet.operator", "kopf"),
    "sim": ("comfyfleet.sim", "aiohttp"),
    "cli": ("comfyfleet.cli", "comfyfleet.local", "comfyfleet.submit"),
}
# A log line is for reading, not for carrying payloads: a workflow dumped into a message stops here.
MAX_MESSAGE_CHARS = 4000
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_TOKEN_FIELD = re.compile(r"(?i)([\"']?(?:token|api_tokens|password|secret)[\"']?\s*[:=]\s*[\"']?)[^\"',\s}]+")

_context: ContextVar[dict[str, Any] | None] = ContextVar("comfyfleet_log_context", default=None)


def job_fields(job: Job | None = None, *, endpoint: str | None = None, pool: str | None = None,
               **more: Any) -> dict[str, Any]:
    """The log fields of a job (for `extra=` or `bind`); unknown values are left out."""
    from comfyfleet.observability.tracing import trace_id_of

    fields: dict[str, Any] = {}
    if job is not None:
        fields.update(job_id=job.id, attempt=job.attempts, user=job.owner, pool=job.pool,
                      trace_id=trace_id_of(job.traceparent))
    if endpoint is not None:
        fields["endpoint"] = endpoint
    if pool is not None:
        fields["pool"] = pool
    fields.update(more)
    return _known(fields)


def _known(fields: dict[str, Any]) -> dict[str, Any]:
    """The log fields among these (a new dict): known names, values given."""
    return {k: v for k, v in fields.items() if k in FIELDS and v is not None}


def _add(known: dict[str, Any]) -> None:
    """Set the context to the current one plus `known` (a new dict of known fields, kept as it is)."""
    current = _context.get()
    _context.set({**current, **known} if current else known)


def bind(**fields: Any) -> None:
    """Add fields to the current context (this task or thread and what it starts from now on)."""
    _add(_known(fields))


def bind_job(job: Job, *, endpoint: str | None = None, pool: str | None = None) -> None:
    _add(job_fields(job, endpoint=endpoint, pool=pool))


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Fields for the lines logged inside the block only."""
    token = _context.set({**(_context.get() or {}), **_known(fields)})
    try:
        yield
    finally:
        _context.reset(token)


def redact(text: str) -> str:
    text = _TOKEN_FIELD.sub(r"\1[redacted]", _BEARER.sub(r"\1[redacted]", text))
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS] + f"... [{len(text) - MAX_MESSAGE_CHARS} characters cut]"
    return text


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The job fields of a record: the context's, overridden by `extra=` ones."""
    fields = dict(_context.get() or {})
    for name in FIELDS:
        value = record.__dict__.get(name)
        if value is not None:
            fields[name] = value
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, component, logger, msg, the job fields, exc."""

    def __init__(self, component: str):
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "msg": redact(record.getMessage()),
            **record_fields(record),
        }
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """The familiar `time LEVEL logger: message`, with the job fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record)
        text = redact(super().format(record))
        if fields:
            text += " [" + " ".join(f"{k}={fields[k]}" for k in FIELDS if k in fields) + "]"
        return text


_HANDLER_MARK = "_comfyfleet_handler"


def setup_logging(component: str, settings: CommonSettings, stream: Any = None) -> logging.Handler:
    """Configure the root logger for a comfyfleet process (replacing a previous setup of ours)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False) or _is_basic(h)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(JsonFormatter(component) if settings.log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for name, level in settings.log_levels.items():
        for logger_name in COMPONENT_LOGGERS[name]:
            logging.getLogger(logger_name).setLevel(level)
    return handler


def _is_basic(handler: logging.Handler) -> bool:
    """A plain stderr handler from logging.basicConfig (or an earlier text setup) that ours replaces."""
    return type(handler) is logging.StreamHandler and getattr(handler, "stream", None) is sys.stderr
