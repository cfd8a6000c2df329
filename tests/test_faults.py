"""Faults on the real stack (issue 18): parts killed or taken away at the worst
moment, and afterwards every history event and workspace file is stored exactly
once. These tests kill parts of their stack, so they run on a stack of their own
(``faults_stack``), never the session's (docs/reliability.md lists what each proves).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import ADMIN_PASSWORD
from helpers import (
    CHROMIUM_ARGS,
    HubApi,
    TerminalCommand,
    agent_home,
    allow_all,
    claude_direct,
    kill_server,
    largest_request_waiting,
    model_agent,
    pending_requests,
    run_in_terminal,
    running_agent,
    script_model,
    spool_status,
    stored_history,
    tar_gz,
)
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from jupyter_sac.spawner.sandbox import process_alive
from jupyter_sac.stack import free_port
from sac_testing.stack import (
    RestartableStack,
    RunningStack,
    find_descendant,
    poll_until,
    read_terminal_until,
    stack_process_paused,
)

pytestmark = pytest.mark.stack

# Every transcript line claude wrote in the sandbox (one JSON object per line).
TRANSCRIPTS = "cat $CLAUDE_CONFIG_DIR/projects/*/*.jsonl 2>/dev/null"


# JupyterHub notices a managed service's exit at its next poll of the process, every
# 30 s (a spawner's poll_interval), and starts it again. JupyterHub 6.1 builds a
# service's spawner without configuration, so the tests that kill the service (and
# wait out that poll) get it through its class: the same restart, found within 2 s.
SERVICE_POLLED_OFTEN = """
import jupyterhub.services.service as _services
from traitlets import Integer as _Integer


class _ServiceSpawnerPolledOften(_services._ServiceSpawner):
    poll_interval = _Integer(2)


_services._ServiceSpawner = _ServiceSpawnerPolledOften
"""


@pytest.fixture(scope="module")
def faults_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A stack of this module's own, with the service on a port the tests know (to
    see requests waiting at it while it is stopped). ``stack["restart"]()`` stops
    `sac up` and starts it again on the same data (the dict then describes the new one)."""
    workdir = tmp_path_factory.mktemp("sac-faults")
    service_port = free_port()
    config = workdir / "faults_config.py"
    # A hub that does not answer is given up on sooner than the default 30 s (the
    # paused-hub test waits for it; the hub answers the others in milliseconds).
    # Likewise a database that is away: each request of the outage tests (the
    # uploader's five attempts before its backoff passes 12 s) waits for a
    # connection this long, not the default 10 s.
    config.write_text(
        "c.SacService.hub_timeout = 5\nc.SacService.database_timeout = 3\n" + SERVICE_POLLED_OFTEN
    )
    stack = RestartableStack(
        workdir, ADMIN_PASSWORD, config, env={"SAC_SERVICE_PORT": str(service_port)}
    )
    described: dict[str, Any] = {}

    def describe(running: RunningStack) -> None:
        described.update(
            url=running.url, pid=running.proc.pid, data_dir=running.data_dir,
            admin=HubApi(running.url, running.admin_token, running.harness_token),
            service_port=service_port, log=running.log_path,
            restart=lambda: describe(stack.restart()),
            stop=stack.stop, start=lambda: describe(stack.start()),
        )  # fmt: skip

    try:
        describe(stack.start())
        yield described
    finally:
        stack.close()
        # A PostgreSQL a test started again is this process's, not `sac up`'s child:
        # stop it too, if `sac up` could not.
        if (workdir / "data" / "postgres" / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                pg_ctl({"data_dir": workdir / "data"}, "-w", "-m", "fast", "stop")


def service_pid(stack: dict[str, Any]) -> int:
    return find_descendant(stack["pid"], b"jupyter_sac.service")


def service_paused(stack: dict[str, Any]) -> contextlib.AbstractContextManager[int]:
    """The `sac` service stopped (SIGSTOP) for the block: the kernel still accepts
    connections and takes requests' bytes, but nothing answers them."""
    return stack_process_paused(stack["pid"], b"jupyter_sac.service")


async def assert_history_exactly_once(
    stack: dict[str, Any], client: HubApi, user: str, slug: str
) -> list[dict[str, Any]]:
    """Once the spool has drained, the service holds one row per transcript line
    claude wrote: nothing lost, nothing stored twice."""
    poll_until(
        lambda: (s := spool_status(client, user, slug))["backlog"] == 0 and s["last_error"] is None,
        120,
        "the history spool to drain",
    )
    text = await run_in_terminal(stack["url"], client.token, user, slug, TRANSCRIPTS)
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert lines, "claude wrote transcript entries"
    events = stored_history(client, user, slug)
    stored = [(e["session_id"], e["uuid"]) for e in events if e["uuid"]]
    assert len(stored) == len(set(stored)), "an event was stored twice"
    assert len(events) == len(lines), (len(events), len(lines))
    expected = {(e.get("sessionId"), e["uuid"]) for e in lines if e.get("uuid")}
    assert expected <= set(stored), "an event was lost"
    return events


def agent_reaching_model(stack: dict[str, Any], fake: str) -> str:
    """A new user whose sandboxes may reach the fake model's address."""
    admin: HubApi = stack["admin"]
    user = f"f{uuid.uuid4().hex[:8]}"
    admin.create_user(user)
    resp = admin.sac(
        "PUT", f"users/{user}/settings", json={"egress_allow": [urlsplit(fake).hostname]}
    )
    assert resp.status_code == 200, resp.text
    return user


# ---- the agent's single-user server killed mid-upload ---------------------------------


@pytest.mark.asyncio
async def test_server_killed_during_history_upload(faults_stack: dict[str, Any], fake: str) -> None:
    """The server dies after its upload reached the service but before the answer
    came back: the service stored the batch, the sandbox never moved its cursor, so
    after the next start it sends the same events again; each is stored once."""
    stack = faults_stack
    user, slug = agent_reaching_model(stack, fake), "rec"
    with running_agent(stack["admin"], user, slug, **model_agent(fake)) as client:
        allow_all(client, user, slug)
        script_model(fake, "answered while the service was stopped", "and again")
        base = client.server_url(user, slug)
        with service_paused(stack):
            await run_in_terminal(
                stack["url"], client.token, user, slug,
                claude_direct("first", fake) + "; " + claude_direct("second", fake),
                timeout=180,
            )  # fmt: skip
            assert spool_status(client, user, slug)["backlog"] > 0
            # An ingest batch (transcript entries: kilobytes, unlike the polls'
            # bare GETs) has reached the stopped service, unanswered.
            poll_until(lambda: largest_request_waiting(stack["service_port"]) > 2000, 180,
                       "an upload waiting at the stopped service")  # fmt: skip
            await kill_server(base, client.token)
        # The service, running again, stores the batch it was sent: the server that
        # sent it is gone and will never hear so.
        poll_until(lambda: stored_history(client, user, slug), 60, "the orphaned batch stored")
        client.stop(user, slug)
        client.start(user, slug)
        await assert_history_exactly_once(stack, client, user, slug)


def write_in_lab(client: HubApi, user: str, slug: str, path: str, text: str) -> None:
    """Write a file as JupyterLab's editor does: the sandbox's contents API, which
    needs no `sac` service."""
    resp = client.agent(user, slug, "PUT", f"api/contents/{path}",
                        json={"type": "file", "format": "text", "content": text})  # fmt: skip
    assert resp.status_code in (200, 201), resp.text


def first_pull_done(client: HubApi, user: str, slug: str) -> bool:
    """The sandbox's workspace sync has pulled once (its status says when)."""
    resp = client.agent(user, slug, "GET", "sac/api/workspace")
    assert resp.status_code == 200, resp.text
    return resp.json()["last_pull"] is not None


def stored_files(client: HubApi, user: str, slug: str) -> dict[str, dict[str, Any]]:
    resp = client.sac("GET", f"users/{user}/agents/{slug}/workspace")
    assert resp.status_code == 200, resp.text
    return {f["path"]: f for f in resp.json()["files"]}


def files_in_sandbox(client: HubApi, user: str, slug: str, folder: str) -> set[str]:
    resp = client.agent(user, slug, "GET", f"api/contents/{folder}")
    assert resp.status_code == 200, resp.text
    return {item["path"] for item in resp.json()["content"] if item["type"] == "file"}


@pytest.mark.asyncio
async def test_server_killed_during_workspace_upload(faults_stack: dict[str, Any]) -> None:
    """The server dies while an upload is at the service: that file is stored but
    never recorded in the sandbox, the others never left it. After the next start
    each file is stored once, as version 1, with no conflict copy anywhere."""
    stack = faults_stack
    user, slug = f"w{uuid.uuid4().hex[:8]}", "files"
    # Each file bigger than any poll's request, so an upload waiting is unmistakable.
    files = {f"private/part{i}.txt": f"{i}" * 40_000 for i in range(3)}
    with running_agent(stack["admin"], user, slug, api_key="sk-unused-key") as client:
        # The sync's first pull at start, paused halfway, would hold the uploads
        # behind it (seen in the whole module's runs, where the agent starts later).
        poll_until(lambda: first_pull_done(client, user, slug), 60, "the sync's first pull")
        with service_paused(stack):
            for path, text in files.items():
                write_in_lab(client, user, slug, path, text)
            poll_until(lambda: largest_request_waiting(stack["service_port"]) > 30_000, 180,
                       "an upload waiting at the stopped service")  # fmt: skip
            await kill_server(client.server_url(user, slug), client.token)
        poll_until(lambda: stored_files(client, user, slug), 60, "the orphaned upload stored")
        client.stop(user, slug)
        client.start(user, slug)

        poll_until(lambda: set(stored_files(client, user, slug)) == set(files), 60,
                   "every file stored")  # fmt: skip
        stored = stored_files(client, user, slug)
        for path, text in files.items():
            assert stored[path]["sha256"] == hashlib.sha256(text.encode()).hexdigest()
            assert stored[path]["version"] == 1, stored[path]  # sent once, or taken as such
        assert files_in_sandbox(client, user, slug, "private") == set(files)


# ---- the `sac` service killed -----------------------------------------------------


def kill_service_and_wait_for_restart(stack: dict[str, Any], pid: int) -> int:
    """kill -9 the service; JupyterHub notices at its next poll of the process
    (every 30 s for a managed service; 2 s on this stack) and starts it again. The
    new one's pid."""
    os.kill(pid, signal.SIGKILL)
    admin: HubApi = stack["admin"]

    def restarted() -> int | None:
        try:
            new = service_pid(stack)
        except LookupError:
            return None
        return new if new != pid and admin.sac("GET", "agents").status_code == 200 else None

    return poll_until(restarted, 120, "JupyterHub restarting the sac service", interval=0.5)


@pytest.mark.asyncio
async def test_service_killed_during_ingest_batch(faults_stack: dict[str, Any], fake: str) -> None:
    """An ingest batch is at the service when it is killed: nothing of it was
    committed, the sandbox's upload fails and is retried against the restarted
    service, and every event is stored once."""
    stack = faults_stack
    user, slug = agent_reaching_model(stack, fake), "ingest"
    with running_agent(stack["admin"], user, slug, **model_agent(fake)) as client:
        allow_all(client, user, slug)
        script_model(fake, "answered while the service was stopped", "and again")
        pid = service_pid(stack)
        os.kill(pid, signal.SIGSTOP)
        await run_in_terminal(
            stack["url"], client.token, user, slug,
            claude_direct("first", fake) + "; " + claude_direct("second", fake), timeout=180,
        )  # fmt: skip
        poll_until(lambda: largest_request_waiting(stack["service_port"]) > 2000, 60,
                   "an upload waiting at the stopped service")  # fmt: skip
        kill_service_and_wait_for_restart(stack, pid)
        await assert_history_exactly_once(stack, client, user, slug)


@pytest.mark.asyncio
async def test_service_killed_during_hitl_wait(faults_stack: dict[str, Any], fake: str) -> None:
    """A chat turn's tool call waits for a person when the service is killed: the
    request is still there and decidable after the restart, the sandbox's wait
    picks the decision up, the turn's next model call (through the service's
    credential proxy) succeeds, and the turn's history is complete, once."""
    stack = faults_stack
    user, slug = f"h{uuid.uuid4().hex[:8]}", "ask"
    with running_agent(stack["admin"], user, slug, **model_agent(fake)) as client:
        base = client.server_url(user, slug)
        tool = {"name": "Bash", "input": {"command": "echo yes > /workspace/approved.txt"}}
        script_model(fake, {"tool_use": tool}, "tool finished")
        turn = await TerminalCommand.start(
            base, client.token,
            "cd /workspace && SAC_CLAUDE_MODE=chat claude -p 'write it'"
            " --permission-mode bypassPermissions --output-format text",
        )  # fmt: skip
        (request,) = poll_until(lambda: pending_requests(client, user), 60, "a pending request")

        kill_service_and_wait_for_restart(stack, service_pid(stack))
        assert [r["id"] for r in pending_requests(client, user)] == [request["id"]]
        resp = client.sac(
            "POST", f"hitl/requests/{request['id']}/decision", json={"decision": "allow"}
        )
        assert resp.status_code == 200, resp.text
        assert "tool finished" in await turn.finish()
        approved = client.agent(user, slug, "GET", "api/contents/approved.txt")
        assert approved.status_code == 200, approved.text
        await assert_history_exactly_once(stack, client, user, slug)


# ---- PostgreSQL away ------------------------------------------------------------------


def pg_ctl(stack: dict[str, Any], *args: str) -> None:
    """pg_ctl on the stack's PostgreSQL, as the user pgserver runs it as."""
    import pgserver
    from pgserver._commands import pg_ctl as run_pg_ctl

    server = pgserver.get_server(stack["data_dir"] / "postgres", cleanup_mode=None)
    run_pg_ctl(list(args), pgdata=server.pgdata, user=server.system_user)


@contextmanager
def postgres_stopped(stack: dict[str, Any]) -> Iterator[None]:
    """The stack's PostgreSQL stopped (fast: clients cut off) for the block, then
    started again on the same data and socket, as an operator's restart would."""
    import pgserver

    server = pgserver.get_server(stack["data_dir"] / "postgres", cleanup_mode=None)
    pg_ctl(stack, "-w", "-m", "fast", "stop")
    try:
        yield
    finally:
        with server._lock:
            server.ensure_postgres_running()  # started again: same data, same socket


def test_postgres_outage_answers_503_and_recovers_without_restart(
    faults_stack: dict[str, Any],
) -> None:
    stack = faults_stack
    admin: HubApi = stack["admin"]
    user = f"pg{uuid.uuid4().hex[:8]}"
    client = admin.create_user(user)
    created = client.sac("POST", "agents", json={"slug": "later", "api_key": "sk-unused-key"})
    assert created.status_code == 201, created.text
    pid = service_pid(stack)

    with postgres_stopped(stack):
        answer = poll_until(
            lambda: (r := client.sac("GET", "agents")).status_code != 200 and r, 60,
            "the service noticing the database is gone",
        )  # fmt: skip
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "database_unavailable"
        assert "database" in answer.json()["message"]
        # The hub's spawner cannot read the agent either: the start fails, it
        # does not hang.
        resp = client.hub("POST", f"users/{user}/servers/later")
        assert resp.status_code in (201, 202, 500, 503), resp.text
        poll_until(lambda: not (client.server(user, "later") or {}).get("pending"), 120,
                   "the start given up")  # fmt: skip
        assert not (client.server(user, "later") or {}).get("ready")

    # Back without restarting anything: the same service process, the same hub.
    poll_until(lambda: client.sac("GET", "agents").status_code == 200, 60, "the service back")
    assert service_pid(stack) == pid
    client.start(user, "later")
    resp = client.agent(user, "later", "GET", "sac/api/status")
    assert resp.status_code == 200, resp.text
    client.stop(user, "later")


def test_readiness_answers_503_while_postgres_is_away_and_200_once_it_is_back(
    faults_stack: dict[str, Any],
) -> None:
    stack = faults_stack
    admin: HubApi = stack["admin"]
    user = f"rd{uuid.uuid4().hex[:8]}"
    client = admin.create_user(user)
    created = client.sac("POST", "agents", json={"slug": "after", "api_key": "sk-unused-key"})
    assert created.status_code == 201, created.text

    def ready(token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"token {token}"} if token else {}
        return httpx.get(admin.service_url + "api/health/ready", headers=headers, timeout=30)

    assert ready().status_code == 200
    with postgres_stopped(stack):
        anonymous = ready()
        assert anonymous.status_code == 503, anonymous.text
        assert anonymous.json() == {"status": "not ready"}
        detailed = ready(admin.token)
        assert detailed.status_code == 503, detailed.text
        checks = detailed.json()["checks"]
        assert checks["database"]["status"] == "failed", checks
        assert checks["database"]["error"], checks
        # Bounded: a database that does not answer fails its check within seconds.
        assert checks["database"]["latency_ms"] < 5000, checks
        assert checks["object_store"]["status"] == checks["hub"]["status"] == "ok", checks
        # Liveness does not depend on PostgreSQL: the process is not to be restarted.
        live = httpx.get(admin.service_url + "api/health", timeout=30)
        assert live.status_code == 200, live.text
    poll_until(lambda: ready().status_code == 200, 60, "readiness back")
    assert ready(admin.token).json()["checks"]["database"]["status"] == "ok"
    # The connections both pools held before the restart are gone: the next
    # requests that need the database, the hub's first among them, are answered
    # (each pool checks a connection before handing it out).
    assert client.sac("GET", "agents").status_code == 200
    client.start(user, "after")
    client.stop(user, "after")


def test_a_hub_that_does_not_answer_gets_503_and_changes_nothing(
    faults_stack: dict[str, Any],
) -> None:
    stack = faults_stack
    admin: HubApi = stack["admin"]
    user = f"hp{uuid.uuid4().hex[:8]}"
    client = admin.create_user(user)
    # The service knows the token (it keeps a login's identity for a minute), so
    # the request reaches the step that asks the hub.
    assert client.sac("GET", "agents").status_code == 200
    # JupyterHub stopped: its API accepts connections and never answers.
    with stack_process_paused(stack["pid"], b"jupyterhub"):
        answer = client.sac("POST", "agents", json={"slug": "meanwhile"})
        listed = client.sac("GET", "agents")
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "hub_unavailable", answer.text
    assert "JupyterHub did not answer" in answer.json()["message"]
    # The agent was not kept without its named server (the hub never heard of it).
    assert listed.status_code == 200, listed.text
    assert [a["slug"] for a in listed.json()["agents"]] == []
    # Once the hub answers again, the same request works.
    again = client.sac("POST", "agents", json={"slug": "meanwhile"})
    assert again.status_code == 201, again.text


# ---- a graceful stop --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_graceful_stop_flushes_spool_and_workspace(
    faults_stack: dict[str, Any], fake: str
) -> None:
    """History and a file made while the database was away wait in the sandbox
    (the uploader backing off, the file not refused but kept to retry); the agent
    is stopped well before the uploader's next attempt, and both are stored by the
    time the stop returns."""
    stack = faults_stack
    user, slug = agent_reaching_model(stack, fake), "stop"
    with running_agent(stack["admin"], user, slug, **model_agent(fake)) as client:
        allow_all(client, user, slug)
        script_model(fake, "answered while the database was away")
        with postgres_stopped(stack):
            await run_in_terminal(stack["url"], client.token, user, slug,
                                  claude_direct("during the outage", fake), timeout=180)  # fmt: skip
            write_in_lab(client, user, slug, "output/made-during-outage.txt", "kept\n")
            # The uploader met 503s and now waits long before its next attempt.
            # (A condition, not a wait: the stop below must end before that attempt
            # for what is stored to be the flush's doing; checked after it.)
            status = poll_until(
                lambda: (s := spool_status(client, user, slug))["backlog"] > 0
                and (s["next_attempt"] or 0) > time.time() + 12 and s,
                180, "the history uploader backing off",
            )  # fmt: skip
            assert "503" in status["last_error"], status
        poll_until(lambda: client.sac("GET", "agents").status_code == 200, 60, "the service back")
        stored_before = len(stored_history(client, user, slug))
        backlog = spool_status(client, user, slug)["backlog"]
        assert backlog > 0

        client.stop(user, slug)
        assert time.time() < status["next_attempt"], "the stop ended after the next attempt"
        assert len(stored_history(client, user, slug)) == stored_before + backlog
        assert "output/made-during-outage.txt" in stored_files(client, user, slug)

        # And nothing is sent twice at the next start.
        client.start(user, slug)
        await assert_history_exactly_once(stack, client, user, slug)


# ---- `sac up` stopped and started again (an upgrade) ----------------------------------


def chat_session(client: HubApi, user: str, slug: str) -> dict[str, Any]:
    (session,) = client.agent(user, slug, "GET", "sac/api/chat/sessions").json()["sessions"]
    return session


@pytest.mark.asyncio
async def test_sac_up_restart_keeps_agents_running_and_reattaches(
    faults_stack: dict[str, Any], fake: str
) -> None:
    """`sac up` stopped and started again: a running agent keeps running through it
    (the same shell in its terminal, the same chat session), the new hub re-attaches
    to it (its pages, its network relays: the credential proxy and the service answer
    inside as before, so a new turn calls the model and waits on a person's approval),
    and it stops as any agent does afterwards."""
    stack = faults_stack
    user, slug = f"r{uuid.uuid4().hex[:8]}", "steady"
    with running_agent(stack["admin"], user, slug, **model_agent(fake)) as client:
        base = client.server_url(user, slug)
        auth = {"Authorization": f"token {client.token}"}
        name = client.agent(user, slug, "POST", "api/terminals").json()["name"]
        ws = base.replace("http", "ws", 1) + f"terminals/websocket/{name}"
        term = await websocket_connect(HTTPRequest(ws, headers=auth))
        # State only this shell holds: a variable it was told.
        term.write_message(json.dumps(["stdin", "export SAC_MARK=kept; echo set-$((6*7))\r"]))
        await read_terminal_until(term, "set-42")
        term.close()
        script_model(fake, "noted: teal")
        turn = client.agent(user, slug, "POST", "sac/api/chat", json={"message": "remember teal"})
        assert turn.status_code == 202, turn.text
        sid = turn.json()["session_id"]
        poll_until(lambda: chat_session(client, user, slug)["running"] is False, 120, "turn 1")
        recorded = json.loads(
            next((stack["data_dir"] / "agents").glob(f"*-{slug}/sandbox.json")).read_text()
        )
        sandbox = (recorded["pid"], recorded["start_time"])

        stack["restart"]()

        # The same process, re-attached: ready, and its pages answer through the new proxy.
        assert process_alive(*sandbox)
        server = client.server(user, slug)
        assert server and server["ready"], server
        term = await websocket_connect(HTTPRequest(ws, headers=auth))
        term.write_message(json.dumps(["stdin", "echo mark-$SAC_MARK\r"]))
        await read_terminal_until(term, "mark-kept")
        term.close()
        # The same chat session goes on: the model is called through the relayed
        # credential proxy, sees the earlier turn, and a Bash call waits on a person
        # at the relayed service until approved.
        assert chat_session(client, user, slug)["turns"] == 1
        httpx.delete(fake + "/_fake/requests")
        tool = {"name": "Bash", "input": {"command": "echo after > /workspace/after.txt"}}
        script_model(fake, {"tool_use": tool}, "written after the restart")
        turn = client.agent(user, slug, "POST", "sac/api/chat",
                            json={"message": "write it", "session_id": sid})  # fmt: skip
        assert turn.status_code == 202, turn.text
        (request,) = poll_until(lambda: pending_requests(client, user), 120, "a pending request")
        decided = client.sac(
            "POST", f"hitl/requests/{request['id']}/decision", json={"decision": "allow"}
        )
        assert decided.status_code == 200, decided.text
        poll_until(lambda: chat_session(client, user, slug)["turns"] == 2
                   and not chat_session(client, user, slug)["running"], 120, "turn 2")  # fmt: skip
        assert "remember teal" in json.dumps(httpx.get(fake + "/_fake/requests").json())
        written = client.agent(user, slug, "GET", "api/contents/after.txt")
        assert written.status_code == 200 and written.json()["content"] == "after\n", written.text
        await assert_history_exactly_once(stack, client, user, slug)

        # Stopped by the new hub like any agent: the sandbox is gone.
        client.stop(user, slug)
        assert client.server(user, slug) is None
        poll_until(lambda: not process_alive(*sandbox), 30, "the sandbox gone")


def sac_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jupyter_sac.cli", *args],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_sac_down_stops_the_agents_a_stopped_stack_left_running(
    faults_stack: dict[str, Any],
) -> None:
    """`sac down` refuses while `sac up` runs; once it is stopped, it stops the agents
    left running, and the next `sac up` sees them stopped (startable again)."""
    stack = faults_stack
    data_dir = str(stack["data_dir"])
    user, slug = f"d{uuid.uuid4().hex[:8]}", "left"
    with running_agent(stack["admin"], user, slug) as client:
        recorded = json.loads(
            next((stack["data_dir"] / "agents").glob(f"*-{slug}/sandbox.json")).read_text()
        )
        sandbox = (recorded["pid"], recorded["start_time"])
        refused = sac_cli("down", "--data-dir", data_dir)
        assert refused.returncode == 1 and "`sac up` runs on" in refused.stderr, refused
        assert process_alive(*sandbox)

        stack["stop"]()
        assert process_alive(*sandbox), "the agent outlives `sac up`"
        down = sac_cli("down", "--data-dir", data_dir)
        assert down.returncode == 0, down.stderr
        assert "stopped 1 agent left running" in down.stdout
        assert not process_alive(*sandbox)
        stack["start"]()

        assert client.server(user, slug) is None
        client.start(user, slug)
        assert client.agent(user, slug, "GET", "sac/api/status").status_code == 200


def test_service_killed_during_skill_sync(faults_stack: dict[str, Any]) -> None:
    """A skill sync is at the service when it is killed: the sandbox's own poll
    (15 s) syncs the install once the service is back, without anyone asking
    again, and the skill arrives whole (its SKILL.md and bundle file, nothing else)."""
    stack = faults_stack
    user, slug = f"s{uuid.uuid4().hex[:8]}", "skills"
    command = f"greet-{uuid.uuid4().hex[:4]}"
    with running_agent(stack["admin"], user, slug, api_key="sk-unused-key") as client:
        body = {"command": command, "title": "Greet", "description": "Greets someone.",
                "body": "---\nname: x\ndescription: x\n---\n\nSay hello.\n"}  # fmt: skip
        created = client.sac("POST", "skills", json=body)
        assert created.status_code == 201, created.text
        skill_id = created.json()["id"]
        bundle = tar_gz({"hello.txt": b"hi\n"})
        assert client.sac("PUT", f"skills/{skill_id}/bundle", content=bundle).status_code == 200
        folder = agent_home(stack["data_dir"], slug) / "home" / ".claude" / "skills" / command
        install = client.sac(
            "POST", f"users/{user}/agents/{slug}/skills", json={"skill_id": skill_id}
        )
        assert install.status_code == 201, install.text

        pid = service_pid(stack)
        os.kill(pid, signal.SIGSTOP)
        assert not folder.exists(), "synced before the fault: nothing would be tested"
        # The sync the sidebar asks for waits at the stopped service.
        asked = threading.Thread(
            target=lambda: client.agent(user, slug, "POST", "sac/api/skills/sync"), daemon=True
        )
        asked.start()
        poll_until(lambda: largest_request_waiting(stack["service_port"]) > 0, 60,
                   "the sync waiting at the stopped service")  # fmt: skip
        kill_service_and_wait_for_restart(stack, pid)
        asked.join(60)

        def synced() -> set[str]:
            return {str(p.relative_to(folder)) for p in folder.rglob("*")}

        poll_until(lambda: folder.exists() and "hello.txt" in synced(), 60,
                   "the sandbox's own poll syncing the skill")  # fmt: skip
        assert synced() == {"SKILL.md", "hello.txt"}
        status = client.agent(user, slug, "GET", "sac/api/skills").json()["sync"]
        assert status["last_error"] is None, status


# ---- the spool's disk full ------------------------------------------------------------

# The extension's history spool as the sandbox sees it (its state dir in the home).
SANDBOX_SPOOL = "/home/sac/.local/share/jupyter-sac/history-spool"


def process_in_mount_namespace(namespace: str) -> int:
    """A process of this machine in the mount namespace ``namespace`` (``mnt:[…]``,
    as /proc/<pid>/ns/mnt reads): the way into a sandbox's own view of its files."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "mnt") == namespace:
                    return int(entry.name)
    raise LookupError(f"no process in {namespace}")


async def small_disk_at_spool(
    stack: dict[str, Any], client: HubApi, user: str, slug: str, size: int
) -> int:
    """A real filesystem of ``size`` bytes (tmpfs) at the sandbox's spool, mounted in
    the sandbox's own mount namespace (nsenter, as root: bubblewrap 0.8 has no sized
    tmpfs, and a mount on the host after the sandbox started would not reach it),
    owned by the sandbox's user. Only for a spool that holds nothing yet: it hides
    what the directory held. A process in the sandbox's mount namespace, for nsenter."""
    namespace = await run_in_terminal(
        stack["url"], client.token, user, slug, "readlink /proc/self/ns/mnt"
    )
    pid = process_in_mount_namespace(namespace.splitlines()[-1])
    owner = (agent_home(stack["data_dir"], slug) / "home").stat().st_uid
    options = f"size={size},uid={owner},gid={owner},mode=0700"
    mount = ["nsenter", "-t", str(pid), "-m", "--",
             "mount", "-t", "tmpfs", "-o", options, "sac-spool", SANDBOX_SPOOL]  # fmt: skip
    await asyncio.to_thread(subprocess.run, mount, check=True, capture_output=True)
    return pid


def sidebar_shows_capture_paused_then_resumed(lab_url: str, token: str, free_space: Any) -> None:
    """What the owner sees in JupyterLab's SAC sidebar: capture paused and why; then,
    once ``free_space`` has made room, history captured again (the Agent section's
    Refresh, as the owner would press it). A browser of its own, in a thread: the
    sync Playwright API does not run inside the test's event loop."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            # The owner's token on every request: the server's own login, no hub form.
            context = browser.new_context(extra_http_headers={"Authorization": f"token {token}"})
            page = context.new_page()
            page.goto(lab_url)
            page.locator(".jp-SideBar .lm-TabBar-tab[data-id=jp-sac-sidebar]").click(
                timeout=180_000
            )
            agent = page.locator("#jp-sac-sidebar [data-section=agent]")
            history = agent.locator("[data-fact=history]")
            alert = agent.locator("[data-alert=capture-paused]")
            expect(alert).to_contain_text(
                "History capture is paused: No space left on device", timeout=60_000
            )
            expect(history).to_have_text("paused: No space left on device")
            free_space()

            def captured() -> bool:
                # What the last press brought (the first look may predate it).
                shown = history.inner_text() == "captured"
                agent.get_by_role("button", name="Refresh").click()
                return shown

            poll_until(captured, 60, "the sidebar showing history captured again", interval=1)
            expect(alert).to_have_count(0)
        finally:
            browser.close()


@pytest.mark.asyncio
async def test_full_spool_disk_pauses_capture_and_resumes_when_space_returns(
    faults_stack: dict[str, Any], fake: str
) -> None:
    """The spool's disk is full while claude works: each hook is refused, the status
    (the API and the sidebar) says capture is paused and why, and nothing reaches
    the service. Once space is freed, capture resumes by itself, without another
    hook (the session has ended, so none comes), and every transcript line is
    stored exactly once."""
    stack = faults_stack
    user, slug = f"d{uuid.uuid4().hex[:8]}", "full"
    with running_agent(stack["admin"], user, slug, **model_agent(fake)) as client:
        allow_all(client, user, slug)
        pid = await small_disk_at_spool(stack, client, user, slug, 4 * 1024 * 1024)
        # The agent fills its own disk (the write ends with "No space left").
        await run_in_terminal(stack["url"], client.token, user, slug,
                              f"cat /dev/zero > {SANDBOX_SPOOL}/filler")  # fmt: skip
        script_model(fake, "answered on a full disk")
        out = await run_in_terminal(
            stack["url"], client.token, user, slug,
            "cd /workspace && claude -p 'hello' --output-format text", timeout=180,
        )  # fmt: skip
        assert "answered on a full disk" in out
        text = await run_in_terminal(stack["url"], client.token, user, slug, TRANSCRIPTS)
        lines = [line for line in text.splitlines() if line.strip()]
        assert lines, "claude wrote its transcript (on another disk)"

        status = spool_status(client, user, slug)
        assert status["capture_paused"] == "No space left on device", status
        assert status["backlog"] == 0, status
        assert stored_history(client, user, slug) == []
        # The refusals (507) are logged without the hook's secret (jupyter_server
        # prints a 5xx's request headers).
        assert "X-Sac-Hook-Secret" not in stack["log"].read_text()

        # The owner sees the pause in the sidebar, makes room, and sees capture resume.
        remove_filler = ["nsenter", "-t", str(pid), "-m", "--", "rm", f"{SANDBOX_SPOOL}/filler"]
        await asyncio.to_thread(
            sidebar_shows_capture_paused_then_resumed,
            client.server_url(user, slug) + "lab",
            client.token,
            lambda: subprocess.run(remove_filler, check=True, capture_output=True),
        )
        poll_until(
            lambda: spool_status(client, user, slug)["capture_paused"] is None
            and len(stored_history(client, user, slug)) >= len(lines),
            60, "capture resumed and the turn stored",
        )  # fmt: skip
        await assert_history_exactly_once(stack, client, user, slug)
