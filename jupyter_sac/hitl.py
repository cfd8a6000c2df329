"""Human-in-the-loop policy: which tool calls an agent may make without a human.

Pure functions, no I/O: the service validates and stores policies, the sandbox
extension applies them to every tool call (Claude Code's PreToolUse hook).

A policy::

    {"default": "ask", "allow": ["Read", "Bash(git status:*)"],
     "ask": [], "deny": ["Bash(rm -rf *)"]}

A rule is ``"Tool"`` (every call of that tool) or ``"Tool(pattern)"``, matched
against the tool's main argument: the command for Bash, the path for
Read/Write/Edit/MultiEdit/NotebookEdit/NotebookRead/Glob/Grep, the URL for
WebFetch. Patterns are shell globs (``fnmatch``); ``"prefix:*"`` is Claude
Code's prefix form (``Bash(git status:*)`` matches ``git status`` and
``git status --short``); ``domain:example.org`` matches a WebFetch host and its
subdomains. Precedence follows Claude Code: deny, then ask, then allow, then
the default.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

ACTIONS = ("allow", "ask", "deny")
MAX_RULES = 200
MAX_RULE_LENGTH = 500
# Read-only tools that only look at the agent's own sandbox.
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
    def __init__(self, field: str, message: str):
        super().__init__(message)
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
    unknown = set(obj) - {"default", *ACTIONS}
    if unknown:
        name = sorted(unknown)[0]
        raise PolicyError(f"policy.{name}", f"unknown policy field {name!r}")
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
            if len(rule) > MAX_RULE_LENGTH or "\x00" in rule:
                raise PolicyError(field, f"rules are at most {MAX_RULE_LENGTH} characters")
            if not _RULE.match(rule.strip()):
                raise PolicyError(field, f"{rule!r} is not 'Tool' or 'Tool(pattern)'")
        out[action] = [r.strip() for r in rules]
    return out


def _subject(tool: str, tool_input: Any) -> str | None:
    """The argument a rule's pattern is matched against."""
    if not isinstance(tool_input, dict):
        return None
    if tool == "Bash":
        value = tool_input.get("command")
    elif tool == "WebFetch":
        value = tool_input.get("url")
    elif tool in ("Glob", "Grep"):
        value = tool_input.get("path") or tool_input.get("pattern")
    else:
        value = next((tool_input[k] for k in _PATH_KEYS if k in tool_input), None)
    return value if isinstance(value, str) else None


def _pattern_matches(pattern: str, subject: str, tool: str) -> bool:
    if tool == "WebFetch" and pattern.startswith("domain:"):
        host = (urlsplit(subject).hostname or "").lower()
        domain = pattern[len("domain:") :].lower()
        return host == domain or host.endswith("." + domain)
    if pattern.endswith(":*"):
        prefix = pattern[:-2]
        return subject == prefix or subject.startswith(prefix + " ")
    return fnmatch.fnmatchcase(subject, pattern)


def rule_matches(rule: str, tool: str, tool_input: Any) -> bool:
    match = _RULE.match(rule)
    if not match:
        return False
    if not fnmatch.fnmatchcase(tool, match["tool"]):
        return False
    pattern = match["pattern"]
    if pattern is None or pattern in ("", "*"):
        return True
    subject = _subject(tool, tool_input)
    return subject is not None and _pattern_matches(pattern, subject.strip(), tool)


def decide(policy: dict[str, Any], tool: str, tool_input: Any) -> Decision:
    """What to do with one tool call under ``policy`` (an invalid policy asks)."""
    try:
        policy = validate_policy(policy)
    except PolicyError as e:
        return Decision("ask", None, f"the agent's policy is invalid ({e.message}): asking")
    for action in ("deny", "ask", "allow"):
        for rule in policy[action]:
            if rule_matches(rule, tool, tool_input):
                verb = {"deny": "denied", "ask": "needs approval", "allow": "allowed"}[action]
                return Decision(action, rule, f"{tool} {verb} by the rule {rule!r}")
    default = policy["default"]
    return Decision(default, None, f"{tool}: no rule matched, the policy's default is {default}")
