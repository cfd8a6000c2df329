"""Both proxies `sac up` can run (docs/configuration.md#the-proxy) answer alike: the
hub only on its own host, the service on its host, JupyterHub's 404 page (with a 404)
for what no route matches, their API only with its credentials, and nothing of the
proxy left once `sac up` stops."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import ADMIN_PASSWORD

from jupyter_sac.stack import PROXY_NAMES
from sac_testing.stack import embedded_stack, process_children, proxied

pytestmark = pytest.mark.stack

PROXY_PROGRAMS = {"chp": b"configurable-http-proxy", "traefik": b"traefik"}


def _proxy_processes(data_dir: Path, program: bytes) -> list[int]:
    """Processes of ``program`` whose command line names this stack's data dir or ports."""
    ports = json.loads((data_dir / "ports.json").read_text())
    api_port = ports["SAC_PROXY_API_PORT"]
    # Traefik's config file is in the data dir; configurable-http-proxy has --api-port.
    marks = [str(data_dir).encode(), f"\0{api_port}\0".encode()]
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


@pytest.mark.parametrize("kind", ["chp", "traefik"])
def test_each_proxy_routes_by_host_and_stops_with_the_stack(tmp_path: Path, kind: str) -> None:
    with embedded_stack(tmp_path, ADMIN_PASSWORD, env={"SAC_PROXY": kind}) as stack:
        assert f"{PROXY_NAMES[kind]} on" in stack.log_path.read_text()
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
        assert _proxy_processes(stack.data_dir, PROXY_PROGRAMS[kind])
        data_dir = stack.data_dir
    assert not _proxy_processes(data_dir, PROXY_PROGRAMS[kind])
