"""Errors that reach users as ``{"error": code, "message": text}`` with a 4xx status.

One module for both APIs: the `sac` service and the sandbox extension raise
``ApiError`` and render every error with ``error_body``, so a client reads
``error``, ``message`` and (when one input field is at fault) ``field`` the same
way from either (docs/api.md#errors)."""

from __future__ import annotations

from http.client import responses
from typing import Any

from tornado import web

# The codes of errors raised without one (tornado's own, @web.authenticated's,
# jupyter_server's @authorized): by their status.
ERROR_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 413: "too_large"}  # fmt: skip


class ApiError(web.HTTPError):
    def __init__(self, status: int, code: str, message: str, **extra: object):
        super().__init__(status, reason=None, log_message=message)
        self.code = code
        self.message = message
        self.extra = extra


def request_error(e: ValueError) -> ApiError:
    """The API's 400 for a rule's refusal of a request (``code``, ``message`` and
    ``field`` where the rule's error has them, as rules/exec.py's does)."""
    field = getattr(e, "field", None)
    extra = {"field": field} if field else {}
    code, message = getattr(e, "code", "invalid_field"), getattr(e, "message", str(e))
    return ApiError(400, code, message, **extra)


def error_body(status_code: int, exc: BaseException | None, log: str) -> dict[str, Any]:
    """The JSON body that answers ``exc``: an ApiError as it says; another HTTPError
    by its status (its log message is written for the caller); anything else as an
    internal error whose details stay in ``log`` (where to look, for the message)."""
    if isinstance(exc, ApiError):
        return {"error": exc.code, "message": exc.message, **exc.extra}
    if isinstance(exc, web.HTTPError):
        return {
            "error": ERROR_CODES.get(status_code, "error"),
            "message": exc.log_message or exc.reason or responses.get(status_code, "error"),
        }
    return {"error": "internal_error", "message": f"internal error, see {log}"}


def allowed_methods(handler: type) -> str:
    """The Allow header of a handler class's 405 (RFC 9110 requires one): the methods
    it answers, those it defines rather than inherits from tornado's RequestHandler
    (whose own answer 405, and which sends no Allow header)."""
    base = web.RequestHandler
    return ", ".join(
        m
        for m in handler.SUPPORTED_METHODS  # type: ignore[attr-defined]
        if getattr(handler, m.lower(), None) is not getattr(base, m.lower(), None)
    )
