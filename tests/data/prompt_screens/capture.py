"""Capture the prompt detector's corpus from real programs running in a PTY.

Every screen here is what a user saw: the program runs in a pseudo-terminal,
its output goes through the same screen model the sandbox uses
(``jupyter_sac.runtimes.screen.TerminalScreen``), and the visible lines plus
the cursor row are saved as ``<name>.txt`` (one line per screen row) with a
sidecar ``<name>.json``:

    {"source": "captured" | "synthetic", "program": "...", "rows": 30, "cols": 100,
     "cursor_row": 19, "expect": null | {"kind": ..., "keys": [...], "question": ...},
     "verified": "what typing a detected key did, when the capture checked it"}

``expect`` is the label (null = not a prompt); it is written here by hand per
scenario, never derived from the detector. Synthetic screens (hand-written
for formats this machine cannot run) are not touched by this script.

Claude Code runs against the scripted fake Anthropic API
(``sac_testing.fake_anthropic``); the shell scenarios run real
programs (apt-get, rm, cp, pip, ssh, ssh-keygen, git, unzip, npx, bash, python,
man, less). The ssh scenario needs ``asyncssh`` importable by
``$CAPTURE_SSH_PYTHON`` (default: this interpreter) for a throwaway SSH server;
without it that scenario is skipped.

Run from the repository root:

    .venv/bin/python tests/data/prompt_screens/capture.py            # everything
    .venv/bin/python tests/data/prompt_screens/capture.py rm_i git   # names containing these
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ptyprocess

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

from jupyter_sac.runtimes.claude import claude_binary  # noqa: E402
from jupyter_sac.runtimes.screen import TerminalScreen  # noqa: E402
from sac_testing.stack import http_status, poll_until  # noqa: E402

API_KEY = "sk-ant-test-key-123456789012345678901234"
PS1 = r"\u@sandbox:\w\$ "
DOWN, UP, ESC = "\x1b[B", "\x1b[A", "\x1b"


# --- driving a program in a PTY -------------------------------------------------


class Pty:
    """A program in a pseudo-terminal, its output kept in a screen model."""

    def __init__(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: str | Path,
        rows: int = 30,
        cols: int = 100,
    ) -> None:
        self.screen = TerminalScreen(rows, cols)
        self.proc = ptyprocess.PtyProcess.spawn(
            argv, env=env, cwd=str(cwd), dimensions=(rows, cols)
        )
        self.eof = False

    def read(self, timeout: float) -> int:
        """Feed whatever arrives within ``timeout`` seconds; how many bytes came."""
        if self.eof:
            return 0
        ready, _, _ = select.select([self.proc.fd], [], [], timeout)
        if not ready:
            return 0
        try:
            data = os.read(self.proc.fd, 65536)
        except OSError:
            data = b""
        if not data:
            self.eof = True
            return 0
        self.screen.feed(data)
        return len(data)

    def text(self) -> str:
        return self.screen.text()

    def cursor_line(self) -> str:
        return self.screen.lines()[self.screen.cursor_row]

    def wait_for(
        self, predicate: Callable[[Pty], bool], timeout: float = 60, what: str = ""
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline or self.eof:
                raise TimeoutError(f"not seen: {what}\n{self.text()}")
            self.read(0.2)

    def wait_text(self, text: str, timeout: float = 60) -> None:
        # Claude's input box puts a no-break space after its ❯.
        self.wait_for(lambda p: text in p.text().replace("\xa0", " "), timeout, repr(text))

    def settle(self, quiet: float = 0.8, timeout: float = 15) -> None:
        """Read until output pauses (a capture wants the finished frame)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.read(quiet):
                return

    def resize(self, rows: int, cols: int) -> None:
        self.screen.resize(rows, cols)
        self.proc.setwinsize(rows, cols)  # SIGWINCH: the program redraws

    def type(self, text: str) -> None:
        self.proc.write(text.encode())

    def snapshot(self) -> dict[str, Any]:
        return {
            "rows": self.screen.rows,
            "cols": self.screen.cols,
            "cursor_row": self.screen.cursor_row,
            "lines": self.screen.lines(),
        }

    def close(self) -> None:
        # SIGHUP like a closed terminal window, then harder (interactive bash ignores SIGTERM).
        with contextlib.suppress(Exception):
            self.proc.terminate(force=True)


# --- scenario plumbing --------------------------------------------------------------


@dataclass
class Capture:
    name: str
    snapshot: dict[str, Any]
    program: str
    expect: dict[str, Any] | None
    verified: str | None = None


@dataclass
class Context:
    tmp: Path
    fake_url: str = ""
    captures: list[Capture] = field(default_factory=list)
    ptys: list[Pty] = field(default_factory=list)

    def keep(
        self,
        name: str,
        pty: Pty,
        program: str,
        expect: dict[str, Any] | None,
        verified: str | None = None,
    ) -> Capture:
        cap = Capture(name, pty.snapshot(), program, expect, verified)
        self.captures.append(cap)
        return cap

    def workdir(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def spawn(self, argv: list[str], **kwargs: Any) -> Pty:
        pty = Pty(argv, **kwargs)
        self.ptys.append(pty)
        return pty


SCENARIOS: list[Callable[[Context], None]] = []


def scenario(fn: Callable[[Context], None]) -> Callable[[Context], None]:
    SCENARIOS.append(fn)
    return fn


def expect(
    kind: str, keys: list[str], question: str, text_key: str | None = None
) -> dict[str, Any]:
    """What the detector should find; ``text_key`` when the prompt also takes text."""
    want: dict[str, Any] = {"kind": kind, "keys": keys, "question": question}
    if text_key is not None:
        want["text_key"] = text_key
    return want


# --- Claude Code ----------------------------------------------------------------------


def claude_env(fake_url: str, config_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))}
    env.update(
        ANTHROPIC_BASE_URL=fake_url,
        ANTHROPIC_API_KEY=API_KEY,
        CLAUDE_CONFIG_DIR=str(config_dir),
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_AUTOUPDATER="1",
        IS_SANDBOX="1",
        TERM="xterm-256color",
    )
    return env


def claude_state(cwd: Path, **overrides: Any) -> dict[str, Any]:
    """The least ``.claude.json`` that starts the interactive CLI on its input box."""
    state: dict[str, Any] = {
        "hasCompletedOnboarding": True,
        "customApiKeyResponses": {"approved": [API_KEY[-20:]], "rejected": []},
        "projects": {str(cwd): {"hasTrustDialogAccepted": True}},
    }
    state.update(overrides)
    return state


def start_claude(
    ctx: Context,
    name: str,
    *,
    args: tuple[str, ...] = ("--permission-mode", "default"),
    rows: int = 30,
    cols: int = 100,
    state: dict[str, Any] | None = None,
) -> tuple[Pty, Path]:
    cwd = ctx.workdir(f"{name}/project")
    config = ctx.workdir(f"{name}/config")
    payload = claude_state(cwd) if state is None else state
    (config / ".claude.json").write_text(json.dumps(payload))
    binary = claude_binary()
    assert binary, "the claude CLI (claude-agent-sdk wheel) is not installed"
    pty = ctx.spawn(
        [binary, *args], env=claude_env(ctx.fake_url, config), cwd=cwd, rows=rows, cols=cols
    )
    return pty, cwd


def claude_ready(p: Pty) -> bool:
    """Claude's input box: a ❯ row between two rules (the footer differs per mode)."""
    lines = p.screen.lines()
    return any(
        line.startswith("❯") and lines[i - 1].startswith("───") and lines[i + 1].startswith("───")
        for i, line in enumerate(lines[1:-1], start=1)
    )


def script(ctx: Context, replies: list[Any]) -> None:
    import httpx

    httpx.delete(ctx.fake_url + "/_fake/script")
    httpx.post(ctx.fake_url + "/_fake/script", json={"replies": replies})


def submit(p: Pty, prompt: str) -> None:
    """Type into Claude's input box, then Enter once the text is shown (not a paste)."""
    p.wait_for(claude_ready, 60, "claude's input box")
    p.type(prompt)
    p.wait_text(f"❯ {prompt}", 20)
    p.type("\r")


def bash_tool(command: str, description: str) -> dict[str, Any]:
    return {"tool_use": {"name": "Bash", "input": {"command": command, "description": description}}}


CLAUDE = "claude 2.1.327"


@scenario
def claude_bash(ctx: Context) -> None:
    p, cwd = start_claude(ctx, "claude_bash")
    p.wait_for(claude_ready, 60, "input box")
    p.settle()
    ctx.keep("claude_idle", p, f"{CLAUDE}: idle input box", None)
    script(ctx, [bash_tool("echo hi > f.txt", "Write hi to f.txt"), "All done: f.txt now says hi."])
    submit(p, "write hi to f.txt")
    p.wait_text("Do you want to proceed?")
    p.settle()
    keys = ["1", "2", "3", "4"]
    cap = ctx.keep(
        "claude_bash_menu",
        p,
        f"{CLAUDE}: Bash permission",
        expect("claude_permission", keys, "Do you want to proceed?"),
    )
    p.type(DOWN)
    p.wait_for(lambda q: re.search(r"❯ 2\.", q.text()) is not None, 10, "selection on 2")
    p.settle()
    ctx.keep(
        "claude_bash_menu_moved",
        p,
        f"{CLAUDE}: Bash permission, selection moved to 2 with the arrow key",
        expect("claude_permission", keys, "Do you want to proceed?"),
    )
    p.type(UP)
    p.wait_for(lambda q: re.search(r"❯ 1\.", q.text()) is not None, 10, "selection on 1")
    p.settle()
    # The browser window narrows: Claude redraws the same menu, wrapped differently.
    p.resize(30, 72)
    p.settle(1.5)
    ctx.keep(
        "claude_bash_menu_resized",
        p,
        f"{CLAUDE}: the same Bash permission after the terminal shrank to 72 columns",
        expect("claude_permission", keys, "Do you want to proceed?"),
    )
    p.type("1")
    p.wait_text("All done")
    p.settle()
    assert (cwd / "f.txt").read_text() == "hi\n"
    cap.verified = "typing '1' (no Enter) ran the command: f.txt was written"
    ctx.keep("claude_bash_done", p, f"{CLAUDE}: after the menu was answered", None)


@scenario
def claude_bash_no(ctx: Context) -> None:
    p, cwd = start_claude(ctx, "claude_bash_no", rows=40, cols=120)
    script(ctx, [bash_tool("rm -rf build", "Remove the build directory"), "I will leave it."])
    (cwd / "build").mkdir()
    submit(p, "clean up")
    p.wait_text("Do you want to proceed?")
    p.settle()
    cap = ctx.keep(
        "claude_bash_menu_40x120",
        p,
        f"{CLAUDE}: Bash permission in a 40x120 terminal",
        expect("claude_permission", ["1", "2", "3", "4"], "Do you want to proceed?"),
    )
    p.type("4")
    p.wait_for(lambda q: "Do you want to proceed?" not in q.text(), 20, "menu gone")
    p.settle(1.5)
    assert (cwd / "build").is_dir()
    cap.verified = "typing '4' (No) rejected the command: build/ is still there"
    ctx.keep("claude_bash_rejected", p, f"{CLAUDE}: after answering No", None)


@scenario
def claude_bash_narrow(ctx: Context) -> None:
    p, _ = start_claude(ctx, "claude_bash_narrow", rows=24, cols=60)
    command = "pip install --upgrade pandas numpy scipy matplotlib seaborn"
    script(ctx, [bash_tool(command, "Upgrade the data science stack"), "upgraded"])
    submit(p, "upgrade")
    p.wait_text("proceed?")
    p.settle()
    ctx.keep(
        "claude_bash_menu_narrow",
        p,
        f"{CLAUDE}: Bash permission in a 24x60 terminal (options wrap)",
        expect("claude_permission", ["1", "2", "3", "4"], "Do you want to proceed?"),
    )
    p.type(ESC)
    p.wait_for(lambda q: "proceed?" not in q.text(), 20, "menu gone")
    p.settle(1.5)
    ctx.keep("claude_esc_cancelled", p, f"{CLAUDE}: after Esc on the menu", None)


@scenario
def claude_bash_yn_command(ctx: Context) -> None:
    p, _ = start_claude(ctx, "claude_bash_yn")
    script(
        ctx,
        [
            bash_tool("read -p 'Deploy now? (y/n) ' a && echo $a", "Ask whether to deploy (y/n)"),
            "ok",
        ],
    )
    submit(p, "deploy")
    p.wait_text("Do you want to proceed?")
    p.settle()
    ctx.keep(
        "claude_bash_menu_yn_command",
        p,
        f"{CLAUDE}: Bash permission for a command that itself contains (y/n)",
        expect("claude_permission", ["1", "2", "3"], "Do you want to proceed?"),
    )


@scenario
def claude_write_edit(ctx: Context) -> None:
    p, cwd = start_claude(ctx, "claude_write_edit")
    (cwd / "app.py").write_text("def main():\n    print('hello')\n")
    notes = str(cwd / "notes.md")
    app = str(cwd / "app.py")
    script(
        ctx,
        [
            {
                "tool_use": {
                    "name": "Write",
                    "input": {"file_path": notes, "content": "# Notes\n\nhello\n"},
                }
            },
            {"tool_use": {"name": "Read", "input": {"file_path": app}}},
            {
                "tool_use": {
                    "name": "Edit",
                    "input": {
                        "file_path": app,
                        "old_string": "print('hello')",
                        "new_string": "print('hello, world')",
                    },
                }
            },
            "Created notes.md and greeted the world.",
        ],
    )
    submit(p, "make notes and fix the greeting")
    p.wait_text("Do you want to create notes.md?")
    p.settle()
    write = ctx.keep(
        "claude_write_menu",
        p,
        f"{CLAUDE}: Write (create file) permission",
        expect("claude_permission", ["1", "2", "3"], "Do you want to create notes.md?"),
    )
    p.type("1")
    p.wait_text("Do you want to make this edit to app.py?")
    p.settle()
    assert (cwd / "notes.md").is_file()
    write.verified = "typing '1' created notes.md"
    edit = ctx.keep(
        "claude_edit_menu",
        p,
        f"{CLAUDE}: Edit permission",
        expect("claude_permission", ["1", "2", "3"], "Do you want to make this edit to app.py?"),
    )
    p.type("1")
    p.wait_text("greeted the world")
    p.settle()
    assert "hello, world" in (cwd / "app.py").read_text()
    edit.verified = "typing '1' applied the edit to app.py"
    ctx.keep("claude_edit_done", p, f"{CLAUDE}: after the edit was approved (diff shown)", None)


@scenario
def claude_fetch(ctx: Context) -> None:
    p, _ = start_claude(ctx, "claude_fetch", rows=40, cols=120)
    script(
        ctx,
        [
            {
                "tool_use": {
                    "name": "WebFetch",
                    "input": {"url": "https://example.com/", "prompt": "summarize"},
                }
            },
            "x",
        ],
    )
    submit(p, "read example.com")
    p.wait_text("fetch this content?")
    p.settle()
    ctx.keep(
        "claude_fetch_menu",
        p,
        f"{CLAUDE}: WebFetch permission",
        expect(
            "claude_permission",
            ["1", "2", "3"],
            "Do you want to allow Claude to fetch this content?",
        ),
    )


@scenario
def claude_ask(ctx: Context) -> None:
    p, _ = start_claude(ctx, "claude_ask")
    question = {
        "question": "Which database should the service use?",
        "header": "Database",
        "multiSelect": False,
        "options": [
            {"label": "PostgreSQL", "description": "The production database"},
            {"label": "SQLite", "description": "A file, for tests"},
        ],
    }
    script(
        ctx,
        [
            {"tool_use": {"name": "AskUserQuestion", "input": {"questions": [question]}}},
            "Going with it.",
        ],
    )
    submit(p, "set up storage")
    p.wait_text("Which database should the service use?")
    p.settle()
    cap = ctx.keep(
        "claude_ask_question",
        p,
        f"{CLAUDE}: AskUserQuestion tool",
        # "3. Type something." is the text answer's key, not an option of its own.
        expect("claude_question", ["1", "2", "4"], "Which database should the service use?", "3"),
    )
    p.type("2")
    p.wait_text("Going with it.")
    p.settle()
    assert "→ SQLite" in p.text()
    cap.verified = "typing '2' answered SQLite"
    ctx.keep("claude_ask_answered", p, f"{CLAUDE}: after the question was answered", None)


@scenario
def claude_ask_text(ctx: Context) -> None:
    p, _ = start_claude(ctx, "claude_ask_text")
    question = {
        "question": "What should the new file be called?",
        "header": "Name",
        "multiSelect": False,
        "options": [
            {"label": "notes.txt", "description": "Plain text"},
            {"label": "todo.md", "description": "Markdown"},
        ],
    }
    script(
        ctx,
        [
            {"tool_use": {"name": "AskUserQuestion", "input": {"questions": [question]}}},
            "Named it.",
        ],
    )
    submit(p, "make a file")
    p.wait_text("What should the new file be called?")
    p.settle()
    cap = ctx.keep(
        "claude_ask_text_question",
        p,
        f"{CLAUDE}: AskUserQuestion tool, answered with text",
        expect("claude_question", ["1", "2", "4"], "What should the new file be called?", "3"),
    )
    p.type("3")
    p.settle()
    p.type("my-notes.txt")
    p.settle()
    ctx.keep("claude_ask_text_typing", p, f"{CLAUDE}: the text typed, not yet sent", None)
    p.type("\r")
    p.wait_text("Named it.")
    p.settle()
    assert "→ my-notes.txt" in p.text()
    cap.verified = "typing '3', then the text, then Enter answered my-notes.txt"


@scenario
def claude_plan(ctx: Context) -> None:
    p, _ = start_claude(ctx, "claude_plan", args=("--permission-mode", "plan"), rows=40, cols=120)
    plan = "1. Add a --dry-run flag\n2. Test it\n3. Document it"
    script(ctx, [{"tool_use": {"name": "ExitPlanMode", "input": {"plan": plan}}}, "Plan accepted."])
    p.wait_for(lambda q: "plan mode on" in q.text(), 60, "plan mode")
    p.type("plan the flag")
    p.wait_text("❯ plan the flag", 20)
    p.type("\r")
    p.wait_text("Exit plan mode?")
    p.settle()
    cap = ctx.keep(
        "claude_exit_plan",
        p,
        f"{CLAUDE}: ExitPlanMode approval (plan mode)",
        expect("claude_permission", ["1", "2"], "Exit plan mode?"),
    )
    p.type("1")
    p.wait_text("Plan accepted.")
    p.settle()
    cap.verified = "typing '1' left plan mode"


@scenario
def claude_lookalikes(ctx: Context) -> None:
    p, _ = start_claude(ctx, "claude_lookalikes", rows=40, cols=100)
    answer = textwrap.dedent(
        """\
        A deploy script usually confirms first. It prints:

            Do you want to proceed? (y/n)

        and then offers a menu:

        1. Yes
        2. No

        In bash that is:

        ```bash
        read -p "Continue? [y/N] " answer
        [ "$answer" = y ] || exit 1
        ```

        Press Enter to continue is another common prompt."""
    )
    script(ctx, [answer])
    submit(p, "how do deploy scripts confirm?")
    p.wait_text("another common prompt")
    p.wait_for(claude_ready, 30, "idle again")
    p.settle()
    ctx.keep(
        "claude_answer_mentions_prompts",
        p,
        f"{CLAUDE}: an answer quoting prompts, idle box below",
        None,
    )
    p.type("should I really proceed? (y/n)")
    p.wait_text("(y/n)", 10)
    p.settle()
    ctx.keep(
        "claude_user_typing_yn",
        p,
        f"{CLAUDE}: the user typing '(y/n)' into the input box",
        None,
    )


@scenario
def claude_streaming(ctx: Context) -> None:
    p, _ = start_claude(ctx, "claude_streaming")
    words = " ".join(f"step{i}" for i in range(60))
    script(ctx, [{"text": "Working through it: " + words, "delay": 0.4}])
    submit(p, "explain slowly")
    p.wait_text("step3", 60)
    p.settle(0.2, 1)
    ctx.keep("claude_streaming", p, f"{CLAUDE}: an answer still streaming (spinner)", None)


@scenario
def claude_tool_output(ctx: Context) -> None:
    p, _ = start_claude(ctx, "claude_tool_output")
    # A failing command: Claude Code shows its output (a passing one is folded away).
    command = (
        "printf 'Reading package lists...\\nDo you want to continue? [Y/n] n\\nAbort.\\n'; exit 1"
    )
    script(ctx, [bash_tool(command, "Show apt output"), "That was apt aborting."])
    submit(p, "show apt output")
    p.wait_for(lambda q: "proceed?" in q.text() or "apt aborting" in q.text(), 60, "menu or answer")
    p.settle()
    if "proceed?" in p.text():
        p.type("1")
    p.wait_text("That was apt aborting.")
    p.settle()
    ctx.keep(
        "claude_tool_output_folded", p, f"{CLAUDE}: a failed command's output folded away", None
    )
    p.type("\x0f")  # ctrl+o: the transcript, with the command's output
    p.wait_text("[Y/n] n", 20)
    p.settle()
    ctx.keep(
        "claude_transcript_tool_output",
        p,
        f"{CLAUDE}: ctrl+o transcript quoting an apt prompt",
        None,
    )


@scenario
def claude_trust(ctx: Context) -> None:
    name = "claude_trust"
    cwd = ctx.workdir(f"{name}/project")
    p, _ = start_claude(ctx, name, state=claude_state(cwd, projects={}))
    p.wait_text("Yes, I trust this folder")
    p.settle()
    cap = ctx.keep(
        "claude_trust_dialog",
        p,
        f"{CLAUDE}: trust-folder dialog (no .claude.json projects entry)",
        expect(
            "claude_dialog", ["\r", DOWN + "\r"], "Is this a project you created or one you trust?"
        ),
    )
    p.type(DOWN + "\r")
    p.wait_for(claude_ready, 60, "input box after trusting")
    cap.verified = "typing Down+Enter trusted the folder and opened the input box"


@scenario
def claude_api_key(ctx: Context) -> None:
    name = "claude_api_key"
    cwd = ctx.workdir(f"{name}/project")
    state = claude_state(cwd, customApiKeyResponses={"approved": [], "rejected": []})
    p, _ = start_claude(ctx, name, state=state)
    p.wait_text("Do you want to use this API key?")
    p.settle()
    cap = ctx.keep(
        "claude_api_key_dialog",
        p,
        f"{CLAUDE}: custom API key dialog (key not yet approved)",
        expect("claude_dialog", [UP + "\r", "\r"], "Do you want to use this API key?"),
    )
    p.type(UP + "\r")
    p.wait_for(claude_ready, 60, "input box after approving the key")
    cap.verified = "typing Up+Enter approved the key and opened the input box"


@scenario
def claude_bypass(ctx: Context) -> None:
    name = "claude_bypass"
    p, _ = start_claude(ctx, name, args=("--dangerously-skip-permissions",), rows=24, cols=80)
    p.wait_text("Yes, I accept")
    p.settle()
    cap = ctx.keep(
        "claude_bypass_dialog",
        p,
        f"{CLAUDE}: bypass-permissions warning (bypassPermissionsModeAccepted unset)",
        expect(
            "claude_dialog",
            ["\r", DOWN + "\r"],
            "WARNING: Claude Code running in Bypass Permissions mode",
        ),
    )
    p.type(DOWN + "\r")
    p.wait_for(claude_ready, 60, "input box after accepting")
    cap.verified = "typing Down+Enter accepted and opened the input box"


@scenario
def claude_prose_question(ctx: Context) -> None:
    p, _ = start_claude(ctx, "claude_prose")
    script(ctx, ["I found 3 failing tests in test_api.py.\n\nDo you want me to fix them? (y/n)"])
    submit(p, "check the tests")
    p.wait_text("fix them? (y/n)")
    p.wait_for(claude_ready, 30, "idle again")
    p.settle()
    ctx.keep(
        "claude_prose_question",
        p,
        f"{CLAUDE}: the assistant asks a (y/n) question in prose; the input box is the reply",
        None,
    )


@scenario
def claude_running_tool(ctx: Context) -> None:
    p, _ = start_claude(ctx, "claude_running")
    script(ctx, [bash_tool("sleep 5 && touch built.txt", "Wait for the build"), "Build waited."])
    submit(p, "wait for the build")
    p.wait_text("Do you want to proceed?")
    p.settle()
    p.type("1")
    p.wait_for(lambda q: "Do you want to proceed?" not in q.text(), 20, "menu gone")
    p.settle(0.3, 1)
    ctx.keep("claude_running_tool", p, f"{CLAUDE}: an approved command still running", None)
    p.wait_text("Build waited.", 60)


# --- shell programs ---------------------------------------------------------------------


def shell_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))}
    env.update(
        TERM="xterm-256color",
        PS1=PS1,
        HOME=str(home),
        LANG="C.UTF-8",
        PAGER="less",
        MANPAGER="less",
        GIT_PAGER="cat",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        DEBIAN_FRONTEND="readline",
    )
    return env


def at_shell_prompt(p: Pty) -> bool:
    return p.cursor_line().endswith(("$", "#"))


def shell(ctx: Context, name: str, rows: int = 24, cols: int = 80) -> tuple[Pty, Path]:
    cwd = ctx.workdir(f"{name}/work")
    env = shell_env(ctx.workdir(f"{name}/home"))
    p = ctx.spawn(["bash", "--noprofile", "--norc", "-i"], env=env, cwd=cwd, rows=rows, cols=cols)
    p.wait_for(at_shell_prompt, 20, "shell prompt")
    return p, cwd


def run(p: Pty, command: str) -> None:
    p.type(command + "\r")


def wait_cursor_line(p: Pty, pattern: str, timeout: float = 60) -> None:
    p.wait_for(lambda q: re.search(pattern, q.cursor_line()) is not None, timeout, pattern)


YES_NO = ["y\r", "n\r"]


@scenario
def apt_install(ctx: Context) -> None:
    if not shutil.which("apt-get") or os.geteuid() != 0:
        print("skip apt_install: needs apt-get as root")
        return
    p, _ = shell(ctx, "apt")
    run(p, "apt-get install cowsay")
    wait_cursor_line(p, r"\[Y/n\]", 120)
    p.settle()
    cap = ctx.keep(
        "apt_install_prompt",
        p,
        "apt-get install (extra package)",
        expect("yes_no", YES_NO, "Do you want to continue?"),
    )
    p.type("n\r")
    p.wait_for(at_shell_prompt, 30, "prompt after Abort")
    p.settle()
    assert "Abort." in p.text()
    cap.verified = "typing 'n' + Enter aborted the install"
    ctx.keep("apt_aborted", p, "apt-get install after answering n", None)


@scenario
def rm_i(ctx: Context) -> None:
    p, cwd = shell(ctx, "rm")
    (cwd / "results.csv").write_text("a,b\n1,2\n")
    run(p, "ls -l && rm -i results.csv")
    wait_cursor_line(p, r"remove .*\?$")
    p.settle()
    cap = ctx.keep(
        "rm_i_prompt",
        p,
        "rm -i",
        expect("yes_no", YES_NO, "rm: remove regular file 'results.csv'?"),
    )
    p.type("n\r")
    p.wait_for(at_shell_prompt, 10, "prompt")
    assert (cwd / "results.csv").exists()
    cap.verified = "typing 'n' + Enter kept the file"
    run(p, "rm -i results.csv")
    wait_cursor_line(p, r"remove .*\?$")
    p.type("y\r")
    p.wait_for(at_shell_prompt, 10, "prompt")
    p.settle()
    assert not (cwd / "results.csv").exists()
    cap.verified += "; 'y' + Enter removed it"
    ctx.keep("rm_i_answered", p, "rm -i after answering (two finished prompts)", None)


@scenario
def cp_i(ctx: Context) -> None:
    p, cwd = shell(ctx, "cp", rows=30, cols=100)
    (cwd / "a.txt").write_text("a\n")
    (cwd / "b.txt").write_text("b\n")
    run(p, "cp -i a.txt b.txt")
    wait_cursor_line(p, r"overwrite .*\?$")
    p.settle()
    ctx.keep("cp_i_prompt", p, "cp -i", expect("yes_no", YES_NO, "cp: overwrite 'b.txt'?"))


@scenario
def pip_uninstall(ctx: Context) -> None:
    p, cwd = shell(ctx, "pip", rows=24, cols=100)
    subprocess.run([sys.executable, "-m", "venv", str(cwd / "venv")], check=True)
    run(p, "./venv/bin/pip uninstall pip")
    wait_cursor_line(p, r"Proceed \(Y/n\)\?", 60)
    p.settle()
    cap = ctx.keep(
        "pip_uninstall_prompt", p, "pip uninstall", expect("yes_no", YES_NO, "Proceed (Y/n)?")
    )
    p.type("n\r")
    p.wait_for(at_shell_prompt, 30, "prompt")
    assert (cwd / "venv/bin/pip").exists()
    cap.verified = "typing 'n' + Enter kept pip installed"


SSH_SERVER = """
import asyncio, sys, asyncssh
async def main():
    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(asyncssh.SSHServer, "127.0.0.1", int(sys.argv[1]),
                                          server_host_keys=[key])
    print("ready", flush=True)
    await server.wait_closed()
asyncio.run(main())
"""


@scenario
def ssh_hostkey(ctx: Context) -> None:
    python = os.environ.get("CAPTURE_SSH_PYTHON", sys.executable)
    check = subprocess.run([python, "-c", "import asyncssh"], capture_output=True)
    if check.returncode != 0 or not shutil.which("ssh"):
        print("skip ssh_hostkey: needs ssh and asyncssh (set CAPTURE_SSH_PYTHON)")
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [python, "-c", SSH_SERVER, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout and server.stdout.readline().strip() == "ready"
        p, cwd = shell(ctx, "ssh", rows=24, cols=100)
        known = cwd / "known_hosts"
        run(
            p,
            f"ssh -p {port} -o UserKnownHostsFile={known} -o GlobalKnownHostsFile=/dev/null "
            "deploy@127.0.0.1",
        )
        wait_cursor_line(p, r"\(yes/no/\[fingerprint\]\)\?", 30)
        p.settle()
        cap = ctx.keep(
            "ssh_hostkey_prompt",
            p,
            "ssh to an unknown host",
            expect("yes_no", ["yes\r", "no\r"], "Are you sure you want to continue connecting"),
        )
        p.type("y\r")
        wait_cursor_line(p, r"Please type 'yes', 'no' or the fingerprint:", 10)
        p.settle()
        cap.verified = "ssh does not take 'y': it asks again (ssh_hostkey_retype)"
        retype = ctx.keep(
            "ssh_hostkey_retype",
            p,
            "ssh after answering 'y' to the host key question",
            expect("yes_no", ["yes\r", "no\r"], "Please type 'yes', 'no' or the fingerprint:"),
        )
        p.type("no\r")
        p.wait_for(at_shell_prompt, 30, "prompt")
        assert "Host key verification failed" in p.text()
        retype.verified = "typing 'no' + Enter refused the host key"
    finally:
        server.terminate()
        server.wait()


@scenario
def ssh_keygen(ctx: Context) -> None:
    p, cwd = shell(ctx, "keygen")
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(cwd / "id_deploy")], check=True
    )
    run(p, "ssh-keygen -t ed25519 -N '' -f id_deploy")
    wait_cursor_line(p, r"Overwrite \(y/n\)\?")
    p.settle()
    cap = ctx.keep(
        "ssh_keygen_overwrite",
        p,
        "ssh-keygen over an existing key",
        expect("yes_no", YES_NO, "Overwrite (y/n)?"),
    )
    before = (cwd / "id_deploy").read_text()
    p.type("n\r")
    p.wait_for(at_shell_prompt, 10, "prompt")
    assert (cwd / "id_deploy").read_text() == before
    cap.verified = "typing 'n' + Enter kept the key"


def git_repo(cwd: Path) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "a",
        "GIT_AUTHOR_EMAIL": "a@x",
        "GIT_COMMITTER_NAME": "a",
        "GIT_COMMITTER_EMAIL": "a@x",
    }
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=cwd, check=True)
    (cwd / "config.py").write_text("DEBUG = False\nWORKERS = 4\n")
    subprocess.run(["git", "add", "."], cwd=cwd, check=True)
    subprocess.run(["git", "commit", "-qm", "init"], cwd=cwd, check=True, env=env)
    (cwd / "config.py").write_text("DEBUG = True\nWORKERS = 4\n")


@scenario
def git_add_p(ctx: Context) -> None:
    p, cwd = shell(ctx, "git")
    git_repo(cwd)
    run(p, "git -c color.ui=always add -p")
    wait_cursor_line(p, r"Stage this hunk \[")
    p.settle()
    cap = ctx.keep(
        "git_add_p_prompt",
        p,
        "git add -p",
        expect("yes_no", ["y\r", "n\r", "q\r", "a\r", "d\r", "e\r", "?\r"], "Stage this hunk"),
    )
    p.type("y\r")
    p.wait_for(at_shell_prompt, 10, "prompt")
    staged = subprocess.run(
        ["git", "diff", "--cached", "--name-only"], cwd=cwd, capture_output=True, text=True
    )
    assert staged.stdout.strip() == "config.py"
    cap.verified = "typing 'y' + Enter staged the hunk"


@scenario
def unzip_replace(ctx: Context) -> None:
    if not shutil.which("unzip") or not shutil.which("zip"):
        print("skip unzip_replace")
        return
    p, cwd = shell(ctx, "unzip")
    (cwd / "report.txt").write_text("v1\n")
    subprocess.run(["zip", "-q", "bundle.zip", "report.txt"], cwd=cwd, check=True)
    run(p, "unzip bundle.zip")
    wait_cursor_line(p, r"\[r\]ename:")
    p.settle()
    ctx.keep(
        "unzip_replace_prompt",
        p,
        "unzip over an existing file",
        expect("yes_no", ["y\r", "n\r", "A\r", "N\r", "r\r"], "replace report.txt?"),
    )


@scenario
def npx_install(ctx: Context) -> None:
    if not shutil.which("npx"):
        print("skip npx_install")
        return
    p, _ = shell(ctx, "npx", rows=24, cols=100)
    run(p, "npx --cache ./npm-cache cowsay hello")
    try:
        wait_cursor_line(p, r"Ok to proceed\?", 90)
    except TimeoutError:
        print("skip npx_install: the npm registry did not answer")
        return
    p.settle()
    cap = ctx.keep(
        "npx_install_prompt",
        p,
        "npx of a package not yet installed",
        expect("yes_no", YES_NO, "Ok to proceed?"),
    )
    p.type("n\r")
    p.wait_for(at_shell_prompt, 30, "prompt")
    cap.verified = "typing 'n' + Enter declined the install"


@scenario
def gpg_menu(ctx: Context) -> None:
    if not shutil.which("gpg"):
        print("skip gpg_menu")
        return
    p, cwd = shell(ctx, "gpg", rows=24, cols=80)
    home = cwd / "gnupg"
    home.mkdir(mode=0o700)
    run(p, f"clear; gpg --homedir {home} --full-generate-key")
    wait_cursor_line(p, r"Your selection\?", 30)
    p.settle()
    cap = ctx.keep(
        "gpg_key_type_menu",
        p,
        "gpg --full-generate-key (numbered with parentheses)",
        None,  # filled in below once the numbers are known
    )
    numbers = re.findall(r"^\s*\((\d+)\) ", p.text(), re.M)
    cap.expect = expect("numbered_menu", [f"{n}\r" for n in numbers], "Your selection?")
    p.type("1\r")
    p.wait_text("What keysize do you want?", 10)
    cap.verified = "typing '1' + Enter chose RSA and moved on to the key size"
    p.type("\x03")
    p.wait_for(at_shell_prompt, 10, "prompt")


@scenario
def git_difftool(ctx: Context) -> None:
    p, cwd = shell(ctx, "difftool", rows=24, cols=80)
    git_repo(cwd)
    run(p, "clear; git difftool --tool=vimdiff")
    wait_cursor_line(p, r"\[Y/n\]\?", 30)
    p.settle()
    cap = ctx.keep(
        "git_difftool_prompt",
        p,
        "git difftool",
        expect("yes_no", YES_NO, "Launch 'vimdiff' [Y/n]?"),
    )
    p.type("n\r")
    p.wait_for(at_shell_prompt, 10, "prompt")
    cap.verified = "typing 'n' + Enter skipped the file"


@scenario
def npm_init(ctx: Context) -> None:
    if not shutil.which("npm"):
        print("skip npm_init")
        return
    p, cwd = shell(ctx, "npminit", rows=40, cols=100)
    run(p, "npm init --cache ./npm-cache")
    for _ in range(12):
        p.wait_for(
            lambda q: q.cursor_line().rstrip().endswith(")") or ":" in q.cursor_line(),
            30,
            "npm question",
        )
        p.settle(0.5, 5)
        if "Is this OK?" in p.cursor_line():
            break
        p.type("\r")
    cap = ctx.keep(
        "npm_init_confirm",
        p,
        "npm init, the final confirmation",
        expect("yes_no", ["yes\r", "no\r"], "Is this OK? (yes)"),
    )
    p.type("no\r")
    p.wait_for(at_shell_prompt, 10, "prompt")
    assert not (cwd / "package.json").exists()
    cap.verified = "typing 'no' + Enter aborted: no package.json"


@scenario
def read_prompts(ctx: Context) -> None:
    p, _ = shell(ctx, "read", rows=24, cols=80)
    run(p, "echo 'Build finished: 12 artifacts.'; read -p 'Deploy to production? [y/N] ' answer")
    wait_cursor_line(p, r"\[y/N\]")
    p.settle()
    cap = ctx.keep(
        "read_p_yn", p, "bash read -p", expect("yes_no", YES_NO, "Deploy to production? [y/N]")
    )
    p.type("y\r")
    p.wait_for(at_shell_prompt, 10, "prompt")
    run(p, 'echo "answer=$answer"')
    p.wait_text("answer=y")
    cap.verified = "typing 'y' + Enter set the variable to y"
    run(p, "clear; ls /usr; read -p 'Press Enter to continue...'")
    wait_cursor_line(p, r"Press Enter to continue")
    p.settle()
    ctx.keep(
        "read_p_press_enter",
        p,
        "bash read -p (press Enter)",
        expect("press_enter", ["\r"], "Press Enter to continue..."),
    )
    p.type("\r")
    p.wait_for(at_shell_prompt, 10, "prompt")
    run(p, "clear; read -p 'Enter a name for the release: ' name")
    wait_cursor_line(p, r"Enter a name")
    p.settle()
    cap = ctx.keep(
        "read_p_text",
        p,
        "bash read -p (a value)",
        expect("text", ["\r"], "Enter a name for the release:", ""),
    )
    p.type("Spring 2027\r")
    p.wait_for(at_shell_prompt, 10, "prompt")
    run(p, 'echo "name=$name"')
    p.wait_text("name=Spring 2027")
    cap.verified = "typing the text + Enter set the variable to it"
    run(p, "clear; read -s -p 'Password for deploy@example.org: ' pw")
    wait_cursor_line(p, r"Password for")
    p.settle()
    ctx.keep("read_p_password", p, "bash read -s -p (a password: never taken)", None)
    p.type("x\r")
    p.wait_for(at_shell_prompt, 10, "prompt")
    run(p, "clear; read -n 1 -p 'Restart the service now? (y/n) ' k; echo; echo got=$k")
    wait_cursor_line(p, r"\(y/n\)")
    p.settle()
    ctx.keep(
        "read_n1_yn",
        p,
        "bash read -n 1 (a single-key prompt: the trailing Enter is harmless)",
        expect("yes_no", YES_NO, "Restart the service now? (y/n)"),
    )
    p.type("n\r")
    p.wait_text("got=n")
    p.wait_for(at_shell_prompt, 10, "prompt")
    p.settle()
    ctx.keep("read_n1_answered", p, "after answering the single-key prompt", None)


@scenario
def bash_select(ctx: Context) -> None:
    p, _ = shell(ctx, "select", rows=24, cols=80)
    run(
        p,
        "clear; PS3='Choose a target: '; select t in staging production cancel; do echo chose=$t; break; done",
    )
    wait_cursor_line(p, r"Choose a target:")
    p.settle()
    cap = ctx.keep(
        "bash_select_menu",
        p,
        "bash select",
        expect("numbered_menu", ["1\r", "2\r", "3\r"], "Choose a target:"),
    )
    p.type("1\r")
    p.wait_text("chose=staging")
    cap.verified = "typing '1' + Enter chose staging"
    run(p, "unset PS3; clear; select t in a b; do break; done")
    wait_cursor_line(p, r"#\?")
    p.settle()
    ctx.keep(
        "bash_select_default_ps3",
        p,
        "bash select with the default #? prompt",
        expect("numbered_menu", ["1\r", "2\r"], "#?"),
    )


@scenario
def python_input(ctx: Context) -> None:
    p, cwd = shell(ctx, "py", rows=24, cols=80)
    (cwd / "train.py").write_text(
        textwrap.dedent(
            """\
            import sys
            print("Found an existing checkpoint in runs/exp1 (epoch 12).")
            a = input("Overwrite the existing results? (yes/no) ")
            print("answer:", a)
            input("Press RETURN to start training")
            print("training")
            """
        )
    )
    run(p, "python3 train.py")
    wait_cursor_line(p, r"\(yes/no\)")
    p.settle()
    cap = ctx.keep(
        "python_input_yes_no",
        p,
        "python input() asking (yes/no)",
        expect("yes_no", ["yes\r", "no\r"], "Overwrite the existing results? (yes/no)"),
    )
    p.type("no\r")
    wait_cursor_line(p, r"Press RETURN")
    p.settle()
    assert "answer: no" in p.text()
    cap.verified = "typing 'no' + Enter gave input() 'no'"
    cap2 = ctx.keep(
        "python_press_return",
        p,
        "python input() asking to press RETURN",
        expect("press_enter", ["\r"], "Press RETURN to start training"),
    )
    p.type("\r")
    p.wait_text("training\n")
    p.wait_for(at_shell_prompt, 10, "prompt")
    cap2.verified = "typing Enter continued the script"


@scenario
def negatives_shell(ctx: Context) -> None:
    p, cwd = shell(ctx, "neg", rows=24, cols=80)
    (cwd / "deploy.sh").write_text(
        textwrap.dedent(
            """\
            #!/bin/sh
            set -e
            echo "Deploying $1"
            read -p "Continue? [y/N] " ans
            case "$ans" in
              [yY]*) ;;
              *) echo "Aborted."; exit 1 ;;
            esac
            # Do you want to proceed? (y/n)
            read -p "Press Enter to continue" _
            ./release.sh "$1"
            """
        )
    )
    run(p, "clear; cat deploy.sh")
    p.wait_text("release.sh")
    p.wait_for(at_shell_prompt, 10, "prompt")
    p.settle()
    ctx.keep("cat_script_with_prompts", p, "cat of a script containing read -p prompts", None)

    (cwd / "NOTES.md").write_text(
        "# Release checklist\n\nBefore tagging, the script asks:\n\n"
        "1. Yes, tag and push\n2. No, abort\n\nChoose an option:\n"
    )
    run(p, "clear; cat NOTES.md")
    p.wait_text("Choose an option:")
    p.wait_for(at_shell_prompt, 10, "prompt")
    p.settle()
    ctx.keep("cat_numbered_list", p, "cat of notes with a numbered list and a question", None)

    run(p, "clear; ls -la /")
    p.wait_for(at_shell_prompt, 10, "prompt")
    p.settle()
    ctx.keep("shell_idle", p, "a shell prompt after ls", None)

    p.type("echo 'Continue? [y/N]'")
    p.wait_text("[y/N]'")
    p.settle()
    ctx.keep("shell_typing_yn", p, "a command being typed at the shell prompt (no Enter yet)", None)
    p.type("\x15")  # ^U: drop the typed line
    run(p, "clear")
    (cwd / "app.log").write_text(
        "".join(
            f"2025-03-0{1 + i % 9} 12:{i:02d}:07 INFO  worker-{i % 3}: {msg}\n"
            for i, msg in enumerate(
                [
                    "job 1182 started",
                    "prompt 'Do you want to proceed? (y/n)' answered y by alice",
                    "apt: Do you want to continue? [Y/n] Y",
                    "job 1182 finished in 4.2s",
                    "waiting for confirmation... Press Enter to continue",
                    "confirmation received",
                    "job 1183 started",
                    "1. Yes  2. No  -> user chose 1",
                    "job 1183 finished in 3.9s",
                ]
            )
        )
    )
    run(p, "tail -n 20 app.log")
    p.wait_text("1183 finished")
    p.wait_for(at_shell_prompt, 10, "prompt")
    p.settle()
    ctx.keep("log_lines_with_prompts", p, "tail of a log quoting prompts", None)

    run(p, "clear; python3 -q")
    p.wait_for(lambda q: q.cursor_line().startswith(">>>"), 10, "python REPL")
    p.settle()
    ctx.keep("python_repl_idle", p, "the python REPL waiting for a statement", None)
    p.type("exit()\r")
    p.wait_for(at_shell_prompt, 10, "prompt")

    run(
        p,
        'clear; python3 -c "from pip._vendor.rich.progress import track; import time\n'
        "for _ in track(range(400), description='Downloading model.bin'): time.sleep(0.05)\"",
    )
    p.wait_text("Downloading model.bin", 20)
    p.wait_for(lambda q: re.search(r"\b[2-9]\d%", q.text()) is not None, 30, "progress")
    ctx.keep("progress_bar", p, "a rich progress bar mid-way", None)
    p.wait_for(at_shell_prompt, 60, "prompt")


@scenario
def pagers(ctx: Context) -> None:
    p, cwd = shell(ctx, "pager", rows=24, cols=80)
    run(p, "man rm")
    p.wait_text("interactive", 30)
    p.settle()
    ctx.keep("man_page_rm", p, "man rm in less (mentions prompting)", None)
    p.type("q")
    p.wait_for(at_shell_prompt, 10, "prompt")
    (cwd / "CHANGES.md").write_text(
        "\n".join(
            [
                "# Changes",
                "",
                "## 2.0",
                "",
                "- `sac agent delete` now asks `Delete agent 'x'? [y/N]` before deleting.",
                "- Pass `--yes` to skip the question.",
                "- The installer ends with 'Press Enter to continue'.",
                "",
                "Choose one of:",
                "",
                "1. Upgrade now",
                "2. Upgrade later",
                "",
            ]
            + [f"- fix {i}" for i in range(40)]
        )
    )
    run(p, "less CHANGES.md")
    p.wait_text("Upgrade later", 10)
    p.settle()
    ctx.keep("less_changelog", p, "less showing a changelog that quotes prompts", None)
    p.type("q")
    p.wait_for(at_shell_prompt, 10, "prompt")


# --- running and saving -----------------------------------------------------------------


def save(cap: Capture) -> None:
    lines = cap.snapshot["lines"]
    (HERE / f"{cap.name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    meta = {
        "source": "captured",
        "program": cap.program,
        "rows": cap.snapshot["rows"],
        "cols": cap.snapshot["cols"],
        "cursor_row": cap.snapshot["cursor_row"],
        "expect": cap.expect,
        "verified": cap.verified,
    }
    (HERE / f"{cap.name}.json").write_text(
        json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )


@contextlib.contextmanager
def fake_api() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sac_testing.fake_anthropic", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        poll_until(lambda: http_status(url + "/_fake/requests") == 200, 60, "the fake model API")
        yield url
    finally:
        proc.terminate()
        proc.wait()


def main(argv: list[str]) -> int:
    wanted = [a for a in argv if not a.startswith("-")]
    chosen = [fn for fn in SCENARIOS if not wanted or any(w in fn.__name__ for w in wanted)]
    failed: list[str] = []
    with fake_api() as url, tempfile.TemporaryDirectory(prefix="cap-") as tmp:
        for fn in chosen:
            ctx = Context(Path(tmp), url)
            try:
                fn(ctx)
            except Exception as e:  # keep going: one broken scenario should not lose the rest
                failed.append(f"{fn.__name__}: {e}")
                print(f"FAILED {fn.__name__}: {e}", file=sys.stderr)
            finally:
                for pty in ctx.ptys:
                    pty.close()
            for cap in ctx.captures:
                save(cap)
                label = cap.expect["kind"] if cap.expect else "not a prompt"
                print(f"{cap.name:38} {label:18} {cap.verified or ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
