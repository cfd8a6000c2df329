"""Chat mode: one Claude Code conversation per chat session, one live CLI per open session.

A session's first turn starts the pinned claude CLI under the SDK's control
protocol (``runtimes.claude_session``) with ``--session-id``; the process stays
up and each later turn is one more user message to it, so a turn in an open
session does not pay for a CLI start. A session idle for ``idle_release``
seconds has its process released (stdin closed: the CLI saves and exits); the
next turn starts it again with ``--resume``: the same session id, the same
transcript file, the whole conversation. A process that died between turns is
found at the next turn and resumed the same way; one that dies during a turn
ends that turn with an ``error``.

Each turn's stream-json output becomes structured events
(``runtimes.claude_stream``), numbered per session, appended to the session's
event log on disk (a reload or a restart replays them) and fanned out to
websocket subscribers.

Tools run in ``bypassPermissions`` mode and every call is decided by the
human-in-the-loop policy in this process (a PreToolUse callback): allow, deny,
or file a request and wait for a person. Any error on that path denies the
tool. History is captured here too (``capture.TranscriptCapture``): the
session's transcript after every turn and when its process is released.

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
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ApiError
from ..runtimes.claude_session import ClaudeProcess, HookCallback
from ..runtimes.claude_stream import ClaudeStream
from .capture import TranscriptCapture

log = logging.getLogger("jupyter_sac.chat")

T = TypeVar("T")

MAX_MESSAGE_CHARS = 100_000
TITLE_CHARS = 80
# A released process gets this long to save and exit after its stdin closes (a
# stopping server has about 10 s in all before JupyterHub escalates).
RELEASE_SECONDS = 5.0
# A cancelled turn's events are written this long after its process was stopped.
SETTLE_SECONDS = 10.0
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
    """(parent pid, info) of a live process, from /proc/<pid>/stat (None once it
    has exited, also while it waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may itself hold spaces and parentheses.
    fields = raw[raw.rfind(b")") + 2 :].split()
    if not fields or fields[0] in (b"Z", b"X"):
        return None
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


def alive(info: ProcInfo) -> bool:
    """Whether the process ``info`` describes still runs (not a later reuse of its pid)."""
    stat = _proc_stat(info.pid)
    return stat is not None and stat[1].start == info.start


async def _gone(info: ProcInfo, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(info):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _decision(decision: str, reason: str) -> dict[str, Any]:
    """A PreToolUse hook's answer, as Claude Code reads it."""
    return {
        "hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": decision,
            "permissionDecisionReason": reason,
        }
    }


# ---- sessions -----------------------------------------------------------------------


@dataclass
class Turn:
    turn_id: str
    task: asyncio.Task[None] | None = None
    killer: asyncio.Task[None] | None = None
    cancel_requested: bool = False
    # The result is in: the turn is finishing on its own and cannot be cancelled.
    finishing: bool = False
    # HITL decisions in flight: a cancel withdraws them (their requests too).
    decisions: set[asyncio.Future[Any]] = field(default_factory=set)
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
    # The live CLI of this conversation and its process (None: released).
    agent: ClaudeProcess | None = field(default=None, repr=False)
    agent_proc: ProcInfo | None = field(default=None, repr=False)
    release_timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    releasing: asyncio.Task[None] | None = field(default=None, repr=False)
    # Subagents' transcripts (their SubagentStop named them), captured with the session's.
    transcripts: set[str] = field(default_factory=set, repr=False)

    def model(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "title": self.title,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "turns": self.turns,
            "running": self.running is not None,
            "last_result": self.last_result,
            "process": self.agent.model() if self.agent is not None else None,
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
        decide_tool: Callable[[dict[str, Any], str], Awaitable[dict[str, Any]]] | None = None,
        capture: TranscriptCapture | None = None,
        idle_release: float = 300.0,
        max_idle_processes: int = 2,
        max_processes: int = 4,
        pre_tool_timeout: float = 7 * 86400 + 120,
        on_turn_end: Callable[[dict[str, Any]], Awaitable[Any]] | None = None,
    ):
        self.dir = state_dir
        # argv[0] is the CLI, the rest are extra arguments of every session.
        self.argv = argv
        # The HITL decision of one tool call (HitlBridge.decide_tool); without
        # one, every tool call is denied.
        self.decide_tool = decide_tool
        self.capture = capture
        # Told of each turn that ended with a result (the service's event stream);
        # in the background: a slow or absent service never holds a turn up.
        self.on_turn_end = on_turn_end
        self._reports: set[asyncio.Task[Any]] = set()
        # Seconds an open session's process stays up after its last turn.
        self.idle_release = idle_release
        self.max_idle_processes = max_idle_processes
        # Live CLIs at most (running, idle or saving): each holds ~200 MiB, and a
        # burst of new sessions (a script, a fuzzer) once started sixty at once
        # until the sandbox's memory limit killed this server.
        self.max_processes = max(1, max_processes)
        # Notified when a process is gone or a turn ends: a turn waiting for room.
        self._room = asyncio.Condition()
        self.pre_tool_timeout = pre_tool_timeout
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

    def _transcripts(self, session: Session) -> list[str]:
        """The session's transcript files (blocking: globs the config dir)."""
        sid = session.session_id
        main = [str(p) for p in self.claude_config_dir.glob(f"projects/*/{sid}.jsonl")]
        return main + sorted(session.transcripts)

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
        existing = None if session_id is None else self.get(session_id)
        if existing is not None and existing.running is not None:
            raise ApiError(
                409, "turn_running", "a turn is already running in this session; cancel it"
            )
        if existing is None or existing.agent is None:
            self._check_room(existing)
        if existing is None:
            session = Session(str(uuid.uuid4()), make_title(message), now, now, events=[])
            self.sessions[session.session_id] = session
        else:
            session = existing
        turn = Turn(uuid.uuid4().hex)
        # Claimed before the first await: a second message now gets the 409.
        session.running = turn
        try:
            await self._ensure_events(session)
            session.turns += 1
            session.updated_at = now_iso()
            self.emit(session, turn.turn_id, {"type": "turn_start", "message": message})
            self._save_index()
            turn.task = asyncio.create_task(self._run(session, turn, message, session_id is None))
        finally:
            if turn.task is None:  # it never ran
                session.running = None
                turn.done.set()
                self._save_index()
        return {"session_id": session.session_id, "turn_id": turn.turn_id}

    async def _run(self, session: Session, turn: Turn, message: str, new: bool) -> None:
        tid = turn.turn_id
        code: int | None = None
        try:
            if session.release_timer is not None:
                session.release_timer.cancel()
                session.release_timer = None
            try:
                agent = None if turn.cancel_requested else await self._agent(session, new)
            except Exception as e:  # no binary, bad cwd, out of processes: the turn says so
                log.error("chat: could not start claude: %s", e)
                self.emit_error(session, tid, f"could not start the agent: {e}")
                return
            if agent is None or turn.cancel_requested:
                self.emit(session, tid, {"type": "cancelled"})
                return
            code = await self._converse(session, turn, agent, message)
        except Exception as e:
            log.exception("chat: turn %s of %s failed", tid, session.session_id)
            self.emit_error(session, tid, f"internal error: {e}")
            await self._stop_process(session)
        finally:
            for decision in list(turn.decisions):
                decision.cancel()
            await self._capture(session)
            self.emit(session, tid, {"type": "turn_end", "exit_code": code})
            if code is not None and self.on_turn_end is not None:
                self._report_turn(session, tid)
            session.running = None
            session.updated_at = now_iso()
            self._save_index()
            turn.done.set()
            self._schedule_release(session)
            await self._room_changed()  # its process is idle now: another may take its room

    def _report_turn(self, session: Session, turn_id: str) -> None:
        result = session.last_result or {}
        report = {
            "session_id": session.session_id,
            "turn_id": turn_id,
            "is_error": bool(result.get("is_error")),
            "summary": str(result.get("text") or "")[:1000],
        }
        assert self.on_turn_end is not None
        task = asyncio.ensure_future(self.on_turn_end(report))
        self._reports.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._reports.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("chat: could not report the finished turn: %s", t.exception())

        task.add_done_callback(done)

    async def _converse(
        self, session: Session, turn: Turn, agent: ClaudeProcess, message: str
    ) -> int | None:
        """One turn in the live process: its events; 0 (1 for an error result) once
        the result is in, None if the process stopped first."""
        tid = turn.turn_id
        stream = ClaudeStream()
        code: int | None = None
        failure: Exception | None = None
        try:
            async for data in agent.turn(message):
                for event in stream.feed(data):
                    if event["type"] == "result":
                        # Past this point a cancel has nothing left to stop.
                        turn.finishing = not turn.cancel_requested
                        code = 1 if event.get("is_error") else 0
                        session.last_result = {k: v for k, v in event.items() if k != "type"}
                    self.emit(session, tid, event)
        except Exception as e:  # the process died or was stopped: no more messages
            failure = e
        if turn.cancel_requested:
            if turn.killer is not None:
                with contextlib.suppress(Exception):
                    await turn.killer
            self.emit(session, tid, {"type": "cancelled"})
            await self._stop_process(session)
            return None
        if code is not None:
            return code
        detail = agent.stderr_tail() or (str(failure) if failure else "")
        log.warning("chat: the agent of %s stopped during a turn: %s", tid, detail)
        self.emit_error(
            session, tid, f"the agent stopped during the turn{': ' + detail if detail else ''}"
        )
        # Whatever is left of it is of no use: the next turn starts it again (resumed).
        await self._stop_process(session)
        return None

    async def _agent(self, session: Session, new: bool) -> ClaudeProcess | None:
        """The session's live CLI: the one running, else a new one (resumed when the
        conversation exists) once there is room for it; None if the turn was
        cancelled while it waited."""
        if session.releasing is not None:
            # Its last process is still saving: never two on one transcript.
            await asyncio.shield(session.releasing)
        agent, proc = session.agent, session.agent_proc
        if agent is not None and (proc is None or not alive(proc)):
            log.warning("chat: the agent of session %s had died; resuming", session.session_id)
            await self._stop_process(session)
            agent = None
        if agent is not None:
            return agent
        if not await self._make_room(session):
            return None
        sid = session.session_id
        resume = not new and await self._on_io(self._conversation_exists, sid)
        agent = await ClaudeProcess.start(
            cli=self.argv[0],
            args=self.argv[1:],
            cwd=self.cwd,
            env=self._environment(),
            session_id=sid,
            resume=resume,
            pre_tool_use=self._pre_tool_use(session),
            pre_tool_timeout=self.pre_tool_timeout,
            subagent_stop=self._subagent_stop(session),
        )
        stat = await asyncio.to_thread(_proc_stat, agent.pid)
        session.agent, session.agent_proc = agent, stat[1] if stat else None
        log.info("chat: session %s runs in process %d (resumed: %s)", sid, agent.pid, resume)
        return agent

    # ---- hooks (answered in this process) -----------------------------------------

    def _pre_tool_use(self, session: Session) -> HookCallback:
        async def decide(hook: dict[str, Any], tool_use_id: str | None, context: Any) -> dict:
            """Allow or deny one tool call; anything that goes wrong denies it."""
            turn = session.running
            if turn is None or turn.cancel_requested:
                return _decision("deny", "the turn was cancelled; tool not run")
            if self.decide_tool is None:
                return _decision("deny", "no human-in-the-loop here; tool not run")
            pending = asyncio.ensure_future(self.decide_tool(dict(hook), "chat"))
            turn.decisions.add(pending)
            try:
                answer = await pending
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if pending.cancelled() and not (current and current.cancelling()):
                    # Withdrawn by a cancel of the turn (its request with it).
                    return _decision("deny", "the turn was cancelled; tool not run")
                pending.cancel()
                raise
            except Exception as e:
                log.exception("chat: the HITL decision failed; denying the tool")
                return _decision("deny", f"human-in-the-loop failed ({e}); tool not run")
            finally:
                turn.decisions.discard(pending)
            decision = answer.get("decision") if isinstance(answer, dict) else None
            if decision not in ("allow", "deny"):
                return _decision("deny", f"no decision ({answer!r}); tool not run")
            return _decision(str(decision), str(answer.get("reason") or ""))

        return decide

    def _subagent_stop(self, session: Session) -> HookCallback:
        async def captured(hook: dict[str, Any], tool_use_id: str | None, context: Any) -> dict:
            path = hook.get("agent_transcript_path")
            if isinstance(path, str) and path:
                session.transcripts.add(path)
                await self._capture(session)
            return {}

        return captured

    async def _capture(self, session: Session) -> None:
        """Spool what the session's transcripts gained (never fails a turn: what is
        not captured now is at the next capture, from the same offset)."""
        if self.capture is None:
            return
        try:
            for path in await asyncio.to_thread(self._transcripts, session):
                await self.capture.capture_hook(
                    {"session_id": session.session_id, "transcript_path": path}
                )
        except Exception as e:
            log.warning("chat: history capture of %s deferred: %s", session.session_id, e)

    # ---- processes ------------------------------------------------------------------

    def _holding(self, session: Session | None) -> list[Session]:
        """The sessions other than ``session`` that hold a CLI or are about to (a
        turn running, a process idle or still saving)."""
        return [
            s for s in self.sessions.values()
            if s is not session
            and (s.running is not None or s.agent is not None or s.releasing is not None)
        ]  # fmt: skip

    def _check_room(self, session: Session | None) -> None:
        """Refuse a turn that needs a new CLI while max_processes turns run already
        (idle processes make room: they are released)."""
        running = sum(1 for s in self._holding(session) if s.running is not None)
        if running >= self.max_processes:
            raise ApiError(
                409,
                "chat_busy",
                f"{running} chat turns are running in this agent, the most it runs at "
                "once; wait for one to end or cancel one",
            )

    async def _make_room(self, session: Session) -> bool:
        """Wait until a new CLI for ``session`` keeps within max_processes, releasing
        the least recently used idle ones; False if its turn was cancelled meanwhile."""
        async with self._room:
            while True:
                turn = session.running
                if turn is None or turn.cancel_requested:
                    return False
                holding = self._holding(session)
                if len(holding) < self.max_processes:
                    return True
                excess = len(holding) - self.max_processes + 1
                self._release_oldest_idle(keep=len(self._idle()) - excess)
                await self._room.wait()

    async def _room_changed(self) -> None:
        async with self._room:
            self._room.notify_all()

    def _schedule_release(self, session: Session) -> None:
        if session.agent is None or session.releasing is not None:
            return
        if session.release_timer is not None:
            session.release_timer.cancel()
        loop = asyncio.get_running_loop()
        session.release_timer = loop.call_later(
            max(self.idle_release, 0), self._release_idle, session
        )
        # Idle processes are bounded: many sessions opened one after another (a
        # script, a fuzzer) would otherwise keep a claude each for idle_release.
        self._release_oldest_idle(keep=self.max_idle_processes)

    def _idle(self) -> list[Session]:
        """The sessions whose process waits for a turn, least recently used first."""
        return sorted(
            (s for s in self.sessions.values()
             if s.agent is not None and s.running is None and s.releasing is None),
            key=lambda s: s.updated_at,
        )  # fmt: skip

    def _release_oldest_idle(self, keep: int) -> None:
        """Release idle processes, least recently used first, until ``keep`` are left."""
        idle = self._idle()
        for oldest in idle[: max(0, len(idle) - keep)]:
            if oldest.release_timer is not None:
                oldest.release_timer.cancel()
            self._release_idle(oldest)

    def _release_idle(self, session: Session) -> None:
        session.release_timer = None
        if session.running is None and session.agent is not None and session.releasing is None:
            session.releasing = asyncio.create_task(self._release(session))

    async def _release(self, session: Session) -> None:
        """Let the session's CLI save and exit; its conversation stays resumable."""
        try:
            agent, proc = session.agent, session.agent_proc
            session.agent = session.agent_proc = None
            if agent is None:
                return
            try:
                await asyncio.wait_for(agent.disconnect(), RELEASE_SECONDS)
            except Exception as e:
                log.warning("chat: releasing session %s: %s", session.session_id, e)
            if proc is not None and alive(proc):
                await self._terminate(proc, [])
            log.info("chat: released the idle agent of session %s", session.session_id)
            # What the CLI wrote while exiting (its last bookkeeping lines).
            await self._capture(session)
        finally:
            session.releasing = None
            await self._room_changed()

    async def _interrupt(self, session: Session) -> None:
        """Cancel's stop: interrupt the turn like Ctrl-C (claude stops its tools and
        saves the conversation), then stop the process and what it left running."""
        agent, proc = session.agent, session.agent_proc
        # Taken first: once claude is gone, its tools' processes have another parent.
        tree = await asyncio.to_thread(descendants, proc.pid) if proc is not None else []
        if agent is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(agent.client.interrupt(), self.interrupt_grace)
        await self._stop_process(session, tree)

    async def _stop_process(self, session: Session, tree: list[ProcInfo] | None = None) -> None:
        """Stop the session's CLI now (a cancel, a failure): stdin closed, then
        SIGTERM and SIGKILL; then whatever it left running."""
        agent, proc = session.agent, session.agent_proc
        session.agent = session.agent_proc = None
        tree = list(tree or [])
        if proc is not None:
            tree += await asyncio.to_thread(descendants, proc.pid)
        if agent is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(agent.disconnect(), self.terminate_grace)
        if proc is not None:
            await self._terminate(proc, tree)
        await self._room_changed()

    async def _terminate(self, proc: ProcInfo, tree: list[ProcInfo]) -> None:
        """SIGTERM, then SIGKILL, until claude is gone; then its leftovers."""
        for sig, wait in ((signal.SIGTERM, self.terminate_grace), (signal.SIGKILL, 5.0)):
            if not alive(proc):
                break
            tree += await asyncio.to_thread(descendants, proc.pid)
            # The CLI shares this server's process group: signal it alone.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc.pid, sig)
            if await _gone(proc, wait):
                break
        killed = await asyncio.to_thread(kill_leftovers, tree)
        if killed:
            log.info("chat: killed %d process(es) left behind by a stopped agent", killed)

    async def cancel(self, session_id: str) -> bool:
        """Stop the session's running turn; True if there was one to stop.

        Its HITL requests are withdrawn and its process is stopped (the tools it
        runs with it); the next turn resumes the conversation in a new one.
        """
        session = self.get(session_id)
        turn = session.running
        if turn is None or turn.finishing:
            return False  # nothing running, or it is finishing on its own
        turn.cancel_requested = True
        for decision in list(turn.decisions):
            decision.cancel()
        await self._room_changed()  # a turn waiting for room stops waiting
        if turn.killer is None and session.agent is not None:
            turn.killer = asyncio.create_task(self._interrupt(session))
        # Answer once the turn is over (it says so with `cancelled` and `turn_end`).
        limit = self.interrupt_grace + self.terminate_grace + 5.0 + RELEASE_SECONDS
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(turn.done.wait(), limit + SETTLE_SECONDS)
        return True

    async def stop(self) -> None:
        """Cancel every running turn, release every process, flush the disk queue
        (server shutdown)."""
        running = [s.session_id for s in self.sessions.values() if s.running is not None]
        await asyncio.gather(*(self.cancel(sid) for sid in running), return_exceptions=True)
        releases = []
        for session in self.sessions.values():
            if session.release_timer is not None:
                session.release_timer.cancel()
                session.release_timer = None
            if session.releasing is None and session.agent is not None:
                session.releasing = asyncio.create_task(self._release(session))
            if session.releasing is not None:
                releases.append(session.releasing)
        await asyncio.gather(*releases, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._on_io(lambda: None)
        self._io.shutdown(wait=False)


def _log_failure(future: Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("chat: could not write state: %s", future.exception())
