"""Who calls the `sac` service, and what each kind of caller may do (pure rules).

Every request is made by one *principal*, settled before its body is read
(``BaseHandler.prepare``). What a principal may do comes from the scopes of the
token it presents, never from JupyterHub's admin flag of the user behind it:

- **person**: a JupyterHub user acting as themselves. The browser's login to the
  service (OAuth, on the service's own origin) and API tokens made at /hub/token
  carry ``custom:sac:user`` (the ``user`` role has it; a token narrowed below it
  loses it). Persons manage their agents, settings and keys, decide their agents'
  approvals and read their history.
- **driver**: a token with ``custom:sac:drive`` but not ``custom:sac:user``: the
  ``$JUPYTERHUB_API_TOKEN`` of an agent whose owner turned on "drive my other
  agents". It lists, creates, starts, stops and restarts the owner's agents and
  reads their records, usage, installed skills and pending approvals; nothing
  else (no decisions, settings, keys, policies, history or files).
- **agent**: a sandbox's per-agent token (``sac-agent-…``, never sent to the hub).
  It acts for its one agent: model calls, history ingest, HITL filing, skill and
  workspace sync, and the reads its JupyterLab sidebar shows about that agent.
- **service**: another JupyterHub service; it may do nothing unless its token
  carries ``custom:sac:admin``.

Administrators are callers whose token carries ``custom:sac:admin``; history
auditors ``custom:sac:history:read-all``; skill curators
``custom:sac:skills:official``; template curators ``custom:sac:templates``. An
agent's server token never carries any of them (``c.Spawner.server_token_scopes``),
whoever owns the agent.

A caller denied another user's resource gets 404 (its existence is not
revealed); a caller denied their own resource gets 403 saying who may do it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ADMIN_SCOPE = "custom:sac:admin"
USER_SCOPE = "custom:sac:user"
DRIVE_SCOPE = "custom:sac:drive"
READ_ALL_SCOPE = "custom:sac:history:read-all"
OFFICIAL_SCOPE = "custom:sac:skills:official"
TEMPLATES_SCOPE = "custom:sac:templates"

AGENT_TOKEN_PREFIX = "sac-agent-"

# The custom scopes JupyterHub must know (c.JupyterHub.custom_scopes).
SAC_SCOPES: dict[str, dict[str, str]] = {
    ADMIN_SCOPE: {"description": "Administer SAC: every user's agents, settings and keys."},
    USER_SCOPE: {
        "description": "Use SAC as yourself: manage your agents, settings and keys,"
        " decide your agents' approvals, read your history, publish skills."
    },
    DRIVE_SCOPE: {
        "description": "Drive your agents from code: list, create, start, stop and"
        " restart them and read their records (not settings, keys, approvals or history)."
    },
    OFFICIAL_SCOPE: {"description": "Publish and curate official skills in the SAC marketplace."},
    TEMPLATES_SCOPE: {
        "description": "Create, change and delete the organisation's agent templates."
    },
    READ_ALL_SCOPE: {"description": "Read and export every user's conversation history."},
}


@dataclass(frozen=True)
class Denial:
    """Why a principal may not do something: the status and JSON error it gets."""

    status: int
    code: str
    message: str


@dataclass(frozen=True)
class Identity:
    """The principal of one request.

    ``name`` is the user it acts for (an agent's owner for kind ``agent``).
    ``agent`` is the agent record of an agent token (kind ``agent``); its fields
    are read by the rules below as ``agent.id``.
    """

    name: str
    kind: str  # "user", "service" or "agent"
    scopes: frozenset[str] = frozenset()
    groups: tuple[str, ...] = ()
    agent: Any = field(default=None, compare=False)
    # c.SacService.admin_scope (custom:sac:admin unless configured otherwise)
    admin_scope: str = ADMIN_SCOPE

    @property
    def admin(self) -> bool:
        """A SAC administrator: the token carries the admin scope."""
        return self.kind != "agent" and self.admin_scope in self.scopes

    @property
    def person(self) -> bool:
        """Acts with the person's own authority (a user's login or full token, or an
        administrator)."""
        return self.admin or (self.kind == "user" and USER_SCOPE in self.scopes)

    @property
    def driver(self) -> bool:
        """May drive the user's agents (persons may too)."""
        return self.person or (self.kind == "user" and DRIVE_SCOPE in self.scopes)

    @property
    def auditor(self) -> bool:
        return self.admin or (self.kind == "user" and READ_ALL_SCOPE in self.scopes)

    def describe(self) -> str:
        """How error messages name this caller."""
        if self.kind == "agent":
            return f"the sandbox of agent {self.name}/{self.agent.slug}"
        if self.kind == "service":
            return f"the service {self.name}"
        if not self.person and self.driver:
            return "an agent's token (drive my agents)"
        return f"this token of {self.name}"


# What a denied caller is told to do instead.
PERSON_ONLY = (
    "a person does this: sign in to the SAC service in your browser"
    " (or use an API token from the hub's token page)"
)


def needs_person(ident: Identity, what: str) -> Denial | None:
    """``what`` is done by persons (and administrators) only."""
    if ident.person:
        return None
    return Denial(403, "forbidden", f"{ident.describe()} may not {what}: {PERSON_ONLY}")


def needs_admin(ident: Identity, admin_scope: str = ADMIN_SCOPE) -> Denial | None:
    if ident.admin:
        return None
    return Denial(403, "forbidden", f"this needs an administrator (the {admin_scope} scope)")


def user_access(
    ident: Identity, target: str, what: str, *, driver_may: bool = False, agent_may: bool = False
) -> Denial | None:
    """May ``ident`` act on user ``target``'s own resources (their agent list, their
    settings...)? Administrators always; the user as a person; a driver or an agent
    of that user where the operation lets them."""
    if ident.admin:
        return None
    if target != ident.name or ident.kind == "service":
        # 404, not 403: another user's resources are not revealed.
        return Denial(404, "not_found", "no such user or agent")
    if ident.person or (driver_may and ident.driver) or (agent_may and ident.kind == "agent"):
        return None
    return Denial(403, "forbidden", f"{ident.describe()} may not {what}: {PERSON_ONLY}")


def agent_access(
    ident: Identity,
    owner: str,
    agent_id: int | None,
    what: str,
    *,
    driver_may: bool = False,
    agent_may: bool = False,
) -> Denial | None:
    """May ``ident`` do ``what`` on ``owner``'s agent ``agent_id``?

    Administrators and the owner (as a person) may; a driver of the owner where
    ``driver_may``; the agent's own sandbox (its agent token) where ``agent_may``,
    and never on a sibling."""
    denied = user_access(ident, owner, what, driver_may=driver_may, agent_may=agent_may)
    if denied is not None:
        return denied
    if ident.kind == "agent" and ident.agent.id != agent_id:
        return Denial(403, "forbidden", f"{ident.describe()} acts only on its own agent")
    return None
