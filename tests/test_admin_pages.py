"""The admin pages over HTTP: who may see and use them, what bad forms do, and that
their actions go through the same rules (and the audit log) as the API. The browser
walk through the same pages is in test_admin_browser.py."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest
from helpers import HubApi

from sac_testing.stack import poll_until

pytestmark = pytest.mark.stack

PAGES = [
    "admin/",
    "admin/settings",
    "admin/users",
    "admin/users/admin",
    "admin/agents",
    "admin/conversations",
    "admin/hitl",
    "admin/usage",
    "admin/audit",
    "admin/workspaces",
    "admin/maintenance",
]


def page(client: HubApi, path: str, **kw) -> httpx.Response:
    return client.client.get(client.service_url + path, **kw)


def post(client: HubApi, path: str, form: dict) -> httpx.Response:
    return client.client.post(client.service_url + path, data=form)


@pytest.fixture
def other(stack: dict, new_user) -> Iterator[tuple[str, HubApi, str]]:
    """Another user with a stopped agent."""
    name, client = new_user("own")
    slug = "tool"
    assert (
        client.sac("POST", "agents", json={"slug": slug, "api_key": "sk-unused-key"}).status_code
        == 201
    )
    yield name, client, slug
    client.sac("DELETE", f"users/{name}/agents/{slug}")


def audit_entries(admin: HubApi, after: int = 0, **filters: str) -> list[dict]:
    """Every audit entry matching ``filters`` (the API's: actor, user, target, action)
    with an id above ``after``, newest first, read page by page to the end."""
    out: list[dict] = []
    cursor = None
    while True:
        params = {**filters, "limit": 500, **({"cursor": cursor} if cursor else {})}
        resp = admin.sac("GET", "audit", params=params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        newer = [e for e in page["entries"] if e["id"] > after]
        out += newer
        cursor = page["next_cursor"]
        if not cursor or len(newer) < len(page["entries"]):
            return out


def audit_mark(admin: HubApi, **filters: str) -> int:
    """The id of the newest entry matching ``filters`` (0: none): entries written
    afterwards are the ones above it."""
    entries = admin.sac("GET", "audit", params={**filters, "limit": 1}).json()["entries"]
    return entries[0]["id"] if entries else 0


def test_non_admins_get_403_on_every_page_and_form_and_nothing_changes(
    admin: HubApi, new_user, other: tuple[str, HubApi, str]
) -> None:
    owner, _, slug = other
    name, user = new_user("plain")
    system_before = admin.sac("GET", "settings/system").json()["overrides"]
    for path in PAGES:
        resp = page(user, path, follow_redirects=True)
        assert resp.status_code == 403, (path, resp.status_code)
        assert resp.headers["content-type"].startswith("text/html")
        assert "for SAC administrators" in resp.text, path
    forms = [
        ("admin/settings", {"hitl_timeout": "5"}),
        (f"admin/users/{name}", {"action": "save", "max_agents_per_user": "99"}),
        (f"admin/users/{owner}", {"action": "clear"}),
        (f"admin/agents/{owner}/{slug}", {"action": "delete", "confirm": "1"}),
        (f"admin/agents/{owner}/{slug}", {"action": "resources", "cpu_limit": "0.5"}),
        (f"admin/hitl/{uuid.uuid4()}", {"decision": "allow"}),
        ("admin/workspaces", {"action": "quota", "group": "g", "group_quota_files": "5"}),
        ("admin/workspaces", {"action": "delete", "path": "anything.txt"}),
    ]
    for path, form in forms:
        resp = post(user, path, form)
        assert resp.status_code == 403, (path, resp.text[:300])
    # The API behind the pages refuses them too (403, or 404 for others' things).
    api = [
        ("GET", "settings/system", None, 403),
        ("PUT", "settings/system", {"hitl_timeout": 5}, 403),
        ("PUT", f"users/{name}/settings", {"max_agents_per_user": 99}, 403),
        ("DELETE", f"users/{owner}/settings", None, 403),
        ("GET", "audit", None, 403),
        ("GET", "audit/export.csv", None, 403),
        ("GET", f"users/{owner}/agents", None, 404),
        ("POST", f"users/{owner}/agents/{slug}/restart", None, 404),
        ("POST", f"users/{owner}/agents/{slug}/stop", None, 404),
        ("PATCH", f"users/{owner}/agents/{slug}", {"overrides": {}}, 404),
        ("GET", "history/search", {"user": owner}, 404),
        ("GET", "hitl/requests", {"user": owner}, 404),
    ]
    for method, path, body, code in api:
        kw = {"params": body} if method == "GET" and body else {"json": body} if body else {}
        resp = user.sac(method, path, **kw)
        assert resp.status_code == code, (method, path, resp.text[:200])
        assert resp.headers["content-type"].startswith("application/json")
    assert admin.sac("GET", "settings/system").json()["overrides"] == system_before
    assert admin.sac("GET", f"users/{owner}/agents/{slug}").status_code == 200
    # Nothing recorded: nothing done by this user, nothing about the users they aimed at.
    assert audit_entries(admin, actor=name) == []
    assert audit_entries(admin, user=owner) == [] and audit_entries(admin, user=name) == []


def test_a_member_of_sac_admins_administers_without_being_a_hub_admin(
    admin: HubApi, new_user
) -> None:
    name, before = new_user("deputy")
    assert page(before, "admin/agents").status_code == 403
    resp = admin.hub("POST", "groups/sac-admins/users", json={"users": [name]})
    assert resp.status_code == 200, resp.text
    try:
        # A token made now carries the role the group grants (custom:sac:admin).
        deputy = admin.create_user(name)
        for path in PAGES:
            resp = page(deputy, path, follow_redirects=True)
            assert resp.status_code == 200, (path, resp.text[:300])
        assert "Hub admin" not in page(deputy, "admin/agents").text
    finally:
        admin.hub("DELETE", "groups/sac-admins/users", json={"users": [name]})


def test_bad_forms_are_refused_with_the_reason_and_change_nothing(
    admin: HubApi, other: tuple[str, HubApi, str]
) -> None:
    owner, _, slug = other
    system_before = admin.sac("GET", "settings/system").json()["overrides"]
    agent_before = admin.sac("GET", f"users/{owner}/agents/{slug}").json()
    audit_before = audit_mark(admin, actor="admin")
    bad_system = [
        ({"hitl_timeout": "soon"}, "hitl_timeout: expected a whole number"),
        ({"cpu_limit": "-1"}, "cpu_limit: must be at least 0.01"),
        ({"mem_limit": "lots"}, "mem_limit: expected a byte count"),
        ({"hitl_default": "maybe"}, "hitl_default: expected one of"),
        ({"allowed_providers__override": "1", "allowed_providers": "evil"}, "unknown providers"),
        ({"max_agents_per_user": "1'; DROP TABLE agents; --"}, "max_agents_per_user"),
    ]
    for form, message in bad_system:
        resp = post(admin, "admin/settings", form)
        assert resp.status_code == 400, (form, resp.status_code)
        assert message in _error(resp.text), (form, _error(resp.text))
        # What was typed stays in the form (a select cannot show a wrong choice).
        field = next(iter(form))
        if field not in ("allowed_providers__override", "hitl_default"):
            assert f'value="{form[field]}"'.replace("'", "&#39;") in resp.text
    resp = post(admin, f"admin/agents/{owner}/{slug}", {"action": "resources", "cpu_limit": "99"})
    assert resp.status_code == 400 and "above this user's limit" in _error(resp.text)
    resp = post(admin, f"admin/agents/{owner}/{slug}", {"action": "delete"})
    assert resp.status_code == 400 and "tick the box" in _error(resp.text)
    resp = post(admin, f"admin/agents/{owner}/{slug}", {"action": "explode"})
    assert resp.status_code == 400
    resp = post(admin, f"admin/users/{owner}", {"action": "save", "cpu_limit": "1e999"})
    assert resp.status_code == 400
    # Unknown users, agents and requests: 404 pages.
    assert post(admin, "admin/users/nobody-" + uuid.uuid4().hex[:6], {}).status_code == 404
    assert page(admin, "admin/users/%E2%80%AEnobody").status_code == 404
    assert post(admin, f"admin/agents/{owner}/nope", {"action": "stop"}).status_code == 404
    assert post(admin, f"admin/hitl/{uuid.uuid4()}", {"decision": "allow"}).status_code == 404
    # Bad filters: 400 pages, SQL metacharacters are only text.
    assert page(admin, "admin/conversations", params={"since": "yesterday"}).status_code == 400
    assert page(admin, "admin/audit", params={"action": "'; --"}).status_code == 400
    assert page(admin, "admin/usage", params={"since": "2026-13-01"}).status_code == 400
    found = page(admin, "admin/agents", params={"user": "x' OR '1'='1"})
    assert found.status_code == 200 and "No agents." in found.text
    assert admin.sac("GET", "settings/system").json()["overrides"] == system_before
    assert admin.sac("GET", f"users/{owner}/agents/{slug}").json() == agent_before
    # Nothing recorded: no entry by the admin since, none about the owner ever.
    assert audit_entries(admin, after=audit_before, actor="admin") == []
    assert audit_entries(admin, user=owner) == []


def _error(text: str) -> str:
    match = re.search(r'id="error">([^<]*)<', text)
    return html.unescape(match.group(1)) if match else ""


def test_pages_change_what_the_api_shows_and_the_audit_log_records_it(
    admin: HubApi, other: tuple[str, HubApi, str]
) -> None:
    owner, _, slug = other
    saved = admin.sac("GET", "settings/system").json()["overrides"]
    audit_before = audit_mark(admin, actor="admin")
    try:
        resp = post(admin, "admin/settings", {"hitl_timeout": "900", "mem_limit": "8Gi"})
        assert resp.status_code == 303
        assert resp.headers["location"].endswith("admin/settings?done=settings-saved")
        assert admin.sac("GET", "settings/system").json()["overrides"] == {
            "hitl_timeout": 900,
            "mem_limit": 8 * 1024**3,
        }
        shown = page(admin, "admin/settings?done=settings-saved").text
        assert "System settings saved." in shown and 'value="8Gi"' in shown
        # A user's override, then the agent's resources, then clearing the user.
        resp = post(
            admin,
            f"admin/users/{owner}",
            {"action": "save", "cpu_limit": "1.5", "egress_deny": "Evil.example.\r\n10.0.0.0/8"},
        )
        assert resp.status_code == 303
        user_page = page(admin, f"admin/users/{owner}").text
        assert 'value="1.5"' in user_page
        assert ">evil.example\n10.0.0.0/8</textarea>" in user_page
        user_settings = admin.sac("GET", f"users/{owner}/settings").json()
        assert user_settings["overrides"]["egress_deny"] == ["evil.example", "10.0.0.0/8"]
        resp = post(
            admin,
            f"admin/agents/{owner}/{slug}",
            {"action": "resources", "cpu_limit": "0.5", "mem_limit": "1Gi", "cpu_request": ""},
        )
        assert resp.status_code == 303
        agent = admin.sac("GET", f"users/{owner}/agents/{slug}").json()
        assert agent["overrides"] == {"cpu_limit": 0.5, "mem_limit": 1024**3}
        assert agent["resolved"]["cpu_limit"] == 0.5
        assert post(admin, f"admin/users/{owner}", {"action": "clear"}).status_code == 303
        assert admin.sac("GET", f"users/{owner}/settings").json()["overrides"] == {}
        # Exactly these four by the admin since the test began (the culler, acting as
        # sac-service, may write entries of its own meanwhile), newest first.
        actions = [
            (e["action"], e["target"])
            for e in audit_entries(admin, after=audit_before, actor="admin")
        ]
        assert actions == [
            ("settings.user.clear", owner),
            ("agent.update", slug),
            ("settings.user.replace", owner),
            ("settings.system.replace", "system"),
        ]
    finally:
        admin.sac("PUT", "settings/system", json=saved)


def test_stop_and_restart_through_the_api_and_the_page(
    admin: HubApi, stack: dict, other: tuple[str, HubApi, str]
) -> None:
    owner, client, slug = other
    audit_before = audit_mark(admin, actor="admin")
    resp = admin.sac("POST", f"users/{owner}/agents/{slug}/restart")
    assert resp.status_code == 202, resp.text
    poll_until(lambda: (client.server(owner, slug) or {}).get("ready"), 90, "agent started")
    started = client.server(owner, slug)["started"]
    listed = page(admin, "admin/agents", params={"user": owner}).text
    assert 'data-status="running"' in listed
    resp = post(admin, f"admin/agents/{owner}/{slug}", {"action": "restart"})
    assert resp.status_code == 303 and "done=agent-restarted" in resp.headers["location"]

    def restarted() -> bool:
        server = client.server(owner, slug) or {}
        return bool(server.get("ready")) and server.get("started") != started

    poll_until(restarted, 90, "agent restarted")
    resp = admin.sac("POST", f"users/{owner}/agents/{slug}/stop")
    assert resp.status_code == 200 and resp.json()["server"]["ready"] is False
    assert not client.server(owner, slug)
    # The admin's three actions, about the owner's agent, newest first (the culler
    # may write entries about other agents meanwhile: they are not the admin's).
    mine = audit_entries(admin, after=audit_before, actor="admin")
    assert [(e["action"], e["target_user"], e["target"]) for e in mine] == [
        ("agent.stop", owner, slug), ("agent.restart", owner, slug),
        ("agent.restart", owner, slug),
    ]  # fmt: skip
    # The owner's own restart and stop are not admin actions: no audit entry.
    resp = client.sac("POST", f"users/{owner}/agents/{slug}/restart")
    assert resp.status_code == 202, resp.text
    poll_until(lambda: (client.server(owner, slug) or {}).get("ready"), 90, "agent started")
    assert client.sac("POST", f"users/{owner}/agents/{slug}/stop").status_code == 200
    assert audit_entries(admin, actor=owner) == []
    assert audit_entries(admin, user=owner) == mine


def test_the_home_page_lists_my_agents_and_the_api_index_moved(
    stack: dict, other: tuple[str, HubApi, str]
) -> None:
    owner, client, slug = other
    home = page(client, "")
    assert home.status_code == 200 and home.headers["content-type"].startswith("text/html")
    assert slug in home.text and "stopped" in home.text
    assert f"spawn/{owner}/{slug}" in home.text
    assert "SAC administration" not in home.text  # no admin tabs for users
    index = client.sac("GET", "")
    assert index.json()["openapi"].endswith("api/openapi.json")
    # Without a login a browser is sent to the hub's OAuth, an API client gets 401.
    anonymous = httpx.get(stack["service_url"] + "admin/settings")
    assert anonymous.status_code == 302 and "oauth2/authorize" in anonymous.headers["location"]
    assert httpx.get(stack["service_url"] + "api/settings").status_code == 401


def test_organisation_keys_are_set_on_the_settings_page_and_used_by_the_proxy(
    stack: dict, admin: HubApi, new_user, fake: str
) -> None:
    import asyncio

    from helpers import run_in_terminal, running_agent

    key = f"sk-org-{uuid.uuid4().hex}-7x9Q"
    user = f"orgk{uuid.uuid4().hex[:6]}"
    # An agent with no key of its own, on a provider with no organisation key yet.
    fields = {"provider": "custom", "base_url": fake}
    with running_agent(admin, user, "lean", **fields) as client:
        token = asyncio.run(
            run_in_terminal(stack["url"], client.token, user, "lean", "echo $SAC_AGENT_TOKEN")
        )
        proxy = httpx.Client(
            base_url=stack["service_url"] + "llm/",
            headers={"x-api-key": token},
            timeout=60,
        )
        message = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
        refused = proxy.post("v1/messages", json=message)
        assert refused.status_code == 401 and "organisation key" in refused.text

        # Refused changes: not an admin, bad keys, unknown providers.
        _, plain = new_user("nokey")
        assert (
            plain.sac("PUT", "organisation-keys/custom", json={"api_key": key}).status_code == 403
        )
        assert (
            post(plain, "admin/settings/keys/custom", {"action": "set", "api_key": key}).status_code
            == 403
        )
        for bad_key in ("short", "has spaces in it", "ключ-ключ-ключ", "x" * 1001, 42):
            resp = admin.sac("PUT", "organisation-keys/custom", json={"api_key": bad_key})
            assert resp.status_code == 400, bad_key
        assert admin.sac("PUT", "organisation-keys/nope", json={"api_key": key}).status_code == 404
        assert admin.sac("DELETE", "organisation-keys/custom").status_code == 404
        keys = {k["provider"]: k for k in admin.sac("GET", "organisation-keys").json()["keys"]}
        assert keys["custom"]["source"] is None

        try:
            resp = post(admin, "admin/settings/keys/custom", {"action": "set", "api_key": key})
            assert resp.status_code == 303 and "done=key-saved" in resp.headers["location"]
            shown = page(admin, "admin/settings").text
            assert "…7x9Q" in shown and key not in shown
            keys = {k["provider"]: k for k in admin.sac("GET", "organisation-keys").json()["keys"]}
            assert keys["custom"]["source"] == "service" and keys["custom"]["hint"] == "…7x9Q"
            assert keys["custom"]["updated_by"] == "admin"
            # The proxy now adds it; the sandbox never had it.
            httpx.delete(fake + "/_fake/requests")
            assert proxy.post("v1/messages", json=message).status_code == 200
            (sent,) = httpx.get(fake + "/_fake/requests").json()["requests"]
            assert sent["headers"].get("Authorization") == f"Bearer {key}" or (
                sent["headers"].get("X-Api-Key") == key
            )
            # The audit log says a key was set, never which.
            entry = admin.sac("GET", "audit", params={"action": "org_key.*"}).json()["entries"][0]
            assert entry["action"] == "org_key.set" and entry["after"]["hint"] == "…7x9Q"
            assert key not in admin.client.get(admin.service_url + "api/audit/export.csv").text
        finally:
            resp = post(admin, "admin/settings/keys/custom", {"action": "clear"})
        assert resp.status_code == 303
        assert proxy.post("v1/messages", json=message).status_code == 401
        entry = admin.sac("GET", "audit", params={"action": "org_key.*"}).json()["entries"][0]
        assert entry["action"] == "org_key.clear" and entry["after"] is None


def test_a_history_auditor_gets_the_conversations_page_only(admin: HubApi, new_user) -> None:
    name, _ = new_user("auditor")
    resp = admin.hub("POST", "groups/sac-history-auditors/users", json={"users": [name]})
    assert resp.status_code == 200, resp.text
    try:
        auditor = admin.create_user(name)  # a token with the group's role
        found = page(auditor, "admin/conversations", params={"user": "admin"})
        assert found.status_code == 200
        tabs = re.findall(r'href="/services/sac/admin/(\w+)"', found.text)
        assert tabs == ["conversations"]
        for path in PAGES:
            if path != "admin/conversations":
                assert page(auditor, path, follow_redirects=True).status_code == 403, path
        assert auditor.client.get(auditor.service_url + "api/history/export.csv").status_code == 200
    finally:
        admin.hub("DELETE", "groups/sac-history-auditors/users", json={"users": [name]})


def test_an_admin_manages_the_public_tree_and_group_quotas_from_the_page(
    admin: HubApi, new_user
) -> None:
    name, member = new_user("grp")
    group = f"team{uuid.uuid4().hex[:6]}"
    assert admin.hub("POST", f"groups/{group}").status_code == 201
    assert admin.hub("POST", f"groups/{group}/users", json={"users": [name]}).status_code == 200
    newcomers = f"new{uuid.uuid4().hex[:6]}"  # nobody in it yet
    assert admin.hub("POST", f"groups/{newcomers}").status_code == 201
    fname = f"guide-{uuid.uuid4().hex[:6]}.md"
    audit_before = audit_mark(admin, actor="admin")
    try:
        # Upload into a folder: stored under that path, readable by any user.
        resp = admin.client.post(
            admin.service_url + "admin/workspaces",
            data={"action": "upload", "folder": "handbooks/2026"},
            files={"file": (fname, b"# Read me\n", "text/markdown")},
        )
        assert resp.status_code == 303, resp.text[:300]
        path = f"handbooks/2026/{fname}"
        got = member.sac("GET", f"workspace/public/files/{path}")
        assert got.status_code == 200 and got.content == b"# Read me\n"
        listing = page(admin, "admin/workspaces")
        assert path in listing.text and group in listing.text and name in listing.text
        # A group without members is listed too, so its quota can be set beforehand.
        assert f'value="{newcomers}"' in listing.text
        # A folder that climbs out, or no file: a 400 page with the reason, nothing stored.
        files_before = member.sac("GET", "workspace/public").json()["usage"]["files"]
        bad = admin.client.post(
            admin.service_url + "admin/workspaces",
            data={"action": "upload", "folder": "../etc"},
            files={"file": ("x.txt", b"x", "text/plain")},
        )
        assert bad.status_code == 400 and 'id="error"' in bad.text
        empty = post(admin, "admin/workspaces", {"action": "upload"})
        assert empty.status_code == 400 and "choose a file" in empty.text
        assert member.sac("GET", "workspace/public").json()["usage"]["files"] == files_before
        # The group's quota: refused when bad, saved and resolved when good.
        wrong = post(admin, "admin/workspaces", {"action": "quota", "group": group,
                                                  "group_quota_bytes": "lots"})  # fmt: skip
        assert wrong.status_code == 400 and "group_quota_bytes" in wrong.text
        ok = post(admin, "admin/workspaces", {"action": "quota", "group": group,
                                               "group_quota_bytes": "2Mi",
                                               "group_quota_files": "3"})  # fmt: skip
        assert ok.status_code == 303, ok.text[:300]
        quota = member.sac("GET", f"groups/{group}/workspace/quota").json()
        assert quota["resolved"] == {"group_quota_bytes": 2 * 1024 * 1024, "group_quota_files": 3}
        # Delete the public file from the page.
        gone = post(admin, "admin/workspaces", {"action": "delete", "path": path})
        assert gone.status_code == 303
        assert member.sac("GET", f"workspace/public/files/{path}").status_code == 404
        entries = audit_entries(admin, after=audit_before, actor="admin")
        actions = [e["action"] for e in entries]
        assert sorted(actions) == [
            "settings.group.replace", "workspace.public.delete", "workspace.public.put",
        ]  # fmt: skip
    finally:
        admin.hub("DELETE", f"groups/{group}")
        admin.hub("DELETE", f"groups/{newcomers}")


def test_the_maintenance_preview_and_page_show_what_the_next_run_would_remove(
    admin: HubApi, new_user
) -> None:
    resp = admin.sac("GET", "maintenance/preview")
    assert resp.status_code == 200, resp.text
    due = resp.json()
    # The stack keeps history for ever (the default) and gives deleted agents 7 days.
    assert due["history"]["retention_days"] == 0 and due["history"]["events"] == 0
    assert due["deleted_agents"]["grace_days"] == 7
    _, person = new_user("mp")
    assert person.sac("GET", "maintenance/preview").status_code == 403
    shown = page(admin, "admin/maintenance")
    assert shown.status_code == 200, shown.text
    assert 'id="maintenance-history"' in shown.text
    assert 'id="maintenance-deleted-agents"' in shown.text
    assert "kept for ever" in shown.text
