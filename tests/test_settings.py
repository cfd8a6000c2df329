"""Settings resolution (pure functions): system -> user -> agent."""

from __future__ import annotations

import pytest

from jupyter_sac.rules import settings as s


def test_defaults_resolve_without_overrides() -> None:
    resolved = s.resolve({}, {}, {})
    assert resolved == s.DEFAULTS | {}
    assert resolved["max_agents_per_user"] == 5


def test_user_overrides_system_and_agent_overrides_user() -> None:
    system = {"mem_limit": 8 * s.GIB, "idle_timeout": 100}
    user = {"mem_limit": 6 * s.GIB}
    agent = {"mem_limit": 2 * s.GIB}
    assert s.resolve(system, {}, {})["mem_limit"] == 8 * s.GIB
    assert s.resolve(system, user, {})["mem_limit"] == 6 * s.GIB
    resolved = s.resolve(system, user, agent)
    assert resolved["mem_limit"] == 2 * s.GIB
    assert resolved["idle_timeout"] == 100


def test_agent_cannot_exceed_user_ceiling_and_is_clamped() -> None:
    ceiling = s.resolve_user({}, {"cpu_limit": 1.0})
    with pytest.raises(s.SettingsError) as err:
        s.check_agent_overrides({"cpu_limit": 4.0}, ceiling)
    assert err.value.field == "cpu_limit"
    # an admin lowering the user's limit later also lowers the agent
    assert s.resolve({}, {"cpu_limit": 1.0}, {"cpu_limit": 4.0})["cpu_limit"] == 1.0


def test_request_never_exceeds_limit() -> None:
    resolved = s.resolve({}, {}, {"mem_limit": 256 * s.MIB})
    assert resolved["mem_request"] == 256 * s.MIB


@pytest.mark.parametrize(
    "value, expected",
    [
        ("512Mi", 512 * s.MIB),
        ("2Gi", 2 * s.GIB),
        ("1G", 10**9),
        (1024, 1024),
        ("3 GiB", None),
    ],
)
def test_parse_bytes(value, expected) -> None:
    if expected is None:
        with pytest.raises(ValueError):
            s.parse_bytes(value)
    else:
        assert s.parse_bytes(value) == expected


@pytest.mark.parametrize(
    "level, values, field",
    [
        ("agent", {"max_agents_per_user": 3}, "max_agents_per_user"),
        ("agent", {"allowed_providers": ["anthropic"]}, "allowed_providers"),
        ("system", {"no_such_setting": 1}, "no_such_setting"),
        ("system", {"max_agents_per_user": "5"}, "max_agents_per_user"),
        ("system", {"max_agents_per_user": True}, "max_agents_per_user"),
        ("system", {"max_agents_per_user": -1}, "max_agents_per_user"),
        ("user", {"allowed_providers": ["anthropic", "bogus"]}, "allowed_providers"),
        ("user", {"hitl_default": "maybe"}, "hitl_default"),
        ("user", {"mem_limit": "lots"}, "mem_limit"),
        ("user", {"cpu_limit": 0}, "cpu_limit"),
    ],
)
def test_invalid_overrides_name_the_field(level, values, field) -> None:
    with pytest.raises(s.SettingsError) as err:
        s.validate_overrides(values, level)
    assert err.value.field == field


def test_validate_normalises_and_none_clears() -> None:
    clean = s.validate_overrides(
        {"mem_limit": "1Gi", "idle_timeout": None, "allowed_providers": ["glm", "glm"]}, "user"
    )
    assert clean == {"mem_limit": s.GIB, "allowed_providers": ("glm",)}


def test_not_a_mapping() -> None:
    with pytest.raises(s.SettingsError):
        s.validate_overrides(["mem_limit"], "system")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused(value: float) -> None:
    # json.loads accepts NaN and Infinity, and NaN would pass every bounds check.
    with pytest.raises(s.SettingsError, match="cpu_limit"):
        s.validate_overrides({"cpu_limit": value}, "system")
