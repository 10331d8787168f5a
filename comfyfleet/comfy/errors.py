"""Exceptions raised by the ComfyUI client; the dispatcher translates them at its edge."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from comfyfleet.comfy.models import NodeError


class ComfyError(Exception):
    """Base class for every error the ComfyUI client raises."""


class ComfyUnavailable(ComfyError):
    """The server cannot be reached (refused, reset, DNS, timeout): the worker is lost; retryable."""


class ComfyPromptLost(ComfyError):
    """The server is up but no longer knows our prompt (not queued, not in history); retryable."""

    def __init__(self, prompt_id: str, message: str | None = None):
        self.prompt_id = prompt_id
        super().__init__(message or f"prompt {prompt_id} is neither queued nor in history")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.prompt_id, str(self)))


class ComfyPromptWithdrawn(ComfyError):
    """The run was withdrawn before its prompt was posted: the server never had it."""

    def __init__(self, prompt_id: str):
        self.prompt_id = prompt_id
        super().__init__(f"prompt {prompt_id} was withdrawn before it was posted")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.prompt_id,))


class ComfyProtocolError(ComfyError):
    """The server answered something we do not expect (500 text, 403 Origin check, bad JSON...)."""

    def __init__(self, message: str, *, status_code: int | None = None, body: str = ""):
        self.status_code = status_code
        self.body = body
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), str(self), {"status_code": self.status_code, "body": self.body}))


# Error types of a 400 from POST /prompt that blame the request rather than the workflow. Servers after
# 0.3.64 refuse a client-chosen prompt_id that is not a canonical lowercase UUID with this type.
INVALID_PROMPT_ID = "invalid_prompt_id"


class ComfyValidationError(ComfyError):
    """POST /prompt answered 400: the workflow is invalid; not retryable."""

    def __init__(
        self,
        error_type: str,
        message: str,
        details: str = "",
        node_errors: list[NodeError] | None = None,
        extra_info: dict[str, Any] | None = None,
    ):
        self.error_type = error_type
        self.message = message
        self.details = details
        self.node_errors: list[NodeError] = list(node_errors or [])
        self.extra_info = dict(extra_info or {})
        super().__init__(self._describe())

    def _describe(self) -> str:
        head = f"{self.error_type}: {self.message}"
        if self.details:
            head += f" ({self.details})"
        parts = [head]
        for node in self.node_errors:
            for err in node.errors or []:
                where = f"input {err.input_name!r}" if err.input_name else "node"
                detail = f": {err.details}" if err.details else ""
                parts.append(f"node {node.node_id} ({node.class_type}) {where}: {err.message}{detail}")
            if not node.errors:
                parts.append(f"node {node.node_id} ({node.class_type}) failed validation")
        return "; ".join(parts)

    def __str__(self) -> str:
        return self._describe()

    @property
    def rejects_prompt_id(self) -> bool:
        """The server refused our prompt_id (a client bug), not the workflow (a user error)."""
        return self.error_type == INVALID_PROMPT_ID

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable for job queues: the default would call __init__ with only the message.
        args = (self.error_type, self.message, self.details, self.node_errors, self.extra_info)
        return (type(self), args)


def _rebuild(cls: type[ComfyProtocolError], message: str, kwargs: dict[str, Any]) -> ComfyProtocolError:
    return cls(message, **kwargs)
