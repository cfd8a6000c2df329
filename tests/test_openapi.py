"""Every endpoint the `sac` service routes is described in its OpenAPI document."""

from __future__ import annotations

import re

import pytest

from jupyter_sac.service.app import SacService
from jupyter_sac.service.openapi import document

PREFIX = "/services/sac/"
# OAuth plumbing; the 404 catch-all; the credential proxy's route, whose two
# allowed paths (llm/v1/messages, llm/v1/messages/count_tokens) are documented.
NOT_PATHS = {"oauth_callback", "api/.*", "llm/(.*)"}


def _template(pattern: str) -> str:
    """A route regex as an OpenAPI path with anonymous parameters."""
    return re.sub(r"\([^)]*\)", "{}", pattern).replace("\\.", ".")


def test_every_route_is_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "unused")
    app = SacService(prefix=PREFIX).make_app()
    routes = [
        rule.matcher.regex.pattern.rstrip("$")[len(PREFIX) :]
        for rule in app.default_router.rules[0].target.rules
    ]
    documented = {re.sub(r"\{[^}]+\}", "{}", p.lstrip("/")) for p in document(PREFIX)["paths"]}
    # Pages (HTML, the admin pages) and static files are not part of the API.
    api = [r for r in routes if r.startswith(("api/", "llm/"))]
    missing = [r for r in api if r not in NOT_PATHS and _template(r) not in documented]
    assert len(routes) > 20 and not missing, f"not in the OpenAPI document: {missing}"
    assert {"llm/v1/messages", "llm/v1/messages/count_tokens"} <= documented


def test_every_extension_route_is_documented() -> None:
    from jupyter_sac.server_extension.app import ROUTES
    from jupyter_sac.server_extension.openapi import document

    documented = {re.sub(r"\{[^}]+\}", "{}", p) for p in document("/user/u/a/")["paths"]}
    missing = [p for p, _ in ROUTES if _template(p) not in documented]
    assert len(ROUTES) > 10 and not missing, f"not in the extension's document: {missing}"
