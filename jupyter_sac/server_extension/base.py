"""What the sandbox extension's handlers share: errors in the house shape
(``jupyter_sac.errors``) and jupyter_server's authorisation resources.

Every user-facing method is ``@web.authenticated`` (or ``@ws_authenticated``) and
``@authorized`` on its class's ``auth_resource``, as jupyter_server's own handlers
are. In a sandbox the authorizer is JupyterHub's single-user one, which lets in
whoever holds ``access:servers`` on this server whatever the resource and action;
the resources say what a route touches, so that a deployment's own authorizer
(read-only access, say) can tell the routes apart:

- ``terminals``: runs code as the agent (the Claude terminal, chat, skills), as
  Jupyter's own terminals do;
- ``contents``: the workspace's files (their previews, a save, a sync);
- ``sac``: the extension's own state (status, activity, the history spool, HITL)
  and the relay to the `sac` service, which acts with the agent's token.
"""

from __future__ import annotations

import json
from typing import Any

from jupyter_server.base.handlers import APIHandler

from ..errors import ApiError, allowed_methods, error_body
from .openapi import CONTRACT

# JSON bodies of the extension's own routes (not the relay's, which has its own).
MAX_BODY_BYTES = 1024 * 1024

SAC_RESOURCE = "sac"
TERMINALS_RESOURCE = "terminals"
CONTENTS_RESOURCE = "contents"


class JsonErrors:
    """Errors as ``{"error", "message", "field"?}``, the `sac` service's shape, for
    ApiError and for what tornado and jupyter_server raise (401, 403, 404, …)."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        self.set_header("Content-Type", "application/json; charset=utf-8")
        if status_code == 405:
            self.set_header("Allow", allowed_methods(type(self)))
        self.finish(json.dumps(error_body(status_code, exc, "the server log")))


class SacHandler(JsonErrors, APIHandler):
    auth_resource = SAC_RESOURCE

    def json_body(self) -> dict[str, Any]:
        """The request's JSON object, checked against its operation's schema in the
        extension's document (openapi.yaml): 413, or 400 naming the field at fault."""
        if len(self.request.body) > MAX_BODY_BYTES:
            raise ApiError(413, "too_large", f"the body is over {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(self.request.body or b"")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_json", "the body must be a JSON object")
        base = self.base_url.rstrip("/")
        path = self.request.path
        operation = CONTRACT.operation(
            self.request.method or "", path[len(base) :] if path.startswith(base) else path
        )
        if operation is not None:
            operation.check_body(body)
        return body
