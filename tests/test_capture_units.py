"""Transcript reading and capture, the durable history spool and Claude config seeding
(no stack)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from jupyter_sac.runtimes.claude_config import (
    LEGACY_HOOK_MODULE,
    merge_hooks,
    merge_state,
    seed_claude_config,
)
from jupyter_sac.runtimes.transcript import EPOCH, ReadState, parse_new_lines, read_new_entries
from jupyter_sac.server_extension.capture import TranscriptCapture, TranscriptOutsideConfig
from jupyter_sac.server_extension.spool import HistorySpool, Position


def _line(**entry: object) -> bytes:
    return json.dumps(entry).encode() + b"\n"


def test_only_complete_lines_are_read_and_offsets_advance(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    first = _line(uuid="u1", type="user", timestamp="2026-01-01T00:00:00Z", message={})
    path.write_bytes(first + b'{"uuid": "u2", "type": "assi')  # second line half-written
    events, state = read_new_entries(str(path), "S", ReadState())
    assert [e["uuid"] for e in events] == ["u1"]
    assert state.offset == len(first)
    with open(path, "ab") as f:
        f.write(b'stant", "timestamp": "2026-01-01T00:00:01Z"}\n')
    events, state = read_new_entries(str(path), "S", state)
    assert [(e["uuid"], e["kind"]) for e in events] == [("u2", "assistant")]
    assert read_new_entries(str(path), "S", state)[0] == []


def test_entries_without_uuid_or_time_get_stable_keys() -> None:
    data = _line(type="summary", summary="x") + b"not json\n"
    a, _ = parse_new_lines("S", data, ReadState(last_ts="2026-02-02T00:00:00Z"))
    b, _ = parse_new_lines("S", data, ReadState(last_ts="2026-02-02T00:00:00Z"))
    assert [e["uuid"] for e in a] == [e["uuid"] for e in b]
    assert a[0]["uuid"] != a[1]["uuid"]
    assert all(e["ts"] == "2026-02-02T00:00:00Z" for e in a)
    assert a[1]["kind"] == "invalid" and a[1]["payload"]["raw"] == "not json"
    fresh, _ = parse_new_lines("S", data, ReadState())
    assert fresh[0]["ts"] == EPOCH


def test_spool_survives_a_torn_append_and_commits_in_order(tmp_path: Path) -> None:
    spool = HistorySpool(tmp_path / "spool", segment_bytes=300)
    spool.append([{"uuid": f"e{i}", "pad": "x" * 50} for i in range(10)])
    assert spool.backlog() == 10
    assert len(list((tmp_path / "spool").glob("*.jsonl"))) == 1  # rotation is per append
    spool.append([{"uuid": "e10"}])
    assert len(list((tmp_path / "spool").glob("*.jsonl"))) == 2

    batch, end = spool.read_batch(max_events=4)
    assert [e["uuid"] for e in batch] == ["e0", "e1", "e2", "e3"]
    spool.commit(end)
    # A crash after commit, then a torn write at the end of the newest segment.
    newest = sorted((tmp_path / "spool").glob("*.jsonl"))[-1]
    with open(newest, "ab") as f:
        f.write(b'{"uuid": "torn')
    again = HistorySpool(tmp_path / "spool", segment_bytes=300)
    assert again.cursor == end
    seen = []
    while True:
        batch, end = again.read_batch(max_events=3)
        if not batch:
            break
        seen += [e["uuid"] for e in batch]
        again.commit(end)
    assert seen == [f"e{i}" for i in range(4, 11)]
    assert again.backlog() == 0
    # Appends after a full drain are read too (the cursor never skips ahead of them).
    again.append([{"uuid": "late"}])
    batch, end = again.read_batch()
    assert [e["uuid"] for e in batch] == ["late"]
    assert end > Position(0, 0)
    # Consumed segments are removed; the newest stays for appends.
    assert len(list((tmp_path / "spool").glob("*.jsonl"))) == 1


def test_hooks_are_installed_once_and_user_hooks_are_kept() -> None:
    user_hook = {"matcher": "Bash", "hooks": [{"type": "command", "command": "my-linter"}]}
    user_http = {"hooks": [{"type": "http", "url": "http://example.org/audit"}]}
    # SAC's command hooks as an older version wrote them, for an event SAC no
    # longer hooks too: rewritten, not kept beside the new ones.
    legacy = {"hooks": [{"type": "command", "command": f"/py -m {LEGACY_HOOK_MODULE}"}]}
    settings = {
        "model": "x",
        "hooks": {"PreToolUse": [legacy, user_hook], "Stop": [legacy, user_http],
                  "Notification": [legacy]},
    }  # fmt: skip
    once = merge_hooks(settings, "http://127.0.0.1:1/user/a/b/sac/api/hooks/", 999)
    twice = merge_hooks(once, "http://127.0.0.1:2/user/a/b/sac/api/hooks", 999)
    pre = twice["hooks"]["PreToolUse"]
    assert len(pre) == 2 and pre[1] == user_hook
    assert pre[0]["matcher"] == "*"
    (hook,) = pre[0]["hooks"]
    assert (
        hook["type"] == "http"
        and hook["url"] == "http://127.0.0.1:2/user/a/b/sac/api/hooks/pre-tool-use"
    )
    assert hook["timeout"] == 999 and hook["onFailure"] == "block"
    # The secret is named, never written down: claude fills it in from its environment.
    assert hook["headers"]["X-SAC-Hook-Secret"] == "$SAC_HOOK_SECRET"
    assert "SAC_HOOK_SECRET" in hook["allowedEnvVars"]
    for event in ("UserPromptSubmit", "Stop", "SubagentStop", "SessionEnd"):
        (capture,) = twice["hooks"][event][0]["hooks"]
        assert capture["url"].endswith("/sac/api/hooks/transcript")
        # A capture that fails is taken again at the next hook: it blocks nothing.
        assert "onFailure" not in capture
    assert twice["hooks"]["Stop"][1:] == [user_http]
    assert "Notification" not in twice["hooks"]
    assert twice["model"] == "x"


def test_state_trusts_workspace_and_approves_key(tmp_path: Path) -> None:
    state = merge_state(
        {"numStartups": 7, "customApiKeyResponses": {"approved": ["old"], "rejected": []}},
        "/workspace",
        "sac-agent-" + "k" * 40,
        None,
    )
    assert state["numStartups"] == 7 and state["hasCompletedOnboarding"] is True
    assert state["customApiKeyResponses"]["approved"] == ["old", "k" * 20]
    assert state["projects"]["/workspace"]["hasTrustDialogAccepted"] is True
    seed_claude_config(
        tmp_path, workspace="/w", api_key="sac-agent-abc", hooks_url="http://h/", pre_tool_timeout=5
    )
    seed_claude_config(
        tmp_path, workspace="/w", api_key="sac-agent-abc", hooks_url="http://h/", pre_tool_timeout=5
    )
    saved = json.loads((tmp_path / ".claude.json").read_text())
    assert saved["customApiKeyResponses"]["approved"] == ["sac-agent-abc"]
    assert json.loads((tmp_path / "settings.json").read_text())["hooks"]


def test_spool_keeps_lone_surrogates(tmp_path: Path) -> None:
    # JavaScript writes "\ud83d" when it cuts a string in the middle of an emoji.
    events, _ = parse_new_lines("S", b'{"uuid": "u", "text": "cut \\ud83d"}\n', ReadState())
    spool = HistorySpool(tmp_path / "spool")
    spool.append(events)
    batch, _ = spool.read_batch()
    assert batch[0]["payload"]["text"] == "cut \ud83d"


# Appends a batch to the spool in a process that may write no file past ``limit``
# bytes (RLIMIT_FSIZE: the write stops part-way, as on a full disk), and says how
# the append ended.
_APPEND_AT_A_LIMIT = """
import resource, signal, sys
from pathlib import Path
from jupyter_sac.server_extension.spool import HistorySpool
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
spool = HistorySpool(Path(sys.argv[1]))
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
try:
    spool.append([{"uuid": f"big{i}", "text": "x" * 200} for i in range(50)])
except OSError as e:
    print(type(e).__name__, spool.append_error)
"""


def test_an_append_cut_off_by_a_full_disk_leaves_no_torn_line(tmp_path: Path) -> None:
    """A write that runs out of room part-way must not leave half a line: the next
    append would continue that line, and both events would be unreadable (lost)."""
    import subprocess
    import sys

    spool = HistorySpool(tmp_path / "spool")
    spool.append([{"uuid": "before"}])
    size = sum(p.stat().st_size for p in (tmp_path / "spool").glob("*.jsonl"))
    out = subprocess.run(
        [sys.executable, "-c", _APPEND_AT_A_LIMIT, str(tmp_path / "spool"), str(size + 1000)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    # The caller (the hook) is told, and sends again; the status says why.
    assert out.strip() == "OSError File too large", out
    spool.append([{"uuid": "after"}])
    assert spool.append_error is None
    events, _ = HistorySpool(tmp_path / "spool").read_batch()
    assert [e["uuid"] for e in events] == ["before", "after"]


def test_captures_of_one_transcript_at_once_spool_each_line_once(tmp_path: Path) -> None:
    """Hooks of one session arriving together (Stop and SubagentStop) each take
    the transcript's new lines under its lock: every line lands in the spool once,
    and a server started again (a new capture on the same state) goes on from there."""
    config = tmp_path / "claude"
    transcript = config / "projects" / "-workspace" / "s1.jsonl"
    transcript.parent.mkdir(parents=True)
    transcript.write_bytes(b"".join(_line(uuid=f"u{i}", type="user") for i in range(200)))
    spool = HistorySpool(tmp_path / "spool")
    capture = TranscriptCapture(spool, tmp_path / "state", config)
    with ThreadPoolExecutor(8) as pool:
        taken = list(pool.map(lambda _: capture.capture(str(transcript), "s1"), range(8)))
    assert sorted(taken) == [0] * 7 + [200]
    with transcript.open("ab") as f:
        f.write(b"".join(_line(uuid=f"u{i}", type="user") for i in range(200, 250)))
    again = TranscriptCapture(spool, tmp_path / "state", config)
    assert again.capture(str(transcript), "s1") == 50
    events, _ = spool.read_batch()
    assert [e["uuid"] for e in events] == [f"u{i}" for i in range(250)]


def test_a_capture_reads_only_claudes_transcripts(tmp_path: Path) -> None:
    config = tmp_path / "claude"
    (config / "projects").mkdir(parents=True)
    (config / "projects" / "escape").symlink_to(tmp_path)
    secret = tmp_path / "secret.jsonl"
    secret.write_bytes(_line(uuid="u1", type="user"))
    capture = TranscriptCapture(HistorySpool(tmp_path / "spool"), tmp_path / "state", config)
    for path in (secret, config / "projects" / "escape" / "secret.jsonl",
                 config / "projects" / ".." / ".." / "secret.jsonl"):  # fmt: skip
        with pytest.raises(TranscriptOutsideConfig):
            capture.capture(str(path), "s1")


# A transcript a hook could not spool (the disk full: no file may grow past the
# spool's size now), captured again by the extension's retry once the limit is
# lifted; then a later hook of the session finds nothing left to send.
_RETRY_AFTER_ROOM_RETURNS = """
import asyncio, os, resource, signal, sys
from pathlib import Path
from jupyter_sac.server_extension.capture import TranscriptCapture
from jupyter_sac.server_extension.spool import HistorySpool
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
spool_dir, transcript, state, config = sys.argv[1:5]
spool = HistorySpool(Path(spool_dir))
spool.append([{"uuid": "earlier"}])
size = sum(p.stat().st_size for p in Path(spool_dir).glob("*.jsonl"))
resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))
capture = TranscriptCapture(spool, Path(state), Path(config), retry_interval=3600)

async def main():
    try:
        await capture.capture_hook({"session_id": "S", "transcript_path": transcript})
    except OSError:
        pass
    print(capture.retry_once(), spool.append_error)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    print(capture.retry_once(), spool.append_error)
    await capture.stop()

asyncio.run(main())
print(capture.capture(transcript, "S"))
"""


def test_a_deferred_transcript_is_captured_once_room_returns(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "claude"
    transcript = config / "projects" / "-workspace" / "t.jsonl"
    transcript.parent.mkdir(parents=True)
    transcript.write_bytes(b"".join(_line(uuid=f"u{i}", type="user") for i in range(3)))
    out = subprocess.run(
        [sys.executable, "-c", _RETRY_AFTER_ROOM_RETURNS,
         str(tmp_path / "spool"), str(transcript), str(tmp_path / "state"), str(config)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    # Still no room: it waits, paused; room: captured, and the hook sends nothing twice.
    assert out.split("\n")[:3] == ["1 File too large", "0 None", "0"], out
    events, _ = HistorySpool(tmp_path / "spool").read_batch()
    assert [e["uuid"] for e in events] == ["earlier", "u0", "u1", "u2"]
