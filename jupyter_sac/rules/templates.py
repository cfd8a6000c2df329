"""Agent templates (docs/templates.md): the rules the API document cannot say, and
where each part of a definition reaches claude. Pure: no I/O; the service
validates with it, the spawner hands the runtime part to the sandbox
(``TEMPLATE_ENV_VAR``) and the extension turns it into claude's flags and files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from .hitl import PolicyError, validate_policy
from .secrets import env_name_reserved
from .workspace import PathError, clean_relative

# The environment variable that carries a template's runtime part into a sandbox.
TEMPLATE_ENV_VAR = "SAC_AGENT_TEMPLATE"
# A definition, as JSON, stays well below Linux's 128 KiB limit of one
# environment string (MAX_ARG_STRLEN), since it travels in one.
MAX_DEFINITION_BYTES = 64 * 1024
MAX_TEMPLATES_PER_USER = 50
# The scope that lets a non-administrator curate organisation templates.
TEMPLATES_SCOPE = "custom:sac:templates"

NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

# What an agent's record takes from a template when it is created (and when it is
# updated to the template's latest version); the runtime part is applied in the
# sandbox at each start.
RECORD_FIELDS = ("display_name", "provider", "model", "overrides", "hitl_policy")
RUNTIME_FIELDS = (
    "system_prompt",
    "claude_md",
    "allowed_tools",
    "disallowed_tools",
    "permission_mode",
    "max_turns",
    "mcp_servers",
    "subagents",
    "workspace_files",
)


class TemplateError(ValueError):
    """A definition the API refuses: ``field`` is the JSON pointer-ish path."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def valid_name(name: str) -> bool:
    return bool(NAME_RE.match(name))


def _secret_values(server: Mapping[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(part, key, value) of an MCP server's env and headers."""
    for part in ("env", "headers"):
        for key, value in (server.get(part) or {}).items():
            yield part, key, value


def secret_refs(definition: Mapping[str, Any]) -> list[str]:
    """The owner's secrets a definition's MCP servers name (``{"secret": NAME}``),
    sorted: an agent made from it is granted each as the variable NAME."""
    names = set()
    for server in (definition.get("mcp_servers") or {}).values():
        for _part, _key, value in _secret_values(server):
            if isinstance(value, Mapping):
                names.add(str(value["secret"]))
    return sorted(names)


def check_definition(definition: Mapping[str, Any]) -> None:
    """What the document's schema cannot say of a definition (its shape is checked
    before): its size, workspace paths inside the workspace, secret references
    that can be variables. Raises TemplateError."""
    size = len(json.dumps(definition, ensure_ascii=False).encode())
    if size > MAX_DEFINITION_BYTES:
        raise TemplateError(
            "definition", f"{size} bytes as JSON; at most {MAX_DEFINITION_BYTES} are allowed"
        )
    if "hitl_policy" in definition:
        try:
            validate_policy(definition["hitl_policy"])
        except PolicyError as e:
            raise TemplateError(e.field.replace("policy", "hitl_policy", 1), e.message) from None
    for path in definition.get("workspace_files") or {}:
        try:
            clean_relative(path)
        except PathError as e:
            raise TemplateError(f"workspace_files/{path}", str(e)) from None
    for name, server in (definition.get("mcp_servers") or {}).items():
        for part, key, value in _secret_values(server):
            if isinstance(value, Mapping):
                ref = str(value["secret"])
                if not ENV_NAME_RE.match(ref) or env_name_reserved(ref):
                    raise TemplateError(
                        f"mcp_servers/{name}/{part}/{key}",
                        f"secret {ref!r} cannot be given as a variable; rename the secret",
                    )


def runtime_part(
    template_id: int, name: str, version: int, definition: Mapping[str, Any]
) -> dict[str, Any]:
    """What a sandbox needs of a template version (``TEMPLATE_ENV_VAR``'s JSON)."""
    out: dict[str, Any] = {"id": template_id, "name": name, "version": version}
    out.update({k: definition[k] for k in RUNTIME_FIELDS if k in definition})
    return out


def mcp_config(runtime: Mapping[str, Any]) -> dict[str, Any] | None:
    """claude's ``--mcp-config`` document for a runtime part (None: no servers).
    A secret reference becomes ``${NAME}``, which claude expands from its
    environment, where the agent's grant of the secret put it: the value itself is
    never written to a file."""
    servers = runtime.get("mcp_servers") or {}
    if not servers:
        return None
    out: dict[str, Any] = {}
    for name, server in servers.items():
        entry = {k: v for k, v in server.items() if k not in ("env", "headers")}
        for part in ("env", "headers"):
            if server.get(part):
                entry[part] = {
                    key: "${" + str(value["secret"]) + "}" if isinstance(value, Mapping) else value
                    for key, value in server[part].items()
                }
        out[name] = entry
    return {"mcpServers": out}


def subagent_markdown(name: str, spec: Mapping[str, Any]) -> str:
    """A Claude Code sub-agent file (``agents/<name>.md``): YAML front matter, then
    the sub-agent's system prompt. Values are JSON strings, which YAML reads as is."""
    lines = ["---", f"name: {json.dumps(name)}", f"description: {json.dumps(spec['description'])}"]
    if spec.get("tools"):
        lines.append(f"tools: {json.dumps(', '.join(spec['tools']))}")
    if spec.get("model"):
        lines.append(f"model: {json.dumps(spec['model'])}")
    lines += ["---", "", str(spec["prompt"]).rstrip(), ""]
    return "\n".join(lines)


def with_flag(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with ``flag``'s value set to ``value`` (replaced when present)."""
    out = list(args)
    if flag in out:
        i = out.index(flag)
        if i + 1 < len(out) and not out[i + 1].startswith("-"):
            out[i + 1] = value
            return out
        out.insert(i + 1, value)
        return out
    return [*out, flag, value]


def claude_args(
    runtime: Mapping[str, Any], args: list[str], *, chat: bool, mcp_config_path: str | None
) -> list[str]:
    """claude's arguments with a template's runtime part applied: the appended
    system prompt, the tools it allows without asking and those it removes, its
    MCP servers; in the terminal its permission mode, in chat its turn limit
    (claude honours --max-turns only when it is driven, not interactively). Chat
    keeps its own permission mode (every tool call is decided by the HITL hook)."""
    out = list(args)
    if runtime.get("system_prompt"):
        out = with_flag(out, "--append-system-prompt", str(runtime["system_prompt"]))
    if runtime.get("allowed_tools"):
        out = with_flag(out, "--allowedTools", ",".join(runtime["allowed_tools"]))
    if runtime.get("disallowed_tools"):
        out = with_flag(out, "--disallowedTools", ",".join(runtime["disallowed_tools"]))
    if mcp_config_path:
        out = with_flag(out, "--mcp-config", mcp_config_path)
    if chat:
        if runtime.get("max_turns"):
            out = with_flag(out, "--max-turns", str(int(runtime["max_turns"])))
    elif runtime.get("permission_mode"):
        out = with_flag(out, "--permission-mode", str(runtime["permission_mode"]))
    return out


def parse_runtime(raw: str | None) -> dict[str, Any] | None:
    """``TEMPLATE_ENV_VAR``'s value, or None when absent or not a JSON object."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
