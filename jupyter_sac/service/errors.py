"""Errors that reach users as ``{"error": code, "message": text}`` with a 4xx status."""

from __future__ import annotations

from tornado import web


class ApiError(web.HTTPError):
    def __init__(self, status: int, code: str, message: str, **extra: object):
        super().__init__(status, reason=None, log_message=message)
        self.code = code
        self.message = message
        self.extra = extra
