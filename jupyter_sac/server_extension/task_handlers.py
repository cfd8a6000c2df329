"""Tasks on the sandbox side (docs/api.md#tasks): ``POST sac/api/tasks/run``
checks a repository out into the workspace, then starts one chat turn with the
task's prompt in a new chat session (202 ``{session_id, turn_id, checkout}``).
The `sac` service's task runner calls it, then follows and cancels the turn with
the chat API.

The repository's token (one of the owner's secrets, which the service sends
with the request) reaches git as an HTTP header through git's environment
configuration (``GIT_CONFIG_*``): never on a command line, never in the clone's
``.git/config``. Git may use http(s) only (``GIT_ALLOW_PROTOCOL``), follows no
redirect (the header would go along to another host) and never prompts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..errors import ApiError
from .base import TERMINALS_RESOURCE, SacHandler
from .chat import ChatManager

# Seconds a checkout may take (the task's own timeout also bounds it).
CHECKOUT_SECONDS = 600.0
# Where checkouts go, under the workspace.
REPOS_FOLDER = "repos"


def checkout_name(url: str) -> str:
    """The folder a repository is checked out into: its URL's last part, without
    ``.git``, reduced to safe characters."""
    last = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    last = last[:-4] if last.endswith(".git") else last
    name = re.sub(r"[^A-Za-z0-9._-]", "-", last).strip(".-")
    return name[:100] or "repository"


def git_environment(token: str | None) -> dict[str, str]:
    env = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ALLOW_PROTOCOL": "http:https",
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.followRedirects",
        "GIT_CONFIG_VALUE_0": "false",
    }
    if token:
        credentials = token if ":" in token else f"x-access-token:{token}"
        header = "Authorization: Basic " + base64.b64encode(credentials.encode()).decode()
        env.update(
            {"GIT_CONFIG_COUNT": "2", "GIT_CONFIG_KEY_1": "http.extraHeader",
             "GIT_CONFIG_VALUE_1": header}
        )  # fmt: skip
    return env


async def _git(args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> None:
    proc = await asyncio.create_subprocess_exec(
        "git", *args, cwd=cwd, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ApiError(422, "checkout_timeout", "the repository's checkout took too long") from None
    if proc.returncode != 0:
        text = out.decode(errors="replace").strip()[-2000:]
        raise ApiError(422, "checkout_failed", f"git {args[0]} failed: {text}")


async def check_out(workspace: Path, repository: dict[str, Any], timeout: float) -> str:
    """Clone (or, when its folder is already a checkout, fetch) ``repository`` into
    ``repos/<name>`` of the workspace at its ``ref``: the folder, workspace-relative."""
    url, ref, token = repository["url"], repository.get("ref"), repository.get("token")
    if urlsplit(url).scheme not in ("http", "https"):
        raise ApiError(400, "invalid_field", "repository.url: expected an http(s) URL")
    relative = f"{REPOS_FOLDER}/{checkout_name(url)}"
    dest = workspace / relative
    env = git_environment(token)
    if (dest / ".git").is_dir():
        await _git(["-C", str(dest), "fetch", "--depth", "1", "--", url, ref or "HEAD"],
                   env, workspace, timeout)  # fmt: skip
        await _git(["-C", str(dest), "checkout", "--detach", "FETCH_HEAD"], env, workspace, timeout)
        return relative
    if dest.exists():
        raise ApiError(409, "checkout_exists", f"{relative} exists and is not a git checkout")
    dest.parent.mkdir(parents=True, exist_ok=True)
    args = ["clone", "--depth", "1", *([f"--branch={ref}"] if ref else []), "--", url, str(dest)]
    await _git(args, env, workspace, timeout)
    return relative


class TaskRunHandler(SacHandler):
    """POST sac/api/tasks/run {"prompt", "repository"?}: check out, start the turn."""

    # It runs code as the agent (a chat turn), as the chat API does.
    auth_resource = TERMINALS_RESOURCE

    @web.authenticated
    @authorized("execute")
    async def post(self) -> None:
        body = self.json_body()
        chat: ChatManager = self.settings["sac_chat"]
        checkout = None
        if body.get("repository"):
            workspace = Path(self.settings["sac_workspace_sync"].root)
            checkout = await check_out(workspace, body["repository"], CHECKOUT_SECONDS)
        started = await chat.send(body["prompt"], None)
        self.set_status(202)
        self.finish(json.dumps({**started, "checkout": checkout}))
