"""SacService: the hub-managed `sac` service (tornado), configured with traitlets.

JupyterHub starts it (c.JupyterHub.services) with its own API token; it loads the
same configuration file as the hub, so `c.SacService.*` lives beside the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import signal
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from jupyterhub.services.auth import HubOAuth
from tornado import web
from traitlets import Bool, CaselessStrEnum, Dict, Float, Integer, List, Unicode, default
from traitlets.config import Application

from .. import __version__
from ..crypto import KeyBox
from ..data_dir import default_data_dir
from ..logs import json_logs_wanted, use_json_logs
from ..objects import ObjectStore, store_from_config
from ..rules.providers import PRESETS
from ..rules.urls import PublicUrls
from ..rules.webhooks import BACKOFF
from ..store import WAIT_FOR_CONNECTION, Store
from . import (
    admin_pages,
    agent_skills,
    audit,
    culler,
    events,
    health,
    history,
    hitl,
    maintenance,
    metrics_handler,
    org_keys,
    person_pages,
    secrets,
    skills,
    tasks,
    template_pages,
    templates,
    wakeups,
    webhooks,
    workspace,
)
from .access_audit import AccessAudit
from .agent_exec import AgentExecHandler, AgentExecSocket, AgentScreenHandler
from .agents import AgentActionHandler, AgentHandler, AgentsHandler, AgentUsageHandler
from .base import SERVER_BODY_BYTES, NotFoundHandler
from .forwarded import LOOPBACK, ForwardedApplication, TrustedProxies
from .hub import HubClient
from .leadership import Leadership, Loop
from .llm_proxy import LlmProxyHandler
from .operations import templates as template_ops
from .operations.context import OrganisationKeys, ServiceContext, Waiters
from .pages import STATIC, ApiIndexHandler, IndexPage, OAuthCallbackHandler, OpenApiHandler
from .routes import SLUG, USER
from .settings_handlers import (
    MySettingsHandler,
    ProvidersHandler,
    SystemSettingsHandler,
    UserSettingsHandler,
)
from .webhook_delivery import Deliverer


class SacService(Application):
    name = "sac-service"
    description = "The jupyter-sac service: agents, settings and the credential proxy."

    config_file = Unicode(
        "", help="Configuration file to load (the hub's jupyterhub_config.py)."
    ).tag(config=True)

    database_url = Unicode(help="PostgreSQL URL (default: $SAC_DATABASE_URL).").tag(config=True)

    @default("database_url")
    def _default_database_url(self) -> str:
        return os.environ.get("SAC_DATABASE_URL", "")

    fernet_keys = List(
        Unicode(),
        help="""Fernet keys that encrypt provider keys at rest; the first encrypts, all
        decrypt (rotate by prepending). Default: $SAC_FERNET_KEY (comma-separated).""",
    ).tag(config=True)

    @default("fernet_keys")
    def _default_fernet_keys(self) -> list[str]:
        return [k for k in os.environ.get("SAC_FERNET_KEY", "").split(",") if k]

    organisation_api_keys = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        help="""Organisation provider keys by preset name (e.g. {'anthropic': 'sk-ant-…'}),
        used by agents without their own key. Default: $SAC_ORGANISATION_API_KEY for
        'anthropic'.""",
    ).tag(config=True)

    @default("organisation_api_keys")
    def _default_organisation_api_keys(self) -> dict[str, str]:
        key = os.environ.get("SAC_ORGANISATION_API_KEY")
        return {"anthropic": key} if key else {}

    provider_base_urls = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        help="""Override a preset's base URL (e.g. an internal gateway):
        {'anthropic': 'https://llm-gateway.example.org'}.""",
    ).tag(config=True)

    admin_scope = Unicode(
        "custom:sac:admin",
        help="Scope that makes a non-admin JupyterHub user a SAC administrator.",
    ).tag(config=True)

    trusted_proxies = List(
        Unicode(),
        help="""Addresses of the proxies in front of the service (CIDRs, or single
        addresses). A request whose connection comes from one of them is taken to come
        from the right-most address in its X-Forwarded-For header (the one that proxy
        appended); any other request from the connection's own address. X-Real-Ip is
        never believed. This is the address the audit log records. Default:
        $SAC_TRUSTED_PROXIES (comma-separated), else loopback (127.0.0.0/8, ::1), where
        `sac up` runs configurable-http-proxy; configure_kubernetes sets the private
        ranges of pod networks. See docs/security.md.""",
    ).tag(config=True)

    @default("trusted_proxies")
    def _default_trusted_proxies(self) -> list[str]:
        configured = os.environ.get("SAC_TRUSTED_PROXIES")
        if configured is not None:
            return [c.strip() for c in configured.split(",") if c.strip()]
        return list(LOOPBACK)

    upstream_timeout = Integer(
        600, help="Seconds a model call may take through the credential proxy."
    ).tag(config=True)

    hub_timeout = Float(
        30.0,
        help="Seconds the service waits for an answer of JupyterHub's API; past it (or"
        " when the hub cannot be reached) a request that needed the hub is answered 503"
        " hub_unavailable.",
    ).tag(config=True)

    database_timeout = Float(
        WAIT_FOR_CONNECTION,
        help="Seconds a request waits for a database connection; past it (PostgreSQL"
        " away) it is answered 503 database_unavailable.",
    ).tag(config=True)

    port = Integer(help="Port to listen on (default: from $JUPYTERHUB_SERVICE_URL).").tag(
        config=True
    )

    @default("port")
    def _default_port(self) -> int:
        url = os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")
        return urlsplit(url).port or 80

    ip = Unicode(help="IP to listen on (default: from $JUPYTERHUB_SERVICE_URL).").tag(config=True)

    @default("ip")
    def _default_ip(self) -> str:
        url = os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")
        return urlsplit(url).hostname or "127.0.0.1"

    prefix = Unicode(help="URL prefix (default: $JUPYTERHUB_SERVICE_PREFIX).").tag(config=True)

    @default("prefix")
    def _default_prefix(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/sac/")

    hub_prefix = Unicode(help="The hub's public base URL (default: $JUPYTERHUB_BASE_URL).")

    @default("hub_prefix")
    def _default_hub_prefix(self) -> str:
        return os.environ.get("JUPYTERHUB_BASE_URL", "/")

    public_host = Unicode(
        help="""The hub's public origin when it serves users and services on subdomains
        (JupyterHub.subdomain_host, e.g. http://localhost:8000): links to the hub's
        pages and to agents are then absolute, on their own hosts. Empty without
        subdomains. Default: $JUPYTERHUB_HOST.""",
    ).tag(config=True)

    @default("public_host")
    def _default_public_host(self) -> str:
        return os.environ.get("JUPYTERHUB_HOST", "")

    @property
    def public(self) -> PublicUrls:
        """Where browsers find the hub, this service and agents (jupyter_sac.rules.urls)."""
        return PublicUrls(self.public_host.rstrip("/"), self.hub_prefix)

    official_skills_dir = Unicode(
        help="""Folder of the official skills upserted at start (one folder per skill:
        SKILL.md, skill.yaml, optional files). Default: the skills shipped with
        jupyter-sac.""",
    ).tag(config=True)

    @default("official_skills_dir")
    def _default_official_skills_dir(self) -> str:
        import sys

        for candidate in (
            Path(__file__).resolve().parents[2] / "skills",  # a source checkout
            Path(sys.prefix) / "share" / "jupyter-sac" / "skills",  # an installed wheel
        ):
            if candidate.is_dir():
                return str(candidate)
        return ""

    cull_interval = Float(
        60.0,
        help="""Seconds between idle-culling passes: running agents idle longer than
        their resolved idle_timeout setting are stopped, unless a HITL request of
        theirs is pending or a chat turn runs. 0 turns culling off (for example
        when jupyterhub-idle-culler runs instead). See docs/configuration.md.""",
    ).tag(config=True)

    event_retention_days = Float(
        30.0,
        help="""Days a user's events (GET api/events: HITL requests and decisions)
        are kept; older ones are deleted once an hour. A client that reconnects with
        an older Last-Event-ID gets what is still kept. 0 keeps them for ever. See
        docs/architecture.md#the-users-event-stream.""",
    ).tag(config=True)

    access_audit_interval = Float(
        60.0,
        help="""Seconds between looks at who holds access to other users' servers
        (JupyterHub's admin flag, a role or a share an operator granted): each token
        that opens someone else's agent gets a ``server.access`` audit entry. 0 turns
        it off. See docs/security.md#operators.""",
    ).tag(config=True)

    webhook_backoff = List(
        Float(),
        list(BACKOFF),
        help="""Seconds between a failed webhook delivery and its next attempt: the
        n-th retry waits the n-th delay; once they are spent the delivery has failed.
        A 2xx answer delivers; a 4xx other than 408 and 429 fails at once. See
        docs/operator-guide.md#notifications.""",
    ).tag(config=True)

    webhook_timeout = Float(
        5.0,
        help="""Seconds one webhook delivery attempt may take (connecting, sending and
        reading the answer) before it counts as failed and is tried again.""",
    ).tag(config=True)

    webhook_concurrency = Integer(
        8,
        help="""Webhook deliveries sent at once: a slow receiver holds one of these,
        never the others' deliveries.""",
    ).tag(config=True)

    object_store = CaselessStrEnum(
        ["local", "s3"],
        "local",
        help="""Where skill bundles (and later workspace files) are kept: "local", a
        folder (c.LocalStore.root, default $SAC_DATA_DIR/objects), or "s3", any
        S3-compatible store (c.S3Store.endpoint_url, bucket, credentials). Sandboxes
        never get the store's credentials: they download through presigned URLs (S3)
        or through this service (local). See docs/objects.md.""",
    ).tag(config=True)

    task_interval = Float(
        2.0,
        help="""Seconds between the task runner's looks for queued tasks (and its
        checks of running ones, at most every second). 0 turns the runner off: tasks
        then stay queued. See docs/api.md#tasks.""",
    ).tag(config=True)

    task_concurrency = Integer(
        8,
        help="""Tasks the runner runs at once (each holds its agent's chat turn).""",
    ).tag(config=True)

    maintenance_interval = Float(
        3600.0,
        help="""Seconds between maintenance runs (and one at start): conversation
        history past its history_retention_days and the stored files of agents
        deleted longer than deleted_agent_grace_days ago are removed, in batches of
        1,000 rows, each batch with its audit entry. 0 turns it off. See
        docs/operator-guide.md#retention-and-cleanup.""",
    ).tag(config=True)

    workspace_max_file_bytes = Integer(
        256 * 1024 * 1024,
        help="""Largest single workspace file an upload may carry (bytes). Quotas
        (storage_quota_bytes, group_quota_bytes) limit the total. See
        docs/workspaces.md.""",
    ).tag(config=True)

    log_json = Bool(
        help="""Write the service's log as JSON, one object per line (time, level,
        logger, message, exception), for log collectors. Only the format changes,
        not what is logged. Default: $SAC_LOG_FORMAT is "json".""",
    ).tag(config=True)

    @default("log_json")
    def _default_log_json(self) -> bool:
        return json_logs_wanted()

    aliases = {"config": "SacService.config_file", "port": "SacService.port"}

    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)
            # command-line values win over the file
            self.update_config(self.cli_config)
        if self.log_json:
            use_json_logs(self.log)
        unknown = set(self.organisation_api_keys) - set(PRESETS)
        if unknown:
            raise ValueError(f"organisation_api_keys has unknown providers {sorted(unknown)}")
        try:
            TrustedProxies(self.trusted_proxies)  # refuse a bad entry at start, not later
        except ValueError as e:
            raise ValueError(f"trusted_proxies: {e}") from None

    def make_app(
        self,
        ctx: ServiceContext | None = None,
        idle_culler: culler.Culler | None = None,
        leadership: Leadership | None = None,
    ) -> web.Application:
        """The tornado application serving ``ctx`` (None: only its route table, for
        the tests that read it; no handler can run without a context)."""
        p = self.prefix
        handlers = [
            (p, IndexPage),
            (p + r"static/(.*)", web.StaticFileHandler, {"path": str(STATIC)}),
            (p + "api/", ApiIndexHandler),
            (p + "oauth_callback", OAuthCallbackHandler),
            (p + "api/openapi.json", OpenApiHandler),
            *health.routes(p),
            (p + "api/agents", AgentsHandler),
            (p + f"api/users/{USER}/agents", AgentsHandler),
            (p + f"api/users/{USER}/agents/{SLUG}", AgentHandler),
            (p + f"api/users/{USER}/agents/{SLUG}/usage", AgentUsageHandler),
            (p + f"api/users/{USER}/agents/{SLUG}/exec", AgentExecHandler),
            (p + f"api/users/{USER}/agents/{SLUG}/exec/ws", AgentExecSocket),
            (p + f"api/users/{USER}/agents/{SLUG}/terminal/screen", AgentScreenHandler),
            (p + f"api/users/{USER}/agents/{SLUG}/start", AgentActionHandler, {"action": "start"}),
            (p + f"api/users/{USER}/agents/{SLUG}/stop", AgentActionHandler, {"action": "stop"}),
            (
                p + f"api/users/{USER}/agents/{SLUG}/restart",
                AgentActionHandler,
                {"action": "restart"},
            ),
            (p + "api/settings", MySettingsHandler),
            (p + "api/settings/system", SystemSettingsHandler),
            (p + f"api/users/{USER}/settings", UserSettingsHandler),
            (p + "api/providers", ProvidersHandler),
            (p + r"llm/(.*)", LlmProxyHandler),
            *history.routes(p),
            *hitl.routes(p),
            *events.routes(p),
            *skills.routes(p),
            *agent_skills.routes(p),
            *culler.routes(p),
            *tasks.routes(p),
            *metrics_handler.routes(p),
            *audit.routes(p),
            *org_keys.routes(p),
            *secrets.routes(p),
            *webhooks.routes(p),
            *templates.routes(p),
            *workspace.routes(p),
            *admin_pages.routes(p),
            *maintenance.routes(p),
            *person_pages.routes(p),
            *template_pages.routes(p),
            (p + r"api/.*", NotFoundHandler),
        ]
        hub_auth = HubOAuth(api_token=os.environ.get("JUPYTERHUB_API_TOKEN", ""), cache_max_age=60)
        return ForwardedApplication(
            handlers,
            TrustedProxies(self.trusted_proxies),
            ctx=ctx,
            # The idle culler's state, shown by api/culler (None: culling is off).
            culler=idle_culler,
            # Whether this process leads (runs the culler and the other loops).
            leadership=leadership,
            hub_auth=hub_auth,
            cookie_secret=self.cookie_secret(),
            default_handler_class=NotFoundHandler,
        )

    def cookie_secret(self) -> bytes:
        """What signs the service's login cookie and its forms' XSRF tokens. The
        same in every process of the service, so that a person signed in through
        one replica is signed in on all (and a form rendered by one may be posted
        to another): derived from the service's API token, which every replica
        registered as the service holds and nobody else but the hub; random
        without one."""
        token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        if not token:
            return os.urandom(32)
        return hmac.new(token.encode(), b"jupyter-sac service cookie secret", "sha256").digest()

    def make_object_store(self) -> ObjectStore:
        overrides = {}
        if self.object_store == "local" and "root" not in self.config.LocalStore:
            overrides["root"] = str(default_data_dir() / "objects")
        return store_from_config(self.object_store, self.config, **overrides)

    async def start_async(self) -> None:
        if not self.database_url:
            raise SystemExit("sac service: no database URL (SAC_DATABASE_URL)")
        keybox = KeyBox(self.fernet_keys)
        store = await Store.open(self.database_url, wait_timeout=self.database_timeout)
        # Installs pinned by a migration get their checksum before any manifest is
        # served (it is computed here, not in SQL).
        filled = await store.skills.fill_install_checksums()
        if filled:
            self.log.info("recorded the checksum of %d pinned skill installs", filled)
        org_keys = OrganisationKeys(self.organisation_api_keys)
        await org_keys.reload(store, keybox)
        ctx = ServiceContext(
            store=store,
            hub=HubClient(timeout=self.hub_timeout),
            keybox=keybox,
            objects=self.make_object_store(),
            org_keys=org_keys,
            hitl_waiters=Waiters(),
            upstream=httpx.AsyncClient(
                timeout=httpx.Timeout(self.upstream_timeout, connect=15), follow_redirects=False
            ),
            prefix=self.prefix,
            public=self.public,
            admin_scope=self.admin_scope,
            provider_base_urls=dict(self.provider_base_urls),
            workspace_max_file_bytes=self.workspace_max_file_bytes,
        )
        try:
            await skills.upsert_official(ctx, self.official_skills_dir)
        except Exception:
            # A broken shipped skill must not keep the whole service down.
            self.log.exception("could not load the official skills")
        try:
            await template_ops.upsert_presets(ctx)
        except Exception:
            # Nor a broken shipped template preset.
            self.log.exception("could not load the template presets")
        # Loops that must run once in the installation run in the leader only
        # (leadership.py); every process serves requests and relays wake-ups.
        loops: list[Loop] = [lambda: hitl.reaper(ctx)]
        if self.event_retention_days > 0:
            loops.append(lambda: events.pruner(ctx, self.event_retention_days))
        deliverer = Deliverer(
            ctx,
            backoff=self.webhook_backoff,
            timeout=self.webhook_timeout,
            concurrency=max(1, self.webhook_concurrency),
            retention_days=self.event_retention_days,
        )
        loops.append(deliverer.run)
        if self.maintenance_interval > 0:
            loops.append(lambda: maintenance.maintainer(ctx, self.maintenance_interval))
        idle_culler = culler.Culler(ctx, self.cull_interval) if self.cull_interval > 0 else None
        if idle_culler is not None:
            loops.append(idle_culler.run)
        runner = (
            tasks.TaskRunner(ctx, self.task_interval, max(1, self.task_concurrency))
            if self.task_interval > 0
            else None
        )
        if runner is not None:
            loops.append(runner.run)
        if self.access_audit_interval > 0:
            loops.append(AccessAudit(ctx, self.access_audit_interval).run)
        conninfo = store.pool.conninfo
        leadership = Leadership(conninfo, loops)
        leading = asyncio.create_task(leadership.run())
        relaying = asyncio.create_task(wakeups.relay(ctx, conninfo))
        app = self.make_app(ctx, idle_culler, leadership)
        server = app.listen(
            self.port,
            self.ip,
            # Not xheaders=True: tornado would believe X-Real-Ip / X-Forwarded-For from
            # any client; ForwardedApplication believes only trusted_proxies.
            xheaders=False,
            # About the JSON limit for every body: uploads raise their own
            # connection's limit once they know who is sending (base.StreamedBody).
            max_body_size=SERVER_BODY_BYTES,
        )
        self.log.info(
            "sac service %s listening on http://%s:%s%s",
            __version__,
            self.ip,
            self.port,
            self.prefix,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.stop()
        for task in (relaying, leading):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await deliverer.close()
        if idle_culler is not None:
            await idle_culler.close()
        if runner is not None:
            await runner.close()
        await ctx.upstream.aclose()
        await ctx.hub.close()
        await store.close()

    def start(self) -> None:
        asyncio.run(self.start_async())


def main(argv: list[str] | None = None) -> None:
    app = SacService.instance()
    app.initialize(argv)
    app.start()
