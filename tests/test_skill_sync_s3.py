"""Skills with the S3 object store: a second `sac up` stack whose service keeps
bundles in a real S3-compatible server (moto, over HTTP). Sandboxes get small
bundles inline from the service and big ones through presigned URLs, and never
hold the store's credentials. Also: the sandbox-only bundle endpoints answer for
the agent's own installed, visible skills and nothing else."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import S3_BUCKET
from helpers import (
    HubApi,
    agent_home,
    agent_token,
    run_in_terminal,
    running_agent,
    server_url,
    tar_gz,
)

from jupyter_sac.objects import S3Store
from sac_testing.s3_server import S3Endpoint

pytestmark = pytest.mark.stack

BUCKET = S3_BUCKET

BODY = "---\nname: x\ndescription: x\n---\n\n# Use the attached files\n"


def skill(command: str, **extra: Any) -> dict[str, Any]:
    return {"command": command, "title": command, "description": f"{command} skill",
            "body": BODY, **extra}  # fmt: skip


def skills_dir(stack: dict[str, Any], slug: str) -> Path:
    return agent_home(stack["data_dir"], slug) / "home" / ".claude" / "skills"


def test_bundles_live_in_s3_and_reach_the_sandbox_without_its_keys(
    s3_stack: dict[str, Any],
) -> None:
    endpoint: S3Endpoint = s3_stack["endpoint"]
    user, slug = f"s3u{uuid.uuid4().hex[:6]}", "docs"
    big = os.urandom(300 * 1024)  # over the inline limit: a presigned download
    with running_agent(s3_stack["admin"], user, slug, api_key="sk-unused") as client:
        ids = {}
        for command, files in (
            ("small-bundle", {"notes.md": b"small notes\n"}),
            ("big-bundle", {"data/blob.bin": big, "README.md": b"big\n"}),
        ):
            created = client.sac("POST", "skills", json=skill(command))
            assert created.status_code == 201, created.text
            ids[command] = created.json()["id"]
            put = client.sac("PUT", f"skills/{ids[command]}/bundle", content=tar_gz(files))
            assert put.status_code == 200, put.text
            installed = client.sac(
                "POST", f"users/{user}/agents/{slug}/skills", json={"skill_id": ids[command]}
            )
            assert installed.status_code == 201, installed.text
        shas = {
            c: client.sac("GET", f"skills/{i}").json()["bundle"]["sha256"] for c, i in ids.items()
        }
        big_sha = shas["big-bundle"]

        # The bytes are in the bucket, not on the service's disk.
        store = S3Store(**endpoint.store_config(BUCKET, prefix="sac/"))
        keys = [i.key for i in asyncio.run(store.list("skill-bundles/"))]
        assert {f"skill-bundles/{sha}.tar.gz" for sha in shas.values()} <= set(keys)
        assert not list((s3_stack["data_dir"]).glob("objects/skill-bundles/*"))

        base = server_url(s3_stack["url"], user, slug) + "sac/api/"
        auth = {"Authorization": f"token {client.token}"}
        synced = httpx.post(base + "skills/sync", headers=auth, timeout=60)
        assert synced.status_code == 200, synced.text
        folder = skills_dir(s3_stack, slug)
        assert (folder / "small-bundle" / "notes.md").read_bytes() == b"small notes\n"
        blob = (folder / "big-bundle" / "data" / "blob.bin").read_bytes()
        assert hashlib.sha256(blob).digest() == hashlib.sha256(big).digest()

        # The big one came straight from S3 with a presigned GET ...
        log = s3_stack["moto_log"].read_text()
        assert f"GET /{BUCKET}/sac/skill-bundles/{big_sha}.tar.gz?X-Amz-Algorithm" in log
        # ... and the sandbox holds no S3 credentials of any kind.
        env = asyncio.run(run_in_terminal(s3_stack["url"], client.token, user, slug, "env"))
        assert "SAC_AGENT_TOKEN" in env
        assert endpoint.secret_access_key not in env and endpoint.access_key_id not in env


def test_sandbox_bundle_endpoints_answer_only_for_the_agents_own_skills(
    s3_stack: dict[str, Any],
) -> None:
    admin: HubApi = s3_stack["admin"]
    user, slug = f"s3e{uuid.uuid4().hex[:6]}", "probe"
    other_name = f"s3o{uuid.uuid4().hex[:6]}"
    other = admin.create_user(other_name)
    theirs = other.sac("POST", "skills", json=skill("their-private"))
    assert theirs.status_code == 201, theirs.text
    bundle = tar_gz({"secret.txt": b"not for you\n"})
    assert (
        other.sac("PUT", f"skills/{theirs.json()['id']}/bundle", content=bundle).status_code == 200
    )
    with running_agent(admin, user, slug, api_key="sk-unused") as client:
        mine = client.sac("POST", "skills", json=skill("mine-public", visibility="public"))
        assert mine.status_code == 201, mine.text
        mine_id = mine.json()["id"]
        assert client.sac("PUT", f"skills/{mine_id}/bundle", content=bundle).status_code == 200
        assert client.sac(
            "POST", f"users/{user}/agents/{slug}/skills", json={"skill_id": mine_id}
        ).status_code == 201  # fmt: skip
        token = asyncio.run(agent_token(s3_stack["url"], client, user, slug))
        api = httpx.Client(base_url=s3_stack["service_url"] + "api/", timeout=60)
        as_agent = {"Authorization": f"Bearer {token}"}

        ok = api.post("agent/skills/bundles", json={"ids": [mine_id]}, headers=as_agent)
        assert ok.status_code == 200, ok.text
        assert len(ok.json()["bundles"]) == 1
        # Another user's private skill, a skill not installed, junk: refused whole.
        theirs_id = theirs.json()["id"]
        for body, status in (
            ({"ids": [mine_id, theirs_id]}, 404),
            ({"ids": [theirs_id]}, 404),
            ({"ids": ["1; DROP TABLE skills"]}, 400),
            ({"ids": [True]}, 400),
            ({"ids": list(range(2000))}, 400),
            ({"ids": [mine_id], "extra": 1}, 400),
        ):
            resp = api.post("agent/skills/bundles", json=body, headers=as_agent)
            assert resp.status_code == status, (body, resp.text)
            assert "not for you" not in resp.text
        refused = api.get(f"agent/skills/{theirs_id}/bundle", headers=as_agent)
        assert refused.status_code == 404
        # A user's own token is not an agent token.
        as_user = {"Authorization": f"token {client.token}"}
        for method, path, kw in (
            ("POST", "agent/skills/bundles", {"json": {"ids": [mine_id]}}),
            ("GET", "agent/skills", {}),
            ("GET", f"agent/skills/{mine_id}/bundle", {}),
        ):
            resp = api.request(method, path, headers=as_user, **kw)
            assert resp.status_code in (401, 403), (path, resp.text)

        # Uninstalled: no longer served to the sandbox.
        assert (
            client.sac("DELETE", f"users/{user}/agents/{slug}/skills/{mine_id}").status_code == 204
        )
        gone = api.post("agent/skills/bundles", json={"ids": [mine_id]}, headers=as_agent)
        assert gone.status_code == 404
        manifest = api.get("agent/skills", headers=as_agent)
        assert manifest.status_code == 200 and manifest.json()["skills"] == []
