"""Claude Code hook entry point: ``python -m jupyter_sac.runtimes.claude_hook``.

Claude Code runs this for the hooks the sandbox extension installs into the
agent's settings, with the hook's JSON on stdin. It is small and stdlib-only
because it runs on every prompt, tool call and turn end.

- UserPromptSubmit, Stop, SubagentStop, SessionEnd: read the transcript from
  this hook's last offset and hand the new entries to the extension (which
  spools and uploads them). The offset advances only after the extension has
  accepted them, so a failure means "send again later", never "lost".
- PreToolUse: ask the extension for the human-in-the-loop decision and print it
  in Claude Code's ``permissionDecision`` format.

The extension is found through ``SAC_HOOK_URL`` and ``SAC_HOOK_SECRET``, which it
puts into its own environment (inherited by terminals and chat turns).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .transcript import ReadState, read_new_entries

CAPTURE_EVENTS = {"UserPromptSubmit", "Stop", "SubagentStop", "SessionEnd", "PreCompact"}
# The extension answers quickly except while a human decides (bounded by the HITL
# timeout, which the hook's own timeout in settings.json is set above).
CAPTURE_TIMEOUT = 30


def _post(path: str, body: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    url = os.environ["SAC_HOOK_URL"].rstrip("/") + "/" + path
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            "X-SAC-Hook-Secret": os.environ.get("SAC_HOOK_SECRET", ""),
        },
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")


def state_dir() -> Path:
    base = os.environ.get("SAC_HOOK_STATE_DIR") or os.path.expanduser(
        "~/.local/share/jupyter-sac/transcripts"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _post_transcript(body: dict[str, Any]) -> None:
    _post("transcript", body, CAPTURE_TIMEOUT)


def capture(
    transcript_path: str,
    session_id: str,
    deliver: Callable[[dict[str, Any]], None] = _post_transcript,
) -> int:
    """Send the transcript's new entries; returns how many were accepted.

    ``deliver`` takes ``{"session_id", "transcript_path", "events"}`` and raises
    if it could not keep them (the offset then stays): the hook posts them to the
    extension; the extension itself, retrying after a full disk, spools them."""
    key = hashlib.sha256(transcript_path.encode()).hexdigest()[:32]
    state_file = state_dir() / f"{key}.json"
    with open(state_dir() / f"{key}.lock", "w") as lock:
        # Two hooks of one session (Stop and SubagentStop) may run at once.
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = ReadState.from_json(json.loads(state_file.read_text()))
        except (OSError, ValueError):
            state = ReadState()
        events, new_state = read_new_entries(transcript_path, session_id, state)
        if not events:
            return 0
        deliver({"session_id": session_id, "transcript_path": transcript_path, "events": events})
        tmp = state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(new_state.to_json()))
        os.replace(tmp, state_file)
        return len(events)


def pre_tool_use(data: dict[str, Any]) -> dict[str, Any] | None:
    mode = os.environ.get("SAC_CLAUDE_MODE", "cli")
    try:
        answer = _post("pre-tool-use", {**data, "mode": mode}, None)
    except (OSError, ValueError) as e:
        if mode == "chat":
            # Nobody can be asked and a headless turn cannot show a prompt: fail closed.
            return _decision("deny", f"human-in-the-loop is unavailable ({e}); tool not run")
        # Interactive: leave it to Claude Code's own permission prompt.
        print(f"jupyter-sac: human-in-the-loop unavailable: {e}", file=sys.stderr)
        return None
    decision = answer.get("decision")
    if decision in ("allow", "deny"):
        return _decision(decision, str(answer.get("reason") or ""))
    return None


def _decision(decision: str, reason: str) -> dict[str, Any]:
    return {
        "hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": decision,
            "permissionDecisionReason": reason,
        }
    }


def main() -> int:
    try:
        data = json.load(sys.stdin)
    except ValueError:
        return 0
    if not isinstance(data, dict) or "SAC_HOOK_URL" not in os.environ:
        return 0
    event = data.get("hook_event_name")
    if event == "PreToolUse":
        out = pre_tool_use(data)
        if out is not None:
            print(json.dumps(out))
        return 0
    if event in CAPTURE_EVENTS:
        session_id = str(data.get("session_id") or "")
        paths = [data.get("transcript_path"), data.get("agent_transcript_path")]
        for path in paths:
            if isinstance(path, str) and path and session_id:
                try:
                    capture(path, session_id)
                except (OSError, ValueError, urllib.error.URLError) as e:
                    # Never block the agent; the next hook sends these entries again.
                    print(f"jupyter-sac: history capture deferred: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
