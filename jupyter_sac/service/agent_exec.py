"""Exec and screen endpoints: POST api/users/<user>/agents/<slug>/exec (NDJSON),
the WebSocket .../exec/ws and GET .../terminal/screen (the operations, who may and
what is audited, are in operations/exec.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from tornado import websocket
from tornado.iostream import StreamClosedError

from ..errors import ApiError, request_error
from ..rules.exec import ExecRequest, ExecRequestError, parse_request
from ..store import AgentRecord
from .base import BaseHandler
from .openapi import CONTRACT
from .operations import exec as ops


class AgentExecHandler(BaseHandler):
    """POST .../exec: the command's frames as NDJSON, one JSON object a line."""

    _sandbox: websocket.WebSocketClientConnection | None = None

    async def post(self, owner: str, slug: str) -> None:
        agent = await ops.exec_agent(self.ctx, self.actor, owner, slug)
        try:
            request = parse_request(self.json_body())
        except ExecRequestError as e:
            raise request_error(e) from None
        conn = self._sandbox = await ops.start_exec(self.ctx, self.actor, agent, request)
        last: dict[str, Any] | None = None
        try:
            self.set_header("Content-Type", "application/x-ndjson")
            frame = await _frame(conn)
            while frame is not None:
                self.write(json.dumps(frame) + "\n")
                await self.flush()
                if ops.is_last(frame):
                    last = frame
                    break
                frame = await _frame(conn)
        except StreamClosedError:
            pass  # the caller went away: closing the socket kills the command
        finally:
            conn.close()
            await ops.end_exec(self.ctx, self.actor, agent, request, last)
        if not self._finished:
            self.finish()

    def on_connection_close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
        super().on_connection_close()


async def _frame(conn: websocket.WebSocketClientConnection) -> dict[str, Any] | None:
    """The sandbox's next frame (None: its stream ended, or broke the protocol)."""
    return ops.parse_frame(await conn.read_message())


class AgentExecSocket(BaseHandler, websocket.WebSocketHandler):
    """WebSocket .../exec/ws: who may and the exec_enabled setting are settled before
    the upgrade (401/403/404/409 as HTTP answers); the first message is the request,
    refused as one frame ``{"error", "message", "status"}``; then the sandbox's frames,
    and the client's ``{"stdin"}``/``{"eof"}`` messages go to the command."""

    _agent: AgentRecord | None = None
    _request: ExecRequest | None = None
    _sandbox: websocket.WebSocketClientConnection | None = None
    _pump: asyncio.Task[None] | None = None

    async def get(self, owner: str, slug: str) -> None:
        self._agent = await ops.exec_agent(self.ctx, self.actor, owner, slug)
        if self.request.headers.get("Upgrade", "").lower() != "websocket":
            # (tornado's own answer would be a bare text 400)
            raise ApiError(
                400, "not_websocket", "this is a WebSocket: GET it with Upgrade: websocket"
            )
        await super().get(owner, slug)

    async def on_message(self, message: str | bytes) -> None:
        try:
            data = json.loads(message)
        except (ValueError, UnicodeDecodeError):
            data = None
        if self._sandbox is not None:
            if isinstance(data, dict):
                relayed = {k: data[k] for k in ("stdin", "eof") if k in data}
                if relayed:
                    await self._sandbox.write_message(json.dumps(relayed))
            return
        if self._request is not None:
            return  # still connecting to the sandbox
        try:
            if not isinstance(data, dict):
                raise ApiError(400, "invalid_json", "the first message is a JSON object")
            CONTRACT.check("ExecRequest", data)
            try:
                self._request = parse_request(data)
            except ExecRequestError as e:
                raise request_error(e) from None
            assert self._agent is not None
            self._sandbox = await ops.start_exec(self.ctx, self.actor, self._agent, self._request)
        except ApiError as e:
            await self._send({"error": e.code, "message": e.message, "status": e.status_code,
                              **e.extra})  # fmt: skip
            self.close(1008, e.code)
            return
        self._pump = asyncio.create_task(self._relay(self._sandbox))

    async def _relay(self, conn: websocket.WebSocketClientConnection) -> None:
        last: dict[str, Any] | None = None
        try:
            while (frame := await _frame(conn)) is not None:
                await self._send(frame)
                if ops.is_last(frame):
                    last = frame
                    break
        except websocket.WebSocketClosedError:
            pass  # the client went away: closing the socket kills the command
        finally:
            conn.close()
            assert self._agent is not None and self._request is not None
            await ops.end_exec(self.ctx, self.actor, self._agent, self._request, last)
        self.close(1000, "done")

    async def _send(self, frame: dict[str, Any]) -> None:
        await self.write_message(json.dumps(frame))

    def on_close(self) -> None:
        if self._sandbox is not None:
            with contextlib.suppress(Exception):
                self._sandbox.close()


class AgentScreenHandler(BaseHandler):
    """GET .../terminal/screen: the Claude terminal's screen, from the sandbox."""

    async def get(self, owner: str, slug: str) -> None:
        self.write_json(await ops.read_screen(self.ctx, self.actor, owner, slug))
