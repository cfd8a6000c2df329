"""Reading Claude Code transcripts (JSONL) incrementally, as history events.

A transcript is appended to while the session runs. A reader keeps a small
state per transcript (byte offset, last timestamp seen) and takes only complete
lines after the offset. Each line becomes one history event keyed by
(session, uuid); the key and timestamp of an entry are derived only from the
bytes of that line and the state, so re-reading the same bytes after a crash
yields the same events (the service stores them exactly once).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

# One capture reads at most this much; the rest is taken at the next hook
# (every turn ends with a Stop hook and the session with SessionEnd).
MAX_READ_BYTES = 8 * 1024 * 1024
EPOCH = "1970-01-01T00:00:00.000Z"


@dataclass(frozen=True)
class ReadState:
    offset: int = 0
    last_ts: str = EPOCH

    def to_json(self) -> dict[str, Any]:
        return {"offset": self.offset, "last_ts": self.last_ts}

    @classmethod
    def from_json(cls, data: Any) -> ReadState:
        if not isinstance(data, dict):
            return cls()
        offset = data.get("offset")
        last_ts = data.get("last_ts")
        return cls(
            offset=offset if isinstance(offset, int) and offset >= 0 else 0,
            last_ts=last_ts if isinstance(last_ts, str) and last_ts else EPOCH,
        )


def entry_to_event(
    session_id: str, raw: bytes, entry: Any, last_ts: str, offset: int
) -> dict[str, Any]:
    """One transcript line as a history event (uuid and ts stable for the same line)."""
    if not isinstance(entry, dict):
        entry = {"type": "invalid", "value": entry}
    uuid = entry.get("uuid")
    if not isinstance(uuid, str) or not uuid or len(uuid) > 200:
        # Summaries, markers and other entries without a uuid: a hash of the line and
        # where it starts in the transcript (Claude Code writes some markers twice,
        # byte for byte; each line is still one entry).
        key = f"{session_id}\0{offset}\0".encode() + raw
        uuid = "sha256:" + hashlib.sha256(key).hexdigest()
    ts = entry.get("timestamp")
    if not isinstance(ts, str) or not ts:
        snapshot = entry.get("snapshot")
        ts = snapshot.get("timestamp") if isinstance(snapshot, dict) else None
    if not isinstance(ts, str) or not ts:
        ts = last_ts
    kind = entry.get("type")
    return {
        "session_id": session_id,
        "uuid": uuid,
        "ts": ts,
        "kind": kind if isinstance(kind, str) and kind else "unknown",
        "payload": entry,
    }


def parse_new_lines(
    session_id: str, data: bytes, state: ReadState
) -> tuple[list[dict[str, Any]], ReadState]:
    """Events for the complete lines in ``data`` (read from ``state.offset``).

    A trailing line without a newline is still being written: it is left for the
    next read. Lines that are not JSON are kept as ``invalid`` events rather than
    dropped, so nothing the transcript holds is silently lost.
    """
    end = data.rfind(b"\n")
    if end < 0:
        return [], state
    events = []
    last_ts = state.last_ts
    offset = state.offset
    for line in data[: end + 1].split(b"\n")[:-1]:
        start, offset = offset, offset + len(line) + 1
        raw = line.strip()
        if not raw:
            continue
        try:
            entry = json.loads(raw)
        except ValueError:
            entry = {"type": "invalid", "raw": raw.decode("utf-8", "replace")}
        event = entry_to_event(session_id, raw, entry, last_ts, start)
        last_ts = event["ts"]
        events.append(event)
    return events, ReadState(offset=state.offset + end + 1, last_ts=last_ts)


def read_new_entries(
    path: str, session_id: str, state: ReadState
) -> tuple[list[dict[str, Any]], ReadState]:
    """Events appended to the transcript at ``path`` since ``state``."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size < state.offset:
                # The file was replaced or truncated: start again (the service dedupes).
                state = ReadState(last_ts=state.last_ts)
            f.seek(state.offset)
            data = f.read(MAX_READ_BYTES)
            # A single line longer than one read (a huge tool result): read on to its end.
            while b"\n" not in data and len(data) >= MAX_READ_BYTES:
                more = f.read(MAX_READ_BYTES)
                if not more:
                    break
                data += more
    except FileNotFoundError:
        return [], state
    return parse_new_lines(session_id, data, state)


# ---- reading entries as text (the service: session titles, CSV export, search) ----

PROMPT_CHARS = 500


def _blocks(payload: dict[str, Any]) -> Any:
    message = payload.get("message")
    return message.get("content") if isinstance(message, dict) else None


def prompt_text(kind: str, payload: Any) -> str | None:
    """The text a user typed, if this entry is a user prompt (not a tool result)."""
    if kind != "user" or not isinstance(payload, dict) or payload.get("isMeta"):
        return None
    content = _blocks(payload)
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        if any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
            return None
        texts = [
            b["text"]
            for b in content
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        ]
        text = texts[0] if texts else ""
    else:
        return None
    text = text.strip()
    return text[:PROMPT_CHARS] if text else None


def readable_text(kind: str, payload: Any, limit: int = 4000) -> str:
    """A one-cell rendering of an entry: text, tool calls and results, summaries."""
    if not isinstance(payload, dict):
        return ""
    if kind == "summary":
        return str(payload.get("summary") or "")[:limit]
    content = _blocks(payload)
    if isinstance(content, str):
        return content[:limit]
    parts: list[str] = []
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        kind_ = block.get("type")
        if kind_ == "text":
            parts.append(str(block.get("text") or ""))
        elif kind_ == "thinking":
            parts.append("[thinking] " + str(block.get("thinking") or ""))
        elif kind_ == "tool_use":
            parts.append(f"[tool_use {block.get('name')}] " + json.dumps(block.get("input"))[:500])
        elif kind_ == "tool_result":
            result = block.get("content")
            if isinstance(result, list):
                result = " ".join(str(r.get("text") or "") for r in result if isinstance(r, dict))
            parts.append("[tool_result] " + str(result or "")[:500])
    return "\n".join(p for p in parts if p)[:limit]
