"""The person's own pages: approvals, an agent's settings, a skill.

An agent's JupyterLab runs on an origin its sandbox controls, so its sidebar and the
notebook widgets only show things (with the agent's token) and hand over to these
pages, on the service's own origin, for what a person must do: decide an approval,
change an agent's settings, key or HITL policy, share or delete a skill. The URLs
are a contract: the JupyterLab extension and the widgets open them (often as a
pop-up), so keep them as they are:

- ``approvals``, ``approvals/<request id>`` (GET; POST decides),
- ``agents/<user>/<slug>`` (GET; POST with ``action`` save, policy, secrets or restart),
- ``skills/<id>`` (GET; POST with ``action`` share or delete),
- ``secrets`` (GET; POST with ``action`` set or delete),
- ``notifications`` (GET; POST with ``action`` create, test, enable, disable or
  delete).

Only a person acting as themselves may use them (``person_page``); every token an
agent holds gets 403, other users' things 404 (administrators may act for anyone,
audited). Every change goes through the API's own operation, so validation, the
404-for-others rule and the audit log are the API's.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from ..errors import ApiError
from ..rules.providers import PRESETS
from ..rules.skills import Viewer, can_edit
from ..store.hitl import PENDING
from .forms import (
    agent_settings_body,
    decision_body,
    grants_body,
    last,
    needs_restart,
    visibility_body,
    visibility_choices,
    visibility_value,
)
from .operations import agents as agent_ops
from .operations import hitl as hitl_ops
from .operations import secrets as secret_ops
from .operations import skills as skill_ops
from .operations import webhooks as webhook_ops
from .operations.settings import settings_for_user
from .pages import DONE_MESSAGES, PageHandler, person_page, server_status
from .routes import NAME, SLUG, USER
from .validation import bad

# How many decided requests the approvals page lists under the waiting ones.
RECENT_DECIDED = 20
WAITING_MAX = 200

PERSON_DONE = {
    **DONE_MESSAGES,
    # The pop-up opened by the sidebar or a widget: the person goes back to it.
    "hitl-allow": "Allowed. You can close this window.",
    "hitl-deny": "Denied. You can close this window.",
    "agent-saved": "Settings saved.",
    "agent-saved-restart": "Settings saved. The agent is running: restart it to apply them.",
    "agent-unchanged": "Nothing to change.",
    "policy-saved": "HITL policy saved. The agent applies it from its next tool call.",
    "agent-restarting": "The agent is restarting; open it again once it is ready.",
    "skill-saved": "Visibility saved.",
    "secret-saved": "Secret {target} saved. Agents granted it get it at their next start.",
    "secret-removed": "Secret {target} removed, and taken from the agents that had it.",
    "grants-saved": "Secrets saved. They reach the agent at its next start.",
    "webhook-test": "A test notification is on its way; its delivery shows below.",
    "webhook-saved": "Webhook saved.",
    "webhook-deleted": "Webhook deleted.",
}


def expired(row: dict[str, Any], now: datetime) -> bool:
    return row["expires_at"] is not None and row["expires_at"] <= now


def agent_path(owner: str, slug: str) -> str:
    """The settings page of an agent, under the service's prefix."""
    return f"agents/{quote(owner, safe='')}/{slug}"


class ApprovalsPage(PageHandler):
    """GET approvals: my requests waiting for a decision, and the last ones decided."""

    done_messages = PERSON_DONE

    @person_page("decide approvals")
    async def get(self) -> None:
        me = self.identity.name
        hitl = self.ctx.store.hitl
        pending = await hitl.list(
            owner=me, agent_slug=None, status=PENDING, limit=WAITING_MAX, before=None
        )
        decided = await hitl.list(
            owner=me, agent_slug=None, status="decided", limit=RECENT_DECIDED, before=None
        )
        now = datetime.now(UTC)
        self.render_page(
            "approvals.html",
            active="approvals",
            now=now,
            # Past its expiry a request is as good as timed out (the reaper is a second
            # behind at most): it is listed with the decided ones.
            waiting=[r for r in pending if not expired(r, now)],
            decided=[r for r in pending if expired(r, now)] + decided,
        )


class ApprovalPage(PageHandler):
    """GET approvals/<id>: one request (the sidebar's and widgets' pop-up); POST
    decides it through the API's operation and comes back here."""

    done_messages = PERSON_DONE

    def show(self, row: dict[str, Any], status: int = 200, error: ApiError | None = None) -> None:
        self.render_page(
            "approval.html",
            status=status,
            active="approvals",
            now=datetime.now(UTC),
            r=row,
            error=error,
        )

    @person_page("decide approvals")
    async def get(self, request_id: str) -> None:
        self.show(await hitl_ops.own_request(self.ctx, self.actor, request_id))

    @person_page("decide approvals")
    async def post(self, request_id: str) -> None:
        # 404 for others' before the form is read
        await hitl_ops.own_request(self.ctx, self.actor, request_id)
        try:
            decided = await hitl_ops.decide_request(
                self.ctx, self.actor, request_id, decision_body(self.form())
            )
        except ApiError as e:
            if e.status_code == 404:
                raise
            # 409: decided meanwhile (elsewhere, or timed out). The page shows what
            # became of it, with the reason this decision did not count.
            self.show(
                await hitl_ops.own_request(self.ctx, self.actor, request_id), e.status_code, e
            )
            return
        self.redirect_done(f"approvals/{request_id}", f"hitl-{decided['decision']}")


class AgentSettingsPage(PageHandler):
    """GET agents/<user>/<slug>: the agent's settings, key, drive permission, HITL
    policy, the secrets it gets, and Restart. POST ``action``: save, policy,
    secrets or restart."""

    done_messages = PERSON_DONE

    async def show(
        self,
        owner: str,
        slug: str,
        status: int = 200,
        error: ApiError | None = None,
        entered: dict[str, str] | None = None,
        policy_text: str | None = None,
    ) -> None:
        agent = await self.get_agent(owner, slug, "change an agent's settings")
        hub_user = await self.ctx.hub.get_user(owner) or {}
        ceiling = await settings_for_user(self.ctx, owner)
        allowed = list(ceiling["allowed_providers"])
        if agent.provider not in allowed:
            # Shown so the select keeps it; choosing it again is no change.
            allowed.append(agent.provider)
        policy = await self.ctx.store.hitl.get_policy(agent.id)
        # Only the owner grants their secrets (an administrator sees the grants).
        own = owner == self.actor.name
        secrets = await self.ctx.store.secrets.of_owner(owner) if own else []
        if policy_text is None:
            shown = policy if policy is not None else await hitl_ops.default_policy(self.ctx)
            policy_text = json.dumps(shown, indent=2)
        self.render_page(
            "agent.html",
            status=status,
            error=error,
            agent=agent,
            path=agent_path(owner, slug),
            state=server_status((hub_user.get("servers") or {}).get(slug)),
            providers=[PRESETS[name] for name in allowed if name in PRESETS],
            not_allowed=agent.provider not in ceiling["allowed_providers"],
            org_keys=self.ctx.org_keys,
            entered=entered or {},
            policy_text=policy_text,
            policy_is_default=policy is None,
            restart_hint=self.get_argument("done", "") in ("agent-saved-restart", "grants-saved"),
            own=own,
            secrets=secrets,
            grants={g["name"]: g for g in agent.secrets},
        )

    @person_page("change an agent's settings")
    async def get(self, owner: str, slug: str) -> None:
        await self.show(owner, slug)

    @person_page("change an agent's settings")
    async def post(self, owner: str, slug: str) -> None:
        agent = await self.get_agent(owner, slug, "change an agent's settings")
        form = self.form()
        action = last(form, "action")
        try:
            if action == "save":
                body = agent_settings_body(agent, form, self.ctx.org_keys)
                if not body:
                    done = "agent-unchanged"
                else:
                    await agent_ops.update_agent(self.ctx, self.actor, owner, slug, body)
                    restart = needs_restart(body) and await self.running(owner, slug)
                    done = "agent-saved-restart" if restart else "agent-saved"
            elif action == "policy":
                text = last(form, "policy")
                try:
                    raw = json.loads(text)
                except ValueError as e:
                    raise bad("policy", f"not valid JSON ({e})") from None
                await hitl_ops.replace_policy(self.ctx, self.actor, owner, slug, raw)
                done = "policy-saved"
            elif action == "restart":
                await agent_ops.restart_agent(self.ctx, self.actor, owner, slug)
                done = "agent-restarting"
            elif action == "secrets":
                body = {"secrets": grants_body(agent.secrets, form.get("grant") or [])}
                await agent_ops.update_agent(self.ctx, self.actor, owner, slug, body)
                done = "grants-saved"
            else:
                raise bad("action", "expected save, policy, secrets or restart")
        except ApiError as e:
            if e.status_code == 404:
                raise
            # What was typed stays (never the key); the policy keeps its text.
            entered = {k: last(form, k) for k in ("display_name", "provider", "model", "base_url")}
            if action == "save":
                entered["drive_agents"] = last(form, "drive_agents")
            await self.show(
                owner,
                slug,
                e.status_code,
                e,
                entered=entered if action == "save" else None,
                policy_text=last(form, "policy") if action == "policy" else None,
            )
            return
        self.redirect_done(agent_path(owner, slug), done)

    async def running(self, owner: str, slug: str) -> bool:
        hub_user = await self.ctx.hub.get_user(owner) or {}
        return server_status((hub_user.get("servers") or {}).get(slug)) in ("running", "starting")


class SecretsPage(PageHandler):
    """GET secrets: my secrets (never a value) and a form to set one. POST
    ``action`` set (name, value, description) or delete (name), through the
    API's operations."""

    done_messages = PERSON_DONE

    async def show(
        self, status: int = 200, error: ApiError | None = None, entered: dict | None = None
    ) -> None:
        self.render_page(
            "secrets.html",
            status=status,
            error=error,
            active="secrets",
            secrets=await secret_ops.list_secrets(self.ctx, self.actor, None),
            entered=entered or {},
        )

    @person_page("keep secrets")
    async def get(self) -> None:
        await self.show()

    @person_page("keep secrets")
    async def post(self) -> None:
        form = self.form()
        action, name = last(form, "action"), last(form, "name")
        try:
            if action == "set":
                body = {"value": last(form, "value"), "description": last(form, "description")}
                await secret_ops.set_secret(self.ctx, self.actor, name, body)
                done = "secret-saved"
            elif action == "delete":
                await secret_ops.delete_secret(self.ctx, self.actor, None, name)
                done = "secret-removed"
            else:
                raise bad("action", "expected set or delete")
        except ApiError as e:
            # What was typed stays, never the value.
            entered = {"name": name, "description": last(form, "description")}
            await self.show(e.status_code, e, entered if action == "set" else None)
            return
        self.redirect_done("secrets", done, name)


# The kinds of event a person may subscribe, as the Notifications page names them.
KIND_LABELS = (
    ("hitl.requested", "An approval is asked for"),
    ("hitl.decided", "An approval is decided or times out"),
    ("budget.exhausted", "A model budget is spent"),
    ("agent.failed", "An agent fails to start or stops unexpectedly"),
    ("chat.turn_finished", "A chat turn finishes"),
)
DELIVERIES_ON_PAGE = 5


class NotificationsPage(PageHandler):
    """GET notifications: my webhooks with their latest deliveries, and a form to
    add one. POST ``action`` create (url, format, kinds), test, enable, disable or
    delete (id), through the API's operations."""

    done_messages = PERSON_DONE

    async def show(
        self,
        status: int = 200,
        error: ApiError | None = None,
        entered: dict | None = None,
        created: dict | None = None,
    ) -> None:
        webhooks = await webhook_ops.list_webhooks(self.ctx, self.actor, None)
        for w in webhooks:
            deliveries = await webhook_ops.list_deliveries(self.ctx, self.actor, w["id"])
            w["deliveries"] = deliveries[:DELIVERIES_ON_PAGE]
        self.render_page(
            "notifications.html",
            status=status,
            error=error,
            active="notifications",
            webhooks=webhooks,
            allowed=await webhook_ops.allowed_hosts(self.ctx),
            kinds=KIND_LABELS,
            default_kinds=("hitl.requested", "agent.failed"),
            entered=entered or {},
            created=created,
        )

    @person_page("manage notifications")
    async def get(self) -> None:
        await self.show()

    @person_page("manage notifications")
    async def post(self) -> None:
        form = self.form()
        action, webhook_id = last(form, "action"), last(form, "id")
        try:
            if action == "create":
                body = {
                    "url": last(form, "url"),
                    "format": last(form, "format") or "json",
                    "kinds": form.get("kinds") or [],
                }
                created = await webhook_ops.create_webhook(self.ctx, self.actor, body)
                # The secret is shown once: on this answer, never behind a redirect.
                await self.show(201, created=created)
                return
            if action == "test":
                await webhook_ops.test_webhook(self.ctx, self.actor, webhook_id)
                done = "webhook-test"
            elif action in ("enable", "disable"):
                body = {"enabled": action == "enable"}
                await webhook_ops.change_webhook(self.ctx, self.actor, webhook_id, body)
                done = "webhook-saved"
            elif action == "delete":
                await webhook_ops.delete_webhook(self.ctx, self.actor, None, webhook_id)
                done = "webhook-deleted"
            else:
                raise bad("action", "expected create, test, enable, disable or delete")
        except ApiError as e:
            entered = {"url": last(form, "url"), "format": last(form, "format"),
                       "kinds": form.get("kinds") or []}  # fmt: skip
            await self.show(e.status_code, e, entered if action == "create" else None)
            return
        self.redirect_done("notifications", done)


class SkillPage(PageHandler):
    """GET skills/<id>: a skill I may read. Its owner (or an administrator, or a
    curator for an official skill) may change its visibility or delete it: POST
    ``action`` share or delete, through the API's operations."""

    done_messages = PERSON_DONE

    @property
    def viewer(self) -> Viewer:
        # Persons only (person_page): no sandbox's view of the marketplace here.
        return skill_ops.person_viewer(self.identity)

    def show(self, row: dict[str, Any], status: int = 200, error: ApiError | None = None) -> None:
        viewer = self.viewer
        self.render_page(
            "skill.html",
            status=status,
            error=error,
            s=row,
            editable=can_edit(row, viewer),
            choices=visibility_choices(viewer, row),
            current=visibility_value(row),
        )

    @person_page("use the skill pages")
    async def get(self, skill_id: str) -> None:
        self.show(await skill_ops.readable(self.ctx, self.viewer, skill_id))

    @person_page("share or delete skills")
    async def post(self, skill_id: str) -> None:
        # 404 or 403 before the form is read
        row = await skill_ops.editable(self.ctx, self.viewer, skill_id)
        form = self.form()
        action = last(form, "action")
        try:
            if action == "share":
                row = await skill_ops.change_skill(
                    self.ctx, self.actor, self.viewer, row, visibility_body(form)
                )
                self.redirect_done(f"skills/{row['id']}", "skill-saved")
                return
            if action == "delete":
                if not last(form, "confirm"):
                    raise bad("confirm", "tick the box to confirm deleting the skill")
                await skill_ops.delete_skill(self.ctx, self.actor, self.viewer, row)
                self.redirect_done("", "skill-deleted", f"/{row['command']}")
                return
            raise bad("action", "expected share or delete")
        except ApiError as e:
            if e.status_code == 404:
                raise
            self.show(row, e.status_code, e)


def routes(prefix: str) -> list[tuple[str, Any]]:
    return [
        (prefix + "approvals", ApprovalsPage),
        (prefix + f"approvals/{NAME}", ApprovalPage),
        (prefix + f"agents/{USER}/{SLUG}", AgentSettingsPage),
        (prefix + f"skills/{NAME}", SkillPage),
        (prefix + "secrets", SecretsPage),
        (prefix + "notifications", NotificationsPage),
    ]
