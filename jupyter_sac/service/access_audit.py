"""Who got into someone else's agent: audit entries for access to other users' servers.

Nobody gets into another user's agent by default (docs/security.md#operators): the
first administrator's role has no ``access:servers``. An operator may grant it back
(JupyterHub's admin flag, a role, a share). Its use is recorded here: every so often
the service reads the tokens of the users active since its last look, and each token
that opens a server of another user (``access:servers!server=<user>/<agent>``, as an
OAuth login to that server or a token made for it carries) gets one audit entry,
``server.access``, with the token's holder as actor. Only users whose hub activity
moved since the last look are read again (getting or making a token moves it, at
JupyterHub's activity resolution), and everyone's every FULL_LOOKS looks.
The hub is the witness, not the sandbox, so a sandbox can neither forge nor hide
one.

Not covered: a token that carries ``access:servers`` for every server (the admin
flag's own API tokens) used directly on a server's API; its holder is someone an
operator made a JupyterHub admin.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..store.audit import AuditFilter
from .operations.context import ServiceContext

log = logging.getLogger("jupyter_sac.access_audit")

SERVER_SCOPE = "access:servers!server="
# Every this many looks, every user's tokens are read again: JupyterHub records a
# user's activity at most every 30 s, so a token made just after another request
# may not move it.
FULL_LOOKS = 10
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


def changed_since(users: list[dict[str, Any]], seen: dict[str, str | None]) -> list[str]:
    """Names of the users whose hub activity moved since the last look (``seen``: name
    -> last_activity then); everyone on the first look. Getting or making a token is
    an authenticated request, which moves its holder's ``last_activity``. Pure."""
    return [
        u["name"]
        for u in users
        if u["name"] not in seen or seen[u["name"]] != u.get("last_activity")
    ]


class AccessAudit:
    """The service's watch over access to other users' servers (one pass a ``interval``)."""

    def __init__(self, ctx: ServiceContext, interval: float):
        self.ctx = ctx
        self.interval = interval
        self.seen: dict[str, str | None] = {}
        self.looks = 0
        self.recorded = 0

    async def run(self) -> None:
        while True:
            try:
                await self.scan()
            except Exception:
                log.exception("the access audit pass failed")
            await asyncio.sleep(self.interval)

    async def scan(self) -> None:
        """One look: the tokens of every user whose activity moved since the last one
        (a token recorded before is not recorded again)."""
        hub = self.ctx.hub
        users = await hub.all_users()
        seen = {} if self.looks % FULL_LOOKS == 0 else self.seen
        self.looks += 1
        for name in changed_since(users, seen):
            for token in await hub.tokens(name):
                for owner, server in foreign_servers(name, token.get("scopes") or []):
                    await self.record(name, owner, server, token)
        self.seen = {u["name"]: u.get("last_activity") for u in users}

    async def record(self, holder: str, owner: str, server: str, token: dict[str, Any]) -> None:
        target = f"{owner}/{server}"
        key = f"{target}#{token['id']}"
        audit = self.ctx.store.audit
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
