"""The agent's Claude Code configuration: seeded so the CLI never stops on a
first-run screen, with SAC's hooks installed.

``CLAUDE_CONFIG_DIR`` holds ``.claude.json`` (onboarding state, approved API
keys, trusted projects) and ``settings.json`` (hooks, permissions). Both are
merged, never replaced: what the user or Claude Code itself wrote stays, and
SAC's own hook entries are recognised by their command and rewritten in place.
Writes are atomic (temp file, then rename) so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

HOOK_MODULE = "jupyter_sac.runtimes.claude_hook"
CAPTURE_HOOK_EVENTS = ("UserPromptSubmit", "Stop", "SubagentStop", "SessionEnd", "PreCompact")
CAPTURE_HOOK_TIMEOUT = 60


def hook_command(python: str | None = None) -> str:
    return f"{shlex.quote(python or sys.executable)} -m {HOOK_MODULE}"


def _is_sac_hook(entry: Any) -> bool:
    return isinstance(entry, dict) and any(
        isinstance(h, dict) and HOOK_MODULE in str(h.get("command", ""))
        for h in entry.get("hooks") or ()
    )


def merge_hooks(settings: dict[str, Any], command: str, pre_tool_timeout: int) -> dict[str, Any]:
    """``settings`` with SAC's hooks installed exactly once per event (pure)."""
    out = dict(settings)
    hooks = dict(out.get("hooks") or {}) if isinstance(out.get("hooks"), dict) else {}
    wanted = {event: CAPTURE_HOOK_TIMEOUT for event in CAPTURE_HOOK_EVENTS}
    wanted["PreToolUse"] = pre_tool_timeout
    for event, timeout in wanted.items():
        entries = [e for e in hooks.get(event) or () if not _is_sac_hook(e)]
        sac_entry: dict[str, Any] = {
            "hooks": [{"type": "command", "command": command, "timeout": timeout}]
        }
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
    hook: str,
    pre_tool_timeout: int,
    version: str | None = None,
) -> None:
    """Make ``config_dir`` ready for interactive and headless claude runs."""
    config_dir.mkdir(parents=True, exist_ok=True)
    state_path = config_dir / ".claude.json"
    _write_json(state_path, merge_state(_read_json(state_path), workspace, api_key, version))
    settings_path = config_dir / "settings.json"
    _write_json(settings_path, merge_hooks(_read_json(settings_path), hook, pre_tool_timeout))
