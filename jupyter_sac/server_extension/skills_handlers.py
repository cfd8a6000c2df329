"""Skills API of the sandbox extension: installed skills, sync now, run with values.

``GET sac/api/skills``, ``POST sac/api/skills/sync`` and
``POST sac/api/skills/{command}/run`` (see docs/skills.md).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..errors import ApiError
from ..rules.skills import COMMAND_RE, SkillError, run_command, validate_values
from .chat import validate_session_id
from .chat_handlers import ChatBaseHandler
from .service_client import ServiceError
from .skills_sync import SkillSync, SyncError, entry_spec

# How long a run in the terminal waits for a just-started Claude terminal to be ready.
TERMINAL_READY_SECONDS = 30
# Claude Code's idle input box shows this hint under the prompt line.
READY_HINT = "for shortcuts"


def installed_model(entry: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "command", "title", "description", "parameters", "version", "tags")
    return {k: entry.get(k) for k in keys}


class SkillsBaseHandler(ChatBaseHandler):
    @property
    def skill_sync(self) -> SkillSync:
        return self.settings["sac_skill_sync"]

    async def sync_now(self) -> dict[str, Any]:
        try:
            return await self.skill_sync.sync()
        except (ServiceError, SyncError, SkillError, OSError) as e:
            raise ApiError(502, "sync_failed", f"skill sync failed: {e}") from None


class InstalledSkillsHandler(SkillsBaseHandler):
    """GET: the skills installed in this agent (as last synced) and the sync status."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        installed = await asyncio.to_thread(self.skill_sync.installed)
        self.finish(
            json.dumps(
                {
                    "skills": [installed_model(e) for _, e in sorted(installed.items())],
                    "sync": self.skill_sync.status,
                }
            )
        )


class SyncHandler(SkillsBaseHandler):
    """POST: sync now (the sidebar calls this after an install or uninstall)."""

    @web.authenticated
    @authorized("execute")
    async def post(self) -> None:
        status = await self.sync_now()
        installed = await asyncio.to_thread(self.skill_sync.installed)
        self.finish(json.dumps({"sync": status, "skills": sorted(installed)}))


class RunHandler(SkillsBaseHandler):
    """POST {"values", "mode": "chat"|"terminal", "session_id"}: run an installed skill.

    The values are checked against the skill's parameter types, then the slash
    command ``/<command> <rendered request>`` goes to a chat turn (the default) or
    is typed into the Claude terminal."""

    @web.authenticated
    @authorized("execute")
    async def post(self, command: str) -> None:
        body = self.json_body()  # fields, and mode: chat or terminal (openapi.yaml)
        mode = body.get("mode", "chat")
        if not COMMAND_RE.match(command):
            raise ApiError(404, "not_found", "no installed skill by that name")
        entry = await self._installed(command)
        spec = entry_spec(entry)
        try:
            values = validate_values(spec.parameters, body.get("values"))
        except SkillError as e:
            raise ApiError(400, "invalid_field", f"{e.field}: {e.message}", field=e.field) from None
        text = run_command(spec, values)
        if mode == "chat":
            sid = body.get("session_id")
            started = await self.settings["sac_chat"].send(
                text, None if sid is None else validate_session_id(sid)
            )
            result: dict[str, Any] = {"mode": "chat", **started}
        else:
            if body.get("session_id") is not None:
                raise ApiError(
                    400, "invalid_field", "session_id: only for chat runs", field="session_id"
                )
            await self._type_into_terminal(text)
            result = {"mode": "terminal", "terminal": "claude"}
        self.set_status(202)
        self.finish(json.dumps({"command": text, "values": values, **result}))

    async def _installed(self, command: str) -> dict[str, Any]:
        installed = await asyncio.to_thread(self.skill_sync.installed)
        if command not in installed:
            # Installed a moment ago and not synced yet: sync once before refusing.
            await self.sync_now()
            installed = await asyncio.to_thread(self.skill_sync.installed)
        if command not in installed:
            raise ApiError(
                404, "not_found", f"no installed skill {command!r}: install it in this agent"
            )
        return installed[command]

    async def _type_into_terminal(self, text: str) -> None:
        terminal = self.settings["sac_claude_terminal"]
        was_running = terminal.status()["running"]
        await terminal.ensure()
        term = terminal.manager.terminals["claude"]
        if not was_running:
            await self._wait_ready()
        # A bracketed paste keeps a multi-line request one message; Enter sends it.
        term.ptyproc.write("\x1b[200~" + text + "\x1b[201~")
        term.ptyproc.write("\r")

    async def _wait_ready(self) -> None:
        watcher = self.settings["sac_hitl"].watcher
        deadline = time.monotonic() + TERMINAL_READY_SECONDS
        while time.monotonic() < deadline:
            if watcher is not None and READY_HINT in "\n".join(watcher.screen.lines()):
                return
            await asyncio.sleep(0.1)
        raise ApiError(409, "terminal_starting", "the Claude terminal is still starting; retry")
