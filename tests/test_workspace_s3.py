"""Workspaces on S3 (moto's S3 server over HTTP): files a sandbox writes land in the
bucket, a new sandbox of the agent gets them back through presigned URLs, and no
sandbox ever holds the store's credentials."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from typing import Any

import pytest
from conftest import S3_BUCKET
from helpers import agent_home, run_in_terminal, running_agent
from test_workspace import contents, listing, write

from jupyter_sac.objects import S3Store
from jupyter_sac.rules.workspace import object_key
from sac_testing.s3_server import S3Endpoint
from sac_testing.stack import poll_until

pytestmark = pytest.mark.stack


def test_workspace_files_live_in_s3_and_come_back_presigned(s3_stack: dict[str, Any]) -> None:
    endpoint: S3Endpoint = s3_stack["endpoint"]
    user, slug = f"s3w{uuid.uuid4().hex[:6]}", f"wks{uuid.uuid4().hex[:4]}"
    blob = os.urandom(200 * 1024)
    with running_agent(s3_stack["admin"], user, slug, api_key="sk-unused-key") as client:
        write(client, user, slug, "private/plan.md", "# plan\n")
        # A binary file written inside the sandbox by a process, not through Jupyter.
        home = agent_home(s3_stack["data_dir"], slug)
        (home / "workspace" / "output" / "blob.bin").write_bytes(blob)
        poll_until(
            lambda: {"private/plan.md", "output/blob.bin"} <= set(listing(client, user, slug)),
            30,
            "both files stored",
        )
        agent_id = home.name.split("-", 1)[0]
        sha = hashlib.sha256(blob).hexdigest()
        store = S3Store(**endpoint.store_config(S3_BUCKET, prefix="sac/"))
        keys = {i.key for i in asyncio.run(store.list(f"workspace/agents/{agent_id}/"))}
        assert object_key(f"agent:{agent_id}", sha) in keys and len(keys) == 2
        assert not list(s3_stack["data_dir"].glob("objects/workspace/**/*"))

        # A new machine: the sandbox's disk is gone; the files come back from S3.
        client.stop(user, slug)
        for sub in ("workspace", "home/.local/share/jupyter-sac"):
            for path in sorted((home / sub).rglob("*"), reverse=True):
                path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
        client.start(user, slug)
        poll_until(lambda: (home / "workspace" / "output" / "blob.bin").exists(), 60, "pulled")
        assert (home / "workspace" / "output" / "blob.bin").read_bytes() == blob
        assert contents(client, user, slug, "private/plan.md").json()["content"] == "# plan\n"
        # Downloaded straight from the bucket with a presigned GET.
        log = s3_stack["moto_log"].read_text()
        assert f"GET /{S3_BUCKET}/sac/workspace/agents/{agent_id}/{sha}?X-Amz-Algorithm" in log
        env = asyncio.run(run_in_terminal(s3_stack["url"], client.token, user, slug, "env"))
        assert endpoint.secret_access_key not in env and endpoint.access_key_id not in env
        files = asyncio.run(
            run_in_terminal(
                s3_stack["url"], client.token, user, slug,
                f"grep -rl {endpoint.secret_access_key} /workspace /home/sac 2>/dev/null | wc -l",
            )
        )  # fmt: skip
        assert files.strip() == "0"
