"""REST handlers of the sandbox extension (thin: authorise, call, serialise)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
from typing import Any

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from tornado import web, websocket

from .chat import ChatError, ChatManager


class StatusHandler(APIHandler):
    @web.authenticated
    async def get(self) -> None:
        info = self.settings["sac_runtime_info"]
        self.finish(json.dumps(await info.status()))


class TerminalHandler(APIHandler):
    """GET: the Claude terminal's status; POST: make sure it runs (returns its name)."""

    @web.authenticated
    async def get(self) -> None:
        self.finish(json.dumps(self.settings["sac_claude_terminal"].status()))

    @web.authenticated
    async def post(self) -> None:
        self.finish(json.dumps(await self.settings["sac_claude_terminal"].ensure()))


class TerminalRestartHandler(APIHandler):
    @web.authenticated
    async def post(self) -> None:
        self.finish(json.dumps(await self.settings["sac_claude_terminal"].restart()))


class HistoryStatusHandler(APIHandler):
    """The history spool: events waiting for upload, last error."""

    @web.authenticated
    async def get(self) -> None:
        self.finish(json.dumps(await self.settings["sac_history_uploader"].status()))


class HitlStatusHandler(APIHandler):
    """Requests this sandbox is waiting on, and the terminal prompt watcher's view."""

    @web.authenticated
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
                },
                default=str,
            )
        )


class HookHandler(web.RequestHandler):
    """Base of the endpoints the Claude Code hook entry point calls.

    Not a Jupyter API: authenticated by the per-server hook secret that only
    processes started by this server inherit (no cookies, so no XSRF).
    """

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")

    def prepare(self) -> None:
        secret = self.settings["sac_hook_secret"]
        given = self.request.headers.get("X-SAC-Hook-Secret", "")
        if not hmac.compare_digest(given.encode(), secret.encode()):
            raise web.HTTPError(403, "bad hook secret")

    def body(self) -> dict[str, Any]:
        try:
            data = json.loads(self.request.body)
        except ValueError:
            raise web.HTTPError(400, "invalid JSON") from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "a JSON object is required")
        return data

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = exc.log_message if isinstance(exc, web.HTTPError) else "internal error"
        self.finish(json.dumps({"error": status_code, "message": message}))


class TranscriptHookHandler(HookHandler):
    """New transcript entries: durably spooled before we answer, then uploaded."""

    async def post(self) -> None:
        events = self.body().get("events")
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            raise web.HTTPError(400, "events must be a list of objects")
        await asyncio.to_thread(self.settings["sac_history_spool"].append, events)
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


# ---- chat -------------------------------------------------------------------------

SESSION_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class ChatBaseHandler(APIHandler):
    @property
    def chat(self) -> ChatManager:
        return self.settings["sac_chat"]

    def fail(self, status: int, message: str) -> None:
        self.set_status(status)
        self.finish(json.dumps({"error": status, "message": message}))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ChatError):
            self.set_status(exc.status)
            self.finish(json.dumps({"error": exc.status, "message": exc.message}))
            return
        super().write_error(status_code, **kwargs)

    def session_id(self, value: Any) -> str:
        if not isinstance(value, str) or not SESSION_ID.match(value):
            raise ChatError(400, "session_id: expected a session id (a UUID)")
        return value


class ChatHandler(ChatBaseHandler):
    """POST sac/api/chat {"message", "session_id"}: start a turn."""

    @web.authenticated
    async def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"")
        except ValueError:
            raise ChatError(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ChatError(400, "the body must be a JSON object")
        unknown = set(body) - {"message", "session_id"}
        if unknown:
            raise ChatError(400, f"{sorted(unknown)[0]}: unknown field")
        sid = body.get("session_id")
        started = await self.chat.send(
            body.get("message"), None if sid is None else self.session_id(sid)
        )
        self.set_status(202)
        self.finish(json.dumps(started))


class ChatSessionsHandler(ChatBaseHandler):
    @web.authenticated
    async def get(self) -> None:
        self.finish(json.dumps({"sessions": self.chat.list()}))


class ChatSessionHandler(ChatBaseHandler):
    @web.authenticated
    async def get(self, session_id: str) -> None:
        session = self.chat.get(self.session_id(session_id))
        self.finish(json.dumps({**session.model(), "events": self.chat.events(session_id)}))


class ChatCancelHandler(ChatBaseHandler):
    @web.authenticated
    async def post(self, session_id: str) -> None:
        cancelled = await self.chat.cancel(self.session_id(session_id))
        self.finish(json.dumps({"cancelled": cancelled}))


class ChatEventsSocket(JupyterHandler, websocket.WebSocketHandler):
    """WebSocket sac/api/chat/events?session_id=&since=: logged events, then live ones."""

    auth_resource = "terminals"  # who may run the agent's terminal may chat with it

    async def pre_get(self) -> None:
        user = self.current_user
        authorized = await ensure_async(
            self.authorizer.is_authorized(self, user, "execute", self.auth_resource)
        )
        if not authorized:
            raise web.HTTPError(403)

    @ws_authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        await self.pre_get()
        chat: ChatManager = self.settings["sac_chat"]
        sid = self.get_argument("session_id", None)
        if sid is not None and (not SESSION_ID.match(sid) or sid not in chat.sessions):
            raise web.HTTPError(404, "no such chat session")
        since = self.get_argument("since", "0")
        if not since.isdigit():
            raise web.HTTPError(400, "since: expected a number")
        self._session = sid
        self._since = int(since)
        res = super().get(*args, **kwargs)
        if res is not None:
            await res

    def open(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        chat: ChatManager = self.settings["sac_chat"]
        backlog, self._queue = chat.subscribe(self._session, self._since)
        self._pump = asyncio.create_task(self._send(backlog))

    async def _send(self, backlog: list[dict[str, Any]]) -> None:
        try:
            for event in backlog:
                await self.write_message(json.dumps(event))
            while True:
                event = await self._queue.get()
                await self.write_message(json.dumps(event))
        except websocket.WebSocketClosedError:
            pass

    def on_message(self, message: str | bytes) -> None:
        pass  # the client only listens

    def on_close(self) -> None:
        self.settings["sac_chat"].unsubscribe(self._session, self._queue)
        self._pump.cancel()
