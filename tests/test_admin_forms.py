"""The pure rules behind the admin pages' forms: form fields to overrides, values
back to fields, resolved values for reading, usage totals."""

from __future__ import annotations

import pytest

from jupyter_sac.service.forms import (
    describe,
    parse_form,
    show_bytes,
    show_value,
    usage_totals,
    validated_form,
)
from jupyter_sac.service.pages import server_status, visible_tabs
from jupyter_sac.settings import SPECS, SettingsError


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


@pytest.mark.parametrize(
    ("form", "field"),
    [
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
    ]  # fmt: skip
    assert visible_tabs(False, frozenset({"custom:sac:history:read-all"})) == (
        ("conversations", "Conversations"),
    )
    assert visible_tabs(False, frozenset({"self"})) == ()
