"""Tasks (docs/api.md#tasks): prompts submitted through the service's API, run by
the leader's task runner as chat turns of the real CLI in a real sandbox, with the
scripted fake model; their results, artifacts, timeouts, cancellation and a
repository checkout from a git server on this machine."""

from __future__ import annotations

import base64
import socketserver
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest
from helpers import (
    HubApi,
    agent_token,
    allow_all,
    model_agent,
    run_in_terminal,
    running_agent,
    script_model,
    service_pid,
)
from test_faults import kill_service_and_wait_for_restart

from jupyter_sac.client import Client
from sac_testing.stack import poll_until

pytestmark = pytest.mark.stack

ENDED = ("succeeded", "failed", "cancelled", "timed-out")


def _submit(client: HubApi, user: str, slug: str, **body: Any) -> dict[str, Any]:
    resp = client.sac("POST", f"users/{user}/agents/{slug}/tasks", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def _ended(client: HubApi, task_id: str, timeout: float = 240) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        task = client.sac("GET", f"tasks/{task_id}").json()
        return task if task["status"] in ENDED else None

    return poll_until(ended, timeout, f"task {task_id} ended", interval=0.5)


def _audit_actions(admin: HubApi, user: str) -> list[str]:
    resp = admin.sac("GET", "audit", params={"user": user})
    assert resp.status_code == 200, resp.text
    return [e["action"] for e in resp.json()["entries"]]


@pytest.mark.asyncio
async def test_task_starts_its_agent_writes_an_artifact_and_succeeds(
    stack: dict, fake: str
) -> None:
    admin: HubApi = stack["admin"]
    user, other = f"task{uuid.uuid4().hex[:6]}", f"tother{uuid.uuid4().hex[:6]}"
    client = admin.create_user(user)
    stranger = admin.create_user(other)
    resp = client.sac("POST", "agents", json={"slug": "worker", **model_agent(fake)})
    assert resp.status_code == 201, resp.text
    try:
        allow_all(client, user, "worker")
        script_model(
            fake,
            {
                "text": "Writing the report.",
                "tool_use": {
                    "name": "Write",
                    "input": {
                        "file_path": "/workspace/output/report.md",
                        "content": "# Report\nall good\n",
                    },
                },
            },
            "The report is in output/report.md.",
        )
        # The agent is stopped: the runner starts it.
        assert client.server(user, "worker") is None or not client.server(user, "worker")["ready"]
        # Through the Python client, as a notebook submits it.
        with Client(url=stack["url"], token=client.token) as sac:
            submitted = sac.agent("worker").submit("write the report", timeout=300)
            task = submitted.model
            assert submitted.status == "queued" and task["agent"] == "worker"
            assert task["owner"] == user
            assert submitted.wait(timeout=240).status == "succeeded", submitted.model
            assert submitted.result == "The report is in output/report.md."
            assert submitted.read_artifact("output/report.md") == b"# Report\nall good\n"
            assert [t.id for t in sac.tasks(status="succeeded")] == [submitted.id]
            assert [t.id for t in sac.agent("worker").tasks()] == [submitted.id]
        done = _ended(client, task["id"])
        assert done["status"] == "succeeded", done
        assert done["result"] == "The report is in output/report.md."
        assert done["started_at"] and done["finished_at"] and done["session_id"]
        (artifact,) = done["artifacts"]
        assert artifact["path"] == "output/report.md" and artifact["size"] == 18
        download = httpx.get(
            artifact["url"],
            headers={"Authorization": f"token {client.token}"},
        )
        assert download.status_code == 200, download.text
        assert download.content == b"# Report\nall good\n"
        # The turn is the agent's chat session, as its chat panel shows it.
        session = client.agent(user, "worker", "GET", f"sac/api/chat/sessions/{done['session_id']}")
        assert session.json()["events"][1]["type"] in ("session", "text")

        # Lists and their filters.
        mine = client.sac("GET", "tasks").json()["tasks"]
        assert [t["id"] for t in mine] == [task["id"]]
        assert client.sac("GET", "tasks", params={"status": "succeeded"}).json()["tasks"]
        assert client.sac("GET", "tasks", params={"status": "queued"}).json()["tasks"] == []
        assert client.sac("GET", "tasks", params={"agent": "other"}).json()["tasks"] == []
        by_agent = client.sac("GET", f"users/{user}/agents/worker/tasks").json()["tasks"]
        assert [t["id"] for t in by_agent] == [task["id"]]
        everyone = admin.sac("GET", "tasks", params={"user": "*", "agent": "worker"})
        assert task["id"] in [t["id"] for t in everyone.json()["tasks"]]
        assert (
            admin.sac("GET", "tasks", params={"user": user}).json()["tasks"][0]["id"] == task["id"]
        )
        bad_status = client.sac("GET", "tasks", params={"status": "done"})
        assert bad_status.status_code == 400 and bad_status.json()["error"]

        # Another user sees none of it, and cannot submit to it.
        assert stranger.sac("GET", f"tasks/{task['id']}").status_code == 404
        assert stranger.sac("POST", f"tasks/{task['id']}/cancel").status_code == 404
        assert stranger.sac("GET", "tasks", params={"user": user}).status_code == 404
        refused = stranger.sac("POST", f"users/{user}/agents/worker/tasks", json={"prompt": "hi"})
        assert refused.status_code == 404
        assert stranger.sac("GET", "tasks").json()["tasks"] == []

        # The agent's own token may not submit tasks, not even to itself, nor read them.
        token = await agent_token(stack["url"], client, user, "worker")
        as_agent = httpx.Client(
            headers={"Authorization": f"Bearer {token}"}, base_url=client.service_url, timeout=30
        )
        submitted = as_agent.post(f"api/users/{user}/agents/worker/tasks", json={"prompt": "x"})
        assert submitted.status_code == 403, submitted.text
        assert as_agent.get("api/tasks").status_code == 403
        assert as_agent.get(f"api/tasks/{task['id']}").status_code == 403

        # An ended task is not cancelled again.
        again = client.sac("POST", f"tasks/{task['id']}/cancel")
        assert again.status_code == 409 and again.json()["error"] == "task_ended"
        actions = _audit_actions(admin, user)
        assert {"task.create", "task.start", "task.end", "agent.start"} <= set(actions)
    finally:
        client.sac("DELETE", f"users/{user}/agents/worker")


def test_bad_task_bodies_are_refused_and_change_nothing(stack: dict, new_user) -> None:
    user, client = new_user("tbad")
    assert client.sac("POST", "agents", json={"slug": "idle"}).status_code == 201
    try:
        bad: list[Any] = [
            {"prompt": "x", "unknown": 1},
            {"prompt": "   "},
            {"timeout": 60},
            {"prompt": "x", "timeout": 5},
            {"prompt": "x", "timeout": 86401},
            {"prompt": "x", "timeout": "60"},
            {"prompt": "x", "repository": {"url": "file:///etc"}},
            {"prompt": "x", "repository": {"url": "ext::sh -c touch% /tmp/pwned"}},
            {"prompt": "x", "repository": {"url": "ssh://git@example.org/x.git"}},
            {
                "prompt": "x",
                "repository": {"url": "https://example.org/x.git", "ref": "--upload-pack=x"},
            },
            {"prompt": "x", "repository": {"url": "https://u:p@example.org/x.git"}},
            {"prompt": "x", "repository": {"url": "https://example.org/x.git", "secret": "NOPE"}},
            {"prompt": "x", "repository": {"url": "https://example.org/x.git", "extra": 1}},
            ["not", "an", "object"],
        ]
        for body in bad:
            resp = client.sac("POST", f"users/{user}/agents/idle/tasks", json=body)
            assert resp.status_code == 400, (body, resp.text)
            assert resp.json()["error"] and resp.json()["message"], resp.text
        assert client.sac("GET", "tasks").json()["tasks"] == []
        missing = client.sac("POST", f"users/{user}/agents/nope/tasks", json={"prompt": "x"})
        assert missing.status_code == 404
        assert client.sac("GET", "tasks/not-a-uuid").status_code == 404
        assert client.sac("GET", f"tasks/{uuid.uuid4()}").status_code == 404
    finally:
        client.sac("DELETE", f"users/{user}/agents/idle")


def test_timeout_and_cancel_end_running_turns(stack: dict, fake: str) -> None:
    user = f"tlong{uuid.uuid4().hex[:6]}"
    with running_agent(stack["admin"], user, "slow", **model_agent(fake)) as client:
        allow_all(client, user, "slow")
        long_turn = {
            "text": "This takes a while.",
            "tool_use": {
                "name": "Bash",
                "input": {"command": "echo $$ > /tmp/tool.pid && sleep 127"},
            },
        }
        script_model(fake, long_turn, "finished")
        timed = _submit(client, user, "slow", prompt="take long", timeout=10)
        done = _ended(client, timed["id"])
        assert done["status"] == "timed-out", done
        assert "10 s" in done["error"]
        session = client.agent(user, "slow", "GET", f"sac/api/chat/sessions/{done['session_id']}")
        assert session.json()["running"] is False

        script_model(fake, long_turn, "finished")
        task = _submit(client, user, "slow", prompt="take long again", timeout=600)
        # An agent runs its tasks one at a time: the next waits, queued, and a
        # queued task is cancelled at once.
        waiting = _submit(client, user, "slow", prompt="after that", timeout=600)
        poll_until(
            lambda: client.sac("GET", f"tasks/{task['id']}").json()["session_id"], 120, "running"
        )
        assert client.sac("GET", f"tasks/{waiting['id']}").json()["status"] == "queued"
        resp = client.sac("POST", f"tasks/{waiting['id']}/cancel")
        assert resp.status_code == 202, resp.text
        assert resp.json()["status"] == "cancelled" and resp.json()["started_at"] is None
        resp = client.sac("POST", f"tasks/{task['id']}/cancel")
        assert resp.status_code == 202, resp.text
        assert resp.json()["cancel_requested"] is True
        done = _ended(client, task["id"])
        assert done["status"] == "cancelled", done
        session = client.agent(user, "slow", "GET", f"sac/api/chat/sessions/{done['session_id']}")
        assert [e["type"] for e in session.json()["events"]][-2:] == ["cancelled", "turn_end"]

        statuses = client.sac("GET", "tasks", params={"agent": "slow"}).json()["tasks"]
        assert [t["status"] for t in statuses] == ["cancelled", "cancelled", "timed-out"]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A bare repository served by git's smart HTTP backend on 127.0.0.2, which asks
    for a token (Basic x-access-token:<token>) and records the headers it got."""
    work, root = tmp_path / "work", tmp_path / "srv"
    root.mkdir()
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org", "HOME": str(tmp_path)}  # fmt: skip
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True, env=env)
    (work / "README.md").write_text("hello from the repository\n")
    subprocess.run(["git", "-C", str(work), "add", "."], check=True, env=env)
    subprocess.run(["git", "-C", str(work), "commit", "-qm", "first"], check=True, env=env)
    subprocess.run(["git", "-C", str(work), "branch", "release"], check=True, env=env)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(root / "proj.git")], check=True, env=env)  # fmt: skip
    token = "tok-" + uuid.uuid4().hex
    expected = "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()
    seen: list[str | None] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ.get("HTTP_AUTHORIZATION"))
        if environ.get("HTTP_AUTHORIZATION") != expected:
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="git"')])
            return [b"no"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        cgi = {
            "GIT_PROJECT_ROOT": str(root), "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": environ["REQUEST_METHOD"], "PATH_INFO": environ["PATH_INFO"],
            "QUERY_STRING": environ.get("QUERY_STRING", ""),
            "CONTENT_TYPE": environ.get("CONTENT_TYPE", ""), "CONTENT_LENGTH": str(len(body)),
            "HTTP_CONTENT_ENCODING": environ.get("HTTP_CONTENT_ENCODING", ""),
            "GIT_PROTOCOL": environ.get("HTTP_GIT_PROTOCOL", ""), "REMOTE_ADDR": "127.0.0.1",
        }  # fmt: skip
        out = subprocess.run(
            ["git", "http-backend"], input=body, env=cgi, capture_output=True
        ).stdout
        head, _, content = out.partition(b"\r\n\r\n")
        headers = [tuple(h.split(": ", 1)) for h in head.decode().split("\r\n") if ": " in h]
        status = next((v for k, v in headers if k.lower() == "status"), "200 OK")
        start_response(status, [(k, v) for k, v in headers if k.lower() != "status"])
        return [content]

    server = make_server("127.0.0.2", 0, app, _ThreadingServer, _QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield {"url": f"http://127.0.0.2:{server.server_port}/proj.git", "token": token,
               "seen": seen}  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.asyncio
async def test_repository_is_checked_out_with_the_owners_secret(
    stack: dict, fake: str, git_server: dict[str, Any]
) -> None:
    admin: HubApi = stack["admin"]
    user = f"trepo{uuid.uuid4().hex[:6]}"
    admin.create_user(user)
    # The sandbox reaches the git server through the egress proxy, when allowed.
    resp = admin.sac("PUT", f"users/{user}/settings", json={"egress_allow": ["127.0.0.2/32"]})
    assert resp.status_code == 200, resp.text
    with running_agent(admin, user, "coder", **model_agent(fake)) as client:
        allow_all(client, user, "coder")
        resp = client.sac(
            "PUT", "secrets/GIT_TOKEN", json={"value": git_server["token"], "description": "git"}
        )
        assert resp.status_code == 201, resp.text
        script_model(fake, "I read the README.")
        repository = {"url": git_server["url"], "ref": "release", "secret": "GIT_TOKEN"}
        task = _submit(client, user, "coder", prompt="read the README", repository=repository)
        assert task["repository"] == repository
        done = _ended(client, task["id"])
        assert done["status"] == "succeeded", done
        readme = client.agent(user, "coder", "GET", "api/contents/repos/proj/README.md")
        assert readme.status_code == 200, readme.text
        assert readme.json()["content"] == "hello from the repository\n"
        # A shallow clone of the ref, with no trace of the token in its configuration.
        out = await run_in_terminal(
            stack["url"], client.token, user, "coder",
            "cd /workspace/repos/proj && git rev-parse --abbrev-ref HEAD"
            " && git rev-list --count HEAD && cat .git/config && cat .git/shallow | wc -l",
        )  # fmt: skip
        assert out.splitlines()[:2] == ["release", "1"], out
        assert git_server["url"] in out and git_server["token"] not in out
        assert "extraheader" not in out.lower() and out.splitlines()[-1] == "1"
        assert git_server["seen"] and set(git_server["seen"]) != {None}

        # Without the secret the server refuses, and the task fails saying so.
        script_model(fake, "unused")
        denied = _submit(client, user, "coder", prompt="again", repository={"url": git_server["url"].replace("proj", "other")})  # fmt: skip
        failed = _ended(client, denied["id"])
        assert failed["status"] == "failed" and "git clone failed" in failed["error"], failed
        # The secret's value is in no task and no audit entry.
        everything = admin.sac("GET", "audit", params={"user": user}).text
        everything += client.sac("GET", "tasks").text
        assert git_server["token"] not in everything


def test_a_task_running_when_the_service_dies_ends_failed_interrupted(
    stack: dict, fake: str
) -> None:
    """The service is killed while a task's turn runs: the restarted service's
    runner ends the task ``failed`` ("interrupted"), and interrupts its turn."""
    user = f"tkill{uuid.uuid4().hex[:6]}"
    with running_agent(stack["admin"], user, "victim", **model_agent(fake)) as client:
        allow_all(client, user, "victim")
        script_model(
            fake,
            {
                "text": "This takes a while.",
                "tool_use": {
                    "name": "Bash",
                    "input": {"command": "echo $$ > /tmp/tool.pid && sleep 127"},
                },
            },
            "finished",
        )
        task = _submit(client, user, "victim", prompt="take long", timeout=600)
        running = poll_until(
            lambda: client.sac("GET", f"tasks/{task['id']}").json()["session_id"], 120, "running"
        )
        kill_service_and_wait_for_restart(stack, service_pid(stack))
        done = _ended(client, task["id"])
        assert done["status"] == "failed", done
        assert done["error"].startswith("interrupted"), done
        events = client.agent(user, "victim", "GET", f"sac/api/chat/sessions/{running}").json()
        assert events["running"] is False
        assert [e["type"] for e in events["events"]][-2:] == ["cancelled", "turn_end"]
