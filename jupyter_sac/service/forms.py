"""HTML form values to settings and back: the pure rules behind the admin pages.

A settings form has one field per setting of the level. An empty field means "no
override here" (the value is inherited); the list of providers is overridden only
when its "override" box is ticked, so an empty list stays expressible.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .. import settings as sac_settings
from ..settings import SPECS, SettingsError, SettingSpec

PROVIDERS_OVERRIDE = "allowed_providers__override"
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
        if not raw:
            continue
        if spec.kind in ("int", "seconds", "float"):
            out[spec.name] = _number(spec, raw)
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
    if spec.kind == "float":
        return f"{value:g}"
    if spec.kind in ("int", "seconds") and spec.zero_is_unlimited and value == 0:
        return "0"
    return str(value)


def describe(spec: SettingSpec, value: Any) -> str:
    """A resolved value for reading: units spelled out, 0 as "no limit" where it is."""
    if spec.zero_is_unlimited and value == 0:
        return "no limit"
    if spec.name.endswith("_monthly_tokens") and value == 0:
        return "no limit"
    if spec.kind == "seconds":
        return _duration(int(value))
    if spec.kind == "bytes":
        return show_bytes(int(value)) + "B" if int(value) >= 1024 else f"{value} B"
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
