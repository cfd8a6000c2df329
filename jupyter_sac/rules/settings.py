"""Settings: system defaults -> per-user overrides -> per-agent overrides.

Pure functions, no I/O: the store keeps the override dictionaries, this module
validates them and resolves the values that apply to one agent. Admins set the
system and user levels; an agent's owner sets the agent level, which may ask for
less than the user's resolved ceiling but never more.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .egress import parse_pattern
from .providers import PRESETS

Level = Literal["system", "user", "agent", "group"]
LEVELS: tuple[Level, ...] = ("system", "user", "agent")

MAX_HOST_PATTERNS = 256
MAX_HOST_PATTERN_CHARS = 253

# What a sandbox may reach unless an administrator says otherwise: Claude Code's own
# service (model calls go through the credential proxy, and the sandbox's
# environment turns telemetry off) and the package registries and code hosts that
# installing tools needs. Tight on purpose: an administrator widens it (``*`` for
# the whole public internet), per user if need be.
EGRESS_SEED: tuple[str, ...] = (
    "api.anthropic.com",
    "pypi.org",
    "files.pythonhosted.org",
    "registry.npmjs.org",
    "github.com",
    "codeload.github.com",
    "*.githubusercontent.com",
    "deb.debian.org",
)

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


class SettingsError(ValueError):
    """An override that cannot be accepted; ``field`` names the offending key."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class SettingSpec:
    name: str
    kind: Literal[
        "int", "float", "bytes", "seconds", "choice", "providers", "hosts", "name", "bool"
    ]
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    levels: frozenset[Level] = field(default_factory=lambda: frozenset(LEVELS))
    # An agent may lower this value but not raise it above the user's resolved value.
    ceiling: bool = False
    # 0 means "no limit" (so it is the highest value, not the lowest, for ceilings).
    zero_is_unlimited: bool = False
    # A list whose levels add up instead of replacing each other: the system level (or
    # the default) plus the user's plus the agent's entries. For deny lists, so that
    # an agent's owner can narrow what the agent may do, never widen it.
    accumulate: bool = False


def _spec(*args: Any, **kwargs: Any) -> SettingSpec:
    return SettingSpec(*args, **kwargs)


SPECS: dict[str, SettingSpec] = {
    s.name: s
    for s in [
        _spec(
            "max_agents_per_user",
            "int",
            5,
            "Most agents one user may have.",
            minimum=0,
            maximum=1000,
            levels=frozenset({"system", "user"}),
        ),
        _spec(
            "cpu_request",
            "float",
            0.25,
            "CPU cores reserved for a sandbox.",
            minimum=0.01,
            maximum=256,
            ceiling=True,
        ),
        _spec(
            "cpu_limit",
            "float",
            2.0,
            "Most CPU cores a sandbox may use.",
            minimum=0.01,
            maximum=256,
            ceiling=True,
        ),
        _spec(
            "mem_request",
            "bytes",
            512 * MIB,
            "Memory reserved for a sandbox.",
            minimum=64 * MIB,
            maximum=4096 * GIB,
            ceiling=True,
        ),
        _spec(
            "mem_limit",
            "bytes",
            4 * GIB,
            "Most memory a sandbox may use.",
            minimum=64 * MIB,
            maximum=4096 * GIB,
            ceiling=True,
        ),
        _spec(
            "max_processes",
            "int",
            1024,
            "Most processes (and threads) in one sandbox.",
            minimum=16,
            maximum=1_000_000,
            ceiling=True,
        ),
        _spec(
            "disk_limit",
            "bytes",
            10 * GIB,
            "Most bytes an agent's home and workspace may hold on a local sandbox's disk;"
            " measured while it runs, and an agent over it does not start (0: no limit).",
            minimum=0,
            maximum=100 * 1024 * GIB,
            ceiling=True,
            zero_is_unlimited=True,
        ),
        _spec(
            "storage_quota_bytes",
            "bytes",
            1 * GIB,
            "Bytes an agent's private workspace may hold.",
            minimum=0,
            maximum=100 * 1024 * GIB,
            ceiling=True,
        ),
        _spec(
            "storage_quota_files",
            "int",
            1000,
            "Files an agent's private workspace may hold.",
            minimum=0,
            maximum=10_000_000,
            ceiling=True,
        ),
        _spec(
            "group_quota_bytes",
            "bytes",
            10 * GIB,
            "Bytes one group's shared workspace may hold.",
            minimum=0,
            maximum=100 * 1024 * GIB,
            levels=frozenset({"system", "group"}),
        ),
        _spec(
            "group_quota_files",
            "int",
            10000,
            "Files one group's shared workspace may hold.",
            minimum=0,
            maximum=10_000_000,
            levels=frozenset({"system", "group"}),
        ),
        _spec(
            "idle_timeout",
            "seconds",
            3600,
            "Stop an agent idle this long (0: never).",
            minimum=0,
            maximum=30 * 86400,
            ceiling=True,
            zero_is_unlimited=True,
        ),
        _spec(
            "hitl_timeout",
            "seconds",
            600,
            "How long a human-in-the-loop request waits.",
            minimum=5,
            maximum=7 * 86400,
        ),
        _spec(
            "profile",
            "name",
            "",
            "On Kubernetes, the profile an agent runs with: the slug of one of the profiles"
            " an administrator offers (the hub's KubeAgentSpawner.profile_list: image, nodes"
            " and other pod settings); empty: that list's default. Not used by local sandboxes.",
        ),
        _spec(
            "hitl_default",
            "choice",
            "deny",
            "Decision applied when a HITL request times out.",
            choices=("deny", "approve"),
        ),
        _spec(
            "user_monthly_tokens",
            "int",
            0,
            "Most model tokens (input, output, cache writes and reads) all of a user's"
            " agents may use per calendar month, UTC (0: no limit).",
            minimum=0,
            maximum=10**13,
            levels=frozenset({"system", "user"}),
        ),
        _spec(
            "agent_monthly_tokens",
            "int",
            0,
            "Most model tokens one agent may use per calendar month, UTC (0: no limit).",
            minimum=0,
            maximum=10**13,
            ceiling=True,
            zero_is_unlimited=True,
        ),
        _spec(
            "allowed_providers",
            "providers",
            tuple(PRESETS),
            "Provider presets agents may use.",
            levels=frozenset({"system", "user"}),
        ),
        _spec(
            "egress_allow",
            "hosts",
            EGRESS_SEED,
            "Hosts a sandbox may reach through the egress proxy, its only way to the"
            " network: * (any public host), a name (pypi.org), *.domain (the domain and"
            " its subdomains), an address or a CIDR. Non-public addresses (loopback,"
            " private, link-local, cloud metadata) need an explicit name or network;"
            " * does not open them.",
            levels=frozenset({"system", "user"}),
        ),
        _spec(
            "egress_deny",
            "hosts",
            (),
            "Hosts a sandbox may not reach, whatever egress_allow says; same patterns."
            " The levels add up: a user's or an agent's entries are refused on top of"
            " the system's.",
            accumulate=True,
        ),
        _spec(
            "history_retention_days",
            "int",
            0,
            "Days conversation history (events and sessions) is kept, for deleted"
            " agents too (0: for ever); older entries are deleted by the service's"
            " maintenance.",
            minimum=0,
            maximum=36500,
            levels=frozenset({"system", "user"}),
        ),
        _spec(
            "deleted_agent_grace_days",
            "int",
            7,
            "Days a deleted agent's stored workspace files are kept before the"
            " service's maintenance removes them (0: at its next run).",
            minimum=0,
            maximum=3650,
            levels=frozenset({"system"}),
        ),
        _spec(
            "exec_enabled",
            "bool",
            True,
            "Whether the agent's owner and administrators may run commands in its"
            " sandbox through the service's exec API (POST .../exec, audited). An"
            " agent's owner may turn it off for that agent, not on where an"
            " administrator turned it off.",
            ceiling=True,
        ),
        _spec(
            "webhook_allowed_hosts",
            "hosts",
            (),
            "Hosts users' webhooks may post to: a name (hooks.slack.com), *.domain, an"
            " address or a CIDR, as egress_allow. Empty: webhooks are off. A receiver"
            " on a non-public address (loopback, private) needs its exact name or"
            " address here; a wildcard opens public receivers only.",
            levels=frozenset({"system"}),
        ),
    ]
}

DEFAULTS: dict[str, Any] = {name: spec.default for name, spec in SPECS.items()}

_QUANTITY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?|[kMGT]B?|B)?\s*$")
_QUANTITY_FACTORS = {
    None: 1,
    "B": 1,
    "K": 1000,
    "k": 1000,
    "kB": 1000,
    "KB": 1000,
    "M": 1000**2,
    "MB": 1000**2,
    "G": 1000**3,
    "GB": 1000**3,
    "T": 1000**4,
    "TB": 1000**4,
    "Ki": KIB,
    "Mi": MIB,
    "Gi": GIB,
    "Ti": 1024 * GIB,
}


def parse_bytes(value: Any) -> int:
    """Accept an integer or a Kubernetes-style quantity such as ``"512Mi"`` or ``"2G"``."""
    if isinstance(value, bool):
        raise ValueError("expected a byte count, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        match = _QUANTITY_RE.match(value)
        if match:
            return int(float(match[1]) * _QUANTITY_FACTORS[match[2]])
    raise ValueError(f"expected a byte count like 536870912 or '512Mi', got {value!r}")


# A Kubernetes-style slug (a profile's), or empty for "the default".
_NAME_RE = re.compile(r"^(?:[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?)?$")


def _coerce(spec: SettingSpec, value: Any) -> Any:
    if spec.kind in ("int", "seconds"):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise SettingsError(spec.name, f"expected an integer, got {value!r}")
    elif spec.kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SettingsError(spec.name, f"expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            # NaN passes every bounds check (comparisons with it are false).
            raise SettingsError(spec.name, f"expected a finite number, got {value!r}")
    elif spec.kind == "bytes":
        try:
            value = parse_bytes(value)
        except ValueError as e:
            raise SettingsError(spec.name, str(e)) from None
    elif spec.kind == "choice":
        if value not in spec.choices:
            raise SettingsError(spec.name, f"expected one of {list(spec.choices)}, got {value!r}")
    elif spec.kind == "providers":
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise SettingsError(spec.name, "expected a list of provider names")
        unknown = [v for v in value if v not in PRESETS]
        if unknown:
            raise SettingsError(spec.name, f"unknown providers {unknown}; known: {list(PRESETS)}")
        value = tuple(dict.fromkeys(value))
    elif spec.kind == "hosts":
        value = _host_patterns(spec, value)
    elif spec.kind == "bool":
        if not isinstance(value, bool):
            raise SettingsError(spec.name, f"expected true or false, got {value!r}")
    elif spec.kind == "name" and (not isinstance(value, str) or not _NAME_RE.match(value)):
        raise SettingsError(
            spec.name,
            "expected a slug: 1-63 lowercase letters, digits and hyphens, a letter or"
            f" digit at each end (or empty), got {value!r}",
        )
    if spec.minimum is not None and isinstance(value, int | float) and value < spec.minimum:
        raise SettingsError(spec.name, f"must be at least {spec.minimum:g}")
    if spec.maximum is not None and isinstance(value, int | float) and value > spec.maximum:
        raise SettingsError(spec.name, f"must be at most {spec.maximum:g}")
    return value


def _host_patterns(spec: SettingSpec, value: Any) -> tuple[str, ...]:
    """A list of egress host patterns, each normalised (``PyPI.org.`` -> ``pypi.org``),
    duplicates dropped in order."""
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise SettingsError(spec.name, "expected a list of host patterns")
    if len(value) > MAX_HOST_PATTERNS:
        raise SettingsError(spec.name, f"at most {MAX_HOST_PATTERNS} patterns, got {len(value)}")
    out: list[str] = []
    for text in value:
        if len(text) > MAX_HOST_PATTERN_CHARS:
            raise SettingsError(
                spec.name, f"a pattern has at most {MAX_HOST_PATTERN_CHARS} characters"
            )
        try:
            out.append(parse_pattern(text).text)
        except ValueError as e:
            raise SettingsError(spec.name, str(e)) from None
    return tuple(dict.fromkeys(out))


def json_schema(spec: SettingSpec) -> dict[str, Any]:
    """The JSON Schema of one setting's override value, for the OpenAPI documents
    (null clears the override). The shapes _coerce accepts, so that a request the
    schema lets through is one the rules can judge, and the other way round."""
    schema: dict[str, Any]
    if spec.kind in ("int", "seconds"):
        schema = {"type": ["integer", "null"]}
    elif spec.kind == "float":
        schema = {"type": ["number", "null"]}
    elif spec.kind == "bytes":
        schema = {"type": ["integer", "string", "null"], "pattern": _QUANTITY_RE.pattern}
    elif spec.kind == "choice":
        schema = {"enum": [*spec.choices, None]}
    elif spec.kind == "providers":
        schema = {"type": ["array", "null"], "items": {"enum": list(PRESETS)}}
    elif spec.kind == "bool":
        schema = {"type": ["boolean", "null"]}
    elif spec.kind == "name":
        schema = {"type": ["string", "null"], "maxLength": 63, "pattern": _NAME_RE.pattern}
    else:  # hosts
        schema = {
            "type": ["array", "null"],
            "maxItems": MAX_HOST_PATTERNS,
            "items": {"type": "string", "maxLength": MAX_HOST_PATTERN_CHARS},
        }
    if spec.minimum is not None:
        schema["minimum"] = spec.minimum
    if spec.maximum is not None:
        schema["maximum"] = spec.maximum
    levels = ", ".join(sorted(spec.levels))
    schema["description"] = f"{spec.help} (default {spec.default!r}; set per {levels})"
    return schema


def _union(first: Any, more: Any) -> tuple[Any, ...]:
    return tuple(dict.fromkeys([*first, *more]))


def validate_overrides(values: Any, level: Level) -> dict[str, Any]:
    """Check one level's overrides; return them normalised (bytes as ints, and so on).

    ``None`` as a value means "clear this override" and is dropped.
    """
    if not isinstance(values, Mapping):
        raise SettingsError("settings", "expected an object of setting names to values")
    clean: dict[str, Any] = {}
    for name, value in values.items():
        spec = SPECS.get(name)
        if spec is None:
            raise SettingsError(name, f"unknown setting; known: {sorted(SPECS)}")
        if level not in spec.levels:
            raise SettingsError(name, f"cannot be set per {level}")
        if value is None:
            continue
        clean[name] = _coerce(spec, value)
    return clean


def _merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults overridden by each layer in turn; for ``accumulate`` settings the
    first layer (the system's) replaces the default and later layers add to it."""
    merged = dict(DEFAULTS)
    for i, layer in enumerate(layers):
        for k, v in layer.items():
            if k not in SPECS or v is None:
                continue
            merged[k] = _union(merged[k], v) if i and SPECS[k].accumulate else v
    return merged


def resolve_user(system: Mapping[str, Any], user: Mapping[str, Any]) -> dict[str, Any]:
    """Values that apply to a user (and are the ceiling for that user's agents)."""
    return _fix_requests(_merge(system, user))


def resolve_group(system: Mapping[str, Any], group: Mapping[str, Any]) -> dict[str, Any]:
    """Values that apply to a group's shared workspace (its quotas)."""
    return _merge(system, {k: v for k, v in group.items() if "group" in SPECS[k].levels})


def resolve(
    system: Mapping[str, Any], user: Mapping[str, Any], agent: Mapping[str, Any]
) -> dict[str, Any]:
    """Values that apply to one agent.

    Agent overrides of ceiling settings are clamped to the user's resolved value,
    so lowering a user's limit later also lowers their agents; those of
    ``accumulate`` settings add to the user's entries.
    """
    ceiling = resolve_user(system, user)
    resolved = dict(ceiling)
    for name, value in agent.items():
        spec = SPECS.get(name)
        if spec is None or "agent" not in spec.levels or value is None:
            continue
        if spec.accumulate:
            resolved[name] = _union(ceiling[name], value)
        elif spec.ceiling:
            resolved[name] = _at_most(spec, value, ceiling[name])
        else:
            resolved[name] = value
    return _fix_requests(resolved)


def _above(spec: SettingSpec, value: Any, limit: Any) -> bool:
    if spec.zero_is_unlimited:
        return limit != 0 and (value == 0 or value > limit)
    return value > limit


def _at_most(spec: SettingSpec, value: Any, limit: Any) -> Any:
    return limit if _above(spec, value, limit) else value


def check_agent_overrides(agent: Mapping[str, Any], ceiling: Mapping[str, Any]) -> None:
    """Refuse agent overrides that ask for more than the user's resolved ceiling."""
    for name, value in agent.items():
        spec = SPECS[name]
        if spec.ceiling and _above(spec, value, ceiling[name]):
            if spec.kind == "bool":
                raise SettingsError(name, "cannot be turned on: it is turned off for this user")
            shown = "0 (no limit)" if spec.zero_is_unlimited and value == 0 else value
            raise SettingsError(name, f"{shown} is above this user's limit of {ceiling[name]}")


def _fix_requests(values: dict[str, Any]) -> dict[str, Any]:
    # A request above its limit is meaningless (Kubernetes rejects it): cap it.
    for request, limit in (("cpu_request", "cpu_limit"), ("mem_request", "mem_limit")):
        if values[request] > values[limit]:
            values[request] = values[limit]
    return values


def jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    """Resolved values for JSON output (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
