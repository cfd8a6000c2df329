"""Human-in-the-loop requests: filed by sandboxes, decided by owners and admins.

Sandboxes (per-agent token) read their policy, file requests, long-poll for the
decision and cancel requests whose prompt went away. Users list, read and
decide the requests of their own agents; admins those of everyone. The
database is the source of truth; waiters in this process are woken at once
when a decision lands here, and re-check the database every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import uuid
from collections import defaultdict
from datetime import datetime
from typing import Any

from .. import settings as sac_settings
from ..errors import ApiError
from ..hitl import DEFAULT_POLICY, PolicyError, default_option, timeout_decision, validate_policy
from ..store.hitl import PENDING, request_model
from . import metrics
from .base import BaseHandler
from .openapi import _op, _path_params, _resp
from .validation import bad, check_fields, decode_cursor, encode_cursor, without_nul

log = logging.getLogger("jupyter_sac.hitl")

MAX_WAIT = 60
DEFAULT_WAIT = 25
RECHECK_SECONDS = 5
REAPER_SECONDS = 1.0
MAX_QUESTION = 2000
MAX_REASON = 2000
MAX_OPTIONS = 20
MAX_INPUT_BYTES = 256 * 1024
LIST_LIMIT = 100
LIST_MAX = 500


class Waiters:
    """In-process wake-ups for long-polls on request ids."""

    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = defaultdict(set)

    async def wait(self, request_id: str, timeout: float) -> None:
        event = asyncio.Event()
        self._events[request_id].add(event)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        finally:
            self._events[request_id].discard(event)
            if not self._events[request_id]:
                self._events.pop(request_id, None)

    def notify(self, request_id: str) -> None:
        for event in self._events.get(request_id, ()):
            event.set()


async def expire_due(sac: Any) -> None:
    """Resolve every request past its expiry (the default decision) and wake its waiters."""
    for row in await sac.store.hitl.expire_due():
        metrics.observe_decision("timeout")
        sac.hitl_waiters.notify(str(row["id"]))


async def reaper(sac: Any) -> None:
    """Time out expired requests even if nobody waits on them."""
    while True:
        try:
            await expire_due(sac)
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
    async def resolved_for(self, agent: Any) -> dict[str, Any]:
        system, user = await self.sac.store.settings.for_user(agent.owner)
        return sac_settings.resolve(system, user, agent.overrides)

    async def own_request(self, request_id: str, *, readers: bool = False) -> dict[str, Any]:
        """A request the caller may see: its owner's (as a person), any for admins;
        with ``readers`` also its owner's drivers and the sandbox of the agent that
        filed it (they show requests and hand over; they never decide them)."""
        ident = self.identity
        row = await self.sac.store.hitl.get(request_id)
        if row is None or (row["owner"] != ident.name and not ident.admin):
            raise ApiError(404, "not_found", "no such request")
        if ident.kind == "agent" and readers and row["agent_id"] != ident.agent.id:
            raise ApiError(404, "not_found", "no such request")
        self.authorize_user(row["owner"], "see approvals", driver_may=readers, agent_may=readers)
        return row

    async def agent_request(self, request_id: str) -> tuple[Any, dict[str, Any]]:
        """A request of the calling sandbox's own agent."""
        agent = await self.require_agent()
        row = await self.sac.store.hitl.get(request_id)
        if row is None or row["agent_id"] != agent.id:
            raise ApiError(404, "not_found", "no such request")
        return agent, row


class AgentHitlInfoHandler(HitlBaseHandler):
    """GET api/agent/hitl: the calling agent's policy, timeout and default."""

    async def get(self) -> None:
        agent = await self.require_agent()
        policy = await self.sac.store.hitl.get_policy(agent.id)
        resolved = await self.resolved_for(agent)
        self.write_json(
            {
                "policy": policy if policy is not None else DEFAULT_POLICY,
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
        key, label = _storable(option.get("key")), _storable(option.get("label"))
        if not isinstance(key, str) or not 0 < len(key) <= 16:
            raise bad(f"options[{i}].key", "expected 1-16 characters (what is typed)")
        if not isinstance(label, str) or len(label) > 500:
            raise bad(f"options[{i}].label", "expected text of at most 500 characters")
        if key in keys:
            raise bad(f"options[{i}].key", "duplicate option key")
        keys.add(key)
        out.append({"key": key, "label": label})
    return out


_SURROGATE = re.compile("[\ud800-\udfff]")


def _storable(value: Any) -> Any:
    """``value`` as PostgreSQL can store it: no NUL characters, and lone UTF-16
    surrogates (valid JSON escapes, invalid Unicode) replaced by U+FFFD."""
    if isinstance(value, str):
        value = without_nul(value)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = _SURROGATE.sub("\ufffd", value)
        return value
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


def _optional_text(body: dict[str, Any], name: str, max_len: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise bad(name, f"expected text of at most {max_len} characters")
    return _storable(value)


class RequestsHandler(HitlBaseHandler):
    """POST (agent): file a request. GET (user): list requests."""

    async def post(self) -> None:
        agent = await self.require_agent()
        body = self.json_body()
        check_fields(
            body, {"session_id", "kind", "tool", "input", "question", "options", "dedupe_key"}
        )
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
        fields = {
            "session_id": _optional_text(body, "session_id", 200),
            "tool": _optional_text(body, "tool", 200),
            "question": _optional_text(body, "question", MAX_QUESTION),
            "dedupe_key": _optional_text(body, "dedupe_key", 500),
        }
        if fields["dedupe_key"] is not None:
            # A twin past its expiry is over even if the reaper has not got to it yet:
            # the prompt gets a fresh request rather than one already timed out.
            await expire_due(self.sac)
        resolved = await self.resolved_for(agent)
        row, created = await self.sac.store.hitl.file(
            agent_id=agent.id,
            owner=agent.owner,
            agent_slug=agent.slug,
            kind=kind,
            input=_storable(tool_input),
            options=options,
            timeout=float(resolved["hitl_timeout"]),
            default_decision=default_decision(resolved),
            **fields,
        )
        if created:
            metrics.HITL_REQUESTS.labels(row["kind"]).inc()
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
        rows = await self.sac.store.hitl.list(
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
            self.sac.hitl_waiters.notify(self._request_id)

    async def get(self, request_id: str) -> None:
        _, row = await self.agent_request(request_id)
        timeout = self.int_arg("timeout", DEFAULT_WAIT, 0, MAX_WAIT)
        self._request_id = request_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        store = self.sac.store.hitl
        while row["status"] == PENDING and not self._gone:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            now = datetime.now(row["expires_at"].tzinfo)
            until_expiry = (row["expires_at"] - now).total_seconds()
            if until_expiry <= 0:
                await expire_due(self.sac)
                row = await store.get(request_id) or row
                if row["status"] != PENDING:
                    break
                # Still pending: the database clock is behind ours. Look again soon.
                until_expiry = 0.2
            # Every few seconds the database is asked again, for decisions landing
            # in another process of the service.
            await self.sac.hitl_waiters.wait(
                request_id, min(remaining, until_expiry + 0.05, RECHECK_SECONDS)
            )
            row = await store.get(request_id) or row
        if not self._gone:
            self.write_json(request_model(row))


class CancelHandler(HitlBaseHandler):
    async def post(self, request_id: str) -> None:
        agent, row = await self.agent_request(request_id)
        cancelled = await self.sac.store.hitl.cancel(request_id, agent.id)
        if cancelled is None:
            raise ApiError(409, "already_decided", f"the request is {row['status']}")
        self.sac.hitl_waiters.notify(request_id)
        self.write_json(request_model(cancelled))


def decision_snapshots(
    pending: dict[str, Any], decided: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A decided request before and after, as the audit log records it."""
    asked = ("kind", "tool", "input", "question", "options")
    before = {"agent": pending["agent_slug"], **{k: pending[k] for k in asked}, "status": PENDING}
    after = {k: decided[k] for k in ("status", "decision", "option", "reason")}
    return before, after


class DecisionOps(HitlBaseHandler):
    """Deciding a request, shared by the API and the admin pages."""

    async def decide_request(self, request_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Allow or deny a pending request: its owner or an administrator, as a
        person. No token an agent holds can (its agent token, its server token, a
        sibling's): their scripts and their model are indistinguishable."""
        row = await self.own_request(request_id, readers=True)
        ident = self.require_person("decide approvals")
        check_fields(body, {"decision", "reason", "option"})
        decision = body.get("decision")
        if decision == "approve":
            decision = "allow"
        if decision not in ("allow", "deny"):
            raise bad("decision", "expected 'allow' or 'deny'")
        reason = _optional_text(body, "reason", MAX_REASON)
        option = body.get("option")
        if row["kind"] == "terminal":
            keys = [o["key"] for o in row["options"] or []]
            if option is None:
                option = default_option(row["options"], decision)
            elif option not in keys:
                raise bad("option", f"expected one of {keys}")
        elif option is not None:
            raise bad("option", "only terminal prompts have options")
        if row["status"] != PENDING:
            raise ApiError(409, "already_decided", f"the request is already {row['status']}")
        async with self.sac.store.transaction() as conn:
            decided = await self.sac.store.hitl.decide(
                request_id, decision, option, reason, ident.name, conn=conn
            )
            if decided is not None and row["owner"] != ident.name:
                before, after = decision_snapshots(row, decided)
                await self.audit(
                    "hitl.decide",
                    request_id,
                    target_user=row["owner"],
                    before=before,
                    after=after,
                    conn=conn,
                )
        if decided is None:
            current = await self.sac.store.hitl.get(request_id)
            status = current["status"] if current else "gone"
            if status == PENDING:  # past its expiry, not yet reaped
                status = "timed out"
            raise ApiError(409, "already_decided", f"the request is already {status}")
        metrics.observe_decision(decision, row["created_at"])
        self.sac.hitl_waiters.notify(request_id)
        return decided


class DecisionHandler(DecisionOps):
    """POST (owner/admin): allow or deny a pending request."""

    async def post(self, request_id: str) -> None:
        # Who may decide is settled before the body is read.
        await self.own_request(request_id, readers=True)
        self.require_person("decide approvals")
        decided = await self.decide_request(request_id, self.json_body())
        self.write_json(request_model(decided))


class PolicyOps(HitlBaseHandler):
    """Replacing an agent's HITL policy, shared by the API and the agent's settings
    page (the same validation, the same audit entry)."""

    async def replace_policy(self, owner: str, slug: str, raw: Any) -> dict[str, Any]:
        """Validate ``raw`` (400 naming the field, e.g. ``policy.deny[2]``) and store it
        as the agent's policy; returns the normalised policy. Persons and administrators
        only: a policy decides what the agent may do without asking them."""
        agent = await self.get_agent(owner, slug, "change a HITL policy")
        try:
            policy = validate_policy(raw)
        except PolicyError as e:
            raise bad(e.field, e.message) from None
        ident = self.identity
        async with self.sac.store.transaction() as conn:
            before = await self.sac.store.hitl.put_policy(agent.id, policy, ident.name, conn=conn)
            if owner != ident.name:
                await self.audit(
                    "hitl.policy.replace",
                    slug,
                    target_user=owner,
                    before=before,
                    after=policy,
                    conn=conn,
                )
        return policy


class PolicyHandler(PolicyOps):
    """GET/PUT (owner/admin): an agent's HITL policy."""

    async def get(self, owner: str, slug: str) -> None:
        agent = await self.get_agent(owner, slug, "read a HITL policy", agent_may=True)
        policy = await self.sac.store.hitl.get_policy(agent.id)
        self.write_json({"policy": policy if policy is not None else DEFAULT_POLICY})

    async def put(self, owner: str, slug: str) -> None:
        # Who may is settled before the body is read.
        await self.get_agent(owner, slug, "change a HITL policy")
        body = self.json_body()
        check_fields(body, {"policy"})
        self.write_json({"policy": await self.replace_policy(owner, slug, body.get("policy"))})


REQUEST_ID = r"([^/]+)"


def routes(prefix: str) -> list[tuple[str, Any]]:
    return [
        (prefix + "api/agent/hitl", AgentHitlInfoHandler),
        (prefix + "api/hitl/requests", RequestsHandler),
        (prefix + f"api/hitl/requests/{REQUEST_ID}", RequestHandler),
        (prefix + f"api/hitl/requests/{REQUEST_ID}/wait", WaitHandler),
        (prefix + f"api/hitl/requests/{REQUEST_ID}/cancel", CancelHandler),
        (prefix + f"api/hitl/requests/{REQUEST_ID}/decision", DecisionHandler),
        (prefix + r"api/users/([^/]+)/agents/([a-z0-9-]+)/hitl-policy", PolicyHandler),
    ]


def openapi_paths() -> dict[str, Any]:
    req = {"$ref": "#/components/schemas/HitlRequest"}
    rid = _path_params("id")
    ok = {"200": _resp("the request", req)}
    return {
        "/api/agent/hitl": {
            "get": _op("The calling agent's HITL policy, timeout and default (agent token)", ok)
        },
        "/api/hitl/requests": {
            "post": _op(
                "File a HITL request (agent token); an equal pending one is returned with 200",
                {"201": _resp("filed", req), "200": _resp("already pending", req)},
                400,
                413,
                body={"type": "object"},
            ),
            "get": _op(
                "HITL requests of my agents (admins: ?all=1 or ?user=NAME);"
                " ?status=pending|decided|all, ?agent=, ?limit=, ?cursor=",
                {"200": _resp("requests")},
                400,
                404,
            ),
        },
        "/api/hitl/requests/{id}": {"get": _op("One HITL request", ok, 404, params=rid)},
        "/api/hitl/requests/{id}/wait": {
            "get": _op(
                "Long-poll until decided (agent token; ?timeout=0-60 s)", ok, 404, params=rid
            )
        },
        "/api/hitl/requests/{id}/cancel": {
            "post": _op("Withdraw a pending request (agent token)", ok, 404, 409, params=rid)
        },
        "/api/hitl/requests/{id}/decision": {
            "post": _op(
                "Allow or deny a pending request (owner or admin)",
                ok,
                400,
                404,
                409,
                body={
                    "type": "object",
                    "required": ["decision"],
                    "properties": {
                        "decision": {"enum": ["allow", "deny"]},
                        "reason": {"type": "string"},
                        "option": {"type": "string"},
                    },
                },
                params=rid,
            )
        },
        "/api/users/{user}/agents/{slug}/hitl-policy": {
            "get": _op(
                "An agent's HITL policy",
                {"200": _resp("policy")},
                404,
                params=_path_params("user", "slug"),
            ),
            "put": _op(
                "Replace an agent's HITL policy",
                {"200": _resp("policy")},
                400,
                404,
                body={"type": "object", "properties": {"policy": {"type": "object"}}},
                params=_path_params("user", "slug"),
            ),
        },
    }
