"""Exceptions: one class per error code the server answers, so callers catch what they mean.

kiln answers every refusal as `{"error": {"code", "message"}}`; the code is stable, the message
is for people. `from_response` turns such an answer into the class registered for its code
(an unknown code, from a newer server, into the class of its HTTP status family). Failures on
the client's side (a wait that ran out of time, a server that cannot be reached) have their own
classes under the same base, `KilnError`.
"""

from __future__ import annotations

import json

import httpx


class KilnError(Exception):
    """Anything this client raises on purpose."""


class WaitTimeout(KilnError, TimeoutError):
    """A wait's overall timeout passed before the job or batch ended. It is still running."""


class ConnectionFailed(KilnError):
    """The server could not be reached, or the connection dropped, after every retry."""


class ApiError(KilnError):
    """The server refused a request. `code` is its machine-readable error code."""

    #: The server's error code; each subclass's own is the one it is raised for.
    code: str = ""

    def __init__(
        self, status: int, code: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        #: Seconds after which trying again makes sense (429 and 503 answers).
        self.retry_after = retry_after


class BadRequest(ApiError):
    """400: malformed JSON, query, id or header."""


class InvalidRequest(ApiError):
    """422: well-formed but invalid (unknown runtime, a limit above its maximum, ...)."""

    code = "invalid_request"


class Unauthorized(ApiError):
    """401: no valid API token; pass `token=` or set `KILN_TOKEN`."""

    code = "unauthorized"


class Forbidden(ApiError):
    """403: the token may not do this (e.g. a tenant's token on an admin endpoint)."""

    code = "forbidden"


class NotFound(ApiError):
    """404: no such job, batch or endpoint."""

    code = "not_found"


class JobNotFound(NotFound):
    code = "job_not_found"


class BatchNotFound(NotFound):
    code = "batch_not_found"


class FileNotFound(NotFound):
    """404: the job kept no file at this path (see its `files_out`)."""

    code = "file_not_found"


class Conflict(ApiError):
    """409."""


class AlreadyFinished(Conflict):
    """Cancelling a job or batch that already ended."""

    code = "already_finished"


class IdempotencyKeyReused(Conflict):
    """The same Idempotency-Key was sent with a different request."""

    code = "idempotency_key_reused"


class TooLarge(ApiError):
    """413: a body, code, stdin, files or suite over its size limit."""

    code = "too_large"


class Overloaded(ApiError):
    """429 or 503: nothing was written; try again after `retry_after` seconds."""


class QueueFull(Overloaded):
    code = "queue_full"


class RateLimited(Overloaded):
    code = "rate_limited"


class TooManyStreams(Overloaded):
    code = "too_many_streams"


class DatabaseUnavailable(Overloaded):
    code = "database_unavailable"


class Stopping(Overloaded):
    """The server is shutting down."""

    code = "stopping"


class ServerError(ApiError):
    """5xx other than the overloads above: a fault on the server's side."""


_BY_CODE: dict[str, type[ApiError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        JobNotFound,
        BatchNotFound,
        FileNotFound,
        AlreadyFinished,
        IdempotencyKeyReused,
        TooLarge,
        QueueFull,
        RateLimited,
        TooManyStreams,
        DatabaseUnavailable,
        Stopping,
    )
}


def _by_status(status: int) -> type[ApiError]:
    if status == 400:
        return BadRequest
    if status == 404:
        return NotFound
    if status == 409:
        return Conflict
    if status in (429, 503):
        return Overloaded
    if status >= 500:
        return ServerError
    return ApiError


def retry_after(response: httpx.Response) -> float | None:
    """The answer's `Retry-After` in seconds (kiln sends only the seconds form)."""
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def from_response(response: httpx.Response) -> ApiError:
    """The exception for an error answer whose body has been read."""
    code, message = "", response.text.strip() or response.reason_phrase
    try:
        error = json.loads(response.content)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        pass
    cls = _BY_CODE.get(code) or _by_status(response.status_code)
    return cls(response.status_code, code, message, retry_after(response))
