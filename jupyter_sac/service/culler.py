"""Idle culling: stop agents idle longer than their resolved ``idle_timeout``.

jupyterhub-idle-culler's rule (the hub's ``last_activity`` of each running server
against a timeout), with what only SAC knows added: the timeout is a per-agent
setting, and an agent is never stopped while one of its HITL requests is pending
or a chat turn runs (the agent's own ``sac/api/activity`` says so), nor when it
cannot be asked.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from ..errors import ApiError
from ..proxy_transport import ProxyTransport
from . import metrics
from .base import BaseHandler
from .operations.context import ServiceContext
from .operations.exec import proxy_url, server_credentials, server_url
from .operations.settings import effective_settings_for_agent

log = logging.getLogger("jupyter_sac.culler")

# Who the audit log names for what the service does on its own.
SYSTEM_ACTOR = "sac-service"


@dataclass(frozen=True)
class Verdict:
    cull: bool
    reason: str


def idle_verdict(
    now: datetime,
    hub_last_activity: datetime | None,
    idle_timeout: float,
    hitl_pending: int,
    activity: dict[str, Any] | None,
) -> Verdict:
    """Whether to stop one running agent now, and why (pure: the rule itself)."""
    if idle_timeout <= 0:
        return Verdict(False, "no idle timeout")
    if hitl_pending:
        return Verdict(False, f"{hitl_pending} HITL request(s) pending")
    if activity is None:
        return Verdict(False, "the agent did not say whether it is busy")
    if activity.get("chat_turns_running"):
        return Verdict(False, "a chat turn is running")
    if activity.get("busy"):
        return Verdict(False, "busy")
    seen = [t for t in (hub_last_activity, _parse(activity.get("last_activity"))) if t]
    if not seen:
        return Verdict(False, "no activity known")
    idle = (now - max(seen)).total_seconds()
    if idle < idle_timeout:
        return Verdict(False, f"active {idle:.0f} s ago")
    return Verdict(True, f"idle for {idle:.0f} s (idle_timeout {idle_timeout:.0f} s)")


def _parse(value: Any) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class Culler:
    """Checks every running agent each ``interval`` seconds; ``status`` tells an
    administrator what the last pass did."""

    def __init__(self, ctx: ServiceContext, interval: float):
        self.ctx = ctx
        self.interval = interval
        self.status: dict[str, Any] = {
            "interval": interval,
            "passes": 0,
            "last_pass": None,
            "last_error": None,
            "culled": [],
            "kept": {},
        }
        # The agents' own servers, through the hub's proxy, each with its own token
        # (operations/exec.server_credentials): connected to the proxy's own address,
        # with each agent's public host (its owner's subdomain) in the Host header,
        # which this machine may not resolve.
        self.proxy = proxy_url()
        self.http = httpx.AsyncClient(timeout=10, transport=ProxyTransport(self.proxy))

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
                self.status["last_error"] = None
            except Exception as e:  # the next pass tries again
                self.status["last_error"] = f"{type(e).__name__}: {e}"
                log.exception("idle culling pass failed")
            await asyncio.sleep(self.interval)

    async def run_once(self) -> None:
        now = datetime.now(UTC)
        kept: dict[str, str] = {}
        for owner, name, server in await self.ctx.hub.named_servers():
            if not server.get("ready"):
                continue  # still starting or stopping
            agent = await self.ctx.store.agents.get(owner, name)
            if agent is None:
                continue  # a server SAC does not manage
            resolved = await effective_settings_for_agent(self.ctx, agent)
            pending = await self.ctx.store.hitl.list(
                owner=owner, agent_slug=name, status="pending", limit=100, before=None
            )
            verdict = idle_verdict(
                now,
                _parse(server.get("last_activity")),
                float(resolved["idle_timeout"]),
                len(pending),
                await self._activity(agent.id, owner, name, server),
            )
            key = f"{owner}/{name}"
            if not verdict.cull:
                kept[key] = verdict.reason
                continue
            log.info("stopping idle agent %s: %s", key, verdict.reason)
            self.status["culled"] = [
                *self.status["culled"][-99:],
                {"agent": key, "at": now.isoformat(), "reason": verdict.reason},
            ]
            await self.ctx.store.audit.record(
                "agent.cull",
                actor=SYSTEM_ACTOR,
                actor_admin=True,
                target=name,
                target_user=owner,
                before={"state": "running"},
                after={"state": "stopped", "reason": verdict.reason},
            )
            await self.ctx.hub.stop_server(owner, name)
            metrics.AGENTS_CULLED.inc()
        self.status["kept"] = kept
        self.status["passes"] += 1
        self.status["last_pass"] = now.isoformat()

    async def _activity(self, agent_id: int, owner: str, name: str, server: dict[str, Any]
                        ) -> dict[str, Any] | None:  # fmt: skip
        base = server_url(self.proxy, owner, name, server)
        try:
            headers = await server_credentials(self.ctx, agent_id)
            resp = await self.http.get(base + "sac/api/activity", headers=headers)
        except ApiError as e:  # started before its token was kept (an upgrade)
            log.warning("agent %s/%s: %s", owner, name, e.message)
            return None
        except httpx.HTTPError as e:
            log.warning("agent %s/%s did not answer: %s", owner, name, e)
            return None
        if resp.status_code != 200:
            log.warning("agent %s/%s answered %s", owner, name, resp.status_code)
            return None
        return resp.json()

    async def close(self) -> None:
        await self.http.aclose()


class CullerHandler(BaseHandler):
    """GET api/culler (admins): the idle culler's last pass in this process, and
    whether this process leads (only the leader culls: service/leadership.py)."""

    async def get(self) -> None:
        self.require_admin()
        culler = self.settings["culler"]
        leadership = self.settings.get("leadership")
        status = culler.status if culler else {"interval": 0, "passes": 0}
        self.write_json({**status, "leader": bool(leadership and leadership.leader)})


def routes(prefix: str) -> list[tuple[str, Any]]:
    return [(prefix + "api/culler", CullerHandler)]
