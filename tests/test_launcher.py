"""What a warm sandbox's launcher imports before it knows its agent: everything a
server's start would import after the assignment, on the agent's clock."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# A server's start after the launcher's imports, in a process of its own (as in a
# sandbox), with the agent's extension active; it prints the modules it imported.
START_AFTER_PREIMPORT = """
import json, os, sys
from jupyter_sac.spawner import launcher
launcher._preimport()
before = set(sys.modules)
from jupyter_server.serverapp import ServerApp
from jupyter_sac.spawner.mixin import AgentSpawnerMixin
app = ServerApp()
app.initialize(
    argv=["--port=0", "--no-browser", f"--ServerApp.root_dir={os.environ['SAC_WORKSPACE']}",
          *AgentSpawnerMixin.sac_server_args(sys.prefix, os.environ["HOME"])],
    find_extensions=True,
)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_a_server_start_after_the_launcher_imports_no_heavy_module(tmp_path: Path) -> None:
    home, workspace = tmp_path / "home", tmp_path / "workspace"
    home.mkdir()
    workspace.mkdir()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "SAC_AGENT": "box",
        "SAC_WORKSPACE": str(workspace),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "PYTHONNOUSERSITE": "1",
    }
    out = subprocess.run(
        [sys.executable, "-c", START_AFTER_PREIMPORT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    imported = json.loads(out.stdout.strip().splitlines()[-1])
    heavy = ("IPython", "jupyter_server", "jupyterlab", "httpcore", "h11", "notebook_shim")
    late = [name for name in imported if name.split(".")[0] in heavy]
    assert late == [], f"imported after the assignment: {late}"


def test_the_hub_finds_the_pinned_claude_without_importing_its_sdk() -> None:
    """The spawner looks the CLI up at every start: importing claude-agent-sdk for
    that cost the hub's first start about a second on its event loop."""
    script = (
        "import json, sys\n"
        "import jupyter_sac.spawner.local\n"
        "from jupyter_sac.runtimes.claude import claude_binary\n"
        "print(json.dumps([claude_binary(), 'claude_agent_sdk' in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    binary, imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert binary.endswith("/_bundled/claude"), binary
    assert imported is False


def test_the_launcher_runs_no_other_program_and_loads_none_of_the_hubs_code(
    tmp_path: Path,
) -> None:
    """Every sandbox pays for what its launcher does before it is assigned, and a
    burst of new agents pays it on their clock: no node process (jupyterlab asks
    one for yarn's configuration as it is imported), and none of the hub's code
    (its spawner, database models, the store), which a sandbox never uses."""
    bin_dir, marker = tmp_path / "bin", tmp_path / "node-ran"
    bin_dir.mkdir()
    node = bin_dir / "node"
    node.write_text(f'#!/bin/sh\ntouch {marker}\nexec /usr/bin/node "$@"\n')
    node.chmod(0o755)
    script = (
        "import json, sys\n"
        "from jupyter_sac.spawner import launcher\n"
        "launcher._preimport()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONNOUSERSITE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    imported = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not marker.exists(), "the launcher started node"
    hubs = {"jupyter_sac.spawner.local", "jupyter_sac.spawner.mixin", "jupyter_sac.store",
            "jupyter_sac.service", "psycopg", "kubernetes_asyncio"}  # fmt: skip
    assert imported & hubs == set()
