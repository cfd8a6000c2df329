"""The pure rules behind the pages' forms: form fields to overrides, values back to
fields, resolved values for reading, usage totals; the person's pages' forms to the
API's bodies (an agent's settings, a decision, a skill's visibility, a template's
definition)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from jupyter_sac.errors import ApiError
from jupyter_sac.rules.settings import SPECS, SettingsError
from jupyter_sac.rules.skills import Viewer
from jupyter_sac.service.forms import (
    agent_settings_body,
    decision_body,
    decision_text,
    describe,
    needs_restart,
    parse_form,
    show_bytes,
    show_value,
    template_definition,
    template_error_field,
    template_form_values,
    usage_totals,
    validated_form,
    visibility_body,
    visibility_choices,
    visibility_value,
)
from jupyter_sac.service.operations.templates import shipped_presets
from jupyter_sac.service.pages import server_status, visible_tabs
from jupyter_sac.store import AgentRecord


def test_empty_fields_inherit_and_values_are_typed() -> None:
    form = {
        "max_agents_per_user": ["7"],
        "cpu_limit": [" 1.5 "],
        "mem_limit": ["2Gi"],
        "idle_timeout": [""],
        "hitl_default": ["approve"],
        "not_a_setting": ["x"],
    }
    assert parse_form(form, "system") == {
        "max_agents_per_user": 7,
        "cpu_limit": 1.5,
        "mem_limit": "2Gi",
        "hitl_default": "approve",
    }
    assert validated_form(form, "system")["mem_limit"] == 2 * 1024**3
    # Agent forms see only agent-level settings (max_agents_per_user is not one).
    assert "max_agents_per_user" not in parse_form(form, "agent")
    assert parse_form(form, "agent", ["cpu_limit"]) == {"cpu_limit": 1.5}


def test_providers_are_overridden_only_when_ticked() -> None:
    assert parse_form({"allowed_providers": ["glm"]}, "system") == {}
    ticked = {"allowed_providers__override": ["1"], "allowed_providers": ["glm", "qwen"]}
    assert parse_form(ticked, "system") == {"allowed_providers": ["glm", "qwen"]}
    # Ticked with nothing chosen: no provider at all (still expressible).
    assert parse_form({"allowed_providers__override": ["1"]}, "user") == {"allowed_providers": []}


def test_host_lists_are_one_pattern_per_line_and_empty_inherits() -> None:
    text = "pypi.org\r\n  *.GitHub.com \n\n10.0.0.0/8, example.org"
    assert parse_form({"egress_allow": [text]}, "system") == {
        "egress_allow": ["pypi.org", "*.GitHub.com", "10.0.0.0/8", "example.org"]
    }
    assert validated_form({"egress_allow": [text]}, "user") == {
        "egress_allow": ["pypi.org", "*.github.com", "10.0.0.0/8", "example.org"]
    }
    assert parse_form({"egress_allow": ["  "], "egress_deny": [""]}, "system") == {}
    # The "none" box: an empty allow list (this user's agents reach nothing).
    assert parse_form({"egress_allow": [""], "egress_allow__none": ["1"]}, "user") == {
        "egress_allow": []
    }
    # egress_allow is not an agent's; the form of that level leaves it out.
    assert parse_form({"egress_allow": ["*"], "egress_deny": ["a.org"]}, "agent") == {
        "egress_deny": ["a.org"]
    }
    shown = show_value(SPECS["egress_deny"], ("a.org", "*.b.org"))
    assert shown == "a.org\n*.b.org"
    assert validated_form({"egress_deny": [shown]}, "system") == {
        "egress_deny": ["a.org", "*.b.org"]
    }
    assert describe(SPECS["egress_deny"], ()) == "none"
    assert describe(SPECS["egress_allow"], ("*", "a.org")) == "*, a.org"


def test_the_settings_table_renders_host_lists_as_text_boxes() -> None:
    from pathlib import Path

    import jinja2

    import jupyter_sac.service
    from jupyter_sac.rules.settings import resolve_user
    from jupyter_sac.service.admin_pages import settings_rows

    templates = Path(jupyter_sac.service.__file__).parent / "templates"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates), autoescape=True)
    overrides = {"egress_allow": ("pypi.org", "<b>.org")}
    rows = settings_rows("user", overrides, resolve_user({}, overrides))
    html = env.get_template("_settings.html").module.settings_table(rows, [], (), False)
    assert (
        '<textarea class="form-control form-control-sm font-monospace" id="f-egress_allow"' in html
    )
    assert "pypi.org\n&lt;b&gt;.org</textarea>" in html
    assert 'name="egress_allow__none"' in html
    assert 'name="egress_deny__none"' not in html  # adding nothing is an empty box


def test_a_switch_is_a_select_of_true_and_false() -> None:
    from pathlib import Path

    import jinja2

    import jupyter_sac.service
    from jupyter_sac.rules.settings import resolve_user
    from jupyter_sac.service.admin_pages import settings_rows

    assert validated_form({"exec_enabled": ["false"]}, "user") == {"exec_enabled": False}
    assert validated_form({"exec_enabled": ["true"]}, "system") == {"exec_enabled": True}
    assert parse_form({"exec_enabled": [""]}, "system") == {}  # inherits
    templates = Path(jupyter_sac.service.__file__).parent / "templates"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates), autoescape=True)
    overrides = {"exec_enabled": False}
    rows = settings_rows("user", overrides, resolve_user({}, overrides))
    html = env.get_template("_settings.html").module.settings_table(rows, [], (), False)
    select = html[
        html.index('id="f-exec_enabled"') : html.index(
            "</select>", html.index('id="f-exec_enabled"')
        )
    ]
    assert '<option value="false" selected>false</option>' in select
    assert '<option value="true">true</option>' in select


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"exec_enabled": ["yes"]}, "exec_enabled"),
        ({"hitl_timeout": ["ten"]}, "hitl_timeout"),
        ({"hitl_timeout": ["1.5"]}, "hitl_timeout"),
        ({"cpu_limit": ["nan"]}, "cpu_limit"),
        ({"cpu_limit": ["1e999"]}, "cpu_limit"),
        ({"mem_limit": ["-5Gi"]}, "mem_limit"),
        ({"hitl_default": ["maybe"]}, "hitl_default"),
        ({"max_agents_per_user": ["1; DROP TABLE agents"]}, "max_agents_per_user"),
        (
            {"allowed_providers__override": ["1"], "allowed_providers": ["evil"]},
            "allowed_providers",
        ),
        ({"egress_allow": ["pypi.org:443"]}, "egress_allow"),
        ({"egress_deny": ["bücher.example"]}, "egress_deny"),
    ],
)
def test_bad_values_name_their_field(form: dict, field: str) -> None:
    with pytest.raises(SettingsError) as refused:
        validated_form(form, "system")
    assert refused.value.field == field


def test_values_show_as_the_form_accepts_them_and_read_well() -> None:
    assert show_bytes(4 * 1024**3) == "4Gi" and show_bytes(1536 * 1024**2) == "1536Mi"
    assert show_bytes(1000) == "1000"
    assert show_value(SPECS["mem_limit"], 512 * 1024**2) == "512Mi"
    assert show_value(SPECS["cpu_limit"], 2.0) == "2"
    assert show_value(SPECS["allowed_providers"], ("glm", "qwen")) == "glm, qwen"
    assert show_value(SPECS["hitl_timeout"], None) == ""
    assert describe(SPECS["idle_timeout"], 0) == "no limit"
    assert describe(SPECS["idle_timeout"], 3600) == "1 h"
    assert describe(SPECS["hitl_timeout"], 90) == "90 s"
    assert describe(SPECS["user_monthly_tokens"], 0) == "no limit"
    assert describe(SPECS["mem_limit"], 4 * 1024**3) == "4GiB"
    # What is shown parses back to the same value.
    for name, value in (("mem_limit", 3 * 1024**3), ("cpu_request", 0.25), ("idle_timeout", 60)):
        shown = show_value(SPECS[name], value)
        assert validated_form({name: [shown]}, "system") == {name: value}


def test_usage_totals_per_user() -> None:
    row = {"input_tokens": 1, "output_tokens": 2, "cache_creation_input_tokens": 3,
           "cache_read_input_tokens": 4}  # fmt: skip
    rows = [
        {"owner": "ann", "agent_slug": "a", "requests": 2, **row},
        {"owner": "ann", "agent_slug": "b", "requests": 1, **row},
        {"owner": "bob", "agent_slug": "a", "requests": 5, **row, "output_tokens": 100},
    ]
    assert usage_totals(rows) == [
        {"owner": "bob", "requests": 5, "tokens": 108, "agents": 1},
        {"owner": "ann", "requests": 3, "tokens": 20, "agents": 2},
    ]


def test_server_status_and_tabs() -> None:
    assert server_status(None) == "stopped"
    assert server_status({"ready": True, "pending": None}) == "running"
    assert server_status({"ready": False, "pending": "spawn"}) == "starting"
    assert server_status({"ready": True, "pending": "stop"}) == "stopping"
    assert server_status({"ready": False, "pending": None, "stopped": True}) == "stopped"
    assert [key for key, _ in visible_tabs(True, frozenset())] == [
        "agents", "conversations", "hitl", "usage", "workspaces", "settings", "users", "audit",
        "maintenance",
    ]  # fmt: skip
    assert visible_tabs(False, frozenset({"custom:sac:history:read-all"})) == (
        ("conversations", "Conversations"),
    )
    assert visible_tabs(False, frozenset({"self"})) == ()


# ---- the person's pages ---------------------------------------------------------------

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
AGENT = AgentRecord(
    id=1, owner="ann", slug="desk", display_name="desk", runtime="claude",
    provider="anthropic", model="claude-sonnet-4-5", base_url=None, encrypted_key=b"k",
    overrides={}, created_at=NOW, updated_at=NOW, drive_agents=False,
)  # fmt: skip
UNTOUCHED = {"action": ["save"], "display_name": ["desk"], "provider": ["anthropic"],
             "model": ["claude-sonnet-4-5"], "base_url": [""], "api_key": [""]}  # fmt: skip


def settings(agent: AgentRecord = AGENT, org_keys: dict | None = None, **fields: str) -> dict:
    form = {**UNTOUCHED, **{k: [v] for k, v in fields.items()}}
    return agent_settings_body(agent, form, org_keys or {})


def test_the_settings_form_sends_only_what_changed() -> None:
    assert settings() == {}
    assert settings(model="claude-opus-4-1") == {"model": "claude-opus-4-1"}
    assert settings(display_name="  Desk  ") == {"display_name": "Desk"}
    assert settings(display_name="") == {"display_name": ""}  # the API's 400 names it
    assert settings(drive_agents="1") == {"drive_agents": True}
    on = replace(AGENT, drive_agents=True)
    assert settings(on) == {"drive_agents": False}  # an unticked box
    # An empty model: the provider's default.
    assert settings(replace(AGENT, model="other"), model="") == {"model": "claude-sonnet-4-5"}


def test_a_new_provider_gets_its_default_model_unless_another_is_typed() -> None:
    assert settings(provider="glm") == {"provider": "glm"}
    assert settings(provider="glm", model="glm-4.5") == {"provider": "glm", "model": "glm-4.5"}
    custom = replace(AGENT, provider="custom", base_url="https://llm.example.org")
    leaving = settings(custom, provider="anthropic", base_url="https://llm.example.org")
    assert leaving == {"provider": "anthropic"}  # the old base URL is not sent (cleared)
    joining = settings(provider="custom", base_url="https://gw.example.org")
    assert joining == {"provider": "custom", "base_url": "https://gw.example.org"}


def test_the_key_is_replaced_or_forgotten_never_both() -> None:
    assert settings(api_key=" sk-new-key-123 ") == {"api_key": "sk-new-key-123"}
    assert settings(use_organisation_key="1", org_keys={"anthropic": "sk-org"}) == {"api_key": None}
    with pytest.raises(ApiError) as refused:
        settings(use_organisation_key="1")  # no organisation key for Anthropic here
    assert refused.value.extra["field"] == "api_key"
    with pytest.raises(ApiError):
        settings(api_key="sk-new-key-123", use_organisation_key="1")
    # Already on the organisation key: nothing to forget.
    assert settings(replace(AGENT, encrypted_key=None), use_organisation_key="1") == {}


def test_only_a_key_change_needs_no_restart() -> None:
    assert not needs_restart({"api_key": "sk-new-key-123"})
    assert not needs_restart({})
    assert needs_restart({"api_key": None, "model": "m"})
    assert needs_restart({"drive_agents": True})


def _request(**row: object) -> dict:
    base = {"status": "pending", "decision": None, "option": None, "reason": None,
            "decided_by": None, "decided_at": None, "default_decision": "deny",
            "expires_at": NOW + timedelta(minutes=5), "options": []}  # fmt: skip
    return {**base, **row}


def test_what_became_of_a_request_in_a_sentence() -> None:
    at = NOW - timedelta(minutes=1)
    assert decision_text(_request(), NOW) == "Waiting for a decision."
    assert decision_text(_request(expires_at=NOW), NOW) == "Timing out: the default (deny) applies."
    allowed = _request(status="approved", decision="allow", decided_by="ann", decided_at=at)
    assert decision_text(allowed, NOW) == "Decided: allowed by ann at 2026-12-01 11:59:00 UTC."
    terminal = _request(status="denied", decision="deny", decided_by="bob", decided_at=at,
                        option="2", reason="not now",
                        options=[{"key": "1", "label": "Yes"}, {"key": "2", "label": "No"}])  # fmt: skip
    assert decision_text(terminal, NOW) == (
        "Decided: denied by bob at 2026-12-01 11:59:00 UTC, answer 2 (No). Reason: not now"
    )
    timed_out = _request(status="timed_out", decision="deny", decided_at=at)
    assert "nobody decided, so the default (deny) applied" in decision_text(timed_out, NOW)
    assert decision_text(_request(status="cancelled", decided_at=at), NOW).startswith("Withdrawn")


def test_decision_forms_are_the_apis_bodies() -> None:
    assert decision_body({"decision": ["allow"], "reason": ["  "], "option": [""]}) == {
        "decision": "allow"
    }
    assert decision_body({"decision": ["deny"], "reason": [" no "], "option": ["3"]}) == {
        "decision": "deny", "reason": "no", "option": "3",
    }  # fmt: skip
    assert decision_body({}) == {"decision": ""}  # the API's 400 names the field


def test_visibility_choices_and_values() -> None:
    row = {"visibility": "group", "group_name": "lab", "owner": "ann"}
    ann = Viewer("ann", groups=("data",))
    assert [v for v, _ in visibility_choices(ann, row)] == [
        "private", "group:data", "group:lab", "public",
    ]  # fmt: skip
    curator = Viewer("cur", scopes=frozenset({"custom:sac:skills:official"}))
    assert visibility_choices(curator, row)[-1][0] == "official"
    assert visibility_value(row) == "group:lab"
    assert visibility_value({**row, "visibility": "public", "group_name": None}) == "public"
    assert visibility_body({"visibility": ["group:data"]}) == {
        "visibility": "group",
        "group": "data",
    }
    assert visibility_body({"visibility": ["public"]}) == {"visibility": "public", "group": None}


def test_every_preset_survives_the_template_form_unchanged() -> None:
    # A saved definition replaces the whole one: the form must lose nothing.
    for name, definition in shipped_presets().items():
        form = {k: [v] for k, v in template_form_values(definition).items()}
        assert template_definition(form) == definition, name


def test_a_template_form_as_a_definition() -> None:
    form = {
        "display_name": [" Notes "], "description": ["   "], "system_prompt": ["One.\r\nTwo."],
        "max_turns": ["12"], "allowed_tools": ["Read\r\n\r\n Bash(git diff:*) \r\n"],
        "permission_mode": [""], "subagents": [""], "workspace_files": ['{"a.md": "# A"}'],
    }  # fmt: skip
    assert template_definition(form) == {
        "display_name": "Notes", "system_prompt": "One.\nTwo.", "max_turns": 12,
        "allowed_tools": ["Read", "Bash(git diff:*)"], "workspace_files": {"a.md": "# A"},
    }  # fmt: skip
    # An empty display name is left for the API to refuse, by name.
    assert template_definition({}) == {"display_name": ""}
    with pytest.raises(ApiError) as bad_json:
        template_definition({"display_name": ["X"], "mcp_servers": ['{"x": ']})
    assert bad_json.value.extra["field"] == "mcp_servers"
    assert "not valid JSON" in bad_json.value.message
    with pytest.raises(ApiError) as bad_number:
        template_definition({"display_name": ["X"], "max_turns": ["many"]})
    assert bad_number.value.extra["field"] == "max_turns"


def test_the_form_field_an_api_error_names() -> None:
    assert template_error_field("definition.mcp_servers.x.type") == "mcp_servers"
    assert template_error_field("definition/workspace_files/../x") == "workspace_files"
    assert template_error_field("definition") == "definition"
    assert template_error_field("name") == "name"
    assert template_error_field("") == ""
