"""The deployment files: the two Dockerfiles and the zero-to-jupyterhub values.

No Docker engine and no Helm here, so the images are not built and the chart is
not rendered (docs/kubernetes.md says so). These tests check what can be checked
offline: pinned versions agree with pyproject.toml and the Makefile, the images
run as a non-root user with a HEALTHCHECK, the values parse, their Python
(extraConfig, the service's config file) compiles and configures a real
traitlets Config, and no credential is written in them.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from traitlets.config import Config

from jupyter_sac.service.forwarded import PRIVATE_NETWORKS, TrustedProxies
from sac_testing.z2jh import helm_merge, violations

ROOT = Path(__file__).resolve().parent.parent
IMAGES = {name: ROOT / "images" / name / "Dockerfile" for name in ("sandbox", "hub")}
VALUES = ROOT / "hub_config" / "z2jh-values.yaml"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined, out = "", []
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") and not joined:
            continue
        if line.rstrip().endswith("\\"):
            joined += line.rstrip()[:-1] + " "
            continue
        joined += line
        if joined.strip():
            word, _, rest = joined.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        joined = ""
    return out


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def args(steps: list[tuple[str, str]]) -> dict[str, str]:
    return dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)


def pyproject_requirements() -> dict[str, Requirement]:
    """The base dependencies and every extra's, without the extras that name others."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [
        line for extra in project["optional-dependencies"].values() for line in extra
    ]
    reqs = [Requirement(line) for line in lines]
    return {r.name: r for r in reqs if r.name != project["name"]}


def pyproject_extras() -> set[str]:
    return set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_image_runs_as_non_root_with_a_healthcheck(name: str) -> None:
    steps = instructions(IMAGES[name])
    stage = final_stage(steps)
    defaults = {**args(steps), **args(stage)}
    users = [rest for word, rest in stage if word == "USER"]
    assert users, "the final stage must switch to a non-root USER"
    user = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], users[-1])
    assert user not in ("root", "0") and not user.startswith("0:"), user
    assert any(word == "HEALTHCHECK" for word, _ in stage)
    assert any(word == "ENTRYPOINT" and "tini" in rest for word, rest in stage)
    # Every file the build copies from the source tree exists.
    for word, rest in steps:
        if word == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_image_build_stage_has_what_the_wheel_build_needs(name: str) -> None:
    """The wheel's build hooks build the JupyterLab extension (npm, rspack on Node
    20.19+) and add it with hatch_build.py: the build stage must have them."""
    steps = instructions(IMAGES[name])
    copied = {src for word, rest in steps if word == "COPY" and not rest.startswith("--from")
              for src in rest.split()[:-1]}  # fmt: skip
    assert {"labextension", "hatch_build.py", "pyproject.toml"} <= copied
    assert any(word == "COPY" and rest.startswith("--from=node") and "bin/node" in rest
               for word, rest in steps)  # fmt: skip
    node = args(steps)["NODE_VERSION"]
    assert tuple(int(x) for x in node.split(".")[:2]) >= (20, 19), node
    hooks = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]
    assert hooks["build"]["targets"]["wheel"]["hooks"]["custom"]["path"] == "hatch_build.py"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "jupyter_sac/labextension" in ignored and "**/node_modules" in ignored


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_image_versions_are_pinned_and_match_pyproject(name: str) -> None:
    steps = instructions(IMAGES[name])
    versions = {k: v for k, v in args(steps).items() if k.endswith("_VERSION")}
    assert versions
    for key, value in versions.items():
        assert re.fullmatch(r"\d+(\.\d+)+", value), f"{key}={value} is not an exact version"
    base = args(steps)["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base
    requirements = pyproject_requirements()
    by_arg = {
        "JUPYTERHUB_VERSION": "jupyterhub",
        "JUPYTERLAB_VERSION": "jupyterlab",
        "CLAUDE_AGENT_SDK_VERSION": "claude-agent-sdk",
        "KUBESPAWNER_VERSION": "jupyterhub-kubespawner",
    }
    for key, package in by_arg.items():
        if key in versions:
            assert Version(versions[key]) in requirements[package].specifier, (key, package)
    # The claude CLI is pinned by its wheel: exactly the version the tests run.
    if "CLAUDE_AGENT_SDK_VERSION" in versions:
        assert str(requirements["claude-agent-sdk"].specifier) == (
            f"=={versions['CLAUDE_AGENT_SDK_VERSION']}"
        )
    if "CHP_VERSION" in versions:
        makefile = (ROOT / "Makefile").read_text()
        assert f"CHP_VERSION := {versions['CHP_VERSION']}" in makefile
    # Every package installed with pip is the wheel just built or an exact pin.
    for word, rest in final_stage(steps):
        if word == "RUN" and "pip install" in rest:
            for spec in re.findall(r'"([^"]+)"', rest):
                assert "==" in spec or spec.startswith("${wheel}["), spec


@pytest.mark.parametrize(
    ("name", "extras"),
    [("sandbox", {"sandbox", "notebook"}), ("hub", {"hub", "kubernetes", "s3"})],
)
def test_image_installs_only_its_part_of_the_wheel(name: str, extras: set[str]) -> None:
    """The sandbox image carries no hub parts and the hub image no sandbox parts
    (tests/test_packaging.py checks what each extra pulls in)."""
    installs = [rest for word, rest in final_stage(instructions(IMAGES[name]))
                if word == "RUN" and "pip install" in rest]  # fmt: skip
    assert len(installs) == 1, installs
    assert re.search(r"wheel=\$\(echo /wheels/jupyter_sac-\*\.whl\)", installs[0])
    (wanted,) = re.findall(r'"\$\{wheel\}\[([^\]]*)\]"', installs[0])
    assert set(wanted.split(",")) == extras
    assert extras <= pyproject_extras()


def load_values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text())


def test_values_extra_config_configures_the_hub() -> None:
    values = load_values()
    c = Config()
    # The chart has configured its own services and roles before extraConfig runs.
    c.JupyterHub.services = [{"name": "other", "api_token": "x"}]
    c.JupyterHub.load_roles = [{"name": "chart-role", "scopes": ["read:users"]}]
    # ... and applied hub.config (the chart's jupyterhub_config.py does that first).
    for app, section in values["hub"]["config"].items():
        c[app].update(section)
    for name, snippet in sorted(values["hub"]["extraConfig"].items()):
        exec(compile(snippet, f"extraConfig/{name}", "exec"), {"c": c})
    assert c.JupyterHub.spawner_class == "jupyter_sac.spawner.KubeAgentSpawner"
    assert c.JupyterHub.allow_named_servers is True
    assert c.JupyterHub.cleanup_servers is False
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert set(services) == {"other", "sac"}
    sac = services["sac"]
    assert sac["url"] == "http://hub:10101"
    assert sac["command"][-2:] == [
        "--config",
        values["hub"]["extraFiles"]["sac-service-config"]["mountPath"],
    ]
    # The service's idle culler reaches agents through the proxy's in-cluster Service.
    assert sac["environment"]["SAC_PROXY_URL"] == "http://proxy-public/"
    # Subdomains: the hub, the service and each user on their own host; pods use
    # the public names through the proxy's Service.
    domain = "jupyter.example.org"
    assert c.JupyterHub.subdomain_host == f"https://{domain}"
    assert c.KubeAgentSpawner.hub_public_url == f"https://{domain}/"
    assert c.KubeAgentSpawner.sac_service_public_url == (
        f"https://sac--service.{domain}/services/sac/"
    )
    assert c.KubeAgentSpawner.sandbox_proxy_url == "http://proxy-public/"
    # The ingress serves the hub's host and every subdomain, with one wildcard certificate.
    ingress = values["ingress"]
    assert ingress["enabled"] is True
    assert set(ingress["hosts"]) == {domain, f"*.{domain}"}
    assert {h for tls in ingress["tls"] for h in tls["hosts"]} == {domain, f"*.{domain}"}
    # The proxy pod is on the pod network: its X-Forwarded-For is believed there.
    trusted = TrustedProxies(sac["environment"]["SAC_TRUSTED_PROXIES"].split(","))
    assert trusted.trusts("10.42.0.17") and trusted.trusts("192.168.3.4")
    assert not trusted.trusts("203.0.113.9")
    roles = {r["name"] for r in c.JupyterHub.load_roles}
    assert {"chart-role", "user", "sac-service", "sac-admin"} <= roles
    assert c.KubeAgentSpawner.credential_proxy_url == "http://hub:10101/services/sac/llm"
    # The port agents may reach in their NetworkPolicy is the one the hub's Service opens.
    extra_ports = {p["port"] for p in values["hub"]["service"]["extraPorts"]}
    assert set(c.KubeAgentSpawner.sac_service_ports) <= extra_ports
    ingress_ports = {
        p["port"] for rule in values["hub"]["networkPolicy"]["ingress"] for p in rule["ports"]
    }
    assert extra_ports <= ingress_ports


def test_values_service_config_sets_the_object_store(monkeypatch: pytest.MonkeyPatch) -> None:
    values = load_values()
    monkeypatch.setenv("SAC_S3_BUCKET", "bucket-from-env")
    monkeypatch.setenv("SAC_S3_ENDPOINT_URL", "https://s3.internal")
    source = values["hub"]["extraFiles"]["sac-service-config"]["stringData"]
    c = Config()
    exec(compile(source, "sac_service_config.py", "exec"), {"c": c})
    assert c.SacService.ip == "0.0.0.0"
    assert c.SacService.object_store == "s3"
    assert c.S3Store.bucket == "bucket-from-env"
    assert c.S3Store.endpoint_url == "https://s3.internal"


def test_values_hold_no_credentials_and_keep_agents_confined() -> None:
    values = load_values()
    for name, env in values["hub"]["extraEnv"].items():
        if re.search(r"KEY|PASSWORD|TOKEN|SECRET|DATABASE_URL", name):
            assert isinstance(env, dict) and "secretKeyRef" in env["valueFrom"], name
    assert "password" not in (values["hub"]["db"] or {})
    assert ":" not in values["hub"]["db"]["url"].split("@")[0].split("//")[1]
    single = values["singleuser"]
    # The chart's own singleuser NetworkPolicy would add (allow) internet egress.
    assert single["networkPolicy"]["enabled"] is False
    assert single["storage"]["type"] == "none"
    assert single["cloudMetadata"]["blockWithIptables"] is False
    assert single["uid"] != 0
    # SAC's service culls idle agents; the chart's culler would not know HITL or chat turns.
    assert values["cull"]["enabled"] is False


def test_helm_merge_and_schema_check() -> None:
    defaults = {"hub": {"db": {"type": "sqlite-pvc", "url": None}, "image": {"tag": "x"}}}
    values = {"hub": {"db": {"type": "postgres"}, "image": None}}
    assert helm_merge(defaults, values) == {"hub": {"db": {"type": "postgres", "url": None}}}
    schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "hub": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"db": {"type": "object"}, "image": {"type": "object"}},
            }
        },
    }
    assert violations(schema, defaults, values) == []
    assert violations(schema, defaults, {"hub": {"bogus": 1}}) == [
        "hub: Additional properties are not allowed ('bogus' was unexpected)"
    ]


def test_extra_hub_rbac_validates_and_covers_what_the_spawner_does_beyond_the_chart() -> None:
    import kubernetes_validate

    documents = list(yaml.safe_load_all((ROOT / "hub_config" / "sac-hub-rbac.yaml").read_text()))
    for document in documents:
        kubernetes_validate.validate(document, "1.31.0", strict=True)
    (role,) = [d for d in documents if d["kind"] == "Role"]
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    # KubeAgentSpawner creates, deletes (and on a name clash deletes then re-creates).
    assert {"create", "delete"} <= rules[("networking.k8s.io",), ("networkpolicies",)]
    # ... and reads what agents' pods use, nothing more of the metrics API.
    assert rules[("metrics.k8s.io",), ("pods",)] == {"get"}
    # Spare pods: a spare and its PVC become the agent's (labels), and the assignment
    # reaches the spare's stdin; nothing else (no exec, no update of specs).
    assert rules[("",), ("pods", "persistentvolumeclaims")] == {"patch"}
    assert rules[("",), ("pods/attach",)] == {"get", "create"}
    assert len(rules) == 4


SERVICE_DEPLOYMENT = ROOT / "hub_config" / "sac-service.yaml"
REPLICAS_VALUES = ROOT / "hub_config" / "z2jh-values-service-replicas.yaml"


def service_objects() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(SERVICE_DEPLOYMENT.read_text())}


def service_container_env() -> dict[str, Any]:
    (container,) = service_objects()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_the_service_deployment_validates_probes_health_and_holds_no_credential() -> None:
    import kubernetes_validate

    objects = service_objects()
    assert set(objects) == {
        "ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy",
    }  # fmt: skip
    for document in objects.values():
        kubernetes_validate.validate(document, "1.31.0", strict=True)
    deployment = objects["Deployment"]
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert objects["Service"]["spec"]["selector"] == selector
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector
    assert objects["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"] == selector
    (container,) = pod["spec"]["containers"]
    (port,) = container["ports"]
    (service_port,) = objects["Service"]["spec"]["ports"]
    assert service_port["targetPort"] == port["name"] and port["containerPort"] == 10101
    # Load balancers and Kubernetes ask the service itself (issue 23): alive while it
    # answers, ready while PostgreSQL, the object store and the hub answer it.
    assert container["livenessProbe"]["httpGet"]["path"] == "/services/sac/api/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/services/sac/api/health/ready"
    assert container["startupProbe"]["httpGet"]["path"] == "/services/sac/api/health"
    # Every credential from a Secret; none written here.
    for name, value in service_container_env().items():
        if re.search(r"KEY|PASSWORD|TOKEN|SECRET|DATABASE_URL", name):
            assert isinstance(value, dict) and "secretKeyRef" in value, name
    # The same service configuration as the hub-managed one in the values.
    (config_text,) = objects["ConfigMap"]["data"].values()
    assert config_text == load_values()["hub"]["extraFiles"]["sac-service-config"]["stringData"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert container["command"][-1] == (
        f"{mounts['config']}/{next(iter(objects['ConfigMap']['data']))}"
    )


def test_replicas_values_register_the_deployment_with_the_hub(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = helm_merge(load_values(), yaml.safe_load(REPLICAS_VALUES.read_text()))
    # The hub no longer holds the object store's keys, nor the service's config file.
    assert "AWS_SECRET_ACCESS_KEY" not in values["hub"]["extraEnv"]
    assert "sac-service-config" not in (values["hub"].get("extraFiles") or {})
    assert values["hub"]["extraEnv"]["SAC_SERVICE_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "sac-service-token", "key": "token",
    }  # fmt: skip
    env = service_container_env()
    assert env["JUPYTERHUB_API_TOKEN"]["secretKeyRef"] == {
        "name": "sac-service-token", "key": "token",
    }  # fmt: skip

    def configure() -> Config:
        c = Config()
        for app, section in values["hub"]["config"].items():
            c[app].update(section)
        for name, snippet in sorted(values["hub"]["extraConfig"].items()):
            exec(compile(snippet, f"extraConfig/{name}", "exec"), {"c": c})
        return c

    monkeypatch.delenv("SAC_SERVICE_API_TOKEN", raising=False)
    with pytest.raises(ValueError, match="SAC_SERVICE_API_TOKEN"):
        configure()
    monkeypatch.setenv("SAC_SERVICE_API_TOKEN", "token-of-the-replicas")
    c = configure()
    (sac,) = [s for s in c.JupyterHub.services if s["name"] == "sac"]
    objects = service_objects()
    service = objects["Service"]
    url = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    assert sac["url"] == url and sac["api_token"] == "token-of-the-replicas"
    assert "command" not in sac and "environment" not in sac
    assert c.KubeAgentSpawner.credential_proxy_url == f"{url}/services/sac/llm"
    assert c.KubeAgentSpawner.sac_service_url == f"{url}/services/sac/"
    # Agents' NetworkPolicy lets them reach the replicas' pods, on the Service's port.
    pod_labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert c.KubeAgentSpawner.sac_service_pod_selector.items() <= pod_labels.items()
    assert c.KubeAgentSpawner.sac_service_ports == [service["spec"]["ports"][0]["port"]]
    # ... and the replicas' NetworkPolicy admits agents (they carry the chart's label).
    admitted = [p["podSelector"]["matchLabels"]
                for rule in objects["NetworkPolicy"]["spec"]["ingress"] for p in rule["from"]]  # fmt: skip
    assert {"hub.jupyter.org/network-access-hub": "true"} in admitted
    # What the hub started the managed service with, the replicas get too.
    assert env["SAC_PROXY_URL"] == "http://proxy-public/"
    assert env["SAC_TRUSTED_PROXIES"] == ",".join(PRIVATE_NETWORKS)
    assert env["JUPYTERHUB_SERVICE_URL"] == url
