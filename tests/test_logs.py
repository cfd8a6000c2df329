"""JSON logs (jupyter_sac.logs): SAC_LOG_FORMAT=json makes the `sac` service write
one JSON object per line, its own records, other loggers' and tracebacks alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from jupyter_sac.server_extension.app import SacExtensionApp
from jupyter_sac.service.app import SacService

SCRIPT = textwrap.dedent(
    """
    import logging
    from jupyter_sac.service.app import SacService

    app = SacService()
    app.initialize([])
    app.log.warning("service says %s", "hello\\nworld")
    logging.getLogger("tornado.access").warning("a request")
    try:
        1 / 0
    except ZeroDivisionError:
        logging.getLogger("jupyter_sac.culler").exception("a pass failed")
    """
)


def run(env: dict[str, str]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={**os.environ, "JUPYTERHUB_API_TOKEN": "unused", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stderr.splitlines()


def test_the_service_writes_one_json_object_per_line_when_asked() -> None:
    lines = run({"SAC_LOG_FORMAT": "json"})
    records = [json.loads(line) for line in lines]  # every line is one object
    assert [(r["level"], r["logger"], r["message"]) for r in records] == [
        ("WARNING", "SacService", "service says hello\nworld"),
        ("WARNING", "tornado.access", "a request"),
        ("ERROR", "jupyter_sac.culler", "a pass failed"),
    ]
    for record in records:
        assert set(record) >= {"time", "level", "logger", "message"}
        assert record["time"].endswith("+00:00")
    assert "ZeroDivisionError" in records[2]["exception"]
    assert "Traceback" in records[2]["exception"]


def test_without_it_the_log_is_text_as_before() -> None:
    lines = run({"SAC_LOG_FORMAT": ""})
    assert any("service says hello" in line for line in lines)
    for line in lines:
        assert not line.startswith("{"), line


def test_the_traits_default_to_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("SAC_LOG_FORMAT", "JSON")
    assert SacService().log_json is True
    assert SacExtensionApp().log_json is True
    monkeypatch.delenv("SAC_LOG_FORMAT")
    assert SacService().log_json is False
    assert SacExtensionApp().log_json is False
