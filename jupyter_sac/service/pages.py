"""Server-rendered pages of the `sac` service: the base every page shares, and the
landing page (/services/sac/, the hub's Services menu links here).

Pages sit beside the hub's own: they use its stylesheet and navigation bar, log in
through JupyterHub OAuth like any service, and work without JavaScript (plain
forms, each with the service's XSRF token, answered with a redirect back). No page
may be framed: each changes something, and a page framed by another origin (an
agent's JupyterLab is one, and its sandbox controls it) could be clicked through.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from jupyterhub.services.auth import HubOAuthCallbackHandler
from markupsafe import Markup
from tornado import web

from .. import __version__
from ..errors import ApiError
from ..rules.providers import PRESETS
from .base import BaseHandler
from .forms import decision_text
from .openapi import CONTRACT
from .operations import templates as template_ops
from .operations.agents import create_agent
from .operations.settings import settings_for_user
from .principals import READ_ALL_SCOPE

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

# What a page says after a form succeeded (the redirect carries only the key, so
# nothing a link could inject is shown).
DONE_MESSAGES = {
    "settings-saved": "System settings saved.",
    "user-saved": "Overrides saved for {target}.",
    "user-cleared": "Overrides cleared for {target}.",
    "agent-updated": "Resources of {target} changed; they apply at its next start.",
    "agent-restarted": "{target} is restarting.",
    "agent-stopped": "{target} is stopped.",
    "agent-deleted": "{target} is deleted.",
    "hitl-allow": "Request allowed.",
    "hitl-deny": "Request denied.",
    "default-policy-saved": (
        "Default approval policy saved. Agents without their own follow it from their next"
        " tool call."
    ),
    "key-saved": "Organisation key for {target} saved.",
    "key-cleared": "Organisation key for {target} removed.",
    "public-saved": "{target} stored in the public workspace.",
    "public-deleted": "{target} deleted from the public workspace.",
    "group-saved": "Quota of group {target} saved.",
    "skill-deleted": "Skill {target} deleted.",
}

ADMIN_NAV = (
    ("agents", "Agents"),
    ("conversations", "Conversations"),
    ("hitl", "Approvals"),
    ("usage", "Usage"),
    ("workspaces", "Workspaces"),
    ("settings", "Settings"),
    ("users", "Users"),
    ("audit", "Audit log"),
    ("maintenance", "Maintenance"),
)


def visible_tabs(admin: bool, scopes: frozenset[str]) -> tuple[tuple[str, str], ...]:
    """The admin tabs a caller may open: all for admins; Conversations for holders of
    the read-all history scope (auditors)."""
    if admin:
        return ADMIN_NAV
    if READ_ALL_SCOPE in scopes:
        return tuple(tab for tab in ADMIN_NAV if tab[0] == "conversations")
    return ()


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = format_time
    env.filters["number"] = lambda n: f"{int(n):,}"
    env.filters["pretty_json"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False, default=str)
    env.filters["decided"] = decision_text
    return env


def format_time(value: Any) -> str:
    """A time as the pages show it: UTC, to the second."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S")


ENV = _environment()


class PageHandler(BaseHandler):
    """HTML instead of JSON: errors as a page, a login redirect instead of a 401."""

    # The fixed texts a page shows after ?done=<key> (a page may add its own).
    done_messages: Mapping[str, str] = DONE_MESSAGES

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        # Scripts only as the service's own files (none inline); styles only from
        # this origin and the hub's (its own, with subdomains), forms only to them
        # (a new agent goes on to the hub's spawn page). Never framed
        # (frame-ancestors 'none'): every page has forms that change things, and an
        # agent's JupyterLab (an origin its sandbox controls) must not frame one and
        # have a person click through.
        hub = self.ctx.public.host
        # form-action covers a form's whole redirect chain in the browser: creating
        # an agent goes on to the hub's spawn page, which redirects straight to the
        # agent's own host once a (warm) sandbox is ready.
        users = self.ctx.public.users_origin
        self.set_header(
            "Content-Security-Policy",
            # Scripts: the service's own files only (static/policy.js checks a
            # policy as it is typed), never inline; they call the service alone.
            f"default-src 'none'; script-src 'self'; connect-src 'self';"
            f" style-src 'self' {hub}; font-src 'self' {hub};"
            f" img-src 'self' {hub} data:; form-action 'self' {hub} {users};"
            " frame-ancestors 'none'; base-uri 'none'",
        )

    def base_namespace(self) -> dict[str, Any]:
        return {
            "prefix": self.ctx.prefix,
            # The hub's base URL (on its own host with subdomains); its pages are under hub/.
            "hub": self.ctx.public.hub + "hub/",
            "ident": None,
            "hub_admin": False,
            "version": __version__,
            "admin_nav": (),
            "xsrf": "",
            "done": "",
        }

    def get_template_namespace(self) -> dict[str, Any]:
        namespace = self.base_namespace()
        if self.current_user:
            ident = self.identity
            namespace.update(
                ident=ident,
                # JupyterHub's admin page is for hub admins only (not custom:sac:admin).
                hub_admin=bool(self.current_user.get("admin")),
                admin_nav=visible_tabs(ident.admin, ident.scopes),
                xsrf=Markup(self.xsrf_form_html()),
                done=self.done_message(),
            )
        namespace["query"] = self.query_without
        return namespace

    def done_message(self) -> str:
        key = self.get_argument("done", "")
        template = self.done_messages.get(key)
        return template.format(target=self.get_argument("target", "")[:200]) if template else ""

    def query_without(self, **changes: Any) -> str:
        """This page's query string with ``changes`` applied (None drops a key)."""
        args = {k: self.get_argument(k) for k in self.request.arguments if k not in ("done",)}
        args.update(changes)
        return urlencode({k: v for k, v in args.items() if v not in (None, "")})

    def args_of(self, *names: str) -> dict[str, str]:
        """Query arguments to refill a filter form."""
        return {name: self.get_argument(name, "") for name in names}

    def render_page(self, template: str, status: int = 200, **context: Any) -> None:
        self.set_status(status)
        namespace = self.get_template_namespace()
        namespace.update(context)
        self.finish(ENV.get_template(template).render(**namespace))

    def redirect_done(self, path: str, done: str, target: str = "") -> None:
        query = urlencode({"done": done, **({"target": target} if target else {})})
        self.redirect(f"{self.ctx.prefix}{path}?{query}", status=303)

    def form(self) -> dict[str, list[str]]:
        """The submitted form's fields (the XSRF token left out)."""
        return {
            name: [v.decode("utf-8", "replace") for v in values]
            for name, values in self.request.body_arguments.items()
            if name != "_xsrf"
        }

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            message = exc.message
        elif isinstance(exc, web.HTTPError) and exc.log_message and status_code < 500:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif status_code >= 500:
            message = "Internal error: see the service log."
        else:
            message = self._reason
        self.set_header("Content-Type", "text/html; charset=utf-8")
        namespace = self.get_template_namespace()
        namespace.update(status=status_code, message=message)
        self.finish(ENV.get_template("error.html").render(**namespace))

    def require_admin_page(self) -> None:
        """An administrator, else a 403 page that says who may use the admin pages."""
        try:
            self.require_admin()
        except ApiError as e:
            raise ApiError(
                403,
                "forbidden",
                "This page is for SAC administrators: holders of the"
                f" {self.ctx.admin_scope} scope.",
            ) from e


def admin_page(method: Any) -> Any:
    """Log in (GET redirects to the hub's login), then require an administrator."""

    @web.authenticated
    async def wrapper(self: PageHandler, *args: Any, **kwargs: Any) -> Any:
        self.require_admin_page()
        return await method(self, *args, **kwargs)

    return wrapper


PageMethod = Callable[..., Awaitable[None]]


def person_page(what: str) -> Callable[[PageMethod], PageMethod]:
    """A page only a person acting as themselves uses (``require_person``): a browser
    login to the service or a user's full API token, or an administrator. Every token
    an agent holds (its agent token, its server's hub token) gets 403: the sandbox
    must never act with its person's authority.

    Nobody signed in: a browser GET goes to the hub's login; anything else is 403.
    That includes a form posted with the login cookie but without the page's XSRF
    token: JupyterHub then ignores the cookie, so such a post changes nothing."""

    def decorate(method: PageMethod) -> PageMethod:
        @functools.wraps(method)
        async def wrapper(self: PageHandler, *args: Any, **kwargs: Any) -> None:
            if not self.signed_in:
                if self.request.method in ("GET", "HEAD"):
                    web.authenticated(lambda handler: None)(self)  # the login redirect
                    return
                raise ApiError(
                    403,
                    "forbidden",
                    "not signed in, or the form did not come from this page (its XSRF"
                    " token is missing or stale): open the page again and resend it",
                )
            self.require_person(what)
            await method(self, *args, **kwargs)

        return wrapper

    return decorate


# The fields of the home page's "New agent" form (the API's create fields).
NEW_AGENT_FIELDS = (
    "slug", "display_name", "template", "provider", "model", "base_url", "api_key",
)  # fmt: skip


class IndexPage(PageHandler):
    """The service's home: my agents and usage this month, and a form to create an
    agent (so nobody needs the API or a terminal to get started)."""

    async def render_home(self, status: int = 200, **context: Any) -> None:
        ident = self.require_person("use the SAC home page")
        agents = await self.ctx.store.agents.list(ident.name)
        waiting = await self.ctx.store.hitl.count_waiting(ident.name)
        usage = await self.ctx.store.usage.month_by_agent()
        hub_user = await self.ctx.hub.get_user(ident.name) or {}
        servers: Mapping[str, Any] = hub_user.get("servers") or {}
        rows = [
            {
                "agent": a,
                "status": server_status(servers.get(a.slug)),
                "usage": usage.get(a.id, {"requests": 0, "tokens": 0}),
            }
            for a in agents
        ]
        ceiling = await settings_for_user(self.ctx, ident.name)
        allowed = [PRESETS[name] for name in ceiling["allowed_providers"] if name in PRESETS]
        templates = await self.ctx.store.templates.visible_to(ident.name)
        context.setdefault("entered", {})
        self.render_page(
            "index.html",
            status=status,
            agents=rows,
            providers=allowed,
            templates=templates,
            org_keys=self.ctx.org_keys,
            room=len(agents) < int(ceiling["max_agents_per_user"]),
            waiting=waiting,
            **context,
        )

    @person_page("use the SAC home page")
    async def get(self) -> None:
        await self.render_home()

    @person_page("create agents")
    async def post(self) -> None:
        """Create an agent from the form, then start it: the hub's spawn page leads
        on to the agent's JupyterLab."""
        ident = self.identity
        form = self.form()
        body = {
            name: form[name][0].strip()
            for name in NEW_AGENT_FIELDS
            if form.get(name) and form[name][0].strip()
        }
        try:
            if "template" in body:
                # A template's id (the form's options) or name; one that names its
                # provider uses it, not the form's (which always sends its first).
                ref = body["template"]
                body["template"] = int(ref) if ref.isascii() and ref.isdigit() else ref
                template = await template_ops.resolve(self.ctx, self.actor, body["template"])
                if "provider" in template.definition:
                    body.pop("provider", None)
            provider = body.get("provider")
            if provider in PRESETS and "api_key" not in body and provider not in self.ctx.org_keys:
                # The API allows it (an organisation key may come later), but a person
                # creating an agent here would only meet a 401 at their first prompt.
                raise ApiError(
                    400,
                    "missing_field",
                    f"api_key: {PRESETS[provider].label} has no organisation key here;"
                    " enter your own API key (or ask an administrator for an organisation key)",
                    field="api_key",
                )
            agent = await create_agent(self.ctx, self.actor, ident.name, body)
        except ApiError as e:
            entered = {k: v for k, v in body.items() if k != "api_key"}
            await self.render_home(status=e.status_code, error=e, entered=entered)
            return
        user = quote(ident.name, safe="")
        self.redirect(f"{self.ctx.public.hub}hub/spawn/{user}/{agent.slug}", status=303)


class ApiIndexHandler(BaseHandler):
    """GET api/: where the API and its description are."""

    async def get(self) -> None:
        self.write_json(
            {
                "service": "sac",
                "version": __version__,
                "api": f"{self.ctx.prefix}api/",
                "openapi": f"{self.ctx.prefix}api/openapi.json",
            }
        )


class OpenApiHandler(BaseHandler):
    """GET api/openapi.json: this API's contract (openapi.yaml), as served here."""

    async def get(self) -> None:
        self.finish(json.dumps(CONTRACT.served(self.ctx.prefix)))


def server_status(server: Mapping[str, Any] | None) -> str:
    """running, starting, stopping or stopped, from the hub's server model."""
    if not server:
        return "stopped"
    if server.get("pending") == "spawn":
        return "starting"
    if server.get("pending") == "stop":
        return "stopping"
    if server.get("ready"):
        return "running"
    return "stopped"


class OAuthCallbackHandler(HubOAuthCallbackHandler):
    """JupyterHub's OAuth callback with the service's own HubOAuth: the login
    redirect kept its OAuth state (and PKCE verifier) there, not in the class's
    default singleton."""

    @property
    def hub_auth(self):  # type: ignore[override]
        return self.settings["hub_auth"]
