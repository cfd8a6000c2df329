"""Claude Code's PreToolUse hook in an agent's sandbox: one round trip, the way
claude's http hook makes it, next to the command hook it replaced, in the same run.

On a `sac up` stack, an agent whose HITL policy allows every tool (so the hook is
answered at once, from the extension's policy cache, as most tool calls are) runs
a probe in one of its terminals, inside its sandbox, that alternates:

- **http hook** (what claude does now): a POST of a PreToolUse event (a Bash
  call) to ``$SAC_HOOK_URL/pre-tool-use`` with the hook secret header, on a new
  connection each time, until the answer (``permissionDecision: allow``) is read.
- **command hook** (the baseline, what claude did before): the same event on the
  stdin of ``sh -c '<python> <hook>'``, where the hook is the former
  ``jupyter_sac.runtimes.claude_hook``'s PreToolUse path (its imports, including
  the ``jupyter_sac`` package, and its urllib POST to the same endpoint), until the
  process has printed the answer and exited. Claude Code runs command hooks
  through a shell, as here.

Both ask the same endpoint of the same server, so the difference is the process
start and imports. --rounds pairs (default 200) after 5 for warm-up; p50 and p99.
Prints FIGURE lines (``FIGURE <name> <value> <unit>``; baselines ``<name>_baseline``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import httpx
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from jupyter_sac.localhost import resolve_localhost
from sac_testing.stack import embedded_stack, poll_until, read_terminal_until

# The stack serves the hub, the service and each user on *.localhost hosts.
resolve_localhost()

PASSWORD = "bench-admin-password"
# Spares would import JupyterLab beside the measurement; this measures hooks.
EXTRA_CONFIG = "c.LocalAgentSpawner.warm_sandboxes = 0\n"

# The former command hook's PreToolUse path (jupyter_sac/runtimes/claude_hook.py
# before the http hooks), posting to the endpoint as it is now.
LEGACY_HOOK = r"""
import fcntl, hashlib, json, os, sys, urllib.error, urllib.request
from pathlib import Path
from typing import Any
import jupyter_sac.runtimes.transcript  # the old hook imported its package's reader

def _post(path, body, timeout):
    url = os.environ["SAC_HOOK_URL"].rstrip("/") + "/" + path
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json",
                 "X-SAC-Hook-Secret": os.environ.get("SAC_HOOK_SECRET", ""),
                 "X-SAC-Claude-Mode": os.environ.get("SAC_CLAUDE_MODE", "cli")})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")

data = json.load(sys.stdin)
if data.get("hook_event_name") == "PreToolUse":
    print(json.dumps(_post("pre-tool-use", data, None)))
"""

PROBE = r"""
import http.client, json, os, statistics, subprocess, sys, time, urllib.parse
rounds, warmup = int(sys.argv[1]), 5
hook_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), "legacy_hook.py")
command = f"{sys.executable} {hook_file}"
url = urllib.parse.urlsplit(os.environ["SAC_HOOK_URL"])
event = json.dumps({
    "session_id": "ce442b38-81e0-4d27-a7ce-1e429e67c6f9",
    "transcript_path": os.environ["CLAUDE_CONFIG_DIR"] + "/projects/-workspace/x.jsonl",
    "cwd": "/workspace", "permission_mode": "default", "hook_event_name": "PreToolUse",
    "tool_name": "Bash", "tool_input": {"command": "wc -l report.md", "description": "count"},
    "tool_use_id": "toolu_0123456789abcdef",
}).encode()
headers = {"Content-Type": "application/json",
           "X-SAC-Hook-Secret": os.environ["SAC_HOOK_SECRET"], "X-SAC-Claude-Mode": "terminal"}

def http_hook():
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request("POST", url.path.rstrip("/") + "/pre-tool-use", event, headers)
    answer = conn.getresponse().read()
    conn.close()
    return answer

def command_hook():
    done = subprocess.run(command, shell=True, input=event, capture_output=True, check=True)
    return done.stdout

times = {"http": [], "command": []}
for i in range(warmup + rounds):
    for name, hook in (("http", http_hook), ("command", command_hook))[:: 1 if i % 2 else -1]:
        t0 = time.perf_counter()
        answer = hook()
        elapsed = (time.perf_counter() - t0) * 1000
        assert b'"allow"' in answer, (name, answer)
        if i >= warmup:
            times[name].append(elapsed)

def pct(values, q):
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]

print("HOOKBENCH-RESULT " + json.dumps({
    name: {"p50": statistics.median(v), "p99": pct(v, 0.99), "n": len(v)}
    for name, v in times.items()}))
print("HOOKBENCH-" + "END")
"""


def start_probe(server: str, token: str) -> str:
    """Put the probe into the agent's workspace and open a terminal (inside its
    sandbox) to run it in; the terminal's websocket URL."""
    api = httpx.Client(headers={"Authorization": f"token {token}"}, timeout=60)
    resp = api.put(server + "api/contents/hookbench", json={"type": "directory"})
    assert resp.status_code in (200, 201), resp.text
    for name, text in (("hookprobe.py", PROBE), ("legacy_hook.py", LEGACY_HOOK)):
        body = {"type": "file", "format": "text", "content": text}
        resp = api.put(server + f"api/contents/hookbench/{name}", json=body)
        assert resp.status_code in (200, 201), resp.text
    name = api.post(server + "api/terminals").json()["name"]
    return server.replace("http", "ws", 1) + f"terminals/websocket/{name}"


async def run_probe(ws: str, token: str, rounds: int) -> dict[str, dict[str, float]]:
    conn = await websocket_connect(HTTPRequest(ws, headers={"Authorization": f"token {token}"}))
    command = f"python /workspace/hookbench/hookprobe.py {rounds}\r"
    conn.write_message(json.dumps(["stdin", command]))
    out = await read_terminal_until(conn, "HOOKBENCH-END", timeout=60 + rounds * 2)
    conn.close()
    line = out.split("HOOKBENCH-RESULT ", 1)[1].split("\n", 1)[0]
    result: dict[str, dict[str, float]] = json.loads(line.strip())
    return result


def run(rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="sac-bench-") as tmp:
        config = Path(tmp) / "extra_config.py"
        config.write_text(EXTRA_CONFIG)
        with embedded_stack(Path(tmp), PASSWORD, config) as stack:
            headers = {"Authorization": f"token {stack.admin_token}"}
            api = httpx.Client(base_url=stack.url, headers=headers, timeout=120)
            created = api.post(stack.service_url + "api/agents", json={"slug": "hooks"})
            assert created.status_code == 201, created.text
            policy = api.put(
                stack.service_url + "api/users/admin/agents/hooks/hitl-policy",
                json={"policy": {"default": "allow"}},
            )
            assert policy.status_code == 200, policy.text
            assert api.post("hub/api/users/admin/servers/hooks").status_code in (201, 202)
            server = stack.server_url("admin", "hooks")
            poll_until(lambda: api.get(server + "sac/api/status").status_code == 200, 120, "agent")
            ws = start_probe(server, stack.admin_token)
            result = asyncio.run(run_probe(ws, stack.admin_token, rounds))

    http, command = result["http"], result["command"]
    print(f"PreToolUse hook round trip in the sandbox, {http['n']} each (p50 / p99):")
    print(f"  http hook (claude -> extension):   {http['p50']:.2f} / {http['p99']:.2f} ms")
    print(f"  command hook (python per event):   {command['p50']:.2f} / {command['p99']:.2f} ms")
    print(f"FIGURE hook_roundtrip_p50 {http['p50']:.2f} ms")
    print(f"FIGURE hook_roundtrip_p50_baseline {command['p50']:.2f} ms")
    print(f"FIGURE hook_roundtrip_p99 {http['p99']:.2f} ms")
    print(f"FIGURE hook_roundtrip_p99_baseline {command['p99']:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    run(args.rounds)


if __name__ == "__main__":
    main()
