"""Every manifest KubeAgentSpawner produces, for a matrix of settings, against Kubernetes'
own schemas (kubernetes-validate, strict: unknown fields are errors) for several
Kubernetes versions; and the rules the manifests must keep (no secret in the pod,
hardened security context, resources from the settings, network policy)."""

from __future__ import annotations

import base64
import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import pytest
from traitlets.config import Config

from jupyter_sac.rules import settings as sac_settings
from jupyter_sac.spawner.kube import KubeAgentSpawner
from jupyter_sac.spawner.kube_manifests import describe_pod_failure
from jupyter_sac.spawner.kube_names import is_dns_label
from jupyter_sac.spawner.mixin import AgentContext
from jupyter_sac.store import AgentRecord
from sac_testing.kube_cluster import write_kubeconfig

KUBERNETES_VERSIONS = ["1.28.0", "1.31.0", "1.34.0", "1.37.0"]
HUB_TOKEN = "hub-api-token-5f1d8c0e2b7a"
AGENT_TOKEN = "sac-agent-Qm9vYmFyYmF6cXV4LXNlY3JldC10b2tlbi0xMjM"


@pytest.fixture(autouse=True)
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # KubeSpawner loads a client configuration when constructed (nothing is called
    # here). kubernetes_asyncio read $KUBECONFIG when it was imported, so point its
    # default at a kubeconfig of ours.
    from kubernetes_asyncio.config import kube_config

    path = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:9", "sac")
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))


def agent_context(
    user: str, slug: str, overrides: dict[str, Any], **granted: dict[str, str]
) -> AgentContext:
    now = datetime.now(UTC)
    record = AgentRecord(
        id=42, owner=user, slug=slug, display_name=slug, runtime="claude", provider="anthropic",
        model="claude-sonnet-4-5", base_url=None, encrypted_key=None, overrides={},
        created_at=now, updated_at=now,
    )  # fmt: skip
    # As a user-level override: agents may not ask for more than their user's values.
    resolved = sac_settings.resolve({}, overrides, {})
    return AgentContext(agent=record, resolved=resolved, token=AGENT_TOKEN, **granted)


async def manifests_for(
    options: dict[str, Any],
    overrides: dict[str, Any] | None = None,
    user: str = "alice",
    slug: str = "analyst",
    **granted: dict[str, str],
) -> tuple[KubeAgentSpawner, dict[str, dict[str, Any]]]:
    config = Config()
    for name, value in options.items():
        setattr(config.KubeAgentSpawner, name, value)
    config.KubeAgentSpawner.namespace = "sac"
    config.KubeAgentSpawner.credential_proxy_url = "http://hub:10101/services/sac/llm"
    user_obj = SimpleNamespace(name=user, id=7, url=f"/user/{user}/")
    # What JupyterHub passes: the user and the named server's database row.
    orm_spawner = SimpleNamespace(name=slug, server=None, display_name=slug)
    spawner = KubeAgentSpawner(_mock=True, config=config, user=user_obj, orm_spawner=orm_spawner)
    spawner.api_token = HUB_TOKEN
    spawner.use_agent(agent_context(user, slug, overrides or {}, **granted))
    return spawner, await spawner.agent_manifests()


MATRIX = list(
    itertools.product(
        [
            {},
            {
                "cpu_request": 0.5,
                "cpu_limit": 1.5,
                "mem_request": 2**30,
                "mem_limit": 6 * 2**30,
                "storage_quota_bytes": 20 * 2**30,
            },
        ],
        [
            {"workspace_storage": "pvc", "storage_class": "fast-ssd"},
            {"workspace_storage": "emptyDir"},
        ],
        [
            {},
            {
                "runtime_class_name": "gvisor",
                "node_selector": {"sac.example.org/pool": "agents"},
                "tolerations": [
                    {"key": "agents", "operator": "Equal", "value": "yes", "effect": "NoSchedule"}
                ],
            },
        ],
        [
            {"read_only_root_filesystem": True},
            {
                "read_only_root_filesystem": False,
                "egress_destinations": [
                    {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"port": 443}]}
                ],
                "allow_dns": False,
            },
        ],
    )
)


@pytest.mark.asyncio
@pytest.mark.parametrize("overrides,storage,placement,network", MATRIX)
async def test_manifests_validate_against_kubernetes_schemas(
    overrides: dict[str, Any],
    storage: dict[str, Any],
    placement: dict[str, Any],
    network: dict[str, Any],
) -> None:
    _, manifests = await manifests_for({**storage, **placement, **network}, overrides)
    expected = {"pod", "secret", "networkpolicy"} | (
        {"pvc"} if storage["workspace_storage"] == "pvc" else set()
    )
    assert set(manifests) == expected
    for manifest in manifests.values():
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(manifest, version, strict=True)

    pod = manifests["pod"]
    spec = pod["spec"]
    container = spec["containers"][0]

    # No credential in the pod: the Secret holds them, the pod refers to it.
    pod_text = json.dumps(pod)
    assert HUB_TOKEN not in pod_text and AGENT_TOKEN not in pod_text
    secret = manifests["secret"]
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"jupyterhub-api-token": HUB_TOKEN, "sac-agent-token": AGENT_TOKEN}
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert set(refs) == {
        "JUPYTERHUB_API_TOKEN",
        "JPY_API_TOKEN",
        "ANTHROPIC_API_KEY",
        "SAC_AGENT_TOKEN",
    }
    assert {r["name"] for r in refs.values()} == {secret["metadata"]["name"]}

    # Hardened security context.
    csc, psc = container["securityContext"], spec["securityContext"]
    assert psc["runAsNonRoot"] and csc["runAsNonRoot"] and csc["runAsUser"] != 0
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert csc["readOnlyRootFilesystem"] is network["read_only_root_filesystem"]
    assert spec["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # The home lives where the workspace does: on the agent's PVC (its .sac-home
    # folder), kept across stops and nodes, or in a pod-long emptyDir of its own.
    (home,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/home/sac"]
    if storage["workspace_storage"] == "pvc":
        assert home["name"] == mounts["/workspace"] and home["subPath"] == ".sac-home"
    else:
        assert "emptyDir" in volumes[home["name"]] and "subPath" not in home
        assert home["name"] != mounts["/workspace"]

    # Resources from the agent's resolved settings.
    resolved = sac_settings.resolve({}, overrides, {})
    resources = container["resources"]
    assert float(resources["limits"]["cpu"]) == resolved["cpu_limit"]
    assert float(resources["requests"]["cpu"]) == resolved["cpu_request"]
    assert int(resources["limits"]["memory"]) == resolved["mem_limit"]
    assert int(resources["requests"]["memory"]) == resolved["mem_request"]

    # Workspace: a PVC sized by the storage quota, or an emptyDir.
    workspace = volumes[mounts["/workspace"]]
    if storage["workspace_storage"] == "pvc":
        pvc = manifests["pvc"]
        assert workspace["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        assert (
            int(pvc["spec"]["resources"]["requests"]["storage"])
            == (resolved["storage_quota_bytes"])
        )
        assert pvc["spec"]["storageClassName"] == "fast-ssd"
    else:
        assert "emptyDir" in workspace

    # Placement.
    assert spec.get("runtimeClassName") == placement.get("runtime_class_name")
    assert spec.get("nodeSelector") == placement.get("node_selector")
    assert spec.get("tolerations") == placement.get("tolerations")

    # Labels and annotations name the user, agent and runtime.
    labels, annotations = pod["metadata"]["labels"], pod["metadata"]["annotations"]
    assert labels["sac.jupyter.org/user"] == "alice"
    assert labels["sac.jupyter.org/agent"] == "analyst"
    assert labels["sac.jupyter.org/runtime"] == "claude"
    assert annotations["sac.jupyter.org/agent-id"] == "42"
    assert pod["metadata"]["name"] == "sac-alice-analyst"

    # The network policy selects exactly this pod and allows only the listed peers.
    policy = manifests["networkpolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"] == {"sac.jupyter.org/sandbox": "sac-alice-analyst"}
    assert labels["sac.jupyter.org/sandbox"] == "sac-alice-analyst"
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    peers = [
        (r["to"][0].get("podSelector", {}).get("matchLabels"), r.get("ports"))
        for r in policy["egress"]
    ]
    assert ({"component": "hub"}, [{"port": 8081, "protocol": "TCP"}]) in peers
    assert ({"component": "hub"}, [{"port": 10101, "protocol": "TCP"}]) in peers
    dns = [r for r in policy["egress"] if {"port": 53, "protocol": "UDP"} in r.get("ports", [])]
    assert bool(dns) is network.get("allow_dns", True)
    for rule in network.get("egress_destinations", []):
        assert rule in policy["egress"]
    assert len(policy["egress"]) == 3 + bool(dns) + len(network.get("egress_destinations", []))
    ingress_from = [r["from"][0]["podSelector"]["matchLabels"] for r in policy["ingress"]]
    assert ingress_from == [{"component": "hub"}, {"component": "proxy"}]


@pytest.mark.asyncio
async def test_granted_secrets_reach_the_pod_by_reference_only() -> None:
    """A user's secrets granted to the agent: variables as references into the
    agent's Secret, files as a read-only Secret volume of only their keys; no value
    in the pod."""
    git, gcp = "ghp_kube-secret-value-1", '{"type": "service_account", "key": "k-2"}'
    _, manifests = await manifests_for(
        {}, secret_env={"GITHUB_TOKEN": git}, secret_files={"gcp.json": gcp}
    )
    for manifest in manifests.values():
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(manifest, version, strict=True)
    pod, secret = manifests["pod"], manifests["secret"]
    assert git not in json.dumps(pod) and "k-2" not in json.dumps(pod)
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded["env-GITHUB_TOKEN"] == git and decoded["file-gcp.json"] == gcp
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["GITHUB_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"],
        "key": "env-GITHUB_TOKEN",
    }
    assert env["SAC_SECRET_ENV"]["value"] == "GITHUB_TOKEN"
    assert env["SAC_SECRETS_DIR"]["value"] == "/run/sac-secrets"
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "sac-secrets"]
    assert volume["secret"]["items"] == [{"key": "file-gcp.json", "path": "gcp.json"}]
    assert volume["secret"]["defaultMode"] == 0o400
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "sac-secrets"]
    assert mount == {"name": "sac-secrets", "mountPath": "/run/sac-secrets", "readOnly": True}

    # Without grants: no volume, no variable.
    _, plain = await manifests_for({})
    assert "sac-secrets" not in json.dumps(plain["pod"])
    assert "SAC_SECRETS_DIR" not in json.dumps(plain["pod"])


@pytest.mark.parametrize(
    "user",
    ["alice", "Bob.Smith@example.org", "a-b", "x" * 70, "名前", "under_score"],
)
@pytest.mark.asyncio
async def test_odd_user_names_make_valid_objects(user: str) -> None:
    _, manifests = await manifests_for({}, user=user, slug="agent-with-a-rather-long-name-30")
    pod = manifests["pod"]
    assert is_dns_label(pod["metadata"]["name"])
    for manifest in manifests.values():
        kubernetes_validate.validate(manifest, KUBERNETES_VERSIONS[-1], strict=True)
    assert manifests["pod"]["metadata"]["annotations"]["sac.jupyter.org/user"] == user


def test_pod_failures_read_as_sentences() -> None:
    def pod(**state: Any) -> dict[str, Any]:
        status = {"name": "notebook", "image": "img:1", "restartCount": 2, **state}
        return {"status": {"phase": "Running", "containerStatuses": [status]}}

    assert describe_pod_failure(None) is None
    assert describe_pod_failure(pod(state={"running": {}})) is None
    # A first failed pull may be retried; the back-off is final for a spawn.
    assert describe_pod_failure(pod(state={"waiting": {"reason": "ErrImagePull"}})) is None
    pull = pod(state={"waiting": {"reason": "ImagePullBackOff", "message": "Back-off"}})
    assert describe_pod_failure(pull) == (
        "The agent's image 'img:1' could not be pulled (ImagePullBackOff): Back-off"
    )
    events = [
        {"reason": "Pulling", "message": 'Pulling image "img:1"'},
        {"reason": "Failed", "message": 'Failed to pull image "img:1": not found'},
        {"reason": "Failed", "message": "Error: ErrImagePull"},
    ]
    assert describe_pod_failure(pull, events) == (
        "The agent's image 'img:1' could not be pulled (ImagePullBackOff):"
        ' Failed to pull image "img:1": not found'
    )
    crash = pod(
        state={"waiting": {"reason": "CrashLoopBackOff"}},
        lastState={"terminated": {"exitCode": 1, "message": "Traceback: boom"}},
    )
    assert describe_pod_failure(crash) == (
        "The agent's server keeps crashing (exit code 1, 2 restarts). Its last output:\n"
        "Traceback: boom"
    )
    config = pod(
        state={"waiting": {"reason": "CreateContainerConfigError", "message": "no secret"}}
    )
    assert "could not be created" in (describe_pod_failure(config) or "")
    # Still starting (ContainerCreating) is not a failure.
    assert describe_pod_failure(pod(state={"waiting": {"reason": "ContainerCreating"}})) is None


def test_quantities_and_what_a_pod_uses_read_as_the_metrics_api_says() -> None:
    from jupyter_sac.spawner.kube_manifests import (
        container_restarts,
        container_usage,
        parse_quantity,
    )

    assert [parse_quantity(q) for q in ("250m", "123456789n", "1.5", "5k", "2e3")] == [
        0.25, 0.123456789, 1.5, 5000.0, 2000.0,
    ]  # fmt: skip
    assert [parse_quantity(q) for q in ("100Ki", "128Mi", "2Gi")] == [102400, 2**27, 2**31]
    for bad in ("", "x", "1Zi", "1..2", "m", "1Ki2", "--1"):
        with pytest.raises(ValueError, match="not a Kubernetes quantity"):
            parse_quantity(bad)
    metrics = {
        "kind": "PodMetrics",
        "containers": [
            {"name": "sidecar", "usage": {"cpu": "1", "memory": "1Gi"}},
            {"name": "notebook", "usage": {"cpu": "12500000n", "memory": "204800Ki"}},
        ],
    }
    assert container_usage(metrics) == (0.0125, 200 * 2**20)
    assert container_usage({"containers": []}) == (None, None)
    pod = {
        "status": {
            "containerStatuses": [
                {"name": "notebook", "restartCount": 2,
                 "lastState": {"terminated": {"exitCode": 137}}},
            ]
        }
    }  # fmt: skip
    assert container_restarts(pod) == (2, 137)
    assert container_restarts({"status": {}}) == (0, None)
    assert container_restarts(None) == (0, None)


@pytest.mark.asyncio
@pytest.mark.parametrize(("overrides", "storage", "placement", "network"), MATRIX[:4] + MATRIX[-2:])
async def test_a_spare_pod_has_the_agents_shape_and_nobodys_identity(
    overrides: dict[str, Any],
    storage: dict[str, Any],
    placement: dict[str, Any],
    network: dict[str, Any],
) -> None:
    import kubernetes_validate

    options = {**storage, **placement, **network, "warm_pods": 1}
    spawner, manifests = await manifests_for(options, overrides)
    shape = await spawner._spare_shape()
    assert shape is not None
    key, spare = shape
    for document in (spare.pod, *([spare.pvc] if spare.pvc else [])):
        kubernetes_validate.validate(document, "1.31.0", strict=True)
    agent_pod, pod = manifests["pod"], spare.pod
    # The shape: the same image, resources, security, placement and runtime.
    agent_container, container = agent_pod["spec"]["containers"][0], pod["spec"]["containers"][0]
    for field_name in ("image", "resources", "securityContext", "ports", "workingDir"):
        assert container.get(field_name) == agent_container.get(field_name), field_name
    for field_name in ("securityContext", "nodeSelector", "tolerations", "runtimeClassName",
                       "automountServiceAccountToken"):  # fmt: skip
        assert pod["spec"].get(field_name) == agent_pod["spec"].get(field_name), field_name
    # Nobody's: no name of the user or agent, no token, no Secret, stdin for the launcher.
    text = json.dumps(spare.pod) + json.dumps(spare.pvc)
    assert "alice" not in text and "analyst" not in text
    assert HUB_TOKEN not in text and AGENT_TOKEN not in text and "secretKeyRef" not in text
    assert container["stdin"] is True and container["stdinOnce"] is True
    assert "readinessProbe" not in container and pod["spec"]["restartPolicy"] == "Never"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes[mounts["/run/sac-secrets"]["name"]]["emptyDir"]["medium"] == "Memory"
    if storage["workspace_storage"] == "pvc":
        assert spare.pvc is not None
        assert spare.pvc["spec"] == manifests["pvc"]["spec"]
        assert mounts["/home/sac"]["subPath"] == ".sac-home"
    else:
        assert spare.pvc is None
    # Another agent of the same settings has the same shape; other resources do not.
    other, _ = await manifests_for(options, overrides, user="bob", slug="helper")
    assert (await other._spare_shape())[0] == key  # type: ignore[index]
    bigger, _ = await manifests_for(options, {**overrides, "mem_limit": 9 * 2**30})
    assert (await bigger._spare_shape())[0] != key  # type: ignore[index]


def test_an_assignment_carries_the_secrets_values_and_binds_the_spares_address() -> None:
    from jupyter_sac.spawner.kube_manifests import assignment_env, warm_network_policy

    env = assignment_env(
        [
            {"name": "JUPYTERHUB_SERVICE_URL", "value": "http://0.0.0.0:8888/user/a/b/"},
            {"name": "SAC_AGENT_TOKEN",
             "valueFrom": {"secretKeyRef": {"name": "s", "key": "sac-agent-token"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ],
        {"sac-agent-token": AGENT_TOKEN},
        "10.1.2.3",
    )  # fmt: skip
    assert env == {
        "JUPYTERHUB_SERVICE_URL": "http://10.1.2.3:8888/user/a/b/",
        "SAC_AGENT_TOKEN": AGENT_TOKEN,
    }
    import kubernetes_validate

    policy = warm_network_policy("sac-warm-pods", "sac", {"app.kubernetes.io/name": "jupyter-sac"})
    kubernetes_validate.validate(policy, "1.31.0", strict=True)
    assert policy["spec"]["ingress"] == [] and policy["spec"]["egress"] == []


@pytest.mark.asyncio
async def test_the_organisations_package_cache_is_mounted_read_only_in_agents_and_spares() -> None:
    import kubernetes_validate

    options = {"workspace_storage": "pvc", "warm_pods": 1, "shared_packages_claim": "org-packages"}
    spawner, manifests = await manifests_for(options)
    shape = await spawner._spare_shape()
    assert shape is not None
    for pod in (manifests["pod"], shape[1].pod):
        kubernetes_validate.validate(pod, "1.31.0", strict=True)
        container = pod["spec"]["containers"][0]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/opt/sac/packages"]
        assert mount["readOnly"] is True
        (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
        assert volume["persistentVolumeClaim"] == {"claimName": "org-packages", "readOnly": True}
    env = {e["name"]: e.get("value") for e in manifests["pod"]["spec"]["containers"][0]["env"]}
    assert env["PIP_FIND_LINKS"] == env["UV_FIND_LINKS"] == "/opt/sac/packages/wheels"
    # Without the setting, nothing of it.
    _, plain = await manifests_for({"workspace_storage": "pvc"})
    assert "PIP_FIND_LINKS" not in json.dumps(plain["pod"]) and "sac-packages" not in json.dumps(
        plain
    )
