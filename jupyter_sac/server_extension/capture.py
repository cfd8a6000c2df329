"""History capture in the extension's own process (chat sessions).

A chat session's CLI is driven by this server, so its transcript is read here
rather than by a hook process: after each turn, when its process is released,
and when a subagent stops (its own transcript). New complete lines since the
last offset are appended to the spool (fsync'd) and only then is the offset
moved on, so a crash in between sends the same lines again and the service
stores them once.

The offsets are the hook entry point's (one file per transcript under
``SAC_HOOK_STATE_DIR``, named by a hash of its path, under the same file lock),
so a chat conversation continued with ``claude --resume`` in a terminal goes on
from the same place instead of sending everything again.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from ..runtimes.transcript import ReadState, read_new_entries
from .spool import HistorySpool


def state_key(transcript_path: str) -> str:
    """The name of a transcript's offset file (as ``runtimes.claude_hook`` names it)."""
    return hashlib.sha256(transcript_path.encode()).hexdigest()[:32]


class TranscriptCapture:
    def __init__(self, spool: HistorySpool, state_dir: Path, wake: Callable[[], None]):
        self.spool = spool
        self.state_dir = state_dir
        self.wake = wake

    def capture_now(self, transcript_path: str, session_id: str) -> int:
        """Spool the transcript's new entries; how many (blocking: call it in a thread)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        key = state_key(transcript_path)
        state_file = self.state_dir / f"{key}.json"
        with open(self.state_dir / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = ReadState.from_json(json.loads(state_file.read_text()))
            except (OSError, ValueError):
                state = ReadState()
            events, new_state = read_new_entries(transcript_path, session_id, state)
            if not events:
                return 0
            self.spool.append(events)  # durable before the offset moves
            tmp = state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(new_state.to_json()))
            os.replace(tmp, state_file)
        return len(events)

    async def capture(self, transcript_path: str, session_id: str) -> int:
        count = await asyncio.to_thread(self.capture_now, transcript_path, session_id)
        if count:
            self.wake()
        return count
