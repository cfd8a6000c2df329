"""Chat mode: headless claude turns, one Claude Code conversation per chat session.

A turn runs ``claude -p --output-format stream-json --verbose`` with the message
on stdin: ``--session-id`` the first time, ``--resume`` after that, so one chat
session is one conversation that survives turns and server restarts. Its output
becomes structured events (``runtimes.claude_stream``), numbered per session,
appended to the session's event log on disk (a reload or a restart replays
them) and fanned out to websocket subscribers.

Tools run in ``bypassPermissions`` mode: the PreToolUse hook (human-in-the-loop
policy, ``SAC_CLAUDE_MODE=chat``) decides every call, and a headless turn could
not show Claude Code's own prompts anyway.

State on disk (``state_dir``, the agent's ``~/.local/share/jupyter-sac/chat``):
``sessions.json`` (the session index, replaced atomically) and one
``<session_id>.jsonl`` event log per session. All disk access goes through one
worker thread, in submission order, so the loop never blocks on the disk and a
log read always sees every event emitted before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ApiError
from ..runtimes.claude_stream import ClaudeStream

log = logging.getLogger("jupyter_sac.chat")

T = TypeVar("T")

MAX_MESSAGE_CHARS = 100_000
TITLE_CHARS = 80
# One stream-json line can hold a whole file (a Write's input, an Edit's original).
STDOUT_LIMIT = 64 * 1024 * 1024
STDERR_TAIL_BYTES = 8 * 1024
# After claude exits, what is still in its pipes is read for this long; longer means
# something it started still holds them open.
DRAIN_SECONDS = 5.0
# A websocket this many events behind is closed; the client reconnects with ``since``.
SUBSCRIBER_MAX_BEHIND = 10_000
SESSION_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# Chat turns keep Claude Code's todo list in TodoWrite (one call = the whole list),
# which becomes the chat's ``todos`` events; the newer task tools (TaskCreate,
# TaskUpdate: one task per call) would leave the chat without a list to show.
DEFAULT_ENV = {"CLAUDE_CODE_ENABLE_TASKS": "0"}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def validate_message(message: Any) -> str:
    if message is None:
        raise ApiError(400, "missing_field", "message: required", field="message")
    if not isinstance(message, str):
        raise ApiError(400, "invalid_field", "message: expected text", field="message")
    if not message.strip():
        raise ApiError(400, "invalid_field", "message: must not be empty", field="message")
    if len(message) > MAX_MESSAGE_CHARS:
        raise ApiError(
            400,
            "invalid_field",
            f"message: at most {MAX_MESSAGE_CHARS} characters ({len(message)} given)",
            field="message",
        )
    if "\x00" in message:
        raise ApiError(400, "invalid_field", "message: NUL characters", field="message")
    try:
        message.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            400, "invalid_field", "message: not valid Unicode (lone surrogate)", field="message"
        ) from None
    return message


def validate_session_id(value: Any) -> str:
    if not isinstance(value, str) or not SESSION_ID.match(value):
        raise ApiError(
            400, "invalid_field", "session_id: expected a session id (a UUID)", field="session_id"
        )
    return value


def make_title(message: str) -> str:
    text = " ".join(message.split())
    return text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1] + "…"


# ---- processes ----------------------------------------------------------------------


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    pgid: int
    start: int  # clock ticks after boot: tells a pid apart from a later reuse


def _proc_stat(pid: int) -> tuple[int, ProcInfo] | None:
    """(parent pid, info) of a live process, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may itself hold spaces and parentheses.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return int(fields[1]), ProcInfo(pid, int(fields[2]), int(fields[19]))
    except (IndexError, ValueError):
        return None


def descendants(root: int) -> list[ProcInfo]:
    """Every live process below ``root`` (blocking: reads /proc)."""
    children: dict[int, list[ProcInfo]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append(stat[1])
    found: list[ProcInfo] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


def kill_leftovers(procs: list[ProcInfo]) -> int:
    """SIGKILL what is still alive of ``procs`` and the process groups they lead.

    Claude Code starts each Bash tool call in a session of its own, out of reach
    of a signal to claude's process group; those are found here.
    """
    killed = 0
    for info in procs:
        stat = _proc_stat(info.pid)
        if stat is None or stat[1].start != info.start:
            continue  # gone, or the pid now belongs to another process
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if info.pgid == info.pid:
                os.killpg(info.pid, signal.SIGKILL)
            os.kill(info.pid, signal.SIGKILL)
            killed += 1
    return killed


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _exited(proc: asyncio.subprocess.Process, timeout: float | None = None) -> bool:
    """Whether claude has exited (within ``timeout``).

    Polls ``returncode``: ``Process.wait()`` also waits for the pipes to close,
    which a tool process that inherited them can delay indefinitely.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while proc.returncode is None:
        if deadline is not None and time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _lines(stream: asyncio.StreamReader) -> AsyncIterator[bytes | None]:
    """The stream's lines; None for a line over the reader's limit (skipped)."""
    while True:
        try:
            line = await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as e:
            if e.partial:
                yield e.partial
            return
        except asyncio.LimitOverrunError as e:
            # Skip the rest of that line, chunk by chunk.
            await stream.readexactly(e.consumed)
            while True:
                try:
                    await stream.readuntil(b"\n")
                    break
                except asyncio.LimitOverrunError as more:
                    await stream.readexactly(more.consumed)
                except asyncio.IncompleteReadError:
                    return
            yield None
            continue
        yield line


async def _tail(stream: asyncio.StreamReader, limit: int) -> bytes:
    tail = b""
    while chunk := await stream.read(65536):
        tail = (tail + chunk)[-limit:]
    return tail


# ---- sessions -----------------------------------------------------------------------


@dataclass
class Turn:
    turn_id: str
    process: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    killer: asyncio.Task[None] | None = None
    cancel_requested: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Session:
    session_id: str
    title: str
    created_at: str
    updated_at: str
    turns: int = 0
    last_result: dict[str, Any] | None = None
    seq: int = 0
    running: Turn | None = None
    # The event log, read from disk on first use (None until then).
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

    def index_entry(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "turns": self.turns,
            "last_result": self.last_result,
            "seq": self.seq,
            # Set while a turn runs: after a crash, the next start closes that turn.
            "running_turn": self.running.turn_id if self.running else None,
        }


class Subscription:
    """One websocket's view: a queue of events, closed if it falls too far behind."""

    def __init__(self, session_id: str | None, on_overflow: Callable[[], None]):
        self.session_id = session_id
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.on_overflow = on_overflow


class ChatManager:
    """Chat sessions of this sandbox: their turns, event logs and subscribers."""

    def __init__(
        self,
        state_dir: Path,
        argv: list[str],
        cwd: str,
        claude_config_dir: Path,
        env: dict[str, str] | None = None,
        interrupt_grace: float = 3.0,
        terminate_grace: float = 2.0,
        on_activity: Callable[[], None] | None = None,
    ):
        self.dir = state_dir
        self.argv = argv
        self.cwd = cwd
        self.claude_config_dir = claude_config_dir
        self.env = env or {}
        self.interrupt_grace = interrupt_grace
        self.terminate_grace = terminate_grace
        self.on_activity = on_activity
        self.sessions: dict[str, Session] = {}
        self.subscriptions: set[Subscription] = set()
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sac-chat-io")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._load()

    # ---- disk (startup is synchronous; later, everything runs on the io thread) ------

    def _index_path(self) -> Path:
        return self.dir / "sessions.json"

    def _log_path(self, session_id: str) -> Path:
        return self.dir / f"{session_id}.jsonl"

    def _read_log(self, session_id: str) -> list[dict[str, Any]]:
        events = []
        try:
            with open(self._log_path(session_id), encoding="utf-8") as f:
                for line in f:
                    with contextlib.suppress(ValueError):
                        event = json.loads(line)
                        if isinstance(event, dict) and isinstance(event.get("seq"), int):
                            events.append(event)
        except OSError:
            pass
        return events

    def _append_lines(self, session_id: str, lines: list[str]) -> None:
        with open(self._log_path(session_id), "a", encoding="utf-8") as f:
            f.write("".join(lines))

    def _write_index(self, data: dict[str, Any]) -> None:
        tmp = self._index_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self._index_path())

    def _load(self) -> None:
        try:
            data = json.loads(self._index_path().read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        for sid, meta in data.items() if isinstance(data, dict) else ():
            if not SESSION_ID.match(sid) or not isinstance(meta, dict):
                continue
            try:
                session = Session(
                    session_id=sid,
                    title=str(meta["title"]),
                    created_at=str(meta["created_at"]),
                    updated_at=str(meta["updated_at"]),
                    turns=int(meta.get("turns") or 0),
                    last_result=meta.get("last_result"),
                    seq=int(meta.get("seq") or 0),
                )
            except (KeyError, TypeError, ValueError):
                continue
            self.sessions[sid] = session
            interrupted = meta.get("running_turn")
            if interrupted:
                # The server stopped while this turn ran: close it in the log.
                session.events = self._read_log(sid)
                session.seq = max([session.seq, *(e["seq"] for e in session.events)])
                lines = [
                    self._record(session, interrupted, event)
                    for event in (
                        {"type": "error", "message": "the server stopped while this turn ran"},
                        {"type": "turn_end", "exit_code": None},
                    )
                ]
                self._append_lines(sid, lines)
        self._write_index(self._index_data())

    def _index_data(self) -> dict[str, Any]:
        return {sid: s.index_entry() for sid, s in self.sessions.items()}

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        try:
            future = self._io.submit(fn, *args)
        except RuntimeError:  # shut down: a turn outlived the server's stop
            future = Future()
            future.set_exception(RuntimeError("the chat state writer has stopped"))
        future.add_done_callback(_log_failure)
        return future

    async def _on_io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._submit(fn, *args))

    def _save_index(self) -> None:
        self._submit(self._write_index, self._index_data())

    async def _ensure_events(self, session: Session) -> list[dict[str, Any]]:
        if session.events is None:
            events = await self._on_io(self._read_log, session.session_id)
            if session.events is None:  # a concurrent reader may have been first
                session.events = events
                session.seq = max([session.seq, *(e["seq"] for e in events)])
        return session.events

    # ---- sessions and events ------------------------------------------------------

    def get(self, session_id: str) -> Session:
        session = self.sessions.get(validate_session_id(session_id))
        if session is None:
            raise ApiError(404, "not_found", f"no chat session {session_id}")
        return session

    def list(self) -> list[dict[str, Any]]:
        ordered = sorted(self.sessions.values(), key=lambda s: s.updated_at, reverse=True)
        return [s.model() for s in ordered]

    async def session_with_events(self, session_id: str) -> dict[str, Any]:
        session = self.get(session_id)
        events = await self._ensure_events(session)
        return {**session.model(), "events": list(events)}

    def _record(self, session: Session, turn_id: str | None, event: dict[str, Any]) -> str:
        """Number ``event`` in ``session``, keep it, and return its log line."""
        session.seq += 1
        full = {
            "seq": session.seq,
            "session_id": session.session_id,
            "turn_id": turn_id,
            "time": now_iso(),
            **event,
        }
        if session.events is not None:
            session.events.append(full)
        for sub in list(self.subscriptions):
            if sub.session_id is None or sub.session_id == session.session_id:
                if sub.queue.qsize() >= SUBSCRIBER_MAX_BEHIND:
                    self.subscriptions.discard(sub)
                    sub.on_overflow()
                else:
                    sub.queue.put_nowait(full)
        return json.dumps(full, ensure_ascii=False) + "\n"

    def emit(self, session: Session, turn_id: str | None, event: dict[str, Any]) -> None:
        line = self._record(session, turn_id, event)
        self._submit(self._append_lines, session.session_id, [line])
        if self.on_activity is not None:
            self.on_activity()

    def emit_error(self, session: Session, turn_id: str | None, message: str) -> None:
        self.emit(session, turn_id, {"type": "error", "message": message})

    def subscribe(
        self, session_id: str | None, since: int, on_overflow: Callable[[], None]
    ) -> tuple[list[dict[str, Any]], Subscription]:
        """Logged events after ``since`` (of one session) and a subscription to the rest.

        Synchronous, so nothing is missed or sent twice; a session's log must have
        been read first (``session_with_events``).
        """
        backlog: list[dict[str, Any]] = []
        if session_id is not None:
            events = self.get(session_id).events or []
            backlog = [e for e in events if e["seq"] > since]
        sub = Subscription(session_id, on_overflow)
        self.subscriptions.add(sub)
        return backlog, sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscriptions.discard(sub)

    # ---- turns --------------------------------------------------------------------

    def _conversation_exists(self, session_id: str) -> bool:
        """Whether Claude Code has a transcript of the session (so it can resume it).

        A first turn cancelled at once leaves none: the next turn starts it anew.
        """
        return any(self.claude_config_dir.glob(f"projects/*/{session_id}.jsonl"))

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        for key, value in DEFAULT_ENV.items():
            env.setdefault(key, value)
        env.update(self.env)
        env["SAC_CLAUDE_MODE"] = "chat"
        return env

    async def send(self, message: Any, session_id: str | None) -> dict[str, str]:
        """Start a turn; its events follow on the subscriptions."""
        message = validate_message(message)
        now = now_iso()
        if session_id is None:
            session = Session(str(uuid.uuid4()), make_title(message), now, now, events=[])
            self.sessions[session.session_id] = session
        else:
            session = self.get(session_id)
            if session.running is not None:
                raise ApiError(
                    409, "turn_running", "a turn is already running in this session; cancel it"
                )
        turn = Turn(uuid.uuid4().hex)
        # Claimed before the first await: a second message now gets the 409.
        session.running = turn
        try:
            await self._start(session, turn, message, new=session_id is None)
        finally:
            if turn.task is None:  # it never ran
                session.running = None
                turn.done.set()
                self._save_index()
        return {"session_id": session.session_id, "turn_id": turn.turn_id}

    async def _start(self, session: Session, turn: Turn, message: str, new: bool) -> None:
        sid = session.session_id
        await self._ensure_events(session)
        resume = not new and await self._on_io(self._conversation_exists, sid)
        session.turns += 1
        session.updated_at = now_iso()
        self.emit(session, turn.turn_id, {"type": "turn_start", "message": message})
        self._save_index()
        if turn.cancel_requested:
            self.emit(session, turn.turn_id, {"type": "cancelled"})
            self.emit(session, turn.turn_id, {"type": "turn_end", "exit_code": None})
            return
        try:
            process = await asyncio.create_subprocess_exec(
                *self.argv,
                "-p",
                "--output-format",
                "stream-json",
                "--verbose",
                "--permission-mode",
                "bypassPermissions",
                *(["--resume", sid] if resume else ["--session-id", sid]),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self.cwd,
                env=self._environment(),
                start_new_session=True,  # its own process group: cancel reaches its children
                limit=STDOUT_LIMIT,
            )
        except Exception as e:  # no binary, bad cwd, out of processes: the turn says so
            log.error("chat: could not start claude: %s", e)
            self.emit_error(session, turn.turn_id, f"could not start the agent: {e}")
            self.emit(session, turn.turn_id, {"type": "turn_end", "exit_code": None})
            return
        turn.process = process
        turn.task = asyncio.create_task(self._run(session, turn, message))
        if turn.cancel_requested:
            turn.killer = asyncio.create_task(self._terminate(turn))

    async def _run(self, session: Session, turn: Turn, message: str) -> None:
        proc = turn.process
        assert proc is not None and proc.stdin and proc.stdout and proc.stderr
        tid = turn.turn_id
        code: int | None = None
        got_result = False
        stream = ClaudeStream()

        async def read() -> None:
            nonlocal got_result
            assert proc.stdout
            async for line in _lines(proc.stdout):
                if line is None:
                    limit = STDOUT_LIMIT // 2**20
                    self.emit_error(session, tid, f"an output line over {limit} MiB was skipped")
                    continue
                try:
                    data = json.loads(line)
                except ValueError:
                    continue  # not stream-json (a stray print): nothing to show
                for event in stream.feed(data):
                    if event["type"] == "result":
                        got_result = True
                        session.last_result = {k: v for k, v in event.items() if k != "type"}
                    self.emit(session, tid, event)

        reader = asyncio.create_task(read())
        stderr = asyncio.create_task(_tail(proc.stderr, STDERR_TAIL_BYTES))
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(message.encode("utf-8"))
                await proc.stdin.drain()
                proc.stdin.close()
            # claude's stdout closes when it exits; the 1 s ticks catch an exit that
            # something still holding that pipe would hide.
            while not reader.done() and proc.returncode is None:
                await asyncio.wait({reader}, timeout=1.0)
            await _exited(proc)
            code = proc.returncode
            for task in (reader, stderr):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(task), DRAIN_SECONDS)
            if turn.killer is not None:
                await turn.killer
            err = stderr.result().decode("utf-8", "replace").strip() if stderr.done() else ""
            if turn.cancel_requested:
                self.emit(session, tid, {"type": "cancelled"})
            elif code != 0 and not got_result:
                self.emit_error(session, tid, err or f"the agent exited with status {code}")
        except Exception as e:
            log.exception("chat: turn %s of %s failed", tid, session.session_id)
            self.emit_error(session, tid, f"internal error: {e}")
            if proc.returncode is None:
                await self._terminate(turn)
        finally:
            for task in (reader, stderr):
                task.cancel()
            self.emit(session, tid, {"type": "turn_end", "exit_code": code})
            session.running = None
            session.updated_at = now_iso()
            self._save_index()
            turn.done.set()

    async def _terminate(self, turn: Turn) -> None:
        """Interrupt claude like Ctrl-C, then firmer; then whatever it left running."""
        proc = turn.process
        assert proc is not None
        tree = await asyncio.to_thread(descendants, proc.pid)
        steps = (
            (signal.SIGINT, self.interrupt_grace),
            (signal.SIGTERM, self.terminate_grace),
            (signal.SIGKILL, 5.0),
        )
        for sig, wait in steps:
            if proc.returncode is not None:
                break
            if sig != signal.SIGINT:
                # Claude did not stop on its own: its children are ours to stop.
                tree += await asyncio.to_thread(descendants, proc.pid)
            _signal_group(proc.pid, sig)
            if await _exited(proc, wait):
                break
        killed = await asyncio.to_thread(kill_leftovers, tree)
        if killed:
            log.info("chat: killed %d process(es) left behind by a cancelled turn", killed)

    async def cancel(self, session_id: str) -> bool:
        """Stop the session's running turn; True if there was one to stop."""
        session = self.get(session_id)
        turn = session.running
        if turn is None or (turn.process is not None and turn.process.returncode is not None):
            return False  # nothing running, or it is finishing on its own
        turn.cancel_requested = True
        if turn.process is not None and turn.killer is None:
            turn.killer = asyncio.create_task(self._terminate(turn))
        # Answer once the turn is over (it says so with `cancelled` and `turn_end`).
        limit = self.interrupt_grace + self.terminate_grace + 5.0 + DRAIN_SECONDS * 2 + 5.0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(turn.done.wait(), limit)
        return True

    async def stop(self) -> None:
        """Cancel every running turn and flush the disk queue (server shutdown)."""
        running = [s.session_id for s in self.sessions.values() if s.running is not None]
        await asyncio.gather(*(self.cancel(sid) for sid in running), return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._on_io(lambda: None)
        self._io.shutdown(wait=False)


def _log_failure(future: Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("chat: could not write state: %s", future.exception())
