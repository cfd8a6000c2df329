"""Chat API of the sandbox extension (thin: authorise, parse, call ChatManager, serialise).

Mounted under the single-user server's base URL:
``POST sac/api/chat``, ``GET sac/api/chat/sessions``, ``GET sac/api/chat/sessions/{id}``,
``POST sac/api/chat/sessions/{id}/cancel`` and the websocket ``sac/api/chat/events``.
See docs/api.md ("Chat").
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from tornado import web, websocket

from ..errors import ApiError
from ..runtimes.claude_session import load_sdk
from .base import TERMINALS_RESOURCE, JsonErrors, SacHandler
from .chat import ChatManager, Subscription, validate_session_id

# A message is at most 100,000 characters; JSON-escaped that stays under 1 MiB.


class ChatBaseHandler(SacHandler):
    # Who may use the agent's terminals may chat with it: both run code in the sandbox.
    auth_resource = TERMINALS_RESOURCE

    @property
    def chat(self) -> ChatManager:
        return self.settings["sac_chat"]


class ChatHandler(ChatBaseHandler):
    """POST sac/api/chat {"message", "session_id"}: start a turn (202)."""

    @web.authenticated
    @authorized("execute")
    async def post(self) -> None:
        body = self.json_body()
        sid = body.get("session_id")
        started = await self.chat.send(
            body.get("message"), None if sid is None else validate_session_id(sid)
        )
        self.set_status(202)
        self.finish(json.dumps(started))


class ChatSessionsHandler(ChatBaseHandler):
    """GET sac/api/chat/sessions: every session, newest first."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(json.dumps({"sessions": self.chat.list()}))


class ChatSessionHandler(ChatBaseHandler):
    """GET sac/api/chat/sessions/{id}: the session and its whole event log."""

    @web.authenticated
    @authorized
    async def get(self, session_id: str) -> None:
        self.finish(json.dumps(await self.chat.session_with_events(session_id)))


class ChatCancelHandler(ChatBaseHandler):
    """POST sac/api/chat/sessions/{id}/cancel: stop the running turn."""

    @web.authenticated
    @authorized("execute")
    async def post(self, session_id: str) -> None:
        self.finish(json.dumps({"cancelled": await self.chat.cancel(session_id)}))


class ChatEventsSocket(JsonErrors, WebSocketMixin, websocket.WebSocketHandler, JupyterHandler):  # type: ignore[misc]
    """WebSocket sac/api/chat/events?session_id=&since=: logged events, then live ones.

    Authenticated like Jupyter's kernel and terminal websockets (cookie or token,
    including ``Authorization: token …``; no login redirect) and authorised to
    read the ``terminals`` resource, as the chat's other reads are.
    """

    auth_resource = TERMINALS_RESOURCE

    _session: str | None = None
    _since: int = 0
    _sub: Subscription | None = None
    _pump: asyncio.Task[None] | None = None

    @ws_authenticated
    @authorized("read")
    async def get(self, *args: Any, **kwargs: Any) -> None:
        chat: ChatManager = self.settings["sac_chat"]
        sid = self.get_argument("session_id", None) or None
        since = self.get_argument("since", "0")
        if not since.isascii() or not since.isdigit() or len(since) > 18:
            raise ApiError(
                400, "invalid_field", "since: expected a non-negative integer", field="since"
            )
        if sid is not None:
            # Loaded before the upgrade, so open() replays from memory at once.
            await chat.session_with_events(sid)
        self._session, self._since = sid, int(since)
        res = super().get(*args, **kwargs)
        if res is not None:
            await res

    def open(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().open(*args, **kwargs)  # WebSocketMixin: keep-alive pings
        _load_sdk_soon()
        chat: ChatManager = self.settings["sac_chat"]
        backlog, self._sub = chat.subscribe(self._session, self._since, self._overflow)
        self._pump = asyncio.create_task(self._send(backlog, self._sub))

    def _overflow(self) -> None:
        # Too far behind to keep up: the client reconnects with `since` and catches up.
        self.close(1013, "too far behind; reconnect with since=<last seq>")

    async def _send(self, backlog: list[dict[str, Any]], sub: Subscription) -> None:
        try:
            for event in backlog:
                await self.write_message(json.dumps(event))
            while True:
                await self.write_message(json.dumps(await sub.queue.get()))
        except websocket.WebSocketClosedError:
            pass

    def on_message(self, message: str | bytes) -> None:
        pass  # the client only listens

    def on_close(self) -> None:
        if self._sub is not None:
            self.settings["sac_chat"].unsubscribe(self._sub)
        if self._pump is not None:
            self._pump.cancel()


_sdk_loading: asyncio.Future[None] | None = None


def _load_sdk_soon() -> None:
    """A chat panel opened (its events websocket): import the SDK in a thread now,
    while a person types, rather than in their first turn (the server does not
    import it at start, to stay small while idle)."""
    global _sdk_loading
    if _sdk_loading is None:
        _sdk_loading = asyncio.get_running_loop().run_in_executor(None, load_sdk)
