"""Agent templates' pure rules (rules/templates.py) and how the sandbox writes a
template where claude reads it (runtimes/claude_config.apply_template): no stack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jupyter_sac.rules import templates as rules
from jupyter_sac.runtimes.claude_config import apply_template
from jupyter_sac.service.openapi import CONTRACT
from jupyter_sac.service.operations.templates import shipped_presets

RUNTIME = {
    "id": 3,
    "name": "nb",
    "version": 2,
    "system_prompt": "Be brief.",
    "claude_md": "# Rules\n",
    "allowed_tools": ["Read", "Bash(git diff:*)"],
    "disallowed_tools": ["WebSearch"],
    "permission_mode": "plan",
    "max_turns": 7,
    "mcp_servers": {
        "gh": {
            "type": "stdio",
            "command": "gh-mcp",
            "args": ["--ro"],
            "env": {"GITHUB_TOKEN": {"secret": "GH_TOKEN"}, "MODE": "ro"},
        },
        "docs": {"type": "http", "url": "http://docs.internal/mcp"},
    },
    "subagents": {"checker": {"description": "Checks.", "prompt": "Check it.", "tools": ["Read"]}},
    "workspace_files": {"notes/README.md": "hello\n"},
}


def test_claude_args_terminal_and_chat() -> None:
    terminal = rules.claude_args(
        RUNTIME, ["--permission-mode", "default"], chat=False, mcp_config_path="/s/mcp.json"
    )
    assert terminal == [
        "--permission-mode", "plan",
        "--append-system-prompt", "Be brief.",
        "--allowedTools", "Read,Bash(git diff:*)",
        "--disallowedTools", "WebSearch",
        "--mcp-config", "/s/mcp.json",
    ]  # fmt: skip
    chat = rules.claude_args(RUNTIME, [], chat=True, mcp_config_path=None)
    # Chat keeps its own permission mode (HITL decides every call); turns are limited.
    assert "--permission-mode" not in chat and chat[-2:] == ["--max-turns", "7"]
    assert rules.claude_args({}, ["--x"], chat=True, mcp_config_path=None) == ["--x"]


def test_secret_references_become_variables_never_values() -> None:
    assert rules.secret_refs(RUNTIME) == ["GH_TOKEN"]
    config = rules.mcp_config(RUNTIME)
    assert config is not None
    assert config["mcpServers"]["gh"]["env"] == {"GITHUB_TOKEN": "${GH_TOKEN}", "MODE": "ro"}
    assert config["mcpServers"]["docs"] == {"type": "http", "url": "http://docs.internal/mcp"}
    assert rules.mcp_config({}) is None


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        ({"workspace_files": {"../up": "x"}}, "workspace_files/../up"),
        ({"workspace_files": {"/abs": "x"}}, "workspace_files//abs"),
        (
            {
                "mcp_servers": {
                    "s": {"type": "stdio", "command": "c", "env": {"P": {"secret": "PATH"}}}
                }
            },
            "mcp_servers/s/env/P",
        ),
        ({"system_prompt": "x" * (rules.MAX_DEFINITION_BYTES + 1)}, "definition"),
    ],
)
def test_what_the_schema_cannot_say_is_refused(definition: dict, field: str) -> None:
    with pytest.raises(rules.TemplateError) as e:
        rules.check_definition(definition)
    assert e.value.field == field


def test_every_preset_is_a_valid_definition() -> None:
    presets = shipped_presets()
    assert len(presets) >= 6
    for name, definition in presets.items():
        assert rules.valid_name(name)
        CONTRACT.check("TemplateDefinition", definition, within=name)
        rules.check_definition(definition)
        assert definition["system_prompt"] and definition["description"]


def test_apply_template_writes_files_once_and_replaces_its_sub_agents(tmp_path: Path) -> None:
    config, workspace, state = tmp_path / "claude", tmp_path / "ws", tmp_path / "state"
    workspace.mkdir()
    (config / "agents").mkdir(parents=True)
    (config / "agents" / "mine.md").write_text("the user's own")
    path = apply_template(RUNTIME, config_dir=config, workspace=workspace, state_dir=state)
    assert path == str(state / "template-mcp.json")
    assert json.loads(Path(path).read_text()) == rules.mcp_config(RUNTIME)
    assert (workspace / "CLAUDE.md").read_text() == "# Rules\n"
    assert (workspace / "notes/README.md").read_text() == "hello\n"
    agent = (config / "agents" / "sac-template-checker.md").read_text()
    assert agent.startswith('---\nname: "checker"\ndescription: "Checks."\ntools: "Read"\n---')
    assert agent.rstrip().endswith("Check it.")

    # The agent's edits stay; a new version's sub-agents replace the old ones only.
    (workspace / "CLAUDE.md").write_text("edited")
    newer = {**RUNTIME, "subagents": {"other": {"description": "O.", "prompt": "P."}}}
    del newer["mcp_servers"]
    assert apply_template(newer, config_dir=config, workspace=workspace, state_dir=state) is None
    assert (workspace / "CLAUDE.md").read_text() == "edited"
    assert sorted(p.name for p in (config / "agents").iterdir()) == [
        "mine.md",
        "sac-template-other.md",
    ]
    assert not (state / "template-mcp.json").exists()


def test_the_notebooks_mcp_server_answers_over_stdio(tmp_path: Path) -> None:
    import subprocess
    import sys

    nb = {"cells": [{"cell_type": "code", "source": ["1/0"], "execution_count": 1,
                     "outputs": [{"output_type": "error", "ename": "ZeroDivisionError",
                                  "evalue": "division by zero"}]}]}  # fmt: skip
    (tmp_path / "a.ipynb").write_text(json.dumps(nb))
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "x"}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
         "params": {"name": "notebook_outline", "arguments": {"path": "a.ipynb"}}},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
         "params": {"name": "notebook_outline", "arguments": {"path": "../../etc/passwd"}}},
    ]  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "jupyter_sac.agent_templates.mcp_notebooks"],
        input="".join(json.dumps(m) + "\n" for m in messages),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
        check=True,
    ).stdout
    answers = [json.loads(line) for line in out.splitlines()]
    assert [a["id"] for a in answers] == [1, 2, 3, 4]
    assert {t["name"] for t in answers[1]["result"]["tools"]} == {
        "list_notebooks",
        "notebook_outline",
    }
    assert "ZeroDivisionError: division by zero" in answers[2]["result"]["content"][0]["text"]
    assert answers[3]["result"]["isError"] is True
