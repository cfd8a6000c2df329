"""Skill bundles for sandboxes, many at once (agent token only).

A cold sync of a few hundred installed skills fetched each bundle in its own
request through the hub's proxy: ~200 round trips, most of a second. Bundles are
small and content-addressed, so the sandbox asks for the ones it lacks in one
request and gets them inline; big ones (over ``INLINE_BUNDLE_BYTES``) are left
for a single download each (presigned from S3, or streamed by the service).
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from ..objects import ObjectNotFound
from .base import BaseHandler
from .errors import ApiError
from .openapi import _op, _resp
from .skills import bundle_key, owner_view
from .validation import bad, check_fields

# A bundle this small travels inline; a bigger one gets its own download.
INLINE_BUNDLE_BYTES = 256 * 1024
# Inline bytes per response, so one answer stays a modest JSON document.
INLINE_TOTAL_BYTES = 16 * 1024 * 1024
MAX_IDS = 1000
# Object store reads in flight for one request.
READ_CONCURRENCY = 8


class AgentBundlesHandler(BaseHandler):
    """POST api/agent/skills/bundles {"ids": [skill ids]}: the bundles of those
    installed skills, base64 by sha256; ids not installed (or no longer visible to
    the agent's owner) are refused as a whole, so nothing leaks by omission."""

    async def post(self) -> None:
        agent = await self.require_agent()
        body = self.json_body()
        check_fields(body, {"ids"})
        ids = body.get("ids")
        if (
            not isinstance(ids, list)
            or len(ids) > MAX_IDS
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
        ):
            raise bad("ids", f"a list of at most {MAX_IDS} skill ids")
        rows = await self.sac.store.skills.installed(
            agent.id, visible_to=await owner_view(self.sac, agent.owner)
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
                    return sha, await self.sac.objects.get(bundle_key(sha))
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
    return [(prefix + "api/agent/skills/bundles", AgentBundlesHandler)]


def openapi_paths() -> dict[str, Any]:
    return {
        "/api/agent/skills/bundles": {
            "post": _op(
                "Sandbox only (agent token): bundles of installed skills, inline by sha256",
                {"200": _resp("bundles")},
                400,
                404,
                body={
                    "type": "object",
                    "required": ["ids"],
                    "properties": {"ids": {"type": "array", "items": {"type": "integer"}}},
                },
            )
        }
    }
