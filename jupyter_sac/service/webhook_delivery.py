"""The webhook deliverer: a background task of the service that posts the users'
events to their webhooks (the rules: rules/webhooks.py; the subscriptions:
operations/webhooks.py; the rows: store/webhooks.py).

It wakes when any user's bell rings (an event committed in this process, the same
bells the event stream follows), when one of its attempts ends, and every few
seconds in any case (an event of another process rings no bell here). Each round
queues, per enabled subscription, the events after its cursor, then posts the
deliveries that are due, at most ``concurrency`` at once: a slow receiver holds
one slot for at most its timeout, never the others' deliveries. A delivery is
recorded before it is sent and after each attempt, so a restart resumes what was
pending: at least once (receivers dedupe by ``X-SAC-Delivery``)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from .. import __version__
from ..rules import webhooks as rules
from ..rules.egress import Address, address_without_dns
from ..rules.events import one_line
from . import metrics
from .operations.context import ServiceContext
from .operations.webhooks import allowed_hosts

log = logging.getLogger("jupyter_sac.service")

# Events read per subscription and query.
BATCH = 100
# Seconds between rounds without a wake-up.
RECHECK_SECONDS = 5.0
# Finished deliveries kept per subscription (the newest); older ones are deleted,
# as are those older than the events' retention.
KEEP_PER_WEBHOOK = 200
PRUNE_SECONDS = 3600.0
# The longest error text kept for a delivery.
ERROR_CHARS = 300


class Deliverer:
    def __init__(
        self,
        ctx: ServiceContext,
        *,
        backoff: Sequence[float] = rules.BACKOFF,
        timeout: float = 5.0,
        concurrency: int = 8,
        retention_days: float = 30.0,
        recheck: float = RECHECK_SECONDS,
    ) -> None:
        self.ctx = ctx
        self.backoff = tuple(backoff) or rules.BACKOFF
        self.recheck = recheck
        self.retention_days = retention_days
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._sending: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        # Its own client: no redirects (a receiver could point us anywhere), no
        # proxy from the environment (the address check is about where we connect),
        # and no kept connections: they are pooled by address, and a connection
        # whose TLS was checked for one name must not carry another name's request.
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    async def close(self) -> None:
        for task in list(self._sending.values()):
            task.cancel()
        await self.client.aclose()

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            # Leadership lost (or the service stopping): attempts under way stop
            # with it, so that the new leader's attempts are not doubled by ours.
            for task in list(self._sending.values()):
                task.cancel()

    async def _run(self) -> None:
        last_prune = -PRUNE_SECONDS
        loop = asyncio.get_running_loop()
        while True:
            mark = self.ctx.event_bells.mark_any()
            self._wake.clear()
            timeout = self.recheck
            try:
                if loop.time() - last_prune >= PRUNE_SECONDS:
                    last_prune = loop.time()
                    await self.ctx.store.webhooks.prune(KEEP_PER_WEBHOOK, self.retention_days)
                await self.round()
                due = await self.ctx.store.webhooks.next_due()
                if due is not None:
                    timeout = min(timeout, (due - datetime.now(UTC)).total_seconds())
            except Exception:
                log.exception("webhook deliveries: a round failed")
            await self._sleep(mark, max(timeout, 0.05))

    async def _sleep(self, mark: int, timeout: float) -> None:
        """Until a user's bell rings after ``mark``, an attempt ends, or ``timeout``."""
        bell = asyncio.ensure_future(self.ctx.event_bells.wait_any(mark, timeout))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({bell, woken}, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            for task in (bell, woken):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def round(self) -> None:
        """Queue new events for every enabled subscription, then start what is due."""
        for hook in await self.ctx.store.webhooks.enabled():
            while await self.ctx.store.webhooks.queue_new(hook.id, BATCH) == BATCH:
                pass
        room = self._concurrency * 4 - len(self._sending)
        if room <= 0:
            return
        for row in await self.ctx.store.webhooks.due(room, list(self._sending)):
            task = asyncio.create_task(self._deliver(row))
            self._sending[row["id"]] = task

    async def _deliver(self, row: dict[str, Any]) -> None:
        try:
            async with self._slots:
                await self._attempt(row)
        except Exception:
            log.exception("webhook delivery %s: could not record an attempt", row["id"])
        finally:
            self._sending.pop(row["id"], None)
            self._wake.set()

    async def _attempt(self, row: dict[str, Any]) -> None:
        attempts = int(row["attempts"]) + 1
        status: int | None = None
        error: str | None = None
        final = False  # a refusal no retry can change
        started = time.monotonic()
        try:
            allowed = await allowed_hosts(self.ctx)
            target = rules.check_url(row["url"], allowed)
            secret = self.ctx.keybox.decrypt(row["encrypted_secret"])
            address = await self._address(target, allowed)
            body = self._body(row)
            timestamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": f"jupyter-sac-webhooks/{__version__}",
                "X-SAC-Event": row["kind"],
                "X-SAC-Delivery": row["id"],
                "X-SAC-Timestamp": str(timestamp),
                "X-SAC-Signature": rules.signature(secret, timestamp, body),
            }
            url, host_header = _pinned(target, address)
            resp = await self.client.post(
                url,
                content=body,
                headers={**headers, "Host": host_header},
                # TLS is checked against the URL's name, not the address connected to.
                extensions={"sni_hostname": target.host},
            )
            status = resp.status_code
            if not 200 <= status < 300:
                said = one_line(resp.text, 200)
                error = f"HTTP {status}: {said}" if said else f"HTTP {status}"
        except rules.WebhookUrlError as e:
            # The allow-list changed since the subscription was made.
            error, final = str(e), True
        except _Refused as e:
            error, final = str(e), True
        except ValueError as e:
            # The secret cannot be decrypted (the service's keys changed).
            error, final = f"cannot sign: {e}", True
        except (httpx.HTTPError, OSError) as e:
            error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        result = "failed" if final else rules.outcome(status, attempts, self.backoff)
        metrics.WEBHOOK_DELIVERIES.labels(result).inc()
        log.info(
            "webhook delivery %s (%s) attempt %d: %s in %.3f s%s",
            row["id"], row["kind"], attempts, result, time.monotonic() - started,
            f" ({error})" if error else "",
        )  # fmt: skip
        await self.ctx.store.webhooks.attempted(
            row["id"],
            status="pending" if result == "retry" else result,
            attempts=attempts,
            last_status=status,
            last_error=one_line(error, ERROR_CHARS) if error else None,
            retry_in=rules.retry_delay(attempts, self.backoff) if result == "retry" else None,
        )

    def _body(self, row: dict[str, Any]) -> bytes:
        payload = row["payload"]
        if row["format"] == "slack":
            text = rules.slack_text(
                payload["kind"],
                payload["user"],
                payload.get("agent"),
                payload.get("data") or {},
                self.ctx.public.service(),
            )
            return json.dumps({"text": text}).encode()
        return json.dumps(payload, separators=(",", ":"), default=str).encode()

    async def _address(self, target: rules.Target, allowed: Sequence[str]) -> Address:
        """The address to connect to: the first the host resolves to that the
        allow-list lets a delivery reach (``rules.address_allowed``)."""
        # An address, or localhost and its subdomains, are not asked of DNS (as the
        # egress proxy and browsers do).
        literal = address_without_dns(target.host)
        if literal is not None:
            found = [literal]
        else:
            infos = await asyncio.get_running_loop().getaddrinfo(
                target.host, target.port, type=socket.SOCK_STREAM
            )
            found = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        for a in found:
            if rules.address_allowed(target.host, a, allowed):
                return a
        raise _Refused(
            f"{target.host} resolves to {', '.join(map(str, found)) or 'nothing'}: not a public"
            " address, and webhook_allowed_hosts does not name this host or address"
        )


class _Refused(Exception):
    """The receiver's address is one a delivery may not reach."""


def _pinned(target: rules.Target, address: Address) -> tuple[str, str]:
    """(the URL with the checked address in place of the host, the Host header):
    the connection goes where the check said, not wherever a second resolution
    would point (DNS rebinding)."""
    parts = urlsplit(target.url)
    host = f"[{address}]" if address.version == 6 else str(address)
    default = 443 if target.scheme == "https" else 80
    netloc = host if target.port == default else f"{host}:{target.port}"
    header = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), header
