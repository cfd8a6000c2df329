"""Conversation capture: a transcript's new lines into the history spool.

Claude Code's capture hooks (Stop, SessionEnd, …) post the transcript's path to
the extension, which reads the file from where it left off and appends the new
complete lines to the spool. The offset of each transcript is kept in a small
state file beside a lock file (``<state_dir>/transcripts``, a pair per transcript)
and advances only after the spool has the lines on disk, so a crash or a full
disk in between means "read them again", never "lost" (the service stores each
line once, whoever sends it twice).

A capture a full disk refused is retried by the extension itself every few
seconds until the lines fit: the session may have ended, and then no later hook
of it would read them (capture resumes when space returns).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..runtimes.transcript import ReadState, read_new_entries
from .spool import HistorySpool

log = logging.getLogger("jupyter_sac.capture")

# Seconds between attempts to capture what a full disk kept out of the spool.
CAPTURE_RETRY_INTERVAL = 5.0


class TranscriptOutsideConfig(ValueError):
    """A transcript path that is not under claude's configuration directory."""


class TranscriptCapture:
    def __init__(
        self,
        spool: HistorySpool,
        state_dir: Path,
        claude_config_dir: Path,
        on_spooled: Callable[[], None] = lambda: None,
        retry_interval: float = CAPTURE_RETRY_INTERVAL,
    ):
        self.spool = spool
        self.on_spooled = on_spooled  # the uploader's wake-up
        self.retry_interval = retry_interval
        # Transcripts a full disk kept out of the spool: path -> session id.
        self._deferred: dict[str, str] = {}
        self._retry: asyncio.Task[None] | None = None
        self.state_dir = state_dir
        # Claude Code writes every transcript (and its subagents') under here; the
        # hooks name files, and this server reads only those.
        self.transcripts_root = claude_config_dir.resolve() / "projects"
        self.state_dir.mkdir(parents=True, exist_ok=True)

    def check_path(self, transcript_path: str) -> Path:
        path = Path(transcript_path).resolve()
        if not path.is_relative_to(self.transcripts_root):
            raise TranscriptOutsideConfig(
                f"{transcript_path} is not a transcript under {self.transcripts_root}"
            )
        return path

    def capture(self, transcript_path: str, session_id: str) -> int:
        """Spool the transcript's new lines; how many (blocking: call it in a thread)."""
        path = self.check_path(transcript_path)
        # Keyed by the path as claude names it: the state files of earlier
        # versions (the hook process) stay valid.
        key = hashlib.sha256(transcript_path.encode()).hexdigest()[:32]
        state_file = self.state_dir / f"{key}.json"
        with open(self.state_dir / f"{key}.lock", "w") as lock:
            # Two hooks of one session (Stop and SubagentStop) may arrive at once,
            # each in its own thread: one reads and spools, then the other.
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = ReadState.from_json(json.loads(state_file.read_text()))
            except (OSError, ValueError):
                state = ReadState()
            events, new_state = read_new_entries(str(path), session_id, state)
            if not events:
                return 0
            self.spool.append(events)  # durable (fsync) before the offset moves
            tmp = state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(new_state.to_json()))
            os.replace(tmp, state_file)
            return len(events)

    async def capture_hook(self, hook: dict[str, Any]) -> int:
        """Capture what a capture hook's input names (Claude Code's JSON, from an http
        hook or an SDK hook callback alike): its transcript and, for a subagent, the
        subagent's. How many lines were spooled. ValueError: the input names no
        transcript, or one outside claude's directory; OSError: the spool could not
        take them (a full disk), and the next hook reads them again."""
        session_id = hook.get("session_id")
        paths = [hook.get("transcript_path"), hook.get("agent_transcript_path")]
        paths = [p for p in paths if isinstance(p, str) and p]
        if not isinstance(session_id, str) or not session_id or not paths:
            raise ValueError("session_id and transcript_path are required")
        spooled = 0
        try:
            for path in paths:
                try:
                    spooled += await asyncio.to_thread(self.capture, path, session_id)
                except OSError:
                    if self.spool.append_error is not None:  # no room: read it again later
                        self.defer(path, session_id)
                    raise
        finally:
            if spooled:
                self.on_spooled()
        return spooled

    def defer(self, transcript_path: str, session_id: str) -> None:
        """Read ``transcript_path`` again later (called on the event loop)."""
        self._deferred[transcript_path] = session_id
        if self._retry is None or self._retry.done():
            self._retry = asyncio.create_task(self._retry_until_captured())

    def retry_once(self) -> int:
        """Capture what each deferred transcript holds beyond its offset (blocking);
        how many transcripts still wait for room."""
        for path, session_id in list(self._deferred.items()):
            try:
                self.capture(path, session_id)
            except OSError as e:
                if self.spool.append_error is not None:
                    break  # still no room: the others would not fit either
                # The transcript itself is unreadable: a later hook may still read it.
                log.warning("history capture of %s given up: %s", path, e)
            self._deferred.pop(path, None)
        return len(self._deferred)

    async def _retry_until_captured(self) -> None:
        while self._deferred:
            await asyncio.sleep(self.retry_interval)
            before = len(self._deferred)
            try:
                left = await asyncio.to_thread(self.retry_once)
            except Exception:  # keep retrying whatever one attempt met
                log.exception("history capture retry failed")
                continue
            if left < before:
                self.on_spooled()

    async def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
            self._retry = None
