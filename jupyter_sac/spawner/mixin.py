"""What every agent spawner does, whatever runs the sandbox (local process or pod).

Before a sandbox starts: find (or create) the agent's record, enforce the user's
agent limit, resolve its settings and issue a per-agent credential-proxy token.
The sandbox's environment then points ``ANTHROPIC_BASE_URL`` at the `sac`
service and carries only that token, never a provider key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from jupyterhub.spawner import SpawnException
from traitlets import Dict, List, Unicode, default
from traitlets.config import LoggingConfigurable

from ..crypto import KeyBox
from ..rules import events as sac_events
from ..rules import settings as sac_settings
from ..rules import templates as template_rules
from ..rules.providers import PRESETS
from ..rules.secrets import SECRET_ENV_NAMES_VAR, deliveries
from ..store import AgentLimitError, AgentRecord, Store

# Variables that must never reach a sandbox, whatever the hub's environment holds.
FORBIDDEN_ENV_PREFIXES = (
    "SAC_DATABASE",
    "SAC_FERNET",
    "SAC_ADMIN",
    "SAC_ORGANISATION",
    "AWS_",
    "PG",
    "ANTHROPIC_AUTH_TOKEN",
)


# Variables that would add places JupyterLab and the server read from (extensions,
# config): a sandbox's server gets none of them.
# Where a sandbox sees the organisation's package cache (read-only), if there is one.
SHARED_PACKAGES_DIR = "/opt/sac/packages"
UNSET_JUPYTER_ENV = ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH")


def locked_jupyter_env(prefix: str, home: str) -> dict[str, str]:
    """Where a sandbox's Jupyter server reads from and writes to.

    JupyterLab loads federated extensions from every ``share/jupyter/labextensions``
    on its data path, ``~/.local/share/jupyter`` and ``~/.jupyter`` included, which
    an agent can write: script put there would run in the page of whoever opens
    the agent. Here the data and config dirs are the Python installation's own
    (``prefix``: read-only in every sandbox, provided by the image), so nothing
    the agent writes can add or shadow an extension or configure the server; the
    files the server and JupyterLab write (runtime files, settings, workspaces)
    stay in the agent's home, where they have always been. The installation's own
    configuration (``<prefix>/etc/jupyter``: the jupyter_sac server extension) is
    read as always, and the sandbox's (``<prefix>/etc/jupyter-sac/sandbox``:
    JupyterLab's page config) applies to sandboxes only.
    """
    return {
        "JUPYTER_DATA_DIR": f"{prefix}/share/jupyter",
        # jupyter_core's "migrated" marker and the sandbox's labconfig, shipped with
        # jupyter-sac (jupyter-config/sandbox): a server never tries to write there.
        "JUPYTER_CONFIG_DIR": f"{prefix}/etc/jupyter-sac/sandbox",
        "JUPYTER_RUNTIME_DIR": f"{home}/.local/share/jupyter/runtime",
        "JUPYTERLAB_SETTINGS_DIR": f"{home}/.jupyter/lab/user-settings",
        "JUPYTERLAB_WORKSPACES_DIR": f"{home}/.jupyter/lab/workspaces",
        # The installation's paths before any user's, so nothing shadows them.
        "JUPYTER_PREFER_ENV_PATH": "1",
        # No ~/.local/lib/python*/site-packages (modules a restarted server would
        # import) and no ~/.local/share/jupyter on the data path.
        "PYTHONNOUSERSITE": "1",
    }


def locked_jupyter_args(prefix: str, home: str) -> list[str]:
    """Server arguments that pin JupyterLab's federated extensions to the
    installation's (command-line values win over any config file). The plain
    path form on purpose: ``--LabApp.labextensions_path=['…']`` is parsed as one
    path string through jupyterhub-singleuser and would load no extension at all."""
    return [
        f"--LabApp.labextensions_path={prefix}/share/jupyter/labextensions",
        "--LabApp.extra_labextensions_path=[]",
        # Nothing can install extensions there (the installation is read-only), so
        # no PyPI extension manager either: it only cost the server's start its setup.
        "--LabApp.extension_manager=readonly",
        # Notebook trust (signing key and database) stays in the agent's home, as
        # before: the data dir is read-only now.
        f"--NotebookNotary.data_dir={home}/.local/share/jupyter",
    ]


class AgentSpawnError(Exception):
    """A spawn refused for a reason the user should read (shown on the spawn page)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.jupyterhub_message = message


class AgentLimitSpawnError(AgentSpawnError, SpawnException):
    """A start refused by the user's agent limit: a refusal, not a failure. JupyterHub
    answers it as a 400 with the message (as its own named-server limit), not a 500,
    and logs it without a traceback."""

    def __init__(self, message: str):
        SpawnException.__init__(self, message, reason="agent_limit")
        self.jupyterhub_message = message


@dataclass
class AgentContext:
    agent: AgentRecord
    resolved: dict[str, Any]
    token: str
    # The owner's secrets granted to the agent, decrypted: as variables, and as
    # files by name (the spawner puts those in the sandbox's $SAC_SECRETS_DIR).
    secret_env: dict[str, str] = field(default_factory=dict)
    secret_files: dict[str, str] = field(default_factory=dict)
    # The runtime part of the template version the agent records (rules/templates.py),
    # which the extension applies to claude at start; None when it has none.
    template: dict[str, Any] | None = None


_stores: dict[str, Store] = {}
_store_lock = asyncio.Lock()


async def shared_store(database_url: str) -> Store:
    """One store (connection pool) per database per hub process."""
    async with _store_lock:
        store = _stores.get(database_url)
        if store is None:
            # Migrations belong to `sac up` and the `sac` service (both run them before
            # any spawn can happen), not to the first spawn's critical path.
            store = await Store.open(database_url, min_size=1, max_size=4, run_migrations=False)
            _stores[database_url] = store
        return store


async def max_agents_for(store: Store, user: str) -> int:
    system, user_overrides = await store.settings.for_user(user)
    return int(sac_settings.resolve_user(system, user_overrides)["max_agents_per_user"])


class AgentSpawnerMixin(LoggingConfigurable):
    """Mixed into LocalAgentSpawner and KubeAgentSpawner (before the Spawner base)."""

    database_url = Unicode(
        help="PostgreSQL URL of the SAC store (default: $SAC_DATABASE_URL).",
    ).tag(config=True)

    @default("database_url")
    def _default_database_url(self) -> str:
        return os.environ.get("SAC_DATABASE_URL", "")

    credential_proxy_url = Unicode(
        help="""URL of the `sac` service's Anthropic-compatible credential proxy, as
        reachable from inside a sandbox; becomes the sandbox's ANTHROPIC_BASE_URL
        (default: $SAC_CREDENTIAL_PROXY_URL).""",
    ).tag(config=True)

    @default("credential_proxy_url")
    def _default_credential_proxy_url(self) -> str:
        return os.environ.get("SAC_CREDENTIAL_PROXY_URL", "")

    sac_service_url = Unicode(
        help="URL of the `sac` service as reachable from a sandbox (default: $SAC_SERVICE_URL).",
    ).tag(config=True)

    @default("sac_service_url")
    def _default_sac_service_url(self) -> str:
        return os.environ.get("SAC_SERVICE_URL", "")

    hub_public_url = Unicode(
        help="""The hub's public URL (its proxy) as reachable from a sandbox, for notebooks
        that drive agents (jupyter_sac.client reads it as $SAC_HUB_URL). Default:
        $SAC_HUB_URL.""",
    ).tag(config=True)

    @default("hub_public_url")
    def _default_hub_public_url(self) -> str:
        return os.environ.get("SAC_HUB_URL", "")

    sac_service_public_url = Unicode(
        help="""The `sac` service's public URL, where browsers find it (with subdomains
        its own host: http://sac--service.localhost:8000/services/sac/). Sandboxes get
        it as $SAC_SERVICE_PUBLIC_URL: the JupyterLab sidebar opens service pages
        there and jupyter_sac.client calls the service API there. Default:
        $SAC_SERVICE_PUBLIC_URL.""",
    ).tag(config=True)

    @default("sac_service_public_url")
    def _default_sac_service_public_url(self) -> str:
        return os.environ.get("SAC_SERVICE_PUBLIC_URL", "")

    sandbox_proxy_url = Unicode(
        "",
        help="""Where a sandbox connects for public URLs (the hub, the service, agents)
        when it cannot resolve their names, e.g. the proxy's Service in a cluster
        without wildcard DNS: requests go there with the public host in their Host
        header, so the proxy's host routing still applies ($SAC_PROXY_URL in the
        sandbox, read by jupyter_sac.client). Empty: connect to the public URLs.""",
    ).tag(config=True)

    agent_environment = Dict(
        help="Extra environment variables for every sandbox (never put secrets here).",
    ).tag(config=True)

    fernet_keys = List(
        Unicode(),
        help="""Fernet keys that decrypt users' secrets at an agent's start: the `sac`
        service's (c.SacService.fernet_keys), newest first. Default: $SAC_FERNET_KEY
        (comma-separated). Without them an agent granted a secret does not start.""",
    ).tag(config=True)

    @default("fernet_keys")
    def _default_fernet_keys(self) -> list[str]:
        return [k for k in os.environ.get("SAC_FERNET_KEY", "").split(",") if k]

    @default("disable_user_config")
    def _default_disable_user_config(self) -> bool:
        # jupyterhub-singleuser then reads no configuration from the agent's home
        # (and never tries to migrate IPython config into the read-only config dir).
        return True

    # ---- progress -----------------------------------------------------------------

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._progress_events: list[dict[str, Any]] = []
        self._progress_changed = asyncio.Event()

    def report(self, message: str, progress: int) -> None:
        self._progress_events.append({"progress": progress, "message": message})
        self.log.info("[%s] %s", self._log_name, message)
        self._progress_changed.set()

    def reset_progress(self) -> None:
        self._progress_events.clear()

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        """Spawn progress for JupyterHub's progress API and spawn page."""
        events, changed = self._progress_events, self._progress_changed
        sent = 0
        while True:
            while sent < len(events):
                yield events[sent]
                sent += 1
            if not self.pending and sent >= len(events):
                return
            changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), 1)

    # ---- agent preparation --------------------------------------------------------

    async def sac_store(self) -> Store:
        if not self.database_url:
            raise AgentSpawnError("SAC is not configured: no database URL for the agent store")
        return await shared_store(self.database_url)

    async def prepare_agent(self) -> AgentContext:
        if not self.name:
            raise AgentSpawnError(
                "Agents run as named servers: create an agent (a named server) instead of"
                " starting the default server."
            )
        store = await self.sac_store()
        owner, slug = self.user.name, self.name
        system, user_overrides = await store.settings.for_user(owner)
        ceiling = sac_settings.resolve_user(system, user_overrides)
        limit = int(ceiling["max_agents_per_user"])
        agent = await store.agents.get(owner, slug)
        if agent is None:
            # A named server created from the hub's home page: give it an agent record
            # with the defaults, within the user's limit.
            provider = next(iter(ceiling["allowed_providers"]), "anthropic")
            try:
                agent = await store.agents.create(
                    limit=limit,
                    owner=owner,
                    slug=slug,
                    display_name=getattr(self.orm_spawner, "display_name", None) or slug,
                    provider=provider,
                    model=PRESETS[provider].default_model,
                )
            except AgentLimitError:
                raise AgentLimitSpawnError(
                    f"{owner} already has the maximum of {limit} agents;"
                    " delete one before creating another."
                ) from None
            self.report(f"Created agent {slug!r} with default settings", 5)
        rank = await store.agents.rank(owner, slug)
        if rank is None or rank > limit:
            raise AgentLimitSpawnError(
                f"Agent {slug!r} is beyond {owner}'s limit of {limit} agents;"
                " an administrator lowered it. Delete an agent or ask for a higher limit."
            )
        resolved = sac_settings.resolve(system, user_overrides, agent.overrides)
        secret_env, secret_files = await self.granted_secrets(store, agent)
        template = await self.agent_template(store, agent)
        token = await store.tokens.issue(agent.id)
        await self.keep_server_token(store, agent.id)
        return AgentContext(
            template=template,
            agent=agent,
            resolved=resolved,
            token=token,
            secret_env=secret_env,
            secret_files=secret_files,
        )

    async def keep_server_token(self, store: Store, agent_id: int) -> None:
        """The server's own hub token (its JUPYTERHUB_API_TOKEN), encrypted for the
        `sac` service, which calls this server (idle checks, exec, its screen) with
        it: a credential the sandbox holds anyway and that opens this server only,
        never the service's own token (store/migrations/024)."""
        if not self.api_token or not self.fernet_keys:
            return
        await store.server_tokens.set(agent_id, KeyBox(self.fernet_keys).encrypt(self.api_token))

    async def granted_secrets(
        self, store: Store, agent: AgentRecord
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The agent's granted secrets, decrypted: (variables, files by name). A
        secret removed since it was granted is left out, and the spawn page says so."""
        if not agent.secrets:
            return {}, {}
        if not self.fernet_keys:
            raise AgentSpawnError(
                "This agent is granted secrets, but the hub has no key to decrypt them"
                " (SAC_FERNET_KEY); ask an administrator."
            )
        keybox = KeyBox(self.fernet_keys)
        names = [grant["name"] for grant in agent.secrets]
        values: dict[str, str] = {}
        for name, encrypted in (await store.secrets.values_for(agent.owner, names)).items():
            try:
                values[name] = keybox.decrypt(encrypted)
            except ValueError:
                self.log.error(
                    "[%s] secret %s cannot be decrypted with the hub's Fernet keys",
                    self._log_name,
                    name,
                )
        env, files, missing = deliveries(agent.secrets, values)
        if missing:
            self.report(f"Secrets not available, not given: {', '.join(sorted(missing))}", 8)
        return env, files

    async def agent_template(self, store: Store, agent: AgentRecord) -> dict[str, Any] | None:
        """The runtime part of the template version ``agent`` was made from (kept
        after the template is deleted); None when it has none."""
        if agent.template_id is None or agent.template_version is None:
            return None
        definition = await store.templates.version(agent.template_id, agent.template_version)
        if definition is None:
            return None
        latest = await store.templates.latest_versions([agent.template_id])
        name = latest[agent.template_id][0] if agent.template_id in latest else ""
        self.report(f"Template {name or agent.template_id} version {agent.template_version}", 8)
        return template_rules.runtime_part(
            agent.template_id, name, agent.template_version, definition
        )

    async def running_agent_context(self) -> AgentContext | None:
        """The agent and its resolved settings for a server that is already running
        (a restarted hub re-attaching to it): no record made, no token issued (the
        sandbox holds its own); None when the agent is gone."""
        store = await self.sac_store()
        agent = await store.agents.get(self.user.name, self.name)
        if agent is None:
            return None
        system, user_overrides = await store.settings.for_user(self.user.name)
        resolved = sac_settings.resolve(system, user_overrides, agent.overrides)
        return AgentContext(agent=agent, resolved=resolved, token="")

    def agent_env(self, ctx: AgentContext) -> dict[str, str]:
        """Environment a sandbox gets on top of JupyterHub's own variables."""
        env = {
            "ANTHROPIC_BASE_URL": self.credential_proxy_url,
            "ANTHROPIC_API_KEY": ctx.token,
            "ANTHROPIC_MODEL": ctx.agent.model,
            "SAC_AGENT": ctx.agent.slug,
            "SAC_AGENT_DISPLAY_NAME": ctx.agent.display_name,
            "SAC_AGENT_PROVIDER": ctx.agent.provider,
            "SAC_RUNTIME": ctx.agent.runtime,
            "SAC_SERVICE_URL": self.sac_service_url,
            "SAC_SERVICE_PUBLIC_URL": self.sac_service_public_url,
            "SAC_HUB_URL": self.hub_public_url,
            # The same per-agent token authenticates history ingest and HITL filing.
            "SAC_AGENT_TOKEN": ctx.token,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            # The sandbox *is* the isolation boundary (claude checks this for bypassPermissions).
            "IS_SANDBOX": "1",
        }
        if self.sandbox_proxy_url:
            env["SAC_PROXY_URL"] = self.sandbox_proxy_url
        for key, value in self.agent_environment.items():
            if not key.startswith(FORBIDDEN_ENV_PREFIXES):
                env[key] = str(value)
        if ctx.template is not None:
            env[template_rules.TEMPLATE_ENV_VAR] = json.dumps(ctx.template, ensure_ascii=False)
        # The owner's own choice for this agent wins over the deployment's extras.
        env.update(ctx.secret_env)
        if ctx.secret_env:
            # For the extension to scrub captured history of these values.
            env[SECRET_ENV_NAMES_VAR] = ",".join(sorted(ctx.secret_env))
        return env

    @staticmethod
    def shared_packages_env(where: str) -> dict[str, str]:
        """What points pip and uv at the organisation's read-only wheelhouse, seen in
        the sandbox at ``where`` (its ``wheels`` folder): they take a wheel from it
        before downloading one. Each agent's own caches (pip's, uv's, npm's) stay in
        its home, which it keeps across restarts: writable by that agent alone, since
        a cache two agents could write is one agent's way into the other's installs."""
        wheels = f"{where.rstrip('/')}/wheels"
        return {"PIP_FIND_LINKS": wheels, "UV_FIND_LINKS": wheels}

    @staticmethod
    def sac_server_args(prefix: str, home: str) -> list[str]:
        """Single-user server arguments every sandbox gets, whatever the spawner
        (``prefix``: sys.prefix of the sandbox's Python; ``home``: its home)."""
        return [
            # Terminal output in fewer, larger websocket messages (see terminal_manager).
            "--TerminalsExtensionApp.terminal_manager_class="
            "jupyter_sac.server_extension.terminal_manager.SacTerminalManager",
            *locked_jupyter_args(prefix, home),
        ]

    @staticmethod
    def scrub_env(env: dict[str, str]) -> dict[str, str]:
        return {
            k: v
            for k, v in env.items()
            if not k.startswith(FORBIDDEN_ENV_PREFIXES) and k not in UNSET_JUPYTER_ENV
        }

    async def tell_owner_failed(
        self,
        phase: str,
        message: str,
        exit_code: int | None = None,
        dedupe_key: str | None = None,
    ) -> None:
        """``agent.failed`` on the owner's event stream (the `sac` service's event
        stream and webhooks read it from the store), once per ``dedupe_key`` when
        given; never in the way of the failure itself."""
        if not self.database_url or not self.name:
            return
        try:
            store = await self.sac_store()
            data = sac_events.agent_failed(phase, message, exit_code)
            await store.events.append(
                self.user.name,
                sac_events.AGENT_FAILED,
                data,
                agent=self.name,
                dedupe_key=dedupe_key,
            )
        except Exception:
            self.log.exception("[%s] could not tell the owner the agent failed", self._log_name)

    async def revoke_agent_token(self) -> None:
        if not self.database_url or not self.name:
            return
        store = await self.sac_store()
        agent = await store.agents.get(self.user.name, self.name)
        if agent is not None:
            await store.tokens.revoke(agent.id)
            await store.server_tokens.clear(agent.id)
