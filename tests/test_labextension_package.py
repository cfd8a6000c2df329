"""The wheel ships the prebuilt JupyterLab extension, and it installs without node.

`make test` runs `make install` first, which builds the extension into
jupyter_sac/labextension; building the wheel must then use that tree (the build
hook skips npm) and the installed wheel must be a working JupyterLab extension.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILT = ROOT / "jupyter_sac" / "labextension"
SCHEMAS = sorted(p.name for p in (ROOT / "labextension" / "schema").glob("*.json"))
LABEXT = "share/jupyter/labextensions/jupyter-sac"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _no_node_path(tmp_path: Path) -> str:
    """A PATH holding only python: no node, no npm, no jupyter-builder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    (bin_dir / "python3").symlink_to(sys.executable)
    path = str(bin_dir)
    for tool in ("node", "npm", "jlpm", "jupyter-builder"):
        assert shutil.which(tool, path=path) is None, tool
    return path


def _run(cmd: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_wheel_ships_labextension_and_installs_without_node(tmp_path: Path) -> None:
    assert (BUILT / "static" / "style.js").is_file(), "run `make labextension` first"
    built_meta = json.loads((BUILT / "package.json").read_text())

    path = _no_node_path(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "PYTHON"))}
    env["PATH"] = path

    # The wheel, from the source tree, with no node on PATH: the prebuilt extension is used.
    wheel_dir = tmp_path / "wheel"
    _run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(wheel_dir)],
        env,
    )
    wheels = list(wheel_dir.glob("jupyter_sac-*.whl"))
    assert len(wheels) == 1, wheels
    wheel = wheels[0]

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        data = [n for n in names if ".data/data/" in n]
        prefix = data[0].split("/data/", 1)[0] + f"/data/{LABEXT}/"
        shipped = {n[len(prefix) :] for n in names if n.startswith(prefix)}
        assert "package.json" in shipped, sorted(shipped)
        assert "install.json" in shipped, sorted(shipped)
        assert any(re.fullmatch(r"static/remoteEntry\.[0-9a-f]+\.js", n) for n in shipped), sorted(
            shipped
        )
        for schema in SCHEMAS:
            assert f"schemas/jupyter-sac/{schema}" in shipped, (schema, sorted(shipped))
        # exactly the built tree (plus install.json), nothing from node_modules or lib
        on_disk = {p.relative_to(BUILT).as_posix() for p in BUILT.rglob("*") if p.is_file()}
        assert shipped == on_disk | {"install.json"}
        assert not [
            n for n in names if "node_modules" in n or n.startswith("jupyter_sac/labextension/")
        ]

        meta = json.loads(zf.read(prefix + "package.json"))
        assert meta["name"] == "jupyter-sac"
        assert meta["jupyterlab"]["_build"] == built_meta["jupyterlab"]["_build"]
        assert meta["jupyterlab"]["_build"]["load"] in shipped
        install = json.loads(zf.read(prefix + "install.json"))
        assert install["packageManager"] == "python"
        assert install["packageName"] == "jupyter-sac"

    # Install it into an empty prefix, still with no node on PATH. --ignore-installed:
    # otherwise pip uninstalls the venv's own (editable) jupyter-sac first.
    target = tmp_path / "prefix"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            "-q",
            "--prefix",
            str(target),
            str(wheel),
        ],
        env,
    )
    installed = target / LABEXT
    assert (installed / "package.json").is_file()
    assert (installed / meta["jupyterlab"]["_build"]["load"]).is_file()

    # JupyterLab finds it there: enabled, OK, installed by the python package.
    env["JUPYTER_PATH"] = str(target / "share" / "jupyter")
    jupyter = str(Path(sys.executable).parent / "jupyter")
    proc = _run([jupyter, "labextension", "list"], env, timeout=120)
    listing = ANSI.sub("", proc.stdout + proc.stderr)
    sections = re.split(r"^(\S.*)$", listing, flags=re.M)
    ours = [
        body
        for head, body in zip(sections[1::2], sections[2::2], strict=True)
        if Path(head.strip()) == installed.parent
    ]
    assert len(ours) == 1, listing
    version = re.escape(meta["version"])
    assert re.search(
        rf"^\s+jupyter-sac v{version} enabled OK \(python, jupyter-sac\)$", ours[0], re.M
    ), listing
