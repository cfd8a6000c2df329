"""The caller's event stream (``GET api/events``): who may follow it, where it
starts, and its events as they are stored (``store/events.py``).

Events are appended by the operations that make the change, in the change's
transaction (``record``), and the streams of the user are woken once it is
committed (``ring``; in the service's other processes, by the append's NOTIFY,
service/wakeups.py). A stream reads the store, never the wake-ups: a wake-up
only says when to read again."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import date
from typing import Any

from ...errors import ApiError
from ...rules import events
from ...rules.budgets import Budget
from ...store import AgentRecord
from ...store.tx import Conn
from ..openapi import CONTRACT
from .access import authorize_user
from .context import Actor, ServiceContext

# Events read from the store at once (a client far behind gets several batches).
BATCH = 100
# How often a stream re-reads the store without being woken: events appended
# elsewhere (another process of the service, the hub's spawner) ring here through
# their NOTIFY, unless the listening connection is down just then.
RECHECK_SECONDS = 5.0
# A comment line after this long without an event, so that proxies and clients
# see the stream is alive (nginx and others close idle connections after 60 s).
KEEPALIVE_SECONDS = 15.0


async def record(
    ctx: ServiceContext,
    conn: Conn,
    user: str,
    kind: str,
    data: dict[str, Any],
    *,
    agent: str | None = None,
) -> None:
    """Append event ``kind`` to ``user``'s stream inside the change's transaction
    (``conn``); ring the user's bell once that has committed (``ring``)."""
    await ctx.store.events.append(user, kind, data, agent=agent, conn=conn)


def ring(ctx: ServiceContext, *users: str) -> None:
    """Wake ``users``' streams in this process: call after the transaction that
    recorded their events committed (a stream woken earlier would not see them yet
    and sleep until its next re-read)."""
    ctx.event_bells.ring(*users)


async def budget_spent(
    ctx: ServiceContext, owner: str, agent: str, spent: Mapping[str, Budget], today: date
) -> None:
    """A model call of ``owner``'s ``agent`` was refused because the budgets in
    ``spent`` (``user``, ``agent``) are spent: ``budget.exhausted`` on the owner's
    stream, once a month per budget (the credential proxy refuses every call past
    it; the owner hears of it once)."""
    told = False
    for scope, budget in sorted(spent.items()):
        data, key = events.budget_exhausted(scope, agent, budget.used, budget.limit, today)
        added = await ctx.store.events.append(
            owner, events.BUDGET_EXHAUSTED, data, agent=agent, dedupe_key=key
        )
        told = told or added is not None
    if told:
        ring(ctx, owner)


async def turn_finished(ctx: ServiceContext, agent: AgentRecord, report: Any) -> bool:
    """The sandbox of ``agent`` says one of its chat turns finished:
    ``chat.turn_finished`` on its owner's stream, once per turn (False: already
    told). At most ``TURNS_PER_MINUTE`` a minute per agent (429 beyond)."""
    CONTRACT.check("ChatTurnReport", report)
    recent = await ctx.store.events.recent(agent.owner, events.CHAT_TURN_FINISHED, agent.slug, 60)
    if recent >= events.TURNS_PER_MINUTE:
        raise ApiError(
            429, "too_many_events", f"at most {events.TURNS_PER_MINUTE} finished turns a minute"
        )
    data, key = events.chat_turn_finished(report)
    added = await ctx.store.events.append(
        agent.owner, events.CHAT_TURN_FINISHED, data, agent=agent.slug, dedupe_key=key
    )
    if added is not None:
        ring(ctx, agent.owner)
    return added is not None


async def open_stream(ctx: ServiceContext, actor: Actor, after: int | None) -> tuple[str, int]:
    """(whose events, the id the stream starts after). The caller follows their own
    events: as a person, or with the token of an agent they let drive their other
    agents; never with an agent's own token (its sandbox would read what its
    siblings ask). Without ``after``, the stream starts at the newest event: it
    tells what happens from now on."""
    ident = authorize_user(actor, actor.name, "follow events", driver_may=True)
    start = after if after is not None else await ctx.store.events.latest(ident.name)
    return ident.name, start


async def follow(
    ctx: ServiceContext,
    user: str,
    after: int,
    *,
    wait: float | None = None,
    gone: Callable[[], bool] = lambda: False,
    recheck: float = RECHECK_SECONDS,
    keepalive: float = KEEPALIVE_SECONDS,
) -> AsyncIterator[list[dict[str, Any]]]:
    """``user``'s events with ids above ``after``, in order, in batches as they are
    stored; an empty batch after ``keepalive`` seconds without one (time to show the
    stream is alive). With ``wait``, it ends that many seconds after it began, once
    what was there then has been given (``wait=0``: what is there now); without,
    when its consumer stops or ``gone()`` says the client left (ring the user's
    bell then, so that it notices at once)."""
    loop = asyncio.get_running_loop()
    deadline = math.inf if wait is None else loop.time() + wait
    quiet_since = loop.time()
    ctx.event_bells.streams += 1
    try:
        while not gone():
            # The mark is taken before the read: an event committed after the read
            # rings after the mark, and the wait below returns at once.
            mark = ctx.event_bells.mark(user)
            rows = await ctx.store.events.after(user, after, BATCH)
            if rows:
                after = int(rows[-1]["id"])
                yield rows
                quiet_since = loop.time()
                if len(rows) == BATCH:
                    continue  # more may be there already
            now = loop.time()
            if now >= deadline:
                return
            if now - quiet_since >= keepalive:
                yield []
                quiet_since = now
            await ctx.event_bells.wait(
                user, mark, min(recheck, keepalive - (now - quiet_since), deadline - now)
            )
    finally:
        ctx.event_bells.streams -= 1
