"""The first admin's name cannot be claimed by signing up.

A hub started from the project's hub config without SAC_ADMIN_PASSWORD (as
`jupyterhub -f hub_config/jupyterhub_config.py` by hand, not `sac up`, which always
has a password) creates no `admin` account, says so in its log, and refuses a
sign-up under that name (or one that normalises to it); other people sign up as
before and wait for an administrator's approval."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jupyter_sac.crypto import generate_key
from jupyter_sac.stack import find_chp, find_hub_config, free_port
from jupyter_sac.store import migrate
from sac_testing.stack import http_status, poll_until, stop_process

pytestmark = pytest.mark.stack

PASSWORD = "claimed-admin-password-42"


@pytest.fixture
def hub_without_password(tmp_path: Path, database_url: str) -> Iterator[tuple[str, Path]]:
    """JupyterHub run straight from hub_config/jupyterhub_config.py, without a first
    admin password; its URL and log."""
    asyncio.run(migrate(database_url))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAC_ADMIN_PASSWORD")}
    env.update(
        SAC_DATA_DIR=str(data_dir),
        SAC_DATABASE_URL=database_url,
        SAC_FERNET_KEY=generate_key(),
        SAC_HUB_PORT=str(port),
        SAC_HUB_API_PORT=str(free_port()),
        SAC_PROXY_API_PORT=str(free_port()),
        SAC_SERVICE_PORT=str(free_port()),
        SAC_CHP_COMMAND=find_chp() or "configurable-http-proxy",
    )
    env.pop("SAC_EXTRA_CONFIG", None)
    log = tmp_path / "hub.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(find_hub_config())],
            cwd=data_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    # The hub's host under subdomains (the proxy routes /hub/ only there).
    url = f"http://localhost:{port}/"
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyterhub exited: {log.read_text()[-3000:]}")
            return http_status(url + "hub/api") == 200

        poll_until(up, 120, "JupyterHub", interval=0.2)
        yield url, log
    finally:
        stop_process(proc)


def _form(client: httpx.Client, page: str, fields: dict[str, str]) -> httpx.Response:
    """Post a hub form the way a browser does (with the page's XSRF token)."""
    got = client.get(page)
    assert got.status_code == 200, got.text[:500]
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', got.text)
    data = {**fields, **({"_xsrf": xsrf.group(1)} if xsrf else {})}
    return client.post(page, data=data, headers={"Sec-Fetch-Mode": "navigate"})


def _sign_up(url: str, username: str) -> str:
    with httpx.Client(base_url=url, timeout=30) as client:
        resp = _form(client, "hub/signup", {"username": username, "email": "",
                                            "signup_password": PASSWORD,
                                            "signup_password_confirmation": PASSWORD})  # fmt: skip
        assert resp.status_code == 200, resp.text[:500]
        return resp.text


def _logs_in(url: str, username: str) -> bool:
    with httpx.Client(base_url=url, timeout=30) as client:
        resp = _form(client, "hub/login", {"username": username, "password": PASSWORD})
        return resp.status_code == 302 and client.get("hub/home").status_code == 200


def test_nobody_can_sign_up_as_the_first_admin(hub_without_password: tuple[str, Path]) -> None:
    url, log = hub_without_password
    text = log.read_text()
    assert "The first SAC administrator 'admin' was NOT created" in text
    assert "SAC_ADMIN_PASSWORD" in text

    for name in ("admin", "Admin", "ADMIN"):
        page = _sign_up(url, name)
        assert "already in use" in page, page[-2000:]
        assert "signup was successful" not in page
        assert not _logs_in(url, name)

    # Everyone else signs up as before: stored, waiting for an administrator.
    page = _sign_up(url, "carol")
    assert "Your information has been sent to the admin" in page, page[-2000:]
    assert not _logs_in(url, "carol")  # not authorised yet
    assert "already in use" in _sign_up(url, "carol")  # the sign-up was kept
