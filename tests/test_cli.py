"""The `sac` command against the real stack, run as people and scripts run it: the
installed entry point in a subprocess, with a login kept in a private config folder
or with $SAC_HUB_URL and $SAC_TOKEN."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ADMIN_PASSWORD
from helpers import HubApi, run_in_terminal

pytestmark = pytest.mark.stack

SAC = str(Path(sys.executable).parent / "sac")


def sac(*args: str, env: dict[str, str], stdin: str | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """``sac ARGS`` as a shell runs it (stdin not a terminal)."""
    return subprocess.run([SAC, *args], input=stdin if stdin is not None else "",
                          capture_output=True, text=True, env=env, timeout=timeout)  # fmt: skip


def environment(config: Path, **extra: str) -> dict[str, str]:
    """The process environment of a fresh shell: its own config folder, and no hub
    named unless ``extra`` does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAC_", "JUPYTERHUB_"))}
    return {**env, "XDG_CONFIG_HOME": str(config), **extra}


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.args, result.returncode, result.stdout, result.stderr)
    return result


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result).stdout)


@pytest.fixture(scope="module")
def person(stack: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A new user and the environment of a script holding their token."""
    user = f"op{uuid.uuid4().hex[:6]}"
    hub: HubApi = stack["admin"].create_user(user)
    config = tmp_path_factory.mktemp("xdg")
    env = environment(config, SAC_HUB_URL=stack["url"], SAC_TOKEN=hub.token)
    return {"user": user, "hub": hub, "env": env}


def test_login_keeps_only_a_checked_token_privately_and_logout_revokes_it(
    stack: dict, person: dict[str, Any], tmp_path: Path
) -> None:
    env = environment(tmp_path / "config")
    stored = tmp_path / "config" / "jupyter-sac" / "credentials.json"

    refused = sac("login", stack["url"], "--token-stdin", env=env, stdin="not-a-token\n")
    assert refused.returncode == 3 and refused.stderr.startswith("sac: "), refused
    assert not stored.exists()
    assert sac("whoami", env=env).returncode == 3

    token = person["hub"].token
    login = ok(sac("login", stack["url"], "--token-stdin", env=env, stdin=token + "\n"))
    assert f"Logged in to {stack['url']} as {person['user']}" in login.stderr
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stat.S_IMODE(stored.parent.stat().st_mode) == 0o700
    who = ok(sac("whoami", env=env))
    assert person["user"] in who.stdout and token not in who.stdout + who.stderr
    assert as_json(sac("whoami", "--json", env=env))["name"] == person["user"]
    assert as_json(sac("agents", "list", "--json", env=env)) == []

    # A token asked for with a password (the hub's own login checks it).
    wrong = sac("login", stack["url"], "--username", "admin", "--password-stdin", env=env,
                stdin="wrong-password\n")  # fmt: skip
    assert wrong.returncode == 3 and "refused this user name or password" in wrong.stderr
    ok(sac("login", stack["url"], "--username", "admin", "--password-stdin", env=env,
           stdin=ADMIN_PASSWORD + "\n"))  # fmt: skip
    assert as_json(sac("whoami", "--json", env=env))["name"] == "admin"
    admins_token = json.loads(stored.read_text())["hubs"][stack["url"]]["token"]
    hub_user = stack["url"] + "hub/api/user"
    headers = {"Authorization": f"token {admins_token}"}
    assert httpx.get(hub_user, headers=headers).status_code == 200

    # Logging out revokes the token on the hub and forgets it here.
    ok(sac("logout", env=env))
    assert httpx.get(hub_user, headers=headers).status_code in (401, 403)
    assert stack["url"] not in json.loads(stored.read_text())["hubs"]
    assert sac("whoami", env=env).returncode == 3


def test_an_agents_life_from_the_shell(person: dict[str, Any]) -> None:
    env, name = person["env"], f"c{uuid.uuid4().hex[:6]}"
    created = as_json(sac("agents", "create", name, "--display-name", "From the shell",
                          "--set", "max_processes=512", "--api-key-stdin", "--json",
                          env=env, stdin="sk-unused-key\n"))  # fmt: skip
    assert created["slug"] == name and created["owner"] == person["user"]
    assert created["key_set"] and created["overrides"] == {"max_processes": 512}
    again = sac("agents", "create", name, env=env)
    assert again.returncode == 6 and again.stderr.startswith("sac: "), again
    bad = sac("agents", "create", "Not A Slug", env=env)
    assert bad.returncode == 1 and bad.stderr.startswith("sac: slug: use 1-30"), bad

    listed = {a["slug"]: a for a in as_json(sac("agents", "list", "--json", env=env))}
    assert listed[name]["state"] == "stopped"
    table = ok(sac("agents", "list", env=env)).stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "DISPLAY", "NAME"]
    assert any(line.split()[0] == name and "stopped" in line for line in table[1:]), table

    started = ok(sac("agents", "start", name, env=env))
    assert f"{name} is running" in started.stderr
    assert as_json(sac("agents", "show", name, "--json", env=env))["state"] == "running"
    shown = ok(sac("agents", "show", name, env=env)).stdout
    assert "From the shell" in shown and "running" in shown

    ok(sac("agents", "stop", name, env=env))
    assert as_json(sac("agents", "show", name, "--json", env=env))["state"] == "stopped"
    restarted = as_json(sac("agents", "restart", name, "--json", env=env))
    assert restarted["state"] == "running"

    usage = as_json(sac("agents", "usage", name, "--json", env=env))
    assert usage["slug"] == name and usage["totals"]["requests"] == 0
    assert [u["slug"] for u in as_json(sac("usage", "--json", env=env))] == [name]

    refused = sac("agents", "delete", name, env=env)  # not at a terminal, no --yes
    assert refused.returncode == 2 and "--yes" in refused.stderr
    ok(sac("agents", "delete", name, "--yes", env=env))
    gone = sac("agents", "show", name, env=env)
    assert gone.returncode == 4 and gone.stderr.startswith("sac: "), gone
    assert sac("agents", "stop", "no-such-agent", env=env).returncode == 4


@pytest.fixture(scope="module")
def gated(stack: dict, person: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A started agent of ``person`` and a client holding its sandbox's own token (as
    its extension files approvals and history)."""
    env, name = person["env"], "gated"
    ok(sac("agents", "create", name, "--api-key-stdin", "--start", env=env,
           stdin="sk-unused-key\n"))  # fmt: skip
    token = asyncio.run(run_in_terminal(stack["url"], person["hub"].token, person["user"], name,
                                        "echo $SAC_AGENT_TOKEN"))  # fmt: skip
    sandbox = httpx.Client(base_url=stack["service_url"] + "api/", timeout=60,
                           headers={"Authorization": f"Bearer {token.strip()}"})  # fmt: skip
    try:
        yield {"name": name, "sandbox": sandbox}
    finally:
        sandbox.close()
        sac("agents", "delete", name, "--yes", env=env)


def test_the_hubs_word_on_a_start(person: dict[str, Any], gated: dict[str, Any]) -> None:
    env = person["env"]
    running = ok(sac("agents", "logs", gated["name"], env=env))
    assert running.stdout.startswith("Server ready at ") and gated["name"] in running.stdout
    (event,) = [json.loads(line) for line in
                ok(sac("agents", "logs", gated["name"], "--json", env=env)).stdout.splitlines()]  # fmt: skip
    assert event["ready"] is True and event["progress"] == 100

    stopped = f"s{uuid.uuid4().hex[:6]}"
    ok(sac("agents", "create", stopped, "--api-key-stdin", env=env, stdin="sk-unused-key\n"))
    never = ok(sac("agents", "logs", stopped, env=env))
    assert never.stdout == "" and "is stopped: the hub keeps no log" in never.stderr
    ok(sac("agents", "delete", stopped, "--yes", env=env))
    assert sac("agents", "logs", stopped, env=env).returncode == 4


def test_approvals_from_the_shell(person: dict[str, Any], gated: dict[str, Any]) -> None:
    env = person["env"]
    filed = gated["sandbox"].post("hitl/requests", json={
        "kind": "tool", "tool": "Bash",
        # What a model asks to run can hold anything: here, escape sequences that
        # would clear the operator's screen and rename their terminal.
        "input": {"command": "make deploy \x1b[2J\x1b]0;owned\x07"},
    })  # fmt: skip
    assert filed.status_code == 201, filed.text
    rid = filed.json()["id"]

    pending = as_json(sac("hitl", "list", "--pending", "--json", env=env))
    assert [r["id"] for r in pending] == [rid]
    assert pending[0]["input"]["command"] == "make deploy \x1b[2J\x1b]0;owned\x07"
    listed = ok(sac("hitl", "list", "--pending", env=env)).stdout
    assert rid in listed and "Bash: make deploy \\x1b[2J" in listed
    assert "\x1b" not in listed and "\x07" not in listed
    shown = ok(sac("hitl", "show", rid, env=env)).stdout
    assert "pending" in shown and "\x1b" not in shown

    approved = as_json(sac("hitl", "approve", rid, "--reason", "looks fine", "--json", env=env))
    assert approved["status"] == "approved" and approved["reason"] == "looks fine"
    assert approved["decided_by"] == person["user"]
    assert as_json(sac("hitl", "list", "--pending", "--json", env=env)) == []
    again = sac("hitl", "deny", rid, env=env)
    assert again.returncode == 6 and "sac: " in again.stderr, again
    decided = as_json(sac("hitl", "list", "--status", "decided", "--json", env=env))
    assert rid in [r["id"] for r in decided]
    assert sac("hitl", "show", str(uuid.uuid4()), env=env).returncode == 4


def test_shell_completion_names_my_agents(person: dict[str, Any], gated: dict[str, Any]) -> None:
    # What the script of `sac completion bash` asks for when AGENT is completed.
    env = {**person["env"], "_SAC_COMPLETE": "bash_complete",
           "COMP_WORDS": "sac agents show ga", "COMP_CWORD": "3"}  # fmt: skip
    completed = subprocess.run([SAC], capture_output=True, text=True, env=env, timeout=60)
    assert completed.stdout.splitlines() == [f"plain,{gated['name']}"], completed


def test_history_from_the_shell(person: dict[str, Any], gated: dict[str, Any]) -> None:
    env, name = person["env"], gated["name"]
    session, word = str(uuid.uuid4()), f"zebra{uuid.uuid4().hex[:6]}"
    events = [{"session_id": session, "uuid": str(uuid.uuid4()), "ts": f"2026-01-02T10:0{i}:00Z",
               "kind": kind, "payload": {"type": kind, "message": {"role": kind, "content": text}}}
              for i, (kind, text) in enumerate([("user", f"find the {word}"),
                                                ("assistant", "=cmd|' /C calc'!A0")])]  # fmt: skip
    stored = gated["sandbox"].post("history/ingest", json={"events": events})
    assert stored.status_code == 200 and stored.json()["stored"] == 2, stored.text

    sessions = as_json(sac("history", "list", name, "--json", env=env))
    assert [s["session_id"] for s in sessions] == [session]
    assert sessions[0]["first_prompt"] == f"find the {word}"
    shown = ok(sac("history", "show", name, session, env=env)).stdout.splitlines()
    assert shown[0].split() == ["TIME", "KIND", "TEXT"]
    assert shown[1].split()[2:] == ["user", "find", "the", word]
    found = as_json(sac("history", "search", word, "--json", env=env))
    assert [e["session_id"] for e in found] == [session]
    assert sac("history", "search", "--user", "admin", env=env).returncode == 4

    csv = ok(sac("history", "export", word, env=env)).stdout
    assert csv.splitlines()[0].startswith("owner,agent,session_id") and word in csv
    whole = ok(sac("history", "export", "--agent", name, "--session", session, env=env)).stdout
    assert "'=cmd" in whole and len(whole.strip().splitlines()) == 3


def test_settings_skills_templates_and_users(stack: dict, person: dict[str, Any],
                                             tmp_path: Path) -> None:  # fmt: skip
    env, user = person["env"], person["user"]
    mine = as_json(sac("settings", "show", "--json", env=env))
    assert mine["user"] == user and "max_agents_per_user" in mine["resolved"]
    assert "max_agents_per_user" in ok(sac("settings", "show", env=env)).stdout
    refused = sac("settings", "set", "max_agents_per_user", "3", env=env)
    assert refused.returncode == 5 and refused.stderr.startswith("sac: "), refused

    admin = f"adm{uuid.uuid4().hex[:6]}"
    admin_env = environment(tmp_path, SAC_HUB_URL=stack["url"],
                            SAC_TOKEN=stack["admin"].create_user(admin, admin=True).token)  # fmt: skip
    ok(sac("settings", "set", "max_agents_per_user", "7", "--user", user, env=admin_env))
    theirs = as_json(sac("settings", "show", "--user", user, "--json", env=env))
    assert theirs["overrides"] == {"max_agents_per_user": 7}
    assert theirs["resolved"]["max_agents_per_user"] == 7
    ok(sac("settings", "unset", "max_agents_per_user", "--user", user, env=admin_env))
    theirs = as_json(sac("settings", "show", "--user", user, "--json", env=admin_env))
    assert theirs["overrides"] == {}
    bad = sac("settings", "set", "max_agents_per_user", "many", "--user", user, env=admin_env)
    assert bad.returncode == 1 and "max_agents_per_user" in bad.stderr, bad

    skills = as_json(sac("skills", "search", "csv", "--json", env=env))
    assert "summarise-csv" in [s["command"] for s in skills]
    skill = next(s for s in skills if s["command"] == "summarise-csv")
    assert as_json(sac("skills", "show", str(skill["id"]), "--json", env=env))["id"] == skill["id"]
    templates = as_json(sac("templates", "list", "--json", env=env))
    assert templates and {"id", "name", "scope"} <= set(templates[0])
    one = templates[0]
    assert as_json(sac("templates", "show", one["name"], "--json", env=env))["id"] == one["id"]

    # The hub's user list: for who may list the hub's users.
    names = [u["name"] for u in as_json(sac("users", "list", "--json", env=environment(
        tmp_path, SAC_HUB_URL=stack["url"], SAC_TOKEN=stack["admin"].token)))]  # fmt: skip
    assert user in names and admin in names
    assert sac("users", "list", env=env).returncode == 5


def test_commands_run_in_an_agent_from_the_shell(person: dict[str, Any], gated: dict[str, Any]
                                                 ) -> None:  # fmt: skip
    """`sac agents exec` streams a command's output and exits with its exit code
    (124 at its timeout); `sac agents screen` shows the Claude terminal."""
    env, name = person["env"], gated["name"]
    ran = sac("agents", "exec", name, "--env", "GREETING=hi", "--", "sh", "-c",
              'echo "$GREETING from $(pwd)"; echo oops >&2; exit 3', env=env)  # fmt: skip
    assert ran.returncode == 3, ran
    assert ran.stdout == "hi from /workspace\n" and "oops" in ran.stderr
    piped = sac("agents", "exec", name, "--stdin", "wc -c", env=env, stdin="12345")
    assert ok(piped).stdout.strip() == "5"
    frames = [json.loads(line) for line in ok(sac("agents", "exec", name, "--json", "--",
                                                  "printf", "x", env=env)).stdout.splitlines()]  # fmt: skip
    assert frames[0]["data"] == "x" and frames[-1]["exit_code"] == 0
    slow = sac("agents", "exec", name, "--timeout", "1", "--", "sleep", "30", env=env)
    assert slow.returncode == 124 and "killed after 1 s" in slow.stderr, slow
    bad = sac("agents", "exec", name, "--cwd", "../..", "--", "true", env=env)
    assert bad.returncode == 1 and bad.stderr.startswith("sac: cwd:"), bad
    screen = sac("agents", "screen", name, "--json", env=env)
    assert "running" in as_json(screen) or "rows" in as_json(screen)
