"""Chat mode: headless claude turns, one conversation per chat session.

A turn runs ``claude -p --output-format stream-json`` with the message on stdin,
``--session-id`` for a new session and ``--resume`` for the next turns, so one
chat session is one Claude Code conversation. Its output becomes structured
events (``runtimes.claude_stream``), numbered per session, appended to the
session's event log on disk (so a reload or a server restart replays them) and
fanned out to websocket subscribers.

Tools run in ``bypassPermissions`` mode: the PreToolUse hook (human-in-the-loop
policy, ``SAC_CLAUDE_MODE=chat``) decides every call, and a headless turn could
not show Claude Code's own prompts anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tornado import web

from ..runtimes.claude_stream import events_from_message

log = logging.getLogger("jupyter_sac.chat")

MAX_MESSAGE_CHARS = 100_000
TITLE_CHARS = 120
STDOUT_LIMIT = 64 * 1024 * 1024  # one stream-json line can hold a large tool result
STDERR_TAIL = 4000


class ChatError(web.HTTPError):
    """A 4xx the chat API answers as ``{"error": status, "message": text}``."""

    def __init__(self, status: int, message: str):
        super().__init__(status, log_message=message)
        self.status = status
        self.message = message


@dataclass
class Turn:
    turn_id: str
    process: asyncio.subprocess.Process
    task: asyncio.Task[None] | None = None
    cancelled: bool = False


@dataclass
class Session:
    session_id: str
    title: str
    created_at: float
    updated_at: float
    turns: int = 0
    last_result: dict[str, Any] | None = None
    seq: int = 0
    running: Turn | None = None
    events: list[dict[str, Any]] | None = field(default=None, repr=False)

    def model(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "title": self.title,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "turns": self.turns,
            "running": self.running is not None,
            "last_result": self.last_result,
        }


class ChatManager:
    def __init__(
        self,
        state_dir: Path,
        argv: Callable[[], list[str]],
        cwd: str,
        env: dict[str, str] | None = None,
        grace_seconds: float = 3.0,
    ):
        self.dir = state_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.argv = argv
        self.cwd = cwd
        self.env = env or {}
        self.grace = grace_seconds
        self.sessions: dict[str, Session] = {}
        self.subscribers: set[tuple[str | None, asyncio.Queue[dict[str, Any]]]] = set()
        self._load()

    # ---- persistence --------------------------------------------------------------

    def _index_path(self) -> Path:
        return self.dir / "sessions.json"

    def _log_path(self, session_id: str) -> Path:
        return self.dir / f"{session_id}.jsonl"

    def _load(self) -> None:
        try:
            data = json.loads(self._index_path().read_text())
        except (OSError, ValueError):
            data = {}
        for sid, meta in data.items() if isinstance(data, dict) else ():
            with contextlib.suppress(TypeError, KeyError):
                self.sessions[sid] = Session(
                    session_id=sid,
                    title=meta["title"],
                    created_at=meta["created_at"],
                    updated_at=meta["updated_at"],
                    turns=meta.get("turns", 0),
                    last_result=meta.get("last_result"),
                    seq=meta.get("seq", 0),
                )

    def _save(self) -> None:
        data = {
            sid: {
                "title": s.title,
                "created_at": s.created_at,
                "updated_at": s.updated_at,
                "turns": s.turns,
                "last_result": s.last_result,
                "seq": s.seq,
            }
            for sid, s in self.sessions.items()
        }
        tmp = self._index_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self._index_path())

    def events(self, session_id: str) -> list[dict[str, Any]]:
        session = self.get(session_id)
        if session.events is None:
            loaded = []
            with contextlib.suppress(OSError), open(self._log_path(session_id)) as f:
                for line in f:
                    with contextlib.suppress(ValueError):
                        loaded.append(json.loads(line))
            session.events = loaded
        return session.events

    # ---- sessions -----------------------------------------------------------------

    def get(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise ChatError(404, f"no chat session {session_id!r}")
        return session

    def list(self) -> list[dict[str, Any]]:
        ordered = sorted(self.sessions.values(), key=lambda s: s.updated_at, reverse=True)
        return [s.model() for s in ordered]

    def emit(self, session: Session, turn_id: str | None, event: dict[str, Any]) -> None:
        session.seq += 1
        event = {"seq": session.seq, "session_id": session.session_id, "turn_id": turn_id,
                 "time": time.time(), **event}  # fmt: skip
        self.events(session.session_id).append(event)
        with open(self._log_path(session.session_id), "a", encoding="utf-8") as f:
            f.write(json.dumps(event, ensure_ascii=False) + "\n")
        for wanted, queue in list(self.subscribers):
            if wanted is None or wanted == session.session_id:
                queue.put_nowait(event)

    def subscribe(
        self, session_id: str | None, since: int
    ) -> tuple[list[dict[str, Any]], asyncio.Queue[dict[str, Any]]]:
        """Logged events after ``since`` (one session) and a queue of what follows."""
        backlog: list[dict[str, Any]] = []
        if session_id is not None:
            backlog = [e for e in self.events(session_id) if e["seq"] > since]
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.subscribers.add((session_id, queue))
        return backlog, queue

    def unsubscribe(self, session_id: str | None, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self.subscribers.discard((session_id, queue))

    # ---- turns --------------------------------------------------------------------

    async def send(self, message: str, session_id: str | None) -> dict[str, str]:
        if not isinstance(message, str) or not message.strip():
            raise ChatError(400, "message: required, non-empty text")
        if len(message) > MAX_MESSAGE_CHARS:
            raise ChatError(400, f"message: at most {MAX_MESSAGE_CHARS} characters")
        now = time.time()
        if session_id is None:
            session_id = str(uuid.uuid4())
            session = Session(session_id, message.strip()[:TITLE_CHARS], now, now)
            self.sessions[session_id] = session
            session.events = []
            resume = ["--session-id", session_id]
        else:
            session = self.get(session_id)
            if session.running is not None:
                raise ChatError(409, "a turn is already running in this session")
            resume = ["--resume", session_id]
        turn_id = uuid.uuid4().hex[:12]
        process = await asyncio.create_subprocess_exec(
            *self.argv(),
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--permission-mode",
            "bypassPermissions",
            *resume,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.cwd,
            env={**os.environ, **self.env, "SAC_CLAUDE_MODE": "chat"},
            start_new_session=True,  # its own process group: cancel reaches tools too
            limit=STDOUT_LIMIT,
        )
        turn = Turn(turn_id, process)
        session.running = turn
        session.turns += 1
        session.updated_at = now
        self._save()
        self.emit(session, turn_id, {"type": "turn_start", "message": message})
        turn.task = asyncio.create_task(self._run(session, turn, message))
        return {"session_id": session_id, "turn_id": turn_id}

    async def _run(self, session: Session, turn: Turn, message: str) -> None:
        proc = turn.process
        assert proc.stdin and proc.stdout and proc.stderr
        stderr_task = asyncio.create_task(proc.stderr.read())
        try:
            proc.stdin.write(message.encode())
            await proc.stdin.drain()
            proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass
        got_result = False
        try:
            while line := await proc.stdout.readline():
                try:
                    data = json.loads(line)
                except ValueError:
                    continue
                for event in events_from_message(data):
                    if event["type"] == "result":
                        got_result = True
                        session.last_result = {k: v for k, v in event.items() if k != "type"}
                    self.emit(session, turn.turn_id, event)
        except (ValueError, asyncio.LimitOverrunError) as e:
            self.emit(session, turn.turn_id, {"type": "error", "message": f"bad output: {e}"})
        code = await proc.wait()
        stderr = (await stderr_task).decode(errors="replace")[-STDERR_TAIL:]
        if turn.cancelled:
            self.emit(session, turn.turn_id, {"type": "cancelled"})
        elif code != 0 and not got_result:
            self.emit(
                session,
                turn.turn_id,
                {"type": "error", "message": stderr.strip() or f"claude exited with {code}"},
            )
        self.emit(session, turn.turn_id, {"type": "turn_end", "exit_code": code})
        session.running = None
        session.updated_at = time.time()
        self._save()

    async def cancel(self, session_id: str) -> bool:
        session = self.get(session_id)
        turn = session.running
        if turn is None:
            return False
        turn.cancelled = True
        # Like Ctrl-C, then firmer: the whole process group (claude and its tools).
        steps = ((signal.SIGINT, self.grace), (signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0))
        for sig, wait in steps:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(turn.process.pid, sig)
            try:
                await asyncio.wait_for(asyncio.shield(turn.process.wait()), wait)
                break
            except TimeoutError:
                continue
        if turn.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(turn.task), 10)
        return True

    async def stop(self) -> None:
        for session in list(self.sessions.values()):
            if session.running is not None:
                await self.cancel(session.session_id)
