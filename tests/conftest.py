"""Fixtures that start real parts: PostgreSQL, the fake Anthropic API, the whole stack."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helpers
import httpx
import psycopg
import pytest
from helpers import HubApi, preset_endpoints

from jupyter_sac.localhost import resolve_localhost
from jupyter_sac.stack import free_port
from sac_testing.stack import embedded_stack, http_status, poll_until, stop_process

ADMIN_PASSWORD = "admin-test-password"

# The stack runs as `sac up` runs it, with subdomains: the hub on localhost, the
# `sac` service on sac--service.localhost, each user on <user>.localhost. Browsers
# resolve those names themselves; this process (httpx, tornado websockets) now
# does too, for the whole session.
resolve_localhost()


def _check_every_response() -> None:
    """Every answer of the `sac` service's or an extension's API that this test
    session receives is checked against its operation in the API's document
    (declared status, JSON body inside its schema), at the session's edges rather
    than in each test: each httpx client gets a response hook, and each Playwright
    browser context and page a "response" handler (helpers.contract_problem; the
    handlers' last answers are read before a browser or context closes), and
    pytest-jupyter's client of an in-process server (``jp_fetch``) its check."""
    sync_init, async_init = httpx.Client.__init__, httpx.AsyncClient.__init__

    def with_hook(hooks: Any, hook: Any) -> dict[str, list[Any]]:
        hooks = {name: list(each) for name, each in (hooks or {}).items()}
        hooks.setdefault("response", []).append(hook)
        return hooks

    def client_init(self: httpx.Client, *args: Any, event_hooks: Any = None, **kw: Any) -> None:
        sync_init(
            self, *args, event_hooks=with_hook(event_hooks, helpers.check_httpx_response), **kw
        )

    def async_client_init(
        self: httpx.AsyncClient, *args: Any, event_hooks: Any = None, **kw: Any
    ) -> None:
        hooks = with_hook(event_hooks, helpers.check_httpx_response_async)
        async_init(self, *args, event_hooks=hooks, **kw)

    httpx.Client.__init__ = client_init  # type: ignore[method-assign]
    httpx.AsyncClient.__init__ = async_client_init  # type: ignore[method-assign]

    from playwright.sync_api import Browser, BrowserContext

    checks = helpers.BROWSER_RESPONSES
    new_context, new_page = Browser.new_context, Browser.new_page
    close_browser, close_context = Browser.close, BrowserContext.close

    def context_checked(self: Browser, *args: Any, **kw: Any) -> Any:
        context = new_context(self, *args, **kw)
        context.on("response", checks.on_response)
        return context

    def page_checked(self: Browser, *args: Any, **kw: Any) -> Any:
        page = new_page(self, *args, **kw)
        page.on("response", checks.on_response)
        return page

    def browser_closed(self: Browser, *args: Any, **kw: Any) -> None:
        checks.drain()
        close_browser(self, *args, **kw)

    def context_closed(self: BrowserContext, *args: Any, **kw: Any) -> None:
        checks.drain()
        close_context(self, *args, **kw)

    # pytest-jupyter's client of a server in this process (behind ``jp_fetch``).
    from pytest_jupyter.pytest_tornasync import AsyncHTTPServerClient
    from tornado.httpclient import HTTPClientError

    fetch = AsyncHTTPServerClient.fetch

    async def fetch_checked(self: AsyncHTTPServerClient, path: str, **kw: Any) -> Any:
        try:
            resp = await fetch(self, path, **kw)
        except HTTPClientError as e:
            if e.response is not None:
                helpers.check_tornado_response(e.response)
            raise
        helpers.check_tornado_response(resp)
        return resp

    AsyncHTTPServerClient.fetch = fetch_checked  # type: ignore[method-assign]
    Browser.new_context = context_checked  # type: ignore[method-assign]
    Browser.new_page = page_checked  # type: ignore[method-assign]
    Browser.close = browser_closed  # type: ignore[method-assign]
    BrowserContext.close = context_closed  # type: ignore[method-assign]


_check_every_response()


@pytest.fixture(autouse=True)
def check_responses() -> Iterator[None]:
    """Fail a test that received an answer outside its API's document, including
    one seen where a check cannot raise into the test (a browser's event)."""
    helpers.RESPONSE_PROBLEMS.clear()
    yield
    problems = list(helpers.RESPONSE_PROBLEMS)
    helpers.RESPONSE_PROBLEMS.clear()
    assert not problems, "answers outside the API's document:\n" + "\n".join(problems)


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
        [sys.executable, "-m", "sac_testing.fake_anthropic", "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    poll_until(lambda: http_status(url + "/_fake/requests") == 200, 60, "fake Anthropic API")
    yield url
    stop_process(proc)


@pytest.fixture
def fake(fake_anthropic: str) -> str:
    """The fake model API with no recorded requests and no scripted replies."""
    httpx.delete(fake_anthropic + "/_fake/requests")
    httpx.delete(fake_anthropic + "/_fake/script")
    return fake_anthropic


PROBE_PACKAGE = ("sac_probe_pkg", "1.0", "from the organisation's package cache")


def probe_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel (as `pip wheel` makes one), for the package cache."""
    import base64
    import hashlib
    import zipfile

    name, version, value = PROBE_PACKAGE
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VALUE = {value!r}\n".encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: sac-tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = [
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
        for path, data in files.items()
    ]
    files[f"{dist}/RECORD"] = ("\n".join([*record, f"{dist}/RECORD,,"]) + "\n").encode()
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    wheel.chmod(0o644)
    return wheel


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, fake_anthropic: str) -> Iterator[dict]:
    """The embedded stack exactly as `sac up` starts it, on free ports, with the
    OpenRouter, GLM and Qwen presets' endpoints at the fake model API (this machine
    has no route to them; each under its own path, to tell them apart)."""
    workdir = tmp_path_factory.mktemp("sac")
    # The organisation's package cache every sandbox sees read-only (one wheel).
    packages = workdir / "packages"
    (packages / "wheels").mkdir(parents=True)
    probe_wheel(packages / "wheels")
    packages.chmod(0o755)
    config = workdir / "providers.py"
    config.write_text(
        f"c.LocalAgentSpawner.shared_packages_path = {str(packages)!r}\n"
        f"c.SacService.provider_base_urls = {preset_endpoints(fake_anthropic)!r}\n"
        # Webhook retries within a test's patience (tests/test_webhooks_api.py).
        "c.SacService.webhook_backoff = [0.3, 0.3, 0.3]\n"
        # The hub notices a sandbox that died within seconds, not JupyterHub's 30
        # (tests/test_events_api.py: agent.failed).
        "c.Spawner.poll_interval = 5\n"
    )
    with embedded_stack(workdir, ADMIN_PASSWORD, extra_config=config) as running:
        try:
            yield {"url": running.url, "admin": HubApi(running.url, running.admin_token, running.harness_token),
                   "service_url": running.service_url, "pid": running.proc.pid,
                   "data_dir": running.data_dir, "log": running.log_path,
                   "packages": packages}  # fmt: skip
        finally:
            if os.environ.get("SAC_TEST_SHOW_LOG"):
                print(running.log_path.read_text()[-20000:])


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


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory):
    """A real S3-compatible HTTP server (moto in server mode) for the whole session."""
    from sac_testing.s3_server import s3_server

    with s3_server(tmp_path_factory.mktemp("s3") / "moto.log") as endpoint:
        yield endpoint


S3_BUCKET = "sac-skills"


@pytest.fixture(scope="session")
def s3_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A second `sac up` stack whose service keeps objects (skill bundles, workspace
    files) in a real S3-compatible server (moto, over HTTP)."""
    from sac_testing.s3_server import s3_server

    workdir = tmp_path_factory.mktemp("sac-s3")
    moto_log = workdir / "moto.log"
    with s3_server(moto_log) as endpoint:
        config = workdir / "s3_config.py"
        traits = endpoint.store_config(S3_BUCKET, prefix="sac/")
        config.write_text(
            'c.SacService.object_store = "s3"\n'
            + "".join(f"c.S3Store.{name} = {value!r}\n" for name, value in traits.items())
        )
        with embedded_stack(workdir, ADMIN_PASSWORD, extra_config=config) as running:
            yield {"url": running.url, "admin": HubApi(running.url, running.admin_token, running.harness_token),
                   "service_url": running.service_url,
                   "data_dir": running.data_dir, "endpoint": endpoint,
                   "moto_log": moto_log}  # fmt: skip


# Fixtures that start a whole `sac up` stack (or a Kubernetes emulator with one).
# A test that uses any of them, directly or through another fixture, is a `stack`
# test; `make test-fast` runs the others.
STACK_FIXTURES = frozenset(
    {"stack", "s3_stack", "culling_stack", "faults_stack", "fuzz_stack", "kube"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if STACK_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)
