"""Kubernetes manifests for an agent's sandbox: pure functions, no I/O.

KubeAgentSpawner builds the pod through KubeSpawner's own ``make_pod`` and
decorates it with what these functions return: the hardened security contexts,
the sandbox volumes, the token Secret and its ``valueFrom`` references, and the
agent's NetworkPolicy. Everything here is plain dicts in the Kubernetes API's
camelCase, so the tests can validate it against the real schemas.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from ..rules.secrets import SANDBOX_SECRETS_DIR

SANDBOX_HOME = "/home/sac"
SANDBOX_WORKSPACE = "/workspace"
# The agent's home on its workspace volume: /workspace/.sac-home in the sandbox
# (hidden: JupyterLab does not list it, the workspace sync never reads it).
HOME_SUBPATH = ".sac-home"

# Environment variables that carry a credential. They reach the pod only as
# valueFrom.secretKeyRef into the agent's Secret, never as literal values.
SECRET_ENV: dict[str, str] = {
    "JUPYTERHUB_API_TOKEN": "jupyterhub-api-token",
    "JPY_API_TOKEN": "jupyterhub-api-token",
    "ANTHROPIC_API_KEY": "sac-agent-token",
    "SAC_AGENT_TOKEN": "sac-agent-token",
}

# Statuses a kubelet reports for containers that will not become ready by waiting.
# ErrImagePull alone is not final: the kubelet retries a pull that failed once (a
# registry hiccup), and reports ImagePullBackOff when it has given up for now.
IMAGE_PULL_REASONS = frozenset({"ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
CONFIG_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})


def split_secret_env(
    env: Mapping[str, Any], secret_name: str, secret_env: Mapping[str, str] = SECRET_ENV
) -> tuple[dict[str, Any], dict[str, str]]:
    """Split ``env`` into the pod's env (secrets as ``valueFrom`` refs) and the Secret's data.

    Returns (pod env, {secret key: value}). Two variables with the same key must
    hold the same value (JupyterHub sets JPY_API_TOKEN to JUPYTERHUB_API_TOKEN).
    Values that are already EnvVar sources (dicts, from ``c.KubeSpawner.environment``)
    pass through.
    """
    pod_env: dict[str, Any] = {}
    data: dict[str, str] = {}
    for name, value in env.items():
        key = secret_env.get(name)
        if key is None or not isinstance(value, str):
            pod_env[name] = value
            continue
        if key in data and data[key] != value:
            raise ValueError(f"{name} differs from another variable stored as {key!r}")
        data[key] = value
        pod_env[name] = {"valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}}
    return pod_env, data


def granted_secret_keys(
    secret_env: Mapping[str, str], secret_files: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Where an agent's granted secrets go in its Secret: (variable -> the key its
    ``valueFrom`` names, {file key: value}). Variable keys are ``env-<NAME>``, file
    keys ``file-<name>`` (both within a Secret's key characters, and apart from the
    tokens' keys)."""
    env_keys = {name: f"env-{name}" for name in secret_env}
    file_data = {f"file-{name}": value for name, value in secret_files.items()}
    return env_keys, file_data


def secrets_volume(
    secret_name: str, files: Iterable[str], mount_path: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, volumeMount) that show the secrets granted as files at
    ``mount_path``: only the ``file-`` keys of the agent's Secret (never its
    tokens), read-only, mode 0400. A Secret volume is a tmpfs: the values never
    reach the node's disk."""
    volume = {
        "name": "sac-secrets",
        "secret": {
            "secretName": secret_name,
            "defaultMode": 0o400,
            "items": [{"key": f"file-{name}", "path": name} for name in sorted(files)],
        },
    }
    mount = {"name": "sac-secrets", "mountPath": mount_path, "readOnly": True}
    return volume, mount


def token_secret(
    name: str,
    namespace: str,
    data: Mapping[str, str],
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
) -> dict[str, Any]:
    """The agent's Secret (base64 ``data``, as the API server stores it)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": dict(labels),
            "annotations": dict(annotations),
        },
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in sorted(data.items())},
    }


def cpu_quantity(cores: float) -> str:
    """Cores as a Kubernetes CPU quantity in millicores (``0.25`` -> ``"250m"``)."""
    return f"{max(1, round(cores * 1000))}m"


def resource_traits(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """KubeSpawner's resource traits from the agent's resolved settings."""
    return {
        "cpu_guarantee": float(resolved["cpu_request"]),
        "cpu_limit": float(resolved["cpu_limit"]),
        "mem_guarantee": int(resolved["mem_request"]),
        "mem_limit": int(resolved["mem_limit"]),
    }


def security_contexts(
    uid: int, gid: int, fs_gid: int, read_only_root: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod securityContext, container securityContext) for an untrusted sandbox.

    Non-root, no privilege escalation, every capability dropped, the runtime's
    default seccomp profile, and (when the image allows) a read-only root
    filesystem: the writable paths are emptyDirs and the workspace volume.
    """
    pod = {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "fsGroup": fs_gid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": read_only_root,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    return pod, container


def shared_packages_volume(claim: str, mount_path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, volumeMount) of the organisation's package cache: a PVC an
    administrator fills (ReadOnlyMany or ReadWriteMany), read-only in every agent."""
    source = {"claimName": claim, "readOnly": True}
    volume = {"name": "sac-packages", "persistentVolumeClaim": source}
    return volume, {"name": "sac-packages", "mountPath": mount_path, "readOnly": True}


def sandbox_volumes(
    workspace_claim: str | None, tmp_size: str | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts): the workspace as the agent's PVC or an emptyDir,
    /tmp as an emptyDir, and the home on the same volume as the workspace.

    With a PVC the home is its ``HOME_SUBPATH`` folder (``subPath``, made by the
    kubelet at the first start), so Claude Code's config and transcripts (what
    ``--resume`` reads), the chat sessions, the history spool not uploaded yet
    and the user's own settings move with the volume: they survive a stop, an
    idle cull, a node drain and an image upgrade, as the workspace does. One
    volume per agent, not two: a node attaches a limited number of volumes.
    """
    tmp: dict[str, Any] = {"sizeLimit": tmp_size} if tmp_size else {}
    workspace: dict[str, Any] = (
        {"persistentVolumeClaim": {"claimName": workspace_claim}}
        if workspace_claim
        else {"emptyDir": {}}
    )
    volumes = [
        {"name": "sac-tmp", "emptyDir": tmp},
        {"name": "sac-workspace", **workspace},
    ]
    home: dict[str, Any] = {"name": "sac-workspace", "subPath": HOME_SUBPATH}
    if not workspace_claim:
        # Nothing is kept anyway: a home of its own, away from the workspace's files.
        volumes.insert(0, {"name": "sac-home", "emptyDir": {}})
        home = {"name": "sac-home"}
    mounts = [
        {**home, "mountPath": SANDBOX_HOME},
        {"name": "sac-tmp", "mountPath": "/tmp"},
        {"name": "sac-workspace", "mountPath": SANDBOX_WORKSPACE},
    ]
    return volumes, mounts


@dataclass(frozen=True)
class Peer:
    """Pods a sandbox may reach (egress) or be reached from (ingress), on some ports."""

    pod_selector: Mapping[str, str]
    ports: tuple[int, ...] = ()
    namespace_selector: Mapping[str, str] | None = None

    def rule(self, direction: str) -> dict[str, Any]:
        peer: dict[str, Any] = {"podSelector": {"matchLabels": dict(self.pod_selector)}}
        if self.namespace_selector is not None:
            peer["namespaceSelector"] = {"matchLabels": dict(self.namespace_selector)}
        rule: dict[str, Any] = {direction: [peer]}
        if self.ports:
            rule["ports"] = [{"port": p, "protocol": "TCP"} for p in self.ports]
        return rule


@dataclass(frozen=True)
class NetworkRules:
    egress: tuple[Peer, ...] = ()
    ingress: tuple[Peer, ...] = ()
    extra_egress: tuple[Mapping[str, Any], ...] = field(default=())
    allow_dns: bool = True


DNS_EGRESS: dict[str, Any] = {
    # kube-dns / CoreDNS in kube-system, whatever its labels in this distribution.
    "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
    "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
}


def network_policy(
    name: str,
    namespace: str,
    pod_labels: Mapping[str, str],
    rules: NetworkRules,
    labels: Mapping[str, str],
) -> dict[str, Any]:
    """The agent's NetworkPolicy: only the listed peers, DNS and configured destinations.

    Both directions are restricted, so anything not listed (other agents, the
    database, the cloud's metadata endpoint, the internet) is unreachable.
    """
    egress = [peer.rule("to") for peer in rules.egress]
    if rules.allow_dns:
        egress.append(DNS_EGRESS)
    egress += [dict(rule) for rule in rules.extra_egress]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "podSelector": {"matchLabels": dict(pod_labels)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [peer.rule("from") for peer in rules.ingress],
            "egress": egress,
        },
    }


def describe_pod_failure(
    pod: Mapping[str, Any] | None,
    events: Sequence[Mapping[str, Any]] = (),
    container: str = "notebook",
) -> str | None:
    """A sentence for the user when ``pod`` will not start by waiting longer, else None.

    Reads what a kubelet reports: image pull errors (with the registry's answer,
    which only the pod's ``events`` carry), configuration errors (a missing
    Secret), a crash loop, or a pod that failed outright.
    """
    if not pod:
        return None
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        return f"The agent's pod failed: {status.get('message') or status.get('reason') or ''}"
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") != container:
            continue
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason", "")
        message = waiting.get("message") or ""
        if reason in IMAGE_PULL_REASONS:
            pulls = [
                e.get("message", "")
                for e in events
                if e.get("reason") == "Failed" and "ailed to pull image" in e.get("message", "")
            ]
            detail = pulls[-1] if pulls else message
            return (
                f"The agent's image {cs.get('image', '')!r} could not be pulled ({reason}):"
                f" {detail}".rstrip(": ")
            )
        if reason in CONFIG_REASONS:
            return f"The agent's container could not be created ({reason}): {message}"
        if reason == "CrashLoopBackOff":
            last = (cs.get("lastState") or {}).get("terminated") or {}
            code = last.get("exitCode", "?")
            detail = (last.get("message") or "").strip()
            restarts = int(cs.get("restartCount", 0))
            text = (
                f"The agent's server keeps crashing (exit code {code},"
                f" {restarts} restart{'' if restarts == 1 else 's'})"
            )
            return f"{text}. Its last output:\n{detail}" if detail else text + "."
    return None


# ---- what a running pod uses ---------------------------------------------------------

QUANTITY_SUFFIXES: dict[str, Decimal] = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?$")


def parse_quantity(text: str) -> float:
    """A Kubernetes quantity as a plain number: ``"250m"`` -> 0.25 (cores),
    ``"123456789n"`` -> 0.123456789, ``"128Mi"`` -> 134217728 (bytes), ``"1e3"`` -> 1000.
    Raises ValueError for anything else."""
    match = QUANTITY.match(str(text).strip())
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    try:
        return float(Decimal(match.group(1)) * QUANTITY_SUFFIXES[match.group(2) or ""])
    except InvalidOperation:
        raise ValueError(f"not a Kubernetes quantity: {text!r}") from None


def container_usage(
    pod_metrics: Mapping[str, Any], container: str = "notebook"
) -> tuple[float | None, int | None]:
    """(CPU in cores, memory in bytes) of ``container`` in a ``PodMetrics`` object of
    the metrics API (``metrics.k8s.io``: the CPU rate over its window and the
    memory working set); None for what it does not hold."""
    for entry in pod_metrics.get("containers") or []:
        if entry.get("name") != container:
            continue
        usage = entry.get("usage") or {}
        cpu = parse_quantity(usage["cpu"]) if "cpu" in usage else None
        memory = int(parse_quantity(usage["memory"])) if "memory" in usage else None
        return cpu, memory
    return None, None


def container_restarts(
    pod: Mapping[str, Any] | None, container: str = "notebook"
) -> tuple[int, int | None]:
    """(restarts, last exit code) of ``container``: how often its kubelet restarted it
    in place (``restartCount``), and how its last run ended, if it ended."""
    for status in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            last = (status.get("lastState") or {}).get("terminated") or {}
            return int(status.get("restartCount") or 0), last.get("exitCode")
    return 0, None


# ---- warm pods ------------------------------------------------------------------------

# The volumes that are one agent's own (sandbox_volumes, secrets_volume).
AGENT_VOLUMES = frozenset({"sac-home", "sac-tmp", "sac-workspace", "sac-secrets"})

# A spare's label: the digest of its shape (pool_key), so a start finds spares of its
# own shape and a restarted hub finds the spares it made.
WARM_LABEL = "sac.jupyter.org/warm"


def warm_pod_manifest(
    agent_pod: Mapping[str, Any],
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    command: Sequence[str],
    env: Mapping[str, str],
    workspace_claim: str | None,
    tmp_size: str | None = None,
) -> dict[str, Any]:
    """A spare pod with an agent's shape but nobody's identity, from that agent's pod
    manifest (API JSON): the same image, resources, security contexts, node
    selection, tolerations and runtime class, so the spare fits the next agent of
    that shape. Of the agent it keeps nothing else: its own name and ``labels``, no
    annotations, ``env`` (no token, no secret), ``command`` (the pre-importing
    launcher, which waits on stdin for its assignment: ``stdin``/``stdinOnce``), its
    own workspace volume (``workspace_claim``: a fresh PVC, or an emptyDir), an
    in-memory folder for secret files written at assignment, no probes, no init or
    extra containers, and ``restartPolicy: Never`` (a spare or an assigned server
    that exits is replaced, never restarted without its assignment)."""
    pod = copy.deepcopy(dict(agent_pod))
    spec = pod["spec"]
    pod["metadata"] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    container = spec["containers"][0]
    container.update(
        command=list(command),
        args=[],
        env=[{"name": k, "value": v} for k, v in sorted(env.items())],
        stdin=True,
        stdinOnce=True,
    )
    for key in ("readinessProbe", "livenessProbe", "startupProbe", "lifecycle", "envFrom"):
        container.pop(key, None)
    volumes, mounts = sandbox_volumes(workspace_claim, tmp_size)
    volumes.append({"name": "sac-secrets", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}})
    mounts.append({"name": "sac-secrets", "mountPath": SANDBOX_SECRETS_DIR})
    # What the deployment mounts into every agent (the shared package cache, its own
    # volumes) stays; the agent's own volumes give way to the spare's.
    volumes += [v for v in spec.get("volumes") or [] if v["name"] not in AGENT_VOLUMES]
    mounts += [m for m in container.get("volumeMounts") or [] if m["name"] not in AGENT_VOLUMES]
    container["volumeMounts"] = mounts
    spec.update(volumes=volumes, containers=[container], restartPolicy="Never")
    for key in ("initContainers", "nodeName", "hostname", "subdomain"):
        spec.pop(key, None)
    return pod


def pool_key(warm_pod: Mapping[str, Any], pvc_spec: Mapping[str, Any] | None = None) -> str:
    """The digest of a spare's shape: everything but its name, labels and own volume's
    name, and its volume claim's spec (size, class). Starts whose agents' pods would
    differ anywhere else get spares of their own."""
    shape = copy.deepcopy(dict(warm_pod))
    shape["pvc"] = dict(pvc_spec or {})
    shape.pop("metadata", None)
    shape.pop("status", None)
    for volume in shape["spec"].get("volumes") or []:
        if "persistentVolumeClaim" in volume:
            volume["persistentVolumeClaim"]["claimName"] = ""
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()
    return digest[:16]


def assignment_env(
    pod_env: Sequence[Mapping[str, Any]], secret_data: Mapping[str, str], pod_ip: str
) -> dict[str, str]:
    """An agent's environment as its assignment to a spare carries it: the values its
    pod would have taken from its Secret written out (the assignment reaches only
    the spare's stdin), and the server bound to the spare's own address (0.0.0.0
    in a pod means that address)."""
    env: dict[str, str] = {}
    for var in pod_env:
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        ref = (var.get("valueFrom") or {}).get("secretKeyRef")
        if ref is not None and ref.get("key") in secret_data:
            env[var["name"]] = secret_data[ref["key"]]
    if "JUPYTERHUB_SERVICE_URL" in env:
        env["JUPYTERHUB_SERVICE_URL"] = env["JUPYTERHUB_SERVICE_URL"].replace(
            "//0.0.0.0:", f"//{pod_ip}:"
        )
    return env


def warm_network_policy(name: str, namespace: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """The spares' NetworkPolicy: nothing in, nothing out. A spare needs no network
    before its assignment (which reaches it through its stdin, pods/attach); the
    agent's own policy, made before the assignment is sent, then adds what the
    agent may reach (policies add up)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "podSelector": {"matchExpressions": [{"key": WARM_LABEL, "operator": "Exists"}]},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [],
        },
    }
