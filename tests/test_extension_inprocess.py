"""The sandbox extension in this process, through its HTTP API (pytest-jupyter's
``jp_serverapp`` and ``jp_fetch``), without a hub or the `sac` service: who gets
in, and how refusals and bad input are answered. What needs the service (the
relay's answers, syncs, HITL) is left to the full-stack tests.

The server is an agent's sandbox (``SacExtensionApp.agent_sandbox``) with
jupyter_server's own token login; the authorizer is chosen per test, as a
deployment could replace JupyterHub's (which lets in whoever may open the server).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import script_model
from jupyter_server.auth import Authorizer

# pytest-jupyter's fixtures, for this module only: its hooks (which would run every
# coroutine test of the suite in its own loop) are not registered from a test module.
from pytest_jupyter.jupyter_server import *  # noqa: F403
from tornado import web
from tornado.httpclient import HTTPResponse
from tornado.simple_httpclient import HTTPTimeoutError
from traitlets.config import Config

from jupyter_sac.runtimes.claude import claude_binary
from jupyter_sac.server_extension.app import ROUTES
from jupyter_sac.server_extension.handlers import HookHandler
from jupyter_sac.stack import free_port

# What initialize_settings puts in the environment for the processes it starts.
SANDBOX_ENV = ("CLAUDE_CONFIG_DIR", "SAC_HOOK_URL", "SAC_HOOK_SECRET")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
SESSION = "6f1c0000-0000-4000-8000-000000000000"


class Everyone(Authorizer):
    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return True


class ReadOnly(Authorizer):
    """A deployment's read-only access: look, but neither change nor run anything."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return action == "read"


class Nobody(Authorizer):
    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return False


Fetch = Callable[..., HTTPResponse]


@pytest.fixture
def authorizer() -> type[Authorizer]:
    return Everyone


@pytest.fixture
def jp_server_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, authorizer: type[Authorizer]
) -> Iterator[Config]:
    # The extension sets these for its children; monkeypatch restores them after.
    for name in (*SANDBOX_ENV, "SAC_SERVICE_URL", "SAC_AGENT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    # An agent's sandbox takes over SIGINT (see SacExtensionApp); give it back.
    sigint = signal.getsignal(signal.SIGINT)
    yield Config(
        {
            "ServerApp": {
                "jpserver_extensions": {"jupyter_sac": True},
                "authorizer_class": authorizer,
            },
            "SacExtensionApp": {
                "agent_sandbox": True,
                "workspace": str(tmp_path / "workspace"),
                "state_dir": str(tmp_path / "state"),
                "claude_config_dir": str(tmp_path / "claude"),
                "skills_sync_interval": 0.0,
            },
        }
    )
    signal.signal(signal.SIGINT, sigint)


@pytest.fixture
def fetch(jp_fetch: Callable[..., Awaitable[HTTPResponse]], jp_asyncio_loop: Any) -> Fetch:
    """One request to the server, run on its loop; errors are answers, not raised."""

    def call(path: str, method: str = "GET", body: Any = None, **kwargs: Any) -> HTTPResponse:
        if body is not None and not isinstance(body, (str, bytes)):
            body = json.dumps(body)
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        return jp_asyncio_loop.run_until_complete(
            jp_fetch(*path.split("?")[0].split("/"), method=method, body=body,
                     params=_query(path), raise_error=False, allow_nonstandard_methods=True,
                     **kwargs)
        )  # fmt: skip

    return call


def _query(path: str) -> dict[str, str]:
    _, _, query = path.partition("?")
    return dict(pair.split("=", 1) for pair in query.split("&") if pair)


def house_error(resp: HTTPResponse) -> dict[str, Any] | None:
    """The body if it is the house error shape (docs/api.md#errors): JSON with
    ``error`` and ``message``; else None."""
    if not resp.headers.get("Content-Type", "").startswith("application/json"):
        return None
    body = json.loads(resp.body)
    if isinstance(body.get("error"), str) and isinstance(body.get("message"), str):
        return body
    return None


def error_of(resp: HTTPResponse) -> dict[str, Any]:
    body = house_error(resp)
    assert body is not None, (resp.headers.get("Content-Type"), resp.body)
    return body


def user_routes() -> list[tuple[str, str]]:
    """(method, path) of every route of the extension that a user calls: all but
    Claude Code's hooks, which the server's hook secret opens instead."""
    probes = []
    for pattern, handler in ROUTES:
        if issubclass(handler, HookHandler):
            continue
        path = pattern.lstrip("/").replace("(.*)", "users/alice/agents/a1")
        path = path.replace("([^/]+)/run", "nope/run").replace("([^/]+)", SESSION)
        assert not re.search(r"[()\[\]]", path), path
        for method in METHODS:
            if getattr(handler, method.lower()) is not getattr(web.RequestHandler, method.lower()):
                probes.append((method, path))
    return probes


def test_the_status_answers(fetch: Fetch) -> None:
    resp = fetch("sac/api/status")
    assert resp.code == 200, resp.body
    assert json.loads(resp.body)["versions"]["jupyter_sac"]
    activity = json.loads(fetch("sac/api/activity").body)
    assert activity["busy"] is False


def refusals(fetch: Fetch, probes: list[tuple[str, str, Any]], **kwargs: Any) -> list[str]:
    """The probes not refused with 403 in the house shape, each as one line."""
    wrong = []
    for method, path, body in probes:
        try:
            # A route that lets the call through may start work that outlasts this.
            resp = fetch(path, method, body, request_timeout=10, **kwargs)
        except HTTPTimeoutError as e:
            wrong.append(f"{method} {path}: let through, no answer ({type(e).__name__})")
            continue
        if resp.code != 403:
            wrong.append(f"{method} {path}: {resp.code} {resp.body[:200]!r}")
        elif (house_error(resp) or {}).get("error") != "forbidden":
            wrong.append(f"{method} {path}: {resp.body[:200]!r}")
    return wrong


def test_without_a_login_every_route_is_refused(fetch: Fetch) -> None:
    probes = [(method, path, None) for method, path in user_routes()]
    # jupyter_server answers an API request it cannot authenticate with 403.
    wrong = refusals(fetch, probes, headers={"Authorization": "token not-the-token"})
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("authorizer", [Nobody])
def test_every_route_asks_the_authorizer(fetch: Fetch) -> None:
    """A route that skips jupyter_server's authorizer is open to whoever can log in,
    whatever the deployment's authorizer says (the terminal's POST, the workspace
    sync's and the preview's PUT did)."""
    probes = [(method, path, None) for method, path in user_routes()]
    assert ("POST", "sac/api/terminal", None) in probes
    wrong = refusals(fetch, probes)
    assert not wrong, "\n".join(wrong)
    message = error_of(fetch("sac/api/terminal", "POST"))["message"]
    assert "not authorized to execute on resource: terminals" in message


@pytest.mark.parametrize("authorizer", [ReadOnly])
def test_read_only_access_reads_but_changes_and_runs_nothing(fetch: Fetch) -> None:
    writes = [
        ("POST", "sac/api/terminal", None),
        ("POST", "sac/api/terminal/restart", None),
        ("POST", "sac/api/chat", {"message": "hello"}),
        ("POST", f"sac/api/chat/sessions/{SESSION}/cancel", None),
        ("POST", "sac/api/skills/sync", None),
        ("POST", "sac/api/skills/nope/run", {}),
        ("POST", "sac/api/workspace", None),
        ("PUT", "sac/api/workspace/preview?path=output/notes.txt", {"text": "changed"}),
        ("POST", "sac/api/service/agents", {}),
        ("DELETE", "sac/api/service/users/alice/agents/a1", None),
    ]
    wrong = refusals(fetch, writes)
    assert not wrong, "\n".join(wrong)
    terminal = json.loads(fetch("sac/api/terminal").body)
    assert terminal["running"] is False
    assert json.loads(fetch("sac/api/chat/sessions").body) == {"sessions": []}
    preview = fetch("sac/api/workspace/preview?path=output/notes.txt")
    assert preview.code == 404 and error_of(preview)["error"] == "not_found"


def test_bad_input_is_answered_with_the_field_at_fault(fetch: Fetch) -> None:
    cases = [
        ("POST", "sac/api/chat", "not json", 400, "invalid_json", None),
        ("POST", "sac/api/chat", {"message": "hi", "extra": 1}, 400, "invalid_field", "extra"),
        ("POST", "sac/api/chat", {"message": ""}, 400, "invalid_field", "message"),
        ("GET", "sac/api/chat/sessions/not-a-session", None, 400, "invalid_field", "session_id"),
        ("GET", f"sac/api/chat/sessions/{SESSION}", None, 404, "not_found", None),
        ("GET", "sac/api/chat/events?since=soon", None, 400, "invalid_field", "since"),
        ("POST", "sac/api/skills/nope/run", {"mode": "shell"}, 400, "invalid_field", "mode"),
        ("GET", "sac/api/workspace/preview", None, 400, "invalid_field", "path"),
        ("GET", "sac/api/workspace/preview?path=../etc/passwd", None, 400, "invalid_field", "path"),
        ("PUT", "sac/api/workspace/preview?path=output/a.txt", {"text": 3}, 400, "invalid_field",
         "text"),
        ("PUT", "sac/api/workspace/preview?path=output/a.txt", "[", 400, "invalid_json", None),
        ("PUT", "sac/api/workspace/preview?path=public/a.txt", {"text": "x"}, 403, "forbidden",
         None),
        ("GET", "sac/api/service/a/../b", None, 400, "invalid_path", None),
    ]  # fmt: skip
    for method, path, body, status, code, field in cases:
        resp = fetch(path, method, body)
        assert resp.code == status, (method, path, resp.code, resp.body)
        error = error_of(resp)
        assert error["error"] == code, (method, path, error)
        assert error.get("field") == field, (method, path, error)


def test_a_preview_saves_text_in_the_workspace(fetch: Fetch, tmp_path: Path) -> None:
    saved = fetch("sac/api/workspace/preview?path=output/notes.txt", "PUT", {"text": "hello\n"})
    assert saved.code == 200, saved.body
    assert (tmp_path / "workspace" / "output" / "notes.txt").read_text() == "hello\n"
    preview = json.loads(fetch("sac/api/workspace/preview?path=output/notes.txt").body)
    assert preview["kind"] == "text" and preview["text"] == "hello\n"


def test_one_service_client_is_shared_and_closed_at_the_stop(
    jp_serverapp: Any, jp_asyncio_loop: Any
) -> None:
    """One connection to the service per sandbox (and one without the agent's token
    for the object store), whichever part uses it; the server's stop closes both."""
    settings = jp_serverapp.web_app.settings
    service = settings["sac_service_client"]
    assert settings["sac_history_uploader"].service is service
    assert settings["sac_hitl"].client is service
    assert settings["sac_skill_sync"].client is service
    assert settings["sac_workspace_sync"].client is service.client
    assert settings["sac_workspace_sync"].plain is service.plain
    assert "Authorization" not in service.plain.headers
    jp_asyncio_loop.run_until_complete(jp_serverapp.extension_manager.stop_all_extensions())
    assert service.client.is_closed and service.plain.is_closed


def test_hooks_take_the_servers_secret_not_a_login(
    fetch: Fetch, jp_serverapp: Any, tmp_path: Path
) -> None:
    """Claude Code's hooks are opened by the secret the server hands its children
    ($SAC_HOOK_SECRET), not by a Jupyter login; their errors have the same shape.
    A capture hook names a transcript, which the server reads only under claude's
    configuration directory."""
    # As in a sandbox: JupyterHub's single-user server turns tornado's own XSRF
    # check off (jupyter_server's handlers make theirs), and the hooks send none.
    jp_serverapp.web_app.settings["xsrf_cookies"] = False
    secret = os.environ["SAC_HOOK_SECRET"]
    for path in ("sac/api/hooks/transcript", "sac/api/hooks/pre-tool-use"):
        refused = fetch(path, "POST", {})
        assert refused.code == 403, (path, refused.body)
        assert error_of(refused)["error"] == "forbidden"
        bad = fetch(path, "POST", "[]", headers={"X-SAC-Hook-Secret": secret})
        assert bad.code == 400, (path, bad.body)
        assert error_of(bad)["error"] == "bad_request"
    transcript = tmp_path / "claude" / "projects" / "-workspace" / f"{SESSION}.jsonl"
    transcript.parent.mkdir(parents=True)
    transcript.write_text('{"uuid": "u1", "type": "user"}\n{"uuid": "u2", "type": "assist')
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text('{"uuid": "u3", "type": "user"}\n')
    hook = {"session_id": SESSION, "hook_event_name": "Stop"}
    headers = {"X-SAC-Hook-Secret": secret, "Authorization": ""}
    outside = fetch("sac/api/hooks/transcript", "POST",
                    {**hook, "transcript_path": str(elsewhere)}, headers=headers)  # fmt: skip
    assert outside.code == 400 and error_of(outside)["error"] == "bad_request"
    for _ in range(2):  # the second time, nothing new: the offset moved past u1
        spooled = fetch("sac/api/hooks/transcript", "POST",
                        {**hook, "transcript_path": str(transcript)}, headers=headers)  # fmt: skip
        assert spooled.code == 200 and json.loads(spooled.body) == {}
    # Only the complete line; the one claude is still writing waits for the next hook.
    assert json.loads(fetch("sac/api/history/status").body)["backlog"] == 1


def test_an_undeclared_method_is_answered_405_with_allow(fetch: Fetch) -> None:
    """RFC 9110: a 405 says which methods the resource takes (tornado's says none)."""
    wrong = []
    for method, path in (("DELETE", "sac/api/status"), ("PATCH", "sac/api/chat"),
                         ("PUT", "sac/api/workspace")):  # fmt: skip
        resp = fetch(path, method, "{}" if method != "DELETE" else None)
        allow = {m.strip() for m in resp.headers.get("Allow", "").split(",") if m.strip()}
        expected = {m for m, p in user_routes() if p == path}
        if resp.code != 405 or not expected <= allow or method in allow:
            wrong.append(f"{method} {path}: {resp.code}, Allow {sorted(allow)}")
        elif error_of(resp)["error"] != "method_not_allowed":
            wrong.append(f"{method} {path}: {resp.body[:200]!r}")
    assert not wrong, "\n".join(wrong)


# ---- Claude Code's http hooks, posted by the real claude CLI ---------------------------


def _run_claude(loop: Any, fake: str, workspace: Path, env: dict[str, str],
                *args: str) -> list[dict[str, Any]]:  # fmt: skip
    """One headless turn of the pinned claude CLI against the fake model, started
    by this test on the server's loop (so the server answers its hooks meanwhile)
    with the environment the server gives its children; its stream-json messages."""

    async def run() -> bytes:
        proc = await asyncio.create_subprocess_exec(
            claude_binary() or "claude", "-p", "write it", "--output-format", "stream-json",
            "--verbose", *args, cwd=workspace, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "ANTHROPIC_BASE_URL": fake, "ANTHROPIC_API_KEY": "sk-test",
                 "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "IS_SANDBOX": "1", **env},
        )  # fmt: skip
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 120)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, out[-2000:]
        return out

    workspace.mkdir(parents=True, exist_ok=True)
    return [json.loads(line) for line in loop.run_until_complete(run()).splitlines() if line]


def _tool_results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tool results the user of the turn sees (stream-json ``user`` messages)."""
    return [
        block
        for m in messages
        if m.get("type") == "user" and isinstance(m["message"].get("content"), list)
        for block in m["message"]["content"]
        if block.get("type") == "tool_result"
    ]


def _write_tool(path: Path) -> dict[str, Any]:
    return {"tool_use": {"name": "Bash", "input": {"command": f"echo yes > {path}"}}}


def test_claude_posts_its_hooks_to_the_extension(
    fetch: Fetch, jp_serverapp: Any, jp_asyncio_loop: Any, tmp_path: Path, fake: str
) -> None:
    """The settings the server writes for claude hold http hooks to this server:
    claude asks it about each tool call (here with no `sac` service to read the
    policy from, so a chat turn's tool is denied, and claude is told why) and
    hands it the transcript (every line claude wrote is in the spool after)."""
    jp_serverapp.web_app.settings["xsrf_cookies"] = False  # as in a sandbox (above)
    config = tmp_path / "claude"
    settings = json.loads((config / "settings.json").read_text())
    for event in ("PreToolUse", "UserPromptSubmit", "Stop", "SubagentStop", "SessionEnd"):
        (hook,) = settings["hooks"][event][0]["hooks"]
        assert hook["type"] == "http" and "/sac/api/hooks/" in hook["url"], hook
    workspace = tmp_path / "workspace"
    script_model(fake, _write_tool(workspace / "ran.txt"), "told no")
    messages = _run_claude(jp_asyncio_loop, fake, workspace, {"SAC_CLAUDE_MODE": "chat"},
                           "--permission-mode", "bypassPermissions")  # fmt: skip
    (result,) = _tool_results(messages)
    assert result["is_error"] and "no HITL policy available" in json.dumps(result), result
    assert not (workspace / "ran.txt").exists()
    lines = [
        line
        for transcript in config.glob("projects/*/*.jsonl")
        for line in transcript.read_text().splitlines()
        if line.strip()
    ]
    assert lines, "claude wrote a transcript"
    status = json.loads(fetch("sac/api/history/status").body)
    # Nothing is uploaded here (no service): every line waits in the spool, once.
    assert status["backlog"] == len(lines), (status, len(lines))


@pytest.mark.parametrize("failure", ["no secret", "unreachable"])
def test_a_failing_hook_blocks_the_tool(
    failure: str, fetch: Fetch, jp_serverapp: Any, jp_asyncio_loop: Any, tmp_path: Path, fake: str
) -> None:
    """The PreToolUse hook fails (claude lacks the server's secret and is refused,
    or nothing answers at the hook's address): the tool does not run, even for an
    interactive claude in bypass mode whose policy would not be asked otherwise,
    and the turn is told why (a hook that fails must never let a tool through)."""
    jp_serverapp.web_app.settings["xsrf_cookies"] = False  # as in a sandbox (above)
    env = {"SAC_CLAUDE_MODE": "terminal"}
    if failure == "no secret":
        env["SAC_HOOK_SECRET"] = "not-the-servers-secret"
    else:
        # The server's own settings, with its hooks' address moved to a port
        # nobody listens on.
        config = tmp_path / "claude-elsewhere"
        shutil.copytree(tmp_path / "claude", config)
        text = (config / "settings.json").read_text()
        port = re.search(r"http://[^/]+:(\d+)/", text)
        assert port is not None
        (config / "settings.json").write_text(text.replace(f":{port[1]}/", f":{free_port()}/"))
        env["CLAUDE_CONFIG_DIR"] = str(config)
    workspace = tmp_path / "workspace"
    script_model(fake, _write_tool(workspace / "ran.txt"), "blocked")
    messages = _run_claude(jp_asyncio_loop, fake, workspace, env,
                           "--permission-mode", "bypassPermissions")  # fmt: skip
    (result,) = _tool_results(messages)
    assert result["is_error"], result
    why = json.dumps(result)
    assert "PreToolUse" in why and ("403" if failure == "no secret" else "ECONNREFUSED") in why, why
    assert not (workspace / "ran.txt").exists()
