"""The durable history spool of a sandbox and its uploader to the `sac` service.

Hooks hand transcript entries to the extension; the extension appends them to
an append-only spool on the agent's disk (fsync before it answers the hook) and
an uploader sends them to the service in batches. The upload position (the
cursor) is committed only after the service acknowledged a batch, so:

- the service is down: the spool grows, and drains when it is back;
- the server is killed mid-upload: the batch is sent again on restart, and the
  service stores each (agent, session, entry uuid) once;
- the spool's disk is full: the capture is refused and keeps its transcript
  offset, and the extension reads those entries again itself once there is room
  (``capture.TranscriptCapture``), so they do not wait for the session's next hook.

Segments are JSONL files named by a sequence number; a segment is deleted once
the cursor has moved past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .service_client import ServiceClient

log = logging.getLogger("jupyter_sac.spool")

SEGMENT_BYTES = 8 * 1024 * 1024
BATCH_EVENTS = 1000
BATCH_BYTES = 4 * 1024 * 1024
MAX_BACKOFF = 30.0


@dataclass(frozen=True, order=True)
class Position:
    segment: int
    offset: int


class HistorySpool:
    """Append-only JSONL segments plus a committed read position."""

    def __init__(
        self,
        directory: Path,
        segment_bytes: int = SEGMENT_BYTES,
        redact: Callable[[Any], Any] | None = None,
    ):
        self.dir = directory
        self.segment_bytes = segment_bytes
        # Applied to every event before it is written: the sandbox's secrets never
        # reach the spool, so never the service (rules/secrets.py: Redactor).
        self.redact = redact
        self._lock = threading.Lock()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cursor = self._load_cursor()
        # Why the last append failed (a full disk), until one succeeds: capture is
        # paused meanwhile, and the hooks send those entries again.
        self.append_error: str | None = None
        self._recover()

    # ---- files ------------------------------------------------------------------

    def _segment_path(self, n: int) -> Path:
        return self.dir / f"{n:012d}.jsonl"

    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.dir.glob("*.jsonl") if p.stem.isdigit())

    def _load_cursor(self) -> Position:
        try:
            data = json.loads((self.dir / "cursor.json").read_text())
            return Position(int(data["segment"]), int(data["offset"]))
        except (OSError, ValueError, KeyError, TypeError):
            segments = self._segments()
            return Position(segments[0] if segments else 1, 0)

    def _recover(self) -> None:
        """Drop a half-written last line left by a crash during an append."""
        segments = self._segments()
        if not segments:
            return
        path = self._segment_path(segments[-1])
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            log.warning("history spool: dropping a partial line at the end of %s", path.name)
            with open(path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())

    # ---- writing ----------------------------------------------------------------

    def append(self, events: list[dict[str, Any]]) -> None:
        """Durably append events (blocking: call it in a thread)."""
        if not events:
            return
        if self.redact is not None:
            events = [self.redact(e) for e in events]
        payload = b"".join(
            # ASCII escapes: a transcript may hold a lone surrogate (a string cut
            # mid-emoji), which has no UTF-8 encoding.
            json.dumps(e, separators=(",", ":")).encode() + b"\n"
            for e in events
        )
        with self._lock:
            segments = self._segments()
            n = max(segments[-1] if segments else 1, self.cursor.segment)
            path = self._segment_path(n)
            if path.exists() and path.stat().st_size >= self.segment_bytes:
                n += 1
                path = self._segment_path(n)
            # Unbuffered: a buffered file that failed would write its leftover
            # bytes again when closed.
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                start = os.fstat(fd).st_size
                try:
                    left = memoryview(payload)
                    while left:
                        left = left[os.write(fd, left) :]
                    os.fsync(fd)
                except OSError as e:
                    # Out of room part-way (a full disk): take the partial batch
                    # back, or the next append would continue its torn last line
                    # and both events would be unreadable. The caller (the hook)
                    # is told and sends the whole batch again later.
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start)
                    self.append_error = e.strerror or type(e).__name__
                    raise
            finally:
                os.close(fd)
            self.append_error = None

    # ---- reading ----------------------------------------------------------------

    def read_batch(
        self, max_events: int = BATCH_EVENTS, max_bytes: int = BATCH_BYTES
    ) -> tuple[list[dict[str, Any]], Position]:
        """Events after the cursor (at most one segment's worth) and where they end."""
        with self._lock:
            pos = self.cursor
            for n in self._segments():
                if n < pos.segment:
                    continue
                offset = pos.offset if n == pos.segment else 0
                path = self._segment_path(n)
                with open(path, "rb") as f:
                    f.seek(offset)
                    events: list[dict[str, Any]] = []
                    size = 0
                    for line in f:
                        if not line.endswith(b"\n"):
                            break
                        if events and (len(events) >= max_events or size + len(line) > max_bytes):
                            break
                        size += len(line)
                        offset += len(line)
                        with contextlib.suppress(ValueError):
                            events.append(json.loads(line))
                if events:
                    return events, Position(n, offset)
                pos = Position(n, offset)
            return [], pos

    def commit(self, position: Position) -> None:
        """Record that everything before ``position`` is stored at the service."""
        with self._lock:
            tmp = self.dir / "cursor.json.tmp"
            with open(tmp, "w") as f:
                json.dump({"segment": position.segment, "offset": position.offset}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.dir / "cursor.json")
            self.cursor = position
            segments = self._segments()
            for n in segments:
                # Fully consumed segments go, except the newest (appends continue there).
                if n < position.segment and n != segments[-1]:
                    self._segment_path(n).unlink(missing_ok=True)

    def set_aside(self, events: list[dict[str, Any]]) -> None:
        with open(self.dir / "rejected.jsonl", "a", encoding="utf-8") as f:
            for event in events:
                f.write(json.dumps(event) + "\n")

    def backlog(self) -> int:
        """Events not yet acknowledged by the service (blocking: counts lines)."""
        with self._lock:
            count = 0
            for n in self._segments():
                if n < self.cursor.segment:
                    continue
                with open(self._segment_path(n), "rb") as f:
                    if n == self.cursor.segment:
                        f.seek(self.cursor.offset)
                    count += sum(1 for line in f if line.endswith(b"\n"))
            return count


class HistoryUploader:
    """Drains the spool to ``POST api/history/ingest`` with retries and backoff."""

    def __init__(self, spool: HistorySpool, service: ServiceClient):
        self.spool = spool
        self.service = service
        self.url = service.base + "history/ingest"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.uploaded = 0
        self.last_error: str | None = None
        self.last_upload: float | None = None
        self.next_attempt: float | None = None  # after a failure: when it retries

    def start(self) -> None:
        if self._task is None and self.service.configured:
            self._task = asyncio.create_task(self._run())

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, flush_timeout: float = 0) -> None:
        """Stop uploading, after sending what is spooled (within ``flush_timeout``
        seconds: a stopping server has about 10 s before JupyterHub escalates, and
        must not hang on a service that does not answer). What is left stays in
        the spool for the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            if flush_timeout > 0:
                # A batch cut off above is sent again here: the service stores
                # each event once.
                try:
                    await asyncio.wait_for(self.drain_once(), flush_timeout)
                except Exception as e:  # a stop goes on whatever the flush met
                    log.warning("history flush at stop failed: %s", type(e).__name__)

    async def drain_once(self) -> bool:
        """Upload everything spooled now; False if the service refused or was away."""
        while True:
            events, end = await asyncio.to_thread(self.spool.read_batch)
            if not events:
                if end != self.spool.cursor:
                    await asyncio.to_thread(self.spool.commit, end)
                return True
            try:
                resp = await self.service.client.post(self.url, json={"events": events})
            except httpx.HTTPError as e:
                self.last_error = f"{type(e).__name__}: {e}"
                return False
            if resp.status_code == 400:
                # A batch the service will never accept (a malformed entry): keep it
                # beside the spool for an operator instead of retrying forever.
                self.last_error = f"rejected batch: {resp.text[:500]}"
                log.error("history upload rejected, set aside: %s", resp.text[:500])
                await asyncio.to_thread(self.spool.set_aside, events)
            elif resp.status_code >= 300:
                self.last_error = f"HTTP {resp.status_code}: {resp.text[:200]}"
                return False
            await asyncio.to_thread(self.spool.commit, end)
            self.uploaded += len(events)
            self.last_upload = time.time()
            self.last_error = None

    async def _run(self) -> None:
        backoff = 1.0
        while True:
            try:
                ok = await self.drain_once()
            except Exception as e:  # keep the uploader alive whatever happens
                log.exception("history upload failed")
                self.last_error = f"{type(e).__name__}: {e}"
                ok = False
            if ok:
                backoff = 1.0
                timeout: float | None = None
                self.next_attempt = None
            else:
                timeout, backoff = backoff, min(backoff * 2, MAX_BACKOFF)
                self.next_attempt = time.time() + timeout
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def status(self) -> dict[str, Any]:
        return {
            "backlog": await asyncio.to_thread(self.spool.backlog),
            "uploaded": self.uploaded,
            "last_error": self.last_error,
            "last_upload": self.last_upload,
            "next_attempt": self.next_attempt,
            "capture_paused": self.spool.append_error,
        }
