"""A small MCP server (stdio) that reads Jupyter notebooks for claude: the
notebooks under the working directory, and one notebook's cells as an outline
(sources, output kinds, errors) without the bulk of its outputs' data.

The notebook-analyst preset starts it as ``python3 -m
jupyter_sac.agent_templates.mcp_notebooks``. It speaks MCP's JSON-RPC over stdio
itself (newline-delimited messages) with the standard library only, so it runs in
any sandbox whatever MCP library version is installed, and it only reads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PROTOCOL_VERSION = "2025-06-18"
MAX_SOURCE_CHARS = 2000
MAX_NOTEBOOKS = 500
SKIPPED_DIRS = {".git", ".ipynb_checkpoints", "node_modules", "__pycache__", ".venv"}

TOOLS = [
    {
        "name": "list_notebooks",
        "description": "List the Jupyter notebooks (.ipynb) under the workspace, with their"
        " cell counts.",
        "inputSchema": {"type": "object", "properties": {}},
    },
    {
        "name": "notebook_outline",
        "description": "A notebook's cells in order: type, execution count, source (shortened),"
        " the kinds of its outputs and any error, without image or HTML data.",
        "inputSchema": {
            "type": "object",
            "properties": {"path": {"type": "string", "description": "the notebook's path"}},
            "required": ["path"],
        },
    },
]


def _inside(root: Path, raw: str) -> Path:
    path = (root / raw).resolve()
    if root.resolve() not in (path, *path.parents):
        raise ValueError(f"{raw!r} is outside the workspace")
    return path


def list_notebooks(root: Path) -> str:
    found = []
    for path in sorted(root.rglob("*.ipynb")):
        if SKIPPED_DIRS & set(path.relative_to(root).parts):
            continue
        try:
            cells = len(json.loads(path.read_text("utf-8")).get("cells", []))
        except (OSError, ValueError):
            cells = -1
        found.append(f"{path.relative_to(root)} ({cells} cells)" if cells >= 0 else str(path))
        if len(found) >= MAX_NOTEBOOKS:
            break
    return "\n".join(found) or "no notebooks"


def notebook_outline(root: Path, raw: str) -> str:
    notebook = json.loads(_inside(root, raw).read_text("utf-8"))
    lines = []
    for i, cell in enumerate(notebook.get("cells", [])):
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        if len(source) > MAX_SOURCE_CHARS:
            source = source[:MAX_SOURCE_CHARS] + " …"
        head = f"[{i}] {cell.get('cell_type', '?')}"
        if cell.get("execution_count") is not None:
            head += f" (executed {cell['execution_count']})"
        lines += [head, source]
        for output in cell.get("outputs", []):
            kind = output.get("output_type", "?")
            if kind == "error":
                lines.append(f"  error: {output.get('ename')}: {output.get('evalue')}")
            else:
                data = ", ".join(sorted(output.get("data", {}))) or output.get("name", "")
                lines.append(f"  output: {kind} {data}".rstrip())
    return "\n".join(lines) or "an empty notebook"


def handle(message: dict[str, Any], root: Path) -> dict[str, Any] | None:
    """The answer to one JSON-RPC message (None for a notification)."""
    method, mid = message.get("method"), message.get("id")
    if mid is None:
        return None
    if method == "initialize":
        result: dict[str, Any] = {
            "protocolVersion": (message.get("params") or {}).get(
                "protocolVersion", PROTOCOL_VERSION
            ),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "sac-notebooks", "version": "1"},
        }
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        params = message.get("params") or {}
        args = params.get("arguments") or {}
        try:
            if params.get("name") == "list_notebooks":
                text = list_notebooks(root)
            elif params.get("name") == "notebook_outline":
                text = notebook_outline(root, str(args.get("path", "")))
            else:
                raise ValueError(f"no tool {params.get('name')!r}")
            result = {"content": [{"type": "text", "text": text}]}
        except (OSError, ValueError) as e:
            result = {"content": [{"type": "text", "text": str(e)}], "isError": True}
    elif method == "ping":
        result = {}
    else:
        return {"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": "no method"}}
    return {"jsonrpc": "2.0", "id": mid, "result": result}


def main() -> None:
    root = Path.cwd()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            message = json.loads(line)
        except ValueError:
            continue
        answer = handle(message, root) if isinstance(message, dict) else None
        if answer is not None:
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
