"""Validation the API document cannot say (pure functions; raise ApiError with a
field name): text normalised before it is stored, rules that depend on who asks
or on what is stored (allowed providers, limits), cursors and ids. What a request
may hold is the document's (service/openapi.yaml), checked by jupyter_sac.contract
for the API and by ``CONTRACT.check`` in the operations for forms."""

from __future__ import annotations

import base64
import json
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from ..errors import ApiError
from ..rules import settings as sac_settings
from ..rules.providers import PRESETS, ProviderError, validate_base_url


def without_nul(value: Any) -> Any:
    """``value`` with NUL characters removed from every string (PostgreSQL's text and
    jsonb cannot store them; sandboxes may send any bytes a tool printed)."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


# The largest PostgreSQL bigint (the type of every numeric id): past it a number
# names no row, and sending it would be a database error rather than a 404.
MAX_ID = 2**63 - 1


def path_id(raw: str) -> int | None:
    """The row id a URL path part spells, or None when it spells none.

    Only ASCII digits count: str.isdigit() also takes "²" (which int() refuses) and
    int() also takes "٣", "+3", " 3" and "3_0", so a check with either alone turns
    some paths into a 500 and gives others a second spelling of an existing id.
    """
    if not (raw.isascii() and raw.isdigit()) or len(raw) > len(str(MAX_ID)):
        return None
    value = int(raw)
    return value if value <= MAX_ID else None


def encode_cursor(values: list[str]) -> str:
    """An opaque pagination cursor holding ``values`` (the keyset of the last row)."""
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode()


def decode_cursor(value: str, size: int) -> list[str]:
    """The ``size`` strings in a cursor; anything else a client forges is a 400,
    never a database error (so no NULs or lone surrogates either)."""
    try:
        values = json.loads(base64.urlsafe_b64decode(value.encode()))
    except (ValueError, TypeError):
        raise bad("cursor", "not a cursor returned by this endpoint") from None
    if (
        not isinstance(values, list)
        or len(values) != size
        or not all(isinstance(v, str) and "\x00" not in v and utf8_encodable(v) for v in values)
    ):
        raise bad("cursor", "not a cursor returned by this endpoint")
    return values


def utf8_encodable(text: str) -> bool:
    """False for text PostgreSQL cannot store (lone surrogates)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def whole_number(value: Any) -> int | None:
    """``value`` as an int when it is a whole number, else None. JSON Schema's
    "integer" takes 3.0 as well as 3 (schemathesis sends both), and so does the API:
    a bool is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def bad(field: str, message: str, code: str = "invalid_field") -> ApiError:
    return ApiError(400, code, f"{field}: {message}", field=field)


def check_fields(body: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad(unknown[0], f"unknown field; allowed: {sorted(allowed)}", "unknown_field")


def _text(field: str, value: Any, max_len: int) -> str:
    """What the schema cannot say of a text it let through: it is stored NFC and
    stripped, so the length is checked again on that, and no control, format or
    unassigned character may be in it."""
    if not isinstance(value, str):
        raise bad(field, "expected a string")
    value = unicodedata.normalize("NFC", value).strip()
    if not value or len(value) > max_len:
        raise bad(field, f"expected 1-{max_len} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in value):
        raise bad(field, "control, format or unassigned characters are not allowed")
    return value


def valid_display_name(value: Any) -> str:
    return _text("display_name", value, 100)


def valid_model(value: Any) -> str:
    return _text("model", value, 200)


def valid_provider(value: Any, allowed: tuple[str, ...]) -> str:
    """A provider the owner may use (the document's enum said it is one at all)."""
    if value not in allowed:
        raise ApiError(
            403,
            "provider_not_allowed",
            f"provider {value!r} is not allowed here; allowed: {list(allowed)}",
            field="provider",
        )
    return value


def invalid_setting(e: sac_settings.SettingsError, within: str = "") -> ApiError:
    """The 400 a refused setting gets, naming its field (``within.field`` for the
    settings inside a body's field, e.g. an agent's ``overrides``)."""
    if not within:
        return ApiError(400, "invalid_setting", f"{e.field}: {e.message}", field=e.field)
    field = f"{within}.{e.field}" if e.field != "settings" else within
    return bad(field, e.message, "invalid_setting")


def valid_settings(value: Any, level: sac_settings.Level) -> dict[str, Any]:
    """Validated overrides of ``level`` (system, user, group), as stored (JSON)."""
    try:
        return sac_settings.jsonable(sac_settings.validate_overrides(value, level))
    except sac_settings.SettingsError as e:
        raise invalid_setting(e) from None


def valid_overrides(value: Any, ceiling: Mapping[str, Any]) -> dict[str, Any]:
    try:
        overrides = sac_settings.validate_overrides(value, "agent")
        sac_settings.check_agent_overrides(overrides, ceiling)
    except sac_settings.SettingsError as e:
        raise invalid_setting(e, "overrides") from None
    return overrides


def valid_base_url(value: Any) -> str:
    try:
        return validate_base_url(value)
    except ProviderError as e:
        raise bad("base_url", e.message) from None


def agent_fields(
    body: Mapping[str, Any], ceiling: Mapping[str, Any], *, current: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Column values for a create (current None) or an update whose body passed
    the API document's AgentCreate or AgentUpdate (types, lengths, the key's
    characters, the slug): here only what depends on the owner and the agent as
    it is (allowed providers, the default provider's base_url, the overrides
    within the owner's limits) and the text the document cannot normalise.

    ``api_key`` stays plaintext here; the handler encrypts it. ``api_key: null`` on
    update means "forget the agent's own key and use the organisation key".
    """
    out: dict[str, Any] = {}
    allowed = tuple(ceiling["allowed_providers"])
    if "display_name" in body:
        out["display_name"] = valid_display_name(body["display_name"])
    if "provider" in body:
        out["provider"] = valid_provider(body["provider"], allowed)
    elif current is None:
        if not allowed:
            raise ApiError(403, "provider_not_allowed", "no provider is allowed for this user")
        out["provider"] = allowed[0]
    provider = out.get("provider") or (current or {}).get("provider")
    if "model" in body:
        out["model"] = valid_model(body["model"])
    elif current is None or ("provider" in out and out["provider"] != current.get("provider")):
        out["model"] = PRESETS[provider].default_model
    if provider == "custom":
        if body.get("base_url") is not None:
            out["base_url"] = valid_base_url(body["base_url"])
        elif not (current or {}).get("base_url"):
            raise bad("base_url", "the custom provider needs a base_url", "missing_field")
    else:
        if body.get("base_url") is not None:
            raise bad("base_url", "only the custom provider takes a base_url")
        if current is not None and current.get("base_url"):
            out["base_url"] = None
    if "api_key" in body:
        out["api_key"] = body["api_key"]
    if "overrides" in body:
        out["overrides"] = valid_overrides(body["overrides"], ceiling)
    if "drive_agents" in body:
        out["drive_agents"] = body["drive_agents"]
    return out


SURROGATE = re.compile("[\ud800-\udfff]")


def storable(value: Any) -> Any:
    """``value`` as PostgreSQL can store it: no NUL characters, and lone UTF-16
    surrogates (valid JSON escapes, invalid Unicode) replaced by U+FFFD."""
    if isinstance(value, str):
        value = without_nul(value)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = SURROGATE.sub("\ufffd", value)
        return value
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable(v) for v in value]
    return value


def optional_text(body: dict[str, Any], name: str, max_len: int) -> str | None:
    """``body[name]``: absent or null, or a text of at most ``max_len`` characters."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise bad(name, f"expected text of at most {max_len} characters")
    return storable(value)
