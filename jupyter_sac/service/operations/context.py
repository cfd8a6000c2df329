"""What every operation is given: the service's collaborators (ServiceContext) and
who acts (Actor).

The application builds one ServiceContext at start (app.py) and handlers reach it
as ``self.ctx``; tests build their own around a real Store. Nothing here is a
handler: operations run without tornado, so a rule change is tested without the
stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...crypto import KeyBox
from ...errors import ApiError
from ...objects import ObjectStore
from ...rules.urls import PublicUrls
from ...store import Store
from ...store.tx import Conn
from ..principals import Identity

if TYPE_CHECKING:
    import httpx

    from ..hub import HubClient

log = logging.getLogger("jupyter_sac.service")


class OrganisationKeys(Mapping[str, str]):
    """The organisation keys in use, by provider: the configuration's
    (``c.SacService.organisation_api_keys``), overridden by those set in the service
    (settings page or API). Reloaded after each change: by the process that made
    it, and by the service's other processes when its notification reaches them
    (service/wakeups.py)."""

    def __init__(self, configured: Mapping[str, str]) -> None:
        self.configured: dict[str, str] = dict(configured)
        self._keys: dict[str, str] = dict(configured)

    async def reload(self, store: Store, keybox: KeyBox) -> None:
        keys = dict(self.configured)
        for provider, row in (await store.org_keys.list()).items():
            try:
                keys[provider] = keybox.decrypt(row.encrypted_key)
            except ValueError:
                log.error(
                    "the organisation key for %s cannot be decrypted with the configured"
                    " Fernet keys (SAC_FERNET_KEY); set it again",
                    provider,
                )
        self._keys = keys

    def __getitem__(self, provider: str) -> str:
        return self._keys[provider]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class Waiters:
    """In-process wake-ups for HITL long-polls on request ids (a decision made
    through another process of the service arrives through service/wakeups.py)."""

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

    def notify_all(self) -> None:
        """Wake every long-poll (each re-reads its request)."""
        for request_id in list(self._events):
            self.notify(request_id)

    def waiting(self) -> int:
        """How many long-polls are parked here now (the ``sac_hitl_waiting`` gauge)."""
        return sum(len(events) for events in self._events.values())


class Bells:
    """In-process wake-ups for the users' event streams (``GET api/events``).

    ``ring(user)`` once an event of the user's is committed; a stream takes a
    ``mark`` before it reads the store and then ``wait``s with it, so a ring that
    lands between its read and its wait is not lost (the wait returns at once).
    Events appended by another process of the service ring here through
    service/wakeups.py; streams re-read the store every few seconds too, in case
    that connection is down."""

    def __init__(self) -> None:
        self._rings: dict[str, int] = defaultdict(int)
        self._events: dict[str, set[asyncio.Event]] = defaultdict(set)
        # Streams open in this process (the ``sac_event_streams`` gauge).
        self.streams = 0
        # Any user's ring, for the webhook deliverer, which serves every user.
        self._any_rings = 0
        self._any: set[asyncio.Event] = set()

    def mark(self, user: str) -> int:
        return self._rings.get(user, 0)

    def ring(self, *users: str) -> None:
        for user in users:
            self._rings[user] += 1
            for event in self._events.get(user, ()):
                event.set()
        if users:
            self._any_rings += 1
            for event in self._any:
                event.set()

    def ring_all(self) -> None:
        """Ring the bell of every user whose stream waits here."""
        self.ring(*list(self._events))

    def mark_any(self) -> int:
        return self._any_rings

    async def wait_any(self, mark: int, timeout: float) -> None:
        """Until any user's bell rings after ``mark`` (at once if one has), or ``timeout``."""
        if self._any_rings != mark or timeout <= 0:
            return
        event = asyncio.Event()
        self._any.add(event)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        finally:
            self._any.discard(event)

    async def wait(self, user: str, mark: int, timeout: float) -> None:
        """Until ``user``'s bell rings after ``mark`` (at once if it has), or ``timeout``."""
        if self.mark(user) != mark or timeout <= 0:
            return
        event = asyncio.Event()
        self._events[user].add(event)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        finally:
            self._events[user].discard(event)
            if not self._events[user]:
                self._events.pop(user, None)


class AgentTransitions:
    """The agents this service is starting, stopping, restarting or deleting now.

    JupyterHub does not serialise calls on one server: a stop that arrives while
    another request still waits for its start cancels that start, whose request is
    answered 500 (a CancelledError), and a stop during a pending spawn may raise
    "pending spawn", also a 500. Two people (or a double click) restarting one agent
    got 502 ``hub_refused: Internal Server Error`` that way (issue 18's fuzzing). One
    change at a time per agent: the second is told 409 ``agent_busy``, plainly."""

    def __init__(self) -> None:
        self._under_way: dict[tuple[str, str], str] = {}

    @contextlib.contextmanager
    def hold(self, owner: str, slug: str, doing: str) -> Iterator[None]:
        """Mark ``owner``'s agent ``slug`` as ``doing`` (starting, …) for the block,
        or raise 409 ``agent_busy`` when another request is changing it now."""
        key = (owner, slug)
        if key in self._under_way:
            raise ApiError(
                409,
                "agent_busy",
                f"agent {slug!r} of {owner} is {self._under_way[key]} (another request);"
                " try again once that is done",
            )
        self._under_way[key] = doing
        try:
            yield
        finally:
            del self._under_way[key]


@dataclass(frozen=True)
class ServiceContext:
    """The `sac` service's collaborators and the configuration operations read."""

    store: Store
    hub: HubClient
    keybox: KeyBox
    objects: ObjectStore
    org_keys: OrganisationKeys
    hitl_waiters: Waiters
    # The credential proxy's client for model providers.
    upstream: httpx.AsyncClient
    # The service's URL prefix (/services/sac/) and where browsers find things.
    prefix: str
    public: PublicUrls
    # c.SacService.admin_scope: the scope that makes a caller an administrator.
    admin_scope: str
    # c.SacService.provider_base_urls: a preset's base URL overridden (a gateway).
    provider_base_urls: Mapping[str, str]
    # c.SacService.workspace_max_file_bytes: the largest single workspace file.
    workspace_max_file_bytes: int
    # Agents being started, stopped, restarted or deleted by a request now.
    agent_transitions: AgentTransitions = field(default_factory=AgentTransitions)
    # Wake-ups of the users' event streams when one of their events is committed.
    event_bells: Bells = field(default_factory=Bells)


@dataclass(frozen=True)
class Actor:
    """Who does an operation, as the audit log records it: the caller's identity,
    the request's X-Request-Id (None when absent or unprintable) and its client's
    address (after trusted proxies)."""

    identity: Identity
    request_id: str | None = None
    ip: str | None = None

    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def admin(self) -> bool:
        return self.identity.admin


async def audit(
    ctx: ServiceContext,
    actor: Actor,
    action: str,
    target: str,
    *,
    target_user: str | None = None,
    before: Any = None,
    after: Any = None,
    conn: Conn | None = None,
) -> None:
    """Record what ``actor`` just did in the audit log (docs/audit.md). Pass the
    connection of ``ctx.store.transaction()`` that made the change: the entry is then
    stored with the change, or neither is. Secrets are redacted by the store."""
    await ctx.store.audit.record(
        action,
        actor=actor.name,
        actor_admin=actor.admin,
        target=target,
        target_user=target_user,
        before=before,
        after=after,
        request_id=actor.request_id,
        ip=actor.ip,
        conn=conn,
    )
