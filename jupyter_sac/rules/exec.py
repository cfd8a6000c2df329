"""Running a command in an agent's sandbox (``exec``): the request's rules, shared by
the `sac` service (which authorises, audits and relays) and the sandbox extension
(which runs it). Pure: no I/O; where a working directory really is, only the
sandbox can tell (``server_extension/exec.py`` resolves it)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

# Seconds a command may run unless the request says otherwise, and at most.
DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 3600.0
# Output (stdout and stderr together, bytes as the command wrote them) one command
# may produce; past it the command's process group is killed and the last frame
# says ``output_limit``. A caller who needs more writes to a file and reads that.
MAX_OUTPUT_BYTES = 16 * 1024 * 1024
# stdin one request may carry (in its body, or over a WebSocket in all).
MAX_STDIN_BYTES = 4 * 1024 * 1024
# The most bytes one output frame carries (a read of a pipe, at most).
FRAME_BYTES = 64 * 1024
MAX_COMMAND_CHARS = 100_000
MAX_ARGS = 4096
MAX_ENV = 256
MAX_ENV_VALUE_CHARS = 100_000

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
# Variables the sandbox sets about itself (its identity, its tokens, where the
# service and the credential proxy are): a caller may not replace them, so that a
# command run through exec talks to the same service as the agent, as the agent.
RESERVED_ENV_PREFIXES = ("SAC_", "JUPYTERHUB_", "JPY_", "ANTHROPIC_", "CLAUDE_")
RESERVED_ENV_NAMES = frozenset({"HOME", "USER", "LOGNAME"})


@dataclass(frozen=True)
class ExecRequest:
    """What to run: ``argv`` (a string command is ``["/bin/sh", "-c", command]``),
    in ``cwd`` (relative to the workspace; None: the workspace), with ``env`` added
    to the sandbox's own environment, ``stdin`` written first, and a ``timeout``."""

    argv: tuple[str, ...]
    command: str  # as the audit log shows it
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    stdin: str = ""
    keep_stdin_open: bool = False
    timeout: float = DEFAULT_TIMEOUT


class ExecRequestError(ValueError):
    """A request exec refuses: a 400 with ``code`` and, where one is at fault, its
    ``field`` (jupyter_sac.errors.request_error makes the API's error of it)."""

    def __init__(self, message: str, field: str | None = None, code: str = "invalid_field"):
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code


def bad(field_name: str, message: str) -> ExecRequestError:
    return ExecRequestError(f"{field_name}: {message}", field=field_name)


def parse_request(body: Any) -> ExecRequest:
    """The request a JSON body asks for, or a 400 naming the field at fault.

    ``command``: a string (run by ``/bin/sh -c``) or a list of arguments (run as is);
    ``cwd``, ``env`` (names to strings), ``stdin`` (text), ``stdin_open`` (a
    WebSocket keeps stdin open for ``{"stdin"}`` messages until ``{"eof": true}``),
    ``timeout`` (seconds)."""
    if not isinstance(body, dict):
        raise ExecRequestError("the request must be a JSON object", code="invalid_json")
    unknown = sorted(set(body) - {"command", "cwd", "env", "stdin", "stdin_open", "timeout"})
    if unknown:
        raise bad(unknown[0], "unknown field")
    command = body.get("command")
    if isinstance(command, str):
        if not command.strip():
            raise bad("command", "must not be empty")
        if len(command) > MAX_COMMAND_CHARS:
            raise bad("command", f"at most {MAX_COMMAND_CHARS} characters")
        argv: tuple[str, ...] = ("/bin/sh", "-c", command)
        shown = command
    elif isinstance(command, list) and command and all(isinstance(a, str) for a in command):
        if len(command) > MAX_ARGS or sum(map(len, command)) > MAX_COMMAND_CHARS:
            raise bad("command", f"at most {MAX_ARGS} arguments, {MAX_COMMAND_CHARS} characters")
        if not command[0]:
            raise bad("command", "the program must not be empty")
        argv = tuple(command)
        shown = shlex.join(command)
    else:
        raise bad("command", "expected a string or a non-empty list of strings")
    if any("\x00" in a for a in argv):
        raise bad("command", "must not contain NUL characters")
    cwd = body.get("cwd")
    if cwd is not None and (not isinstance(cwd, str) or "\x00" in cwd or len(cwd) > 4096):
        raise bad("cwd", "expected a path")
    env = body.get("env") or {}
    if not isinstance(env, dict) or len(env) > MAX_ENV:
        raise bad("env", f"expected an object of at most {MAX_ENV} names to strings")
    for name, value in env.items():
        check_env_name(name)
        if not isinstance(value, str) or "\x00" in value or len(value) > MAX_ENV_VALUE_CHARS:
            raise bad("env", f"{name}: expected a string without NUL characters")
    stdin = body.get("stdin") or ""
    if not isinstance(stdin, str):
        raise bad("stdin", "expected a string")
    if len(stdin.encode("utf-8", "surrogatepass")) > MAX_STDIN_BYTES:
        raise bad("stdin", f"at most {MAX_STDIN_BYTES} bytes")
    stdin_open = body.get("stdin_open", False)
    if not isinstance(stdin_open, bool):
        raise bad("stdin_open", "expected true or false")
    timeout = body.get("timeout", DEFAULT_TIMEOUT)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_TIMEOUT
    ):
        raise bad("timeout", f"expected seconds, more than 0 and at most {MAX_TIMEOUT:g}")
    return ExecRequest(
        argv=argv,
        command=shown,
        cwd=cwd,
        env=dict(env),
        stdin=stdin,
        keep_stdin_open=stdin_open,
        timeout=float(timeout),
    )


def check_env_name(name: Any) -> None:
    if not isinstance(name, str) or not ENV_NAME.match(name):
        raise bad("env", f"{name!r} is not a variable name")
    if name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIXES):
        raise bad("env", f"{name} is the sandbox's own and cannot be replaced")


def audit_entry(request: ExecRequest) -> dict[str, Any]:
    """What the audit log keeps of a request: the command, where, the names of the
    variables it set and whether it had input, never their values (secrets)."""
    return {
        "command": request.command[:2000],
        "cwd": request.cwd,
        "env": sorted(request.env),
        "stdin": bool(request.stdin) or request.keep_stdin_open,
        "timeout": request.timeout,
    }
