"""The skill marketplace API against the real stack: official skills, tiers and who
sees what, versions, forks, installs into agents."""

from __future__ import annotations

import uuid

import pytest
from helpers import HubApi, greeting_skill

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
    path = f"users/{name}/agents/helper/skills"
    assert stranger.sac("GET", path).status_code == 404
    assert stranger.sac("POST", path, json={"skill_id": mine["id"]}).status_code == 404
    theirs = stranger.sac("POST", "skills", json=greeting_skill("their-one")).json()
    assert user.sac("POST", path, json={"skill_id": theirs["id"]}).status_code == 404
    assert user.sac("POST", path, json={"skill_id": "1; DROP TABLE skills"}).status_code == 400
    assert user.sac("GET", "skills", params={"q": "%_'\\"}).status_code == 200
    assert user.sac("GET", "skills/..%2Fagents").status_code == 404
