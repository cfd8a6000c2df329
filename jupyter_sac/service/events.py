"""GET api/events: the caller's events as Server-Sent Events
(the operations are in operations/events.py, the wire format in rules/events.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from tornado import iostream

from ..errors import ApiError
from ..rules.events import parse_event_id, sse_comment, sse_event
from .base import BaseHandler
from .operations import events as ops
from .operations.context import ServiceContext

log = logging.getLogger("jupyter_sac.service")

# How long an EventSource waits before it reconnects after the stream ends.
RETRY_MS = 2000
# Seconds between deletions of events past their retention.
PRUNE_SECONDS = 3600.0


async def pruner(ctx: ServiceContext, days: float) -> None:
    """Delete the users' events older than ``days`` days, once an hour (and at start)."""
    while True:
        try:
            pruned = await ctx.store.events.prune(days)
            if pruned:
                log.info("deleted %d events older than %g days", pruned, days)
        except Exception:
            log.exception("could not delete old events")
        await asyncio.sleep(PRUNE_SECONDS)


class EventsHandler(BaseHandler):
    """GET: the caller's events after ``Last-Event-ID`` (or ``?after=``), then live
    ones as they happen; ``?wait=N`` ends the stream after N seconds."""

    _gone = False
    _user: str | None = None

    def on_connection_close(self) -> None:
        # The client left: wake the stream so that it stops reading for nobody.
        self._gone = True
        if self._user is not None:
            ops.ring(self.ctx, self._user)

    def _after(self) -> int | None:
        # The header (EventSource sends it when it reconnects) wins over the query
        # the stream was first opened with.
        header = self.request.headers.get("Last-Event-ID")
        if header is not None:
            try:
                return parse_event_id(header)
            except ValueError as e:
                raise ApiError(
                    400, "invalid_field", f"Last-Event-ID: {e}", field="Last-Event-ID"
                ) from None
        raw = self.get_argument("after", None)  # its schema refuses anything but 0-10^18-1
        return None if raw is None else parse_event_id(raw)

    async def get(self) -> None:
        # Who may is settled before the position and the query are read.
        self.require_signed_in()
        self.authorize_user(self.identity.name, "follow events", driver_may=True)
        start = self._after()
        raw_wait = self.get_argument("wait", None)  # its schema: 0-3600 seconds
        wait = None if raw_wait is None else float(int(raw_wait))
        user, after = await ops.open_stream(self.ctx, self.actor, start)
        self._user = user
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        # Proxies that buffer answers (nginx) pass this one on as it is written.
        self.set_header("X-Accel-Buffering", "no")
        # The first message says where the stream starts: a client that opened it
        # without a position resumes from there.
        await self._send(f"retry: {RETRY_MS}\n" + sse_event(after, "ready", {"after": after}))
        stream = ops.follow(self.ctx, user, after, wait=wait, gone=lambda: self._gone)
        async with contextlib.aclosing(stream):
            async for batch in stream:
                text = (
                    "".join(sse_event(r["id"], r["kind"], self._data(r)) for r in batch)
                    if batch
                    else sse_comment("keep-alive")
                )
                if not await self._send(text):
                    return
        if not self._gone:
            self.finish()

    @staticmethod
    def _data(row: dict[str, Any]) -> dict[str, Any]:
        return {**row["data"], "agent": row["agent_slug"], "time": row["created_at"].isoformat()}

    async def _send(self, text: str) -> bool:
        """Write and flush; False once the client has gone."""
        if self._gone:
            return False
        try:
            self.write(text)
            await self.flush()
        except iostream.StreamClosedError:
            self._gone = True
            return False
        return True


class AgentEventsHandler(BaseHandler):
    """POST (an agent's own token): its sandbox reports what only the sandbox sees
    (a chat turn finished), for its owner's stream and webhooks."""

    async def post(self) -> None:
        agent = await self.require_agent()
        added = await ops.turn_finished(self.ctx, agent, self.json_body())
        self.write_json({"recorded": added}, status=201 if added else 200)


def routes(prefix: str) -> list[tuple[str, Any]]:
    return [
        (prefix + "api/events", EventsHandler),
        (prefix + "api/agent/events", AgentEventsHandler),
    ]
