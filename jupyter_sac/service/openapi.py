"""The `sac` service's contract: ``openapi.yaml`` beside this module (OpenAPI 3.1),
with the settings' schemas (one per level: what each may set) filled in from
rules/settings.py's SPECS and the
providers from rules/providers.py's PRESETS, so that adding one documents and
validates it. Served at ``api/openapi.json``; BaseHandler
checks request bodies and query parameters against it (``jupyter_sac.contract``)."""

from __future__ import annotations

from pathlib import Path

from ..contract import Contract
from ..rules.providers import PRESETS
from ..rules.settings import SPECS, Level, json_schema

LEVEL_SCHEMAS: dict[str, Level] = {
    "SystemSettings": "system",
    "UserSettings": "user",
    "AgentSettings": "agent",
    "GroupSettings": "group",
}

CONTRACT = Contract.load(
    Path(__file__).with_name("openapi.yaml"),
    filled={
        **{
            schema: {
                "properties": {
                    name: {**json_schema(spec), "x-error": "invalid_setting"}
                    for name, spec in SPECS.items()
                    if level in spec.levels
                }
            }
            for schema, level in LEVEL_SCHEMAS.items()
        },
        "Provider": {"enum": list(PRESETS)},
    },
)
