"""The OpenAPI document of the `sac` service (every endpoint is listed here)."""

from __future__ import annotations

import json
from typing import Any

from .. import __version__
from ..rules.providers import PRESETS
from ..rules.settings import SPECS
from .base import BaseHandler

_ERROR = {"$ref": "#/components/schemas/Error"}
_JSON = "application/json"


def _resp(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = {_JSON: {"schema": schema}}
    return out


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _resp("error", _ERROR) for c in codes}


def query_params(table: dict[str, tuple[dict[str, Any], str]], *names: str) -> list[dict]:
    """OpenAPI query parameters ``names`` from ``table``: name -> (schema, description)."""
    return [
        {"name": n, "in": "query", "schema": table[n][0], "description": table[n][1]} for n in names
    ]


def _op(
    summary: str,
    ok: dict[str, Any],
    *errors: int,
    body: dict | None = None,
    params: list | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**ok, **_errors(401, *errors)}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {_JSON: {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


def _path_params(*names: str) -> list[dict[str, Any]]:
    return [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
    ]


def document(prefix: str) -> dict[str, Any]:
    # Imported here: those modules use this module's helpers (_op, _resp, ...).
    from . import (
        agent_skills,
        audit,
        culler,
        history,
        hitl,
        metrics_handler,
        org_keys,
        skills,
        workspace,
    )

    agent = {"$ref": "#/components/schemas/Agent"}
    create = {"$ref": "#/components/schemas/AgentCreate"}
    update = {"$ref": "#/components/schemas/AgentUpdate"}
    overrides = {"$ref": "#/components/schemas/SettingsOverrides"}
    agents_list = {"type": "object", "properties": {"agents": {"type": "array", "items": agent}}}
    up = _path_params("user")
    ua = _path_params("user", "slug")
    return {
        "openapi": "3.0.3",
        "info": {"title": "jupyter-sac service API", "version": __version__},
        "servers": [{"url": prefix.rstrip("/")}],
        "components": {
            "securitySchemes": {
                "token": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`token <JupyterHub API token>`",
                }
            },
            "schemas": {
                "HitlRequest": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "format": "uuid"},
                        "user": {"type": "string"},
                        "agent": {"type": "string"},
                        "session_id": {"type": "string", "nullable": True},
                        "kind": {"enum": ["tool", "terminal"]},
                        "tool": {"type": "string", "nullable": True},
                        "input": {"type": "object"},
                        "question": {"type": "string", "nullable": True},
                        "options": {"type": "array", "items": {"type": "object"}},
                        "status": {
                            "enum": ["pending", "approved", "denied", "timed_out", "cancelled"]
                        },
                        "decision": {"enum": ["allow", "deny", None], "nullable": True},
                        "option": {"type": "string", "nullable": True},
                        "reason": {"type": "string", "nullable": True},
                        "decided_by": {"type": "string", "nullable": True},
                        "default_decision": {"enum": ["allow", "deny"]},
                        "created_at": {"type": "string", "format": "date-time"},
                        "decided_at": {"type": "string", "format": "date-time", "nullable": True},
                        "expires_at": {"type": "string", "format": "date-time"},
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string"},
                        "message": {"type": "string"},
                        "field": {"type": "string"},
                    },
                },
                "AgentCreate": {
                    "type": "object",
                    "required": ["slug"],
                    "additionalProperties": False,
                    "properties": {
                        "slug": {
                            "type": "string",
                            "pattern": "^[a-z]([a-z0-9]|-(?!-)){0,29}$",
                            "maxLength": 30,
                        },
                        "display_name": {"type": "string", "maxLength": 100},
                        "provider": {"type": "string", "enum": list(PRESETS)},
                        "model": {"type": "string", "maxLength": 200},
                        "base_url": {"type": "string", "format": "uri"},
                        "api_key": {"type": "string", "writeOnly": True},
                        "overrides": overrides,
                        "user": {"type": "string", "description": "owner (admins only)"},
                    },
                },
                "AgentUpdate": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "display_name": {"type": "string"},
                        "provider": {"type": "string", "enum": list(PRESETS)},
                        "model": {"type": "string"},
                        "base_url": {"type": "string", "format": "uri"},
                        "api_key": {"type": "string", "nullable": True, "writeOnly": True},
                        "overrides": overrides,
                    },
                },
                "Agent": {
                    "type": "object",
                    "properties": {
                        k: {"type": t}
                        for k, t in [
                            ("owner", "string"),
                            ("slug", "string"),
                            ("display_name", "string"),
                            ("runtime", "string"),
                            ("provider", "string"),
                            ("model", "string"),
                            ("key_set", "boolean"),
                            ("uses_organisation_key", "boolean"),
                            ("overrides", "object"),
                            ("resolved", "object"),
                            ("url", "string"),
                            ("created_at", "string"),
                            ("updated_at", "string"),
                        ]
                    }
                    | {"sandbox_usage": {"$ref": "#/components/schemas/SandboxUsage"}},
                },
                "SandboxUsage": {
                    "type": "object",
                    "nullable": True,
                    "description": "What the agent's sandbox uses now and the limits that"
                    " hold there, as its spawner last sampled them; null where not measurable.",
                    "properties": {
                        "sampled_at": {"type": "string", "format": "date-time"},
                        "running": {"type": "boolean"},
                        "cpu_seconds": {"type": "number", "nullable": True},
                        "cpu_percent": {"type": "number", "nullable": True},
                        "memory_bytes": {"type": "integer", "nullable": True},
                        "processes": {"type": "integer", "nullable": True},
                        "disk_bytes": {"type": "integer", "nullable": True},
                        "net_sent_bytes": {"type": "integer", "nullable": True},
                        "net_received_bytes": {"type": "integer", "nullable": True},
                        "limits": {
                            "type": "object",
                            "properties": {
                                "cpu": {"type": "number", "nullable": True},
                                "memory": {"type": "integer", "nullable": True},
                                "processes": {"type": "integer", "nullable": True},
                                "disk": {"type": "integer", "nullable": True},
                            },
                        },
                    },
                },
                "SettingsOverrides": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        name: {"description": spec.help} for name, spec in SPECS.items()
                    },
                },
            },
        },
        "security": [{"token": []}],
        "paths": {
            "/api/": {"get": _op("Where the API and this document are", {"200": _resp("ok")})},
            "/api/openapi.json": {"get": _op("This document", {"200": _resp("ok")})},
            **history.openapi_paths(),
            **hitl.openapi_paths(),
            **skills.openapi_paths(),
            **agent_skills.openapi_paths(),
            **culler.openapi_paths(),
            **metrics_handler.openapi_paths(),
            **audit.openapi_paths(),
            **org_keys.openapi_paths(),
            **workspace.openapi_paths(),
            "/api/agents": {
                "get": _op(
                    "My agents (admins: ?user=NAME or ?all=1)",
                    {"200": _resp("agents", agents_list)},
                    404,
                ),
                "post": _op(
                    "Create an agent",
                    {"201": _resp("created", agent)},
                    400,
                    403,
                    404,
                    409,
                    413,
                    body=create,
                ),
            },
            "/api/users/{user}/agents": {
                "get": _op(
                    "A user's agents", {"200": _resp("agents", agents_list)}, 404, params=up
                ),
                "post": _op(
                    "Create an agent for a user",
                    {"201": _resp("created", agent)},
                    400,
                    403,
                    404,
                    409,
                    413,
                    body=create,
                    params=up,
                ),
            },
            "/api/users/{user}/agents/{slug}": {
                "get": _op("One agent", {"200": _resp("agent", agent)}, 404, params=ua),
                "patch": _op(
                    "Update an agent (applies at its next start)",
                    {"200": _resp("agent", agent)},
                    400,
                    403,
                    404,
                    413,
                    body=update,
                    params=ua,
                ),
                "delete": _op(
                    "Stop and remove the agent's server, then delete the agent",
                    {"204": _resp("deleted")},
                    404,
                    409,
                    params=ua,
                ),
            },
            "/api/users/{user}/agents/{slug}/start": {
                "post": _op(
                    "Start the agent's sandbox (spawns in the background; follow it with"
                    " the hub's progress API). Owners, administrators and the owner's"
                    " drivers",
                    {"202": _resp("agent", agent)},
                    403,
                    404,
                    409,
                    params=ua,
                )
            },
            "/api/users/{user}/agents/{slug}/stop": {
                "post": _op(
                    "Stop the agent's sandbox (waits until stopped)",
                    {"200": _resp("agent", agent)},
                    404,
                    409,
                    params=ua,
                )
            },
            "/api/users/{user}/agents/{slug}/restart": {
                "post": _op(
                    "Stop the agent's sandbox if it runs, then start it (spawns in the"
                    " background; follow it with the hub's progress API)",
                    {"202": _resp("agent", agent)},
                    404,
                    409,
                    params=ua,
                )
            },
            "/api/users/{user}/agents/{slug}/usage": {
                "get": _op("Model usage per day", {"200": _resp("usage")}, 404, params=ua)
            },
            "/api/settings": {"get": _op("My resolved settings", {"200": _resp("ok")})},
            "/api/settings/system": {
                "get": _op("System overrides (admin)", {"200": _resp("ok")}, 403),
                "put": _op(
                    "Replace system overrides (admin)",
                    {"200": _resp("ok")},
                    400,
                    403,
                    body=overrides,
                ),
            },
            "/api/users/{user}/settings": {
                "get": _op("A user's overrides", {"200": _resp("ok")}, 404, params=up),
                "put": _op(
                    "Replace a user's overrides (admin)",
                    {"200": _resp("ok")},
                    400,
                    403,
                    404,
                    body=overrides,
                    params=up,
                ),
                "delete": _op(
                    "Clear a user's overrides (admin)", {"204": _resp("cleared")}, 403, params=up
                ),
            },
            "/api/providers": {"get": _op("Provider presets", {"200": _resp("ok")})},
            "/llm/v1/messages": {
                "post": {
                    "summary": "Anthropic Messages API through the credential proxy"
                    " (x-api-key: per-agent token)",
                    "security": [],
                    "responses": {
                        "200": _resp("the provider's response, streamed"),
                        "401": _resp("Anthropic-format error"),
                    },
                }
            },
            "/llm/v1/messages/count_tokens": {
                "post": {
                    "summary": "Anthropic token counting through the credential proxy"
                    " (x-api-key: per-agent token)",
                    "security": [],
                    "responses": {
                        "200": _resp("the provider's count"),
                        "401": _resp("Anthropic-format error"),
                    },
                }
            },
        },
    }


class OpenApiHandler(BaseHandler):
    async def get(self) -> None:
        self.finish(json.dumps(document(self.ctx.prefix)))
