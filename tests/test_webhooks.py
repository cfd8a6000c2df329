"""Webhooks without the stack: the pure rules (URLs, the allow-list and the address
check, signatures, outcomes and backoff, the Slack line), and the operations and
the deliverer in-process on a real PostgreSQL, posting to a receiver on 127.0.0.1:
queued once per event, resumed after a restart, one slow receiver delaying
nobody else."""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from helpers import close_service_context, service_context

from jupyter_sac.errors import ApiError
from jupyter_sac.rules import settings as sac_settings
from jupyter_sac.rules import webhooks as rules
from jupyter_sac.service.operations import settings
from jupyter_sac.service.operations import webhooks as ops
from jupyter_sac.service.operations.context import (
    Actor,
    ServiceContext,
)
from jupyter_sac.service.principals import ADMIN_SCOPE, DRIVE_SCOPE, USER_SCOPE, Identity
from jupyter_sac.service.webhook_delivery import Deliverer
from jupyter_sac.store import Store
from jupyter_sac.store.audit import AuditFilter

# ---- rules ------------------------------------------------------------------------


def ip(text: str) -> rules.Address:
    return ipaddress.ip_address(text)


def test_a_url_is_http_or_https_without_credentials_and_its_host_on_the_list() -> None:
    target = rules.check_url("https://Hooks.Slack.com/services/T/B/x", ["hooks.slack.com"])
    assert (target.scheme, target.host, target.port) == ("https", "hooks.slack.com", 443)
    assert rules.check_url("http://127.0.0.1:8080/h", ["127.0.0.1"]).port == 8080
    assert rules.check_url("https://a.b.example.org/h", ["*.example.org"]).host == "a.b.example.org"
    assert rules.check_url("http://10.1.2.3/h", ["10.0.0.0/8"]).host == "10.1.2.3"
    for url, code in [
        ("ftp://hooks.slack.com/x", "invalid_url"),
        ("https://user:pw@hooks.slack.com/x", "invalid_url"),
        ("https://hooks.slack.com/x#frag", "invalid_url"),
        ("https:///x", "invalid_url"),
        ("https://hooks.slack.com:99999/x", "invalid_url"),
        ("https://hooks slack.com/x", "invalid_url"),
        ("https://evil.com/x", "url_not_allowed"),
        ("https://hooks.slack.com.evil.com/x", "url_not_allowed"),
    ]:
        with pytest.raises(rules.WebhookUrlError) as e:
            rules.check_url(url, ["hooks.slack.com"])
        assert e.value.code == code, url
    with pytest.raises(rules.WebhookUrlError) as off:
        rules.check_url("https://hooks.slack.com/x", [])
    assert off.value.code == "webhooks_not_allowed"


def test_a_non_public_address_needs_its_exact_name_or_address_on_the_list() -> None:
    # Public receivers: any pattern naming the host.
    assert rules.address_allowed("hooks.slack.com", ip("52.1.2.3"), ["hooks.slack.com"])
    assert rules.address_allowed("a.example.org", ip("52.1.2.3"), ["*.example.org"])
    assert rules.address_allowed("a.example.org", ip("52.1.2.3"), ["*"])
    # A name pointed at the metadata address or the loopback: not through a wildcard.
    for address in ("169.254.169.254", "127.0.0.1", "10.0.0.5", "::1", "::ffff:127.0.0.1"):
        assert not rules.address_allowed("a.example.org", ip(address), ["*.example.org"])
        assert not rules.address_allowed("a.example.org", ip(address), ["*"])
    # ...but the exact name, or the address (network), opens it.
    assert rules.address_allowed("hooks.internal", ip("10.0.0.5"), ["hooks.internal"])
    assert rules.address_allowed("127.0.0.1", ip("127.0.0.1"), ["127.0.0.1"])
    assert rules.address_allowed("x.example.org", ip("10.0.0.5"), ["*.example.org", "10.0.0.0/8"])
    # A host not on the list at all is refused whatever its address.
    assert not rules.address_allowed("other.com", ip("52.1.2.3"), ["hooks.slack.com"])


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    body = b'{"id":1}'
    expected = hmac.new(b"whsec_k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert rules.signature("whsec_k", 1700000000, body) == "sha256=" + expected
    header = rules.signature("whsec_k", 1700000000, body)
    assert rules.verify("whsec_k", "1700000000", body, header)
    assert not rules.verify("whsec_other", "1700000000", body, header)
    assert not rules.verify("whsec_k", "1700000001", body, header)
    assert not rules.verify("whsec_k", "1700000000", body + b" ", header)
    assert not rules.verify("whsec_k", "soon", body, header)


def test_outcomes_and_backoff() -> None:
    backoff = (5.0, 30.0)
    assert rules.outcome(200, 1, backoff) == "delivered"
    assert rules.outcome(204, 3, backoff) == "delivered"
    for status in (400, 401, 404, 410, 422):
        assert rules.outcome(status, 1, backoff) == "failed"
    for status in (None, 408, 429, 500, 503, 301):
        assert rules.outcome(status, 1, backoff) == "retry"
        assert rules.outcome(status, 2, backoff) == "retry"
        assert rules.outcome(status, 3, backoff) == "failed"
    assert rules.retry_delay(1, backoff) == timedelta(seconds=5)
    assert rules.retry_delay(2, backoff) == timedelta(seconds=30)
    assert rules.retry_delay(7, backoff) == timedelta(seconds=30)
    assert rules.BACKOFF == (5.0, 30.0, 120.0, 600.0, 3600.0)


def test_kinds_are_the_event_streams() -> None:
    assert rules.check_kinds(["hitl.requested", "hitl.requested"]) == ("hitl.requested",)
    assert rules.check_kinds(["agent.failed"]) == ("agent.failed",)
    for bad in ([], ["chat.turn_started"], "hitl.requested", None):
        with pytest.raises(ValueError):
            rules.check_kinds(bad)


def test_the_slack_line_says_how_an_agent_failed() -> None:
    start = rules.slack_text(
        "agent.failed", "ann", "gate", {"phase": "start", "message": "no\nroom"}, "u/"
    )
    assert start == "ann/gate failed to start: no room"
    gone = rules.slack_text(
        "agent.failed", "ann", "gate", {"phase": "exit", "exit_code": 137, "message": "x"}, "u/"
    )
    assert "stopped unexpectedly (exit code 137)" in gone


def test_the_slack_line_is_one_line_and_links_a_request_to_its_approval() -> None:
    text = rules.slack_text(
        "hitl.requested",
        "ann",
        "gate",
        {"id": "r1", "summary": "Bash: make\n deploy"},
        "https://sac.example.org/services/sac/",
    )
    assert text == (
        "ann/gate asks for approval: Bash: make deploy"
        " <https://sac.example.org/services/sac/approvals/r1|Review>"
    )
    spent = rules.slack_text(
        "budget.exhausted",
        "ann",
        "gate",
        {"scope": "user", "used": 10, "limit": 9, "month": "2026-12", "resets_on": "2027-01-01"},
        "/",
    )
    assert "spent" in spent and "2027-01-01" in spent and "\n" not in spent
    assert "\n" not in rules.slack_text("hitl.decided", "ann", "gate", {"status": "denied"}, "/")
    assert "works" in rules.slack_text(rules.TEST_KIND, "ann", None, {}, "/")


def test_the_allow_list_is_a_system_setting_of_host_patterns() -> None:
    spec = sac_settings.SPECS["webhook_allowed_hosts"]
    assert spec.default == () and spec.levels == frozenset({"system"})
    clean = sac_settings.validate_overrides(
        {"webhook_allowed_hosts": ["Hooks.Slack.com.", "*.example.org", "127.0.0.1"]}, "system"
    )
    assert clean["webhook_allowed_hosts"] == ("hooks.slack.com", "*.example.org", "127.0.0.1")
    with pytest.raises(sac_settings.SettingsError):
        sac_settings.validate_overrides({"webhook_allowed_hosts": ["https://x.org"]}, "system")
    with pytest.raises(sac_settings.SettingsError):
        sac_settings.validate_overrides({"webhook_allowed_hosts": ["x.org"]}, "user")


# ---- operations and the deliverer ----------------------------------------------------

ADMIN = Actor(Identity(name="root", kind="user", scopes=frozenset({ADMIN_SCOPE, USER_SCOPE})))
ANN = Actor(Identity(name="ann", kind="user", scopes=frozenset({USER_SCOPE})))
ANN_DRIVER = Actor(Identity(name="ann", kind="user", scopes=frozenset({DRIVE_SCOPE})))
BOB = Actor(Identity(name="bob", kind="user", scopes=frozenset({USER_SCOPE})))


@pytest_asyncio.fixture
async def ctx(database_url: str, tmp_path: Path) -> AsyncIterator[ServiceContext]:
    store = await Store.open(database_url)
    context = service_context(store, tmp_path / "objects")
    yield context
    await close_service_context(context)
    await store.close()


class Receiver:
    """Records POSTs; ``delay`` seconds per path before answering ``status``."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, str], bytes, float]] = []
        self.delay: dict[str, float] = {}
        self.status = 200
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.got.append((self.path, dict(self.headers), body, time.monotonic()))
                time.sleep(receiver.delay.get(self.path, 0))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def on(self, path: str) -> list[tuple[str, dict[str, str], bytes, float]]:
        return [g for g in self.got if g[0] == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


async def until(check: Any, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check() if asyncio.iscoroutinefunction(check) else check()
        if result:
            return result
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.05)


async def allow_loopback(ctx: ServiceContext) -> None:
    await settings.replace_system_settings(ctx, ADMIN, {"webhook_allowed_hosts": ["127.0.0.1"]})


@pytest.mark.asyncio
async def test_only_persons_subscribe_their_own_and_nothing_without_an_allow_list(
    ctx: ServiceContext, receiver: Receiver
) -> None:
    body = {"url": receiver.url("/h"), "kinds": ["hitl.requested"]}
    with pytest.raises(ApiError) as off:
        await ops.create_webhook(ctx, ANN, body)
    assert (off.value.status_code, off.value.code) == (403, "webhooks_not_allowed")
    await allow_loopback(ctx)
    with pytest.raises(ApiError) as driver:
        await ops.create_webhook(ctx, ANN_DRIVER, body)
    assert driver.value.status_code == 403
    hook = await ops.create_webhook(ctx, ANN, body)
    stored = await ctx.store.webhooks.get("ann", hook["id"])
    assert stored is not None and hook["secret"] not in repr(stored)
    assert ctx.keybox.decrypt(stored.encrypted_secret) == hook["secret"]
    with pytest.raises(ApiError) as other:
        await ops.get_webhook(ctx, BOB, hook["id"])
    assert other.value.status_code == 404
    with pytest.raises(ApiError) as nonsense:
        await ops.get_webhook(ctx, ANN, "not-a-uuid")
    assert nonsense.value.status_code == 404
    [entry] = await ctx.store.audit.list(AuditFilter(action="webhook.create"), limit=5)
    assert entry["after"]["url"].endswith("/…") and "/h" not in entry["after"]["url"]
    assert hook["secret"] not in json.dumps(entry, default=str)


@pytest.mark.asyncio
async def test_each_event_is_queued_once_and_a_restart_resumes_what_is_pending(
    ctx: ServiceContext, receiver: Receiver
) -> None:
    await allow_loopback(ctx)
    await ctx.store.events.append("ann", "hitl.requested", {"id": "old"})  # before: not told
    hook = await ops.create_webhook(
        ctx, ANN, {"url": receiver.url("/h"), "kinds": ["hitl.requested"]}
    )
    await ctx.store.events.append("ann", "hitl.decided", {"id": "a"})  # not subscribed
    await ctx.store.events.append("ann", "hitl.requested", {"id": "b"})
    await ctx.store.events.append("bob", "hitl.requested", {"id": "bob's"})
    receiver.status = 503
    first = Deliverer(ctx, backoff=(0.2, 0.2, 0.2), timeout=2)
    await first.round()
    await first.round()  # a second round queues nothing new
    await until(lambda: receiver.on("/h"))
    await until(lambda: not first._sending)
    await first.close()  # "the service stops"
    [pending] = await ctx.store.webhooks.deliveries(hook["id"], 10)
    assert (pending["status"], pending["attempts"], pending["last_status"]) == ("pending", 1, 503)

    receiver.status = 200
    second = Deliverer(ctx, backoff=(0.2, 0.2, 0.2), timeout=2)
    task = asyncio.create_task(second.run())
    try:

        async def delivered() -> bool:
            [d] = await ctx.store.webhooks.deliveries(hook["id"], 10)
            return d["status"] == "delivered"

        await until(delivered)
    finally:
        task.cancel()
        await second.close()
    posts = receiver.on("/h")
    assert len(posts) == 2 and len({p[1]["X-SAC-Delivery"] for p in posts}) == 1
    assert [json.loads(p[2])["data"]["id"] for p in posts] == ["b", "b"]
    [done] = await ctx.store.webhooks.deliveries(hook["id"], 10)
    assert (done["attempts"], done["last_status"], done["last_error"]) == (2, 200, None)


@pytest.mark.asyncio
async def test_a_slow_receiver_delays_nobody_else(ctx: ServiceContext, receiver: Receiver) -> None:
    await allow_loopback(ctx)
    receiver.delay["/slow"] = 3.0
    slow = await ops.create_webhook(
        ctx, ANN, {"url": receiver.url("/slow"), "kinds": ["hitl.requested"]}
    )
    fast = await ops.create_webhook(
        ctx, BOB, {"url": receiver.url("/fast"), "kinds": ["hitl.requested"]}
    )
    deliverer = Deliverer(ctx, timeout=10, concurrency=2)
    task = asyncio.create_task(deliverer.run())
    try:
        await ctx.store.events.append("ann", "hitl.requested", {"id": "s"})
        ops.ring(ctx, "ann")
        await until(lambda: receiver.on("/slow"))
        await ctx.store.events.append("bob", "hitl.requested", {"id": "f"})
        ops.ring(ctx, "bob")
        await until(lambda: receiver.on("/fast"))
        # Bob's was received while Ann's receiver still held its delivery.
        [s] = await ctx.store.webhooks.deliveries(slow["id"], 10)
        assert s["status"] == "pending" and s["attempts"] == 0
    finally:
        task.cancel()
        await deliverer.close()
    assert fast["id"] != slow["id"]


@pytest.mark.asyncio
async def test_a_name_that_resolves_to_the_loopback_is_refused_through_a_wildcard(
    ctx: ServiceContext, receiver: Receiver
) -> None:
    # localhost is on the list only as *.localhost: its address is the loopback,
    # which a wildcard does not open; the delivery fails at once, unsent.
    await settings.replace_system_settings(ctx, ADMIN, {"webhook_allowed_hosts": ["*.localhost"]})
    port = receiver.server.server_address[1]
    hook = await ops.create_webhook(
        ctx, ANN, {"url": f"http://hook.localhost:{port}/x", "kinds": ["hitl.requested"]}
    )
    await ops.test_webhook(ctx, ANN, hook["id"])
    deliverer = Deliverer(ctx, timeout=2)
    await deliverer.round()
    await until(lambda: not deliverer._sending)
    await deliverer.close()
    [d] = await ctx.store.webhooks.deliveries(hook["id"], 10)
    assert d["status"] == "failed" and "not a public address" in d["last_error"], d
    assert receiver.got == []
