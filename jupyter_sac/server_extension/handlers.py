"""REST handlers of the sandbox extension (thin: authorise, call, serialise)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..errors import ApiError
from .base import TERMINALS_RESOURCE, JsonErrors, SacHandler
from .openapi import CONTRACT


class OpenApiHandler(SacHandler):
    """GET sac/api/openapi.json: this API's contract (openapi.yaml), as served here."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(json.dumps(CONTRACT.served(self.base_url)))


class StatusHandler(SacHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        info = self.settings["sac_runtime_info"]
        self.finish(json.dumps(await info.status()))


class ActivityHandler(SacHandler):
    """What keeps this agent from being idle: running chat turns, HITL requests it
    waits on, and the server's own last activity (the `sac` service's idle culler
    asks before stopping the agent)."""

    # Asking must not count as activity, or the culler would keep every agent alive.
    _track_activity = False

    @web.authenticated
    @authorized
    async def get(self) -> None:
        turns = sum(1 for s in self.settings["sac_chat"].sessions.values() if s.running)
        waiting = len(self.settings["sac_hitl"].pending)
        last = self.application.last_activity()
        self.finish(
            json.dumps(
                {
                    "busy": bool(turns or waiting),
                    "chat_turns_running": turns,
                    "hitl_waiting": waiting,
                    "last_activity": last.isoformat() if last else None,
                }
            )
        )


class TerminalHandler(SacHandler):
    """GET: the Claude terminal's status; POST: make sure it runs (returns its name)."""

    auth_resource = TERMINALS_RESOURCE

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(json.dumps(self.settings["sac_claude_terminal"].status()))

    @web.authenticated
    @authorized("execute")
    async def post(self) -> None:
        self.finish(json.dumps(await self.settings["sac_claude_terminal"].ensure()))


class TerminalRestartHandler(SacHandler):
    auth_resource = TERMINALS_RESOURCE

    @web.authenticated
    @authorized("execute")
    async def post(self) -> None:
        self.finish(json.dumps(await self.settings["sac_claude_terminal"].restart()))


class HistoryStatusHandler(SacHandler):
    """The history spool: events waiting for upload, last error."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(json.dumps(await self.settings["sac_history_uploader"].status()))


class HitlStatusHandler(SacHandler):
    """Requests this sandbox is waiting on, and the terminal prompt watcher's view."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        bridge = self.settings["sac_hitl"]
        watcher = bridge.watcher
        current = watcher.current if watcher is not None else None
        self.finish(
            json.dumps(
                {
                    "pending": list(bridge.pending.values()),
                    "terminal_prompt": None
                    if current is None
                    else {
                        "kind": current.kind,
                        "question": current.question,
                        "options": [{"key": o.key, "label": o.label} for o in current.options],
                    },
                    "terminal_reads": watcher.reads if watcher is not None else 0,
                },
                default=str,
            )
        )


class HookHandler(JsonErrors, web.RequestHandler):
    """Base of the endpoints the Claude Code hook entry point calls.

    Not a Jupyter API: authenticated by the per-server hook secret that only
    processes started by this server inherit (no cookies, so no XSRF), not by
    jupyter_server's authenticator and authorizer (no Jupyter user calls them).
    """

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")

    def prepare(self) -> None:
        secret = self.settings["sac_hook_secret"]
        given = self.request.headers.get("X-SAC-Hook-Secret", "")
        if not hmac.compare_digest(given.encode(), secret.encode()):
            raise web.HTTPError(403, "bad hook secret")
        # Checked: dropped, since jupyter_server's access log prints every header of
        # a request answered 5xx (a full disk's 507).
        del self.request.headers["X-SAC-Hook-Secret"]

    def body(self) -> dict[str, Any]:
        try:
            data = json.loads(self.request.body)
        except ValueError:
            raise web.HTTPError(400, "invalid JSON") from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "a JSON object is required")
        return data


class TranscriptHookHandler(HookHandler):
    """New transcript entries: durably spooled before we answer, then uploaded."""

    async def post(self) -> None:
        body = self.body()
        events = body.get("events")
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            raise web.HTTPError(400, "events must be a list of objects")
        try:
            await asyncio.to_thread(self.settings["sac_history_spool"].append, events)
        except OSError as e:
            # A full disk: the hook keeps its offset, and the extension reads the
            # transcript again itself once there is room (the session may have
            # ended: no later hook of it would).
            path, session_id = body.get("transcript_path"), body.get("session_id")
            if isinstance(path, str) and path and isinstance(session_id, str) and session_id:
                self.settings["sac_deferred_captures"].defer(path, session_id)
            raise ApiError(
                507, "capture_paused", f"the history spool cannot be written: {e.strerror or e}"
            ) from None
        self.settings["sac_history_uploader"].wake()
        self.finish(json.dumps({"accepted": len(events)}))


class PreToolUseHookHandler(HookHandler):
    """The HITL decision for one tool call (may wait for a human)."""

    _task: asyncio.Task[dict[str, Any]] | None = None

    async def post(self) -> None:
        data = self.body()
        mode = str(data.pop("mode", "cli"))
        self._task = asyncio.create_task(self.settings["sac_hitl"].decide_tool(data, mode))
        try:
            answer = await self._task
        except asyncio.CancelledError:
            return
        self.finish(json.dumps(answer))

    def on_connection_close(self) -> None:
        # The hook process died (the turn was cancelled): withdraw its request.
        if self._task is not None and not self._task.done():
            self._task.cancel()
        with contextlib.suppress(Exception):
            super().on_connection_close()
