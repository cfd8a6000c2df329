"""The wheel as pip sees it: each part of SAC installs only what it runs.

The sandbox image must not carry the hub's database driver, the embedded
PostgreSQL or the Kubernetes client, nor the hub image JupyterLab and the claude
CLI (pyproject.toml says which part each extra is for). The wheel is built from
the source tree as `pip wheel` would, without build isolation (the test extra
has the build backend; `make install` has built the JupyterLab extension), and
its METADATA, entry points and files are read back. Each part's modules are
then imported with every package that its extra does not install out of reach.
"""

from __future__ import annotations

import configparser
import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from importlib.metadata import EntryPoint, packages_distributions
from pathlib import Path

import pytest
from jupyterhub.app import JupyterHub
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import jupyter_sac

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("hub", "sandbox", "kubernetes", "s3", "notebook", "embedded")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    assert (ROOT / "jupyter_sac" / "labextension" / "package.json").is_file(), (
        "run `make labextension` first"
    )
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("jupyter_sac-*.whl")
    with zipfile.ZipFile(built) as zf:
        yield zf


def dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    (path,) = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(path).decode()


def requirements(wheel: zipfile.ZipFile, extra: str | None) -> set[str]:
    """The distributions `pip install jupyter-sac[extra]` asks for (None: no extra)."""
    metadata = Parser().parsestr(dist_info(wheel, "METADATA"))
    names = set()
    for line in metadata.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is None or (extra and req.marker.evaluate({"extra": extra})):
            names.add(canonicalize_name(req.name))
    return names


def test_sandbox_extra_has_no_hub_parts(wheel: zipfile.ZipFile) -> None:
    sandbox = requirements(wheel, "sandbox")
    hub_only = {"pgserver", "jupyterhub-kubespawner", "kubernetes-asyncio", "psycopg",
                "psycopg-pool", "boto3", "jupyterhub-nativeauthenticator", "prometheus-client"}  # fmt: skip
    assert not sandbox & hub_only, sandbox & hub_only
    assert {"jupyterhub", "jupyter-server", "jupyterlab", "claude-agent-sdk", "pyte"} <= sandbox


def test_hub_extra_has_no_sandbox_parts(wheel: zipfile.ZipFile) -> None:
    hub = requirements(wheel, "hub")
    assert {"jupyterhub", "jupyterhub-nativeauthenticator", "bcrypt", "psycopg", "psycopg-pool",
            "cryptography", "jinja2", "prometheus-client", "python-multipart"} <= hub  # fmt: skip
    elsewhere = {"jupyterlab", "jupyter-server", "claude-agent-sdk", "ipywidgets", "pgserver",
                 "jupyterhub-kubespawner", "boto3"}  # fmt: skip
    assert not hub & elsewhere, hub & elsewhere
    kubernetes = requirements(wheel, "kubernetes")
    assert hub | {"jupyterhub-kubespawner", "kubernetes-asyncio"} <= kubernetes
    assert "jupyterlab" not in kubernetes


def test_base_is_what_every_part_imports(wheel: zipfile.ZipFile) -> None:
    # jsonschema: both APIs validate requests against their documents (jupyter_sac.contract);
    # click: the `sac` command, the package's entry point (jupyter_sac.cli)
    assert requirements(wheel, None) == {
        "traitlets", "tornado", "httpx", "pyyaml", "jsonschema", "click"
    }  # fmt: skip
    # ...which travel in the wheel beside the code that loads them
    names = set(wheel.namelist())
    assert {
        "jupyter_sac/service/openapi.yaml",
        "jupyter_sac/server_extension/openapi.yaml",
    } <= names
    notebook = requirements(wheel, "notebook")
    assert "ipywidgets" in notebook and "jupyterhub" not in notebook
    assert {"boto3", "botocore"} <= requirements(wheel, "s3")


def test_all_is_every_part(wheel: zipfile.ZipFile) -> None:
    every_part = set().union(*(requirements(wheel, part) for part in PARTS))
    assert requirements(wheel, "all") == every_part
    # `make up` (sac up) runs the hub, local sandboxes and the embedded PostgreSQL.
    embedded = requirements(wheel, "embedded")
    assert requirements(wheel, "hub") | requirements(wheel, "sandbox") | {"pgserver"} <= embedded


def test_entry_points_name_the_spawners_and_the_authenticator(wheel: zipfile.ZipFile) -> None:
    parser = configparser.ConfigParser()
    parser.read_string(dist_info(wheel, "entry_points.txt"))
    assert dict(parser["console_scripts"]) == {"sac": "jupyter_sac.cli:main"}
    # JupyterHub loads these by name: c.JupyterHub.spawner_class = "sac-local".
    expected = {
        ("jupyterhub.spawners", "sac-local"): "LocalAgentSpawner",
        ("jupyterhub.spawners", "sac-kubernetes"): "KubeAgentSpawner",
        ("jupyterhub.authenticators", "sac-native"): "SacNativeAuthenticator",
    }
    found = {(group, name) for group in parser.sections() if group.startswith("jupyterhub.")
             for name in parser[group]}  # fmt: skip
    assert found == set(expected)
    for (group, name), class_name in expected.items():
        loaded = EntryPoint(name, parser[group][name], group).load()
        assert loaded.__name__ == class_name
    # ... and JupyterHub resolves the names (from the installed distribution's entry points).
    hub = JupyterHub(spawner_class="sac-kubernetes", authenticator_class="sac-native")
    assert hub.spawner_class.__name__ == "KubeAgentSpawner"
    assert hub.authenticator_class.__name__ == "SacNativeAuthenticator"
    assert JupyterHub(spawner_class="sac-local").spawner_class.__name__ == "LocalAgentSpawner"


def test_wheel_has_the_labextension_and_no_test_fakes(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    (path,) = jupyter_sac._jupyter_labextension_paths()
    shared = f"share/jupyter/labextensions/{path['dest']}/"
    assert any(n.endswith(shared + "package.json") for n in names)
    assert any(n.endswith(shared + "install.json") for n in names)
    # `jupyter labextension develop` finds the built extension in the source tree.
    assert (Path(jupyter_sac.__file__).parent / path["src"] / "package.json").is_file()
    assert not [n for n in names if n.startswith(("jupyter_sac/testing/", "sac_testing/"))]
    assert "jupyter_sac/server_extension/__init__.py" in names


# What each part's process imports; its extra (and the base) must cover it.
PART_ENTRY_MODULES: dict[str | None, list[str]] = {
    None: ["jupyter_sac", "jupyter_sac.cli", "jupyter_sac.client", "jupyter_sac.localhost"],
    "sandbox": ["jupyter_sac.server_extension", "jupyter_sac.runtimes.claude"],
    "hub": [
        "jupyter_sac.hubconfig",
        "jupyter_sac.auth",
        "jupyter_sac.service.app",
        "jupyter_sac.spawner",
    ],
    "kubernetes": ["jupyter_sac.spawner.kube"],
    "notebook": ["jupyter_sac.widgets"],
}

# Runs in a fresh interpreter: any import that a jupyter_sac module makes of a
# package outside the part's extra fails, as it would where only that extra is installed.
ONLY_THE_EXTRA = """
import json, sys
blocked, modules = json.loads(sys.argv[1])

class OutsideTheExtra:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] not in blocked:
            return None
        frame = sys._getframe(1)
        while frame and frame.f_code.co_filename.startswith("<frozen"):
            frame = frame.f_back
        importer = frame.f_globals.get("__name__", "") if frame else ""
        if importer.split(".")[0] == "jupyter_sac":
            raise ImportError(f"{importer} imports {name}, which its extra does not install")
        return None

sys.meta_path.insert(0, OutsideTheExtra())
for module in modules:
    __import__(module)
"""


@pytest.mark.parametrize("part", list(PART_ENTRY_MODULES), ids=str)
def test_each_part_imports_only_its_extra(wheel: zipfile.ZipFile, part: str | None) -> None:
    declared = set().union(*(requirements(wheel, extra) for extra in PARTS))
    outside = declared - requirements(wheel, part)
    blocked = sorted(
        module
        for module, dists in packages_distributions().items()
        if {canonicalize_name(d) for d in dists} & outside
    )
    assert blocked
    proc = subprocess.run(
        [sys.executable, "-c", ONLY_THE_EXTRA, json.dumps([blocked, PART_ENTRY_MODULES[part]])],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
