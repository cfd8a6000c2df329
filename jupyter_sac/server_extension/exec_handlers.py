"""``sac/api/exec`` (WebSocket) and ``GET sac/api/terminal/screen``: what the `sac`
service's exec and screen API relays to (docs/api.md, "Exec and screen").

Exec accepts only a caller presenting this server's own hub token, which the
`sac` service holds for it (and the sandbox itself, which runs code anyway): the
service is where the owner's ``exec_enabled`` setting is applied and every
command is audited, so neither the owner's browser session nor any other token
that opens this server may run commands here directly. (Those who may open the
server have its terminals anyway; this route is the audited way in.) The service
never sends its own token here: a sandbox that answered in its server's place
would capture it."""

from __future__ import annotations

import asyncio
import hmac
import json
import os
from typing import Any

from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from tornado import web, websocket

from ..errors import ApiError, request_error
from ..rules.exec import ExecRequestError, parse_request
from .base import TERMINALS_RESOURCE, JsonErrors, SacHandler
from .exec import CommandRun, resolve_cwd
from .terminal_screen import screen_snapshot


def presents_own_token(request: Any, own: str | None = None) -> bool:
    """Whether the request carries this server's own hub token (its
    JUPYTERHUB_API_TOKEN): the credential the `sac` service calls it with (kept
    encrypted by the spawner; service/operations/exec.server_credentials). Nobody
    else is given it: not the owner's browser, not an administrator."""
    own = own if own is not None else os.environ.get("JUPYTERHUB_API_TOKEN", "")
    scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
    if not own or scheme.lower() not in ("token", "bearer"):
        return False
    return hmac.compare_digest(token.strip().encode(), own.encode())


class ExecSocket(JsonErrors, WebSocketMixin, websocket.WebSocketHandler, JupyterHandler):
    """WebSocket sac/api/exec: the first message is the request (rules/exec.py), then
    ``{"accepted": true}`` once it is checked, and the command starts at the next
    message, ``{"run": true}`` (the service audits it in between, so that what it
    records is what runs, and a refused request leaves no entry); then the
    command's frames. ``{"stdin": text}`` and ``{"eof": true}`` feed a command
    started with ``stdin_open``. A refused request gets one frame ``{"error",
    "message", "status": 400, "field"?}`` before anything runs, and the socket closes."""

    auth_resource = TERMINALS_RESOURCE

    _accepted: CommandRun | None = None
    _run: CommandRun | None = None
    _task: asyncio.Task[Any] | None = None

    @ws_authenticated
    @authorized("execute")
    async def get(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        if not presents_own_token(self.request):
            raise ApiError(
                403,
                "forbidden",
                "commands run here only through the sac service's exec API"
                " (POST .../agents/<slug>/exec), which checks and audits them",
            )
        res = super().get(*args, **kwargs)
        if res is not None:
            await res

    async def on_message(self, message: str | bytes) -> None:
        try:
            data = json.loads(message)
        except (ValueError, UnicodeDecodeError):
            await self._refuse(ApiError(400, "invalid_json", "a message is a JSON object"))
            return
        if self._accepted is None:
            await self._accept(data)
            return
        if self._run is None:
            if isinstance(data, dict) and data.get("run") is True:
                self._run = self._accepted
                self._task = asyncio.create_task(self._finish(self._run))
            return
        if not isinstance(data, dict):
            return
        try:
            if isinstance(data.get("stdin"), str):
                await self._run.write_stdin(data["stdin"])
            if data.get("eof") is True:
                await self._run.close_stdin()
        except ExecRequestError as e:  # over the stdin limit: the command's stdin is closed
            await self._run.close_stdin()
            await self._send({"error": e.code, "message": e.message})

    async def _accept(self, data: Any) -> None:
        try:
            request = parse_request(data)
            cwd = resolve_cwd(request.cwd, self.settings["sac_workspace"])
        except ExecRequestError as e:
            await self._refuse(request_error(e))
            return
        self._accepted = CommandRun(request, cwd, self._send)
        await self._send({"accepted": True})

    async def _finish(self, run: CommandRun) -> None:
        await run.run()
        self.close(1000, "done")

    async def _refuse(self, e: ApiError) -> None:
        frame = {"error": e.code, "message": e.message, "status": e.status_code, **e.extra}
        await self._send(frame)
        self.close(1008, e.code)

    async def _send(self, frame: dict[str, Any]) -> None:
        await self.write_message(json.dumps(frame))

    def on_close(self) -> None:
        if self._run is not None and self._task is not None and not self._task.done():
            self._run.gone()


class TerminalScreenHandler(SacHandler):
    """GET sac/api/terminal/screen: the Claude terminal's rows, cursor and size, and
    the prompt detector's verdict (``{"running": false}`` when it is not running)."""

    auth_resource = TERMINALS_RESOURCE

    @web.authenticated
    @authorized
    async def get(self) -> None:
        watcher = self.settings["sac_hitl"].watcher
        self.finish(json.dumps(screen_snapshot(self.settings["sac_claude_terminal"], watcher)))
