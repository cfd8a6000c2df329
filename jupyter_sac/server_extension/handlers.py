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
from ..runtimes.claude_config import MODE_HEADER, SECRET_HEADER
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
                        "takes_text": current.text_key is not None,
                    },
                    "terminal_reads": watcher.reads if watcher is not None else 0,
                },
                default=str,
            )
        )


class HookHandler(JsonErrors, web.RequestHandler):
    """Base of the endpoints Claude Code's http hooks post to (the event's JSON,
    as Claude Code sends it).

    Not a Jupyter API: authenticated by the per-server hook secret that only
    processes started by this server inherit (claude sends it as a header filled
    in from its environment; no cookies, so no XSRF), not by jupyter_server's
    authenticator and authorizer (no Jupyter user calls them).
    """

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")

    def prepare(self) -> None:
        secret = self.settings["sac_hook_secret"]
        given = self.request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), secret.encode()):
            raise web.HTTPError(403, "bad hook secret")
        # Checked: dropped, since jupyter_server's access log prints every header of
        # a request answered 5xx (a full disk's 507).
        del self.request.headers[SECRET_HEADER]

    def body(self) -> dict[str, Any]:
        try:
            data = json.loads(self.request.body)
        except ValueError:
            raise web.HTTPError(400, "invalid JSON") from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "a JSON object is required")
        return data


class TranscriptHookHandler(HookHandler):
    """A capture event (Stop, SessionEnd, …): the transcripts it names are read
    from their last offset into the spool before the hook is answered."""

    async def post(self) -> None:
        hook = self.body()
        mode = self.request.headers.get(MODE_HEADER) or ""
        # The Claude terminal follows its conversation (to resume it after a release).
        self.settings["sac_claude_terminal"].note_hook(hook, mode)
        try:
            await self.settings["sac_transcript_capture"].capture_hook(hook)
        except ValueError as e:
            raise web.HTTPError(400, str(e)) from None
        except OSError as e:
            # A full disk: the offset did not move, and the extension reads the
            # transcript again itself once there is room (the session may have ended:
            # no later hook of it would). GET history/status says capture_paused.
            raise ApiError(
                507, "capture_paused", f"the history spool cannot be written: {e.strerror or e}"
            ) from None
        # Claude Code reads a JSON object as the hook's output: nothing to say.
        self.finish("{}")


class PreToolUseHookHandler(HookHandler):
    """The HITL decision for one tool call (may wait for a human), answered in
    Claude Code's hook output format. No decision (an interactive claude whose
    policy says ask) is ``{}``: Claude Code then shows its own permission menu."""

    _task: asyncio.Task[dict[str, Any]] | None = None

    async def post(self) -> None:
        data = self.body()
        mode = self.request.headers.get(MODE_HEADER) or "cli"
        self._task = asyncio.create_task(self.settings["sac_hitl"].decide_tool(data, mode))
        try:
            answer = await self._task
        except asyncio.CancelledError:
            return
        decision = answer.get("decision")
        if decision not in ("allow", "deny"):
            self.finish("{}")
            return
        self.finish(
            json.dumps(
                {
                    "hookSpecificOutput": {
                        "hookEventName": "PreToolUse",
                        "permissionDecision": decision,
                        "permissionDecisionReason": str(answer.get("reason") or ""),
                    }
                }
            )
        )

    def on_connection_close(self) -> None:
        # claude went away (the turn was cancelled): withdraw its request.
        if self._task is not None and not self._task.done():
            self._task.cancel()
        with contextlib.suppress(Exception):
            super().on_connection_close()
