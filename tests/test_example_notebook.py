"""docs/examples/drive-agents.ipynb runs top to bottom against the stack.

The notebook runs in a real kernel (nbclient) with the hub's URL and a fresh
user's token in its environment, as in an agent's JupyterLab; its agent uses the
scripted fake model (through the SAC_EXAMPLE_* variables the notebook reads), so
every answer below is the script's."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.stack

NOTEBOOK = Path(__file__).parent.parent / "docs" / "examples" / "drive-agents.ipynb"
CSV = "month,revenue\n" + "".join(f"2025-{m:02d},{100 + 5 * m}\n" for m in range(1, 13))


def outputs_text(cell: Any) -> str:
    """What a cell showed, as text: its stream output and plain-text results."""
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            parts.append(out["text"])
        elif out["output_type"] in ("execute_result", "display_data"):
            parts.append(out["data"].get("text/plain", ""))
    return "".join(parts)


def test_the_example_notebook_runs(stack: dict, fake: str, new_user, tmp_path: Path) -> None:
    user, hub = new_user("nb")
    slug = f"demo-{uuid.uuid4().hex[:6]}"
    replies = [
        # ask
        "I can explore data, write code and explain results.",
        # stream: a write and a command, each approved by the notebook's on_request
        {"text": "Creating the file.",
         "tool_use": {"name": "Write",
                      "input": {"file_path": "/workspace/sales.csv", "content": CSV}}},
        {"tool_use": {"name": "Bash", "input": {"command": "head -3 /workspace/sales.csv"}}},
        "sales.csv has 12 monthly rows.",
        # run_skill
        "Revenue grows by 5 a month, from 105 to 160.",
    ]  # fmt: skip
    httpx.delete(fake + "/_fake/script")
    assert httpx.post(fake + "/_fake/script", json={"replies": replies}).status_code == 204
    env = {
        **os.environ,
        "SAC_HUB_URL": stack["url"],
        "JUPYTERHUB_API_TOKEN": hub.token,
        "SAC_EXAMPLE_AGENT": slug,
        "SAC_EXAMPLE_PROVIDER": "custom",
        "SAC_EXAMPLE_BASE_URL": fake,
        "SAC_EXAMPLE_API_KEY": "sk-ant-real-provider-key-42",
    }
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel runs on the host, not in a sandbox (whose /etc/hosts names the
    # hub's, the service's and the user's hosts): *.localhost as a browser has it.
    nb.cells.insert(0, nbformat.v4.new_code_cell(
        "from jupyter_sac.localhost import resolve_localhost\nresolve_localhost()"
    ))  # fmt: skip
    client = NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    )
    try:
        client.execute(env=env)  # an error in any cell fails here, with its traceback
        check_outputs(nb, stack, user, slug)
    finally:
        hub.sac("DELETE", f"users/{user}/agents/{slug}")


def check_outputs(nb: Any, stack: dict, user: str, slug: str) -> None:
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(out["output_type"] != "error" for cell in code for out in cell.get("outputs", []))
    shown = {i: outputs_text(cell) for i, cell in enumerate(code)}
    everything = "\n".join(shown.values())

    def cell_with(source: str) -> str:
        (index,) = [i for i, cell in enumerate(code) if source in cell.source]
        return shown[index]

    assert f"agent {slug!r}, model settings: ['api_key', 'base_url', 'provider']" in everything
    assert f"connected to {stack['url']} as {user}" in everything
    started = cell_with("agent.start(progress=show_progress)")
    assert f"created {slug}" in started and "100%  Server ready" in started
    assert started.rstrip().endswith("state: running")
    assert "I can explore data, write code and explain results." in cell_with("agent.ask(")

    streamed = cell_with("agent.stream(")
    assert "🔧 Write /workspace/sales.csv" in streamed
    assert "🔧 Bash head -3 /workspace/sales.csv" in streamed
    assert "month,revenue | 2025-01,105 | 2025-02,110" in streamed
    assert "💬 sales.csv has 12 monthly rows." in streamed
    assert "approved so far: ['Write', 'Bash']" in streamed
    (root,) = (stack["data_dir"] / "agents").glob(f"*-{slug}")
    assert (root / "workspace" / "sales.csv").read_text() == CSV

    skills = cell_with("agent.run_skill(")
    assert "installed: ['summarise-csv']" in skills
    assert "refused: values.max_plots: at most 40" in skills
    assert "Revenue grows by 5 a month, from 105 to 160." in skills
    assert "recorded events in" in cell_with("agent.history_frame()")

    # Each widget is displayed as a widget, with a readable text form beside it.
    for source, summary in [
        ("AgentsPanel(sac)", "SAC agents at"),
        ("AgentChat(agent, session_id=answer.session_id)", f"Chat with {slug}"),
        ("\napprovals", "Waiting for approval"),
        ("SkillRunner(agent)", f"Skills of {slug}"),
    ]:
        (cell,) = [cell for cell in code if cell.source.rstrip().endswith(source)]
        (result,) = [o for o in cell.outputs if o["output_type"] == "execute_result"]
        assert "application/vnd.jupyter.widget-view+json" in result["data"], source
        assert result["data"]["text/plain"].startswith(summary), result["data"]
    # The widgets' state went into the notebook's metadata, as nbclient stores it.
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    assert json.dumps(state).count("ButtonModel") > 3
