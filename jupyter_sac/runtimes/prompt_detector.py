"""Is the terminal waiting for a human decision right now? (pure: no I/O)

The input is what a user sees: the screen's display lines
(``jupyter_sac.runtimes.screen.TerminalScreen.lines()``) and the cursor row.
Only the part of the screen where input is awaited counts: a prompt is the
line the cursor sits on (``Continue? [y/N] ▏``) or a selection menu the cursor
is in (Claude Code's dialogs). The same words printed elsewhere (an answer that
quotes ``(y/n)``, a ``cat`` of a script, log lines, a finished prompt with a
shell prompt below it) are not prompts.

Two recognisers score candidates; the best one wins:

- **Menus.** Numbered options (``❯ 1. Yes`` / ``2. No``; bash ``select``'s
  ``1) a`` with an input line ``#?`` below) or an unnumbered list with a
  selection marker (Claude's trust and API-key dialogs: ``❯ No, exit`` /
  ``Yes, I trust this folder``).
- **Inline prompts** on the cursor line: ``(y/n)``, ``[Y/n]``, ``(yes/no)``,
  git's ``[y,n,q,a,d,e,?]``, unzip's ``[y]es, [n]o``, npm's ``? (y)``,
  ``Press Enter/RETURN to continue`` and coreutils questions
  (``rm: remove regular file 'x'?``).

Keys (``Option.key``) are exactly what to write into the PTY to choose:

- Claude Code's numbered menus take the digit alone, with no Enter; verified
  against the real CLI (2.1.327): ``1`` runs the tool, the digit of ``No``
  rejects it. An Enter after it would land in the next screen.
- Claude's unnumbered dialogs take no digits; the arrow keys move the
  selection (wrapping around) and Enter confirms, so keys are relative to the
  option selected now: ``ESC [ B`` × n, then ``\\r``. Because of that the
  fingerprint of such a menu includes the selected row: when the user moves the
  selection the old request is stale and a new one is filed.
- Line-oriented prompts (apt, pip, rm -i, ssh, git add -p, read -p, input())
  need Enter: ``y\\r`` / ``n\\r``; when the prompt spells out ``(yes/no)`` the
  word is sent (ssh rejects a bare ``y``). Single-key prompts (``read -n 1``)
  get the same keys: the key answers and the Enter that follows is an empty
  line for whatever reads next, which is harmless at a shell prompt.
- bash ``select`` menus take the digit and Enter.
- ``Press Enter``/``any key`` prompts take ``\\r``.

Some prompts also take text (``PromptMatch.text_key`` is not None): the answer
is typed after ``text_key``, then Enter.

- Claude Code's questions (the AskUserQuestion tool) end their options with
  ``Type something.``: its digit moves to a text field in place of the label,
  the text fills it and Enter submits it (verified against the real CLI,
  2.1.327: ``3my-notes.txt\\r`` answers "→ my-notes.txt"; Enter on the empty
  field declines the question). That option is not offered on its own.
- A line prompt that asks for a value at the cursor (``Enter a name:``,
  ``Project title [demo]:``, terraform's ``Enter a value:`` for a variable)
  takes the text and Enter (``text_key`` is empty), or Enter alone for its
  default. Prompts for a password, passphrase, token, PIN or key are never
  taken: an answer is stored with its request, so a person types those into the
  terminal themselves.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

DEFAULT_THRESHOLD = 0.6

DOWN = "\x1b[B"
UP = "\x1b[A"

KIND_CLAUDE_PERMISSION = "claude_permission"  # tool approval menus, plan exit
KIND_CLAUDE_QUESTION = "claude_question"  # the AskUserQuestion tool
KIND_CLAUDE_DIALOG = "claude_dialog"  # trust folder, API key, bypass-permissions warning
KIND_YES_NO = "yes_no"
KIND_PRESS_ENTER = "press_enter"
KIND_NUMBERED_MENU = "numbered_menu"
KIND_SELECT_MENU = "select_menu"
KIND_QUESTION = "question"  # a bare question at the cursor; below the threshold
KIND_TEXT = "text"  # a line prompt asking for a value ("Enter a name:")

# The longest text answer a prompt is offered (the request says it; the service
# refuses longer answers, and anything but one line of printable text).
TEXT_ANSWER_LIMIT = 500


@dataclass(frozen=True)
class Option:
    key: str  # exactly the characters to write into the PTY to choose it
    label: str


@dataclass(frozen=True)
class PromptMatch:
    kind: str
    score: float  # 0..1
    question: str  # the question line(s) as shown
    options: tuple[Option, ...]
    fingerprint: str  # same prompt on screen -> same value; another prompt -> another
    context: str = ""  # what the prompt is about (e.g. the command of a Bash permission)
    text_key: str | None = None  # the keys before a text answer; None: it takes no text
    text_row: int | None = None  # the row of the text field that text_key moves to


def detect(
    lines: list[str], cursor_row: int | None = None, threshold: float = DEFAULT_THRESHOLD
) -> PromptMatch | None:
    """The prompt waiting for input on this screen, or None."""
    match = score(lines, cursor_row)
    return match if match is not None and match.score >= threshold else None


def score(lines: list[str], cursor_row: int | None = None) -> PromptMatch | None:
    """The best candidate on this screen whatever its score (for tuning and tests)."""
    view = _View(lines, cursor_row)
    if view.last < 0:
        return None
    candidates = [m for m in (_menu(view), _inline(view)) if m is not None]
    return max(candidates, key=lambda m: m.score, default=None)


# --- the screen, normalised ------------------------------------------------------

_BOX_SIDES = "│┃║"
_RULE = re.compile(r"^\s*[─━═╌╍┄┅┈┉▔▁\-_=╭╮╰╯┌┐└┘+]{8,}\s*$")
_NBSP = str.maketrans({"\xa0": " ", "\u2007": " ", "\u202f": " ", "\t": " "})


def _unbox(line: str) -> str:
    """``│ text │`` -> ``  text`` (older Claude Code drew dialogs in a box)."""
    line = line.translate(_NBSP).rstrip()
    stripped = line.lstrip()
    if stripped[:1] in _BOX_SIDES:
        indent = len(line) - len(stripped)
        inner = stripped[1:]
        if inner.rstrip()[-1:] in _BOX_SIDES:
            inner = inner.rstrip()[:-1]
        line = " " * (indent + 1) + inner.rstrip()
    return line


class _View:
    def __init__(self, lines: list[str], cursor_row: int | None) -> None:
        self.lines = [_unbox(line) for line in lines]
        n = len(self.lines)
        self.last = max((i for i, line in enumerate(self.lines) if line.strip()), default=-1)
        self.cursor = cursor_row if cursor_row is not None and 0 <= cursor_row < n else None
        # A guess at the terminal width: lines this long may continue on the next row.
        self.width = max((len(line) for line in self.lines), default=0)
        anchor = self.last
        if self.cursor is not None:
            anchor = self.cursor
            # Some programs print the question and a newline, then read: the cursor
            # sits on the empty row just below it.
            if not self.lines[anchor].strip() and anchor > 0 and self.lines[anchor - 1].strip():
                anchor -= 1
        self.anchor = anchor

    def blank(self, i: int) -> bool:
        return not self.lines[i].strip()

    def rule(self, i: int) -> bool:
        return bool(_RULE.match(self.lines[i]))


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _fingerprint(kind: str, question: str, context: str, labels: list[str], extra: str) -> str:
    parts = [kind, _norm(question), _norm(context), *(_norm(label) for label in labels), extra]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:20]


def _clip(score: float) -> float:
    return round(max(0.0, min(1.0, score)), 3)


# A line where the user types a command, not answers a question.
_SHELLISH = re.compile(
    r"""^\s*(?:
        [\w.-]+@[\w.-]+:\S*\s?[$#%]       # user@host:path$
      | \[[^\]]*@[^\]]*\]\s?[$#%]         # [user@host dir]$
      | [$#%]\s                            # bare $ / # prompt
      | >>>\s? | \.\.\.\s                  # python REPL
      | In\ \[\d+\]:                       # IPython
      | [❯›>]\s                            # Claude's input box, zsh-style prompts
    )""",
    re.X,
)


# --- menus --------------------------------------------------------------------------

_SELECTOR = "❯›▸▶►→>*"
_NUMBERED = re.compile(
    rf"^(?P<pre>\s*(?P<sel>[{_SELECTOR}]\s*)?)"
    r"(?:(?P<num>\d{1,2})(?P<sep>[.)])|\((?P<pnum>\d{1,2})\))\s+(?P<label>\S.*)$"
)
# ">" too: Go's survey and similar prompt libraries mark the selection with it.
_MARKED = re.compile(r"^(?P<pre>\s*)(?P<sel>[❯›▸▶►>])\s+(?P<label>\S.*)$")
# Claude Code's dialogs end with a footer like "Enter to confirm · Esc to cancel".
_CLAUDE_FOOTER = re.compile(r"\bEsc to (?:cancel|reject|exit|interrupt)\b")
_HINT = re.compile(
    r"(?:\b(?:esc|enter|return|tab|ctrl|shift|space)\b|↑|↓).{0,30}\bto\b\s+\w+", re.I
)
_MENU_INPUT = re.compile(r"(?:[?:>]|#\?)\s*$")
_CLAUDE_PERMISSION = re.compile(
    r"^(?:Do you want to (?:proceed|make (?:this|these) edits?|create|allow|delete|overwrite|run)"
    r"|Would you like to proceed|Exit plan mode\?)",
    re.I,
)
# The free-text option of Claude Code's questions (its label until something is typed).
_TYPE_SOMETHING = re.compile(r"^Type something\b", re.I)
_CLAUDE_DIALOG = re.compile(
    r"trust (?:this folder|the files)|one you trust|use this API key|Bypass Permissions mode", re.I
)


@dataclass
class _Item:
    row: int
    num: int | None
    label: str
    label_col: int
    selected: bool
    sep: str = "."


def _numbered_runs(view: _View) -> list[list[_Item]]:
    """Runs of options numbered 1, 2, 3... (descriptions, wraps and rules may sit between)."""
    items: list[_Item] = []
    for i, line in enumerate(view.lines):
        m = _NUMBERED.match(line)
        if m:
            items.append(
                _Item(
                    i,
                    int(m["num"] or m["pnum"]),
                    m["label"].strip(),
                    m.start("label"),
                    bool(m["sel"] and m["sel"].strip()),
                    m["sep"] or "()",
                )
            )
    runs: list[list[_Item]] = []
    for k, first in enumerate(items):
        if first.num != 1:
            continue
        run = [first]
        for item in items[k + 1 :]:
            prev = run[-1]
            assert prev.num is not None and item.num is not None
            # Numbers go up one by one; after two in a row a gap is allowed
            # (gpg's "(14) Existing key from card" after "(4)").
            step_ok = item.num == prev.num + 1 or (len(run) >= 2 and item.num > prev.num)
            if not step_ok or item.sep != prev.sep:
                if item.num == 1:
                    break
                continue
            # Only continuation lines, descriptions, rules or blanks may lie between.
            between = range(prev.row + 1, item.row)
            if len(between) > 4 or any(
                not view.blank(j)
                and not view.rule(j)
                and _indent(view.lines[j]) < prev.label_col - 2
                for j in between
            ):
                break
            run.append(item)
        if len(run) >= 2:
            runs.append(run)
    return runs


def _marked_runs(view: _View) -> list[list[_Item]]:
    """Unnumbered options around a selection marker: ``❯ No, exit`` / ``  Yes, I trust``."""
    runs: list[list[_Item]] = []
    for i, line in enumerate(view.lines):
        m = _MARKED.match(line)
        if not m or _NUMBERED.match(line):
            continue
        col = m.start("label")
        run = [_Item(i, None, m["label"].strip(), col, True)]

        def sibling(j: int, col: int = col) -> _Item | None:
            text = view.lines[j]
            if len(text) <= col or text[:col].strip() or text[col] == " ":
                return None
            return _Item(j, None, text[col:].strip(), col, False)

        j = i - 1
        while j >= 0 and (item := sibling(j)) is not None:
            run.insert(0, item)
            j -= 1
        j = i + 1
        while j < len(view.lines) and (item := sibling(j)) is not None:
            run.append(item)
            j += 1
        if 2 <= len(run) <= 9:
            runs.append(run)
    return runs


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _labels(view: _View, run: list[_Item]) -> list[str]:
    """Each option's label with its wrapped continuation lines."""
    labels = []
    for k, item in enumerate(run):
        parts = [item.label]
        # Unnumbered options are one row each: the next row is the next option.
        stop = run[k + 1].row if k + 1 < len(run) else min(len(view.lines), item.row + 4)
        for j in range(item.row + 1, stop if item.num is not None else item.row + 1):
            text = view.lines[j]
            if view.blank(j) or view.rule(j) or _indent(text) < item.label_col:
                break
            parts.append(text.strip())
        labels.append(_norm(" ".join(parts))[:300])
    return labels


def _run_end(view: _View, run: list[_Item]) -> int:
    """The last row of the run, including the last option's continuation lines."""
    end = run[-1].row
    j = end + 1
    while (
        run[-1].num is not None
        and j < len(view.lines)
        and not view.blank(j)
        and not view.rule(j)
        and _indent(view.lines[j]) >= run[-1].label_col
    ):
        end = j
        j += 1
    return end


def _paragraph(view: _View, row: int, limit: int) -> tuple[int, str]:
    """The block of non-blank, non-rule lines around ``row``, above row ``limit``."""

    def text(j: int) -> bool:
        return not view.blank(j) and not view.rule(j)

    # Upwards only through a sentence that wrapped onto the question's row.
    start = row
    while (
        start - 1 >= 0
        and row - start < 3
        and text(start - 1)
        and not view.lines[start - 1].rstrip().endswith((".", "?", "!", ":", "…"))
        and view.lines[start - 1].lstrip()[:1] not in "✔✓✗?$#>❯●"
        and _indent(view.lines[start - 1]) == _indent(view.lines[row])
    ):
        start -= 1
    end = row
    while end + 1 < limit and end - row < 3 and text(end + 1):
        end += 1
    return start, _norm(" ".join(view.lines[j].strip() for j in range(start, end + 1)))


def _question_above(view: _View, first: int) -> tuple[str, int, int]:
    """(question, its first row, the dialog's top row) above a menu starting at ``first``."""
    top = max(0, first - 14)
    for j in range(first - 1, top - 1, -1):
        if view.rule(j) and not view.lines[j].lstrip().startswith(("╌", "┄", "┈", "-")):
            top = j + 1
            break
    asked = None
    for j in range(first - 1, top - 1, -1):
        if "?" in view.lines[j] and not view.rule(j):
            asked = j
            break
    if asked is not None:
        start, text = _paragraph(view, asked, first)
        # Keep the question sentence and what follows it in its paragraph.
        return text, start, top
    for j in range(top, first):
        if not view.blank(j) and not view.rule(j):
            return _norm(view.lines[j]), j, top
    return "", first, top


def _context(view: _View, top: int, stop: int) -> str:
    rows = [
        view.lines[j].strip() for j in range(top, stop) if not view.blank(j) and not view.rule(j)
    ]
    return "\n".join(rows[-12:])


def _menu(view: _View) -> PromptMatch | None:
    best: PromptMatch | None = None
    for run in _numbered_runs(view) + _marked_runs(view):
        match = _score_menu(view, run)
        if match is not None and (best is None or match.score > best.score):
            best = match
    return best


def _score_menu(view: _View, run: list[_Item]) -> PromptMatch | None:
    numbered = run[0].num is not None
    first, end = run[0].row, _run_end(view, run)
    selected = [k for k, item in enumerate(run) if item.selected]
    labels = _labels(view, run)
    cursor = view.cursor

    # An input line right below the menu (bash select's "#?", "Enter choice:").
    input_row = None
    for j in range(end + 1, min(len(view.lines), end + 3)):
        if view.blank(j):
            continue
        text = view.lines[j].strip()
        if _MENU_INPUT.search(text) and not _SHELLISH.match(text) and len(text) < 80:
            input_row = j
        break
    style = "tui" if selected else ("input" if input_row is not None else "list")
    if style == "list":
        return None  # a numbered list in text, with nothing waiting on it

    # Footer hints (Esc to cancel · Enter to confirm) and blank rows below are part of it.
    tail_start = (input_row if style == "input" else end) + 1
    hints: list[str] = []
    j = tail_start
    while j < len(view.lines) and j - tail_start < 5:
        if view.blank(j) or view.rule(j):
            j += 1
            continue
        if _HINT.search(view.lines[j]) and len(view.lines[j].strip()) < 100:
            hints.append(view.lines[j])
            j += 1
            continue
        break
    below = sum(1 for k in range(j, view.last + 1) if not view.blank(k))

    s = 0.3
    if style == "tui":
        s += 0.2
        if cursor is not None and first <= cursor <= end:
            s += 0.2
        elif cursor is not None and not first - 1 <= cursor <= j + 1:
            s -= 0.3  # the cursor is elsewhere: someone is typing somewhere else
        if numbered and len(selected) != 1:
            s -= 0.1
    else:
        assert input_row is not None
        if cursor is None or cursor == input_row:
            s += 0.3
        else:
            s -= 0.3
    if hints:
        s += 0.15
    s -= min(0.6, 0.15 * below)
    if below == 0:
        s += 0.1  # nothing printed after it: the program is waiting on it

    question, q_row, top = _question_above(view, first)
    if style == "input":
        question = _norm(view.lines[input_row or 0])
    if question.rstrip().endswith("?") or "?" in question:
        s += 0.1
    kind = KIND_NUMBERED_MENU if numbered else KIND_SELECT_MENU
    claude_footer = style == "tui" and any(_CLAUDE_FOOTER.search(h) for h in hints)
    if style == "tui":
        if _CLAUDE_PERMISSION.search(question):
            kind = KIND_CLAUDE_PERMISSION
            s += 0.1
        elif claude_footer and (
            any("chat about this" in x.lower() for x in labels)
            or any("Enter to select" in h for h in hints)
        ):
            kind = KIND_CLAUDE_QUESTION
            s += 0.1
        elif claude_footer or _CLAUDE_DIALOG.search(question):
            kind = KIND_CLAUDE_DIALOG
            s += 0.1
    if not question:
        s -= 0.2

    if numbered:
        suffix = "\r" if style == "input" else ""
        keys = [f"{item.num}{suffix}" for item in run]
        extra = ""
    else:
        at = selected[0]
        keys = [(DOWN * (k - at) if k > at else UP * (at - k)) + "\r" for k in range(len(run))]
        extra = f"selected={at}"
    options = tuple(Option(key, label) for key, label in zip(keys, labels, strict=True))
    context = _context(view, top, q_row) if style == "tui" else ""
    text_at = _free_text_option(view, run, labels) if kind == KIND_CLAUDE_QUESTION else None
    if text_at is not None:
        # Its label is what a person is typing there: the same question while they type.
        labels = [*labels[:text_at], "Type something.", *labels[text_at + 1 :]]
    fingerprint = _fingerprint(kind, question, context, labels, extra)
    text_key = text_row = None
    if text_at is not None:
        text_key, text_row = options[text_at].key, run[text_at].row
        options = options[:text_at] + options[text_at + 1 :]
    return PromptMatch(kind, _clip(s), question, options, fingerprint, context, text_key, text_row)


def _free_text_option(view: _View, run: list[_Item], labels: list[str]) -> int | None:
    """Which option of a Claude Code question is its text field: ``Type something.``,
    the last option above the rule that sets ``Chat about this`` apart (its label is
    the text once a person types there). Numbered questions only: the digit focuses
    the field, where Enter would submit it empty."""
    if run[0].num is None or len(run) < 3 or not labels[-1].lower().startswith("chat about"):
        return None
    at = len(run) - 2
    if _TYPE_SOMETHING.match(labels[at]) or any(
        view.rule(j) for j in range(run[at].row + 1, run[-1].row)
    ):
        return at
    return None


# --- inline prompts on the cursor line --------------------------------------------

# After the marker only punctuation, a default in brackets and spaces may follow.
_END = r"\s*[?:>]?\s*(?:\[[^\]]{0,12}\]|\((?:default:?\s*)?[^)]{0,12}\))?\s*[?:>]?\s*$"
_YES_NO = re.compile(
    r"[(\[]\s*\[?(?P<y>y(?:es)?)\]?\s*/\s*\[?(?P<n>n(?:o)?)\]?"
    r"(?:\s*/\s*[^()\[\]]{0,20}(?:\[[^\]]{0,20}\])?)*\s*[)\]]" + _END,
    re.I,
)
_YN_COMPACT = re.compile(r"\[(?P<letters>[yYnN][a-zA-Z?]{1,5})\]" + _END)
_ONE_DEFAULT = re.compile(r"\?\s*\((?P<d>y|yes|n|no)\)" + _END, re.I)
_LETTER_LIST = re.compile(r"\[(?P<letters>[a-zA-Z?](?:\s*,\s*[a-zA-Z?]){1,12})\]" + _END)
_BRACKET_WORDS = re.compile(r"\[(?P<k>\w)\](?P<rest>\w*)")
_RETYPE = re.compile(r"please (?:type|answer|enter) ['\"]?yes['\"]?,? (?:or )?['\"]?no['\"]?", re.I)
_PRESS_ENTER = re.compile(
    r"\b(?:press|hit|type)\s+(?:the\s+)?[<\[]?(?:enter|return|any\s+key|a\s+key)[>\]]?", re.I
)
_COREUTILS = re.compile(
    r"^[\w.-]+: (?:remove|overwrite|replace|descend into|delete|unlink|try to remove)\b.*\?\s*$"
)
_CONFIRM_WORDS = re.compile(
    r"\b(?:continue|proceed|perform|apply|sure|overwrite|delete|destroy|remove|replace|"
    r"confirm|ok|okay)\b",
    re.I,
)
_ANSWER_LINE = re.compile(
    r"^(?:enter a value|enter (?:your )?(?:answer|choice)|answer|your (?:answer|choice)|"
    r"type [\"']?yes[\"']? to (?:confirm|continue|proceed))\s*:\s*$",
    re.I,
)
_QUOTED_YES = re.compile(r"['\"]yes['\"]", re.I)
KIND_ANSWER_LINE = "_answer_line"
# A value asked for at the cursor: "Enter a name:", "Please type the title:",
# "Project name [demo]:", "Commit message:". Not a bare question ("Ready?"), which
# stays below the threshold, and never a secret (below).
_ASK_VERB = re.compile(
    r"^(?:please\s+)?(?:enter|type|input|provide|specify|give)\b[^:?]{0,80}"
    r"(?:\[[^\]]{0,40}\]|\([^)]{0,40}\))?\s*[:?]\s*$",
    re.I,
)
_ASK_NOUN = re.compile(
    r"^[A-Za-z][\w .'/-]{0,40}?\b(?:name|title|message|subject|path|directory|folder|"
    r"file(?:name)?|url|e-?mail|description|summary|comment|reason|version|branch|tag|label|"
    r"value|answer|host(?:name)?|port|user(?:name)?)\s*(?:\[[^\]]{0,40}\]|\([^)]{0,40}\))?"
    r"\s*[:?]\s*$",
    re.I,
)
_SECRET_PROMPT = re.compile(
    r"pass(?:word|phrase|code)|\btoken\b|secret|\bpin\b|api[ _-]?key|private key|\botp\b|"
    r"one[- ]time|verification code|\b2fa\b|credential",
    re.I,
)
_TEXT_OPTIONS = (Option("\r", "Press Enter (leave it empty: the program's default)"),)

_LETTER_LABELS = {
    "y": "yes",
    "n": "no",
    "q": "quit",
    "a": "all",
    "d": "none of the rest",
    "e": "edit",
    "?": "help",
    "s": "split",
    "j": "leave undecided, next",
    "k": "leave undecided, previous",
    "g": "go to",
    "/": "search",
}


def _wrapped_from(view: _View, row: int) -> int:
    """The first row of the line that wrapped onto ``row`` (a guess: full-width rows)."""
    start = row
    while (
        start > 0
        and row - start < 3
        and view.width >= 40
        and len(view.lines[start - 1]) >= view.width - 1
    ):
        start -= 1
    return start


def _inline(view: _View) -> PromptMatch | None:
    row = view.anchor
    if row < 0 or view.blank(row):
        return None
    text = view.lines[row].strip()
    if _SHELLISH.match(view.lines[row]):
        return None
    start = row
    kind, options, s = _classify_inline(text)
    if kind is None:
        # The prompt may have wrapped: read it together with the rows it came from.
        start = _wrapped_from(view, row)
        if start == row or _SHELLISH.match(view.lines[start]):
            return None
        text = "".join(view.lines[j] for j in range(start, row + 1)).strip()
        kind, options, s = _classify_inline(text)
        if kind is None:
            return None
    if kind == KIND_ANSWER_LINE:
        found = _question_for_answer_line(view, start)
        if found is not None:
            text, start, options = found
            kind, s = KIND_YES_NO, 0.6
        elif _SECRET_PROMPT.search(" ".join(view.lines[max(0, start - 2) : row + 1])):
            return None
        else:
            # "Enter a value:" with no yes/no question above: a value is asked for
            # (terraform's variables), by what is printed above it.
            kind, options, s = KIND_TEXT, _TEXT_OPTIONS, 0.45
    text_key = "" if kind == KIND_TEXT else None
    # Where the prompt sits: on the cursor, with nothing printed after it.
    after = sum(1 for k in range(row + 1, view.last + 1) if not view.blank(k))
    if view.cursor is not None and view.cursor in (row, row + 1):
        s += 0.2
    elif view.cursor is None:
        s += 0.1
    s -= min(0.5, 0.2 * after)

    ctx_rows = [
        view.lines[j].strip()
        for j in range(max(0, start - 3), start)
        if not view.blank(j) and not view.rule(j)
    ]
    context = "\n".join(ctx_rows)
    labels = [o.label for o in options]
    fingerprint = _fingerprint(kind, text, context, labels, "")
    return PromptMatch(kind, _clip(s), text, options, fingerprint, context, text_key)


def _question_for_answer_line(view: _View, row: int) -> tuple[str, int, tuple[Option, ...]] | None:
    """The yes/no question a few rows above an answer line, with the answer line."""
    block: list[int] = []
    for j in range(row - 1, max(-1, row - 6), -1):
        if view.blank(j):
            continue
        if _SHELLISH.match(view.lines[j]):
            break
        block.insert(0, j)
    asked = [j for j in block if view.lines[j].rstrip().endswith("?")]
    if not asked:
        return None
    q = asked[-1]
    question = _norm(view.lines[q])
    if not _CONFIRM_WORDS.search(question) and not re.match(
        r"^(?:do|are|is|shall|should|would|will|can)\b", question, re.I
    ):
        return None
    spelled = any(_QUOTED_YES.search(view.lines[j]) for j in block)
    text = _norm(" ".join(view.lines[j] for j in range(q, row + 1) if not view.blank(j)))
    return text, q, _yes_no("yes" if spelled else "y", "no" if spelled else "n")


def _yes_no(yes: str, no: str) -> tuple[Option, ...]:
    word = len(yes) > 1 or len(no) > 1
    return (
        Option("yes\r" if word else "y\r", "Yes"),
        Option("no\r" if word else "n\r", "No"),
    )


def _classify_inline(text: str) -> tuple[str | None, tuple[Option, ...], float]:
    m = _YES_NO.search(text)
    if m:
        return KIND_YES_NO, _yes_no(m["y"], m["n"]), 0.7
    m = _LETTER_LIST.search(text)
    if m:
        letters = [c.strip() for c in m["letters"].split(",")]
        options = tuple(Option(c + "\r", _LETTER_LABELS.get(c.lower(), c)) for c in letters)
        return KIND_YES_NO, options, 0.65
    m = _YN_COMPACT.search(text)
    if m:
        letters = list(m["letters"])
        options = tuple(Option(c.lower() + "\r", _LETTER_LABELS.get(c.lower(), c)) for c in letters)
        return KIND_YES_NO, options, 0.65
    words = _BRACKET_WORDS.findall(text)
    if len(words) >= 2 and text.rstrip().endswith((":", "?")):
        options = tuple(Option(k + "\r", f"{k}{rest}") for k, rest in words)
        return KIND_YES_NO, options, 0.65
    m = _ONE_DEFAULT.search(text)
    if m:
        word = len(m["d"]) > 1
        return KIND_YES_NO, _yes_no("yes" if word else "y", "no" if word else "n"), 0.65
    if _RETYPE.search(text):
        return KIND_YES_NO, _yes_no("yes", "no"), 0.7
    if _PRESS_ENTER.search(text):
        return KIND_PRESS_ENTER, (Option("\r", "Continue"),), 0.65
    if _ANSWER_LINE.match(text):
        # "Enter a value:" under "Do you want to perform these actions?": the
        # question is above. Classified by the caller, which can see it.
        return KIND_ANSWER_LINE, (), 0.0
    if _ASK_VERB.match(text) or _ASK_NOUN.match(text):
        if _SECRET_PROMPT.search(text):
            return None, (), 0.0
        return KIND_TEXT, _TEXT_OPTIONS, 0.45
    if text.rstrip().endswith("?"):
        if _COREUTILS.match(text):
            return KIND_YES_NO, _yes_no("y", "n"), 0.6
        if _CONFIRM_WORDS.search(text):
            return KIND_YES_NO, _yes_no("y", "n"), 0.45
        return KIND_QUESTION, (), 0.3
    return None, (), 0.0
