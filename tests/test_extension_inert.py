"""The server extension is inert outside an agent's sandbox: installing the wheel
enables it for every Jupyter server in the environment, and a developer's own
server must keep its ~/.claude, its routes and JupyterLab's settings as they were."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from sac_testing.stack import poll_until

TOKEN = "inert-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyter_server(home: Path, extra_env: dict[str, str]) -> Iterator[str]:
    """This environment's own `jupyter server` (the wheel's config enables the
    extension), with HOME at ``home`` and no SAC_* variables but ``extra_env``."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAC_", "CLAUDE_"))}
    env.update({"HOME": str(home), "JUPYTER_RUNTIME_DIR": str(home / "runtime"), **extra_env})
    root = home / "work"
    root.mkdir()
    argv = [str(Path(sys.executable).parent / "jupyter-server"), f"--port={port}",
            "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.root_dir={root}", "--no-browser"]  # fmt: skip
    if os.geteuid() == 0:
        argv.append("--allow-root")
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"

    def up() -> bool:
        assert proc.poll() is None, (home / "server.log").read_text()
        try:
            return httpx.get(url + "api/status", params={"token": TOKEN}).status_code == 200
        except httpx.TransportError:
            return False

    try:
        poll_until(up, 60, "jupyter server")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()


@pytest.mark.parametrize("agent", [None, "helper"])
def test_outside_a_sandbox_it_serves_its_status_and_touches_nothing(
    tmp_path: Path, agent: str | None
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    # An agent's server also has the sandbox's config dir (as every spawner sets it).
    sandbox_config = f"{sys.prefix}/etc/jupyter-sac/sandbox"
    env = {"SAC_AGENT": agent, "JUPYTER_CONFIG_DIR": sandbox_config} if agent else {}
    with jupyter_server(home, env) as url:
        auth = {"Authorization": f"token {TOKEN}"}
        status = httpx.get(url + "sac/api/status", headers=auth)
        assert status.status_code == 200, status.text
        assert status.json()["versions"]["jupyter_sac"]
        activity = httpx.get(url + "sac/api/activity", headers=auth)
        lab = httpx.get(url + "lab", headers=auth)
        assert lab.status_code == 200
    if agent is None:
        # A developer's server: no Claude settings written, no agent routes.
        assert not (home / ".claude").exists()
        assert activity.status_code == 404
        # JupyterLab's own page config: announcements are the developer's to keep.
        assert "apputils-extension:announcements" not in lab.text
    else:
        # The same server as an agent's sandbox seeds Claude's settings (the
        # control that shows this test can see the difference).
        assert (home / ".claude" / "settings.json").exists()
        assert activity.status_code == 200
        # Sandboxes have no internet for JupyterLab's news: turned off there only.
        assert "apputils-extension:announcements" in lab.text
