"""Base handler of the `sac` service: JupyterHub auth, JSON bodies, JSON errors."""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any

from jupyterhub.services.auth import HubOAuthenticated
from tornado import web
from tornado.log import app_log

from ..contract import Operation
from ..errors import ApiError, allowed_methods, error_body
from ..store import AgentRecord, database_unavailable
from ..streamed_body import DRAIN_FACTOR, MAX_JSON_BYTES, StreamedBody
from .hub import HubUnavailable
from .openapi import CONTRACT
from .operations import access
from .operations.context import Actor, ServiceContext, audit
from .principals import AGENT_TOKEN_PREFIX, Denial, Identity

# The HTTP server's limit for every request body (app.py): tornado reads a
# handler's whole body before the handler runs, so this is what anyone can make the
# service hold. A JSON body a little too large is read and answered 413; a bigger
# Content-Length is refused by tornado itself before any handler exists (a bare 400,
# and the connection closed). Uploads stream their bodies (StreamedBody) and raise
# their own connection's limit once they know who is sending.
SERVER_BODY_BYTES = DRAIN_FACTOR * MAX_JSON_BYTES
DATABASE_UNAVAILABLE = (
    "the SAC database (PostgreSQL) is unavailable at the moment; try again shortly"
)


class BaseHandler(StreamedBody, HubOAuthenticated, web.RequestHandler):
    """Thin handlers: parse, authorise, call an operation (operations/), serialise."""

    @property
    def hub_auth(self):  # type: ignore[override]
        return self.settings["hub_auth"]

    @property
    def ctx(self) -> ServiceContext:
        """The service's collaborators (store, hub client, key box, configuration)."""
        ctx: ServiceContext = self.settings["ctx"]
        return ctx

    @property
    def actor(self) -> Actor:
        """The caller, as operations take it and the audit log records it."""
        request_id = self.request.headers.get("X-Request-Id", "")[:200]
        return Actor(
            self.identity,
            request_id=request_id if request_id.isprintable() and request_id else None,
            ip=self.request.remote_ip,
        )

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    async def prepare(self) -> None:
        self.check_json_length()
        await self.authenticate()

    @cached_property
    def api_operation(self) -> Operation | None:
        """The OpenAPI operation (openapi.yaml) this request calls, if it is one
        (found once per request: every query argument read asks for it)."""
        prefix = self.ctx.prefix
        if not self.request.path.startswith(prefix):
            return None
        return CONTRACT.operation(self.request.method or "", "/" + self.request.path[len(prefix) :])

    def check_json_length(self) -> None:
        # JSON bodies (the server reads up to SERVER_BODY_BYTES, so that a body a
        # little too large is answered here); uploads take theirs in prepare().
        length = self.request.headers.get("Content-Length", "")
        declared = int(length) if length.isdigit() else 0
        if max(declared, len(self.request.body)) > MAX_JSON_BYTES:
            raise ApiError(
                413, "too_large", f"request bodies are limited to {MAX_JSON_BYTES} bytes"
            )

    # ---- identity ---------------------------------------------------------------

    _agent_caller: AgentRecord | None = None
    _authenticated = False

    def bearer_token(self) -> str:
        auth = self.request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() in ("bearer", "token") else ""

    async def authenticate(self) -> None:
        """Settle who calls, before any body is read (docs/security.md#principals).

        A sandbox's agent token is looked up here and never sent to the hub; any
        other token or login cookie is checked with the hub (cached for a minute)."""
        if self._authenticated:
            return
        self._authenticated = True
        token = self.bearer_token()
        if token.startswith(AGENT_TOKEN_PREFIX):
            self._agent_caller = await self.ctx.store.tokens.agent(token)
            # Never fall back to a login cookie for a request that sent an agent token.
            self._hub_auth_user_cache = None
            if self._agent_caller is None:
                raise ApiError(
                    401, "unauthorized", "invalid agent token: restart the agent to get a new one"
                )
            return
        # Resolves (and caches on this handler) the hub's model of the token or cookie,
        # so the synchronous current_user below never blocks the event loop.
        await self.hub_auth.get_user(self, sync=False)

    def get_current_user(self) -> dict[str, Any] | None:
        if self._agent_caller is not None:
            return None
        return super().get_current_user()

    def get_login_url(self) -> str:
        if self.request.headers.get("Authorization") or self.request.path.startswith(
            self.ctx.prefix + "api/"
        ):
            # API clients get a JSON 401/403, not a redirect to the login page.
            raise ApiError(401, "unauthorized", "a JupyterHub API token or login is required")
        return super().get_login_url()

    @property
    def signed_in(self) -> bool:
        return self._agent_caller is not None or bool(self.current_user)

    @property
    def identity(self) -> Identity:
        """The caller (docs/security.md#principals); 401 when nobody is signed in."""
        agent = self._agent_caller
        if agent is not None:
            return Identity(name=agent.owner, kind="agent", agent=agent)
        model = self.current_user
        if not model:
            raise ApiError(401, "unauthorized", "a JupyterHub API token or login is required")
        return Identity(
            name=model["name"],
            kind=model.get("kind", "user"),
            groups=tuple(model.get("groups") or ()),
            scopes=frozenset(model.get("scopes", ())),
            admin_scope=self.ctx.admin_scope,
        )

    def deny_if(self, denial: Denial | None) -> None:
        access.deny_if(denial)

    def require_person(self, what: str = "do this") -> Identity:
        """A person acting as themselves (or an administrator)."""
        return access.require_person(self.actor, what)

    def require_signed_in(self) -> Identity:
        """Any principal: a person, a driver, an agent's sandbox (read-only lookups)."""
        ident = self.identity
        if ident.kind == "service" and not ident.admin:
            raise ApiError(403, "forbidden", "JupyterHub services may not use SAC")
        return ident

    def require_admin(self) -> Identity:
        return access.require_admin(self.ctx, self.actor)

    def authorize_user(
        self, target: str, what: str = "do this", *, driver_may: bool = False,
        agent_may: bool = False,
    ) -> Identity:  # fmt: skip
        """The caller may act on user ``target``'s resources (else 404 or 403)."""
        return access.authorize_user(
            self.actor, target, what, driver_may=driver_may, agent_may=agent_may
        )

    async def get_agent(
        self, owner: str, slug: str, what: str = "do this", *, driver_may: bool = False,
        agent_may: bool = False,
    ) -> AgentRecord:  # fmt: skip
        """``owner``'s agent ``slug``, if the caller may do ``what`` on it (else 404/403)."""
        return await access.get_agent(
            self.ctx, self.actor, owner, slug, what, driver_may=driver_may, agent_may=agent_may
        )

    async def groups_of(self, user: str) -> list[str]:
        """``user``'s JupyterHub groups, asked of the hub (an agent token carries none,
        and a login's may be a minute old)."""
        model = await self.ctx.hub.get_user(user)
        return sorted((model or {}).get("groups") or [])

    def get_argument(self, name: str, default: Any = web._ARG_DEFAULT, strip: bool = True) -> Any:  # type: ignore[override]
        """A query argument, refused (400 naming it) when the document's schema for it
        refuses it. Checked as the handler reads it, so after it has settled who may
        ask: a refusal says 403 or 404 before it says what is wrong with a filter."""
        operation = self.api_operation
        if operation is not None and name in self.request.query_arguments:
            operation.check_query({name: self.request.query_arguments[name]})
        return super().get_argument(name, default, strip)

    def query_arg(self, name: str) -> str | None:
        """A query argument (None when absent): what the shared query parsers take."""
        return self.get_argument(name, None)

    def int_arg(self, name: str, default: int, low: int, high: int) -> int:
        """An integer query argument within [low, high] (else a 400 naming it)."""
        raw = self.get_argument(name, None)
        if raw is None:
            return default
        # isascii: int() refuses some characters isdigit() accepts ("²")
        if not (raw.isascii() and raw.isdigit() and len(raw) < 10) or not low <= int(raw) <= high:
            raise ApiError(400, "invalid_field", f"{name}: expected {low}-{high}", field=name)
        return int(raw)

    async def require_agent(self) -> AgentRecord:
        """The agent whose sandbox sent this request (its per-agent ``sac-agent-`` token).

        Sandbox-facing endpoints (history ingest, HITL filing, sync) accept only this
        token, so a sandbox can act for exactly one agent: its own."""
        if self._agent_caller is None:
            raise ApiError(401, "unauthorized", "an agent token is required")
        return self._agent_caller

    # ---- audit log --------------------------------------------------------------

    async def audit(
        self,
        action: str,
        target: str,
        *,
        target_user: str | None = None,
        before: Any = None,
        after: Any = None,
        conn: Any = None,
    ) -> None:
        """Record what the caller just did in the audit log (operations.context.audit)."""
        await audit(
            self.ctx,
            self.actor,
            action,
            target,
            target_user=target_user,
            before=before,
            after=after,
            conn=conn,
        )

    # ---- bodies -----------------------------------------------------------------

    def json_body(self) -> dict[str, Any]:
        if not self.request.body:
            raise ApiError(400, "invalid_json", "a JSON object body is required")
        try:
            body = json.loads(self.request.body)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_json", "the body must be a JSON object")
        operation = self.api_operation
        if operation is not None:
            # What the document says the body may hold (openapi.yaml); the operations
            # then check what a schema cannot say (who may, what exists, the rules).
            operation.check_body(body)
        return body

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data, default=str))

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info", (None, None, None))
        if database_unavailable(exc_info[1]):
            # PostgreSQL is away (stopped, restarting): the pool reconnects by
            # itself, so this is a 503 to retry, not an internal error.
            unavailable = ApiError(503, "database_unavailable", DATABASE_UNAVAILABLE)
            kwargs["exc_info"] = (ApiError, unavailable, exc_info[2])
            status_code = 503
        elif isinstance(exc_info[1], HubUnavailable):
            unavailable = ApiError(503, "hub_unavailable", exc_info[1].message)
            kwargs["exc_info"] = (ApiError, unavailable, exc_info[2])
            status_code = 503
        super().send_error(status_code, **kwargs)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if database_unavailable(value):
            app_log.warning("%s %s: the database is unavailable: %s",
                            self.request.method, self.request.uri, value)  # fmt: skip
            return
        if isinstance(value, HubUnavailable):
            app_log.warning("%s %s: %s (%s)", self.request.method, self.request.uri,
                            value.message, value.__cause__)  # fmt: skip
            return
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        body = error_body(status_code, exc, "the service log")
        self.set_header("Content-Type", "application/json; charset=utf-8")
        if status_code == 405:
            self.set_header("Allow", allowed_methods(type(self)))
        self.finish(json.dumps(body))


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        raise ApiError(404, "not_found", "no such endpoint")
