"""The admin pages (/services/sac/admin/...): settings, per-user overrides, every
user's agents, conversations, the HITL queue, usage and the audit log.

Each page is a thin view over what the API does: filters are parsed by the API's
own query parsers (so a page accepts exactly the API's query), and every change
goes through the same operations as the API (operations/: validated, stored and
audited together).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

from tornado import httputil, web

from ..errors import ApiError
from ..rules import settings as sac_settings
from ..rules.providers import PRESETS
from ..rules.settings import SettingsError
from ..runtimes.transcript import readable_text
from ..store.hitl import PENDING
from .audit import audit_filter, entry_cursor, parse_entry_cursor
from .base import MAX_JSON_BYTES
from .forms import (
    PROVIDERS_OVERRIDE,
    decision_body,
    describe,
    last,
    level_specs,
    row_tokens,
    show_value,
    usage_totals,
    validated_form,
)
from .history import event_cursor, parse_event_cursor, search_filter
from .multipart import FormError, MultipartForm
from .operations import agents as agent_ops
from .operations import hitl as hitl_ops
from .operations import org_keys as org_key_ops
from .operations import settings as settings_ops
from .operations import workspace as ws_ops
from .pages import PageHandler, admin_page, server_status
from .routes import PROVIDER, SLUG, USER, UUID
from .usage_text import usage_cells
from .validation import bad, invalid_setting

RESOURCE_SETTINGS = ("cpu_request", "cpu_limit", "mem_request", "mem_limit")
PAGE = 50


def settings_rows(
    level: str, overrides: dict[str, Any], resolved: dict[str, Any]
) -> list[dict[str, Any]]:
    """One row per setting of a form: its spec, the override shown in the field and
    the value that applies."""
    return [
        {
            "spec": spec,
            "value": show_value(spec, overrides.get(spec.name)),
            "overridden": spec.name in overrides,
            "resolved": describe(spec, resolved[spec.name]),
            "default": describe(spec, spec.default),
        }
        for spec in level_specs(level)
    ]


class SettingsPage(PageHandler):
    @admin_page
    async def get(self, *_: str) -> None:
        await self.show()

    async def show(self, status: int = 200, error: ApiError | None = None, form: Any = None):
        overrides = await self.ctx.store.settings.get("system")
        resolved = sac_settings.resolve_user(overrides, {})
        rows = settings_rows("system", overrides, resolved)
        if form is not None:  # a refused form keeps what was typed
            for row in rows:
                row["value"] = (form.get(row["spec"].name) or [""])[-1]
        self.render_page(
            "admin/settings.html",
            status=status,
            active="settings",
            error=error,
            rows=rows,
            providers=list(PRESETS),
            allowed=resolved["allowed_providers"],
            providers_overridden="allowed_providers" in overrides,
            org_keys=await org_key_ops.list_org_keys(self.ctx),
        )

    @admin_page
    async def post(self) -> None:
        form = self.form()
        try:
            overrides = validated_form(form, "system")
            await settings_ops.replace_system_settings(self.ctx, self.actor, overrides)
        except SettingsError as e:
            return await self.show(400, invalid_setting(e), form)
        except ApiError as e:
            return await self.show(e.status_code, e, form)
        self.redirect_done("admin/settings", "settings-saved")


class OrgKeyPage(SettingsPage):
    """POST admin/settings/keys/<provider>: set (a new key) or clear it."""

    @admin_page
    async def post(self, provider: str) -> None:  # type: ignore[override]
        form = self.form()
        action = (form.get("action") or [""])[-1]
        try:
            if action == "set":
                await org_key_ops.set_org_key(
                    self.ctx, self.actor, provider, (form.get("api_key") or [""])[-1]
                )
                done = "key-saved"
            elif action == "clear":
                await org_key_ops.clear_org_key(self.ctx, self.actor, provider)
                done = "key-cleared"
            else:
                raise bad("action", "expected set or clear")
        except ApiError as e:
            if e.status_code == 404:
                raise
            return await self.show(e.status_code, e)
        self.redirect_done("admin/settings", done, provider)


class UsersPage(PageHandler):
    @admin_page
    async def get(self) -> None:
        users = await self.ctx.hub.all_users()
        overrides = await self.ctx.store.settings.list_users()
        agents = await self.ctx.store.agents.list(None)
        counts: dict[str, int] = {}
        for agent in agents:
            counts[agent.owner] = counts.get(agent.owner, 0) + 1
        rows = [
            {
                "name": u["name"],
                "admin": u.get("admin", False),
                "groups": u.get("groups") or [],
                "agents": counts.get(u["name"], 0),
                "overrides": overrides.get(u["name"], {}),
            }
            for u in sorted(users, key=lambda u: u["name"])
        ]
        self.render_page("admin/users.html", active="users", rows=rows)


class UserPage(PageHandler):
    @admin_page
    async def get(self, user: str) -> None:
        await self.show(user)

    async def show(
        self, user: str, status: int = 200, error: ApiError | None = None, form: Any = None
    ) -> None:
        if await self.ctx.hub.get_user(user) is None:
            raise ApiError(404, "not_found", f"no such user {user!r}")
        system, overrides = await settings_ops.user_settings(self.ctx, user)
        resolved = sac_settings.resolve_user(system, overrides)
        rows = settings_rows("user", overrides, resolved)
        if form is not None:
            for row in rows:
                row["value"] = (form.get(row["spec"].name) or [""])[-1]
        self.render_page(
            "admin/user.html",
            status=status,
            active="users",
            error=error,
            user=user,
            rows=rows,
            providers=list(PRESETS),
            allowed=resolved["allowed_providers"],
            providers_overridden="allowed_providers" in overrides,
            agents=await self.ctx.store.agents.list(user),
        )

    @admin_page
    async def post(self, user: str) -> None:
        form = self.form()
        action = (form.get("action") or ["save"])[-1]
        try:
            if action == "clear":
                await settings_ops.clear_user_settings(self.ctx, self.actor, user)
                return self.redirect_done(f"admin/users/{user}", "user-cleared", user)
            if action != "save":
                raise bad("action", "expected save or clear")
            await settings_ops.replace_user_settings(
                self.ctx, self.actor, user, validated_form(form, "user")
            )
        except SettingsError as e:
            return await self.show(user, 400, invalid_setting(e), form)
        except ApiError as e:
            if e.status_code == 404:
                raise
            return await self.show(user, e.status_code, e, form)
        self.redirect_done(f"admin/users/{user}", "user-saved", user)


class AgentsPage(PageHandler):
    @admin_page
    async def get(self, *_: str) -> None:
        await self.show()

    async def show(self, status: int = 200, error: ApiError | None = None) -> None:
        owner = self.get_argument("user", "") or None
        agents = await self.ctx.store.agents.list(owner)
        servers = {
            (u["name"], name): server
            for u in await self.ctx.hub.all_users()
            for name, server in (u.get("servers") or {}).items()
            if name
        }
        usage = await self.ctx.store.usage.month_by_agent()
        sandboxes = await self.ctx.store.sandbox_usage.for_agents(a.id for a in agents)
        system = await self.ctx.store.settings.get("system")
        user_overrides = await self.ctx.store.settings.list_users()
        rows = []
        for agent in agents:
            server = servers.get((agent.owner, agent.slug))
            resolved = sac_settings.resolve(
                system, user_overrides.get(agent.owner, {}), agent.overrides
            )
            rows.append(
                {
                    "agent": agent,
                    "status": server_status(server),
                    "last_activity": (server or {}).get("last_activity"),
                    "resolved": resolved,
                    "shown": {
                        n: show_value(sac_settings.SPECS[n], resolved[n]) for n in RESOURCE_SETTINGS
                    },
                    "usage": usage.get(agent.id, {"requests": 0, "tokens": 0}),
                    "sandbox": usage_cells(sandboxes.get(agent.id), resolved),
                }
            )
        status_filter = self.get_argument("status", "")
        if status_filter:
            rows = [r for r in rows if r["status"] == status_filter]
        self.render_page(
            "admin/agents.html",
            status=status,
            active="agents",
            error=error,
            rows=rows,
            user_filter=owner or "",
            status_filter=status_filter,
        )

    @admin_page
    async def post(self, owner: str, slug: str) -> None:
        form = self.form()
        action = (form.get("action") or [""])[-1]
        target = f"{owner}/{slug}"
        try:
            if action == "restart":
                await agent_ops.restart_agent(self.ctx, self.actor, owner, slug)
                done = "agent-restarted"
            elif action == "stop":
                await agent_ops.stop_agent(self.ctx, self.actor, owner, slug)
                done = "agent-stopped"
            elif action == "delete":
                if not form.get("confirm"):
                    raise bad("confirm", "tick the box to confirm deleting the agent")
                await agent_ops.delete_agent(self.ctx, self.actor, owner, slug)
                done = "agent-deleted"
            elif action == "resources":
                resources = validated_form(form, "agent", RESOURCE_SETTINGS)
                await agent_ops.set_resources(
                    self.ctx, self.actor, owner, slug, resources, RESOURCE_SETTINGS
                )
                done = "agent-updated"
            else:
                raise bad("action", "expected restart, stop, delete or resources")
        except SettingsError as e:
            return await self.show(400, invalid_setting(e))
        except ApiError as e:
            if e.status_code == 404:
                raise
            e.message = f"{target}: {e.message}"
            return await self.show(e.status_code, e)
        self.redirect_done("admin/agents", done, target)


class ConversationsPage(PageHandler):
    """For admins and for holders of custom:sac:history:read-all (auditors)."""

    @web.authenticated
    async def get(self) -> None:
        if not self.identity.auditor:
            self.require_admin_page()  # the same 403 page as the other admin pages
        where = search_filter(self.actor, self.query_arg)
        cursor = self.get_argument("cursor", None)
        rows = await self.ctx.store.history.events(
            where, PAGE + 1, parse_event_cursor(cursor) if cursor else None, descending=True
        )
        page = rows[:PAGE]
        events = [
            {
                "row": r,
                "text": readable_text(r["kind"], json.loads(r["payload_json"])),
            }
            for r in page
        ]
        self.render_page(
            "admin/conversations.html",
            active="conversations",
            events=events,
            next_cursor=event_cursor(page[-1]) if len(rows) > PAGE else None,
            export_query=self.query_without(cursor=None),
            args=self.args_of("user", "agent", "q", "since", "until"),
        )


class HitlPage(PageHandler):
    @admin_page
    async def get(self, *_: str) -> None:
        await self.show()

    async def show(
        self, status: int = 200, error: ApiError | None = None, policy_text: str | None = None
    ) -> None:
        owner = self.get_argument("user", "") or None
        rows = await self.ctx.store.hitl.list(
            owner=owner, agent_slug=None, status=PENDING, limit=200, before=None
        )
        now = datetime.now(UTC)
        custom = await self.ctx.store.hitl.get_default_policy()
        if policy_text is None:
            policy_text = json.dumps(await hitl_ops.default_policy(self.ctx), indent=2)
        self.render_page(
            "admin/hitl.html",
            status=status,
            active="hitl",
            error=error,
            requests=[r for r in rows if r["expires_at"] is None or r["expires_at"] > now],
            now=now,
            user_filter=owner or "",
            policy_text=policy_text,
            policy_is_custom=custom is not None,
        )

    @admin_page
    async def post(self, request_id: str) -> None:
        try:
            decided = await hitl_ops.decide_request(
                self.ctx, self.actor, request_id, decision_body(self.form())
            )
        except ApiError as e:
            if e.status_code == 404:
                raise
            return await self.show(e.status_code, e)
        self.redirect_done("admin/hitl", f"hitl-{decided['decision']}")


def _date_arg(handler: PageHandler, name: str, default: date) -> date:
    raw = handler.get_argument(name, "")
    if not raw:
        return default
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise bad(name, "expected a date such as 2026-11-01") from None


class UsagePage(PageHandler):
    @admin_page
    async def get(self) -> None:
        today = datetime.now(UTC).date()
        since = _date_arg(self, "since", today.replace(day=1))
        until = _date_arg(self, "until", today)
        if until < since:
            raise bad("until", "must not be before since")
        if (until - since).days > 366:
            raise bad("until", "at most 366 days at a time")
        owner = self.get_argument("user", "") or None
        rows = await self.ctx.store.usage.daily(since, until + timedelta(days=1), owner)
        for row in rows:
            row["tokens"] = row_tokens(row)
        self.render_page(
            "admin/usage.html",
            active="usage",
            rows=rows,
            totals=usage_totals(rows),
            since=since.isoformat(),
            until=until.isoformat(),
            user_filter=owner or "",
        )


class AuditPage(PageHandler):
    @admin_page
    async def get(self) -> None:
        where = audit_filter(self.query_arg)
        cursor = self.get_argument("cursor", None)
        rows = await self.ctx.store.audit.list(
            where, PAGE + 1, parse_entry_cursor(cursor) if cursor else None
        )
        page = rows[:PAGE]
        self.render_page(
            "admin/audit.html",
            active="audit",
            entries=page,
            next_cursor=entry_cursor(page[-1]) if len(rows) > PAGE else None,
            export_query=self.query_without(cursor=None),
            args=self.args_of("actor", "user", "action", "since", "until"),
        )


class AdminHome(PageHandler):
    @admin_page
    async def get(self) -> None:
        self.redirect(f"{self.ctx.prefix}admin/agents")


FORM_UPLOAD_BYTES = 32 * 1024 * 1024  # bigger public files: the API (streamed)
FORM_AROUND_BYTES = 256 * 1024  # the form's other fields and multipart framing


@web.stream_request_body
class WorkspacesPage(PageHandler):
    """admin/workspaces: the public tree (upload, delete) and every group's usage
    against its quota (set the quota). Changes go through the API's operations.

    Its form posts are streamed: an upload's file goes to a spooled file as it
    arrives (MultipartForm), and only once prepare() has found the caller to be an
    administrator; anyone else is answered before the body is read."""

    _form: MultipartForm | None = None
    _form_error: FormError | None = None
    _upload: ws_ops.Upload | None = None
    _xsrf_later = False

    def upload_limit(self) -> int:
        return FORM_UPLOAD_BYTES + FORM_AROUND_BYTES

    async def prepare(self) -> None:
        if self.request.method != "POST":
            return await super().prepare()
        # A cookie login's XSRF token is a field of the form, in the body that is not
        # read yet: the login is taken now, and the token is checked in post() as
        # soon as the body is in, before anything else is done.
        self._xsrf_later = True
        await self.authenticate()
        if not self.current_user:
            raise web.HTTPError(403)  # what @web.authenticated answers a POST
        self.require_admin()
        content_type = self.request.headers.get("Content-Type", "")
        if content_type.lower().startswith("multipart/form-data"):
            # Closed in on_finish (the body outlives any with-block here).
            self._upload = ws_ops.Upload()
            try:
                self._form = MultipartForm(content_type, "file", self._upload.write)
            except FormError as e:
                raise bad("file", str(e)) from None
            taken = self.accept_body(self._feed_form)
        else:
            self._raw: list[bytes] = []
            taken = self.accept_body(self._raw.append, MAX_JSON_BYTES)
        if not taken:
            raise self.upload_too_large()

    def on_finish(self) -> None:
        if self._upload is not None:
            self._upload.close()

    def check_xsrf_cookie(self) -> None:
        if not self._xsrf_later:
            super().check_xsrf_cookie()

    def _feed_form(self, chunk: bytes) -> None:
        if self._form is not None and self._form_error is None:
            try:
                self._form.feed(chunk)
            except FormError as e:
                self._form_error = e  # answered (400) once the body is in

    def _read_form(self) -> None:
        """The streamed body as the request's arguments (as tornado would have parsed
        it), then the XSRF check that prepare() left for now."""
        args = self.request.body_arguments
        if self._form is not None:
            if self._form_error is None and not self.body_too_large:
                try:
                    self._form.close()
                except FormError as e:
                    self._form_error = e
            args.update(self._form.fields)
        elif not self.body_too_large:
            body = b"".join(self._raw)
            self._raw.clear()
            ctype = self.request.headers.get("Content-Type", "")
            httputil.parse_body_arguments(ctype, body, args, {}, self.request.headers)
        for name, values in args.items():
            self.request.arguments.setdefault(name, []).extend(values)
        self._xsrf_later = False
        self.check_xsrf_cookie()

    def upload_too_large(self) -> ApiError:
        limit = min(FORM_UPLOAD_BYTES, self.ctx.workspace_max_file_bytes)
        return ApiError(413, "too_large", f"files uploaded here are limited to {limit} bytes")

    @admin_page
    async def get(self) -> None:
        await self.show()

    async def show(self, status: int = 200, error: ApiError | None = None) -> None:
        public = await self.ctx.store.workspace.list("public")
        public_usage = await self.ctx.store.workspace.usage("public")
        # From the hub's group list, so a group nobody has joined yet can get its
        # quota before its first member arrives.
        members = {g["name"]: sorted(g.get("users") or []) for g in await self.ctx.hub.groups()}
        system = await self.ctx.store.settings.get("system")
        groups = []
        for group in sorted(members):
            overrides = await self.ctx.store.settings.get("group", group)
            resolved = sac_settings.resolve_group(system, overrides)
            used_bytes, used_files = await self.ctx.store.workspace.usage(f"group:{group}")
            groups.append({
                "name": group,
                "members": members[group],
                "bytes": used_bytes,
                "files": used_files,
                "rows": settings_rows("group", overrides, resolved),
            })  # fmt: skip
        self.render_page(
            "admin/workspaces.html",
            status=status,
            active="workspaces",
            public=public,
            public_usage=public_usage,
            groups=groups,
            error=error,
            max_upload=FORM_UPLOAD_BYTES,
        )

    @admin_page
    async def post(self) -> None:
        self._read_form()  # first: it checks the XSRF token
        form = self.form()
        action = (form.get("action") or [""])[-1]
        try:
            if self.body_too_large:
                raise self.upload_too_large()
            if self._form_error is not None:
                raise bad("file", f"the form could not be read: {self._form_error}")
            if action == "upload":
                filename = self._form.filename if self._form is not None else None
                if not filename:
                    raise bad("file", "choose a file to upload")
                assert self._upload is not None  # a multipart form was taken
                if self._upload.size > min(FORM_UPLOAD_BYTES, self.ctx.workspace_max_file_bytes):
                    raise self.upload_too_large()
                folder = (form.get("folder") or [""])[-1].strip().strip("/")
                name = filename.replace("\\", "/").rsplit("/", 1)[-1]
                path = f"{folder}/{name}" if folder else name
                loc = ws_ops.location("public", path, None)
                await ws_ops.put_file(self.ctx, self.actor, self._upload, loc, None,
                                      base_version=None, mtime=datetime.now(UTC))  # fmt: skip
                return self.redirect_done("admin/workspaces", "public-saved", loc.workspace_path)
            if action == "delete":
                loc = ws_ops.location("public", (form.get("path") or [""])[-1], None)
                await ws_ops.delete_file(self.ctx, self.actor, loc, base_version=None)
                return self.redirect_done("admin/workspaces", "public-deleted", loc.workspace_path)
            if action == "quota":
                group = (form.get("group") or [""])[-1]
                try:
                    overrides = validated_form(form, "group")
                except SettingsError as e:
                    raise invalid_setting(e) from None
                await settings_ops.replace_group_quota(self.ctx, self.actor, group, overrides)
                return self.redirect_done("admin/workspaces", "group-saved", group)
            raise bad("action", "expected upload, delete or quota")
        except ApiError as e:
            if e.status_code == 403:
                raise
            await self.show(e.status_code, e)


class AgentsListPage(AgentsPage):
    """The agents list: forms post to one agent's URL, so the list takes no POST."""

    post = web.RequestHandler.post  # type: ignore[assignment]


class HitlListPage(HitlPage):
    """The approvals list: each request's form posts to its own URL."""

    post = web.RequestHandler.post  # type: ignore[assignment]


class DefaultPolicyPage(HitlPage):
    """POST admin/hitl/default-policy: ``action`` save (``policy``: JSON) or reset
    (the built-in default), through the API's operation."""

    get = web.RequestHandler.get  # type: ignore[assignment]

    @admin_page
    async def post(self) -> None:  # type: ignore[override]
        form = self.form()
        action, text = last(form, "action"), last(form, "policy")
        try:
            if action == "save":
                try:
                    raw = json.loads(text)
                except ValueError as e:
                    raise bad("policy", f"not valid JSON ({e})") from None
                await hitl_ops.replace_default_policy(self.ctx, self.actor, raw)
            elif action == "reset":
                await hitl_ops.replace_default_policy(self.ctx, self.actor, None)
            else:
                raise bad("action", "expected save or reset")
        except ApiError as e:
            return await self.show(e.status_code, e, text if action == "save" else None)
        self.redirect_done("admin/hitl", "default-policy-saved")


def routes(prefix: str) -> list[tuple[str, Any]]:
    admin = prefix + "admin/"
    return [
        (admin, AdminHome),
        (admin + "settings", SettingsPage),
        (admin + f"settings/keys/{PROVIDER}", OrgKeyPage),
        (admin + "users", UsersPage),
        (admin + f"users/{USER}", UserPage),
        (admin + "agents", AgentsListPage),
        (admin + f"agents/{USER}/{SLUG}", AgentsPage),
        (admin + "conversations", ConversationsPage),
        (admin + "hitl", HitlListPage),
        (admin + "hitl/default-policy", DefaultPolicyPage),
        (admin + f"hitl/{UUID}", HitlPage),
        (admin + "usage", UsagePage),
        (admin + "workspaces", WorkspacesPage),
        (admin + "audit", AuditPage),
    ]


__all__ = ["PROVIDERS_OVERRIDE", "routes"]
