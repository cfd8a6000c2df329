"""The asynchronous client: agents, work, skills, history and approvals.

Everything goes through the hub's public side (its proxy), with one JupyterHub
token: the hub's REST API for starting and stopping servers, the `sac` service
for agents, skills, history and approvals, and each agent's own server for chat
and skill runs. With subdomains these are three kinds of host (the hub's, the
service's ``sac--service.<hub host>``, and each user's); an agent's server URL is
the one the hub reports. Inside a sandbox the URLs and token come from the
environment (``SAC_HUB_URL``, ``SAC_SERVICE_PUBLIC_URL``, ``JUPYTERHUB_API_TOKEN``,
and ``SAC_PROXY_URL`` where the sandbox reaches public names through the proxy's
own address); elsewhere pass the hub's URL and a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urljoin

import httpx
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from ..proxy_transport import ProxyTransport
from ..rules.urls import default_service_url, via_proxy
from .errors import Forbidden, NotFound, SacError, SacTimeout, Unauthorized, error_for

# How long one request may take (a start has its own timeout).
REQUEST_TIMEOUT = 60.0
# The fields every chat event has; the rest is the event's own.
ENVELOPE = ("seq", "session_id", "turn_id", "time", "type")


@dataclass
class Answer:
    """The outcome of one chat turn: what the agent answered and everything it did."""

    text: str
    session_id: str
    turn_id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None

    @property
    def is_error(self) -> bool:
        """The turn failed (the model API, the CLI) or was cancelled."""
        if any(e["type"] == "cancelled" for e in self.events):
            return True
        return self.result is None or bool(self.result.get("is_error"))

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "tool_use"]

    @property
    def cost_usd(self) -> float | None:
        return None if self.result is None else self.result.get("cost_usd")

    def __str__(self) -> str:
        return self.text


@dataclass
class ExecResult:
    """What a command run in an agent's sandbox printed and how it ended."""

    stdout: str
    stderr: str
    exit_code: int | None
    duration: float | None = None
    # Why it did not end on its own: "timeout", "output_limit", "spawn_failed".
    error: str | None = None
    message: str | None = None
    frames: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.exit_code == 0

    def __str__(self) -> str:
        return self.stdout


def _from_environment() -> tuple[str, str]:
    url = os.environ.get("SAC_HUB_URL", "")
    token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
    if not url or not token:
        raise SacError(
            0,
            "not_configured",
            "no hub URL or token: pass url= and token= (a JupyterHub API token from"
            " /hub/token), or run inside an agent's server, which sets $SAC_HUB_URL"
            " and $JUPYTERHUB_API_TOKEN",
        )
    return url, token


class AsyncClient:
    """``await AsyncClient().agents()``; see ``jupyter_sac.client.Client`` for the
    same calls without ``await``."""

    def __init__(self, url: str | None = None, token: str | None = None,
                 service_url: str | None = None):  # fmt: skip
        """``url``: the hub's public URL; ``service_url``: the `sac` service's, by
        default ``$SAC_SERVICE_PUBLIC_URL`` inside a sandbox of that hub, else beside
        the hub (``sac--service.<hub host>``, or ``<hub>/services/sac/`` for a hub
        reached by its address): pass it where the hub runs without subdomains."""
        # Inside an agent's sandbox, with the sandbox's own token (not one passed in).
        self._sandbox_token = token is None and bool(os.environ.get("JUPYTERHUB_SERVER_NAME"))
        if url is None or token is None:
            env_url, env_token = _from_environment()
            url, token = url or env_url, token or env_token
        self.url = url.rstrip("/") + "/"
        self.token = token
        # Inside a sandbox of this hub, its environment says where things are.
        here = os.environ.get("SAC_HUB_URL", "").rstrip("/") + "/" == self.url
        if service_url is None:
            service_url = (here and os.environ.get("SAC_SERVICE_PUBLIC_URL")) or (
                default_service_url(self.url)
            )
        # A path (the service beside a hub without subdomains) is on the hub's origin.
        self.service_url = urljoin(self.url, service_url.rstrip("/") + "/")
        self.proxy_url = os.environ.get("SAC_PROXY_URL", "") if here else ""
        self.http = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"token {token}"},
            timeout=httpx.Timeout(REQUEST_TIMEOUT, connect=10),
            transport=ProxyTransport(self.proxy_url) if self.proxy_url else None,
        )
        self._user: str | None = None
        self._scopes: frozenset[str] | None = None

    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # ---- plumbing -------------------------------------------------------------------

    async def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """A request to ``path`` under the hub's URL (or to an absolute URL); a
        4xx/5xx raises its SacError."""
        try:
            resp = await self.http.request(method, path, **kw)
        except httpx.TimeoutException as e:
            raise SacTimeout(f"{method} {path}: no answer in time") from e
        except httpx.HTTPError as e:
            raise SacError(0, "unreachable", f"{method} {path}: {type(e).__name__}: {e}") from e
        if resp.status_code >= 400:
            raise error_for(resp.status_code, resp.text)
        return resp

    async def json(self, method: str, path: str, **kw: Any) -> Any:
        resp = await self.request(method, path, **kw)
        return resp.json() if resp.content else None

    async def sac(self, method: str, path: str, **kw: Any) -> Any:
        """The `sac` service's API (``path`` under ``<service URL>api/``)."""
        try:
            return await self.json(method, self.service_url + "api/" + path, **kw)
        except Unauthorized as e:
            raise self._refused(e) from e

    def _refused(self, e: Unauthorized) -> SacError:
        """What a 401 from the service means to this client: inside a sandbox, that
        the agent may not drive its owner's agents, and how to let it."""
        if not self._sandbox_token:
            return e
        # The token of an agent's sandbox reaches the service only when its owner
        # let the agent drive their other agents (docs/notebooks.md).
        user = os.environ.get("JUPYTERHUB_USER", "")
        server = os.environ.get("JUPYTERHUB_SERVER_NAME", "")
        page = self.service_page(f"agents/{user}/{server}")
        return Forbidden(
            403,
            "forbidden",
            f"this agent ({server}) may not drive your other agents: turn on 'Let this"
            f" agent drive my other agents' on its settings page ({page}) and restart"
            " it, or use an API token of yours from the hub's token page",
        )

    async def hub(self, method: str, path: str, **kw: Any) -> Any:
        return await self.json(method, "hub/api/" + path, **kw)

    async def whoami(self) -> str:
        """The name of the user this token acts for."""
        if self._user is None:
            await self._identify()
        assert self._user is not None
        return self._user

    async def _identify(self) -> None:
        await self.identity()

    async def identity(self) -> dict[str, Any]:
        """The hub's model of this token's user (``GET /hub/api/user``): ``name``,
        ``scopes``, ``token_id``..."""
        try:
            model = await self.hub("GET", "user")
        except Forbidden as e:
            # Any valid token may read its own user: the hub answers an unknown,
            # expired or revoked one with 403 here, where the service says 401.
            raise Unauthorized(
                401, "unauthorized", "the hub refused this token (expired, revoked or mistyped)"
            ) from e
        self._user = model["name"]
        self._scopes = frozenset(model.get("scopes") or ())
        return model

    async def revoke_token(self) -> None:
        """Revoke this client's own token on the hub (it answers 401 from then on)."""
        model = await self.identity()
        if not model.get("token_id"):
            raise SacError(0, "not_a_token", "this login is not an API token the hub can revoke")
        await self.hub("DELETE", f"users/{quote(model['name'])}/tokens/{model['token_id']}")

    async def users(self) -> list[dict[str, Any]]:
        """The hub's users (``GET /hub/api/users``: needs the hub's ``list:users``)."""
        return await self.hub("GET", "users")

    async def can_decide(self) -> bool:
        """May this token decide approvals? A person's own token may; the token of an
        agent's sandbox never may (docs/security.md#principals): there, approvals
        are handed over to the service's page (``service_page``)."""
        if self._scopes is None:
            await self._identify()
        assert self._scopes is not None
        return bool({"custom:sac:user", "custom:sac:admin"} & self._scopes)

    def service_page(self, path: str = "") -> str:
        """The public URL of one of the `sac` service's pages (e.g.
        ``approvals/<id>``), on the service's own origin, for a person to open."""
        parts = (quote(p, safe="") for p in path.split("/") if p not in ("", ".", ".."))
        return self.service_url + "/".join(parts)

    # ---- agents ---------------------------------------------------------------------

    async def agents(self, user: str | None = None, all_users: bool = False
                     ) -> list[dict[str, Any]]:  # fmt: skip
        """My agents, each with its server state (``running``, ``pending``,
        ``stopped``); administrators: ``user``'s, or everyone's with ``all_users``."""
        if user is None and not all_users:
            listed = (await self.sac("GET", "agents"))["agents"]
            servers = (await self.hub("GET", f"users/{quote(await self.whoami())}"))["servers"]
            for agent in listed:
                agent["state"] = _state(servers.get(agent["slug"]))
            return listed
        params = {"all": "1"} if all_users else {"user": user}
        listed = (await self.sac("GET", "agents", params=params))["agents"]
        for agent in listed:
            # The record's own copy of its server's state (the hub's, as the service
            # read it): one request, however many users.
            agent["state"] = _state(agent.get("server"))
        return listed

    def agent(self, slug: str, owner: str | None = None) -> AsyncAgent:
        """An agent by name (mine unless ``owner`` is given, for administrators)."""
        return AsyncAgent(self, slug, owner)

    async def create_agent(self, slug: str, **fields: Any) -> AsyncAgent:
        """Create an agent (fields as in the service API: display_name, provider,
        model, base_url, api_key, overrides, and ``template``: an agent template's id or
        name, docs/templates.md); it is not started."""
        created = await self.sac("POST", "agents", json={"slug": slug, **fields})
        return AsyncAgent(self, created["slug"], created["owner"])

    async def templates(self) -> list[dict[str, Any]]:
        """The agent templates I may create agents from: the organisation's and my
        own (docs/templates.md); pass one's name or id as ``create_agent(template=)``."""
        return (await self.sac("GET", "templates"))["templates"]

    async def template(self, template_id: int | str) -> dict[str, Any]:
        """One template by id, its latest version (``editable``: may I change it)."""
        return await self.sac("GET", f"templates/{quote(str(template_id))}")

    async def create_template(self, name: str, definition: dict[str, Any],
                              scope: str = "personal") -> dict[str, Any]:  # fmt: skip
        """A new template at version 1 (``scope="organisation"`` for curators)."""
        body = {"name": name, "definition": definition, "scope": scope}
        return await self.sac("POST", "templates", json=body)

    async def update_template(
        self,
        template_id: int | str,
        *,
        name: str | None = None,
        definition: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The template's next version (a definition given replaces the whole one)."""
        body = {k: v for k, v in (("name", name), ("definition", definition)) if v is not None}
        return await self.sac("PATCH", f"templates/{quote(str(template_id))}", json=body)

    async def fork_template(
        self, template_id: int | str, name: str | None = None
    ) -> dict[str, Any]:
        """A personal copy of a template I may see, at version 1."""
        body = {"name": name} if name else {}
        return await self.sac("POST", f"templates/{quote(str(template_id))}/fork", json=body)

    async def delete_template(self, template_id: int | str) -> None:
        """Delete a template I may change; agents made from it keep their version."""
        await self.sac("DELETE", f"templates/{quote(str(template_id))}")

    # ---- skills ---------------------------------------------------------------------

    async def skills(self, q: str | None = None, tier: str | None = None,
                     limit: int = 50) -> list[dict[str, Any]]:  # fmt: skip
        """Marketplace skills I may see, most installed first."""
        params = {k: v for k, v in {"q": q, "tier": tier, "limit": limit}.items() if v}
        return (await self.sac("GET", "skills", params=params))["skills"]

    async def skill(self, skill_id: int) -> dict[str, Any]:
        """One marketplace skill I may read, at its newest version."""
        return await self.sac("GET", f"skills/{int(skill_id)}")

    # ---- history --------------------------------------------------------------------

    async def search_history(self, q: str | None = None, *, user: str | None = None,
                             agent: str | None = None, since: str | None = None,
                             until: str | None = None, order: str | None = None,
                             limit: int = 100) -> list[dict[str, Any]]:  # fmt: skip
        """Recorded events matching ``q`` (case-insensitive, literal) across my agents
        (administrators: everyone's, or ``user``'s), newest first unless
        ``order="asc"``; at most ``limit`` (docs/api.md#search)."""
        filters = {"q": q, "user": user, "agent": agent, "since": since, "until": until,
                   "order": order}  # fmt: skip
        params: dict[str, Any] = {k: v for k, v in filters.items() if v}
        events: list[dict[str, Any]] = []
        while len(events) < limit:
            params["limit"] = min(1000, limit - len(events))
            page = await self.sac("GET", "history/search", params=params)
            events += page["events"]
            if not page.get("next_cursor"):
                break
            params["cursor"] = page["next_cursor"]
        return events

    async def export_history(self, q: str | None = None, *, user: str | None = None,
                             agent: str | None = None, since: str | None = None,
                             until: str | None = None) -> AsyncIterator[bytes]:  # fmt: skip
        """The selection of ``search_history`` as CSV (oldest first), in chunks as
        the service streams them."""
        filters = {"q": q, "user": user, "agent": agent, "since": since, "until": until}
        params = {k: v for k, v in filters.items() if v}
        async for chunk in self.download(self.service_url + "api/history/export.csv", params):
            yield chunk

    async def download(self, url: str, params: dict[str, Any] | None = None
                       ) -> AsyncIterator[bytes]:  # fmt: skip
        """A GET answer's body in chunks as they come (an error raises its SacError)."""
        try:
            async with self.http.stream("GET", url, params=params) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise error_for(resp.status_code, resp.text)
                async for chunk in resp.aiter_bytes():
                    yield chunk
        except httpx.TimeoutException as e:
            raise SacTimeout(f"GET {url}: no answer in time") from e
        except httpx.HTTPError as e:
            raise SacError(0, "unreachable", f"GET {url}: {type(e).__name__}: {e}") from e

    # ---- settings -------------------------------------------------------------------

    async def settings(self) -> dict[str, Any]:
        """My resolved settings and every setting's definition (``specs``)."""
        return await self.sac("GET", "settings")

    async def user_settings(self, user: str) -> dict[str, Any]:
        """A user's overrides and resolved values (mine, or anyone's for administrators)."""
        return await self.sac("GET", f"users/{quote(user, safe='')}/settings")

    async def set_user_settings(self, user: str, overrides: dict[str, Any]) -> dict[str, Any]:
        """Replace a user's overrides (administrators)."""
        return await self.sac("PUT", f"users/{quote(user, safe='')}/settings", json=overrides)

    async def system_settings(self) -> dict[str, Any]:
        """The system level's overrides and resolved values (administrators)."""
        return await self.sac("GET", "settings/system")

    async def set_system_settings(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Replace the system level's overrides (administrators)."""
        return await self.sac("PUT", "settings/system", json=overrides)

    # ---- approvals (human in the loop) -----------------------------------------------

    async def hitl_requests(self, status: str = "all", agent: str | None = None, *,
                            user: str | None = None, all_users: bool = False,
                            limit: int = 100) -> list[dict[str, Any]]:  # fmt: skip
        """HITL requests of my agents (``status``: ``pending``, ``decided`` or
        ``all``), newest first, at most ``limit``; administrators: ``user``'s, or
        everyone's with ``all_users``."""
        params: dict[str, Any] = {"status": status}
        if agent:
            params["agent"] = agent
        if all_users:
            params["all"] = "1"
        elif user:
            params["user"] = user
        requests: list[dict[str, Any]] = []
        while len(requests) < limit:
            params["limit"] = min(200, limit - len(requests))
            page = await self.sac("GET", "hitl/requests", params=params)
            requests += page["requests"]
            if not page.get("next_cursor"):
                break
            params["cursor"] = page["next_cursor"]
        return requests

    async def hitl_request(self, request_id: str) -> dict[str, Any]:
        """One HITL request of my agents (administrators: anyone's)."""
        return await self.sac("GET", f"hitl/requests/{quote(request_id, safe='')}")

    async def pending(self, agent: str | None = None) -> list[dict[str, Any]]:
        """HITL requests of my agents waiting for a decision, oldest first."""
        params = {"status": "pending", **({"agent": agent} if agent else {})}
        requests = (await self.sac("GET", "hitl/requests", params=params))["requests"]
        return sorted(requests, key=lambda r: r["created_at"])

    async def approve(self, request_id: str, option: str | None = None,
                      reason: str | None = None, *, text: str | None = None,
                      ) -> dict[str, Any]:  # fmt: skip
        """Allow a request. For a terminal prompt ``option`` picks the menu entry, or
        ``text`` answers a prompt that takes text (its ``text_max`` says how long)."""
        return await self._decide(request_id, "allow", option, reason, text)

    async def deny(self, request_id: str, reason: str | None = None) -> dict[str, Any]:
        return await self._decide(request_id, "deny", None, reason)

    async def _decide(self, request_id: str, decision: str, option: str | None,
                      reason: str | None, text: str | None = None) -> dict[str, Any]:  # fmt: skip
        body = {"decision": decision, "option": option, "reason": reason, "text": text}
        body = {k: v for k, v in body.items() if v is not None}
        return await self.sac("POST", f"hitl/requests/{quote(request_id)}/decision", json=body)

    async def default_policy(self) -> dict[str, Any]:
        """The organisation's default approval policy (what agents without their own
        follow): ``{"policy", "custom"}``."""
        return await self.sac("GET", "hitl/default-policy")

    async def check_policy(self, policy: dict[str, Any]) -> dict[str, Any]:
        """``policy`` normalised, or SacError naming the faulty field; stores nothing."""
        return (await self.sac("POST", "hitl/policy-check", json={"policy": policy}))["policy"]

    async def watch_pending(self, interval: float = 1.0) -> AsyncIterator[dict[str, Any]]:
        """Each new pending request once, as it appears: those pending now, then each
        one my event stream tells of (``GET api/events``). When the stream is cut it
        reconnects after ``interval`` s from the last event it saw, missing none."""
        seen: set[str] = set()
        listed = False
        async for message in self._follow(None, interval):
            if message["event"] == "ready":
                # The stream is open from here on: what was filed before is listed
                # once; a request filed meanwhile is in both, and given once.
                if not listed:
                    listed = True
                    for request in await self.pending():
                        if request["id"] not in seen:
                            seen.add(request["id"])
                            yield request
                continue
            if message["event"] != "hitl.requested":
                continue
            request_id = str(message["data"]["id"])
            if request_id in seen:
                continue
            try:
                # The event names the request; the request (its input) is read here,
                # where who may read it is settled again.
                request = await self.sac("GET", f"hitl/requests/{quote(request_id)}")
            except NotFound:
                continue
            if request["status"] == "pending":
                seen.add(request_id)
                yield request

    async def events(
        self, after: int | None = None, interval: float = 1.0
    ) -> AsyncIterator[dict[str, Any]]:
        """My events as they happen (``GET api/events``, docs/api.md#events): each
        ``{"id", "event", "data"}``, in order, after event ``after`` (None: from now
        on). When the stream is cut it reconnects after ``interval`` s with the last
        id it saw, so none is lost or given twice."""
        async for message in self._follow(after, interval):
            if message["event"] != "ready":
                yield message

    async def _follow(self, after: int | None, interval: float) -> AsyncIterator[dict[str, Any]]:
        """The event stream's messages, its ``ready`` ones too (one per connection),
        across reconnections: each resumes after the last id received."""
        while True:
            try:
                async for message in self._stream(after):
                    after = message["id"]
                    yield message
            except SacError as e:
                # Refusals stand; a service or proxy away (restarting) is waited out.
                if 0 < e.status < 500:
                    raise
            except httpx.HTTPError:
                pass  # the connection broke mid-stream
            await asyncio.sleep(interval)

    async def _stream(self, after: int | None) -> AsyncIterator[dict[str, Any]]:
        """One connection to ``GET api/events``: its messages as they arrive, until
        the connection ends (Server-Sent Events: ``id``, ``event`` and ``data`` lines
        up to a blank line; comment lines, the keep-alives, are skipped)."""
        headers = {"Accept": "text/event-stream"}
        if after is not None:
            headers["Last-Event-ID"] = str(after)
        url = self.service_url + "api/events"
        try:
            async with self.http.stream("GET", url, headers=headers) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    error = error_for(resp.status_code, resp.text)
                    raise self._refused(error) if isinstance(error, Unauthorized) else error
                event_id, kind, data = None, "message", []
                async for line in resp.aiter_lines():
                    if line:
                        name, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if name == "id" and value.isdigit():
                            event_id = int(value)
                        elif name == "event":
                            kind = value
                        elif name == "data":
                            data.append(value)
                        continue
                    if data and event_id is not None:
                        yield {"id": event_id, "event": kind, "data": json.loads("\n".join(data))}
                    kind, data = "message", []
        except httpx.TimeoutException as e:
            raise SacTimeout(f"GET {url}: the event stream went quiet") from e

    async def tasks(self, status: str | None = None, agent: str | None = None,
                    user: str | None = None, limit: int = 100) -> list[AsyncTask]:  # fmt: skip
        """My tasks, newest first (an administrator: ``user``'s, ``*`` everyone's)."""
        params = {k: v for k, v in (("status", status), ("agent", agent), ("user", user)) if v}
        answer = await self.sac("GET", "tasks", params={**params, "limit": limit})
        return [AsyncTask(self, t) for t in answer["tasks"]]

    async def task(self, task_id: str) -> AsyncTask:
        return AsyncTask(self, await self.sac("GET", f"tasks/{quote(task_id)}"))

    def on_request(
        self, callback: Callable[[dict[str, Any]], Awaitable[None] | None], interval: float = 1.0
    ) -> asyncio.Task[None]:
        """Call ``callback(request)`` for each new pending request until the returned
        task is cancelled. The callback may approve or deny it."""

        async def run() -> None:
            async for request in self.watch_pending(interval):
                outcome = callback(request)
                if asyncio.iscoroutine(outcome):
                    await outcome

        return asyncio.ensure_future(run())


# A task's states once it has ended (docs/api.md#tasks).
TASK_ENDED = ("succeeded", "failed", "cancelled", "timed-out")


class AsyncTask:
    """A task submitted to an agent (docs/api.md#tasks): its last known state in
    ``model``; ``refresh()`` asks again, ``wait()`` until it has ended."""

    def __init__(self, client: AsyncClient, model: dict[str, Any]):
        self.client = client
        self.model = model

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.status}>"

    @property
    def id(self) -> str:
        return str(self.model["id"])

    @property
    def status(self) -> str:
        """queued, running, succeeded, failed, cancelled or timed-out."""
        return str(self.model["status"])

    @property
    def done(self) -> bool:
        return self.status in TASK_ENDED

    @property
    def result(self) -> str | None:
        """The turn's result text (once it has ended)."""
        return self.model.get("result")

    @property
    def error(self) -> str | None:
        return self.model.get("error")

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        """The files written under output/ (``path``, ``size``, ``sha256``, ``url``)."""
        return list(self.model.get("artifacts") or [])

    async def refresh(self) -> AsyncTask:
        self.model = await self.client.sac("GET", f"tasks/{quote(self.id)}")
        return self

    async def wait(self, timeout: float | None = None, interval: float = 1.0) -> AsyncTask:
        """Until the task has ended (SacTimeout after ``timeout`` seconds)."""

        async def poll() -> None:
            # A poll: the service has no wake-up for a task's end (yet).
            while True:
                if (await self.refresh()).done:
                    return
                await asyncio.sleep(interval)

        try:
            await asyncio.wait_for(poll(), timeout)
        except TimeoutError:
            raise SacTimeout(f"task {self.id} still {self.status} after {timeout} s") from None
        return self

    async def cancel(self) -> AsyncTask:
        """Cancel it: a queued task at once, a running one by interrupting its turn
        (``wait()`` for it to end). A task that has ended raises Conflict."""
        self.model = await self.client.sac("POST", f"tasks/{quote(self.id)}/cancel")
        return self

    async def read_artifact(self, path: str) -> bytes:
        """One artifact's content, by its path (``output/report.md``)."""
        for artifact in self.artifacts:
            if artifact["path"] == path:
                return b"".join([c async for c in self.client.download(artifact["url"])])
        raise NotFound(404, "not_found", f"task {self.id} has no artifact {path!r}")


def _state(server: dict[str, Any] | None) -> str:
    if not server:
        return "stopped"
    if server.get("ready"):
        return "running"
    return "pending" if server.get("pending") else "stopped"


class AsyncAgent:
    """One agent: its server, its work and its history."""

    def __init__(self, client: AsyncClient, slug: str, owner: str | None = None):
        self.client = client
        self.slug = slug
        self._owner = owner
        self._server_url: str | None = None

    def __repr__(self) -> str:
        return f"<Agent {self._owner or '?'}/{self.slug}>"

    async def owner(self) -> str:
        if self._owner is None:
            self._owner = await self.client.whoami()
        return self._owner

    async def _base(self) -> str:
        return f"users/{quote(await self.owner())}/agents/{self.slug}"

    async def _server(self) -> str:
        """The agent's server URL as the hub reports it (with subdomains, on its
        owner's host); for a server the hub does not list (stopped), the path under
        the hub's URL, which the hub itself answers."""
        if self._server_url is None:
            owner = await self.owner()
            user = await self.client.hub("GET", f"users/{quote(owner)}")
            server = (user.get("servers") or {}).get(self.slug) or {}
            if not server.get("url"):
                return urljoin(self.client.url, f"user/{quote(owner)}/{self.slug}/")
            self._server_url = urljoin(self.client.url, server["url"])
        return self._server_url

    # ---- lifecycle ------------------------------------------------------------------

    async def info(self) -> dict[str, Any]:
        """The agent's record (provider, model, resolved settings) and server state."""
        record = await self.client.sac("GET", await self._base())
        user = await self.client.hub("GET", f"users/{quote(await self.owner())}")
        record["state"] = _state(user["servers"].get(self.slug))
        return record

    async def status(self) -> str:
        """``running``, ``pending`` or ``stopped``."""
        return (await self.info())["state"]

    async def policy(self) -> dict[str, Any]:
        """The agent's approval policy (the organisation's default until it has one)."""
        return (await self.client.sac("GET", await self._base() + "/hitl-policy"))["policy"]

    async def set_policy(self, policy: dict[str, Any]) -> dict[str, Any]:
        """Replace the agent's approval policy (a person's token: no token an agent
        holds may); it applies from the agent's next tool call. Returns it normalised."""
        body = {"policy": policy}
        return (await self.client.sac("PUT", await self._base() + "/hitl-policy", json=body))[
            "policy"
        ]

    async def start(self, progress: Callable[[dict[str, Any]], None] | None = None,
                    timeout: float = 300) -> None:  # fmt: skip
        """Start the agent's server and wait until it is ready; ``progress`` gets each
        of the hub's progress events (``{"progress", "message"}``)."""
        owner, client = await self.owner(), self.client
        path = f"users/{quote(owner)}/servers/{self.slug}"
        # The service starts it (an agent's token may drive its owner's agents there,
        # never create or delete named servers on the hub); the hub's progress stream
        # is followed alongside, as a stream opened after a fast start would only say
        # "ready".
        started = asyncio.ensure_future(client.sac("POST", await self._base() + "/start"))
        try:
            await asyncio.wait_for(self._follow_progress(path, progress, started), timeout)
        except TimeoutError:
            started.cancel()
            raise SacTimeout(f"{self.slug} did not start within {timeout} s") from None
        except BaseException:
            started.cancel()
            raise
        # Ready: the service's own answer (202) follows the hub's at once.
        await started

    async def restart(self, progress: Callable[[dict[str, Any]], None] | None = None,
                      timeout: float = 300) -> None:  # fmt: skip
        """Stop the agent if it runs, start it again and wait until it is ready (how
        changed settings reach a running agent); ``progress`` as for ``start``."""
        owner, client = await self.owner(), self.client
        # The service answers once the old server has stopped and the new spawn is
        # asked for (202): the hub's progress stream then follows that spawn.
        await client.sac("POST", await self._base() + "/restart", timeout=timeout + 10)
        path = f"users/{quote(owner)}/servers/{self.slug}"
        restarted: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        restarted.set_result(None)
        try:
            await asyncio.wait_for(self._follow_progress(path, progress, restarted), timeout)
        except TimeoutError:
            raise SacTimeout(f"{self.slug} did not start within {timeout} s") from None

    async def spawn_log(self) -> AsyncIterator[dict[str, Any]]:
        """What the hub says of the agent's start (``{"progress", "message"}``
        events): while it starts, every step so far and then each as it comes,
        up to ready or failed; once it runs, only where it is ready; after a
        failed start, why it failed. The hub keeps no more than that: an agent
        neither running, starting nor failed raises SacError ``not_starting``."""
        owner = await self.owner()
        url = f"hub/api/users/{quote(owner)}/servers/{self.slug}/progress"
        async with self.client.http.stream("GET", url, timeout=None) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                if resp.status_code == 400:
                    raise SacError(400, "not_starting", f"{self.slug} is not running or starting")
                raise error_for(resp.status_code, resp.text)
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                yield event
                if event.get("ready") or event.get("failed"):
                    return

    async def _follow_progress(self, path: str, progress: Callable | None,
                               started: asyncio.Future[Any]) -> None:  # fmt: skip
        url = "hub/api/" + path + "/progress"
        while True:
            async with self.client.http.stream("GET", url, timeout=None) as resp:
                if resp.status_code in (400, 404) and not started.done():
                    # Not pending yet: the hub has not taken the start request in (a
                    # server stopped a moment ago is even unknown to it: 404).
                    await asyncio.sleep(0.05)
                    continue
                if resp.status_code >= 400:
                    await started  # its error says more than the stream's
                    raise error_for(resp.status_code, (await resp.aread()).decode())
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    event = json.loads(line[5:])
                    if progress is not None:
                        progress(event)
                    if event.get("failed"):
                        raise SacError(500, "spawn_failed", event.get("message", "start failed"))
                    if event.get("ready"):
                        return
            if await self.status() == "running":
                return
            raise SacError(500, "spawn_failed", f"{self.slug} stopped while starting")

    async def stop(self, timeout: float = 120) -> None:
        """Stop the agent's server (the service waits until the hub reports it stopped)."""
        await self.client.sac("POST", await self._base() + "/stop", timeout=timeout + 10)

    async def delete(self) -> None:
        """Stop the agent and delete it (its files go; its history stays readable)."""
        await self.client.sac("DELETE", await self._base())

    async def usage(self) -> dict[str, Any]:
        """Model usage per UTC day, its totals, and this month's budgets
        (docs/api.md#usage)."""
        return await self.client.sac("GET", await self._base() + "/usage")

    # ---- exec and screen --------------------------------------------------------------

    async def exec_stream(
        self, command: str | list[str], *, cwd: str | None = None,
        env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 60,
    ) -> AsyncIterator[dict[str, Any]]:  # fmt: skip
        """Run ``command`` in the agent's sandbox (a string: by ``/bin/sh -c``; a list:
        the program and its arguments) and yield its frames as they come: output
        ``{"seq", "stream", "data"}``, then ``{"exit_code", "duration"}`` (with
        ``"error"`` when it was killed). Needs a person's token (the owner's or an
        administrator's) and the agent's ``exec_enabled`` setting on."""
        body: dict[str, Any] = {"command": command, "timeout": timeout}
        if cwd is not None:
            body["cwd"] = cwd
        if env:
            body["env"] = env
        if stdin is not None:
            body["stdin"] = stdin
        url = self.client.service_url + "api/" + await self._base() + "/exec"
        # The answer lasts as long as the command (the service waits its timeout).
        wait = httpx.Timeout(REQUEST_TIMEOUT, read=timeout + REQUEST_TIMEOUT)
        try:
            async with self.client.http.stream("POST", url, json=body, timeout=wait) as resp:
                if resp.status_code >= 400:
                    raise error_for(resp.status_code, (await resp.aread()).decode())
                async for line in resp.aiter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.TimeoutException as e:
            raise SacTimeout(f"exec in {self.slug}: no answer in time") from e

    async def exec(
        self, command: str | list[str], *, cwd: str | None = None,
        env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 60,
    ) -> ExecResult:  # fmt: skip
        """Run ``command`` in the agent's sandbox and wait for it (see ``exec_stream``):
        its stdout, stderr and exit code. A command that fails is no exception (look
        at ``exit_code``, ``ok``); a refusal is (403 when exec is turned off)."""
        stream = self.exec_stream(command, cwd=cwd, env=env, stdin=stdin, timeout=timeout)
        frames = [f async for f in stream]
        last = frames[-1] if frames and "exit_code" in frames[-1] else {}
        return ExecResult(
            stdout="".join(f["data"] for f in frames if f.get("stream") == "stdout"),
            stderr="".join(f["data"] for f in frames if f.get("stream") == "stderr"),
            exit_code=last.get("exit_code"),
            duration=last.get("duration"),
            error=last.get("error") if last else "disconnected",
            message=last.get("message"),
            frames=frames,
        )

    async def screen(self) -> dict[str, Any]:
        """The agent's Claude terminal as it looks now: ``rows`` (text), ``cursor``,
        ``size``, and ``prompt``, the prompt detector's verdict (None: no prompt waits);
        ``{"running": False}`` when the terminal does not run."""
        screen: dict[str, Any] = await self.client.sac(
            "GET", await self._base() + "/terminal/screen"
        )
        return screen

    # ---- tasks ----------------------------------------------------------------------

    async def submit(self, prompt: str, *, timeout: int | None = None,
                     repository: dict[str, Any] | str | None = None) -> AsyncTask:  # fmt: skip
        """Queue ``prompt`` as a task of this agent (docs/api.md#tasks): the service
        starts the agent if needed and runs one chat turn. ``repository``: a Git URL,
        or ``{"url", "ref"?, "secret"?}`` (``secret``: one of your secrets' names),
        checked out into the workspace first. ``timeout``: seconds (default 600)."""
        body: dict[str, Any] = {"prompt": prompt}
        if timeout is not None:
            body["timeout"] = timeout
        if repository is not None:
            body["repository"] = {"url": repository} if isinstance(repository, str) else repository
        return AsyncTask(self.client, await self.client.sac("POST", await self._base() + "/tasks",
                                                              json=body))  # fmt: skip

    async def tasks(self, status: str | None = None, limit: int = 100) -> list[AsyncTask]:
        """This agent's tasks, newest first."""
        params: dict[str, Any] = {"limit": limit, **({"status": status} if status else {})}
        answer = await self.client.sac("GET", await self._base() + "/tasks", params=params)
        return [AsyncTask(self.client, t) for t in answer["tasks"]]

    # ---- work -----------------------------------------------------------------------

    async def _turn(self, message: str, session_id: str | None) -> dict[str, Any]:
        return await self.client.json(
            "POST", await self._server() + "sac/api/chat",
            json={"message": message, "session_id": session_id},
        )  # fmt: skip

    async def _events(self, session_id: str, turn_id: str) -> AsyncIterator[dict[str, Any]]:
        """The events of one turn, from its first to its ``turn_end``."""
        query = urlencode({"session_id": session_id, "since": 0})
        ws_url = (await self._server()).replace("http", "ws", 1) + f"sac/api/chat/events?{query}"
        ws_url, host = via_proxy(ws_url, self.client.proxy_url)
        headers = {"Authorization": f"token {self.client.token}"}
        if host:
            headers["Host"] = host
        request = HTTPRequest(ws_url, headers=headers)
        try:
            conn = await websocket_connect(request)
        except HTTPClientError as e:
            body = e.response.body.decode() if e.response is not None and e.response.body else ""
            raise error_for(e.code, body) from None
        try:
            while True:
                message = await conn.read_message()
                if message is None:
                    raise SacError(0, "disconnected", "the agent's event stream closed")
                event = json.loads(message)
                if event.get("turn_id") != turn_id:
                    continue
                yield event
                if event["type"] == "turn_end":
                    return
        finally:
            conn.close()

    async def stream(self, prompt: str, session_id: str | None = None
                     ) -> AsyncIterator[dict[str, Any]]:  # fmt: skip
        """Send ``prompt`` (a new session, or continue ``session_id``) and yield the
        turn's events as they happen (types in docs/api.md#events)."""
        started = await self._turn(prompt, session_id)
        async for event in self._events(started["session_id"], started["turn_id"]):
            yield event

    async def ask(self, prompt: str, session_id: str | None = None,
                  timeout: float | None = 900) -> Answer:  # fmt: skip
        """Send ``prompt`` and wait for the whole answer (text, events, result)."""
        started = await self._turn(prompt, session_id)
        return await self._collect(started, timeout)

    async def _collect(self, started: dict[str, Any], timeout: float | None) -> Answer:
        answer = Answer("", started["session_id"], started["turn_id"])

        async def follow() -> None:
            async for event in self._events(answer.session_id, answer.turn_id):
                answer.events.append(event)
                if event["type"] == "result":
                    answer.result = {k: v for k, v in event.items() if k not in ENVELOPE}

        try:
            await asyncio.wait_for(follow(), timeout)
        except TimeoutError:
            raise SacTimeout(f"no answer within {timeout} s (the turn goes on)") from None
        texts = [e["text"] for e in answer.events if e["type"] == "text"]
        answer.text = (answer.result or {}).get("text") or "\n".join(texts)
        return answer

    async def cancel(self, session_id: str) -> bool:
        done = await self.client.json(
            "POST", await self._server() + f"sac/api/chat/sessions/{session_id}/cancel"
        )
        return bool(done["cancelled"])

    async def sessions(self) -> list[dict[str, Any]]:
        """The agent's chat sessions, most recently active first."""
        return (await self.client.json("GET", await self._server() + "sac/api/chat/sessions"))[
            "sessions"
        ]

    # ---- skills ---------------------------------------------------------------------

    async def install(self, skill: int | str) -> dict[str, Any]:
        """Install a marketplace skill (by id, or by command among those I may see).

        The install is pinned at the skill's current version: later edits (by its
        owner, an administrator, a package upgrade) do not reach this agent until
        ``update_skill``. Installing it again changes nothing. Returns the installed
        skill (``installed_version``, ``latest_version``, ``update_available``)."""
        skill_id = skill if isinstance(skill, int) else await self._skill_id(skill)
        return await self.client.sac(
            "POST", await self._base() + "/skills", json={"skill_id": skill_id}
        )

    async def uninstall(self, skill: int | str) -> None:
        skill_id = skill if isinstance(skill, int) else await self._skill_id(skill, installed=True)
        await self.client.sac("DELETE", await self._base() + f"/skills/{skill_id}")

    async def installed(self) -> list[dict[str, Any]]:
        """The installed skills, each as this agent has it (the pinned version's
        content), with ``installed_version``, ``latest_version`` and
        ``update_available``."""
        return (await self.client.sac("GET", await self._base() + "/skills"))["skills"]

    async def update_skill(self, skill: int | str, version: int | None = None) -> dict[str, Any]:
        """Move an installed skill (by id or command) to the skill's newest version
        and return it as installed. ``version``: the version you looked at; if the
        skill has a newer one by now, nothing changes and ``Conflict`` (409
        ``version_changed``) says so. A running agent syncs at once, so a
        ``run_skill`` right after uses the new version."""
        skill_id = skill if isinstance(skill, int) else await self._skill_id(skill, installed=True)
        body = {} if version is None else {"version": version}
        path = await self._base() + f"/skills/{skill_id}/update"
        entry = await self.client.sac("POST", path, json=body)
        with contextlib.suppress(SacError):
            # Best effort: a stopped agent syncs when it starts, and a sync that
            # fails is reported by the agent (``sync.last_error``) and retried.
            await self.client.json("POST", await self._server() + "sac/api/skills/sync")
        return entry

    async def _skill_id(self, command: str, installed: bool = False) -> int:
        found = await self.installed() if installed else await self.client.skills(q=command)
        matches = [s for s in found if s["command"] == command]
        if not matches:
            raise SacError(404, "not_found", f"no skill {command!r}")
        # Mine first, then official, then the most installed (the listing's order).
        matches.sort(key=lambda s: (s["owner"] != self._owner, s["visibility"] != "official"))
        return matches[0]["id"]

    async def run_skill(self, command: str, values: dict[str, Any] | None = None, *,
                        session_id: str | None = None, timeout: float | None = 900,
                        **more: Any) -> Answer:  # fmt: skip
        """Run an installed skill with parameter values, as ``values`` or keywords
        (checked by the agent: a bad value raises BadRequest naming it), and wait
        for the answer."""
        values = {**(values or {}), **more}
        started = await self.client.json(
            "POST", await self._server() + f"sac/api/skills/{quote(command)}/run",
            json={"values": values, "mode": "chat", "session_id": session_id},
        )  # fmt: skip
        return await self._collect(started, timeout)

    # ---- history --------------------------------------------------------------------

    async def history_sessions(self, limit: int = 50) -> list[dict[str, Any]]:
        """Recorded conversations (terminal and chat), most recent first."""
        data = await self.client.sac(
            "GET", await self._base() + "/history/sessions", params={"limit": limit}
        )
        return data["sessions"]

    async def history_events(self, session: str | None = None, limit: int | None = None
                             ) -> list[dict[str, Any]]:  # fmt: skip
        """Recorded events, oldest first (all pages, or the first ``limit``)."""
        events: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 1000, "order": "asc"}
            if session:
                params["session"] = session
            if cursor:
                params["cursor"] = cursor
            page = await self.client.sac("GET", await self._base() + "/history/events",
                                         params=params)  # fmt: skip
            events += page["events"]
            cursor = page["next_cursor"]
            if cursor is None or (limit is not None and len(events) >= limit):
                return events[:limit] if limit is not None else events

    async def export_history(self, session: str | None = None, since: str | None = None,
                             until: str | None = None) -> AsyncIterator[bytes]:  # fmt: skip
        """The agent's recorded events (one session's with ``session``) as CSV,
        oldest first, in chunks as the service streams them."""
        filters = {"session": session, "since": since, "until": until}
        params = {k: v for k, v in filters.items() if v}
        url = self.client.service_url + "api/" + await self._base() + "/history/export.csv"
        async for chunk in self.client.download(url, params):
            yield chunk

    async def history_frame(self, session: str | None = None) -> Any:
        """The events as a pandas DataFrame (needs pandas): one row per event."""
        return events_frame(await self.history_events(session))

    async def pending(self) -> list[dict[str, Any]]:
        """This agent's HITL requests waiting for a decision."""
        return await self.client.pending(agent=self.slug)


def events_frame(events: list[dict[str, Any]]) -> Any:
    """History events as a pandas DataFrame, one row per event, ``ts`` as UTC times.

    The service's times are ISO 8601 with microseconds, except on a whole second
    (Python leaves the fraction out then): parsed as ISO 8601, not by the first
    row's shape."""
    try:
        import pandas as pd
    except ImportError:
        raise SacError(0, "no_pandas", "history_frame needs pandas") from None
    frame = pd.DataFrame(events, columns=["user", "agent", "session_id", "uuid", "ts",
                                          "kind", "payload"])  # fmt: skip
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True, format="ISO8601")
    return frame
