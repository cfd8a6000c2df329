"""The agent's Claude Code configuration: seeded so the CLI never stops on a
first-run screen, with SAC's hooks installed.

``CLAUDE_CONFIG_DIR`` holds ``.claude.json`` (onboarding state, approved API
keys, trusted projects) and ``settings.json`` (hooks, permissions). Both are
merged, never replaced: what the user or Claude Code itself wrote stays, and
SAC's own hook entries are recognised by their URL (or, from before SAC's hooks
were http hooks, their command) and rewritten in place.
Writes are atomic (temp file, then rename) so a crash never leaves half a file.

SAC's hooks are Claude Code ``http`` hooks: claude posts each event straight to
the sandbox's server extension, which already runs, instead of starting a
Python process per event (about 120 ms each, several per turn).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..rules import templates as rules

# The extension's hook routes (under the server's base URL).
HOOKS_PATH = "sac/api/hooks/"
PRE_TOOL_USE_ROUTE = "pre-tool-use"
CAPTURE_ROUTE = "transcript"
# What SAC's hooks were before they were http hooks: recognised so an agent's
# settings from an older version are rewritten, not kept beside the new ones.
LEGACY_HOOK_MODULE = "jupyter_sac.runtimes.claude_hook"
# The events after which the transcript has new lines to capture: Stop (a turn's
# end), UserPromptSubmit (a turn interrupted before its Stop is taken at the next
# prompt), SubagentStop (a subagent's own transcript), SessionEnd (the lines
# written after the last Stop, and /clear), PreCompact (before a compaction).
# Not PostToolUse and the like: nothing new needs taking there.
CAPTURE_HOOK_EVENTS = ("UserPromptSubmit", "Stop", "SubagentStop", "SessionEnd", "PreCompact")
CAPTURE_HOOK_TIMEOUT = 60
# The hook secret reaches the extension as a header that claude fills in from its
# own environment (the secret is never written to settings.json); the mode tells a
# headless chat turn (nobody to show a menu to) from an interactive claude.
SECRET_HEADER = "X-SAC-Hook-Secret"
MODE_HEADER = "X-SAC-Claude-Mode"
HOOK_ENV_VARS = ("SAC_HOOK_SECRET", "SAC_CLAUDE_MODE")


def _hook_url(entry: Any) -> str:
    return str(entry.get("url", "")) if isinstance(entry, dict) else ""


def _is_sac_hook(entry: Any) -> bool:
    return isinstance(entry, dict) and any(
        isinstance(h, dict)
        and (
            (h.get("type") == "http" and HOOKS_PATH in _hook_url(h))
            or LEGACY_HOOK_MODULE in str(h.get("command", ""))
        )
        for h in entry.get("hooks") or ()
    )


def http_hook(url: str, timeout: int, *, block_on_failure: bool) -> dict[str, Any]:
    """One of SAC's hooks: a POST of the event to ``url`` with the secret header."""
    hook: dict[str, Any] = {
        "type": "http",
        "url": url,
        "timeout": timeout,
        "headers": {SECRET_HEADER: "$SAC_HOOK_SECRET", MODE_HEADER: "$SAC_CLAUDE_MODE"},
        "allowedEnvVars": list(HOOK_ENV_VARS),
    }
    if block_on_failure:
        # Claude Code's default for a failed http hook (unreachable, non-2xx,
        # timed out) is to go on as if it had not run: the tool would run unchecked.
        hook["onFailure"] = "block"
    return hook


def merge_hooks(settings: dict[str, Any], hooks_url: str, pre_tool_timeout: int) -> dict[str, Any]:
    """``settings`` with SAC's hooks (posting to ``hooks_url``, the extension's
    ``…/sac/api/hooks/``) installed exactly once per event (pure)."""
    out = dict(settings)
    hooks = dict(out.get("hooks") or {}) if isinstance(out.get("hooks"), dict) else {}
    base = hooks_url.rstrip("/") + "/"
    wanted: dict[str, dict[str, Any]] = {
        event: http_hook(base + CAPTURE_ROUTE, CAPTURE_HOOK_TIMEOUT, block_on_failure=False)
        for event in CAPTURE_HOOK_EVENTS
    }
    # Every tool: the HITL policy may name any tool (and is changed while claude
    # runs), and a chat turn's bypass mode leaves this hook the only check.
    wanted["PreToolUse"] = http_hook(
        base + PRE_TOOL_USE_ROUTE, pre_tool_timeout, block_on_failure=True
    )
    for event in list(hooks):
        # Events SAC no longer hooks lose SAC's entries (the user's stay).
        if event not in wanted and isinstance(hooks[event], list):
            kept = [e for e in hooks[event] if not _is_sac_hook(e)]
            if kept:
                hooks[event] = kept
            else:
                del hooks[event]
    for event, hook in wanted.items():
        entries = [e for e in hooks.get(event) or () if not _is_sac_hook(e)]
        sac_entry: dict[str, Any] = {"hooks": [hook]}
        if event == "PreToolUse":
            sac_entry["matcher"] = "*"
        # SAC's hook first: HITL must decide before anything else a user added.
        hooks[event] = [sac_entry, *entries]
    out["hooks"] = hooks
    return out


def merge_state(
    state: dict[str, Any], workspace: str, api_key: str | None, version: str | None
) -> dict[str, Any]:
    """``.claude.json`` with onboarding done, the key approved and the workspace trusted."""
    out = dict(state)
    out["hasCompletedOnboarding"] = True
    if version:
        out.setdefault("lastOnboardingVersion", version)
    out.setdefault("theme", "dark")
    out["bypassPermissionsModeAccepted"] = True
    if api_key:
        responses = dict(out.get("customApiKeyResponses") or {})
        # Claude Code remembers approved keys by their last 20 characters.
        suffix = api_key[-20:]
        approved = [k for k in responses.get("approved") or () if k != suffix]
        responses["approved"] = [*approved, suffix]
        responses["rejected"] = [k for k in responses.get("rejected") or () if k != suffix]
        out["customApiKeyResponses"] = responses
    projects = dict(out.get("projects") or {})
    project = dict(projects.get(workspace) or {})
    project.update(
        {
            "hasTrustDialogAccepted": True,
            "hasCompletedProjectOnboarding": True,
            "projectOnboardingSeenCount": max(
                1, int(project.get("projectOnboardingSeenCount") or 0)
            ),
        }
    )
    project.setdefault("allowedTools", [])
    projects[workspace] = project
    out["projects"] = projects
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def seed_claude_config(
    config_dir: Path,
    *,
    workspace: str,
    api_key: str | None,
    hooks_url: str,
    pre_tool_timeout: int,
    version: str | None = None,
) -> None:
    """Make ``config_dir`` ready for interactive and headless claude runs."""
    config_dir.mkdir(parents=True, exist_ok=True)
    state_path = config_dir / ".claude.json"
    _write_json(state_path, merge_state(_read_json(state_path), workspace, api_key, version))
    settings_path = config_dir / "settings.json"
    _write_json(settings_path, merge_hooks(_read_json(settings_path), hooks_url, pre_tool_timeout))


# Sub-agent files written from a template carry this prefix, so the next start
# removes the ones a former version had without touching the user's own.
TEMPLATE_AGENT_PREFIX = "sac-template-"


def apply_template(
    runtime: dict[str, Any], *, config_dir: Path, workspace: Path, state_dir: Path
) -> str | None:
    """Write a template's files where claude reads them (docs/templates.md): the
    workspace's ``CLAUDE.md`` and seed files (only when absent: the agent's work is
    never overwritten), its sub-agents in ``$CLAUDE_CONFIG_DIR/agents/``, and its MCP
    servers in a ``--mcp-config`` file; return that file's path (None: no servers)."""
    seeds = dict(runtime.get("workspace_files") or {})
    if runtime.get("claude_md"):
        seeds.setdefault("CLAUDE.md", runtime["claude_md"])
    for relative, text in seeds.items():
        path = workspace / rules.clean_relative(relative)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    agents = config_dir / "agents"
    agents.mkdir(parents=True, exist_ok=True)
    for old in agents.glob(TEMPLATE_AGENT_PREFIX + "*.md"):
        old.unlink()
    for name, spec in (runtime.get("subagents") or {}).items():
        target = agents / f"{TEMPLATE_AGENT_PREFIX}{name}.md"
        target.write_text(rules.subagent_markdown(name, spec), encoding="utf-8")
    mcp = rules.mcp_config(runtime)
    mcp_path = state_dir / "template-mcp.json"
    if mcp is None:
        mcp_path.unlink(missing_ok=True)
        return None
    state_dir.mkdir(parents=True, exist_ok=True)
    _write_json(mcp_path, mcp)
    return str(mcp_path)
