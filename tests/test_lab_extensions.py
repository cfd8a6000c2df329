"""JupyterLab in a sandbox loads extensions only from the image's read-only paths.

An agent can write its home. Jupyter would otherwise look there for federated
JupyterLab extensions (~/.local/share/jupyter/labextensions) and for server
configuration (~/.jupyter), so script a model wrote would run in the page of
whoever opens the agent's JupyterLab. Here an agent plants three such things
from inside its sandbox, its server restarts, and none of them is served.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import pytest
from helpers import HubApi, run_in_terminal, running_agent

pytestmark = pytest.mark.stack

PLANT = r"""
set -e
plant() {  # plant <labextensions dir> <name> <version>
  mkdir -p "$1/$2/static"
  printf '{"name": "%s", "version": "%s", "jupyterlab": {"_build": {"load": "static/remoteEntry.evil.js", "extension": "./extension"}}}' "$2" "$3" > "$1/$2/package.json"
  echo 'fetch("/hub/api/user")' > "$1/$2/static/remoteEntry.evil.js"
}
# 1. A new extension where JupyterLab looks for the user's.
plant ~/.local/share/jupyter/labextensions sac-evil-local 6.6.6
# 2. A copy of the SAC extension itself, to shadow the real one.
plant ~/.local/share/jupyter/labextensions jupyter-sac 6.6.6
# 3. Server configuration that adds a folder of extensions of its own.
plant ~/evil-labextensions sac-evil-config 6.6.6
mkdir -p ~/.jupyter
echo '{"LabApp": {"extra_labextensions_path": ["/home/sac/evil-labextensions"]}}' \
  > ~/.jupyter/jupyter_server_config.json
find ~/.local/share/jupyter/labextensions ~/evil-labextensions -name package.json | sort
"""


def page_config(html: str) -> dict:
    match = re.search(
        r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', html, re.S
    )
    assert match, html[:500]
    return json.loads(match.group(1))


def test_extensions_an_agent_writes_are_never_loaded(stack: dict) -> None:
    admin: HubApi = stack["admin"]
    user = f"ext{uuid.uuid4().hex[:6]}"
    with running_agent(admin, user, "lab", api_key="sk-unused-key") as client:
        planted = asyncio.run(run_in_terminal(stack["url"], client.token, user, "lab", PLANT))
        assert planted.count("package.json") == 3, planted
        # The agent's server starts again, as after any restart (or a crash).
        client.stop(user, "lab")
        client.start(user, "lab")

        lab = client.agent(user, "lab", "GET", "lab")
        assert lab.status_code == 200, lab.text[:300]
        config = page_config(lab.text)
        loaded = {ext["name"]: ext for ext in config["federated_extensions"]}
        assert not {"sac-evil-local", "sac-evil-config"} & set(loaded), sorted(loaded)
        # The SAC extension is the installation's own, not the agent's copy.
        assert "jupyter-sac" in loaded
        real = client.agent(user, "lab", "GET", "lab/extensions/jupyter-sac/package.json")
        assert real.status_code == 200 and real.json()["version"] != "6.6.6"
        for name in ("sac-evil-local", "sac-evil-config"):
            served = client.agent(
                user, "lab", "GET", f"lab/extensions/{name}/static/remoteEntry.evil.js"
            )
            assert served.status_code == 404, (name, served.status_code)
        # JupyterLab still works for the person: its settings and workspaces are
        # saved in the agent's home, as before.
        saved = client.agent(
            user, "lab", "PUT", "lab/api/settings/@jupyterlab/apputils-extension:themes",
            json={"raw": '{"theme": "JupyterLab Dark"}'},
        )  # fmt: skip
        assert saved.status_code == 204, saved.text
        settings = asyncio.run(
            run_in_terminal(
                stack["url"], client.token, user, "lab",
                "cat ~/.jupyter/lab/user-settings/@jupyterlab/apputils-extension/themes.jupyterlab-settings",
            )
        )  # fmt: skip
        assert "JupyterLab Dark" in settings
