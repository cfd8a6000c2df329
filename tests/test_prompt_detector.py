"""The terminal prompt detector against a corpus of real screens, and the screen model.

The corpus (tests/data/prompt_screens/) holds screens captured from real
programs in a PTY by tests/data/prompt_screens/capture.py (Claude Code's
dialogs, apt, rm -i, pip, ssh, git, ...) plus a few hand-written screens for
formats this machine cannot run; each has a hand-written label. The test prints
a table and precision/recall and holds them at the measured levels.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from jupyter_sac.runtimes.prompt_detector import (
    DEFAULT_THRESHOLD,
    DOWN,
    KIND_TEXT,
    UP,
    PromptMatch,
    detect,
    score,
)
from jupyter_sac.runtimes.screen import TerminalScreen
from jupyter_sac.server_extension.hitl import RETYPE_AFTER

CORPUS = Path(__file__).parent / "data" / "prompt_screens"

# The levels measured on the corpus (see the printed table). Any regression fails.
PRECISION_FLOOR = 1.0
RECALL_FLOOR = 1.0
# Without the cursor row only the screen's bottom tells where input is awaited.
NO_CURSOR_PRECISION_FLOOR = 0.95
NO_CURSOR_RECALL_FLOOR = 0.9


@dataclass
class Screen:
    name: str
    lines: list[str]
    cursor_row: int | None
    meta: dict[str, Any]

    @property
    def expect(self) -> dict[str, Any] | None:
        return self.meta["expect"]


def load_corpus() -> list[Screen]:
    screens = []
    for meta_path in sorted(CORPUS.glob("*.json")):
        meta = json.loads(meta_path.read_text("utf-8"))
        text = meta_path.with_suffix(".txt").read_text("utf-8")
        lines = text.split("\n")[: meta["rows"]]
        lines += [""] * (meta["rows"] - len(lines))
        screens.append(Screen(meta_path.stem, lines, meta.get("cursor_row"), meta))
    return screens


SCREENS = load_corpus()


def judge(screen: Screen, match: PromptMatch | None) -> str:
    """TP / FN / FP / TN; a prompt found with the wrong kind, keys or question is a miss."""
    want = screen.expect
    if want is None:
        return "TN" if match is None else "FP"
    if match is None:
        return "FN"
    right = (
        match.kind == want["kind"]
        and [o.key for o in match.options] == want["keys"]
        and want["question"] in match.question
        and match.text_key == want.get("text_key")
    )
    return "TP" if right else "FN"


def evaluate(use_cursor: bool) -> tuple[list[tuple[Screen, PromptMatch | None, str]], float, float]:
    rows = []
    for screen in SCREENS:
        cursor = screen.cursor_row if use_cursor else None
        match = detect(screen.lines, cursor)
        rows.append((screen, match, judge(screen, match)))
    counts = {k: sum(1 for *_, v in rows if v == k) for k in ("TP", "FP", "FN", "TN")}
    precision = counts["TP"] / max(1, counts["TP"] + counts["FP"])
    recall = counts["TP"] / max(1, counts["TP"] + counts["FN"])
    return rows, precision, recall


def table(rows: list[tuple[Screen, PromptMatch | None, str]]) -> str:
    out = [f"{'screen':38} {'source':9} {'expected':18} {'detected':18} score  verdict"]
    for screen, match, verdict in rows:
        best = match or score(screen.lines, screen.cursor_row)
        expected = screen.expect["kind"] if screen.expect else "-"
        found = match.kind if match else "-"
        value = f"{best.score:.2f}" if best else "   - "
        out.append(
            f"{screen.name:38} {screen.meta['source']:9} {expected:18} {found:18} {value}  {verdict}"
        )
    return "\n".join(out)


def test_corpus_is_mostly_real_and_has_both_classes() -> None:
    captured = [s for s in SCREENS if s.meta["source"] == "captured"]
    positives = [s for s in SCREENS if s.expect]
    assert len(SCREENS) >= 30
    assert len(captured) > len(SCREENS) / 2
    assert 10 <= len(positives) <= len(SCREENS) - 10
    kinds = {s.expect["kind"] for s in positives}
    assert {"claude_permission", "yes_no", "press_enter", "numbered_menu"} <= kinds


def test_precision_and_recall(capsys: pytest.CaptureFixture[str]) -> None:
    rows, precision, recall = evaluate(use_cursor=True)
    bare, bare_precision, bare_recall = evaluate(use_cursor=False)
    positives = sum(1 for s in SCREENS if s.expect)
    captured = sum(1 for s in SCREENS if s.meta["source"] == "captured")
    with capsys.disabled():
        print()
        print(table(rows))
        print(
            f"corpus: {len(SCREENS)} screens ({captured} captured, {positives} prompts), "
            f"threshold {DEFAULT_THRESHOLD}"
        )
        print(f"precision={precision:.3f} recall={recall:.3f}")
        misses = [f"{s.name}:{v}" for s, _, v in bare if v in ("FP", "FN")]
        print(
            f"without the cursor row: precision={bare_precision:.3f} recall={bare_recall:.3f}"
            + (f" (misses: {', '.join(misses)})" if misses else "")
        )
    wrong = [f"{s.name}: {v}" for s, _, v in rows if v in ("FP", "FN")]
    assert precision >= max(0.95, PRECISION_FLOOR), wrong
    assert recall >= max(0.9, RECALL_FLOOR), wrong
    assert bare_precision >= NO_CURSOR_PRECISION_FLOOR
    assert bare_recall >= NO_CURSOR_RECALL_FLOOR


@pytest.mark.parametrize("screen", SCREENS, ids=[s.name for s in SCREENS])
def test_screen(screen: Screen) -> None:
    match = detect(screen.lines, screen.cursor_row)
    if screen.expect is None:
        assert match is None, f"{screen.name} is not a prompt, found {match}"
        return
    assert match is not None, (
        f"{screen.name}: no prompt found (best: {score(screen.lines, screen.cursor_row)})"
    )
    assert match.kind == screen.expect["kind"]
    assert [o.key for o in match.options] == screen.expect["keys"]
    assert match.text_key == screen.expect.get("text_key")
    assert screen.expect["question"] in match.question
    assert all(o.label for o in match.options)
    assert 0 <= match.score <= 1


def by_name(name: str) -> Screen:
    return next(s for s in SCREENS if s.name == name)


# --- fingerprints and dedupe --------------------------------------------------------


def replay(screen: Screen) -> TerminalScreen:
    """Draw a corpus screen into a fresh screen model, cursor included."""
    term = TerminalScreen(screen.meta["rows"], screen.meta["cols"])
    term.feed("\x1b[H\x1b[2J" + "\r\n".join(screen.lines).rstrip("\r\n"))
    if screen.cursor_row is not None:
        term.feed(f"\x1b[{screen.cursor_row + 1};2H")
    return term


def test_fingerprint_is_stable_across_redraws_and_selection_moves() -> None:
    menu = by_name("claude_bash_menu")
    first = detect(menu.lines, menu.cursor_row)
    assert first is not None
    # Claude blinks the tool bullet above the dialog while it waits: a redraw.
    term = replay(menu)
    bullet = next(i for i, line in enumerate(menu.lines) if "Writing hi to f.txt" in line)
    for blink in ("\x1b[{}H ", "\x1b[{}H●", "\x1b[{}H "):
        term.feed(blink.format(bullet + 1) + f"\x1b[{menu.cursor_row + 1};2H")
        again = detect(term.lines(), term.cursor_row)
        assert again is not None and again.fingerprint == first.fingerprint
    # Moving the highlight in a numbered menu does not make it another prompt:
    # the digits choose the same options.
    moved = by_name("claude_bash_menu_moved")
    same = detect(moved.lines, moved.cursor_row)
    assert same is not None and same.fingerprint == first.fingerprint
    assert same.options == first.options
    # Nor does a narrower terminal, where Claude wraps the same menu differently.
    resized = by_name("claude_bash_menu_resized")
    assert resized.meta["cols"] < menu.meta["cols"]
    rewrapped = detect(resized.lines, resized.cursor_row)
    assert rewrapped is not None and rewrapped.fingerprint == first.fingerprint
    assert [o.label for o in rewrapped.options] == [o.label for o in first.options]


# Screens of a prompt already in the corpus: the same prompt redrawn, or being typed in.
SAME_PROMPT_AS_BASH_MENU = (
    "claude_bash_menu_moved",
    "claude_bash_menu_resized",
    "claude_ask_text_typing",
)


def test_fingerprints_differ_between_prompts() -> None:
    found = {}
    for screen in SCREENS:
        if screen.expect and screen.name not in SAME_PROMPT_AS_BASH_MENU:
            match = detect(screen.lines, screen.cursor_row)
            assert match is not None
            found[screen.name] = match.fingerprint
    for (a, fa), (b, fb) in itertools.combinations(found.items(), 2):
        assert fa != fb, f"{a} and {b} share a fingerprint"
    # A person typing into a question's text field is still on the same question:
    # its request stays (a new one per keystroke would flood the queue).
    typing = by_name("claude_ask_text_typing")
    assert detect(typing.lines, typing.cursor_row).fingerprint == found["claude_ask_text_question"]
    # Two Bash permissions ask the same question; the command tells them apart.
    one = detect(by_name("claude_bash_menu").lines, by_name("claude_bash_menu").cursor_row)
    assert one is not None and "echo hi > f.txt" in one.context


def test_unnumbered_dialog_keys_follow_the_selection() -> None:
    trust = by_name("claude_trust_dialog")
    match = detect(trust.lines, trust.cursor_row)
    assert match is not None
    assert [o.label for o in match.options] == ["No, exit", "Yes, I trust this folder"]
    assert [o.key for o in match.options] == ["\r", DOWN + "\r"]
    # The user moves the highlight down in the terminal: the keys are relative to
    # it, so this is a new prompt (the old request's keys would now be wrong).
    row = trust.cursor_row
    assert row is not None
    lines = list(trust.lines)
    lines[row] = lines[row].replace("❯", " ", 1)
    lines[row + 1] = "❯" + lines[row + 1][1:]
    after = detect(lines, row + 1)
    assert after is not None
    assert [o.key for o in after.options] == [UP + "\r", "\r"]
    assert after.fingerprint != match.fingerprint


def test_only_the_bottom_counts() -> None:
    prompt = ["Do you want to continue? [Y/n] "]
    assert detect(prompt, 0) is not None
    # Scrolled up, with more output and a shell prompt after it: not waiting.
    later = [*prompt, "Abort.", "user@host:~$ "]
    assert detect(later, 2) is None
    assert detect(later, None) is None
    # Quoted inside code, on the cursor line: the marker is not at the end.
    assert detect(['    read -p "Continue? [y/N] " answer'], 0) is None
    # Typed at a shell prompt, Enter not yet pressed.
    assert detect(["user@host:~$ echo 'Continue? [y/N]'"], 0) is None
    assert detect([], None) is None
    assert detect(["", "   ", ""], 1) is None


def test_yes_no_key_conventions() -> None:
    def keys(line: str) -> list[str]:
        match = detect([line], 0)
        assert match is not None, line
        return [o.key for o in match.options]

    assert keys("Proceed (Y/n)? ") == ["y\r", "n\r"]
    assert keys("Continue? [y/N]: ") == ["y\r", "n\r"]
    assert keys("Are you sure you want to continue connecting (yes/no/[fingerprint])? ") == [
        "yes\r",
        "no\r",
    ]
    assert keys("Proceed ([y]/n)? ") == ["y\r", "n\r"]
    assert keys("Ok to proceed? (y) ") == ["y\r", "n\r"]
    assert keys("Press any key to continue . . .") == ["\r"]
    assert detect(["Ready? "], 0) is None  # a bare question: nothing to choose or fill in


@pytest.mark.parametrize(
    "line",
    [
        "Enter a name: ",
        "Please type the title of the report: ",
        "Project name [demo]: ",
        "Commit message: ",
        "What is your name? ",
        "Enter the path (default: ./out): ",
    ],
)
def test_a_value_asked_for_takes_text(line: str) -> None:
    match = detect(["Setting up.", line], 1)
    assert match is not None and match.kind == KIND_TEXT, line
    assert match.text_key == "" and [o.key for o in match.options] == ["\r"]


@pytest.mark.parametrize(
    "line",
    [
        "Enter passphrase for key '/root/.ssh/id_ed25519': ",
        "Password: ",
        "Enter your API key: ",
        "Enter the verification code: ",
        "GitHub token: ",
        "Enter PIN: ",
    ],
)
def test_secrets_are_never_asked_for(line: str) -> None:
    """An answer is stored with its request: a person types secrets themselves."""
    assert detect(["Connecting.", line], 1) is None


def test_old_style_boxed_dialog_and_no_cursor() -> None:
    boxed = [
        "╭──────────────────────────────────────────────────────╮",
        "│ Bash command                                         │",
        "│                                                      │",
        "│   npm test                                           │",
        "│                                                      │",
        "│ Do you want to proceed?                              │",
        "│ ❯ 1. Yes                                             │",
        "│   2. No, and tell Claude what to do differently (esc)│",
        "╰──────────────────────────────────────────────────────╯",
    ]
    match = detect(boxed)
    assert match is not None and match.kind == "claude_permission"
    assert [o.key for o in match.options] == ["1", "2"]
    assert match.question == "Do you want to proceed?"
    assert "npm test" in match.context


# --- the screen model -------------------------------------------------------------


def test_screen_utf8_split_across_chunks() -> None:
    term = TerminalScreen(5, 40)
    data = "❯ 1. Yes — café 你好\r\n".encode()
    for i in range(len(data)):
        term.feed(data[i : i + 1])
    assert term.lines()[0] == "❯ 1. Yes — café 你好"
    assert "\ufffd" not in term.text()
    # str chunks (terminado hands the watcher text) mix with bytes.
    term.feed("Proceed (Y/n)? ")
    term.feed("✓".encode()[:2])
    term.feed("✓".encode()[2:])
    assert term.lines()[1] == "Proceed (Y/n)? ✓"
    assert term.cursor_row == 1


def test_screen_wide_characters() -> None:
    term = TerminalScreen(4, 20)
    term.feed("你好, world")
    assert term.lines()[0] == "你好, world"
    assert term.cursor_col == 11  # two cells per CJK character
    # Absolute positioning counts cells: column 5 is right after the two wide characters.
    term.feed("\x1b[2;1H是否继续？[Y/n]")
    assert term.lines()[1] == "是否继续？[Y/n]"
    term.feed("\x1b[1;5HX")
    assert term.lines()[0] == "你好X world"
    match = detect(term.lines(), 1)
    assert match is not None and [o.key for o in match.options] == ["y\r", "n\r"]


def test_screen_resize_and_cursor() -> None:
    term = TerminalScreen(24, 80)
    term.feed("line one\r\nline two\r\nDo you want to continue? [Y/n] ")
    assert (term.rows, term.cols, term.cursor_row) == (24, 80, 2)
    term.resize(30, 100)
    assert (term.rows, term.cols) == (30, 100)
    assert len(term.lines()) == 30
    assert term.lines()[2] == "Do you want to continue? [Y/n]"
    term.resize(10, 20)
    assert len(term.lines()) == 10 and all(len(line) <= 20 for line in term.lines())
    term.feed("\x1b[5;3H")
    assert term.cursor_row == 4


def test_screen_follows_cursor_addressed_redraws() -> None:
    """A TUI redraws a region in place; the model shows the result, not the history."""
    term = TerminalScreen(6, 40)
    term.feed("\x1b[?25l\x1b[3;1H Do you want to proceed?\x1b[4;1H ❯ 1. Yes\x1b[5;1H   2. No")
    term.feed("\x1b[4;2H")  # Claude parks its hidden cursor on the highlighted option
    match = detect(term.lines(), term.cursor_row)
    assert match is not None and [o.key for o in match.options] == ["1", "2"]
    # The dialog is answered and erased: no prompt any more.
    term.feed("\x1b[3;1H\x1b[J\x1b[3;1H● Ran 1 command")
    assert detect(term.lines(), term.cursor_row) is None


# --- the keys against the real claude CLI ------------------------------------------


def _capture_module() -> Any:
    spec = importlib.util.spec_from_file_location("capture", CORPUS / "capture.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_detected_keys_answer_the_real_claude_dialogs(fake_anthropic: str, tmp_path: Path) -> None:
    """The keys the detector offers do what their labels say in the pinned claude CLI."""
    cap = _capture_module()
    httpx.delete(fake_anthropic + "/_fake/script")
    ctx = cap.Context(tmp_path, fake_anthropic)

    def current(p: Any) -> PromptMatch | None:
        return detect(p.screen.lines(), p.screen.cursor_row)

    def wait_match(p: Any, want: str) -> PromptMatch:
        def offers(q: Any) -> bool:
            m = current(q)
            return m is not None and any(want in o.label for o in m.options)

        p.wait_for(offers, 90, f"a prompt offering {want!r}")
        match = current(p)
        assert match is not None
        return match

    def choose(p: Any, label: str) -> PromptMatch:
        """Type the key of the option starting with ``label`` as the extension does
        (jupyter_sac.server_extension.hitl): once, and once more, the same key, only
        if the very same prompt still waits a moment later (Claude Code drops keys
        that arrive in the instant its dialog first appears). Never a third time:
        the prompt must then be gone."""
        match = wait_match(p, label)
        key = next(o.key for o in match.options if o.label.startswith(label))

        def gone(q: Any) -> bool:
            # Gone, not just changed: a dialog redrawn with another selection has
            # another fingerprint but still waits.
            return (m := current(q)) is None or m.question != match.question

        p.type(key)
        try:
            # Longer than the extension waits before typing again (RETYPE_AFTER):
            # when the test types twice, the extension would have too.
            p.wait_for(gone, max(5, 2 * RETYPE_AFTER), "the prompt to go")
            return match
        except TimeoutError:
            still = current(p)
            assert still is not None and still.fingerprint == match.fingerprint, (
                "the prompt changed without going: the extension would not type again\n" + p.text()
            )
        p.type(key)
        p.wait_for(gone, 60, f"the prompt to go once {label!r}'s key was typed again")
        return match

    try:
        # The trust dialog first: an unnumbered menu answered with arrow keys.
        cwd = ctx.workdir("trust/project")
        p, _ = cap.start_claude(ctx, "trust", state=cap.claude_state(cwd, projects={}))
        trust = choose(p, "Yes, I trust this folder")
        assert trust.kind == "claude_dialog"
        p.wait_for(cap.claude_ready, 60, "the input box once trusted")

        # Then a Bash permission: option 1 ("Yes") is the digit alone, no Enter.
        cap.script(ctx, [cap.bash_tool("echo hi > f.txt", "Write hi"), "wrote hi"])
        cap.submit(p, "write hi")
        menu = choose(p, "Yes")
        assert menu.kind == "claude_permission" and menu.options[0].key == "1"
        p.wait_text("wrote hi", 60)
        assert (cwd / "f.txt").read_text() == "hi\n"

        # And "No" rejects the next one.
        cap.script(ctx, [cap.bash_tool("echo no > g.txt", "Write no"), "left it"])
        cap.submit(p, "write no")
        menu = choose(p, "No")
        assert menu.options[-1].label == "No" and menu.options[-1].key.isdigit()
        p.wait_for(cap.claude_ready, 60, "the input box")
        assert not (cwd / "g.txt").exists()
    finally:
        for pty in ctx.ptys:
            pty.close()
