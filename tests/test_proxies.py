"""Both proxies `sac up` can run (docs/configuration.md#the-proxy) answer alike: the
hub only on its own host, the service on its host, JupyterHub's 404 page (with a 404)
for what no route matches, JupyterHub's 503 page for a server that does not answer,
their API only with its credentials, and nothing of the proxy left once `sac up`
stops."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import ADMIN_PASSWORD

from jupyter_sac.stack import PROXY_NAMES
from sac_testing.stack import embedded_stack, poll_until, process_children, proxied

pytestmark = pytest.mark.stack

PROXY_PROGRAMS = {"chp": b"configurable-http-proxy", "traefik": b"traefik"}


def _proxy_marks(data_dir: Path) -> list[bytes]:
    """What names this stack's proxy in a command line: Traefik's config file is in
    the data dir; configurable-http-proxy has --api-port (kept in ports.json)."""
    api_port = json.loads((data_dir / "ports.json").read_text())["SAC_PROXY_API_PORT"]
    return [str(data_dir).encode(), f"\0{api_port}\0".encode()]


def _proxy_processes(marks: list[bytes], program: bytes) -> list[int]:
    """Processes of ``program`` whose command line has one of ``marks``."""
    found = []
    for pids in process_children().values():
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if program in cmdline and any(mark in cmdline for mark in marks):
                found.append(pid)
    return found


def _kill_tree(root: int) -> None:
    """SIGKILL ``root`` and everything under it (an agent's sandbox, its server)."""
    children = process_children()
    todo, tree = [root], []
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("kind", ["chp", "traefik"])
def test_each_proxy_routes_by_host_and_stops_with_the_stack(kind: str) -> None:
    # A short directory: sandboxes' sockets live under it (AF_UNIX paths are short).
    with (
        tempfile.TemporaryDirectory(prefix="sac-px-") as tmp,
        embedded_stack(Path(tmp), ADMIN_PASSWORD, env={"SAC_PROXY": kind}) as stack,
    ):
        # `sac up` says which proxy runs (once it has seen the hub answer, too)
        started = f"{PROXY_NAMES[kind]} on"
        poll_until(lambda: started in stack.log_path.read_text(), 30, "`sac up`'s report")
        # The hub on its own host, and only there.
        assert httpx.get(stack.url + "hub/api", timeout=10).json()["version"]
        for host_url in (stack.public.service(), stack.public.server("nobody", "x")):
            login = urlsplit(host_url)._replace(path="/hub/login").geturl()
            url, host = proxied(login, stack.proxy_url)
            resp = httpx.get(url, headers=host, timeout=10)
            assert resp.status_code == 404, (host, resp.status_code)
            assert "JupyterHub" in resp.text  # the hub's own 404 page
        # The service on its host: its own JSON answer, not a proxy's page.
        url, host = proxied(stack.public.service() + "api/agents", stack.proxy_url)
        resp = httpx.get(url, headers=host, timeout=10)
        assert resp.status_code == 401 and resp.json()["error"] == "unauthorized"
        # A host nobody serves, with a body too: the hub's 404 page, status 404.
        url, host = proxied("http://nowhere.localhost:1/anything", stack.proxy_url)
        for method in ("GET", "POST"):
            resp = httpx.request(method, url, headers=host, content=b"x" * 1000, timeout=10)
            assert resp.status_code == 404, (method, resp.status_code, resp.text[:200])
        # The proxy's API: loopback only, and not without its credentials.
        ports = json.loads((stack.data_dir / "ports.json").read_text())
        api = f"http://127.0.0.1:{ports['SAC_PROXY_API_PORT']}"
        assert httpx.get(api + "/api/routes" if kind == "chp" else api + "/api/overview",
                         timeout=10).status_code in (401, 403)  # fmt: skip
        # A server that does not answer: JupyterHub's 503 page, as a person sees it.
        api = httpx.Client(
            base_url=stack.url, headers={"Authorization": f"token {stack.admin_token}"}, timeout=60
        )
        created = api.post(stack.service_url + "api/agents", json={"slug": "down"})
        assert created.status_code == 201, created.text
        assert api.post("hub/api/users/admin/servers/down").status_code in (201, 202)
        server = stack.server_url("admin", "down")
        poll_until(lambda: api.get(server + "sac/api/status").status_code == 200, 120, "agent")
        (sandbox,) = (stack.data_dir / "agents").glob("*/sandbox.json")
        _kill_tree(json.loads(sandbox.read_text())["pid"])

        # (Until the hub's side of the sandbox's relay sees it gone, a connection
        # may wait in the socket's backlog: ask again.)
        def down_page() -> httpx.Response | None:
            try:
                resp = api.get(server + "lab", timeout=5)
            except httpx.TimeoutException:
                return None
            return resp if resp.status_code != 200 else None

        resp = poll_until(down_page, 90, "the server's absence")
        assert resp.status_code == 503, (resp.status_code, resp.text[:300])
        assert resp.headers["content-type"].startswith("text/html")
        assert "/hub/static/" in resp.text  # the hub's page, not the proxy's own
        marks = _proxy_marks(stack.data_dir)
        assert _proxy_processes(marks, PROXY_PROGRAMS[kind])
    assert not _proxy_processes(marks, PROXY_PROGRAMS[kind])
