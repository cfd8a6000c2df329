"""A chat turn through SAC next to the same turn with bare `claude -p`, same run.

The turn: the scripted fake model (sac_testing.fake_anthropic) answers Write,
then Bash, then Read, then a final text, so each turn makes four model calls
and runs three tools. Three ways, interleaved round by round (the order turns
each round, so machine noise falls on all alike; one warm-up round is dropped):

- **bare**: `claude -p go --output-format stream-json --verbose
  --permission-mode bypassPermissions` (the pinned CLI) on this machine, in one
  workspace with one Claude config (as someone running it again and again),
  the fake model straight at ANTHROPIC_BASE_URL, no hooks; timed from its start
  to the `result` line.
- **open session**: a turn through SAC's chat API (`POST sac/api/chat` with
  the id of a session that already had a turn, through the proxy, the agent's
  policy allowing every tool, its model calls through the credential proxy),
  timed from the POST to the turn's `turn_end` on the events websocket.
- **new session**: the same with no session id: a new conversation, so its
  claude process starts for it.

Prints the medians and FIGURE lines: the median over rounds of each SAC time
divided by the bare time of the same round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from jupyter_sac.localhost import resolve_localhost
from jupyter_sac.runtimes.claude import claude_binary
from jupyter_sac.runtimes.claude_config import merge_state
from jupyter_sac.stack import free_port
from sac_testing.stack import embedded_stack, http_status, poll_until, stop_process

# The stack serves the hub, the service and each user on *.localhost hosts.
resolve_localhost()

PASSWORD = "bench-admin-password"
# The warm pool's next spare would start beside the measured turns; it is off.
EXTRA_CONFIG = "c.LocalAgentSpawner.warm_sandboxes = 0\n"


def turn_script(workdir: str, name: str) -> list[Any]:
    """The fake model's answers for one turn: Write, Bash, Read, then text."""
    report = f"{workdir}/{name}.md"
    return [
        {"tool_use": {"name": "Write", "input": {"file_path": report, "content": "a\nb\nc\n"}}},
        {"tool_use": {"name": "Bash", "input": {"command": f"wc -l < {report} > {report}.n"}}},
        {"tool_use": {"name": "Read", "input": {"file_path": f"{report}.n"}}},
        f"{name} done",
    ]


def script(fake: str, replies: list[Any]) -> None:
    httpx.delete(fake + "/_fake/script")
    assert httpx.post(fake + "/_fake/script", json={"replies": replies}).status_code == 204


@contextmanager
def fake_model() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sac_testing.fake_anthropic", "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        poll_until(lambda: http_status(url + "/_fake/requests") == 200, 60, "fake model")
        yield url
    finally:
        stop_process(proc)


class Bare:
    """`claude -p` on this machine, in one workspace with one Claude config."""

    def __init__(self, root: Path, fake: str):
        self.config, self.workspace = root / "bare-config", root / "bare-workspace"
        self.workspace.mkdir()
        self.config.mkdir()
        state = merge_state({}, str(self.workspace), None, None)
        (self.config / ".claude.json").write_text(json.dumps(state))
        self.fake = fake
        self.cli = claude_binary() or "claude"
        self.runs = 0

    async def turn(self) -> float:
        self.runs += 1
        name, workspace = f"bare-{self.runs}", self.workspace
        script(self.fake, turn_script(str(workspace), name))
        env = dict(
            os.environ,
            ANTHROPIC_BASE_URL=self.fake,
            ANTHROPIC_API_KEY="sk-bench",
            CLAUDE_CONFIG_DIR=str(self.config),
            CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
            IS_SANDBOX="1",
        )
        argv = [self.cli, "-p", "go", "--output-format", "stream-json", "--verbose",
                "--permission-mode", "bypassPermissions"]  # fmt: skip
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=workspace, env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, limit=64 * 1024 * 1024,
        )  # fmt: skip
        assert proc.stdout is not None
        elapsed = None
        async for line in proc.stdout:
            if b'"type":"result"' in line:
                elapsed = time.perf_counter() - t0
                result = json.loads(line)
                assert not result.get("is_error"), result
        await proc.wait()
        assert elapsed is not None, "no result from claude -p"
        assert (workspace / f"{name}.md.n").read_text().strip() == "3"
        return elapsed


class Sac:
    """Turns through the agent's chat API, as JupyterLab's chat panel sends them."""

    def __init__(self, server: str, token: str, fake: str):
        self.server = server
        self.headers = {"Authorization": f"token {token}"}
        self.http = httpx.AsyncClient(headers=self.headers, timeout=120)
        self.fake = fake
        self.events: WebSocketClientConnection | None = None
        self.session: str | None = None
        self.runs = 0

    async def open(self) -> None:
        url = self.server.replace("http", "ws", 1) + "sac/api/chat/events"
        self.events = await websocket_connect(HTTPRequest(url, headers=self.headers))

    async def turn(self, session_id: str | None) -> tuple[float, str]:
        """One turn (in ``session_id``, or a new session): seconds to turn_end, session."""
        assert self.events is not None
        self.runs += 1
        name = f"sac-{self.runs}"
        script(self.fake, turn_script("/workspace", name))
        t0 = time.perf_counter()
        resp = await self.http.post(
            self.server + "sac/api/chat", json={"message": "go", "session_id": session_id}
        )
        assert resp.status_code == 202, resp.text
        turn_id = resp.json()["turn_id"]
        errors = []
        while True:
            msg = await asyncio.wait_for(self.events.read_message(), 120)
            assert msg is not None, "the events websocket closed"
            event = json.loads(msg)
            if event["turn_id"] != turn_id:
                continue
            if event["type"] == "error" or (event["type"] == "tool_result" and event["is_error"]):
                errors.append(event)
            if event["type"] == "turn_end":
                elapsed = time.perf_counter() - t0
                break
        assert not errors and event["exit_code"] == 0, errors
        return elapsed, resp.json()["session_id"]


async def measure(sac: Sac, bare: Bare, rounds: int) -> dict[str, list[float]]:
    await sac.open()
    _, session = await sac.turn(None)  # the open session's first turn
    times: dict[str, list[float]] = {"bare": [], "open": [], "new": []}

    async def one(kind: str) -> float:
        if kind == "bare":
            return await bare.turn()
        return (await sac.turn(session if kind == "open" else None))[0]

    kinds = list(times)
    for round_ in range(rounds + 1):  # round 0 warms up and is dropped
        order = kinds[round_ % 3 :] + kinds[: round_ % 3]
        measured = {kind: await one(kind) for kind in order}
        if round_:
            for kind, seconds in measured.items():
                times[kind].append(seconds)
            print(f"  round {round_}: " + ", ".join(f"{k} {measured[k]:.3f} s" for k in kinds))
    return times


def run(rounds: int) -> None:
    with (
        fake_model() as fake,
        tempfile.TemporaryDirectory(prefix="sac-bench-") as tmp,
    ):
        extra = Path(tmp) / "extra_config.py"
        extra.write_text(EXTRA_CONFIG)
        (Path(tmp) / "stack").mkdir()
        with embedded_stack(Path(tmp) / "stack", PASSWORD, extra) as stack:
            headers = {"Authorization": f"token {stack.admin_token}"}
            api = httpx.Client(base_url=stack.url, headers=headers, timeout=120)
            agent = {"slug": "bench", "provider": "custom", "base_url": fake,
                     "api_key": "sk-ant-bench-provider-key-42"}  # fmt: skip
            created = api.post(stack.service_url + "api/agents", json=agent)
            assert created.status_code == 201, created.text
            policy = {"policy": {"default": "allow"}}
            url = stack.service_url + "api/users/admin/agents/bench/hitl-policy"
            assert api.put(url, json=policy).status_code == 200
            assert api.post("hub/api/users/admin/servers/bench").status_code in (201, 202)
            server = stack.server_url("admin", "bench")
            poll_until(lambda: api.get(server + "sac/api/status").status_code == 200, 120, "agent")
            bare = Bare(Path(tmp), fake)
            sac = Sac(server, stack.admin_token, fake)
            times = asyncio.run(measure(sac, bare, rounds))

    def ratio(kind: str) -> float:
        return statistics.median(s / b for s, b in zip(times[kind], times["bare"], strict=True))

    median = {kind: statistics.median(values) for kind, values in times.items()}
    print(f"median seconds over {rounds} rounds:")
    print(f"  bare claude -p:             {median['bare']:.3f} s")
    print(f"  SAC chat, open session:     {median['open']:.3f} s")
    print(f"  SAC chat, new session:      {median['new']:.3f} s")
    print(f"FIGURE chat_turn_overhead_ratio {ratio('open'):.3f} ratio")
    print("FIGURE chat_turn_overhead_ratio_baseline 1.0 ratio")
    print(f"FIGURE chat_first_turn_ratio {ratio('new'):.3f} ratio")
    print("FIGURE chat_first_turn_ratio_baseline 1.0 ratio")
    print(f"FIGURE chat_turn_seconds {median['open']:.3f} s")
    print(f"FIGURE chat_turn_seconds_baseline {median['bare']:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10, help="measured rounds (default 10)")
    parser.add_argument("--short", action="store_true", help="3 rounds: a quick look")
    args = parser.parse_args()
    run(3 if args.short else args.rounds)


if __name__ == "__main__":
    main()
