"""The sandbox's command runner (server_extension/exec.py) and the exec request's
rules (rules/exec.py), with real processes: what the stack tests cannot reach
deterministically (stdin that arrives before the process exists, the output
limit, a link out of the workspace)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from jupyter_sac.errors import request_error
from jupyter_sac.rules.exec import MAX_OUTPUT_BYTES, ExecRequestError, audit_entry, parse_request
from jupyter_sac.server_extension.exec import CommandRun, resolve_cwd
from jupyter_sac.service.operations.exec import parse_frame, refusal


async def run(body: dict[str, Any], cwd: str, feed: list[dict[str, Any]] | None = None
              ) -> list[dict[str, Any]]:  # fmt: skip
    frames: list[dict[str, Any]] = []

    async def send(frame: dict[str, Any]) -> None:
        frames.append(frame)

    command = CommandRun(parse_request(body), cwd, send)
    task = asyncio.create_task(command.run())
    # What a socket hands on at once, before the process has even been started.
    for message in feed or []:
        if "stdin" in message:
            await command.write_stdin(message["stdin"])
        if message.get("eof"):
            await command.close_stdin()
    await task
    return frames


def text(frames: list[dict[str, Any]], stream: str = "stdout") -> str:
    return "".join(f["data"] for f in frames if f.get("stream") == stream)


@pytest.mark.asyncio
async def test_stdin_sent_before_the_process_started_reaches_it(tmp_path: Path) -> None:
    frames = await run(
        {"command": "cat", "stdin": "first ", "stdin_open": True, "timeout": 10},
        str(tmp_path),
        [{"stdin": "second"}, {"eof": True}],
    )
    assert text(frames) == "first second" and frames[-1]["exit_code"] == 0


@pytest.mark.asyncio
async def test_output_past_the_limit_kills_the_command_and_says_so(tmp_path: Path) -> None:
    frames = await run({"command": "yes 0123456789abcdef"}, str(tmp_path))
    assert len(text(frames).encode()) == MAX_OUTPUT_BYTES
    assert frames[-1]["error"] == "output_limit" and frames[-1]["exit_code"] == -9


@pytest.mark.asyncio
async def test_input_that_the_command_reads_after_writing_does_not_block(tmp_path: Path) -> None:
    # 1 MiB out before it reads 1 MiB in: both pipes full if nothing read meanwhile.
    body = {"command": "head -c 1048576 /dev/zero; wc -c", "stdin": "x" * 1048576, "timeout": 10}
    frames = await run(body, str(tmp_path))
    assert text(frames).endswith("1048576\n") and frames[-1]["exit_code"] == 0


@pytest.mark.asyncio
async def test_a_program_that_cannot_start_and_split_utf8(tmp_path: Path) -> None:
    frames = await run({"command": ["/no/such/program"]}, str(tmp_path))
    assert frames == [
        {
            "error": "spawn_failed",
            "message": frames[0]["message"],
            "exit_code": None,
            "duration": 0.0,
        }
    ]
    # A character split between two writes arrives whole.
    frames = await run({"command": r"printf '\346'; sleep 0.2; printf '\274\242'"}, str(tmp_path))
    assert text(frames) == "漢"


def test_a_working_directory_stays_in_the_workspace_or_home(tmp_path: Path) -> None:
    workspace, home = tmp_path / "workspace", tmp_path / "home"
    (workspace / "sub").mkdir(parents=True)
    home.mkdir()
    (workspace / "out").symlink_to("/etc")
    ws, hm = str(workspace), str(home)
    assert resolve_cwd(None, ws, hm) == os.path.realpath(ws)
    assert resolve_cwd("sub", ws, hm) == os.path.realpath(workspace / "sub")
    assert resolve_cwd(hm, ws, hm) == os.path.realpath(hm)
    for bad in ("..", "../home/..", "out", "/etc", "/", "nope"):
        with pytest.raises(ExecRequestError) as refused:
            resolve_cwd(bad, ws, hm)
        assert refused.value.field == "cwd", bad


def test_requests_are_checked_and_audited_without_values() -> None:
    request = parse_request(
        {"command": ["ls", "-l"], "env": {"TOKEN_X": "s3cret"}, "stdin": "pw", "timeout": 5}
    )
    assert request.argv == ("ls", "-l") and request.command == "ls -l"
    entry = audit_entry(request)
    assert entry == {"command": "ls -l", "cwd": None, "env": ["TOKEN_X"], "stdin": True,
                     "timeout": 5.0}  # fmt: skip
    assert "s3cret" not in repr(entry) and "pw" not in repr(entry)
    for body, field in (
        ({"command": "x", "env": {"SAC_AGENT_TOKEN": "a"}}, "env"),
        ({"command": "x", "env": {"HOME": "/"}}, "env"),
        ({"command": "x", "env": {"1A": "a"}}, "env"),
        ({"command": "x", "env": {"A": 1}}, "env"),
        ({"command": []}, "command"),
        ({"command": ["a\x00b"]}, "command"),
        ({"command": "x", "timeout": 3601}, "timeout"),
        ({"command": "x", "timeout": True}, "timeout"),
        ({"command": "x", "cwd": 1}, "cwd"),
        ({"command": "x", "other": 1}, "other"),
    ):
        with pytest.raises(ExecRequestError) as refused:
            parse_request(body)
        assert refused.value.field == field, body
        # ... which the APIs answer as a 400 naming the field.
        answer = request_error(refused.value)
        assert answer.status_code == 400 and answer.extra == {"field": field}, body


def test_the_service_takes_only_protocol_shaped_frames_from_a_sandbox() -> None:
    """The sandbox is not trusted: a frame that is not a JSON object ends the stream,
    and its refusal becomes a 4xx of the house shape or a 502, never its own 2xx/5xx."""
    assert parse_frame(None) is None and parse_frame("[1]") is None
    assert parse_frame(b"\xff") is None and parse_frame("{") is None
    assert parse_frame('{"seq": 0}') == {"seq": 0}
    cwd = refusal({"error": "invalid_field", "message": "cwd: no", "status": 400, "field": "cwd"})
    assert (cwd.status_code, cwd.code, cwd.extra) == (400, "invalid_field", {"field": "cwd"})
    for frame in (None, {}, {"status": 200}, {"status": 500}, {"status": "400"}, {"status": True}):
        assert refusal(frame).status_code == 502, frame
    long = refusal({"status": 403, "error": "x" * 500, "message": 7, "field": ["a"]})
    assert len(long.code) == 100 and long.message == "7" and long.extra == {}
