"""The skills API for sandboxes (the agent's own token only): what to install,
and the bundles.

``GET api/agent/skills`` is the manifest of the agent's installed skills that its
owner may still read, each at the version its install pins (content, bundle, and
the install's checksum, which the sandbox verifies before writing), with an ETag
so a poll with nothing changed is one small query and a 304. An edit of the skill
changes nothing here until the installer updates the pin.
``POST api/agent/skills/bundles`` returns small bundles inline and
``GET api/agent/skills/{id}/bundle`` streams one (for stores that cannot presign).
A cold sync of a few hundred installed skills fetched each bundle in its own
request through the hub's proxy: ~200 round trips, most of a second. Bundles are
small and content-addressed, so the sandbox asks for the ones it lacks in one
request and gets them inline; big ones (over ``INLINE_BUNDLE_BYTES``) are left
for a single download each (presigned from S3, or streamed by the service).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from typing import Any

from ..errors import ApiError
from ..objects import ObjectNotFound
from .base import BaseHandler
from .operations.skills import bundle_key, bundle_model, content_fields
from .routes import NAME
from .skills import owner_view, stream_object
from .validation import bad, path_id, whole_number

# A bundle this small travels inline; a bigger one gets its own download.
INLINE_BUNDLE_BYTES = 256 * 1024
# Inline bytes per response, so one answer stays a modest JSON document.
INLINE_TOTAL_BYTES = 16 * 1024 * 1024
MAX_IDS = 1000
# Object store reads in flight for one request.
READ_CONCURRENCY = 8


def manifest_entry(row: dict[str, Any]) -> dict[str, Any]:
    """What a sandbox needs to materialise one installed skill: the pinned version,
    and the checksum its install recorded (``delivery_checksum`` of these fields)."""
    return {
        "id": row["id"],
        **content_fields(row),
        "version": row["version"],
        "checksum": row["checksum"],
        "bundle": bundle_model(row),
    }


def manifest_etag(rows: list[dict[str, Any]]) -> str:
    # The install's checksum covers the pinned content and bundle, so it changes when
    # the pin moves (not when the skill is edited); id and command cover installs.
    keys = [(r["id"], r["command"], r["checksum"]) for r in rows]
    return '"' + hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:32] + '"'


class AgentManifestHandler(BaseHandler):
    """GET api/agent/skills (agent token): what the sandbox should have installed.

    Answers 304 to a matching If-None-Match, so polling costs one small query."""

    async def get(self) -> None:
        agent = await self.require_agent()
        rows = await self.ctx.store.skills.installed(
            agent.id, visible_to=await owner_view(self.ctx, agent.owner)
        )
        etag = manifest_etag(rows)
        self.set_header("ETag", etag)
        if etag in self.request.headers.get("If-None-Match", ""):
            self.set_status(304)
            self.finish()
            return
        entries = [manifest_entry(r) for r in rows]
        for entry in entries:
            if entry["bundle"]:
                # S3: the sandbox fetches straight from the store, without credentials.
                entry["bundle"]["url"] = self.ctx.objects.presign_get(
                    bundle_key(entry["bundle"]["sha256"]), expires=300
                )
        self.write_json({"skills": entries, "etag": etag})


class AgentBundleHandler(BaseHandler):
    """GET api/agent/skills/{id}/bundle (agent token): an installed skill's bundle,
    for stores that cannot presign (the local store)."""

    async def get(self, skill_id: str) -> None:
        agent = await self.require_agent()
        sid = path_id(skill_id)
        rows = sid is not None and await self.ctx.store.skills.installed(
            agent.id, visible_to=await owner_view(self.ctx, agent.owner), skill_id=sid
        )
        if not rows or not rows[0]["bundle_sha256"]:
            raise ApiError(404, "not_found", "no such installed skill with a bundle")
        row = rows[0]
        await stream_object(self, bundle_key(row["bundle_sha256"]), f"{row['command']}.tar.gz")


class AgentBundlesHandler(BaseHandler):
    """POST api/agent/skills/bundles {"ids": [skill ids]}: the bundles of those
    installed skills, base64 by sha256; ids not installed (or no longer visible to
    the agent's owner) are refused as a whole, so nothing leaks by omission."""

    async def post(self) -> None:
        agent = await self.require_agent()
        body = self.json_body()
        asked = body.get("ids")
        numbers = [whole_number(i) for i in asked] if isinstance(asked, list) else [None]
        ids = [i for i in numbers if i is not None]
        if len(numbers) > MAX_IDS or len(ids) != len(numbers):
            raise bad("ids", f"a list of at most {MAX_IDS} skill ids")
        rows = await self.ctx.store.skills.installed(
            agent.id, visible_to=await owner_view(self.ctx, agent.owner)
        )
        by_id = {row["id"]: row for row in rows}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise ApiError(404, "not_found", f"not installed in this agent: {missing[:10]}")
        wanted: dict[str, int] = {}
        budget = INLINE_TOTAL_BYTES
        for i in ids:
            row = by_id[i]
            sha, size = row["bundle_sha256"], row["bundle_size"] or 0
            if not sha or sha in wanted:
                continue
            # bundle_size is the unpacked size; the packed blob is never larger
            # than that by more than tar's headers, so it is a safe bound here.
            if size > INLINE_BUNDLE_BYTES or size > budget:
                continue
            wanted[sha] = i
            budget -= size
        gate = asyncio.Semaphore(READ_CONCURRENCY)

        async def read(sha: str) -> tuple[str, bytes | None]:
            async with gate:
                try:
                    return sha, await self.ctx.objects.get(bundle_key(sha))
                except ObjectNotFound:
                    return sha, None

        found = await asyncio.gather(*(read(sha) for sha in wanted))
        lost = [sha for sha, data in found if data is None]
        if lost:
            raise ApiError(404, "not_found", f"bundles missing from the object store: {lost}")
        self.write_json(
            {"bundles": {sha: base64.b64encode(data).decode() for sha, data in found if data}}
        )


def routes(prefix: str) -> list[tuple[str, Any]]:
    return [
        (prefix + "api/agent/skills", AgentManifestHandler),
        (prefix + "api/agent/skills/bundles", AgentBundlesHandler),
        (prefix + f"api/agent/skills/{NAME}/bundle", AgentBundleHandler),
    ]
