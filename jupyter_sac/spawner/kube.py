"""KubeAgentSpawner: each agent as a pod, through KubeSpawner.

KubeSpawner does the Kubernetes work (pod manifest, PVC, reflectors, state
across hub restarts); this subclass adds what makes the pod an agent sandbox:

- the agent's record, limit check, resolved settings and per-agent token
  (AgentSpawnerMixin), with CPU/memory requests and limits from the settings;
- credentials only through the agent's Secret (``valueFrom.secretKeyRef``);
- a hardened security context, /tmp as an emptyDir, the workspace and the
  home on one per-agent PVC (so Claude's transcripts, chat sessions and the
  history spool survive a stop or a move to another node), or both as
  emptyDirs; optional runtimeClassName;
- a NetworkPolicy that lets the pod reach only the hub, the `sac` service,
  DNS and configured destinations;
- spawn progress from the pod's events, and a clear failure (image pull error,
  crash loop, missing Secret) instead of waiting for the start timeout;
- what a running agent uses (CPU and memory from the cluster's metrics API, or
  why they are unavailable) and how often its server was restarted, sampled
  into ``sandbox_usage``; the owner is told of each restart (``agent.failed``);
- removal of the pod, Secret and NetworkPolicy on stop, and of the PVC when
  the agent is deleted (``delete_pvc``);
- with ``warm_pods``, spare pods of the shapes agents started with, one of
  which a new agent's start takes instead of waiting for a cold pod
  (kube_pool.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import time
from typing import Any

from kubernetes_asyncio.client import ApiClient, Configuration, CoreV1Api
from kubernetes_asyncio.client.rest import ApiException
from kubernetes_asyncio.stream import WsApiClient
from kubespawner import KubeSpawner
from kubespawner.clients import shared_client
from traitlets import Bool, Dict, Enum, Float, Integer, List, Type, Unicode, default

from .._version import __version__
from ..rules.secrets import SANDBOX_SECRETS_DIR, SECRETS_DIR_VAR
from ..store.sandbox_usage import SandboxUsage
from .kube_manifests import (
    SANDBOX_HOME,
    SANDBOX_WORKSPACE,
    SECRET_ENV,
    WARM_LABEL,
    NetworkRules,
    Peer,
    assignment_env,
    container_restarts,
    container_usage,
    describe_pod_failure,
    granted_secret_keys,
    network_policy,
    parse_quantity,
    pool_key,
    resource_traits,
    sandbox_volumes,
    secrets_volume,
    security_contexts,
    shared_packages_volume,
    split_secret_env,
    token_secret,
    warm_network_policy,
    warm_pod_manifest,
)
from .kube_names import agent_object_name, label_value
from .kube_pool import Shape, SpareAllocator, WarmPool, spare_name, spare_selector
from .mixin import (
    SHARED_PACKAGES_DIR,
    AgentContext,
    AgentLimitSpawnError,
    AgentSpawnerMixin,
    AgentSpawnError,
    locked_jupyter_env,
)

LABEL_PREFIX = "sac.jupyter.org"
# Labels that name an agent or its owner: a spare made from an agent's pod drops them.
IDENTITY_LABELS = frozenset(
    {
        "hub.jupyter.org/username",
        "hub.jupyter.org/servername",
        f"{LABEL_PREFIX}/user",
        f"{LABEL_PREFIX}/agent",
        f"{LABEL_PREFIX}/runtime",
        f"{LABEL_PREFIX}/sandbox",
    }
)
METRICS_GROUP, METRICS_VERSION = "metrics.k8s.io", "v1beta1"
NO_METRICS_API = "no metrics API in this cluster: install metrics-server for live CPU and memory"


def serialize(obj: Any) -> Any:
    """A kubernetes_asyncio model (or a dict holding some) as plain API JSON."""
    return ApiClient().sanitize_for_serialization(obj)


class KubeAgentSpawner(AgentSpawnerMixin, KubeSpawner):
    """Runs each agent in its own pod on Kubernetes."""

    @default("image")
    def _default_image(self) -> str:
        return f"jupyter-sac-sandbox:{__version__}"

    @default("cmd")
    def _default_cmd(self) -> list[str]:
        return ["jupyterhub-singleuser"]

    @default("default_url")
    def _default_default_url(self) -> str:
        return "/lab"

    @default("working_dir")
    def _default_working_dir(self) -> str:
        return SANDBOX_WORKSPACE

    @default("uid")
    def _default_uid(self) -> int:
        return 1000

    @default("gid")
    def _default_gid(self) -> int:
        return 1000

    @default("fs_gid")
    def _default_fs_gid(self) -> int:
        return 1000

    @default("automount_service_account_token")
    def _default_automount(self) -> bool:
        # A sandbox never talks to the Kubernetes API.
        return False

    @default("pod_security_context")
    def _default_pod_security_context(self) -> dict[str, Any]:
        return self._security_contexts()[0]

    @default("container_security_context")
    def _default_container_security_context(self) -> dict[str, Any]:
        return self._security_contexts()[1]

    @default("storage_pvc_ensure")
    def _default_storage_pvc_ensure(self) -> bool:
        return self.workspace_storage == "pvc"

    @default("pvc_name_template")
    def _default_pvc_name_template(self) -> str:
        # Only a fallback (start() names the PVC after the agent); it must hold
        # {user_server} or KubeSpawner.delete_forever refuses to delete it.
        return "sac-{user_server}-workspace"

    workspace_storage = Enum(
        ["pvc", "emptyDir"],
        default_value="pvc",
        help="""Where an agent's /workspace and home live: "pvc" (a PersistentVolumeClaim
        per agent, sized by the agent's storage_quota_bytes setting, in `storage_class`;
        the home is its .sac-home folder), kept across stops, culls and nodes; or
        "emptyDir" (lost when the pod stops: only the synced folders private/,
        output/, public/ and group/ come back, from the object store; chat sessions
        then start anew).""",
    ).tag(config=True)

    read_only_root_filesystem = Bool(
        True,
        help="""Mount the image's root filesystem read-only. Home (/home/sac), /tmp and
        /workspace are writable volumes. Turn off only for images that write elsewhere.""",
    ).tag(config=True)

    tmp_size_limit = Unicode(
        "1Gi",
        allow_none=True,
        help="sizeLimit of the /tmp emptyDir (a Kubernetes quantity; None: no limit).",
    ).tag(config=True)

    shared_packages_claim = Unicode(
        "",
        help="""A PersistentVolumeClaim (ReadOnlyMany or ReadWriteMany) holding the
        organisation's package cache: a `wheels` folder of Python wheels an
        administrator fills (a Job running `pip wheel -w /cache/wheels -r
        requirements.txt`). Every agent mounts it read-only at /opt/sac/packages, and
        pip and uv take wheels from it (PIP_FIND_LINKS, UV_FIND_LINKS) before
        downloading. Empty: none. Each agent's own caches stay in its home, on its
        volume.""",
    ).tag(config=True)

    runtime_class_name = Unicode(
        "",
        help="""runtimeClassName of agent pods, e.g. "gvisor" or "kata" for a sandboxed
        container runtime installed on the nodes. Empty: the cluster's default runtime.""",
    ).tag(config=True)

    sandbox_python_prefix = Unicode(
        "/usr/local",
        help="""sys.prefix of the sandbox image's Python (images/sandbox: /usr/local).
        JupyterLab in an agent's pod loads federated extensions only from
        <prefix>/share/jupyter/labextensions, and its Jupyter data and config dirs
        are the image's <prefix>/share/jupyter and <prefix>/etc/jupyter (read-only),
        never the agent's home.""",
    ).tag(config=True)

    readiness_period = Integer(
        1,
        help="""Seconds between the kubelet's readiness checks of a starting agent (an
        HTTP GET of the server's /api). A spawn completes at the first success.""",
    ).tag(config=True)

    network_policy_enabled = Bool(
        True,
        help="Create a NetworkPolicy per agent that allows only the listed peers.",
    ).tag(config=True)

    hub_pod_selector = Dict(
        {"component": "hub"},
        help="Labels of the hub's pod (zero-to-jupyterhub: component=hub); agents may reach it.",
    ).tag(config=True)

    hub_ports = List(Integer(), [8081], help="Ports of the hub's API that agents may reach.").tag(
        config=True
    )

    sac_service_pod_selector = Dict(
        {"component": "hub"},
        help="""Labels of the pod running the `sac` service. The service runs inside the
        hub's pod by default (a hub-managed service).""",
    ).tag(config=True)

    sac_service_ports = List(
        Integer(), [10101], help="Ports of the `sac` service that agents may reach."
    ).tag(config=True)

    proxy_pod_selector = Dict(
        {"component": "proxy"},
        help="""Labels of the proxy's pod. Agents may reach it (notebooks drive agents
        through the public proxy) and it may reach them.""",
    ).tag(config=True)

    proxy_ports = List(Integer(), [8000], help="Ports of the proxy that agents may reach.").tag(
        config=True
    )

    egress_destinations = List(
        Dict(),
        help="""Extra NetworkPolicy egress rules (Kubernetes NetworkPolicyEgressRule
        objects), e.g. a package mirror or a git server:
        {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"port": 443}]}.""",
    ).tag(config=True)

    allow_dns = Bool(
        True, help="Allow DNS (port 53) to the kube-system namespace in the NetworkPolicy."
    ).tag(config=True)

    failure_check_interval = Float(
        0.5,
        help="Seconds between checks of a starting pod's status for errors that end the spawn.",
    ).tag(config=True)

    warm_pods = Integer(
        0,
        help="""Spare pods to keep for each shape of agent pod (image, resources, profile:
        everything but the identity), so that a new agent's start takes a running,
        pre-imported pod instead of waiting for a cold one. A shape's spares exist
        once an agent of that shape has started. Only starts without a workspace PVC
        yet (a new agent, or any start with workspace_storage "emptyDir") take one;
        a spare with workspace_storage "pvc" carries a fresh PVC that becomes the
        agent's. 0: no spares.""",
    ).tag(config=True)

    warm_pod_shapes = Integer(
        2,
        help="""How many shapes of agent pod keep spares: those used last. The spares of
        a shape that drops out are deleted.""",
    ).tag(config=True)

    spare_allocator_class = Type(
        WarmPool,
        help="""What keeps the spare pods' books (kube_pool.SpareAllocator, made per
        namespace by its for_namespace): the default, WarmPool, in the hub's process.""",
    ).tag(config=True)

    warm_pod_command = List(
        Unicode(),
        ["python3", "-m", "jupyter_sac.spawner.launcher"],
        help="""Command of a spare pod: the pre-importing launcher, which imports the
        server's modules and then waits on its stdin for its assignment.""",
    ).tag(config=True)

    usage_interval = Float(
        10.0,
        help="""Seconds between samples of what a running agent's pod uses: CPU and memory
        from the cluster's metrics API (metrics.k8s.io, served by metrics-server; where
        it is absent the sample says so), and its server's restarts. Stored for the
        API, the admin Agents page and the JupyterLab sidebar; the owner is told of
        each restart. 0: no sampling.""",
    ).tag(config=True)

    # ---- names ------------------------------------------------------------------

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._set_names()
        self._agent: AgentContext | None = None
        self._secret_data: dict[str, str] = {}
        self._sampler: asyncio.Task[None] | None = None

    def _set_names(self) -> None:
        if self.name:
            self.pod_name = agent_object_name(self.user.name, self.name)
            self.dns_name = self.dns_name_template.format(
                namespace=self.namespace, name=self.pod_name
            )

    def clear_state(self) -> None:
        super().clear_state()
        self._set_names()

    @property
    def agent_secret_name(self) -> str:
        return f"{self.pod_name}-token"

    def _security_contexts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        ints = [v if isinstance(v, int) else 1000 for v in (self.uid, self.gid, self.fs_gid)]
        return security_contexts(*ints, read_only_root=self.read_only_root_filesystem)

    def sac_labels(self) -> dict[str, str]:
        labels = {
            "app.kubernetes.io/name": "jupyter-sac",
            f"{LABEL_PREFIX}/sandbox": self.pod_name,
            f"{LABEL_PREFIX}/user": label_value(self.user.name),
            f"{LABEL_PREFIX}/agent": label_value(self.name or ""),
        }
        if self._agent is not None:
            labels[f"{LABEL_PREFIX}/runtime"] = label_value(self._agent.agent.runtime)
        return labels

    def sac_annotations(self) -> dict[str, str]:
        annotations = {f"{LABEL_PREFIX}/user": self.user.name, f"{LABEL_PREFIX}/agent": self.name}
        if self._agent is not None:
            annotations[f"{LABEL_PREFIX}/agent-id"] = str(self._agent.agent.id)
            annotations[f"{LABEL_PREFIX}/runtime"] = self._agent.agent.runtime
        return annotations

    # ---- manifests --------------------------------------------------------------

    def use_agent(self, ctx: AgentContext) -> None:
        """Take the agent's resolved settings: resources, storage size, PVC name."""
        self._agent = ctx
        for trait, value in resource_traits(ctx.resolved).items():
            setattr(self, trait, value)
        self.storage_capacity = str(int(ctx.resolved["storage_quota_bytes"]))
        if not self._pvc_exists:
            # The agent's id keeps a re-created agent of the same name off an old workspace.
            self.pvc_name = f"{self.pod_name}-ws-{ctx.agent.id}"

    def get_env(self) -> dict[str, Any]:
        env = super().get_env()
        if self._agent is None:
            return env
        env = self.scrub_env(env)
        env.update(self.agent_env(self._agent))
        env.update(locked_jupyter_env(self.sandbox_python_prefix, SANDBOX_HOME))
        if self.shared_packages_claim:
            env.update(self.shared_packages_env(SHARED_PACKAGES_DIR))
        env.update(
            {
                "HOME": SANDBOX_HOME,
                "SAC_WORKSPACE": SANDBOX_WORKSPACE,
                "CLAUDE_CONFIG_DIR": f"{SANDBOX_HOME}/.claude",
                "USER": self.user.name,
                "SHELL": "/bin/bash",
            }
        )
        ctx = self._agent
        env_keys, file_data = granted_secret_keys(ctx.secret_env, ctx.secret_files)
        if file_data:
            env[SECRETS_DIR_VAR] = SANDBOX_SECRETS_DIR
        # Granted secrets, like the tokens, reach the pod only through its Secret.
        pod_env, self._secret_data = split_secret_env(
            env, self.agent_secret_name, {**SECRET_ENV, **env_keys}
        )
        self._secret_data.update(file_data)
        return pod_env

    def get_args(self) -> list[str]:
        # A copy: Spawner.get_args returns the `args` trait itself.
        return [
            *super().get_args(),
            # A non-login shell keeps the image's PATH (see LocalAgentSpawner.get_args).
            '--ServerApp.terminado_settings={"shell_command": ["/bin/bash"]}',
            *self.sac_server_args(self.sandbox_python_prefix, SANDBOX_HOME),
        ]

    async def get_pod_manifest(self) -> Any:
        pod = await super().get_pod_manifest()
        claim = self.pvc_name if self.workspace_storage == "pvc" else None
        volumes, mounts = sandbox_volumes(claim, self.tmp_size_limit)
        if self._agent is not None and self._agent.secret_files:
            volume, mount = secrets_volume(
                self.agent_secret_name, self._agent.secret_files, SANDBOX_SECRETS_DIR
            )
            volumes, mounts = [*volumes, volume], [*mounts, mount]
        if self.shared_packages_claim:
            volume, mount = shared_packages_volume(self.shared_packages_claim, SHARED_PACKAGES_DIR)
            volumes, mounts = [*volumes, volume], [*mounts, mount]
        spec = pod.spec
        spec.volumes = [*volumes, *(spec.volumes or [])]
        container = spec.containers[0]
        container.volume_mounts = [*mounts, *(container.volume_mounts or [])]
        # A crashing server's last output becomes the termination message the user sees.
        container.termination_message_policy = "FallbackToLogsOnError"
        # Ready only once the server answers, so a server that dies while starting
        # shows as a crash loop (and fails the spawn) instead of a silent HTTP timeout.
        base_url = self.server.base_url if self.server else f"/user/{self.user.name}/{self.name}/"
        container.readiness_probe = {
            "httpGet": {"path": base_url + "api", "port": "notebook-port"},
            "periodSeconds": self.readiness_period,
            "failureThreshold": 3,
        }
        if self.runtime_class_name:
            spec.runtime_class_name = self.runtime_class_name
        pod.metadata.labels.update(self.sac_labels())
        pod.metadata.annotations.update(self.sac_annotations())
        return pod

    def get_pvc_manifest(self) -> Any:
        pvc = super().get_pvc_manifest()
        pvc.metadata.labels.update(self.sac_labels())
        pvc.metadata.annotations.update(self.sac_annotations())
        return pvc

    def secret_manifest(self) -> dict[str, Any]:
        return token_secret(
            self.agent_secret_name,
            self.namespace,
            self._secret_data,
            self.sac_labels(),
            self.sac_annotations(),
        )

    def network_policy_manifest(self) -> dict[str, Any]:
        rules = NetworkRules(
            egress=(
                Peer(self.hub_pod_selector, tuple(self.hub_ports)),
                Peer(self.sac_service_pod_selector, tuple(self.sac_service_ports)),
                Peer(self.proxy_pod_selector, tuple(self.proxy_ports)),
            ),
            ingress=(
                Peer(self.hub_pod_selector, (self.port,)),
                Peer(self.proxy_pod_selector, (self.port,)),
            ),
            extra_egress=tuple(self.egress_destinations),
            allow_dns=self.allow_dns,
        )
        selector = {f"{LABEL_PREFIX}/sandbox": self.pod_name}
        return network_policy(self.pod_name, self.namespace, selector, rules, self.sac_labels())

    async def agent_manifests(self) -> dict[str, dict[str, Any]]:
        """Every object this agent's start creates, as API JSON (after use_agent)."""
        manifests = {"pod": serialize(await self.get_pod_manifest())}
        manifests["secret"] = self.secret_manifest()
        if self.storage_pvc_ensure:
            manifests["pvc"] = serialize(self.get_pvc_manifest())
        if self.network_policy_enabled:
            manifests["networkpolicy"] = self.network_policy_manifest()
        return manifests

    # ---- Kubernetes calls -------------------------------------------------------

    @property
    def networking_api(self) -> Any:
        return shared_client("NetworkingV1Api")

    async def _apply(self, kind: str, manifest: dict[str, Any]) -> None:
        """Create ``manifest``, replacing an object of the same name left from before.

        Replacing is delete-then-create: the chart's hub Role grants create and
        delete, not update.
        """
        api = self.networking_api if kind == "network_policy" else self.api
        create = getattr(api, f"create_namespaced_{kind}")
        try:
            await create(self.namespace, manifest)
        except ApiException as e:
            if e.status != 409:
                raise
            await self._delete_quietly(kind, manifest["metadata"]["name"])
            await create(self.namespace, manifest)

    async def _delete_quietly(self, kind: str, name: str) -> None:
        api = self.networking_api if kind == "network_policy" else self.api
        try:
            await getattr(api, f"delete_namespaced_{kind}")(name, self.namespace)
        except ApiException as e:
            if e.status != 404:
                self.log.warning("Could not delete %s %s: %s", kind, name, e.reason)

    async def load_user_options(self) -> None:
        """Apply the agent's profile (of ``profile_list``, which an administrator
        approves): the one this start asked for (the hub's spawn page), else the
        agent's ``profile`` setting (its template or settings), else the list's
        default. An unknown one fails the start, naming those offered. CPU and
        memory stay the agent's settings whatever a profile says: they are the
        limits its owner's ceilings allow."""
        wanted = self.user_options.get("profile") or (
            self._agent.resolved.get("profile") if self._agent is not None else ""
        )
        if wanted:
            self.user_options = {**self.user_options, "profile": wanted}
            if not self.profile_list:
                self.report(f"Profile {wanted!r} ignored: no profiles are offered here", 15)
        try:
            await super().load_user_options()
        except ValueError as e:
            raise AgentSpawnError(f"The profile {wanted!r} is not offered here. {e}") from None
        if self._agent is not None:
            for trait, value in resource_traits(self._agent.resolved).items():
                setattr(self, trait, value)

    # ---- JupyterHub Spawner API -------------------------------------------------

    async def _start(self) -> str:
        try:
            return await self._start_agent()
        except AgentLimitSpawnError:
            raise  # a refusal, not a failure
        except Exception as e:
            await self.tell_owner_failed("start", str(e))
            raise

    async def _start_agent(self) -> str:
        self.reset_progress()
        started = time.monotonic()
        self.report("Preparing agent", 0)
        ctx = await self.prepare_agent()
        self.use_agent(ctx)
        resolved = ctx.resolved
        self.report(
            f"Agent {ctx.agent.display_name!r}: {ctx.agent.provider} / {ctx.agent.model},"
            f" {resolved['cpu_limit']:g} CPU, {resolved['mem_limit'] // 2**20} MiB",
            10,
        )
        shape = await self._spare_shape()
        if shape is not None:
            key, spare_shape = shape
            url = await self._start_on_spare(ctx, key, started)
            self._refill_spares(key, spare_shape)
            if url is not None:
                return url
        # The Secret must exist before the pod that refers to it.
        await self.get_pod_manifest()
        await self._apply("secret", self.secret_manifest())
        if self.network_policy_enabled:
            await self._apply("network_policy", self.network_policy_manifest())
        self.report(f"Creating pod {self.namespace}/{self.pod_name} ({self.image})", 20)

        start = asyncio.ensure_future(super()._start())
        try:
            url = await self._watch_start(start)
        except BaseException:
            start.cancel()
            with contextlib.suppress(Exception):
                await self._remove_objects(now=True)
            raise
        self.report(f"Agent ready in {time.monotonic() - started:.1f} s", 95)
        self._start_sampler()
        return url

    # ---- spare pods (the warm pool) ---------------------------------------------

    @property
    def warm_pool(self) -> SpareAllocator:
        return self.spare_allocator_class.for_namespace(self.namespace)  # type: ignore[no-any-return]

    async def _spare_shape(self) -> tuple[str, Shape] | None:
        """(pool key, shape) of this agent's pod, when spares are kept and this start
        may take one (no workspace PVC yet)."""
        if self.warm_pods <= 0 or (self.workspace_storage == "pvc" and self._pvc_exists):
            return None
        # The profile first: it changes the pod (KubeSpawner._start applies it too).
        await self.load_user_options()
        agent_pod = serialize(await self.get_pod_manifest())
        env = locked_jupyter_env(self.sandbox_python_prefix, SANDBOX_HOME)
        env.update({"HOME": SANDBOX_HOME, "SAC_WORKSPACE": SANDBOX_WORKSPACE})
        labels = {
            k: v
            for k, v in (agent_pod["metadata"].get("labels") or {}).items()
            if k not in IDENTITY_LABELS
        }
        claim = "placeholder" if self.workspace_storage == "pvc" else None
        pod = warm_pod_manifest(
            agent_pod, "placeholder", self.namespace, labels, self.warm_pod_command, env,
            claim, self.tmp_size_limit,
        )  # fmt: skip
        pvc = None
        if claim is not None:
            pvc = serialize(self.get_pvc_manifest())
            pvc["metadata"] = {"name": "placeholder", "namespace": self.namespace,
                               "labels": dict(labels)}  # fmt: skip
        key = pool_key(pod, (pvc or {}).get("spec"))
        return key, Shape(pod, pvc)

    async def _list_spares(self, key: str | None) -> list[dict[str, Any]]:
        found = await self.api.list_namespaced_pod(
            self.namespace, label_selector=spare_selector(key)
        )
        return [serialize(p) for p in found.items]

    async def _start_on_spare(self, ctx: AgentContext, key: str, started: float) -> str | None:
        """Start the agent on a spare of its shape, if one runs: None for a cold start."""
        pool = self.warm_pool
        try:
            spare = await pool.claim(key, self._list_spares)
        except ApiException as e:
            self.log.warning("[%s] no spare pods: %s", self._log_name, e.reason)
            return None
        if spare is None:
            self.report("No spare pod of this shape: starting a new one", 15)
            return None
        name, ip = spare["metadata"]["name"], spare["status"]["podIP"]
        try:
            self.pod_name = name
            claim = next(
                (v["persistentVolumeClaim"]["claimName"] for v in spare["spec"]["volumes"]
                 if v["name"] == "sac-workspace" and "persistentVolumeClaim" in v),
                None,
            )  # fmt: skip
            if claim is not None:
                self.pvc_name, self._pvc_exists = claim, True
            self.report(f"Taking spare pod {self.namespace}/{name}", 30)
            env = self.get_env()  # the pod's form; also the Secret's data (tokens)
            pod_env = [{"name": k, **({"value": v} if isinstance(v, str) else v)}
                       for k, v in env.items()]  # fmt: skip
            assignment: dict[str, Any] = {
                "env": assignment_env(pod_env, self._secret_data, ip),
                "argv": [*self.cmd, *self.get_args()],
                "cwd": self.working_dir,
            }
            if ctx.secret_files:
                assignment["secret_files"] = {
                    "dir": SANDBOX_SECRETS_DIR, "files": dict(ctx.secret_files),
                }  # fmt: skip
            # What the agent may reach, before it is anyone's: the spares' own policy
            # lets nothing in or out, and stops applying once the label goes.
            if self.network_policy_enabled:
                await self._apply("network_policy", self.network_policy_manifest())
            await self._relabel("pod", name)
            if claim is not None:
                await self._relabel("persistent_volume_claim", claim)
            await self._send_assignment(name, json.dumps(assignment).encode() + b"\n")
        except BaseException:
            with contextlib.suppress(Exception):
                await self._delete_quietly("pod", name)
            self.clear_state()
            raise
        finally:
            pool.release(name)
        self.report(f"Agent assigned in {time.monotonic() - started:.1f} s", 90)
        # What KubeSpawner._start would have begun: its pod watch (poll, the sampler).
        await self._start_watching_pods()
        self._start_sampler()
        return f"http://{ip}:{self.port}"

    async def _relabel(self, kind: str, name: str) -> None:
        """The agent's labels and annotations on a spare (or its PVC): no longer a spare."""
        labels: dict[str, str | None] = {WARM_LABEL: None, **self.sac_labels()}
        labels["hub.jupyter.org/username"] = label_value(self.user.name)
        labels["hub.jupyter.org/servername"] = label_value(self.name or "")
        patch = {"metadata": {"labels": labels, "annotations": self.sac_annotations()}}
        await getattr(self.api, f"patch_namespaced_{kind}")(name, self.namespace, patch)

    async def _send_assignment(self, name: str, line: bytes) -> None:
        """Write ``line`` to the spare's stdin (pods/attach, over a WebSocket)."""
        async with WsApiClient(configuration=Configuration.get_default_copy()) as client:
            api = CoreV1Api(api_client=client)
            connect = await api.connect_get_namespaced_pod_attach(
                name, self.namespace, container="notebook", stdin=True, stdout=False,
                stderr=False, tty=False, _preload_content=False,
            )  # fmt: skip
            async with connect as ws:
                await ws.send_bytes(b"\x00" + line)

    def _refill_spares(self, key: str, shape: Shape) -> None:
        dropped = self.warm_pool.remember(key, shape, self.warm_pod_shapes)
        self.warm_pool.refill_soon(key, lambda: self._refill(key, dropped))

    async def _refill(self, key: str, dropped: list[str]) -> None:
        """Delete the spares of shapes no longer kept; make ``key``'s up to warm_pods."""
        try:
            if self.network_policy_enabled:
                policy = warm_network_policy(
                    "sac-warm-pods", self.namespace, {"app.kubernetes.io/name": "jupyter-sac"}
                )
                with contextlib.suppress(ApiException):  # 409: it exists
                    await self.networking_api.create_namespaced_network_policy(
                        self.namespace, policy
                    )
            for old in dropped:
                for pod in await self._list_spares(old):
                    await self._delete_spare(pod)
            shape = self.warm_pool.shapes.get(key)
            if shape is None:
                return
            have = [p for p in await self._list_spares(key)
                    if "deletionTimestamp" not in p["metadata"]]  # fmt: skip
            for _ in range(self.warm_pods - len(have)):
                await self._make_spare(key, shape)
        except Exception:
            self.log.exception("Could not refill the spare pods of shape %s", key)

    async def _make_spare(self, key: str, shape: Shape) -> None:
        name = spare_name()
        pod = copy.deepcopy(shape.pod)
        pod["metadata"]["name"] = name
        pod["metadata"]["labels"].update({WARM_LABEL: key, f"{LABEL_PREFIX}/sandbox": name})
        if shape.pvc is not None:
            pvc = copy.deepcopy(shape.pvc)
            pvc["metadata"]["name"] = f"{name}-ws"
            pvc["metadata"]["labels"][WARM_LABEL] = key
            await self.api.create_namespaced_persistent_volume_claim(self.namespace, pvc)
            for volume in pod["spec"]["volumes"]:
                if "persistentVolumeClaim" in volume:
                    volume["persistentVolumeClaim"]["claimName"] = f"{name}-ws"
        await self.api.create_namespaced_pod(self.namespace, pod)
        self.log.info("Made spare pod %s/%s (shape %s)", self.namespace, name, key)

    async def _delete_spare(self, pod: dict[str, Any]) -> None:
        await self._delete_quietly("pod", pod["metadata"]["name"])
        for volume in pod["spec"].get("volumes") or []:
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                await self._delete_quietly("persistent_volume_claim", claim)

    async def _watch_start(self, start: asyncio.Future[str]) -> str:
        """Wait for KubeSpawner's start, relaying pod events and failing early on errors."""
        interval = self.failure_check_interval
        relayed: set[str] = set()
        key = f"{self.namespace}/{self.pod_name}"
        progress = 30
        while True:
            done, _ = await asyncio.wait({start}, timeout=interval)
            for event in self.events:
                uid = event["metadata"].get("uid") or event["metadata"]["name"]
                if uid in relayed:
                    continue
                relayed.add(uid)
                progress = min(90, progress + 8)
                self.report(f"[{event.get('type')}] {event.get('message')}", progress)
            if done:
                return start.result()
            reflector = self.pod_reflector
            pod = reflector.pods.get(key) if reflector else None
            failure = describe_pod_failure(pod, self.events)
            if failure:
                raise AgentSpawnError(failure)

    async def _remove_objects(self, now: bool = False) -> None:
        await super().stop(now=now)
        await self._delete_quietly("secret", self.agent_secret_name)
        if self.network_policy_enabled:
            await self._delete_quietly("network_policy", self.pod_name)

    async def stop(self, now: bool = False) -> None:
        await self._stop_sampler()
        await self._remove_objects(now=now)
        with contextlib.suppress(Exception):
            await self.revoke_agent_token()

    async def poll(self) -> int | None:
        status = await super().poll()
        if status is None:
            # Running: also after a hub restart re-attached to the pod.
            self._start_sampler()
        return status

    # ---- what the running agent uses --------------------------------------------

    def _start_sampler(self) -> None:
        wanted = self.usage_interval > 0 and self.database_url and self.name
        if wanted and (self._sampler is None or self._sampler.done()):
            self._sampler = asyncio.ensure_future(self._sample_usage())

    async def _stop_sampler(self) -> None:
        sampler, self._sampler = self._sampler, None
        if sampler is None:
            return
        sampler.cancel()
        with contextlib.suppress(BaseException):
            await sampler
        with contextlib.suppress(Exception):
            store = await self.sac_store()
            agent = await store.agents.get(self.user.name, self.name)
            if agent is not None:
                await store.sandbox_usage.stopped(agent.id)

    async def _sample_usage(self) -> None:
        """Record what the pod uses every usage_interval while it runs, and tell the
        owner of each restart of its server: once, by the pod's uid and the restart's
        number, so neither a restarted hub nor a second sample tells twice."""
        store = await self.sac_store()
        agent = await store.agents.get(self.user.name, self.name)
        if agent is None:
            return
        told = 0
        while True:
            try:
                told = await self._sample_once(store, agent.id, told)
            except Exception:  # whatever went wrong, the next sample may go right
                self.log.exception("[%s] could not sample what its pod uses", self._log_name)
            await asyncio.sleep(self.usage_interval)

    async def _sample_once(self, store: Any, agent_id: int, told: int) -> int:
        """One sample of the pod, if it is there; the restarts told of so far."""
        reflector = self.pod_reflector
        pod = reflector.pods.get(f"{self.namespace}/{self.pod_name}") if reflector else None
        if pod is None:
            return told
        restarts, exit_code = container_restarts(pod)
        if restarts > told:
            await self.tell_owner_failed(
                "restart",
                f"The agent's server stopped (exit code {exit_code}) and was started"
                f" again in its pod: {restarts} restart{'' if restarts == 1 else 's'}"
                " since the agent started.",
                exit_code,
                dedupe_key=f"agent.restart:{pod['metadata']['uid']}:{restarts}",
            )
        cpu, memory, unavailable = await self._pod_metrics()
        sample = SandboxUsage(
            running=True,
            cpu_percent=round(cpu * 100, 1) if cpu is not None else None,
            memory_bytes=memory,
            unavailable=unavailable,
            restarts=restarts,
            limits=self._held_limits(pod),
        )
        await store.sandbox_usage.record(agent_id, sample)
        return max(told, restarts)

    def _held_limits(self, pod: dict[str, Any]) -> dict[str, Any]:
        """The limits the pod's container runs with (the kubelet enforces CPU and
        memory; processes and disk are not limited per pod here)."""
        containers = (pod.get("spec") or {}).get("containers") or [{}]
        limits = (containers[0].get("resources") or {}).get("limits") or {}
        held: dict[str, Any] = {"cpu": None, "memory": None, "processes": None, "disk": None}
        with contextlib.suppress(ValueError):
            held["cpu"] = parse_quantity(limits["cpu"]) if "cpu" in limits else None
            held["memory"] = int(parse_quantity(limits["memory"])) if "memory" in limits else None
        return held

    async def _pod_metrics(self) -> tuple[float | None, int | None, str | None]:
        """(CPU cores, memory bytes, why unavailable) from the metrics API."""
        api = shared_client("CustomObjectsApi")
        try:
            metrics = await api.get_namespaced_custom_object(
                METRICS_GROUP, METRICS_VERSION, self.namespace, "pods", self.pod_name
            )
        except ApiException as e:
            if e.status != 404:
                return None, None, f"the metrics API answered {e.status} {e.reason}"
            try:
                await api.get_api_resources(METRICS_GROUP, METRICS_VERSION)
            except ApiException as e:
                if e.status == 404:
                    return None, None, NO_METRICS_API
                return None, None, f"the metrics API answered {e.status} {e.reason}"
            return None, None, "no sample of this pod in the metrics API yet"
        except Exception as e:
            return None, None, f"the metrics API did not answer: {e}"
        try:
            cpu, memory = container_usage(metrics)
        except (ValueError, KeyError, TypeError) as e:
            return None, None, f"the metrics API's answer was not understood: {e}"
        return cpu, memory, None

    async def delete_forever(self) -> None:
        """The named server is removed: its PVC goes too when ``delete_pvc`` (the default)."""
        await self._delete_quietly("secret", self.agent_secret_name)
        if self.network_policy_enabled:
            await self._delete_quietly("network_policy", self.pod_name)
        await super().delete_forever()
