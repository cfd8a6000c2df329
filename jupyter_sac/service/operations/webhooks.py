"""Users' webhooks (``api/webhooks``): a person subscribes a URL on the
administrator's allow-list to kinds of their own events; the deliverer
(``service/webhook_delivery.py``) posts them. Creating, changing and removing a
subscription are audited, never with its secret (shown once, at creation) nor
its URL's path (a Slack webhook's path is itself a credential)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from ...errors import ApiError
from ...rules import settings as sac_settings
from ...rules import webhooks as rules
from ...store.webhooks import Webhook
from ..openapi import CONTRACT
from .access import authorize_user, require_person
from .context import Actor, ServiceContext, audit
from .events import ring

# Deliveries GET api/webhooks/{id}/deliveries shows (the newest).
DELIVERIES_SHOWN = 100


def webhook_model(hook: Webhook) -> dict[str, Any]:
    """A subscription as the API shows it: everything but its secret."""
    return {
        "id": hook.id,
        "owner": hook.owner,
        "url": hook.url,
        "format": hook.format,
        "kinds": list(hook.kinds),
        "enabled": hook.enabled,
        "created_at": hook.created_at.isoformat(),
        "updated_at": hook.updated_at.isoformat(),
    }


def delivery_model(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "event_id": row["event_id"],
        "kind": row["kind"],
        "status": row["status"],
        "attempts": row["attempts"],
        "last_status": row["last_status"],
        "last_error": row["last_error"],
        "next_attempt_at": row["next_attempt_at"].isoformat()
        if row["status"] == "pending"
        else None,
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


def _audited(hook: Webhook) -> dict[str, Any]:
    """What the audit log keeps of a subscription: never its secret, and its URL
    without path or query."""
    return {
        "url": rules.redacted_url(hook.url),
        "format": hook.format,
        "kinds": list(hook.kinds),
        "enabled": hook.enabled,
    }


def new_secret() -> str:
    """A signing secret: 32 random bytes, URL-safe, with a prefix that says what it is."""
    return "whsec_" + secrets.token_urlsafe(32)


async def allowed_hosts(ctx: ServiceContext) -> tuple[str, ...]:
    """The system setting ``webhook_allowed_hosts`` (empty: webhooks are off)."""
    system = await ctx.store.settings.get("system")
    value = system.get("webhook_allowed_hosts")
    default: tuple[str, ...] = sac_settings.DEFAULTS["webhook_allowed_hosts"]
    return tuple(value) if value is not None else default


def _check_url(url: str, allowed: tuple[str, ...]) -> str:
    try:
        return rules.check_url(url, allowed).url
    except rules.WebhookUrlError as e:
        status = 403 if e.code == "webhooks_not_allowed" else 400
        raise ApiError(status, e.code, str(e), field="url") from None


def _check_kinds(kinds: Any) -> tuple[str, ...]:
    try:
        return rules.check_kinds(kinds)
    except ValueError as e:
        raise ApiError(400, "invalid_field", str(e), field="kinds") from None


def _owner_of(actor: Actor, user: str | None, what: str) -> str:
    """Whose webhooks: the caller's own, or (administrators) ``user``'s. Agents and
    their drivers never reach webhooks: a sandbox could send its owner's events
    anywhere the allow-list lets it."""
    require_person(actor, what)
    owner = user or actor.name
    authorize_user(actor, owner, what)
    return owner


async def _get(ctx: ServiceContext, owner: str, webhook_id: str) -> Webhook:
    hook = await ctx.store.webhooks.get(owner, webhook_id)
    if hook is None:
        raise ApiError(404, "not_found", f"{owner} has no webhook {webhook_id!r}")
    return hook


async def list_webhooks(
    ctx: ServiceContext, actor: Actor, user: str | None
) -> list[dict[str, Any]]:
    owner = _owner_of(actor, user, "list webhooks")
    return [webhook_model(h) for h in await ctx.store.webhooks.of_owner(owner)]


async def create_webhook(ctx: ServiceContext, actor: Actor, body: Any) -> dict[str, Any]:
    """Subscribe the caller's ``url`` to ``kinds`` of their events: the
    subscription's model with its ``secret``, the only time it is shown."""
    owner = _owner_of(actor, None, "create webhooks")
    CONTRACT.check("WebhookCreate", body)
    url = _check_url(body["url"], await allowed_hosts(ctx))
    kinds = _check_kinds(body["kinds"])
    secret = new_secret()
    async with ctx.store.transaction() as conn:
        if await ctx.store.webhooks.count(owner, conn=conn) >= rules.MAX_WEBHOOKS_PER_USER:
            raise ApiError(
                403,
                "webhook_limit_reached",
                f"{owner} already has the maximum of {rules.MAX_WEBHOOKS_PER_USER} webhooks",
            )
        hook = await ctx.store.webhooks.create(
            owner, url, body.get("format", "json"), kinds, ctx.keybox.encrypt(secret), conn=conn
        )
        if body.get("enabled") is False:
            changed = await ctx.store.webhooks.update(owner, hook.id, {"enabled": False}, conn=conn)
            assert changed is not None
            hook = changed[1]
        await audit(
            ctx, actor, "webhook.create", hook.id, target_user=owner,
            after=_audited(hook), conn=conn,
        )  # fmt: skip
    return {**webhook_model(hook), "secret": secret}


async def get_webhook(ctx: ServiceContext, actor: Actor, webhook_id: str) -> dict[str, Any]:
    owner = _owner_of(actor, None, "read webhooks")
    return webhook_model(await _get(ctx, owner, webhook_id))


async def change_webhook(
    ctx: ServiceContext, actor: Actor, webhook_id: str, body: Any
) -> dict[str, Any]:
    """Change the caller's subscription's ``url``, ``format``, ``kinds`` or ``enabled``."""
    owner = _owner_of(actor, None, "change webhooks")
    CONTRACT.check("WebhookPatch", body)
    changes: dict[str, Any] = {}
    if "url" in body:
        changes["url"] = _check_url(body["url"], await allowed_hosts(ctx))
    if "kinds" in body:
        changes["kinds"] = _check_kinds(body["kinds"])
    for name in ("format", "enabled"):
        if name in body:
            changes[name] = body[name]
    async with ctx.store.transaction() as conn:
        changed = await ctx.store.webhooks.update(owner, webhook_id, changes, conn=conn)
        if changed is None:
            raise ApiError(404, "not_found", f"{owner} has no webhook {webhook_id!r}")
        before, after = changed
        await audit(
            ctx, actor, "webhook.change", after.id, target_user=owner,
            before=_audited(before), after=_audited(after), conn=conn,
        )  # fmt: skip
    if after.enabled:
        ring(ctx, owner)  # the deliverer sends what is pending now
    return webhook_model(after)


async def new_webhook_secret(ctx: ServiceContext, actor: Actor, webhook_id: str) -> dict[str, Any]:
    """Replace the caller's subscription's secret: the model with the new
    ``secret``, shown this once (deliveries from now on are signed with it)."""
    owner = _owner_of(actor, None, "change webhooks")
    secret = new_secret()
    async with ctx.store.transaction() as conn:
        hook = await ctx.store.webhooks.set_secret(
            owner, webhook_id, ctx.keybox.encrypt(secret), conn=conn
        )
        if hook is None:
            raise ApiError(404, "not_found", f"{owner} has no webhook {webhook_id!r}")
        await audit(
            ctx, actor, "webhook.secret", hook.id, target_user=owner,
            after={"secret_changed": True}, conn=conn,
        )  # fmt: skip
    return {**webhook_model(hook), "secret": secret}


async def delete_webhook(
    ctx: ServiceContext, actor: Actor, user: str | None, webhook_id: str
) -> None:
    """Remove a subscription and its deliveries (pending ones are not sent)."""
    owner = _owner_of(actor, user, "remove webhooks")
    async with ctx.store.transaction() as conn:
        removed = await ctx.store.webhooks.delete(owner, webhook_id, conn=conn)
        if removed is None:
            raise ApiError(404, "not_found", f"{owner} has no webhook {webhook_id!r}")
        await audit(
            ctx, actor, "webhook.delete", removed.id, target_user=owner,
            before=_audited(removed), conn=conn,
        )  # fmt: skip


async def list_deliveries(
    ctx: ServiceContext, actor: Actor, webhook_id: str
) -> list[dict[str, Any]]:
    owner = _owner_of(actor, None, "read webhooks")
    hook = await _get(ctx, owner, webhook_id)
    rows = await ctx.store.webhooks.deliveries(hook.id, DELIVERIES_SHOWN)
    return [delivery_model(r) for r in rows]


async def test_webhook(ctx: ServiceContext, actor: Actor, webhook_id: str) -> dict[str, Any]:
    """Queue a ``webhook.test`` delivery to the caller's subscription and wake the
    deliverer: its id (follow it in the deliveries)."""
    owner = _owner_of(actor, None, "test webhooks")
    hook = await _get(ctx, owner, webhook_id)
    if not hook.enabled:
        raise ApiError(409, "webhook_disabled", "this webhook is disabled: enable it first")
    payload = rules.json_body(
        None,
        rules.TEST_KIND,
        owner,
        None,
        datetime.now(UTC).isoformat(),
        {"message": "a test notification, sent on request"},
    )
    delivery = await ctx.store.webhooks.queue(hook.id, rules.TEST_KIND, payload)
    ring(ctx, owner)
    return {"delivery": delivery}
