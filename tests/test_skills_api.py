"""The skill marketplace API against the real stack: official skills, tiers and who
sees what, versions, forks, installs into agents."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from helpers import HubApi, greeting_skill, run_in_terminal, running_agent, tar_gz

pytestmark = pytest.mark.stack


def _ids(client: HubApi, **params: str) -> set[int]:
    resp = client.sac("GET", "skills", params={"limit": "200", **params})
    assert resp.status_code == 200, resp.text
    return {s["id"] for s in resp.json()["skills"]}


def test_official_skills_are_shipped_to_everyone(new_user) -> None:
    _, user = new_user("skr")
    official = user.sac("GET", "skills", params={"tier": "official", "limit": "200"}).json()
    commands = {s["command"] for s in official["skills"]}
    assert {"explain-notebook", "test-module", "summarise-csv", "review-diff", "draft-sql",
            "notebook-to-script"} <= commands  # fmt: skip
    draft = next(s for s in official["skills"] if s["command"] == "draft-sql")
    assert draft["owner"] is None and draft["version"] >= 1
    assert {p["name"] for p in draft["parameters"]} >= {"question", "schema", "dialect"}


def test_tiers_visibility_versions_and_forks(admin: HubApi, new_user) -> None:
    ann_name, ann = new_user("ann")
    bob_name, bob = new_user("bob")
    group = f"g{uuid.uuid4().hex[:6]}"
    assert admin.hub("POST", f"groups/{group}").status_code in (201, 409)
    assert admin.hub("POST", f"groups/{group}/users", json={"users": [ann_name]}).status_code == 200

    private = ann.sac("POST", "skills", json=greeting_skill("greet")).json()
    assert private["visibility"] == "private" and private["version"] == 1
    public = ann.sac("POST", "skills", json=greeting_skill("greet-all", visibility="public")).json()
    shared = ann.sac(
        "POST", "skills", json=greeting_skill("greet-team", visibility="group", group=group)
    )
    assert shared.status_code == 201, shared.text
    shared = shared.json()

    assert {private["id"], public["id"], shared["id"]} <= _ids(ann)
    seen_by_bob = _ids(bob)
    assert public["id"] in seen_by_bob
    assert private["id"] not in seen_by_bob and shared["id"] not in seen_by_bob
    assert bob.sac("GET", f"skills/{private['id']}").status_code == 404
    assert bob.sac("PATCH", f"skills/{public['id']}", json={"title": "mine"}).status_code == 403
    assert bob.sac("DELETE", f"skills/{public['id']}").status_code == 403
    assert {private["id"], shared["id"]} <= _ids(admin)

    # Only admins publish official skills; only members share with a group.
    denied = bob.sac("POST", "skills", json=greeting_skill("official-x", visibility="official"))
    assert denied.status_code == 403 and denied.json()["field"] == "visibility"
    denied = bob.sac(
        "POST", "skills", json=greeting_skill("team-x", visibility="group", group=group)
    )
    assert denied.status_code == 403 and denied.json()["field"] == "group"
    assert ann.sac("POST", "skills", json=greeting_skill("greet")).status_code == 409

    # A content change is a new version; the same content is not.
    changed = ann.sac("PATCH", f"skills/{public['id']}", json={"prompt": "Hi {{who}}!"}).json()
    assert changed["version"] == 2
    same = ann.sac("PATCH", f"skills/{public['id']}", json={"prompt": "Hi {{who}}!"}).json()
    assert same["version"] == 2

    fork = bob.sac("POST", f"skills/{public['id']}/fork", json={}).json()
    assert fork["owner"] == bob_name and fork["parent_id"] == public["id"]
    assert fork["visibility"] == "private" and fork["prompt"] == "Hi {{who}}!"
    assert ann.sac("GET", f"skills/{fork['id']}").status_code == 404
    assert bob.sac("POST", f"skills/{private['id']}/fork").status_code == 404


def test_install_uninstall_and_collisions(new_user) -> None:
    name, user = new_user("inst")
    assert user.sac("POST", "agents", json={"slug": "helper"}).status_code == 201
    official = user.sac("GET", "skills", params={"q": "draft-sql"}).json()["skills"][0]
    path = f"users/{name}/agents/helper/skills"
    assert user.sac("POST", path, json={"skill_id": official["id"]}).status_code == 201
    assert user.sac("POST", path, json={"skill_id": official["id"]}).status_code == 201
    mine = user.sac("POST", "skills", json=greeting_skill("draft-sql")).json()
    clash = user.sac("POST", path, json={"skill_id": mine["id"]})
    assert clash.status_code == 409 and "draft-sql" in clash.json()["message"]
    installed = user.sac("GET", path).json()["skills"]
    assert [s["id"] for s in installed] == [official["id"]]
    assert user.sac("GET", f"skills/{official['id']}").json()["installs"] >= 1

    other = user.sac("POST", "skills", json=greeting_skill("greeter")).json()
    installed = user.sac("POST", path, json={"skill_id": other["id"]})
    assert installed.status_code == 201 and installed.json()["installs"] == 1
    # Deleting a skill removes its installs.
    assert user.sac("DELETE", f"skills/{other['id']}").status_code == 204
    assert [s["command"] for s in user.sac("GET", path).json()["skills"]] == ["draft-sql"]
    assert user.sac("DELETE", f"{path}/{official['id']}").status_code == 204
    assert user.sac("DELETE", f"{path}/{official['id']}").status_code == 404
    assert user.sac("GET", path).json()["skills"] == []


def test_bad_input_and_other_users(new_user) -> None:
    name, user = new_user("bad")
    _, stranger = new_user("str")
    assert user.sac("POST", "agents", json={"slug": "helper"}).status_code == 201
    for change, field in [
        ({"command": "Not Kebab"}, "command"),
        ({"prompt": "{{nobody}}"}, "prompt"),
        ({"parameters": [{"name": "d", "type": "date", "default": "soon"}]},
         "parameters[0].default"),
        ({"visibility": "secret"}, "visibility"),
        ({"owner": "someone"}, "owner"),
    ]:  # fmt: skip
        resp = user.sac("POST", "skills", json={**greeting_skill("x-skill"), **change})
        assert resp.status_code == 400 and resp.json()["field"] == field, resp.text
    mine = user.sac("POST", "skills", json=greeting_skill("secret-one")).json()
    # What a change or a fork may hold is the document's (openapi.yaml SkillChange,
    # SkillFork): anything else is named, and changes nothing.
    for method, where in (("PATCH", f"skills/{mine['id']}"), ("POST", f"skills/{mine['id']}/fork")):
        resp = user.sac(method, where, json={"colour": "blue"})
        assert resp.status_code == 400, resp.text
        assert (resp.json()["error"], resp.json()["field"]) == ("unknown_field", "colour")
    assert user.sac("GET", f"skills/{mine['id']}").json()["version"] == mine["version"]
    path = f"users/{name}/agents/helper/skills"
    assert stranger.sac("GET", path).status_code == 404
    assert stranger.sac("POST", path, json={"skill_id": mine["id"]}).status_code == 404
    theirs = stranger.sac("POST", "skills", json=greeting_skill("their-one")).json()
    assert user.sac("POST", path, json={"skill_id": theirs["id"]}).status_code == 404
    assert user.sac("POST", path, json={"skill_id": "1; DROP TABLE skills"}).status_code == 400
    assert user.sac("GET", "skills", params={"q": "%_'\\"}).status_code == 200
    assert user.sac("GET", "skills/..%2Fagents").status_code == 404


def test_installs_are_pinned_and_only_their_installer_moves_them(admin: HubApi, new_user) -> None:
    ann_name, ann = new_user("pia")
    bob_name, bob = new_user("pib")
    command = f"pin-{uuid.uuid4().hex[:6]}"
    skill = ann.sac("POST", "skills", json=greeting_skill(command, visibility="public")).json()
    sid = skill["id"]
    for client in (bob, ann):
        assert client.sac("POST", "agents", json={"slug": "helper"}).status_code == 201
    bob_path, ann_path = (f"users/{u}/agents/helper/skills" for u in (bob_name, ann_name))

    installed = bob.sac("POST", bob_path, json={"skill_id": sid})
    assert installed.status_code == 201, installed.text
    pin = installed.json()
    assert (pin["installed_version"], pin["latest_version"], pin["update_available"]) == (
        1, 1, False
    )  # fmt: skip
    assert pin["available"] and len(pin["checksum"]) == 64
    assert ann.sac("POST", ann_path, json={"skill_id": sid}).status_code == 201

    def mine(client: HubApi, path: str) -> dict:
        listed = client.sac("GET", path)
        assert listed.status_code == 200, listed.text
        return next(s for s in listed.json()["skills"] if s["id"] == sid)

    # The owner's edits make new versions; every install, the owner's own too, keeps
    # the version it has, and is told about the newer one.
    for n in (2, 3):
        edited = ann.sac("PATCH", f"skills/{sid}", json={"prompt": f"Greet {{{{who}}}} ({n})."})
        assert edited.status_code == 200 and edited.json()["version"] == n, edited.text
    for client, path in ((bob, bob_path), (ann, ann_path)):
        now = mine(client, path)
        assert (now["installed_version"], now["version"], now["latest_version"]) == (1, 1, 3)
        assert now["update_available"] and now["prompt"] == "Greet {{who}}."
        assert now["checksum"] == pin["checksum"]
    again = bob.sac("POST", bob_path, json={"skill_id": sid})  # installing again moves nothing
    assert again.status_code == 201 and again.json()["installed_version"] == 1, again.text

    # An update names the version the installer saw: a newer one is refused.
    stale = bob.sac("POST", f"{bob_path}/{sid}/update", json={"version": 2})
    assert stale.status_code == 409 and stale.json()["error"] == "version_changed", stale.text
    assert stale.json()["field"] == "version" and mine(bob, bob_path)["installed_version"] == 1
    for body, status in (({"version": "3"}, 400), ({"version": 0}, 400), ({"colour": 1}, 400)):
        resp = bob.sac("POST", f"{bob_path}/{sid}/update", json=body)
        assert resp.status_code == status, (body, resp.text)
    assert ann.sac("POST", f"{bob_path}/{sid}/update", json={}).status_code == 404
    other = bob.sac("POST", "skills", json=greeting_skill(f"other-{command}")).json()
    assert bob.sac("POST", f"{bob_path}/{other['id']}/update").status_code == 404

    # 3.0 is the integer 3 to JSON Schema (and schemathesis sends it): refused with 400
    # "expected a version number" before.
    updated = bob.sac("POST", f"{bob_path}/{sid}/update", json={"version": 3.0})
    assert updated.status_code == 200, updated.text
    now = updated.json()
    assert (now["installed_version"], now["latest_version"], now["update_available"]) == (
        3, 3, False
    )  # fmt: skip
    assert now["prompt"] == "Greet {{who}} (3)." and now["checksum"] != pin["checksum"]
    assert mine(bob, bob_path) == now
    assert mine(ann, ann_path)["installed_version"] == 1  # each install moves on its own

    # An administrator updating someone's install is audited, like an install.
    assert admin.sac("POST", f"{ann_path}/{sid}/update").status_code == 200
    entries = admin.sac("GET", "audit", params={"user": ann_name, "action": "agent.skill.update"})
    [entry] = entries.json()["entries"]  # ann is new: only this one
    assert entry["target"] == "helper" and entry["actor"] == "admin"
    assert (entry["before"]["version"], entry["after"]["version"]) == (1, 3)
    assert entry["after"]["skill_id"] == sid

    # No longer shared with Bob: still listed (it is installed), but not available,
    # and nothing announced about versions he may not see; shared again, it is.
    assert ann.sac("PATCH", f"skills/{sid}", json={"visibility": "private"}).status_code == 200
    assert ann.sac("PATCH", f"skills/{sid}", json={"prompt": "Hidden {{who}}."}).status_code == 200
    hidden = mine(bob, bob_path)
    assert (hidden["available"], hidden["latest_version"], hidden["update_available"]) == (
        False, None, False
    )  # fmt: skip
    assert hidden["installed_version"] == 3 and hidden["prompt"] == "Greet {{who}} (3)."
    assert bob.sac("POST", f"{bob_path}/{sid}/update").status_code == 404
    assert ann.sac("PATCH", f"skills/{sid}", json={"visibility": "public"}).status_code == 200
    shown = mine(bob, bob_path)
    assert shown["available"] and shown["latest_version"] == 4 and shown["update_available"]

    # Deleted: gone from every agent, as before.
    assert ann.sac("DELETE", f"skills/{sid}").status_code == 204
    assert bob.sac("GET", bob_path).json()["skills"] == []


# Path parts that look like numbers but name no skill. "²" and "٣" pass str.isdigit();
# int() refuses the first (a 500 once) and reads the second as 3 (another skill's id),
# the third is past PostgreSQL's bigint, the last two have a sign.
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


def _not_ids(real_id: int) -> list[str]:
    return ["²", str(real_id).translate(ARABIC_INDIC), "9" * 30, "9223372036854775808",
            "-1", f"-{real_id}", f"+{real_id}"]  # fmt: skip


def _assert_json_error(resp, status: int) -> None:
    assert resp.status_code == status, (resp.request.url, resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["error"] == ("not_found" if status == 404 else "invalid_field")


def test_ids_that_are_not_plain_numbers_name_no_skill(new_user) -> None:
    name, user = new_user("ids")
    assert user.sac("POST", "agents", json={"slug": "helper"}).status_code == 201
    mine = user.sac("POST", "skills", json=greeting_skill("id-probe")).json()
    path = f"users/{name}/agents/helper/skills"
    assert user.sac("POST", path, json={"skill_id": mine["id"]}).status_code == 201
    for raw in _not_ids(mine["id"]):
        for method, route in [
            ("GET", f"skills/{raw}"),
            ("PATCH", f"skills/{raw}"),
            ("DELETE", f"skills/{raw}"),
            ("POST", f"skills/{raw}/fork"),
            ("GET", f"skills/{raw}/bundle"),
            ("DELETE", f"skills/{raw}/bundle"),
            ("DELETE", f"{path}/{raw}"),
        ]:
            body = {"json": {"description": "Changed."}} if method in ("PATCH", "POST") else {}
            _assert_json_error(user.sac(method, route, **body), 404)
        upload = user.sac("PUT", f"skills/{raw}/bundle", content=b"not read",
                          headers={"Content-Type": "application/gzip"})  # fmt: skip
        _assert_json_error(upload, 404)
    for value in (10**30, 2**63, -1, -mine["id"]):
        _assert_json_error(user.sac("POST", path, json={"skill_id": value}), 404)
    # Integer query arguments answer 400 naming the field.
    for raw in ("²", "٣", "9" * 30, "-1"):
        for route, arg in [("skills", "limit"), ("skills", "cursor"), ("hitl/requests", "limit")]:
            resp = user.sac("GET", route, params={arg: raw})
            _assert_json_error(resp, 400)
            assert resp.json()["field"] == arg
    # Nothing was changed or removed on the way.
    assert user.sac("GET", f"skills/{mine['id']}").json()["description"] == "Greets someone."
    assert [s["id"] for s in user.sac("GET", path).json()["skills"]] == [mine["id"]]


def test_an_agent_asks_for_bundles_by_plain_ids_only(stack: dict) -> None:
    """GET api/agent/skills/{id}/bundle (the sandbox's token) takes the same ids."""
    name = f"aid{uuid.uuid4().hex[:6]}"
    with running_agent(stack["admin"], name, "bundler", api_key="sk-unused") as user:
        skill = user.sac("POST", "skills", json=greeting_skill("with-files")).json()
        put = user.sac("PUT", f"skills/{skill['id']}/bundle",
                       content=tar_gz({"notes.txt": b"hello"}),
                       headers={"Content-Type": "application/gzip"})  # fmt: skip
        assert put.status_code == 200, put.text
        path = f"users/{name}/agents/bundler/skills"
        assert user.sac("POST", path, json={"skill_id": skill["id"]}).status_code == 201
        out = asyncio.run(
            run_in_terminal(stack["url"], user.token, name, "bundler", "echo $SAC_AGENT_TOKEN")
        )
        token = out.strip().splitlines()[-1]
        assert token.startswith("sac-agent-")
        agent = httpx.Client(base_url=stack["service_url"] + "api/agent/",
                             headers={"Authorization": f"Bearer {token}"}, timeout=60)  # fmt: skip
        assert agent.get(f"skills/{skill['id']}/bundle").status_code == 200
        for raw in _not_ids(skill["id"]):
            _assert_json_error(agent.get(f"skills/{raw}/bundle"), 404)
