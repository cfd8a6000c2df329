"""Who got into someone else's agent: audit entries for access to other users' servers.

Nobody gets into another user's agent by default (docs/security.md#operators): the
first administrator's role has no ``access:servers``. An operator may grant it back
(JupyterHub's admin flag, a role, a share). Its use is recorded here: every so often
the service reads the tokens of the users active since its last look, and each token
that opens a server of another user (``access:servers!server=<user>/<agent>``, as an
OAuth login to that server or a token made for it carries) gets one audit entry,
``server.access``, with the token's holder as actor. The hub is the witness, not the
sandbox, so a sandbox can neither forge nor hide one.

Not covered: a token that carries ``access:servers`` for every server (the admin
flag's own API tokens) used directly on a server's API; its holder is someone an
operator made a JupyterHub admin.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from ..store.audit import AuditFilter

log = logging.getLogger("jupyter_sac.access_audit")

SERVER_SCOPE = "access:servers!server="
ACTION = "server.access"


def foreign_servers(holder: str, scopes: list[str]) -> list[tuple[str, str]]:
    """(owner, server name) of each other user's server a token of ``holder`` opens
    by name. Pure."""
    out = []
    for scope in scopes:
        if not scope.startswith(SERVER_SCOPE):
            continue
        owner, _, name = scope[len(SERVER_SCOPE) :].partition("/")
        if owner and owner != holder:
            out.append((owner, name))
    return sorted(set(out))


def recently_active(users: list[dict[str, Any]], since: datetime | None) -> list[str]:
    """Names of the users whose hub activity is at or after ``since`` (all if None):
    a login to any server moves its user's ``last_activity``. Pure."""
    names = []
    for user in users:
        last = user.get("last_activity")
        if since is None or (last and datetime.fromisoformat(last) >= since):
            names.append(user["name"])
    return names


class AccessAudit:
    """The service's watch over access to other users' servers (one pass a ``interval``)."""

    def __init__(self, sac: Any, interval: float):
        self.sac = sac
        self.interval = interval
        self.since: datetime | None = None
        self.recorded = 0

    async def run(self) -> None:
        while True:
            try:
                await self.scan()
            except Exception:
                log.exception("the access audit pass failed")
            await asyncio.sleep(self.interval)

    async def scan(self) -> None:
        started = datetime.now(UTC)
        hub = self.sac.hub
        users = await hub.all_users()
        # Activity is recorded by the hub at most every few minutes: look back a bit.
        since = self.since - timedelta(minutes=10) if self.since else None
        for name in recently_active(users, since):
            for token in await hub.tokens(name):
                for owner, server in foreign_servers(name, token.get("scopes") or []):
                    await self.record(name, owner, server, token)
        self.since = started

    async def record(self, holder: str, owner: str, server: str, token: dict[str, Any]) -> None:
        target = f"{owner}/{server}"
        key = f"{target}#{token['id']}"
        audit = self.sac.store.audit
        if await audit.list(AuditFilter(action=ACTION, target=key), 1):
            return  # this token was recorded on an earlier pass
        await audit.record(
            ACTION,
            actor=holder,
            actor_admin=False,
            target=key,
            target_user=owner,
            after={
                "server": target,
                "token": token["id"],
                "client": token.get("oauth_client"),
                "note": token.get("note"),
                "created": token.get("created"),
                "last_activity": token.get("last_activity"),
            },
        )
        self.recorded += 1
        log.warning("%s holds access to %s's server %s (token %s)", holder, owner, server,
                    token["id"])  # fmt: skip
