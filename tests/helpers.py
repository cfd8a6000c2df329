"""Helpers for tests that drive the real stack through its public interfaces."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pyte
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from jupyter_sac.contract import Contract
from jupyter_sac.rules.urls import PublicUrls, default_service_url
from jupyter_sac.server_extension.openapi import CONTRACT as EXTENSION_CONTRACT
from jupyter_sac.service.openapi import CONTRACT as SERVICE_CONTRACT
from sac_testing.stack import find_descendant, poll_until


def service_url(hub_url: str) -> str:
    """The `sac` service's public URL beside the hub at ``hub_url``, on its own host
    as `sac up` serves it (http://sac--service.localhost:<port>/services/sac/)."""
    return default_service_url(hub_url)


def server_url(hub_url: str, user: str, agent: str) -> str:
    """A user's agent's (named server's) public URL, on the user's own host
    (http://<user>.localhost:<port>/user/<user>/<agent>/), as the hub reports it."""
    return urljoin(hub_url, PublicUrls.for_hub(hub_url).server(user, agent))


# Where each API's operations are in a URL's path (encoded, as the servers match it):
# the `sac` service under its prefix on any stack, and an agent's server's extension
# (/user/<user>/<agent>/ then the extension's own paths).
SERVICE_PATH = re.compile(r"^/services/sac(/api/.*)$")
EXTENSION_PATH = re.compile(r"^/user/[^/]+/[^/]+(/sac/api/.*)$")
# The extension's relay to the service (sac/api/service/<path> is the service's api/<path>).
RELAYED = re.compile(r"^/sac/api/service/(.*)$")

# What the response checks found wrong since the current test began: a check that
# runs where it cannot raise into the test (a browser's event, a request made by a
# background thread or by product code in this process) still fails the test
# (conftest's check_responses fixture).
RESPONSE_PROBLEMS: list[str] = []


def contract_problem(
    method: str, path: str, status: int, content_type: str, body: Callable[[], bytes]
) -> str | None:
    """What is wrong with an answer to ``method`` ``path`` (None: nothing, or not an
    answer of either API): a status its operation does not declare, or a JSON body
    outside the declared schema. ``body`` is read only for a JSON answer."""
    contract: Contract
    if match := SERVICE_PATH.match(path):
        contract = SERVICE_CONTRACT
    elif match := EXTENSION_PATH.match(path):
        if content_type.startswith("text/html"):
            return None  # the hub's page for a server that is not running, not the extension
        contract = EXTENSION_CONTRACT
        relayed = RELAYED.match(match[1])
        relayed_path = "/api/" + relayed[1] if relayed else ""
        if relayed and SERVICE_CONTRACT.operation(method, relayed_path) is not None:
            # The relay answers as the service does: held to the service's operation.
            return operation_problem(SERVICE_CONTRACT, method, relayed_path, status,
                                     content_type, body)  # fmt: skip
    else:
        return None
    return operation_problem(contract, method, match[1], status, content_type, body)


def operation_problem(
    contract: Contract,
    method: str,
    path: str,
    status: int,
    content_type: str,
    body: Callable[[], bytes],
) -> str | None:
    """``contract_problem`` for ``path`` relative to the API's server URL."""
    operation = contract.operation(method, path)
    if operation is None:
        return None  # an undocumented path: tests/test_openapi.py checks the routes
    return operation.response_problem(
        status, content_type, body() if "json" in content_type else b""
    )


def _report(problem: str | None) -> None:
    if problem is not None:
        RESPONSE_PROBLEMS.append(problem)
        raise AssertionError(problem)


def _encoded_path(url: httpx.URL) -> str:
    return url.raw_path.decode("ascii").split("?", 1)[0]


def check_httpx_response(resp: httpx.Response) -> None:
    """An httpx response hook (every client of the test session has it)."""
    path = _encoded_path(resp.request.url)
    content_type = resp.headers.get("content-type", "")
    _report(contract_problem(resp.request.method, path, resp.status_code, content_type, resp.read))


async def check_httpx_response_async(resp: httpx.Response) -> None:
    """The same for an AsyncClient (its hooks are coroutines; the body is read first)."""
    path = _encoded_path(resp.request.url)
    content_type = resp.headers.get("content-type", "")
    if "json" in content_type and (SERVICE_PATH.match(path) or EXTENSION_PATH.match(path)):
        await resp.aread()
    _report(contract_problem(resp.request.method, path, resp.status_code, content_type,
                             lambda: resp.content))  # fmt: skip


def check_tornado_response(resp: Any) -> None:
    """The check for an answer of an extension served in this process
    (pytest-jupyter's ``jp_fetch``: a tornado HTTPResponse, under any base URL)."""
    path = urlsplit(resp.effective_url).path
    where = path.find("/sac/api/")
    if where < 0:
        return
    _report(operation_problem(EXTENSION_CONTRACT, resp.request.method, path[where:], resp.code,
                              resp.headers.get("Content-Type", ""), lambda: resp.body))  # fmt: skip


class BrowserResponses:
    """Playwright "response" handlers' side of the checks (one for the session).

    A handler's problem is recorded, not raised (an event handler's exception does
    not reach the test). Reading a body from a handler waits until the test next
    drives the browser (the sync API runs handlers in greenlets), so the answers
    of the last moments before a close are read by ``drain``, which the patched
    ``close`` methods call first."""

    def __init__(self) -> None:
        self.unchecked: list[Any] = []

    def on_response(self, response: Any) -> None:
        path = urlsplit(response.url).path
        content_type = response.headers.get("content-type", "")
        if not (SERVICE_PATH.match(path) or EXTENSION_PATH.match(path)):
            return
        if "json" not in content_type:
            _record(contract_problem(response.request.method, path, response.status,
                                     content_type, lambda: b""))  # fmt: skip
            return
        self.unchecked.append(response)
        self._check(response)

    def _check(self, response: Any) -> None:
        from playwright.sync_api import Error

        try:
            data: bytes | None = response.body()
        except Error:
            data = None  # gone with a navigation or a close: nothing left to check
        if response not in self.unchecked:
            return  # checked meanwhile (by drain, or the handler)
        self.unchecked.remove(response)
        if data is not None:
            path = urlsplit(response.url).path
            _record(contract_problem(response.request.method, path, response.status,
                                     response.headers.get("content-type", ""), lambda: data))  # fmt: skip

    def drain(self) -> None:
        for response in list(self.unchecked):
            self._check(response)


def _record(problem: str | None) -> None:
    if problem is not None:
        RESPONSE_PROBLEMS.append(problem)


BROWSER_RESPONSES = BrowserResponses()


class HubApi:
    """JupyterHub REST API plus the `sac` service API, through the proxy: the hub at
    ``url`` (http://localhost:<port>/), the service and agents on their own hosts."""

    def __init__(self, url: str, token: str, harness: str = ""):
        self.url = url.rstrip("/") + "/"
        self.service_url = service_url(self.url)
        self.token = token
        self.client = httpx.Client(
            base_url=self.url,
            timeout=60,
            headers={"Authorization": f"token {token}"},
        )
        # The test harness's hub service token (sac_testing.stack): it makes
        # users and their API tokens, as people do for themselves at /hub/token.
        self.harness = harness

    def server_url(self, user: str, agent: str) -> str:
        """``user``'s agent's public URL (on the user's host)."""
        return server_url(self.url, user, agent)

    def hub(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.client.request(method, "hub/api/" + path.lstrip("/"), **kw)

    def sac(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.client.request(method, self.service_url + "api/" + path.lstrip("/"), **kw)

    def agent(self, user: str, agent: str, method: str, path: str, **kw: Any) -> httpx.Response:
        """A request to ``path`` under ``user``'s agent's server (e.g. ``sac/api/status``)."""
        return self.client.request(method, self.server_url(user, agent) + path.lstrip("/"), **kw)

    def create_user(
        self, name: str, admin: bool = False, hub_admin: bool = False, **token: Any
    ) -> HubApi:
        """A hub user and a client with an API token of theirs (``token``: the body
        of the token request, e.g. ``scopes`` for a narrowed one). ``admin``: a SAC
        administrator (a member of the sac-admins group); ``hub_admin``: JupyterHub's
        admin flag (which gives nothing in SAC)."""
        harness = HubApi(self.url, self.harness, self.harness) if self.harness else self
        resp = harness.hub("POST", f"users/{name}", json={"admin": hub_admin})
        assert resp.status_code in (201, 409), resp.text
        if admin:
            resp = harness.hub("POST", "groups/sac-admins/users", json={"users": [name]})
            assert resp.status_code == 200, resp.text
        return harness.token_for(name, **token)

    def harness_api(self) -> HubApi:
        """The test harness's own client (a hub admin service): makes users' tokens."""
        return HubApi(self.url, self.harness, self.harness) if self.harness else self

    def token_for(self, name: str, **body: Any) -> HubApi:
        """A new API token of user ``name`` (made with the harness's token)."""
        resp = self.hub("POST", f"users/{name}/tokens", json={"note": "test", **body})
        assert resp.status_code == 201, resp.text
        return HubApi(self.url, resp.json()["token"], self.harness)

    def start(self, user: str, agent: str, timeout: float = 120) -> dict[str, Any]:
        resp = self.hub("POST", f"users/{user}/servers/{agent}")
        assert resp.status_code in (201, 202), resp.text
        return self.wait_ready(user, agent, timeout)

    def server(self, user: str, agent: str) -> dict[str, Any] | None:
        return self.hub("GET", f"users/{user}").json().get("servers", {}).get(agent)

    def wait_ready(self, user: str, agent: str, timeout: float = 120) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            server = self.server(user, agent)
            if not server or not (server.get("ready") or server.get("pending")):
                raise AssertionError(f"server {user}/{agent} is not starting: {server}")
            return server if server.get("ready") else None

        return poll_until(ready, timeout, f"server {user}/{agent} ready")

    def stop(self, user: str, agent: str) -> None:
        resp = self.hub("DELETE", f"users/{user}/servers/{agent}")
        assert resp.status_code in (202, 204), resp.text
        poll_until(lambda: not self.server(user, agent), 60, f"server {user}/{agent} stopped")


@contextmanager
def running_agent(admin: HubApi, user: str, slug: str, **fields: Any) -> Iterator[HubApi]:
    """A new user with one started agent; the agent is deleted afterwards."""
    client = admin.create_user(user)
    resp = client.sac("POST", "agents", json={"slug": slug, **fields})
    assert resp.status_code == 201, resp.text
    try:
        client.start(user, slug)
        yield client
    finally:
        client.sac("DELETE", f"users/{user}/agents/{slug}")


async def run_in_terminal(
    url: str, token: str, user: str, agent: str, command: str, timeout: float = 60
) -> str:
    """Run a shell command in an agent's sandbox through Jupyter's terminal API.

    Returns what the command printed (between two markers the shell itself prints).
    """
    import asyncio

    base = server_url(url, user, agent)
    async with httpx.AsyncClient(headers={"Authorization": f"token {token}"}) as client:
        resp = await client.post(base + "api/terminals")
        assert resp.status_code == 200, resp.text
        name = resp.json()["name"]
    ws_url = base.replace("http", "ws", 1) + f"terminals/websocket/{name}"
    conn = await websocket_connect(HTTPRequest(ws_url, headers={"Authorization": f"token {token}"}))
    # One input line: the script travels base64-encoded (heredocs and quotes survive),
    # and the markers are split with quotes so the echoed line never matches.
    script = base64.b64encode(command.encode()).decode()
    line = (
        f"echo {script} | base64 -d > /tmp/sac-test.sh; echo SAC''START;"
        f" bash /tmp/sac-test.sh; echo SAC''END\r"
    )
    conn.write_message(json.dumps(["stdin", line]))
    output = ""
    deadline = asyncio.get_running_loop().time() + timeout
    while "SACEND" not in output:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise AssertionError(f"command timed out; output so far: {output!r}")
        try:
            msg = await asyncio.wait_for(conn.read_message(), remaining)
        except TimeoutError:
            raise AssertionError(f"command timed out; output so far: {output!r}") from None
        if msg is None:
            break
        kind, *rest = json.loads(msg)
        if kind == "stdout":
            output += rest[0]
    conn.close()
    async with httpx.AsyncClient(headers={"Authorization": f"token {token}"}) as client:
        await client.delete(base + f"api/terminals/{name}")
    start = output.rfind("SACSTART")
    end = output.rfind("SACEND")
    return output[start + len("SACSTART") : end].replace("\r\n", "\n").strip()


def model_agent(fake: str) -> dict[str, str]:
    """Agent fields that send the real CLI's model calls to the fake, through the proxy."""
    return {"provider": "custom", "base_url": fake, "api_key": "sk-ant-real-provider-key-42"}


def allow_all(client: HubApi, user: str, slug: str) -> None:
    """Let the agent run every tool without a human (tool calls go through the HITL
    PreToolUse hook in every mode)."""
    resp = client.sac(
        "PUT", f"users/{user}/agents/{slug}/hitl-policy", json={"policy": {"default": "allow"}}
    )
    assert resp.status_code == 200, resp.text


class TerminalClient:
    """A terminals-websocket client with a screen model, like xterm.js in the browser."""

    def __init__(self, conn: WebSocketClientConnection, rows: int = 40, cols: int = 120):
        self.conn = conn
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.Stream(self.screen)
        self.raw = ""
        self.closed = False

    @classmethod
    async def connect(
        cls, base: str, token: str, name: str = "claude", rows: int = 40, cols: int = 120
    ) -> TerminalClient:
        ws = base.replace("http", "ws", 1) + f"terminals/websocket/{name}"
        conn = await websocket_connect(HTTPRequest(ws, headers={"Authorization": f"token {token}"}))
        client = cls(conn, rows, cols)
        client.send(["set_size", rows, cols, rows * 16, cols * 8])
        return client

    def send(self, message: list) -> None:
        self.conn.write_message(json.dumps(message))

    def type(self, text: str) -> None:
        self.send(["stdin", text])

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    async def wait_for(
        self, predicate: Callable[[TerminalClient], bool], timeout: float, what: str
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self):
            remaining = deadline - loop.time()
            if remaining <= 0 or self.closed:
                raise AssertionError(f"timed out waiting for {what}; screen:\n{self.text()}")
            try:
                msg = await asyncio.wait_for(self.conn.read_message(), remaining)
            except TimeoutError:
                continue
            if msg is None:
                self.closed = True
                continue
            kind, *rest = json.loads(msg)
            if kind == "stdout":
                self.raw += rest[0]
                self.stream.feed(rest[0])

    def close(self) -> None:
        self.conn.close()


def claude_ready(t: TerminalClient) -> bool:
    # Claude Code's idle input box shows its shortcuts hint under the prompt line.
    return "? for shortcuts" in t.text() or "for shortcuts" in t.raw


def script_model(fake: str, *replies: Any) -> None:
    """Replace the fake model's scripted replies (text, or {"tool_use": ...})."""
    httpx.delete(fake + "/_fake/script")
    assert httpx.post(fake + "/_fake/script", json={"replies": list(replies)}).status_code == 204


def tar_gz(files: dict[str, bytes]) -> bytes:
    """A tar.gz of regular files, as a user would upload as a skill bundle."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def stack_database_url(data_dir: Any) -> str:
    """The URL of a running embedded stack's PostgreSQL (its pgserver folder), for
    tests that must change what no API may: tampering with stored rows."""
    import pgserver

    return pgserver.get_server(data_dir / "postgres", cleanup_mode=None).get_uri()


def agent_home(data_dir: Any, slug: str) -> Any:
    """An agent's folder on the host (``<data dir>/agents/<id>-<slug>``)."""
    (root,) = (data_dir / "agents").glob(f"*-{slug}")
    return root


def write_as_agent(home: Path, path: Path, text: str) -> None:
    """Write a file into an agent's home on the host as its sandbox's user would:
    missing folders and the file owned by the home's owner (the sandbox's uid when
    the hub runs as root), so the sandbox can change them afterwards."""
    owner = home.stat()
    missing = [p for p in (path, *path.parents) if not p.exists() and home in p.parents]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    for created in missing:
        os.chown(created, owner.st_uid, owner.st_gid)


GREETING_BODY = "---\nname: x\ndescription: x\n---\n\nSay hello to {{who}}.\n"


def greeting_skill(command: str, **extra: Any) -> dict[str, Any]:
    """A small valid skill body for the marketplace API (one required parameter)."""
    return {
        "command": command,
        "title": f"Skill {command}",
        "description": "Greets someone.",
        "body": GREETING_BODY,
        "parameters": [{"name": "who", "type": "text", "required": True}],
        "prompt": "Greet {{who}}.",
        **extra,
    }


# ---- people in a browser, without one (httpx keeps the cookies) ---------------------


def xsrf_of(page: str) -> str:
    """The XSRF token a page's forms carry (``_xsrf``)."""
    import re

    found = re.search(r'name="_xsrf" value="([^"]+)"', page)
    assert found, "the page has no XSRF token"
    return found.group(1)


def sign_up(url: str, name: str, password: str, admin_password: str) -> None:
    """A person signs up at /hub/signup and the admin, logged in, authorises them
    (NativeAuthenticator), as on the hub's pages."""
    with httpx.Client(base_url=url, timeout=30) as client:
        form = client.get("hub/signup")
        resp = client.post(
            "hub/signup",
            data={"username": name, "signup_password": password,
                  "signup_password_confirmation": password, "_xsrf": xsrf_of(form.text)},
        )  # fmt: skip
        assert resp.status_code == 200, resp.text[:300]
    operator = browser_client(url, "admin", admin_password)
    try:
        resp = operator.get(f"hub/authorize/{name}")
        assert resp.status_code == 200, resp.text[:300]
    finally:
        operator.close()


def browser_client(url: str, name: str, password: str) -> httpx.Client:
    """Cookies and redirects like a browser, logged in to the hub; its first visit to
    a service page passes through the hub's OAuth and gets the service's login."""
    client = httpx.Client(base_url=url, timeout=60, follow_redirects=True)
    form = client.get("hub/login")
    resp = client.post(
        "hub/login",
        data={"username": name, "password": password, "_xsrf": xsrf_of(form.text)},
    )
    assert resp.status_code == 200 and "/hub/login" not in str(resp.url), resp.text[:300]
    return client


# ---- browser tests (Playwright driving Debian's Chromium, never a downloaded one) ----

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def log_in(page: Any, base: str, name: str, password: str) -> None:
    """Log a browser page in to the hub's login form."""
    page.goto(base + "hub/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.click("input[type=submit], button[type=submit]")
    page.wait_for_url("**/hub/**")


def sign_up_and_log_in(
    browser: Any, base: str, name: str, password: str, admin_password: str, **context: Any
) -> Any:
    """A person signs up at /hub/signup, an admin authorises them in another browser
    context (NativeAuthenticator), and they log in: their page."""
    page = browser.new_context(**context).new_page()
    page.goto(base + "hub/signup")
    page.fill("input[name=username]", name)
    page.fill("input[name=signup_password]", password)
    page.fill("input[name=signup_password_confirmation]", password)
    page.click("input[type=submit], button[type=submit]")
    operator = browser.new_context()
    try:
        admin_page = operator.new_page()
        log_in(admin_page, base, "admin", admin_password)
        admin_page.goto(base + f"hub/authorize/{name}")
    finally:
        operator.close()
    log_in(page, base, name, password)
    return page


class PeakMemory:
    """How much a process's peak resident memory grew over a ``with`` block, in MiB.

    Linux keeps the peak (VmHWM in /proc/<pid>/status); writing 5 to clear_refs
    resets it to the current size, so a short spike is seen even though the memory
    has been given back by the time the block ends."""

    def __init__(self, pid: int):
        self.pid = pid
        self.growth = 0

    def _status(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024
        raise LookupError(key)

    def __enter__(self) -> PeakMemory:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self._before = self._status("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        self.growth = self._status("VmHWM") - self._before


def service_pid(stack: dict) -> int:
    """The `sac` service's process in the test stack."""
    return find_descendant(stack["pid"], b"jupyter_sac.service")


# The presets the session stack points at the fake model API (conftest.py), each
# under its own path so a test can tell which endpoint a call reached.
FAKED_PRESETS = ("openrouter", "glm", "qwen")


def preset_endpoints(fake: str) -> dict[str, str]:
    """``c.SacService.provider_base_urls`` for the session stack."""
    return {name: f"{fake}/{name}" for name in FAKED_PRESETS}


class TerminalCommand:
    """A shell command running in the agent's terminal while the test does other things."""

    def __init__(self, conn: WebSocketClientConnection):
        self.conn = conn
        self.output = ""

    @classmethod
    async def start(cls, base: str, token: str, command: str) -> TerminalCommand:
        async with httpx.AsyncClient(headers={"Authorization": f"token {token}"}) as c:
            name = (await c.post(base + "api/terminals")).json()["name"]
        conn = await websocket_connect(
            HTTPRequest(
                base.replace("http", "ws", 1) + f"terminals/websocket/{name}",
                headers={"Authorization": f"token {token}"},
            )
        )
        script = base64.b64encode(command.encode()).decode()
        conn.write_message(
            json.dumps(["stdin", f"echo {script} | base64 -d | bash; echo SAC''END\r"])
        )
        return cls(conn)

    async def finish(self, timeout: float = 180) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while "SACEND" not in self.output:
            remaining = deadline - loop.time()
            assert remaining > 0, f"command did not finish: {self.output!r}"
            msg = await asyncio.wait_for(self.conn.read_message(), remaining)
            assert msg is not None, self.output
            kind, *rest = json.loads(msg)
            if kind == "stdout":
                self.output += rest[0]
        self.conn.close()
        return self.output


class ChatTurn:
    """A chat turn through the agent's chat API, its events read from a socket
    opened before the message was sent (so none is missed)."""

    def __init__(self, conn: WebSocketClientConnection, accepted: dict[str, Any]):
        self.conn = conn
        self.accepted = accepted  # the 202's body: session_id, turn_id

    @classmethod
    async def start(cls, base: str, token: str, message: str, **body: Any) -> ChatTurn:
        conn = await websocket_connect(
            HTTPRequest(
                base.replace("http", "ws", 1) + "sac/api/chat/events",
                headers={"Authorization": f"token {token}"},
            )
        )
        async with httpx.AsyncClient(headers={"Authorization": f"token {token}"}) as c:
            resp = await c.post(
                base + "sac/api/chat", json={"message": message, **body}, timeout=60
            )
        assert resp.status_code == 202, resp.text
        return cls(conn, resp.json())

    async def finish(self, timeout: float = 120) -> list[dict[str, Any]]:
        """The events up to and including the turn's ``turn_end``."""
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1]["type"] != "turn_end":
            msg = await asyncio.wait_for(self.conn.read_message(), timeout)
            assert msg is not None, f"socket closed; events so far: {seen}"
            seen.append(json.loads(msg))
        self.conn.close()
        return seen


async def chat_turn(base: str, token: str, message: str, **body: Any) -> list[dict[str, Any]]:
    """One whole chat turn: its events up to and including ``turn_end``."""
    return await (await ChatTurn.start(base, token, message, **body)).finish()


def pending_requests(client: HubApi, user: str) -> list[dict[str, Any]]:
    """``user``'s HITL requests waiting for a decision, as ``client`` sees them."""
    resp = client.sac("GET", "hitl/requests", params={"status": "pending"})
    assert resp.status_code == 200, resp.text
    return [r for r in resp.json()["requests"] if r["user"] == user]


def stored_history(client: HubApi, user: str, slug: str) -> list[dict[str, Any]]:
    """Every history event the service stored for the agent, oldest first (all pages)."""
    events: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": 1000, "order": "asc", **({"cursor": cursor} if cursor else {})}
        resp = client.sac("GET", f"users/{user}/agents/{slug}/history/events", params=params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        events += page["events"]
        cursor = page.get("next_cursor")
        if not cursor:
            return events


async def agent_token(
    url: str, client: HubApi, user: str, slug: str, variable: str = "SAC_AGENT_TOKEN"
) -> str:
    """The agent's own token as its sandbox holds it: ``SAC_AGENT_TOKEN`` for the
    service, ``ANTHROPIC_API_KEY`` for the credential proxy (the same token)."""
    out = await run_in_terminal(url, client.token, user, slug, f"echo ${variable}")
    token = out.strip().splitlines()[-1]
    assert token.startswith("sac-agent-"), out
    return token


def service_context(
    store: Any,
    objects_dir: Path,
    *,
    keybox: Any = None,
    org_keys: Any = None,
    workspace_max_file_bytes: int = 1024 * 1024,
) -> Any:
    """The `sac` service's operations' context without the service: the real store
    and a local object store; a hub client that is never called (tests of
    operations that ask the hub start a stack instead). Close it with
    ``close_service_context`` (the store stays the caller's)."""
    from jupyter_sac.crypto import KeyBox, generate_key
    from jupyter_sac.objects import LocalStore
    from jupyter_sac.rules.urls import PublicUrls
    from jupyter_sac.service.hub import HubClient
    from jupyter_sac.service.operations.context import (
        OrganisationKeys,
        ServiceContext,
        Waiters,
    )
    from jupyter_sac.service.principals import ADMIN_SCOPE

    return ServiceContext(
        store=store,
        hub=HubClient(api_url="http://127.0.0.1:9/hub/api", token="unused"),
        keybox=keybox if keybox is not None else KeyBox([generate_key()]),
        objects=LocalStore(root=str(objects_dir)),
        org_keys=org_keys if org_keys is not None else OrganisationKeys({}),
        hitl_waiters=Waiters(),
        upstream=httpx.AsyncClient(),
        prefix="/services/sac/",
        public=PublicUrls("", "/"),
        admin_scope=ADMIN_SCOPE,
        provider_base_urls={},
        workspace_max_file_bytes=workspace_max_file_bytes,
    )


async def close_service_context(ctx: Any) -> None:
    await ctx.upstream.aclose()
    await ctx.hub.close()


def largest_request_waiting(port: int) -> int:
    """The most bytes waiting unread on one connection to ``port`` on this machine:
    what a stopped service has been sent but has not read (/proc/net/tcp's rx_queue
    of its established sockets)."""
    largest = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, queues = fields[1], fields[3], fields[4]
            if int(local.rsplit(":", 1)[1], 16) == port and state == "01":
                largest = max(largest, int(queues.split(":")[1], 16))
    return largest


def spool_status(client: HubApi, user: str, slug: str) -> dict[str, Any]:
    resp = client.agent(user, slug, "GET", "sac/api/history/status")
    assert resp.status_code == 200, resp.text
    status: dict[str, Any] = resp.json()
    return status


def claude_direct(prompt: str, model_url: str) -> str:
    """A headless claude turn that reaches the fake model directly (through the
    sandbox's egress proxy, not the service's credential proxy), so it runs while
    the service is away."""
    return (
        f"cd /workspace && ANTHROPIC_BASE_URL={model_url} NO_PROXY= no_proxy="
        f" claude -p {json.dumps(prompt)} --output-format text"
    )


async def kill_server(base: str, token: str) -> None:
    """kill -9 the agent's single-user server, from a terminal it runs (the shell's
    parent): no stop hook, no flush, as a crash or the OOM killer would."""
    headers = {"Authorization": f"token {token}"}
    name = f"killer{uuid.uuid4().hex[:6]}"
    resp = httpx.post(base + "api/terminals", json={"name": name}, headers=headers)
    assert resp.status_code == 200, resp.text
    ws = base.replace("http", "ws", 1) + f"terminals/websocket/{name}"
    conn = await websocket_connect(HTTPRequest(ws, headers=headers))
    conn.write_message(json.dumps(["stdin", "kill -9 $PPID\r"]))
    while await conn.read_message() is not None:
        pass


def spawn_with_progress(client: HubApi, user: str, agent: str) -> list[dict[str, Any]]:
    """Start an agent and read the hub's progress stream to its end, as the spawn page does."""
    resp = client.hub("POST", f"users/{user}/servers/{agent}")
    assert resp.status_code in (201, 202), resp.text
    events = []
    with client.client.stream(
        "GET", f"hub/api/users/{user}/servers/{agent}/progress", timeout=180
    ) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[len("data:") :]))
    return events
