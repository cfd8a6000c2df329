"""The OpenAPI document of the sandbox extension (every route it adds is listed)."""

from __future__ import annotations

import json
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from .. import __version__
from .base import SacHandler


def _op(summary: str, *errors: int, body: dict | None = None, ok: str = "200") -> dict:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {ok: {"description": "ok"}, **{str(e): {"description": "error"}
                                                    for e in (401, 403, *errors)}},
    }  # fmt: skip
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


SESSION = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
COMMAND = {
    "name": "command",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]*$"},
}
SERVICE_PATH = {
    "name": "path",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "a path of the sac service's API, under api/",
}
HOOK = "Claude Code hook entry point only (X-SAC-Hook-Secret; not a user API)"


def document(base_url: str) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "jupyter-sac sandbox extension API", "version": __version__},
        "servers": [{"url": base_url.rstrip("/")}],
        "paths": {
            "/sac/api/openapi.json": {"get": _op("This document")},
            "/sac/api/status": {"get": _op("Agent identity, runtime and versions")},
            "/sac/api/activity": {
                "get": _op("Busy (chat turns, HITL waits) and last activity, for idle culling")
            },
            "/sac/api/terminal": {
                "get": _op("The Claude terminal's status"),
                "post": _op("Start the Claude terminal unless it runs; its status"),
            },
            "/sac/api/terminal/restart": {"post": _op("Restart the Claude terminal")},
            "/sac/api/history/status": {"get": _op("History spool: backlog, last upload/error")},
            "/sac/api/hitl": {"get": _op("HITL requests this sandbox waits on; terminal prompt")},
            "/sac/api/hooks/transcript": {"post": _op(HOOK, 400)},
            "/sac/api/hooks/pre-tool-use": {"post": _op(HOOK, 400)},
            "/sac/api/chat": {
                "post": _op(
                    "Start a chat turn (202 {session_id, turn_id})",
                    400,
                    404,
                    409,
                    413,
                    ok="202",
                    body={
                        "type": "object",
                        "required": ["message"],
                        "properties": {
                            "message": {"type": "string", "maxLength": 100_000},
                            "session_id": {"type": "string", "nullable": True},
                        },
                    },
                )
            },
            "/sac/api/chat/sessions": {"get": _op("Chat sessions, newest first")},
            "/sac/api/chat/sessions/{id}": {
                "get": {**_op("A chat session and its event log", 400, 404), "parameters": SESSION}
            },
            "/sac/api/chat/sessions/{id}/cancel": {
                "post": {**_op("Cancel the running turn", 400, 404), "parameters": SESSION}
            },
            "/sac/api/chat/events": {
                "get": _op(
                    "WebSocket: chat events (?session_id=&since= replays the log first)",
                    400,
                    404,
                    ok="101",
                )
            },
            "/sac/api/skills": {"get": _op("Skills installed in this agent and the sync status")},
            "/sac/api/workspace": {
                "get": _op("Workspace sync status: groups, usage against quota, refused files"),
                "post": _op("Sync the workspace now (pull, then upload changes)"),
            },
            "/sac/api/service/{path}": {
                method: {
                    **_op(
                        "The sidebar's way to the sac service: the same request to the"
                        " service's api/<path> with this agent's own token (what an agent"
                        " token may do there, no more); the answer as the service gives it",
                        400,
                        404,
                        413,
                        502,
                    ),
                    "parameters": [SERVICE_PATH],
                }
                for method in ("get", "post", "put", "patch", "delete")
            },
            "/sac/api/workspace/preview": {
                "get": _op(
                    "Preview ?path=<workspace path>: text, image (raw=1: the bytes), or an"
                    " info card",
                    400,
                    404,
                ),
                "put": _op(
                    'Save a text file ?path= from {"text"} (not under public/)',
                    400,
                    403,
                    body={"type": "object", "properties": {"text": {"type": "string"}}},
                ),
            },
            "/sac/api/skills/sync": {
                "post": _op("Sync installed skills from the service now", 502)
            },
            "/sac/api/skills/{command}/run": {
                "post": {
                    **_op(
                        "Run an installed skill with parameter values (202), in chat or terminal",
                        400,
                        404,
                        409,
                        502,
                        ok="202",
                        body={
                            "type": "object",
                            "properties": {
                                "values": {"type": "object"},
                                "mode": {"type": "string", "enum": ["chat", "terminal"]},
                                "session_id": {"type": "string", "nullable": True},
                            },
                        },
                    ),
                    "parameters": [COMMAND],
                }
            },
        },
    }


class OpenApiHandler(SacHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(json.dumps(document(self.base_url)))
