"""Webhook notifications: which URLs a user may subscribe, which addresses a
delivery may reach, what each format's body says, how it is signed, and when a
failed delivery is tried again. Pure functions: the service's deliverer
(``service/webhooks.py``) and the tests share them.

A subscription's URL must name a host on the administrator's allow-list (the
system setting ``webhook_allowed_hosts``, egress host patterns); at delivery the
host is resolved and a non-public address (loopback, private, link-local, the
cloud's metadata address) is refused unless the allow-list names that exact host
or contains that address (docs/security.md#webhooks): a wildcard such as
``*.example.org`` opens public receivers only.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

from .egress import Address, canonical_address, is_public, normalise_host, parse_pattern
from .events import KINDS, one_line

Format = Literal["json", "slack"]
FORMATS: tuple[Format, ...] = ("json", "slack")
# The event a test delivery carries (POST api/webhooks/{id}/test); never stored
# in the users' event stream.
TEST_KIND = "webhook.test"
# Kinds a subscription may name.
SUBSCRIBABLE = KINDS

MAX_URL_CHARS = 2000
MAX_WEBHOOKS_PER_USER = 20
# Seconds between attempts after a failure: the n-th retry waits BACKOFF[n-1];
# once they are spent, the delivery has failed.
BACKOFF: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0, 3600.0)
# Statuses that say "try again later" although they are 4xx.
_RETRYABLE_4XX = frozenset({408, 429})


class WebhookUrlError(ValueError):
    """A subscription URL that cannot be accepted; ``code`` is the API's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Target:
    """A subscription URL taken apart: its scheme, normalised host and port."""

    url: str
    scheme: str
    host: str
    port: int


def parse_url(url: str) -> Target:
    """``url`` as a webhook target: http or https, a host, no user name or password
    (they would be sent in the clear to whoever logs URLs), no fragment;
    WebhookUrlError (``invalid_url``) otherwise."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise WebhookUrlError("invalid_url", f"expected a URL of 1-{MAX_URL_CHARS} characters")
    if not url.isascii() or any(c.isspace() or ord(c) < 32 for c in url):
        raise WebhookUrlError("invalid_url", "the URL must be ASCII without spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise WebhookUrlError("invalid_url", f"not a URL: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookUrlError("invalid_url", "the URL must start with https:// or http://")
    if parts.username is not None or parts.password is not None:
        raise WebhookUrlError("invalid_url", "the URL may not hold a user name or password")
    if parts.fragment:
        raise WebhookUrlError("invalid_url", "the URL may not have a #fragment")
    if not parts.hostname:
        raise WebhookUrlError("invalid_url", "the URL has no host")
    try:
        host = normalise_host(parts.hostname)
    except ValueError as e:
        raise WebhookUrlError("invalid_url", str(e)) from None
    return Target(url, parts.scheme, host, port or (443 if parts.scheme == "https" else 80))


def redacted_url(url: str) -> str:
    """``url`` without its path and query (for the audit log: a Slack webhook's
    path is itself a credential)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(invalid URL)"
    return f"{parts.scheme}://{parts.netloc}/…"


def check_url(url: str, allowed: Sequence[str]) -> Target:
    """``url`` parsed (``parse_url``) and its host matched against the allow-list
    ``allowed`` (egress host patterns). WebhookUrlError: ``webhooks_not_allowed``
    when the list is empty (webhooks are off), ``url_not_allowed`` when the host
    is not on it."""
    target = parse_url(url)
    if not allowed:
        raise WebhookUrlError(
            "webhooks_not_allowed",
            "webhooks are off: an administrator has allowed no receiving hosts"
            " (the system setting webhook_allowed_hosts)",
        )
    if not host_allowed(target.host, allowed):
        raise WebhookUrlError(
            "url_not_allowed",
            f"{target.host} is not among the hosts an administrator allows webhooks to"
            f" (webhook_allowed_hosts: {', '.join(allowed)})",
        )
    return target


def host_allowed(host: str, allowed: Sequence[str]) -> bool:
    """Does an allow-list pattern name ``host`` (normalised), or contain it when it
    is an address?"""
    patterns = [parse_pattern(p) for p in allowed]
    literal = _address(host)
    return any(
        p.matches_name(host) or (literal is not None and p.contains(literal)) for p in patterns
    )


def _address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def address_allowed(host: str, address: Address, allowed: Sequence[str]) -> bool:
    """May a delivery to ``host`` connect to ``address`` (one it resolved to)? A
    public address, when the host is allowed; a non-public one only when a pattern
    names exactly this host or contains the address (``127.0.0.1``,
    ``10.0.0.0/8``): ``*`` and ``*.domain`` never open the service's own networks
    (a DNS name pointed at 169.254.169.254 is refused)."""
    a = canonical_address(address)
    patterns = [parse_pattern(p) for p in allowed]
    if any(p.contains(a) for p in patterns):
        return True
    if not host_allowed(host, allowed):
        return False
    if is_public(a):
        return True
    return any(p.kind == "name" and p.name == host for p in patterns)


def check_kinds(kinds: Any) -> tuple[str, ...]:
    """A subscription's event kinds: a non-empty list of ``SUBSCRIBABLE`` kinds,
    duplicates dropped; ValueError naming the unknown ones."""
    if not isinstance(kinds, list | tuple) or not kinds:
        raise ValueError(f"expected a non-empty list of event kinds among {list(SUBSCRIBABLE)}")
    unknown = [k for k in kinds if k not in SUBSCRIBABLE]
    if unknown:
        raise ValueError(f"unknown event kinds {unknown}; known: {list(SUBSCRIBABLE)}")
    return tuple(dict.fromkeys(kinds))


def json_body(
    event_id: int | None, kind: str, user: str, agent: str | None, time: str, data: Any
) -> dict[str, Any]:
    """The ``json`` format's body: the event as the stream tells it."""
    return {"id": event_id, "kind": kind, "user": user, "agent": agent, "time": time, "data": data}


def slack_text(
    kind: str, user: str, agent: str | None, data: Mapping[str, Any], service_url: str
) -> str:
    """The one line a Slack-compatible incoming webhook shows for an event; HITL
    requests link to their approvals page at ``service_url`` (the service's public
    URL, ending in ``/``)."""
    who = f"{user}/{agent}" if agent else user
    if kind == "hitl.requested":
        link = f"{service_url}approvals/{data.get('id', '')}"
        summary = one_line(str(data.get("summary", "")))
        return f"{who} asks for approval: {summary} <{link}|Review>"
    if kind == "hitl.decided":
        return (
            f"{who}: request {data.get('tool') or ''} {data.get('status', 'decided')}"
            f" ({data.get('decision') or 'no decision'}"
            f"{', by ' + str(data['decided_by']) if data.get('decided_by') else ''})"
        )
    if kind == "budget.exhausted":
        scope = "the agent's" if data.get("scope") == "agent" else f"{user}'s"
        return (
            f"{who}: {scope} model budget for {data.get('month', 'this month')} is spent"
            f" ({data.get('used')} of {data.get('limit')}); it resets on {data.get('resets_on')}"
        )
    if kind == "chat.turn_finished":
        how = "ended with an error" if data.get("is_error") else "finished"
        summary = str(data.get("summary") or "")
        return one_line(f"{who}: a chat turn {how}" + (f": {summary}" if summary else ""))
    if kind == "agent.failed":
        if data.get("phase") == "exit":
            return one_line(
                f"{who} stopped unexpectedly (exit code {data.get('exit_code')}):"
                f" {data.get('message', '')}"
            )
        return one_line(f"{who} failed to start: {data.get('message', '')}")
    if kind == TEST_KIND:
        return f"Test notification from SAC for {user}: this webhook works."
    return one_line(f"{who}: {kind}")


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """``X-SAC-Signature``: ``sha256=`` and the hex HMAC-SHA256, keyed with the
    subscription's secret, of ``<timestamp>.<raw body>`` (the timestamp signed too,
    so that a receiver can refuse an old message replayed)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, header: str) -> bool:
    """Does ``header`` sign ``body`` at ``timestamp`` with ``secret``? (What a
    receiver does; the tests and docs/operator-guide.md use it.)"""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    return hmac.compare_digest(signature(secret, ts, body), header)


Outcome = Literal["delivered", "retry", "failed"]


def outcome(status: int | None, attempts: int, backoff: Sequence[float] = BACKOFF) -> Outcome:
    """What an attempt's answer (``status``; None: no answer, a timeout or a refused
    connection) means after ``attempts`` attempts: a 2xx is delivered; a 4xx
    other than 408 and 429 fails at once (the receiver refuses this message, and
    will again); anything else is tried again, once per ``backoff`` delay, then
    fails."""
    if status is not None and 200 <= status < 300:
        return "delivered"
    if status is not None and 400 <= status < 500 and status not in _RETRYABLE_4XX:
        return "failed"
    return "retry" if attempts <= len(backoff) else "failed"


def retry_delay(attempts: int, backoff: Sequence[float] = BACKOFF) -> timedelta:
    """How long to wait before the attempt after ``attempts`` failed ones (the
    last delay again, should there be more)."""
    return timedelta(seconds=backoff[min(max(attempts, 1), len(backoff)) - 1])
