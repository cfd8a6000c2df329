"""Typed errors of the client, carrying the service's own message."""

from __future__ import annotations

import json
from http import HTTPStatus


class SacError(Exception):
    """A request failed: ``status`` (0 when nothing answered), the service's error
    ``code`` and ``message``, and ``field`` when one field of the input was wrong."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(f"{message} (HTTP {status}, {code})" if status else message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


class BadRequest(SacError):
    """400: the input was refused (``field`` names what)."""


class Unauthorized(SacError):
    """401: the token is missing, expired or revoked."""


class Forbidden(SacError):
    """403: the token may not do this."""


class NotFound(SacError):
    """404: no such thing, or not one you may see."""


class Conflict(SacError):
    """409: the current state does not allow it (a turn is running, already decided...)."""


class TooLarge(SacError):
    """413: over a size limit."""


class ServerError(SacError):
    """5xx: the service, the hub or the agent failed."""


class SacTimeout(SacError, TimeoutError):
    """Nothing came back in time (the work may go on)."""

    def __init__(self, message: str):
        super().__init__(0, "timeout", message)


_BY_STATUS = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound,
              409: Conflict, 413: TooLarge}  # fmt: skip


def error_for(status: int, body: str) -> SacError:
    """The SacError for an error answer: the service's JSON error
    (``{"error", "message", "field"}``), the hub's (``{"status", "message"}``) or text."""
    code, message, field = "error", body.strip()[:500] or f"HTTP {status}", None
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        code = str(data.get("error") or code)
        # The hub answers {"status": 404, "message": null} for some errors.
        message = str(data.get("message") or f"HTTP {status}: {_phrase(status)}")
        field = data.get("field")
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else SacError)
    return cls(status, code, message, field)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"
