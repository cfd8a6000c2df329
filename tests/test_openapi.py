"""Each API has one contract, its OpenAPI 3.1 document (openapi.yaml in the package):
every route and method has an operation there, every operation a route and a method
that answers it, and request bodies are refused as the document says."""

from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate
from tornado import web

from jupyter_sac.contract import METHODS, Contract
from jupyter_sac.errors import ApiError
from jupyter_sac.rules.providers import PRESETS
from jupyter_sac.rules.settings import SPECS
from jupyter_sac.server_extension.openapi import CONTRACT as EXTENSION
from jupyter_sac.service.openapi import CONTRACT as SERVICE
from jupyter_sac.service.openapi import LEVEL_SCHEMAS

PREFIX = "/services/sac/"
# OAuth plumbing; the 404 catch-all; the credential proxy's route, whose two
# allowed paths (llm/v1/messages, llm/v1/messages/count_tokens) are documented.
NOT_PATHS = {"oauth_callback", "api/.*", "llm/(.*)"}
PROXY_PATHS = {("post", "/llm/v1/messages"), ("post", "/llm/v1/messages/count_tokens")}


def _template(pattern: str) -> str:
    """A route regex as an OpenAPI path with anonymous parameters."""
    return re.sub(r"\([^)]*\)", "{}", pattern).replace("\\.", ".")


def _methods(handler: type) -> set[str]:
    """The HTTP methods a handler class answers (those it defines itself)."""
    return {
        m
        for m in METHODS
        if getattr(handler, m, None) is not getattr(web.RequestHandler, m, None)
        and m not in ("head", "options")
    }


def _operations(contract: Contract) -> set[tuple[str, str]]:
    return {
        (method, re.sub(r"\{[^}]+\}", "{}", path))
        for path, item in contract.document["paths"].items()
        for method in item
        if method in METHODS
    }


def _two_way(routes: list[tuple[str, type]], contract: Contract) -> tuple[list, list]:
    """(route methods without an operation, operations without a route method)."""
    routed = {(m, "/" + _template(p).lstrip("/")) for p, h in routes for m in _methods(h)}
    documented = _operations(contract)
    return sorted(routed - documented), sorted(documented - routed)


def _service_routes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, type]]:
    from jupyter_sac.service.app import SacService

    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "unused")
    app = SacService(prefix=PREFIX).make_app()
    routes = [
        (rule.matcher.regex.pattern.rstrip("$")[len(PREFIX) :], rule.target)
        for rule in app.default_router.rules[0].target.rules
    ]
    # Pages (HTML, the admin pages) and static files are not part of the API;
    # the Prometheus metrics are.
    api = [(p, h) for p, h in routes if p.startswith(("api/", "llm/")) or p == "metrics"]
    return [(p, h) for p, h in api if p not in NOT_PATHS]


def test_every_service_route_has_an_operation_and_every_operation_a_route(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    routes = _service_routes(monkeypatch)
    undocumented, unrouted = _two_way(routes, SERVICE)
    assert len(routes) > 20 and not undocumented, f"not in openapi.yaml: {undocumented}"
    # The credential proxy answers its two paths from one catch-all route.
    unrouted = [op for op in unrouted if op not in PROXY_PATHS]
    assert not unrouted, f"in openapi.yaml, but no handler answers: {unrouted}"


def test_every_extension_route_has_an_operation_and_every_operation_a_route() -> None:
    from jupyter_sac.server_extension.app import ROUTES

    undocumented, unrouted = _two_way(ROUTES, EXTENSION)
    assert len(ROUTES) > 10 and not undocumented, f"not in openapi.yaml: {undocumented}"
    assert not unrouted, f"in openapi.yaml, but no handler answers: {unrouted}"


@pytest.mark.parametrize("contract", [SERVICE, EXTENSION], ids=["service", "extension"])
def test_the_documents_are_valid_openapi_3_1(contract: Contract) -> None:
    document = contract.served("/prefix/")
    assert document["openapi"].startswith("3.1")
    validate(document)


@pytest.mark.parametrize("contract", [SERVICE, EXTENSION], ids=["service", "extension"])
def test_every_operation_that_takes_a_body_says_it_may_be_too_large(contract: Contract) -> None:
    """Any body may be sent larger than the server reads (1 MiB for JSON), whatever
    its schema allows: every operation with one declares the 413 it then gets (the
    fuzzer found a skill's 200,000-character text, escaped, past the limit)."""
    silent = [
        f"{method.upper()} {path}"
        for path, operations in contract.document["paths"].items()
        for method, operation in operations.items()
        if isinstance(operation, dict)
        and "requestBody" in operation
        and "413" not in operation["responses"]
    ]
    assert not silent, f"no 413 declared: {silent}"


def test_settings_and_providers_come_from_the_rules() -> None:
    schemas = SERVICE.document["components"]["schemas"]
    # One schema per level, each with the settings that level may set.
    for schema, level in LEVEL_SCHEMAS.items():
        settable = {name for name, spec in SPECS.items() if level in spec.levels}
        assert set(schemas[schema]["properties"]) == settable, schema
    assert schemas["Provider"]["enum"] == list(PRESETS)
    update = SERVICE.operation("PUT", "/api/settings/system")
    assert update is not None
    with pytest.raises(ApiError) as refused:
        update.check_body({"cpu_limit": "lots"})
    assert (refused.value.code, refused.value.extra) == ("invalid_setting", {"field": "cpu_limit"})
    update.check_body({"cpu_limit": 2, "mem_limit": "2Gi", "egress_allow": None})


@pytest.mark.parametrize(
    "body, code, field",
    [
        ({}, "missing_field", "slug"),
        ({"slug": "ab-"}, "invalid_slug", "slug"),
        ({"slug": "a1", "provider": "nope"}, "unknown_provider", "provider"),
        ({"slug": "a1", "overrides": {"nope": 1}}, "invalid_setting", "overrides.nope"),
        ({"slug": "a1", "display_name": "x" * 101}, "invalid_field", "display_name"),
        ({"slug": "a1", "surprise": 1}, "unknown_field", "surprise"),
    ],
)
def test_a_body_the_document_refuses_names_its_field(body: dict, code: str, field: str) -> None:
    create = SERVICE.operation("POST", "/api/users/alice/agents")
    assert create is not None
    with pytest.raises(ApiError) as refused:
        create.check_body(body)
    assert refused.value.status_code == 400
    assert (refused.value.code, refused.value.extra) == (code, {"field": field})


def test_query_parameters_are_checked_as_their_types() -> None:
    search = SERVICE.operation("GET", "/api/history/search")
    assert search is not None
    search.check_query({"limit": [b"10"], "order": [b"asc"], "unknown": [b"x"],
                        "since": [b"2026-03-01T12:00:00+00:00"],
                        "until": [b"2026-03-01T12:00:00 00:00"]})  # fmt: skip
    for name, value in (("limit", b"0"), ("limit", b"ten"), ("order", b"sideways"),
                        ("since", b"yesterday"), ("until", b"")):  # fmt: skip
        with pytest.raises(ApiError) as refused:
            search.check_query({name: [value]})
        assert (refused.value.code, refused.value.extra) == ("invalid_field", {"field": name})
