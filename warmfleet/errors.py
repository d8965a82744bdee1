"""The one error hierarchy of warmfleet, and the one table that maps it to wire statuses.

Domain code raises these; it imports neither grpc nor a web framework. The gateway's interceptor
(and the REST layer) read ``STATUS_TABLE`` to answer with a gRPC status code name and an HTTP status.
Anything not in the hierarchy becomes INTERNAL with a generic message and a logged traceback.
"""

from __future__ import annotations


class WarmfleetError(Exception):
    """Base of every error warmfleet reports to a client. The message is shown to the client."""


class InvalidInput(WarmfleetError):
    """A request field broke a rule. The message names the field and the rule."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class Unauthenticated(WarmfleetError):
    """No token, or a token the cluster does not know."""


class PermissionDenied(WarmfleetError):
    """A known token asked for something its role or ownership does not allow."""


class NotFound(WarmfleetError):
    """The named prediction, model or node does not exist (or is not the caller's)."""


class AlreadyExists(WarmfleetError):
    """An id the client chose is taken by a different request."""


class QueueFull(WarmfleetError):
    """The model's queue is at its bound; retry later (backpressure)."""


class LimitExceeded(WarmfleetError):
    """The caller's account is over one of its limits (creates a minute, predictions queued or running,
    stored bytes); ``retry_after_s`` says when to try again (``Retry-After``)."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, int(retry_after_s))


class Unavailable(WarmfleetError):
    """The cluster cannot serve this now (no node can run the model, a node was lost)."""


class FailedPrecondition(WarmfleetError):
    """The request is valid but the target is in a state that does not allow it."""


# One row per class: (gRPC status code name, HTTP status). Subclasses inherit their base's row.
STATUS_TABLE: dict[type[WarmfleetError], tuple[str, int]] = {
    InvalidInput: ("INVALID_ARGUMENT", 422),
    Unauthenticated: ("UNAUTHENTICATED", 401),
    PermissionDenied: ("PERMISSION_DENIED", 403),
    NotFound: ("NOT_FOUND", 404),
    AlreadyExists: ("ALREADY_EXISTS", 409),
    QueueFull: ("RESOURCE_EXHAUSTED", 429),
    LimitExceeded: ("RESOURCE_EXHAUSTED", 429),
    Unavailable: ("UNAVAILABLE", 503),
    FailedPrecondition: ("FAILED_PRECONDITION", 409),
    WarmfleetError: ("UNKNOWN", 500),
}

INTERNAL = ("INTERNAL", 500)


def status_for(error: BaseException) -> tuple[str, int]:
    """The (gRPC code name, HTTP status) row for an error: its class's, its nearest base's, or INTERNAL."""
    for cls in type(error).__mro__:
        row = STATUS_TABLE.get(cls)  # type: ignore[arg-type]
        if row is not None:
            return row
    return INTERNAL


# Errors that cross a process (a runner's, on a node) travel as their table class's name and field, not as
# text to parse: the gateway makes the same class again from them.

_BY_NAME = {cls.__name__: cls for cls in STATUS_TABLE}


def error_code(error: BaseException) -> str:
    """The name of the table class ``error`` falls under ("InvalidInput"...); "" for any other error."""
    for cls in type(error).__mro__:
        if cls in STATUS_TABLE:
            return cls.__name__
    return ""


def error_from_code(code: str, message: str, field: str = "") -> WarmfleetError:
    """The error a code, message and field (``error_code``'s, ``InvalidInput.field``) stand for."""
    cls = _BY_NAME.get(code, WarmfleetError)
    if cls is InvalidInput:
        return InvalidInput(field, message.removeprefix(f"{field}: "))
    return cls(message)
