"""HTML form values to API bodies and back: the pure rules behind the pages.

A settings form has one field per setting of the level. An empty field means "no
override here" (the value is inherited); the list of providers is overridden only
when its "override" box is ticked, so an empty list stays expressible. Host lists
(``egress_allow``, ``egress_deny``, ``webhook_allowed_hosts``) are a textarea, one
pattern per line; an empty one inherits, and an empty list is its "none" box
(``<name>__none``).

The person's pages (an agent's settings, approvals, a skill) turn their forms into
the bodies the API's operations take, so the API's validation applies unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from ..rules import settings as sac_settings
from ..rules.providers import PRESETS
from ..rules.settings import SPECS, SettingsError, SettingSpec
from ..rules.skills import Viewer
from ..store import AgentRecord
from .validation import bad

PROVIDERS_OVERRIDE = "allowed_providers__override"
HOSTS_NONE = "__none"  # suffix of a host list's "override with an empty list" box
_BINARY_UNITS = (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024))


def level_specs(level: str, names: Iterable[str] | None = None) -> list[SettingSpec]:
    """The settings a form of this level shows, in their defined order."""
    wanted = set(names) if names is not None else None
    return [
        spec
        for spec in SPECS.values()
        if level in spec.levels and (wanted is None or spec.name in wanted)
    ]


def _number(spec: SettingSpec, raw: str) -> int | float:
    text = raw.strip().replace("_", "")
    try:
        if spec.kind == "float":
            return float(text)
        return int(text)
    except ValueError:
        kind = "a number" if spec.kind == "float" else "a whole number"
        raise SettingsError(spec.name, f"expected {kind}, got {raw!r}") from None


def parse_form(
    form: Mapping[str, list[str]], level: str, names: Iterable[str] | None = None
) -> dict[str, Any]:
    """Overrides from a submitted form (field name -> submitted values), not yet
    validated against the settings' bounds (``settings.validate_overrides`` does that).
    Absent or empty fields are left out: they inherit."""
    out: dict[str, Any] = {}
    for spec in level_specs(level, names):
        values = form.get(spec.name, [])
        if spec.kind == "providers":
            if form.get(PROVIDERS_OVERRIDE):
                out[spec.name] = [v for v in values if v]
            continue
        raw = values[-1].strip() if values else ""
        if spec.kind == "hosts":
            # Patterns hold neither spaces nor commas: any of them separates, so a
            # pasted "a.org, b.org" works as well as one per line.
            lines = raw.replace(",", " ").split()
            if lines or form.get(spec.name + HOSTS_NONE):
                out[spec.name] = lines
            continue
        if not raw:
            continue
        if spec.kind in ("int", "seconds", "float"):
            out[spec.name] = _number(spec, raw)
        elif spec.kind == "bool":
            # The select offers true and false; anything else is left to the
            # settings' own check, which names the field.
            out[spec.name] = {"true": True, "false": False}.get(raw, raw)
        else:  # bytes take quantities such as "512Mi"; choices are checked later
            out[spec.name] = raw
    return out


def show_bytes(value: int) -> str:
    for unit, factor in _BINARY_UNITS:
        if value >= factor and value % factor == 0:
            return f"{value // factor}{unit}"
    return str(value)


def show_value(spec: SettingSpec, value: Any) -> str:
    """A setting's value as the form shows it (and accepts back)."""
    if value is None:
        return ""
    if spec.kind == "bytes":
        return show_bytes(int(value))
    if spec.kind == "providers":
        return ", ".join(value)
    if spec.kind == "hosts":
        return "\n".join(value)
    if spec.kind == "float":
        return f"{value:g}"
    if spec.kind == "bool":
        return "true" if value else "false"
    if spec.kind in ("int", "seconds") and spec.zero_is_unlimited and value == 0:
        return "0"
    return str(value)


def describe(spec: SettingSpec, value: Any) -> str:
    """A resolved value for reading: units spelled out, 0 as "no limit" where it is."""
    if spec.zero_is_unlimited and value == 0:
        return "no limit"
    if spec.name.endswith("_monthly_tokens") and value == 0:
        return "no limit"
    if spec.kind == "hosts":
        return ", ".join(value) if value else "none"
    if spec.kind == "seconds":
        return _duration(int(value))
    if spec.kind == "bytes":
        return show_bytes(int(value)) + "B" if int(value) >= 1024 else f"{value} B"
    if spec.kind == "name" and not value:
        return "the default"
    return show_value(spec, value)


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def validated_form(
    form: Mapping[str, list[str]], level: str, names: Iterable[str] | None = None
) -> dict[str, Any]:
    """``parse_form`` then the settings' own validation: normalised overrides, or a
    ``SettingsError`` naming the first bad field."""
    return sac_settings.jsonable(
        sac_settings.validate_overrides(parse_form(form, level, names), level)  # type: ignore[arg-type]
    )


def usage_totals(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per-user sums of daily usage rows, most tokens first."""
    totals: dict[str, dict[str, Any]] = {}
    for row in rows:
        t = totals.setdefault(
            row["owner"], {"owner": row["owner"], "requests": 0, "tokens": 0, "agents": set()}
        )
        t["requests"] += row["requests"]
        t["tokens"] += row_tokens(row)
        t["agents"].add(row["agent_slug"])
    out = [{**t, "agents": len(t["agents"])} for t in totals.values()]
    return sorted(out, key=lambda t: (-t["tokens"], t["owner"]))


def row_tokens(row: Mapping[str, Any]) -> int:
    return sum(
        int(row[k])
        for k in (
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        )
    )


# ---- the person's pages ---------------------------------------------------------------


def last(form: Mapping[str, list[str]], name: str) -> str:
    """A form field's value (the last one sent), or ""."""
    values = form.get(name) or [""]
    return values[-1]


def grants_body(current: Sequence[Mapping[str, Any]], checked: Sequence[str]) -> list[dict]:
    """An agent's grants from the settings page's ticked secrets: a secret already
    granted keeps its targets (set through the API), a newly ticked one becomes
    the variable of its own name."""
    kept = {g["name"]: dict(g) for g in current}
    return [kept.get(name, {"name": name}) for name in dict.fromkeys(checked)]


def decision_body(form: Mapping[str, list[str]]) -> dict[str, Any]:
    """A decision form (decision, optional reason, and an option or a text answer)
    as the API's body. A text typed before pressing Deny goes with nothing: Deny is
    the answer."""
    body: dict[str, Any] = {"decision": last(form, "decision")}
    reason = last(form, "reason").strip()
    if reason:
        body["reason"] = reason
    option = last(form, "option")
    if option:
        body["option"] = option
    text = last(form, "text")
    if text and body["decision"] == "allow":
        body["text"] = text
    return body


def decision_text(row: Mapping[str, Any], now: datetime) -> str:
    """What became of a request, in a sentence ("Decided: allowed by alice at ...")."""
    when = row["decided_at"].strftime("%Y-%m-%d %H:%M:%S") if row["decided_at"] else ""
    status = row["status"]
    if status in ("approved", "denied"):
        verb = "allowed" if status == "approved" else "denied"
        text = f"Decided: {verb} by {row['decided_by']} at {when} UTC"
        if row["option"]:
            labels = {o["key"]: o["label"] for o in row["options"] or []}
            label = labels.get(row["option"])
            text += f", answer {row['option']}" + (f" ({label})" if label else "")
        if row.get("answer_text") is not None:
            text += f", answered with the text “{row['answer_text']}”"
        return text + (f". Reason: {row['reason']}" if row["reason"] else ".")
    if status == "timed_out":
        default = row["decision"]
        return f"Timed out at {when} UTC: nobody decided, so the default ({default}) applied."
    if status == "cancelled":
        return f"Withdrawn at {when} UTC: the prompt went away or the turn was cancelled."
    if row["expires_at"] is not None and row["expires_at"] <= now:
        return f"Timing out: the default ({row['default_decision']}) applies."
    return "Waiting for a decision."


def agent_settings_body(
    agent: AgentRecord, form: Mapping[str, list[str]], org_keys: Mapping[str, str]
) -> dict[str, Any]:
    """The agent settings form as a PATCH body holding only what changed, so an
    untouched field never trips a rule (a provider no longer allowed, a base URL left
    over from the custom provider).

    A plain form cannot update one field when another changes, so: a model left as it
    was when the provider changes means the new provider's default model; a base URL
    left as it was means nothing once the provider is not ``custom``. The key is never
    shown: a typed key replaces the agent's, the organisation box forgets it."""
    body: dict[str, Any] = {}
    display_name = last(form, "display_name").strip()
    if display_name != agent.display_name:
        body["display_name"] = display_name  # empty: the API's 400 names the field
    provider = last(form, "provider").strip() or agent.provider
    if provider != agent.provider:
        body["provider"] = provider
    model = last(form, "model").strip()
    if "provider" in body:
        if model and model != agent.model:
            body["model"] = model
    elif not model:
        preset = PRESETS.get(provider)
        if preset is not None and preset.default_model and preset.default_model != agent.model:
            body["model"] = preset.default_model
    elif model != agent.model:
        body["model"] = model
    base_url = last(form, "base_url").strip()
    if base_url and base_url != agent.base_url:
        body["base_url"] = base_url  # refused by the API unless the provider is custom
    api_key = last(form, "api_key").strip()
    use_organisation_key = bool(last(form, "use_organisation_key"))
    if api_key and use_organisation_key:
        raise bad("api_key", "enter a new key or choose the organisation key, not both")
    if api_key:
        body["api_key"] = api_key
    elif use_organisation_key and agent.encrypted_key is not None:
        if provider in PRESETS and provider not in org_keys:
            raise bad(
                "api_key",
                f"{PRESETS[provider].label} has no organisation key here; keep or enter"
                " the agent's own key",
            )
        body["api_key"] = None
    drive_agents = bool(last(form, "drive_agents"))
    if drive_agents != agent.drive_agents:
        body["drive_agents"] = drive_agents
    return body


def needs_restart(body: Mapping[str, Any]) -> bool:
    """Do these agent changes reach a running sandbox only at its next start? All but
    the key do (its environment and the hub token's scopes are made at start); the
    credential proxy reads the key at every model call."""
    return any(name != "api_key" for name in body)


def visibility_choices(viewer: Viewer, row: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The visibility select of a skill page: (value, label), ``group:<name>`` for a
    group. The viewer's groups, the skill's current one, and official for curators."""
    groups = set(viewer.groups)
    if row["group_name"]:
        groups.add(row["group_name"])
    choices = [("private", "private: only me")]
    choices += [(f"group:{g}", f"group {g}: its members") for g in sorted(groups)]
    choices.append(("public", "public: everyone"))
    if viewer.curates_official or row["visibility"] == "official":
        choices.append(("official", "official: everyone, curated"))
    return choices


def visibility_value(row: Mapping[str, Any]) -> str:
    return f"group:{row['group_name']}" if row["visibility"] == "group" else row["visibility"]


def visibility_body(form: Mapping[str, list[str]]) -> dict[str, Any]:
    """The visibility select as the API's PATCH body ({"visibility", "group"})."""
    value = last(form, "visibility")
    if value.startswith("group:"):
        return {"visibility": "group", "group": value.removeprefix("group:")}
    return {"visibility": value, "group": None}


# ---- agent templates ------------------------------------------------------------------

# Every field of a template's definition (TemplateDefinition) is on the template
# form, since a definition given to the API replaces the whole one: a field the
# form left out would be lost at the next save. Three kinds of field:
# text (empty: absent), one item a line (empty: absent), and JSON (empty: absent).
TEMPLATE_TEXT_FIELDS = (
    "display_name", "description", "provider", "model", "system_prompt", "claude_md",
    "permission_mode",
)  # fmt: skip
TEMPLATE_LINE_FIELDS = ("allowed_tools", "disallowed_tools", "skills")
TEMPLATE_JSON_FIELDS = ("mcp_servers", "subagents", "workspace_files", "hitl_policy", "overrides")
TEMPLATE_FORM_FIELDS = (
    *TEMPLATE_TEXT_FIELDS, "max_turns", *TEMPLATE_LINE_FIELDS, *TEMPLATE_JSON_FIELDS,
)  # fmt: skip
# Fields of one line: spaces around them are never meant.
_ONE_LINE = ("display_name", "provider", "model", "permission_mode")


def _typed_text(raw: str) -> str:
    # Browsers send a textarea's line breaks as CRLF; a prompt is stored as typed,
    # with the line breaks the API would have been given.
    return raw.replace("\r\n", "\n")


def template_definition(form: Mapping[str, list[str]]) -> dict[str, Any]:
    """A template's definition from the template form. Only what a form alone can
    get wrong is checked here (JSON text, a number); the definition's shape and
    rules are the operation's (the API's own checks), so a page and the API refuse
    the same things with the same words."""
    definition: dict[str, Any] = {}
    for name in TEMPLATE_TEXT_FIELDS:
        value = _typed_text(last(form, name))
        if name in _ONE_LINE:
            value = value.strip()
        if name == "display_name" or value.strip():
            # display_name is required: an empty one is the API's 400, named.
            definition[name] = value
    max_turns = last(form, "max_turns").strip()
    if max_turns:
        try:
            definition["max_turns"] = int(max_turns)
        except ValueError:
            raise bad("max_turns", f"expected a whole number, got {max_turns!r}") from None
    for name in TEMPLATE_LINE_FIELDS:
        items = [line.strip() for line in last(form, name).splitlines() if line.strip()]
        if items:
            definition[name] = items
    for name in TEMPLATE_JSON_FIELDS:
        text = last(form, name).strip()
        if not text:
            continue
        try:
            definition[name] = json.loads(text)
        except ValueError as e:
            raise bad(name, f"not valid JSON ({e})") from None
    return definition


def template_form_values(definition: Mapping[str, Any]) -> dict[str, str]:
    """A stored definition as the template form shows it (and reads back)."""
    values = {name: str(definition.get(name, "")) for name in TEMPLATE_TEXT_FIELDS}
    values["max_turns"] = str(definition.get("max_turns", ""))
    for name in TEMPLATE_LINE_FIELDS:
        values[name] = "\n".join(definition.get(name) or [])
    for name in TEMPLATE_JSON_FIELDS:
        values[name] = (
            json.dumps(definition[name], indent=2, ensure_ascii=False) if name in definition else ""
        )
    return values


def template_typed_values(form: Mapping[str, list[str]]) -> dict[str, str]:
    """What was typed into the template form, to show it again beside an error."""
    return {name: last(form, name) for name in ("name", "scope", *TEMPLATE_FORM_FIELDS)}


def template_error_field(field: str) -> str:
    """The form field an error of the template operations names: the API names a
    definition's part as ``definition.mcp_servers.x`` (its schema) or
    ``definition/mcp_servers/x`` (its rules); the form's field is the part."""
    parts = [p for p in re.split(r"[./]", field) if p]
    if len(parts) > 1 and parts[0] == "definition":
        return parts[1]
    return parts[0] if parts else ""
