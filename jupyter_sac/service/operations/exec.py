"""Exec and screen: a person runs a command in their agent's sandbox, or reads its
Claude terminal's screen, through the service (docs/api.md, "Exec and screen").

Who may: the agent's owner, or an administrator, with a person's token (no token a
sandbox holds: an agent must not run commands in itself or its siblings this way).
The agent's resolved ``exec_enabled`` setting must be on (a refusal is audited
too). Each command is audited when it starts (``agent.exec``: the command, its
working directory, the names of the variables it sets; never their values nor its
input, which may carry secrets) and when it ends (``agent.exec.end``: exit code,
duration, why it was stopped); each screen read as ``agent.screen``. The sandbox
is reached as the idle culler reaches it: through the hub's proxy, with the
service's own token, which is the only identity the sandbox's exec route accepts."""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote, urljoin

import httpx
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from ...errors import ApiError
from ...proxy_transport import ProxyTransport
from ...rules.exec import ExecRequest, audit_entry
from ...rules.urls import via_proxy
from ...store import AgentRecord
from .access import get_agent, require_person
from .context import Actor, ServiceContext, audit
from .settings import effective_settings_for_agent

EXEC = "run commands in an agent's sandbox"
SCREEN = "read an agent's terminal screen"
# A WebSocket message from the sandbox: a frame of at most 64 KiB of output, JSON-escaped.
MAX_FRAME_BYTES = 1024 * 1024
CONNECT_TIMEOUT = 20.0


def proxy_url() -> str:
    """The hub's proxy, where the service reaches agents' servers (their public
    hosts in the Host header, which this machine may not resolve)."""
    proxy = os.environ.get("SAC_PROXY_URL") or os.environ.get("SAC_HUB_URL", "")
    return proxy.rstrip("/") + "/"


def server_url(proxy: str, owner: str, slug: str, server: dict[str, Any]) -> str:
    """An agent's server URL as the hub reports it (absolute with subdomains)."""
    return urljoin(proxy, server.get("url") or f"user/{quote(owner)}/{quote(slug)}/")


async def server_credentials(ctx: ServiceContext, agent_id: int) -> dict[str, str]:
    """The header the service calls an agent's server with: that server's own token
    (its JUPYTERHUB_API_TOKEN, kept encrypted by the spawner at its start), which
    the sandbox holds anyway and which opens that server alone. Never the service's
    own token: a sandbox that answered in its server's place would capture it."""
    encrypted = await ctx.store.server_tokens.get(agent_id)
    if encrypted is None:
        raise ApiError(409, "not_running", "the agent's server has no credentials here; restart it")
    return {"Authorization": f"token {ctx.keybox.decrypt(encrypted)}"}


async def _target(ctx: ServiceContext, actor: Actor, owner: str, slug: str, what: str
                  ) -> AgentRecord:  # fmt: skip
    require_person(actor, what)
    return await get_agent(ctx, actor, owner, slug, what)


async def _running_server(ctx: ServiceContext, owner: str, slug: str) -> str:
    user = await ctx.hub.get_user(owner)
    server = ((user or {}).get("servers") or {}).get(slug)
    if not server or not server.get("ready"):
        raise ApiError(409, "not_running", "the agent is not running; start it first")
    return server_url(proxy_url(), owner, slug, server)


async def exec_agent(ctx: ServiceContext, actor: Actor, owner: str, slug: str) -> AgentRecord:
    """The agent the actor may run commands in (else 404/403), with exec on (else an
    audited 403)."""
    agent = await _target(ctx, actor, owner, slug, EXEC)
    resolved = await effective_settings_for_agent(ctx, agent)
    if not resolved["exec_enabled"]:
        await audit(ctx, actor, "agent.exec.refused", slug, target_user=owner,
                    after={"reason": "exec_enabled is off"})  # fmt: skip
        raise ApiError(
            403,
            "exec_disabled",
            "running commands in this agent's sandbox is turned off (its exec_enabled"
            " setting); its owner or an administrator can turn it on",
        )
    return agent


async def start_exec(
    ctx: ServiceContext, actor: Actor, agent: AgentRecord, request: ExecRequest
) -> WebSocketClientConnection:
    """Open the agent's exec socket and send it the request; once the sandbox has
    accepted it (a cwd it refuses is the 400 here), audit the command and let it
    run. The socket then carries the command's frames."""
    url = await _running_server(ctx, agent.owner, agent.slug)
    ws_url, host = via_proxy(url.replace("http", "ws", 1) + "sac/api/exec", proxy_url())
    headers = await server_credentials(ctx, agent.id)
    if host:
        headers["Host"] = host
    try:
        conn = await websocket_connect(
            HTTPRequest(
                ws_url,
                headers=headers,
                connect_timeout=CONNECT_TIMEOUT,
                request_timeout=CONNECT_TIMEOUT,
            ),
            max_message_size=MAX_FRAME_BYTES,
        )
    except (HTTPClientError, OSError) as e:
        raise ApiError(
            502, "agent_unreachable", f"the agent's server did not take it: {e}"
        ) from None
    await conn.write_message(json.dumps(sandbox_request(request)))
    frame = parse_frame(await conn.read_message())
    if frame is None or frame.get("accepted") is not True:
        conn.close()
        raise refusal(frame)
    await audit(ctx, actor, "agent.exec", agent.slug, target_user=agent.owner,
                after=audit_entry(request))  # fmt: skip
    await conn.write_message(json.dumps({"run": True}))
    return conn


def sandbox_request(request: ExecRequest) -> dict[str, Any]:
    """The request as the sandbox's exec socket takes it (rules/exec.py)."""
    body: dict[str, Any] = {
        "command": list(request.argv),
        "env": request.env,
        "stdin": request.stdin,
        "stdin_open": request.keep_stdin_open,
        "timeout": request.timeout,
    }
    if request.cwd is not None:
        body["cwd"] = request.cwd
    return body


def parse_frame(message: str | bytes | None) -> dict[str, Any] | None:
    """One message of the sandbox's exec socket, or None (closed, or not a JSON
    object: the sandbox is not trusted to speak the protocol)."""
    if message is None:
        return None
    try:
        frame = json.loads(message)
    except (ValueError, UnicodeDecodeError):
        return None
    return frame if isinstance(frame, dict) else None


def refusal(frame: dict[str, Any] | None) -> ApiError:
    """The error to answer for the sandbox's refusal of a request: its own 4xx
    (a cwd outside the workspace), in the house shape; anything else is a 502."""
    status = (frame or {}).get("status")
    if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status < 500:
        return ApiError(502, "agent_error", "the agent's server did not take the command")
    assert frame is not None
    field = frame.get("field")
    return ApiError(
        status,
        str(frame.get("error") or "bad_request")[:100],
        str(frame.get("message") or "refused by the agent's server")[:1000],
        **({"field": field[:100]} if isinstance(field, str) else {}),
    )


async def end_exec(
    ctx: ServiceContext, actor: Actor, agent: AgentRecord, request: ExecRequest,
    last: dict[str, Any] | None,
) -> None:  # fmt: skip
    """Audit how the command ended (``last``: its last frame; None: the connection
    to the sandbox was lost before it)."""
    after: dict[str, Any] = {"command": request.command[:2000]}
    if last is None:
        after["error"] = "disconnected"
        return await audit(ctx, actor, "agent.exec.end", agent.slug, target_user=agent.owner,
                           after=after)  # fmt: skip
    # What the sandbox says, kept to the shapes it may have (it is not trusted).
    code, duration, error = last.get("exit_code"), last.get("duration"), last.get("error")
    after["exit_code"] = code if isinstance(code, int) and not isinstance(code, bool) else None
    if isinstance(duration, int | float) and not isinstance(duration, bool):
        after["duration"] = duration
    if error is not None:
        after["error"] = str(error)[:100]
    await audit(ctx, actor, "agent.exec.end", agent.slug, target_user=agent.owner, after=after)


def is_last(frame: dict[str, Any]) -> bool:
    """The frame that ends a command's stream: its exit, or the sandbox's refusal
    of the request (``status``: nothing ran)."""
    return "exit_code" in frame or "status" in frame


async def read_screen(ctx: ServiceContext, actor: Actor, owner: str, slug: str
                      ) -> dict[str, Any]:  # fmt: skip
    """The agent's Claude terminal screen, from its server (audited)."""
    agent = await _target(ctx, actor, owner, slug, SCREEN)
    url = await _running_server(ctx, owner, slug)
    headers = await server_credentials(ctx, agent.id)
    await audit(ctx, actor, "agent.screen", slug, target_user=owner)
    async with httpx.AsyncClient(
        headers=headers,
        timeout=CONNECT_TIMEOUT,
        transport=ProxyTransport(proxy_url()),
    ) as http:
        try:
            resp = await http.get(url + "sac/api/terminal/screen")
        except httpx.HTTPError as e:
            raise ApiError(
                502, "agent_unreachable", f"the agent's server did not answer: {e}"
            ) from None
    try:
        screen = resp.json() if resp.status_code == 200 else None
    except ValueError:
        screen = None
    if not isinstance(screen, dict):
        raise ApiError(502, "agent_error", f"the agent's server answered {resp.status_code}")
    return screen
