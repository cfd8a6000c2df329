"""The audit log against the real stack: settings changes and administrators' actions
on other users' resources each leave exactly one entry (who, what, before, after,
when), secrets never reach it, and only administrators read or export it."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from typing import Any

import httpx
import pytest
from helpers import HubApi, run_in_terminal, running_agent

from jupyter_sac.service.forwarded import TrustedProxies
from jupyter_sac.store.audit import redact

pytestmark = pytest.mark.stack

ADMIN = "admin"
CSV_COLUMNS = ["at", "actor", "action", "target_user", "target", "before", "after"]


def _page(client: HubApi, **params: Any) -> dict[str, Any]:
    resp = client.sac("GET", "audit", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _newest_id(admin: HubApi) -> int:
    entries = _page(admin, limit=1)["entries"]
    return entries[0]["id"] if entries else 0


def _entries(admin: HubApi, limit: int = 100, **filters: Any) -> list[dict[str, Any]]:
    """Every entry matching the filters, newest first, following next_cursor."""
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = _page(admin, limit=limit, **filters, **({"cursor": cursor} if cursor else {}))
        out += page["entries"]
        cursor = page["next_cursor"]
        if not cursor:
            return out


def _new(admin: HubApi, after_id: int, **filters: Any) -> list[dict[str, Any]]:
    """The entries recorded since the entry ``after_id`` (ids only grow), newest first."""
    out = []
    for entry in _entries(admin, **filters):
        if entry["id"] <= after_id:
            break
        out.append(entry)
    return out


def _one(admin: HubApi, after_id: int, **filters: Any) -> dict[str, Any]:
    found = _new(admin, after_id, **filters)
    assert len(found) == 1, found
    return found[0]


def _export(client: HubApi, **params: Any) -> httpx.Response:
    return client.sac("GET", "audit/export.csv", params=params)


def test_settings_changes_are_recorded(admin: HubApi, new_user) -> None:
    # System level: a value equal to its default, so nothing else in the session changes.
    original = admin.sac("GET", "settings/system").json()["overrides"]
    key = next(k for k in ("max_processes", "storage_quota_files") if k not in original)
    changed = {**original, key: {"max_processes": 1024, "storage_quota_files": 1000}[key]}
    mark = _newest_id(admin)
    try:
        assert admin.sac("PUT", "settings/system", json=changed).status_code == 200
        entry = _one(admin, mark)
    finally:
        assert admin.sac("PUT", "settings/system", json=original).status_code == 200
    assert entry["actor"] == ADMIN and entry["actor_admin"] is True
    assert entry["action"] == "settings.system.replace"
    assert entry["target"] == "system" and entry["target_user"] is None
    assert entry["before"] == original and entry["after"] == changed
    assert entry["ip"] and entry["at"]

    # User level: replace, replace again, clear.
    name, user = new_user("aud")
    mark = _newest_id(admin)
    path = f"users/{name}/settings"
    assert admin.sac("PUT", path, json={"max_agents_per_user": 3}).status_code == 200
    first = _one(admin, mark, user=name)
    assert (first["action"], first["target"], first["target_user"]) == (
        "settings.user.replace",
        name,
        name,
    )
    assert first["before"] == {} and first["after"] == {"max_agents_per_user": 3}
    mark = first["id"]
    assert admin.sac("PUT", path, json={"max_agents_per_user": 4}).status_code == 200
    second = _one(admin, mark, user=name)
    assert second["before"] == {"max_agents_per_user": 3}
    assert second["after"] == {"max_agents_per_user": 4}
    assert admin.sac("DELETE", path).status_code == 204
    cleared = _one(admin, second["id"], user=name)
    assert cleared["action"] == "settings.user.clear" and cleared["actor"] == ADMIN
    assert cleared["before"] == {"max_agents_per_user": 4} and cleared["after"] == {}

    # Agent level, by the owner: an overrides change is a settings change; a rename is not.
    assert user.sac("POST", "agents", json={"slug": "own"}).status_code == 201
    agent = f"users/{name}/agents/own"
    assert user.sac("PATCH", agent, json={"display_name": "Renamed"}).status_code == 200
    assert _new(admin, cleared["id"], user=name) == [], "own agents' edits are not logged"
    resp = user.sac("PATCH", agent, json={"overrides": {"cpu_limit": 1.0}})
    assert resp.status_code == 200, resp.text
    own = _one(admin, cleared["id"], user=name)
    assert (own["actor"], own["actor_admin"], own["action"], own["target"]) == (
        name,
        False,
        "settings.agent.replace",
        "own",
    )
    assert own["before"] == {} and own["after"] == {"cpu_limit": 1.0}
    # Refused changes leave nothing.
    assert user.sac("PATCH", agent, json={"overrides": {"cpu_limit": -1}}).status_code == 400
    assert admin.sac("PUT", path, json={"max_agents_per_user": "x"}).status_code == 400
    assert _new(admin, own["id"], user=name) == []
    assert user.sac("DELETE", agent).status_code == 204
    assert _new(admin, own["id"], user=name) == [], "deleting one's own agent is not logged"


def test_the_recorded_address_is_the_clients_not_one_it_claims(admin: HubApi, new_user) -> None:
    """Through the public proxy, forged X-Real-Ip / X-Forwarded-For headers do not
    reach the audit log: the proxy (trusted, on loopback) appends the address it saw,
    and only that right-most entry is believed."""
    name, _ = new_user("ip")
    forged = {"X-Real-Ip": "203.0.113.9", "X-Forwarded-For": "198.51.100.7, 192.0.2.1"}
    for headers in (forged, {"X-Real-Ip": "203.0.113.9"}, {"X-Forwarded-For": "198.51.100.7"}):
        mark = _newest_id(admin)
        path = f"users/{name}/settings"
        resp = admin.sac("PUT", path, json={"max_agents_per_user": 2}, headers=headers)
        assert resp.status_code == 200, resp.text
        assert _one(admin, mark, user=name)["ip"] == "127.0.0.1", headers


def test_only_trusted_proxies_name_the_client() -> None:
    proxies = TrustedProxies(["127.0.0.0/8", "::1", "10.0.0.0/8"])
    # A trusted proxy: the entry it appended, whatever the client put before it.
    assert proxies.client_ip("127.0.0.1", ["198.51.100.7, 192.0.2.33"]) == "192.0.2.33"
    assert proxies.client_ip("10.1.2.3", ["198.51.100.7", "192.0.2.33"]) == "192.0.2.33"
    assert proxies.client_ip("::1", ["2001:db8::5"]) == "2001:db8::5"
    assert proxies.client_ip("::ffff:127.0.0.1", ["192.0.2.33"]) == "192.0.2.33"
    assert proxies.client_ip("127.0.0.1", ["::ffff:192.0.2.33"]) == "192.0.2.33"
    # ... and its own address when it sent none, or not an address.
    assert proxies.client_ip("127.0.0.1", []) == "127.0.0.1"
    assert proxies.client_ip("127.0.0.1", ["192.0.2.33, unknown"]) == "127.0.0.1"
    assert proxies.client_ip("127.0.0.1", ["192.0.2.33,"]) == "127.0.0.1"
    # Anyone else: the connection's address, whatever it claims.
    assert proxies.client_ip("192.0.2.50", ["127.0.0.1"]) == "192.0.2.50"
    assert proxies.client_ip("2001:db8::9", ["10.0.0.1"]) == "2001:db8::9"
    assert TrustedProxies([]).client_ip("127.0.0.1", ["192.0.2.33"]) == "127.0.0.1"
    with pytest.raises(ValueError):
        TrustedProxies(["not-a-network"])


def test_admin_agent_actions_are_recorded_without_secrets(admin: HubApi, new_user) -> None:
    name, user = new_user("aud")
    own_key, admin_key, created_key = (f"sk-audit-{uuid.uuid4().hex}" for _ in range(3))
    mark = _newest_id(admin)
    assert user.sac("POST", "agents", json={"slug": "box", "api_key": own_key}).is_success
    assert _new(admin, mark, user=name) == []
    path = f"users/{name}/agents/box"

    resp = admin.sac("PATCH", path, json={"model": "claude-audit-1", "api_key": admin_key})
    assert resp.status_code == 200, resp.text
    update = _one(admin, mark, user=name)
    assert (update["actor"], update["action"], update["target"], update["target_user"]) == (
        ADMIN,
        "agent.update",
        "box",
        name,
    )
    assert update["before"]["key_set"] is True and update["after"]["key_set"] is True
    assert update["before"]["model"] != "claude-audit-1"
    assert update["after"]["model"] == "claude-audit-1"
    assert {k: v for k, v in update["before"].items() if k != "model"} == {
        k: v for k, v in update["after"].items() if k != "model"
    }
    resp = admin.sac("PATCH", path, json={"api_key": None})
    assert resp.status_code == 200, resp.text
    forgot = _one(admin, update["id"], user=name)
    assert forgot["before"]["key_set"] is True and forgot["after"]["key_set"] is False

    policy = {"default": "ask", "allow": ["Read"], "ask": [], "deny": []}
    resp = admin.sac("PUT", f"{path}/hitl-policy", json={"policy": policy})
    assert resp.status_code == 200, resp.text
    replaced = _one(admin, forgot["id"], user=name)
    assert replaced["action"] == "hitl.policy.replace"
    assert replaced["before"] is None and replaced["after"] == policy

    resp = admin.sac("POST", f"users/{name}/agents", json={"slug": "made", "api_key": created_key})
    assert resp.status_code == 201, resp.text
    created = _one(admin, replaced["id"], user=name)
    assert (created["action"], created["target"]) == ("agent.create", "made")
    assert created["before"] is None and created["after"]["key_set"] is True

    assert admin.sac("DELETE", path).status_code == 204
    deleted = _one(admin, created["id"], user=name)
    assert (deleted["actor"], deleted["action"], deleted["target"]) == (
        ADMIN,
        "agent.delete",
        "box",
    )
    assert deleted["before"] == forgot["after"] and deleted["after"] is None
    assert admin.sac("DELETE", f"users/{name}/agents/made").status_code == 204

    listing = admin.sac("GET", "audit", params={"user": name})
    export = _export(admin, user=name)
    assert export.status_code == 200
    for key in (own_key, admin_key, created_key):
        assert key not in listing.text and key not in export.text
    assert "api_key" not in listing.text and "encrypted_key" not in listing.text


def test_redaction_of_secret_fields() -> None:
    assert redact({"api_key": "sk-1", "nested": [{"token": "t", "password": None}]}) == {
        "key_set": True,
        "nested": [{"token": "[redacted]", "password": None}],
    }
    assert redact({"encrypted_key": None, "model": "m"}) == {"key_set": False, "model": "m"}


def test_admin_decision_on_another_users_request(stack: dict, admin: HubApi) -> None:
    user = f"audhitl{uuid.uuid4().hex[:6]}"
    with running_agent(admin, user, "gate", api_key="sk-unused-key") as client:
        token = asyncio.run(
            run_in_terminal(stack["url"], client.token, user, "gate", "echo $SAC_AGENT_TOKEN")
        )
        with httpx.Client(
            base_url=stack["service_url"] + "api/",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        ) as sandbox:

            def file(command: str) -> str:
                resp = sandbox.post(
                    "hitl/requests",
                    json={"kind": "tool", "tool": "Bash", "input": {"command": command}},
                )
                assert resp.status_code == 201, resp.text
                return resp.json()["id"]

            mark = _newest_id(admin)
            own = file("ls")
            resp = client.sac("POST", f"hitl/requests/{own}/decision", json={"decision": "deny"})
            assert resp.status_code == 200, resp.text
            assert _new(admin, mark, user=user) == [], "deciding one's own request is not logged"

            rid = file("make deploy")
            resp = admin.sac(
                "POST",
                f"hitl/requests/{rid}/decision",
                json={"decision": "allow", "reason": "release day"},
            )
            assert resp.status_code == 200, resp.text
            entry = _one(admin, mark, user=user)
            assert (entry["actor"], entry["action"], entry["target"], entry["target_user"]) == (
                ADMIN,
                "hitl.decide",
                rid,
                user,
            )
            assert entry["before"]["status"] == "pending" and entry["before"]["agent"] == "gate"
            assert entry["before"]["tool"] == "Bash"
            assert entry["before"]["input"] == {"command": "make deploy"}
            assert entry["after"] == {
                "status": "approved",
                "decision": "allow",
                "option": None,
                "reason": "release day",
            }
            # A refused (second) decision leaves nothing.
            again = admin.sac("POST", f"hitl/requests/{rid}/decision", json={"decision": "deny"})
            assert again.status_code == 409
            assert _new(admin, entry["id"], user=user) == []

            # A terminal prompt answered with text: what was typed is on the record.
            prompt = sandbox.post("hitl/requests", json={
                "kind": "terminal", "tool": "claude", "question": "Enter a name:",
                "options": [{"key": "\r", "label": "Press Enter"}], "text_max": 40,
            })  # fmt: skip
            assert prompt.status_code == 201, prompt.text
            pid = prompt.json()["id"]
            resp = admin.sac(
                "POST", f"hitl/requests/{pid}/decision", json={"decision": "allow", "text": "v2.1"}
            )
            assert resp.status_code == 200, resp.text
            typed = _one(admin, entry["id"], user=user)
            assert typed["before"]["text_max"] == 40
            assert typed["after"] == {
                "status": "approved", "decision": "allow", "option": None, "reason": None,
                "text": "v2.1",
            }  # fmt: skip


def test_skill_curation_and_changes_to_others_skills(admin: HubApi, new_user) -> None:
    name, user = new_user("aud")
    body = "---\nname: x\ndescription: x\n---\n\nHello.\n"
    spec = {"title": "Audit", "description": "An audit test skill.", "body": body}
    mark = _newest_id(admin)
    mine = user.sac("POST", "skills", json={"command": f"a-{uuid.uuid4().hex[:6]}", **spec})
    assert mine.status_code == 201, mine.text
    assert _new(admin, mark, actor=name) == [], "a user's own skills are not logged"
    sid = str(mine.json()["id"])
    resp = admin.sac("PATCH", f"skills/{sid}", json={"title": "Audited"})
    assert resp.status_code == 200, resp.text
    changed = _one(admin, mark, target=sid)
    assert (changed["action"], changed["target_user"], changed["actor"]) == (
        "skill.update",
        name,
        ADMIN,
    )
    assert changed["before"]["title"] == "Audit" and changed["after"]["title"] == "Audited"
    assert changed["after"]["version"] == changed["before"]["version"] + 1

    command = f"official-audit-{uuid.uuid4().hex[:6]}"
    resp = admin.sac("POST", "skills", json={"command": command, "visibility": "official", **spec})
    assert resp.status_code == 201, resp.text
    oid = str(resp.json()["id"])
    resp = admin.sac("PATCH", f"skills/{oid}", json={"description": "Curated."})
    assert resp.status_code == 200, resp.text
    assert admin.sac("DELETE", f"skills/{oid}").status_code == 204
    curated = _new(admin, changed["id"], target=oid)
    assert [e["action"] for e in curated] == [
        "skill.official.delete",
        "skill.official.update",
        "skill.official.create",
    ]
    deleted, updated, created = curated
    assert created["before"] is None and created["after"]["command"] == command
    assert updated["before"]["description"] == "An audit test skill."
    assert updated["after"]["description"] == "Curated."
    assert deleted["before"] == updated["after"] and deleted["after"] is None
    assert _new(admin, changed["id"], action="skill.official.*", target=oid) == curated
    assert admin.sac("DELETE", f"skills/{sid}").status_code == 204


def test_only_admins_and_filters_are_checked(admin: HubApi, new_user) -> None:
    _, user = new_user("aud")
    for path in ("audit", "audit/export.csv"):
        resp = user.sac("GET", path)
        assert resp.status_code == 403, resp.text
        assert resp.json()["error"] == "forbidden"
        # refused before its filters are even read
        assert user.sac("GET", path, params={"since": "not a time"}).status_code == 403
    for path in ("audit", "audit/export.csv"):
        for params, field in [
            ({"since": "yesterday"}, "since"),
            ({"until": "2024-13-01"}, "until"),
            ({"since": "2024-02-01T00:00:00Z", "until": "2024-01-01T00:00:00Z"}, "until"),
            ({"action": "Agent Update"}, "action"),
            ({"action": "settings.**"}, "action"),
            ({"actor": "x" * 201}, "actor"),
        ]:
            resp = admin.sac("GET", path, params=params)
            assert resp.status_code == 400, (params, resp.text)
            assert resp.json()["field"] == field, resp.text
    for params, field in [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"cursor": "garbage"}, "cursor"),
        ({"cursor": "WyJ4IiwgIjEiXQ=="}, "cursor"),  # ["x", "1"]
    ]:
        resp = admin.sac("GET", "audit", params=params)
        assert resp.status_code == 400, (params, resp.text)
        assert resp.json()["field"] == field


def test_paging_filters_and_csv_export(admin: HubApi, new_user) -> None:
    name, user = new_user("aud")
    mark = _newest_id(admin)
    for n in range(1, 6):
        resp = admin.sac("PUT", f"users/{name}/settings", json={"max_agents_per_user": n})
        assert resp.status_code == 200, resp.text
    assert admin.sac("DELETE", f"users/{name}/settings").status_code == 204
    assert user.sac("POST", "agents", json={"slug": "a"}).status_code == 201
    resp = user.sac("PATCH", f"users/{name}/agents/a", json={"overrides": {"cpu_limit": 1.5}})
    assert resp.status_code == 200, resp.text

    every = _new(admin, mark, user=name)
    assert [e["action"] for e in every] == [
        "settings.agent.replace",
        "settings.user.clear",
        *["settings.user.replace"] * 5,
    ]
    assert [e["after"].get("max_agents_per_user") for e in every[2:]] == [5, 4, 3, 2, 1]

    # Pages of two: every entry once, newest first, the same as one big page.
    paged = _entries(admin, limit=2, user=name)
    assert [e["id"] for e in paged] == [e["id"] for e in every]
    assert len(_page(admin, user=name, limit=2)["entries"]) == 2

    # Filters: action (exact and prefix), actor, time range.
    assert _entries(admin, user=name, action="settings.user.replace") == every[2:]
    assert _entries(admin, user=name, action="settings.user.*") == every[1:]
    assert _entries(admin, user=name, action="settings.*") == every
    assert _entries(admin, user=name, action="settings") == []
    assert _entries(admin, actor=name) == every[:1]
    assert _entries(admin, actor=ADMIN, user=name) == every[1:]
    pivot = every[3]["at"]
    assert _entries(admin, user=name, since=pivot) == every[:4]
    assert _entries(admin, user=name, until=pivot) == every[4:]
    assert _entries(admin, user=name, since=every[-1]["at"], until=pivot) == every[4:]

    # The CSV holds the same entries, in the same order, with the same values.
    resp = _export(admin, user=name)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/csv")
    assert "attachment" in resp.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(resp.text)))
    assert rows[0] == CSV_COLUMNS
    records = [dict(zip(CSV_COLUMNS, row, strict=True)) for row in rows[1:]]
    assert len(records) == len(every)
    for record, entry in zip(records, every, strict=True):
        assert record["at"] == entry["at"]
        for column in ("actor", "action", "target"):
            assert record[column] == entry[column]
        assert record["target_user"] == (entry["target_user"] or "")
        for column in ("before", "after"):
            assert (json.loads(record[column]) if record[column] else None) == entry[column]
    filtered = _export(admin, user=name, action="settings.user.replace", since=pivot)
    assert len(list(csv.reader(io.StringIO(filtered.text)))) == 1 + 2
    assert user.sac("DELETE", f"users/{name}/agents/a").status_code == 204


def test_the_access_audit_reads_only_moved_users_and_names_foreign_servers() -> None:
    from jupyter_sac.service.access_audit import changed_since, foreign_servers

    scopes = [
        "access:servers!server=alice/a1",
        "access:servers!server=ann/x",  # the holder's own
        "access:servers!user=bob",
        "read:users!user=alice",
        "access:servers!server=alice/a1",
    ]
    assert foreign_servers("ann", scopes) == [("alice", "a1")]
    users = [
        {"name": "ann", "last_activity": "2026-12-06T06:00:00Z"},
        {"name": "bob", "last_activity": None},
        {"name": "cid", "last_activity": "2026-12-06T06:01:00Z"},
    ]
    assert changed_since(users, {}) == ["ann", "bob", "cid"]
    seen = {"ann": "2026-12-06T06:00:00Z", "bob": None, "cid": "2026-12-06T05:00:00Z"}
    assert changed_since(users, seen) == ["cid"]
