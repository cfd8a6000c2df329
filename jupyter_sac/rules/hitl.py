"""Human-in-the-loop policy: which tool calls an agent may make without a human.

Pure functions, no I/O: the service validates and stores policies, the sandbox
extension applies them to every tool call (Claude Code's PreToolUse hook).

A policy::

    {"default": "ask", "allow": ["Read", "Bash(git status:*)"],
     "ask": [], "deny": ["Bash(rm -rf *)"]}

A rule is ``"Tool"`` (every call of that tool; the name may be a glob such as
``mcp__docs__*``) or ``"Tool(pattern)"``, matched against the tool's main
argument: the command for Bash, the path for Read/Write/Edit/MultiEdit/
NotebookEdit/NotebookRead/Glob/Grep (normalised, so ``..`` cannot step out of
an allowed folder), the URL for WebFetch. Patterns are shell globs
(``fnmatch``: ``*`` also matches ``/``); ``"prefix:*"`` is Claude Code's prefix
form (``Bash(git status:*)`` matches ``git status`` and ``git status --short``);
``domain:example.org`` matches a WebFetch host and its subdomains. Precedence
follows Claude Code: deny, then ask, then allow, then the default.

Bash commands are read the way a shell would split them, in the direction that
fails safe:

- an ``allow`` pattern allows a compound command (``a && b; c | d``) only when
  every part is allowed, and never a command with command or process
  substitution (``$(...)``, backticks, ``<(...)``), an unclosed quote or output
  redirected to a file;
- ``deny`` and ``ask`` patterns match the whole command or any part of it, also
  after leading ``VAR=value`` assignments, shell keywords and common wrappers
  (``sudo``, ``env``, ``timeout``, ...) are dropped and quotes removed.

Deny patterns on Bash arguments remain best-effort (a shell can spell a command
in endless ways); the sandbox is the security boundary, the policy decides what
needs a human.
"""

from __future__ import annotations

import fnmatch
import functools
import posixpath
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

ACTIONS = ("allow", "ask", "deny")
MAX_RULES = 200
MAX_RULE_LENGTH = 500
# Longer arguments are not pattern-matched (only whole-tool rules apply): nothing
# legitimate is this long, and scanning megabytes on every tool call is not free.
MAX_SUBJECT_LENGTH = 100_000
# Tools that only read the agent's own sandbox (or its to-do list).
READ_ONLY_TOOLS = ("Read", "Glob", "Grep", "LS", "NotebookRead", "TodoWrite", "BashOutput")
DEFAULT_POLICY: dict[str, Any] = {
    "default": "ask",
    "allow": list(READ_ONLY_TOOLS),
    "ask": [],
    "deny": [],
}

_RULE = re.compile(r"^(?P<tool>[A-Za-z0-9_.:*-]{1,200})(?:\((?P<pattern>.*)\))?$", re.DOTALL)
_PATH_KEYS = ("file_path", "notebook_path", "path")


class PolicyError(ValueError):
    """A policy that cannot be stored; ``field`` is its JSON path (``policy.allow[2]``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Decision:
    action: str  # allow | ask | deny
    rule: str | None
    reason: str


def validate_policy(obj: Any) -> dict[str, Any]:
    """A normalised copy of ``obj``; raises PolicyError naming the bad field."""
    if not isinstance(obj, dict):
        raise PolicyError("policy", "the policy must be a JSON object")
    unknown = sorted(str(k) for k in set(obj) - {"default", *ACTIONS})
    if unknown:
        raise PolicyError(f"policy.{unknown[0][:50]}", "unknown policy field")
    default = obj.get("default", DEFAULT_POLICY["default"])
    if default not in ACTIONS:
        raise PolicyError("policy.default", "default must be one of allow, ask, deny")
    out: dict[str, Any] = {"default": default}
    total = 0
    for action in ACTIONS:
        rules = obj.get(action, [])
        if not isinstance(rules, list):
            raise PolicyError(f"policy.{action}", f"{action} must be a list of rules")
        total += len(rules)
        if total > MAX_RULES:
            raise PolicyError(f"policy.{action}", f"at most {MAX_RULES} rules in a policy")
        for i, rule in enumerate(rules):
            field = f"policy.{action}[{i}]"
            if not isinstance(rule, str) or not rule.strip():
                raise PolicyError(field, "a rule is a non-empty string like 'Bash(git *)'")
            if len(rule) > MAX_RULE_LENGTH:
                raise PolicyError(field, f"rules are at most {MAX_RULE_LENGTH} characters")
            if "\x00" in rule:
                raise PolicyError(field, "rules cannot contain NUL characters")
            if not _RULE.match(rule.strip()):
                raise PolicyError(field, "expected 'Tool' or 'Tool(pattern)'")
        out[action] = [r.strip() for r in rules]
    return out


def timeout_decision(hitl_default: Any) -> str:
    """The decision a request gets when nobody answers in time (setting ``hitl_default``)."""
    return "allow" if hitl_default in ("approve", "allow") else "deny"


_YES_LABEL = re.compile(r"^\s*(?:yes\b|y\)|allow|approve|proceed|continue|ok\b)", re.IGNORECASE)
_NO_LABEL = re.compile(r"^\s*(?:no\b|n\)|deny|reject|cancel|esc\b)|\(esc\)\s*$", re.IGNORECASE)


def default_option(options: list[dict[str, str]] | None, decision: str) -> str | None:
    """The key to type for a terminal prompt decided without choosing an option:
    allow takes the first option that reads like yes (else the first), deny the one that reads
    like no/deny/cancel/esc, else none (the caller presses Escape)."""
    if not options:
        return None
    if decision == "allow":
        # The first option that reads like yes: on Claude Code's trust and bypass
        # dialogs the first option is "No, exit".
        for option in options:
            if _YES_LABEL.search(option.get("label") or ""):
                return option["key"]
        return options[0]["key"]
    for option in options:
        if _NO_LABEL.search(option.get("label") or ""):
            return option["key"]
    return None


# ---- text answers to terminal prompts ---------------------------------------------------

# The longest answer a prompt may ask for (its request says its own limit, at most this).
TEXT_ANSWER_MAX = 2000
# Characters that would act on the terminal instead of being read as the answer: C0/C1
# controls and DEL (Enter, Escape sequences, Ctrl-C, ...), and the invisible bidi
# controls that make text read differently from what is typed.
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def answer_text_problem(text: Any, text_max: int | None) -> str | None:
    """Why ``text`` cannot answer a prompt that takes at most ``text_max`` characters
    (None: it can). It is typed into the terminal as it is, then Enter: one line of
    printable text, never a control character, so an answer can only ever be the
    answer and not keys that act on the terminal (a second line, Escape, Ctrl-C)."""
    if not text_max:
        return "this prompt takes no text: choose one of its options"
    if not isinstance(text, str) or not text:
        return "expected text"
    if len(text) > text_max:
        return f"at most {text_max} characters"
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cs") or ch in _BIDI_CONTROLS:
            return f"one line of printable text (U+{ord(ch):04X} is a control character)"
    return None


# ---- matching -------------------------------------------------------------------------


def _subject(tool: str, tool_input: Any) -> str | None:
    """The argument a rule's pattern is matched against."""
    if not isinstance(tool_input, dict):
        return None
    if tool == "Bash":
        value = tool_input.get("command")
    elif tool == "WebFetch":
        value = tool_input.get("url")
    else:
        value = next((tool_input[k] for k in _PATH_KEYS if k in tool_input), None)
        if isinstance(value, str) and value.strip():
            # "/workspace/output/../private/key" must not pass for /workspace/output/*.
            return posixpath.normpath(value.strip())
        if tool in ("Glob", "Grep"):
            value = tool_input.get("pattern")
    return value.strip() if isinstance(value, str) else None


def _host(value: str) -> str:
    host = value.strip().rstrip(".").lower()
    try:
        return host.encode("idna").decode("ascii")
    except (UnicodeError, ValueError):
        return host


def _pattern_matches(pattern: str, subject: str, tool: str) -> bool:
    if tool == "WebFetch" and pattern.startswith("domain:"):
        try:
            host = urlsplit(subject).hostname or ""
        except ValueError:  # "http://[::1" and friends
            return False
        host, domain = _host(host), _host(pattern[len("domain:") :])
        return bool(domain) and (host == domain or host.endswith("." + domain))
    if pattern.endswith(":*"):
        prefix = pattern[:-2]
        return subject == prefix or subject.startswith(prefix + " ")
    return fnmatch.fnmatchcase(subject, pattern)


def _parse(rule: str) -> tuple[str, str | None] | None:
    """(tool glob, pattern or None for a whole-tool rule)."""
    match = _RULE.match(rule)
    if not match:
        return None
    pattern = match["pattern"]
    return match["tool"], (None if pattern in (None, "", "*") else pattern)


# One shell token: quoted strings, escapes, substitutions, output redirections
# (with the harmless targets &N and /dev/null captured as "safe"), control
# operators, and runs of anything else.
_SHELL_TOKEN = re.compile(
    r"""'[^']*'?
      | "(?:\\.|[^"\\])*"?
      | \\.
      | \$\( | <\( | >\( | `
      | &?>>?\|?[ \t]*(?P<safe>&[0-9]*-?|/dev/null(?![^\s;&|)]))?
      | &&|\|\||\|&|[;&|\n\r]
      | [^'"\\$<>;&|\n\r`]+
      | .""",
    re.VERBOSE | re.DOTALL,
)
_CONTROL = {"&&", "||", "|&", ";", "&", "|", "\n", "\r"}
_SUBSTITUTION = {"$(", "<(", ">(", "`"}
_CLOSED_DOUBLE = re.compile(r'"(?:\\.|[^"\\])*"', re.DOTALL)
_LOOSE_SPLIT = re.compile(r"[;&|\n\r(){}`]|\$\(|<\(|>\(")
_UNQUOTE = re.compile(r"['\"\\]")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_KEYWORDS = {"then", "do", "else", "elif", "if", "while", "until", "!", "{", "(", "time"}
_WRAPPERS = {
    *("sudo", "env", "nohup", "exec", "command", "builtin", "nice", "timeout", "xargs"),
    *("bash", "sh", "zsh", "dash", "eval"),  # bash -c '...' runs its quoted argument
}


def shell_parts(command: str) -> tuple[list[str], bool]:
    """The parts of a shell command split at unquoted control operators, and whether
    the command can be judged from its parts alone (no substitution, no unclosed
    quote, no output written to a file)."""
    parts: list[str] = []
    current: list[str] = []
    analysable = True
    for m in _SHELL_TOKEN.finditer(command):
        token = m.group()
        if token in _CONTROL:
            parts.append("".join(current).strip())
            current = []
            continue
        if token in _SUBSTITUTION:
            analysable = False
        elif token[0] == "'":
            analysable = analysable and len(token) > 1 and token.endswith("'")
        elif token[0] == '"':
            closed = _CLOSED_DOUBLE.fullmatch(token) is not None
            analysable = analysable and closed and "$(" not in token and "`" not in token
        elif token[0] in "&>" and ">" in token and m.group("safe") is None:
            analysable = False  # writes a file: not what "git status:*" allowed
        current.append(token)
    parts.append("".join(current).strip())
    return [p for p in parts if p], analysable


def _unwrapped(part: str) -> str:
    """``part`` without leading assignments, keywords and wrapper commands (and
    the options or numbers those wrappers take)."""
    words = part.split()
    i, after_wrapper = 0, False
    while i < len(words):
        word = words[i]
        if word in _KEYWORDS or _ASSIGNMENT.match(word):
            after_wrapper = False
        elif word in _WRAPPERS:
            after_wrapper = True
        elif not (after_wrapper and (word.startswith("-") or word[:1].isdigit())):
            break
        i += 1
    return " ".join(words[i:])


@functools.lru_cache(maxsize=64)
def _deny_candidates(command: str) -> frozenset[str]:
    """Every spelling of the command and its parts a deny/ask pattern is tried on
    (cached: the deny and the ask rules of one call look at the same command)."""
    parts, _ = shell_parts(command)
    raw = {command, *parts, *(p.strip() for p in _LOOSE_SPLIT.split(command))}
    out: set[str] = set()
    for text in raw:
        out.add(text)
        out.add(_unwrapped(text))
        # Quotes and escapes removed ("r\"m\" -rf /" is rm -rf /); cruder than
        # shlex, and linear, which matters on long heredocs.
        out.add(_unwrapped(_UNQUOTE.sub("", text)))
    out.discard("")
    return frozenset(out)


def _tool_rules(rules: Iterable[str], tool: str) -> list[tuple[str, str | None]]:
    """(rule, pattern) of the rules that name this tool."""
    out = []
    for rule in rules:
        parsed = _parse(rule)
        if parsed and fnmatch.fnmatchcase(tool, parsed[0]):
            out.append((rule, parsed[1]))
    return out


def rule_matches(rule: str, tool: str, tool_input: Any) -> bool:
    """Whether one rule matches a call on its own (the deny/ask reading for Bash)."""
    subject = _subject(tool, tool_input)
    return bool(_first_match([rule], tool, subject, strict=False))


def _first_match(rules: Iterable[str], tool: str, subject: str | None, strict: bool) -> str | None:
    """The first rule matching the call. ``strict`` is the allow reading (every part
    of a Bash command must be allowed), else the deny/ask reading (any part)."""
    candidates = _tool_rules(rules, tool)
    whole = next((rule for rule, pattern in candidates if pattern is None), None)
    if whole is not None:
        return whole
    patterned = [(rule, p) for rule, p in candidates if p is not None]
    if not patterned or subject is None or len(subject) > MAX_SUBJECT_LENGTH:
        return None
    if tool != "Bash":
        return next((r for r, p in patterned if _pattern_matches(p, subject, tool)), None)
    if not strict:
        texts = _deny_candidates(subject)
        return next(
            (r for r, p in patterned if any(_pattern_matches(p, t, tool) for t in texts)), None
        )
    parts, analysable = shell_parts(subject)
    if not analysable or not parts:
        return None
    used: list[str] = []
    for part in parts:
        rule = next((r for r, p in patterned if _pattern_matches(p, part, tool)), None)
        if rule is None:
            return None
        if rule not in used:
            used.append(rule)
    return ", ".join(used)


def decide(policy: dict[str, Any], tool: str, tool_input: Any) -> Decision:
    """What to do with one tool call under ``policy`` (an invalid policy asks)."""
    try:
        policy = validate_policy(policy)
    except PolicyError as e:
        return Decision("ask", None, f"the agent's policy is invalid ({e}): asking")
    tool = tool if isinstance(tool, str) else str(tool)
    subject = _subject(tool, tool_input)
    for action, verb in (("deny", "denied"), ("ask", "needs approval")):
        rule = _first_match(policy[action], tool, subject, strict=False)
        if rule is not None:
            return Decision(action, rule, f"{tool} {verb} by the rule {rule!r}")
    if subject is not None and len(subject) > MAX_SUBJECT_LENGTH:
        checks = [r for r, p in _tool_rules(policy["deny"] + policy["ask"], tool) if p]
        if checks:
            # Its deny/ask patterns were not tried on it: never let it through unseen.
            action = "deny" if policy["default"] == "deny" else "ask"
            return Decision(action, None, f"{tool}: the argument is too long to check")
    rule = _first_match(policy["allow"], tool, subject, strict=True)
    if rule is not None:
        return Decision("allow", rule, f"{tool} allowed by the rule {rule!r}")
    default = policy["default"]
    return Decision(default, None, f"{tool}: no rule matched, the policy's default is {default}")
