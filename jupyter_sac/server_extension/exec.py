"""Running one command in the sandbox for the `sac` service's exec API.

The command runs as the agent (this server's user), with this server's environment
plus the request's variables, in the workspace or a directory under it or the
agent's home, in a process group of its own (a new session). Its output is sent as
it comes, in frames ``{"seq", "stream", "data"}`` (``data``: UTF-8 text, bytes that
are not UTF-8 shown as U+FFFD), and a last frame ``{"exit_code", "duration"}`` (with
``"error"``: ``timeout``, ``output_limit`` or ``spawn_failed`` when it did not end on
its own). The whole process group is killed when the command's first process ends
(exec does not start daemons), at its timeout, past the output limit, and when the
caller goes away. See docs/api.md ("Exec and screen")."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..rules.exec import FRAME_BYTES, MAX_OUTPUT_BYTES, MAX_STDIN_BYTES, ExecRequest, bad

Frame = dict[str, Any]


def resolve_cwd(cwd: str | None, workspace: str, home: str | None = None) -> str:
    """The real directory ``cwd`` names (relative to the workspace; absolute paths
    allowed), which must be the workspace, the home or under one of them once links
    are followed; else a 400 naming ``cwd``."""
    base = os.path.realpath(workspace)
    target = os.path.realpath(os.path.join(base, cwd)) if cwd else base
    roots = {base, os.path.realpath(home or os.path.expanduser("~"))}
    if not any(target == root or target.startswith(root.rstrip(os.sep) + os.sep) for root in roots):
        raise bad("cwd", "must be the workspace, the agent's home, or a directory inside them")
    if not os.path.isdir(target):
        raise bad("cwd", "no such directory")
    return target


class CommandRun:
    """One command: started by ``run``, fed by ``write_stdin``/``close_stdin``,
    stopped early by ``kill``. ``send`` gets every frame, in order."""

    def __init__(self, request: ExecRequest, cwd: str, send: Callable[[Frame], Awaitable[None]]):
        self.request = request
        self.cwd = cwd
        self.send = send
        self.proc: asyncio.subprocess.Process | None = None
        self.seq = 0
        self.output_bytes = 0
        self.stdin_bytes = 0
        self.outcome: str | None = None  # why it was killed: timeout, output_limit, gone
        self._send_lock = asyncio.Lock()
        # Set once the request's own stdin is written (or the start failed): stdin
        # that follows on the socket waits for it, rather than being lost.
        self._started = asyncio.Event()

    async def run(self) -> Frame:
        """Run to the end; the last frame (also sent)."""
        started = time.monotonic()
        env = {**os.environ, **self.request.env}
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.request.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self.cwd,
                env=env,
                start_new_session=True,  # its own process group, killed as one
            )
        except OSError as e:
            last: Frame = {
                "error": "spawn_failed",
                "message": f"could not start {self.request.argv[0]!r}: {e.strerror or e}",
                "exit_code": None,
                "duration": 0.0,
            }
            self._started.set()
            await self._send(last)
            return last
        proc = self.proc
        assert proc.stdout is not None and proc.stderr is not None
        # Output is read while stdin is written: a command that writes before it
        # reads would otherwise fill its pipe and wait for us while we wait for it.
        pumps = [
            asyncio.create_task(self._pump(proc.stdout, "stdout")),
            asyncio.create_task(self._pump(proc.stderr, "stderr")),
        ]
        feeding = asyncio.create_task(self._feed())
        try:
            await asyncio.wait_for(proc.wait(), self.request.timeout)
        except TimeoutError:
            self.outcome = self.outcome or "timeout"
        finally:
            # Whatever it left behind (children in the background holding its pipes,
            # or everything, at a timeout or a disconnect) goes with it.
            self.kill()
            await proc.wait()
        await asyncio.gather(feeding, *pumps, return_exceptions=True)
        last = {"exit_code": proc.returncode, "duration": round(time.monotonic() - started, 3)}
        if self.outcome == "timeout":
            last["error"] = "timeout"
            last["message"] = (
                f"the command ran longer than {self.request.timeout:g} s; its process group"
                " was killed"
            )
        elif self.outcome == "output_limit":
            last["error"] = "output_limit"
            last["message"] = (
                f"the command wrote more than {MAX_OUTPUT_BYTES} bytes; its process group"
                " was killed"
            )
        if self.outcome != "gone":
            await self._send(last)
        return last

    async def _pump(self, pipe: asyncio.StreamReader, stream: str) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            chunk = await pipe.read(FRAME_BYTES)
            dropping = self.outcome in ("output_limit", "gone")
            if not chunk:
                tail = decoder.decode(b"", final=True)
                if tail and not dropping:
                    await self._send({"seq": 0, "stream": stream, "data": tail})
                return
            if dropping:
                continue  # read and dropped until the killed group's pipes close
            room = MAX_OUTPUT_BYTES - self.output_bytes
            if len(chunk) > room:
                chunk = chunk[:room]
                self.outcome = "output_limit"
                self.kill()
            self.output_bytes += len(chunk)
            text = decoder.decode(chunk)
            if text:
                await self._send({"seq": 0, "stream": stream, "data": text})

    async def _send(self, frame: Frame) -> None:
        async with self._send_lock:
            if "seq" in frame:
                frame["seq"] = self.seq
                self.seq += 1
            try:
                await self.send(frame)
            except Exception:
                # The caller went away: nobody reads what the command does.
                self.outcome = "gone"
                self.kill()

    async def _feed(self) -> None:
        """The request's own stdin, then closed unless it asked to keep it open."""
        try:
            if self.request.stdin:
                await self._write(self.request.stdin)
            if not self.request.keep_stdin_open:
                self._close()
        finally:
            self._started.set()

    async def write_stdin(self, text: str) -> None:
        """More input (a command started with ``stdin_open``), after the request's own."""
        await self._started.wait()
        await self._write(text)

    async def close_stdin(self) -> None:
        await self._started.wait()
        self._close()

    async def _write(self, text: str) -> None:
        proc = self.proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            return
        data = text.encode("utf-8", "replace")
        self.stdin_bytes += len(data)
        if self.stdin_bytes > MAX_STDIN_BYTES:
            raise bad("stdin", f"at most {MAX_STDIN_BYTES} bytes in all")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(data)
            await proc.stdin.drain()

    def _close(self) -> None:
        proc = self.proc
        if proc is not None and proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()

    def kill(self) -> None:
        """Kill the command's whole process group (its session's, as it started it)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def gone(self) -> None:
        """The caller went away: kill it, and send nothing more."""
        self.outcome = "gone"
        self.kill()
