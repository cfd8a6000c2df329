"""HITL policy rules (pure): precedence, patterns, validation, odd input."""

from __future__ import annotations

import pytest

from jupyter_sac.hitl import DEFAULT_POLICY, PolicyError, decide, validate_policy


def act(policy: dict, tool: str, tool_input: object = None) -> str:
    return decide(policy, tool, tool_input if tool_input is not None else {}).action


def test_default_policy_allows_reading_and_asks_for_the_rest() -> None:
    assert act(DEFAULT_POLICY, "Read", {"file_path": "/workspace/a.py"}) == "allow"
    assert act(DEFAULT_POLICY, "Grep", {"pattern": "x"}) == "allow"
    assert act(DEFAULT_POLICY, "Bash", {"command": "ls"}) == "ask"
    assert act(DEFAULT_POLICY, "Write", {"file_path": "/workspace/a.py"}) == "ask"
    assert act(DEFAULT_POLICY, "mcp__github__create_issue") == "ask"


def test_deny_beats_ask_beats_allow_beats_default() -> None:
    policy = {
        "default": "allow",
        "allow": ["Bash"],
        "ask": ["Bash(git push:*)"],
        "deny": ["Bash(rm -rf *)", "Bash(git push --force:*)"],
    }
    assert act(policy, "Bash", {"command": "ls -la"}) == "allow"
    assert act(policy, "Bash", {"command": "git push origin main"}) == "ask"
    assert act(policy, "Bash", {"command": "git push --force origin"}) == "deny"
    assert act(policy, "Bash", {"command": "rm -rf /workspace"}) == "deny"
    assert act(policy, "Edit", {"file_path": "x"}) == "allow"
    verdict = decide(policy, "Bash", {"command": "rm -rf /"})
    assert verdict.rule == "Bash(rm -rf *)" and "rm -rf" in verdict.reason


def test_prefix_paths_domains_and_tool_globs() -> None:
    policy = {
        "default": "deny",
        "allow": [
            "Bash(git status:*)",
            "Write(/workspace/output/*)",
            "WebFetch(domain:example.org)",
            "mcp__docs__*",
        ],
    }
    assert act(policy, "Bash", {"command": "git status"}) == "allow"
    assert act(policy, "Bash", {"command": "git status --short"}) == "allow"
    assert act(policy, "Bash", {"command": "git statusx"}) == "deny"
    assert act(policy, "Write", {"file_path": "/workspace/output/plot.png"}) == "allow"
    assert act(policy, "Write", {"file_path": "/workspace/private/key"}) == "deny"
    assert act(policy, "WebFetch", {"url": "https://docs.example.org/a"}) == "allow"
    assert act(policy, "WebFetch", {"url": "https://example.org.evil.com/"}) == "deny"
    assert act(policy, "mcp__docs__search") == "allow"


@pytest.mark.parametrize("tool_input", [None, "a string", ["list"], {"command": 42}, {}])
def test_patterns_never_match_missing_or_odd_input(tool_input: object) -> None:
    policy = {"default": "ask", "allow": ["Bash(ls*)"]}
    assert decide(policy, "Bash", tool_input).action == "ask"


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ("allow everything", "policy"),
        ({"default": "maybe"}, "policy.default"),
        ({"allow": "Read"}, "policy.allow"),
        ({"allow": [""]}, "policy.allow[0]"),
        ({"deny": ["Bash(x)", 3]}, "policy.deny[1]"),
        ({"ask": ["x" * 501]}, "policy.ask[0]"),
        ({"allow": ["Bad Tool Name(x)"]}, "policy.allow[0]"),
        ({"allow": ["Read"] * 201}, "policy.allow"),
        ({"allow": ["Read\x00"]}, "policy.allow[0]"),
        ({"defualt": "ask"}, "policy.defualt"),
    ],
)
def test_invalid_policies_name_the_field(policy: object, field: str) -> None:
    with pytest.raises(PolicyError) as info:
        validate_policy(policy)
    assert info.value.field == field


def test_an_invalid_stored_policy_asks_rather_than_allows() -> None:
    assert decide({"default": "sometimes"}, "Bash", {"command": "ls"}).action == "ask"


def test_unicode_commands_and_paths() -> None:
    policy = {"default": "ask", "allow": ["Bash(echo 漢字*)", "Read(/workspace/données/*)"]}
    assert act(policy, "Bash", {"command": "echo 漢字 ok"}) == "allow"
    assert act(policy, "Read", {"file_path": "/workspace/données/a.csv"}) == "allow"
