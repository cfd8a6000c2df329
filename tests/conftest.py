"""Fixtures that start real parts: PostgreSQL, the fake Anthropic API, the whole stack."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from helpers import HubApi

ADMIN_PASSWORD = "admin-test-password"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(
    url: str, timeout: float = 60, proc: subprocess.Popen | None = None, want: int = 200
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == want:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


def stop_process(proc: subprocess.Popen, timeout: float = 60) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL 16 (the pgserver wheel) for store tests; its admin URL."""
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture
def database_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty database per test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield pg_server.replace("/postgres?", f"/{name}?", 1)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def fake_anthropic() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_sac.testing.fake_anthropic", "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/_fake/requests", proc=proc)
    yield url
    stop_process(proc)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The embedded stack exactly as `sac up` starts it, on free ports."""
    data_dir = tmp_path_factory.mktemp("sac-data")
    port = free_port()
    log_path = data_dir.parent / "sac-up.log"
    env = dict(os.environ, SAC_ADMIN_PASSWORD=ADMIN_PASSWORD, SAC_DATA_DIR=str(data_dir))
    env.pop("SAC_DATABASE_URL", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter_sac.cli",
                "up",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(url + "hub/api", timeout=120, proc=proc)
        resp = httpx.post(
            url + "hub/api/users/admin/tokens",
            timeout=30,
            json={"auth": {"username": "admin", "password": ADMIN_PASSWORD}, "note": "tests"},
        )
        assert resp.status_code == 201, resp.text
        admin = HubApi(url, resp.json()["token"])
        # the service starts beside the hub: wait for it too
        deadline = time.monotonic() + 60
        while admin.sac("GET", "agents").status_code != 200:
            assert time.monotonic() < deadline, "sac service did not come up"
            time.sleep(0.2)
        yield {"url": url, "admin": admin, "data_dir": data_dir, "proc": proc, "log": log_path}
    finally:
        stop_process(proc, timeout=90)
        if os.environ.get("SAC_TEST_SHOW_LOG"):
            print(log_path.read_text()[-20000:])


@pytest.fixture
def admin(stack: dict) -> HubApi:
    return stack["admin"]


@pytest.fixture
def new_user(admin: HubApi):
    """Factory: a fresh hub user and an API client holding their token."""

    def make(prefix: str = "u") -> tuple[str, HubApi]:
        name = f"{prefix}{uuid.uuid4().hex[:8]}"
        return name, admin.create_user(name)

    return make
