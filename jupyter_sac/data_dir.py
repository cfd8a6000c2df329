"""Where the embedded stack keeps its state, for every process that needs to know
(`sac up`, the hub's spawner, the `sac` service) without importing one another."""

from __future__ import annotations

import os
from pathlib import Path


def default_data_dir() -> Path:
    """$SAC_DATA_DIR, else ~/.local/share/jupyter-sac."""
    return Path(os.environ.get("SAC_DATA_DIR") or "~/.local/share/jupyter-sac").expanduser()
