"""The credential proxy: an Anthropic-compatible endpoint for sandboxes.

A sandbox's ANTHROPIC_BASE_URL points here and its ANTHROPIC_API_KEY is a
per-agent token. The proxy maps the token to the agent, injects the real key
(the agent's own, decrypted, or the organisation's) and the provider's base URL,
streams the response back unchanged, and meters requests and tokens per agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
from tornado import iostream, web

from ..errors import allowed_methods
from ..rules.budgets import Refusal, budgets, reservation_tokens
from ..rules.budgets import refusal as budget_refusal
from ..rules.providers import ProviderError, auth_headers, upstream_base_url
from ..store.usage import USAGE_FIELDS, UsageDelta
from . import metrics
from .base import StreamedBody
from .operations import events as event_ops
from .operations.context import ServiceContext
from .operations.settings import effective_settings_for_agent

log = logging.getLogger("jupyter_sac.llm_proxy")

# Request headers never forwarded upstream: hop-by-hop, our auth, and encodings
# (responses must arrive uncompressed so usage can be read from them).
DROP_REQUEST_HEADERS = {
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "te",
    "trailer",
    "x-api-key",
    "authorization",
    "cookie",
    "accept-encoding",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
}
DROP_RESPONSE_HEADERS = {
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-encoding",
    "set-cookie",
    "server",
    "date",
}
ALLOWED_PATHS = {"v1/messages", "v1/messages/count_tokens"}
MAX_REQUEST_BYTES = 32 * 1024 * 1024
MAX_METERED_JSON_BYTES = 8 * 1024 * 1024
# A call's budget reservation counts for RESERVATION_TTL seconds unless renewed; a
# running call renews it every RESERVATION_RENEW seconds, so only the reservations
# of calls that can no longer settle (the service died) lapse.
RESERVATION_TTL = 300.0
RESERVATION_RENEW = 60.0
# Bodies past this are parsed for max_tokens off the event loop.
PARSE_INLINE_BYTES = 1024 * 1024


class UsageMeter:
    """Reads Anthropic usage from a response as it streams past (SSE or JSON)."""

    def __init__(self, streaming: bool):
        self.streaming = streaming
        self._buffer = b""
        self._json_parts: list[bytes] = []
        self._json_size = 0
        self.usage = UsageDelta(requests=1)

    def feed(self, chunk: bytes) -> None:
        if not self.streaming:
            self._json_size += len(chunk)
            if self._json_size <= MAX_METERED_JSON_BYTES:
                self._json_parts.append(chunk)
            return
        self._buffer += chunk
        # Events end with a blank line; a CRLF split across chunks stays in the buffer.
        *events, self._buffer = self._buffer.replace(b"\r\n", b"\n").split(b"\n\n")
        for event in events:
            self._event(event)

    def _event(self, raw: bytes) -> None:
        data = b"".join(
            line[5:].lstrip()
            for line in raw.replace(b"\r\n", b"\n").split(b"\n")
            if line.startswith(b"data:")
        )
        if not data:
            return
        try:
            payload = json.loads(data)
        except ValueError:
            return
        if not isinstance(payload, dict):
            return
        if payload.get("type") == "message_start":
            self._add((payload.get("message") or {}).get("usage") or {})
        elif payload.get("type") == "message_delta":
            self._add(payload.get("usage") or {})

    def _add(self, usage: dict[str, Any]) -> None:
        # Anthropic's counts are cumulative for a message (message_delta repeats or
        # raises them), so the largest value seen is the message's count.
        for key in USAGE_FIELDS:
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(self.usage, key, max(getattr(self.usage, key), value))

    def finish(self) -> UsageDelta:
        if not self.streaming and self._json_parts:
            try:
                payload = json.loads(b"".join(self._json_parts))
                if isinstance(payload, dict) and isinstance(payload.get("usage"), dict):
                    self._add(payload["usage"])
            except ValueError:
                pass
        elif self.streaming and self._buffer.strip():
            self._event(self._buffer)
            self._buffer = b""
        return self.usage


def anthropic_error(status: int, kind: str, message: str) -> tuple[int, bytes]:
    return status, json.dumps(
        {"type": "error", "error": {"type": kind, "message": message}}
    ).encode()


@web.stream_request_body
class LlmProxyHandler(StreamedBody, web.RequestHandler):
    """POST <prefix>llm/v1/messages[...]: authenticated by the per-agent token.

    Request bodies may be tens of MiB (images, documents): the body is streamed, and
    taken only once the path and the token are good, so nobody else can make the
    service hold more than SERVER_BODY_BYTES."""

    def upload_limit(self) -> int:
        return MAX_REQUEST_BYTES

    @property
    def ctx(self) -> ServiceContext:
        ctx: ServiceContext = self.settings["ctx"]
        return ctx

    def _fail(self, status: int, kind: str, message: str) -> None:
        status, body = anthropic_error(status, kind, message)
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(body)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # tornado's own answers (a 405 for any method but POST, an unexpected
        # exception) in the Anthropic shape the SDKs read, where they were its HTML
        # page; a 405 names the method it takes (RFC 9110; found by fuzzing).
        if status_code == 405:
            self.set_header("Allow", allowed_methods(type(self)))
            kind, message = "invalid_request_error", f"{self.request.method} is not allowed here"
        else:
            kind, message = "api_error", "the credential proxy failed; see the service log"
        self._fail(status_code, kind, message)

    def _token(self) -> str | None:
        token = self.request.headers.get("x-api-key")
        if token:
            return token.strip()
        auth = self.request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return None

    async def _reserve(self, agent: Any) -> tuple[int | None, Refusal | None]:
        """Reserve this call's tokens against the agent's and its owner's monthly
        budgets: (the reservation's id, None), or (None, why not). No budget set:
        (None, None), nothing reserved.

        The reservation is what the call may use at most (budgets.reservation_tokens)
        and is admitted atomically next to the reservations of calls under way, so
        calls made at once cannot together pass a budget. ``post`` settles it with
        the real usage when the call ends, however it ends."""
        store = self.ctx.store
        resolved = await effective_settings_for_agent(self.ctx, agent)
        agent_limit = int(resolved["agent_monthly_tokens"])
        user_limit = int(resolved["user_monthly_tokens"])
        if not agent_limit and not user_limit:
            return None, None
        # The body arrived in chunks (streamed); the estimate reads it whole, once,
        # and only when a budget is set.
        body = b"".join(self._chunks)
        if len(body) > PARSE_INLINE_BYTES:
            tokens = await asyncio.to_thread(reservation_tokens, body)
        else:
            tokens = reservation_tokens(body)
        made = await store.usage.reserve(
            agent.id,
            agent.owner,
            tokens,
            agent_limit=agent_limit,
            user_limit=user_limit,
            ttl=RESERVATION_TTL,
        )
        if made.id is not None:
            return made.id, None
        seen = made.seen
        today = datetime.now(UTC).date()
        refused = budget_refusal(
            resolved,
            seen.agent_used,
            seen.owner_used,
            today,
            tokens=tokens,
            agent_reserved=seen.agent_reserved,
            user_reserved=seen.owner_reserved,
        )
        spent = {
            scope: b
            for scope, b in budgets(resolved, seen.agent_used, seen.owner_used).items()
            if b.spent
        }
        if spent:
            try:
                await event_ops.budget_spent(self.ctx, agent.owner, agent.slug, spent, today)
            except Exception:
                # The refusal stands whether or not the owner could be told.
                log.exception("could not record the spent budget of %s/%s", agent.owner, agent.slug)
        # The store and budgets.refusal apply the same rule; should they ever
        # disagree, refuse all the same.
        return None, refused or Refusal("Monthly token budget too low for this call.", False)

    async def _renew(self, reservation_id: int) -> None:
        """Keep the reservation of this (long) call counting while it runs."""
        while True:
            await asyncio.sleep(RESERVATION_RENEW)
            try:
                await self.ctx.store.usage.extend(reservation_id, RESERVATION_TTL)
            except Exception:
                log.exception("could not renew budget reservation %s", reservation_id)

    def on_finish(self) -> None:
        started = getattr(self, "_started", None)
        if started is not None:
            metrics.observe_proxy(self._provider, self.get_status(), started, self._usage)

    async def prepare(self) -> None:
        self._started, self._provider, self._usage = time.monotonic(), "unknown", None
        if self.request.method != "POST":
            return  # 405 from tornado, without reading a body
        if self.path_args[0] not in ALLOWED_PATHS:
            return self._fail(404, "not_found_error", f"/{self.path_args[0]} is not proxied")
        token = self._token()
        agent = await self.ctx.store.tokens.agent(token) if token else None
        if agent is None:
            return self._fail(
                401,
                "authentication_error",
                "invalid agent token: restart the agent to get a new one",
            )
        self._agent, self._provider = agent, agent.provider
        self._chunks: list[bytes] = []
        if not self.accept_body(self._chunks.append):
            return self._fail(413, "request_too_large", "request body too large")

    async def post(self, path: str) -> None:
        if self.body_too_large:
            return self._fail(413, "request_too_large", "request body too large")
        agent, store = self._agent, self.ctx.store
        try:
            key = (
                self.ctx.keybox.decrypt(agent.encrypted_key)
                if agent.encrypted_key
                else self.ctx.org_keys.get(agent.provider)
            )
            base = upstream_base_url(agent.provider, agent.base_url, self.ctx.provider_base_urls)
        except (ValueError, ProviderError) as e:
            return self._fail(500, "api_error", f"agent misconfigured: {e}")
        if not key:
            return self._fail(
                401,
                "authentication_error",
                f"no {agent.provider} key is configured for agent {agent.slug!r}:"
                " set one on the agent or ask an administrator for an"
                " organisation key",
            )
        headers = {
            k: v for k, v in self.request.headers.items() if k.lower() not in DROP_REQUEST_HEADERS
        }
        headers.update(auth_headers(agent.provider, key))
        headers["Accept-Encoding"] = "identity"
        url = f"{base}/{path}"
        if self.request.query:
            url += "?" + self.request.query
        # The body goes upstream as it was received, without joining it into one
        # more copy of up to 32 MiB.
        chunks = self._chunks
        headers["Content-Length"] = str(self.body_size)

        async def body() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        reservation: int | None = None
        if path == "v1/messages":
            reservation, refused = await self._reserve(agent)
            if refused is not None:
                # 429 as the model API says "rate limited". The Anthropic SDKs (and so
                # Claude Code) honour x-should-retry: a spent budget is not worth
                # retrying; room held by calls under way frees up when they end.
                self.set_header("x-should-retry", "true" if refused.retry else "false")
                if refused.retry:
                    self.set_header("retry-after", "2")
                return self._fail(429, "rate_limit_error", refused.message)
        # Nothing may fail between the reservation and the try below, whose finally
        # settles it.
        renewing = (
            asyncio.create_task(self._renew(reservation)) if reservation is not None else None
        )
        meter: UsageMeter | None = None
        try:
            async with self.ctx.upstream.stream(
                "POST", url, content=body(), headers=headers
            ) as resp:
                self.set_status(resp.status_code)
                for name, value in resp.headers.items():
                    if name.lower() not in DROP_RESPONSE_HEADERS:
                        self.set_header(name, value)
                streaming = "text/event-stream" in resp.headers.get("content-type", "")
                meter = UsageMeter(streaming) if resp.status_code < 400 else None
                async for chunk in resp.aiter_raw():
                    if meter is not None:
                        meter.feed(chunk)
                    self.write(chunk)
                    if streaming:
                        await self.flush()
        except httpx.HTTPError as e:
            log.warning("upstream %s failed for agent %s/%s: %s", base, agent.owner, agent.slug, e)
            if not self._headers_written:
                return self._fail(
                    502, "api_error", f"the model provider could not be reached: {type(e).__name__}"
                )
            return self.finish()
        except iostream.StreamClosedError:
            # The client went away mid-answer: leaving the block above closed the
            # provider's stream; what was metered until then is settled below.
            log.info("client of agent %s/%s left during a model call", agent.owner, agent.slug)
            return None
        finally:
            if renewing is not None:
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing
            delta = meter.finish() if meter is not None else UsageDelta(requests=1)
            self._usage = delta
            if path == "v1/messages":
                try:
                    # The usage and the end of the reservation in one transaction. If
                    # this fails, the reservation lapses after RESERVATION_TTL.
                    await store.usage.settle(reservation, agent.id, agent.owner, agent.slug, delta)
                except Exception:
                    log.exception("could not record usage for %s/%s", agent.owner, agent.slug)
        self.finish()
