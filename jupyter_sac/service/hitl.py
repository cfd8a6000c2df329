"""Human-in-the-loop requests: filed by sandboxes, decided by owners and admins.

Sandboxes (per-agent token) read their policy, file requests, long-poll for the
decision and cancel requests whose prompt went away. Users list, read and
decide the requests of their own agents; admins those of everyone. The
database is the source of truth; waiters are woken at once when a decision
lands, in this process or (through its NOTIFY, service/wakeups.py) in another
process of the service, and re-check the database every few seconds in case
that connection is down. The reaper runs in the leader only (leadership.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import datetime
from typing import Any

from ..errors import ApiError
from ..rules.hitl import DEFAULT_POLICY, timeout_decision
from ..store import AgentRecord
from ..store.hitl import PENDING, request_model
from .base import BaseHandler
from .operations import hitl as hitl_ops
from .operations.context import ServiceContext
from .operations.settings import effective_settings_for_agent
from .routes import NAME, SLUG, USER
from .validation import (
    bad,
    decode_cursor,
    encode_cursor,
    optional_text,
    storable,
)

log = logging.getLogger("jupyter_sac.rules.hitl")

MAX_WAIT = 60
DEFAULT_WAIT = 25
RECHECK_SECONDS = 5
REAPER_SECONDS = 1.0
MAX_QUESTION = 2000
MAX_OPTIONS = 20
MAX_INPUT_BYTES = 256 * 1024
LIST_LIMIT = 100
LIST_MAX = 500


async def expire_due(ctx: ServiceContext) -> None:
    """Resolve every request past its expiry (the default decision) and wake its waiters."""
    await hitl_ops.expire_due(ctx)


async def reaper(ctx: ServiceContext) -> None:
    """Time out expired requests even if nobody waits on them."""
    while True:
        try:
            await expire_due(ctx)
        except Exception:
            log.exception("HITL reaper failed")
        await asyncio.sleep(REAPER_SECONDS)


def default_decision(resolved: dict[str, Any]) -> str:
    return timeout_decision(resolved.get("hitl_default"))


def _cursor(row: dict[str, Any]) -> str:
    return encode_cursor([row["created_at"].isoformat(), str(row["id"])])


def _parse_cursor(value: str) -> tuple[datetime, uuid.UUID]:
    created, rid = decode_cursor(value, 2)
    try:
        return datetime.fromisoformat(created), uuid.UUID(rid)
    except ValueError:
        raise bad("cursor", "not a cursor returned by this endpoint") from None


class HitlBaseHandler(BaseHandler):
    async def resolved_for(self, agent: AgentRecord) -> dict[str, Any]:
        return await effective_settings_for_agent(self.ctx, agent)

    async def own_request(self, request_id: str, *, readers: bool = False) -> dict[str, Any]:
        """A request the caller may see (operations.hitl.own_request)."""
        return await hitl_ops.own_request(self.ctx, self.actor, request_id, readers=readers)

    async def agent_request(self, request_id: str) -> tuple[Any, dict[str, Any]]:
        """A request of the calling sandbox's own agent."""
        agent = await self.require_agent()
        row = await self.ctx.store.hitl.get(request_id)
        if row is None or row["agent_id"] != agent.id:
            raise ApiError(404, "not_found", "no such request")
        return agent, row


class AgentHitlInfoHandler(HitlBaseHandler):
    """GET api/agent/hitl: the calling agent's policy, timeout and default."""

    async def get(self) -> None:
        agent = await self.require_agent()
        policy = await hitl_ops.agent_policy(self.ctx, agent.id)
        resolved = await self.resolved_for(agent)
        self.write_json(
            {
                "policy": policy,
                "timeout": resolved["hitl_timeout"],
                "default": default_decision(resolved),
            }
        )


def _valid_options(value: Any) -> list[dict[str, str]]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_OPTIONS:
        raise bad("options", f"expected a list of at most {MAX_OPTIONS} options")
    out, keys = [], set()
    for i, option in enumerate(value):
        if not isinstance(option, dict) or set(option) - {"key", "label"}:
            raise bad(f"options[{i}]", "expected {key: 1-16 characters, label: text}")
        key, label = storable(option.get("key")), storable(option.get("label"))
        if not isinstance(key, str) or not 0 < len(key) <= 16:
            raise bad(f"options[{i}].key", "expected 1-16 characters (what is typed)")
        if not isinstance(label, str) or len(label) > 500:
            raise bad(f"options[{i}].label", "expected text of at most 500 characters")
        if key in keys:
            raise bad(f"options[{i}].key", "duplicate option key")
        keys.add(key)
        out.append({"key": key, "label": label})
    return out


class RequestsHandler(HitlBaseHandler):
    """POST (agent): file a request. GET (user): list requests."""

    async def post(self) -> None:
        agent = await self.require_agent()
        body = self.json_body()  # its fields as HitlRequestCreate says (the contract)
        kind = body.get("kind")
        if kind not in ("tool", "terminal"):
            raise bad("kind", "expected 'tool' or 'terminal'")
        tool_input = body.get("input")
        if tool_input is None:
            tool_input = {}
        if not isinstance(tool_input, dict):
            raise bad("input", "expected a JSON object")
        if len(json.dumps(tool_input)) > MAX_INPUT_BYTES:
            raise bad("input", f"at most {MAX_INPUT_BYTES} bytes")
        options = _valid_options(body.get("options"))
        if kind == "terminal" and not options:
            raise bad("options", "a terminal prompt needs the options it offers")
        text_max = body.get("text_max")
        if text_max is not None and kind != "terminal":
            raise bad("text_max", "only terminal prompts take text")
        fields = {
            "session_id": optional_text(body, "session_id", 200),
            "tool": optional_text(body, "tool", 200),
            "question": optional_text(body, "question", MAX_QUESTION),
            "dedupe_key": optional_text(body, "dedupe_key", 500),
        }
        if fields["dedupe_key"] is not None:
            # A twin past its expiry is over even if the reaper has not got to it yet:
            # the prompt gets a fresh request rather than one already timed out.
            await expire_due(self.ctx)
        resolved = await self.resolved_for(agent)
        row, created = await hitl_ops.file_request(
            self.ctx,
            agent,
            kind=kind,
            input=storable(tool_input),
            options=options,
            text_max=text_max,
            timeout=float(resolved["hitl_timeout"]),
            default_decision=default_decision(resolved),
            **fields,
        )
        self.write_json(request_model(row), 201 if created else 200)

    async def get(self) -> None:
        # Drivers and an agent's own sandbox list requests to show them and hand over
        # to the service's pages; a sandbox sees only its own agent's.
        ident = self.authorize_user(
            self.get_argument("user", None) or self.identity.name,
            "see approvals",
            driver_may=True,
            agent_may=True,
        )
        status = self.get_argument("status", PENDING)
        if status not in (PENDING, "decided", "all"):
            raise bad("status", "expected pending, decided or all")
        owner: str | None = ident.name
        user = self.get_argument("user", None)
        if user is not None and user != ident.name:
            if not ident.admin:
                raise ApiError(404, "not_found", "no such user")
            owner = user
        elif ident.admin and self.get_argument("all", "") in ("1", "true"):
            owner = None
        limit = self.int_arg("limit", LIST_LIMIT, 1, LIST_MAX)
        cursor = self.get_argument("cursor", None)
        agent_slug = self.get_argument("agent", None)
        if ident.kind == "agent":
            if agent_slug not in (None, ident.agent.slug):
                raise ApiError(403, "forbidden", f"{ident.describe()} sees only its own requests")
            agent_slug = ident.agent.slug
        rows = await self.ctx.store.hitl.list(
            owner=owner,
            agent_slug=agent_slug,
            status=status,
            limit=limit + 1,
            before=_parse_cursor(cursor) if cursor else None,
        )
        page = rows[:limit]
        self.write_json(
            {
                "requests": [request_model(r) for r in page],
                "next_cursor": _cursor(page[-1]) if len(rows) > limit else None,
            }
        )


class RequestHandler(HitlBaseHandler):
    async def get(self, request_id: str) -> None:
        self.write_json(request_model(await self.own_request(request_id, readers=True)))


class WaitHandler(HitlBaseHandler):
    """GET (agent): long-poll until the request is decided, times out or is cancelled."""

    _gone = False
    _request_id: str | None = None

    def on_connection_close(self) -> None:
        # The sandbox gave up (turn cancelled): stop waiting on its behalf.
        self._gone = True
        if self._request_id is not None:
            self.ctx.hitl_waiters.notify(self._request_id)

    async def get(self, request_id: str) -> None:
        _, row = await self.agent_request(request_id)
        timeout = self.int_arg("timeout", DEFAULT_WAIT, 0, MAX_WAIT)
        self._request_id = request_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        store = self.ctx.store.hitl
        while row["status"] == PENDING and not self._gone:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            now = datetime.now(row["expires_at"].tzinfo)
            until_expiry = (row["expires_at"] - now).total_seconds()
            if until_expiry <= 0:
                await expire_due(self.ctx)
                row = await store.get(request_id) or row
                if row["status"] != PENDING:
                    break
                # Still pending: the database clock is behind ours. Look again soon.
                until_expiry = 0.2
            # Every few seconds the database is asked again: a decision in another
            # process wakes this one through its NOTIFY, unless the listening
            # connection is down just then.
            await self.ctx.hitl_waiters.wait(
                request_id, min(remaining, until_expiry + 0.05, RECHECK_SECONDS)
            )
            row = await store.get(request_id) or row
        if not self._gone:
            self.write_json(request_model(row))


class CancelHandler(HitlBaseHandler):
    async def post(self, request_id: str) -> None:
        agent, row = await self.agent_request(request_id)
        cancelled = await hitl_ops.cancel_request(self.ctx, agent, request_id)
        if cancelled is None:
            raise ApiError(409, "already_decided", f"the request is {row['status']}")
        self.write_json(request_model(cancelled))


class DecisionHandler(HitlBaseHandler):
    """POST (owner/admin): allow or deny a pending request."""

    async def post(self, request_id: str) -> None:
        # Who may decide is settled before the body is read.
        await self.own_request(request_id, readers=True)
        self.require_person("decide approvals")
        decided = await hitl_ops.decide_request(self.ctx, self.actor, request_id, self.json_body())
        self.write_json(request_model(decided))


class PolicyHandler(HitlBaseHandler):
    """GET/PUT (owner/admin): an agent's HITL policy."""

    async def get(self, owner: str, slug: str) -> None:
        agent = await self.get_agent(owner, slug, "read a HITL policy", agent_may=True)
        self.write_json({"policy": await hitl_ops.agent_policy(self.ctx, agent.id)})

    async def put(self, owner: str, slug: str) -> None:
        # Who may is settled before the body is read.
        await self.get_agent(owner, slug, "change a HITL policy")
        body = self.json_body()
        policy = await hitl_ops.replace_policy(
            self.ctx, self.actor, owner, slug, body.get("policy")
        )
        self.write_json({"policy": policy})


class DefaultPolicyHandler(HitlBaseHandler):
    """GET (persons): the organisation's default policy, what agents without one
    of their own follow. PUT/DELETE (admin): replace it, or return to the built-in."""

    async def get(self) -> None:
        self.require_person("read the default HITL policy")
        custom = await self.ctx.store.hitl.get_default_policy()
        self.write_json(
            {
                "policy": custom if custom is not None else DEFAULT_POLICY,
                "custom": custom is not None,
            }
        )

    async def put(self) -> None:
        self.require_admin()
        body = self.json_body()
        policy = await hitl_ops.replace_default_policy(self.ctx, self.actor, body.get("policy"))
        self.write_json({"policy": policy, "custom": True})

    async def delete(self) -> None:
        self.require_admin()
        await hitl_ops.replace_default_policy(self.ctx, self.actor, None)
        self.set_status(204)
        self.finish()


class PolicyCheckHandler(HitlBaseHandler):
    """POST (persons): is ``{"policy": …}`` a valid policy? 200 with it normalised,
    or the 400 naming the faulty field: editors check a policy as it is typed."""

    async def post(self) -> None:
        self.require_person("check a HITL policy")
        body = self.json_body()
        self.write_json({"policy": hitl_ops.checked_policy(body.get("policy"))})


def routes(prefix: str) -> list[tuple[str, Any]]:
    return [
        (prefix + "api/hitl/default-policy", DefaultPolicyHandler),
        (prefix + "api/hitl/policy-check", PolicyCheckHandler),
        (prefix + "api/agent/hitl", AgentHitlInfoHandler),
        (prefix + "api/hitl/requests", RequestsHandler),
        (prefix + f"api/hitl/requests/{NAME}", RequestHandler),
        (prefix + f"api/hitl/requests/{NAME}/wait", WaitHandler),
        (prefix + f"api/hitl/requests/{NAME}/cancel", CancelHandler),
        (prefix + f"api/hitl/requests/{NAME}/decision", DecisionHandler),
        (prefix + f"api/users/{USER}/agents/{SLUG}/hitl-policy", PolicyHandler),
    ]
