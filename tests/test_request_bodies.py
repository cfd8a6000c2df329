"""Request bodies in the `sac` service: it reads at most twice the JSON limit (1 MiB)
of any body, and only upload handlers take more, once they know who is sending. Against
the real stack, at the service's own address (where sandboxes reach it) and through
the hub's proxy, with the service's peak memory measured around each request."""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest
from conftest import ADMIN_PASSWORD
from helpers import HubApi, PeakMemory, greeting_skill, service_pid

from jupyter_sac.service.admin_pages import FORM_UPLOAD_BYTES

pytestmark = pytest.mark.stack

BIG = 200 * 1024 * 1024
MIB = bytes(1024 * 1024)


def _body(size: int) -> Iterator[bytes]:
    """``size`` bytes sent as they are made: the test never holds them."""
    for _ in range(size // len(MIB)):
        yield MIB


def _send(url: str, method: str, headers: dict[str, str], declared: bool) -> httpx.Response:
    headers = dict(headers)
    if declared:  # else httpx sends the generator chunked
        headers["Content-Length"] = str(BIG)
    return httpx.request(method, url, content=_body(BIG), headers=headers, timeout=120)


def test_a_big_body_is_answered_without_being_read(stack: dict, new_user) -> None:
    admin: HubApi = stack["admin"]
    name, user = new_user("big")
    mine = user.sac("POST", "skills", json=greeting_skill("mine"))
    assert mine.status_code == 201, mine.text
    token = {"Authorization": f"token {user.token}"}
    bundle = f"api/skills/{mine.json()['id']}/bundle"
    # (what, method, path under /services/sac/, headers, status, error code if JSON)
    cases = [
        ("anonymous, a JSON endpoint", "POST", "api/agents", {}, 400, None),
        ("a user's token, a JSON endpoint", "POST", "api/agents", token, 400, None),
        ("anonymous, the credential proxy", "POST", "llm/v1/messages", {}, 401,
         "authentication_error"),
        ("anonymous, history ingest", "POST", "api/history/ingest", {}, 401, "unauthorized"),
        ("anonymous, a sandbox's upload", "PUT", "api/agent/workspace/files/a.bin", {}, 401,
         "unauthorized"),
        ("a user's token, another's workspace", "PUT",
         "api/users/admin/agents/nope/workspace/files/a.bin", token, 404, "not_found"),
        ("anonymous, a bundle", "PUT", bundle, {}, 401, "unauthorized"),
        ("a user's token, the admin upload form", "POST", "admin/workspaces", token, 403, None),
    ]  # fmt: skip
    direct = admin.hub("GET", "services/sac").json()["url"].rstrip("/") + "/services/sac/"
    proxied = stack["service_url"]
    pid = service_pid(stack)
    failures = []
    for what, method, path, headers, status, code in cases:
        for declared in (True, False):
            for base in (direct, proxied):
                where = f"{what} ({'declared' if declared else 'chunked'}, "
                where += f"{'direct' if base == direct else 'through the proxy'})"
                with PeakMemory(pid) as peak:
                    resp = _send(base + path, method, headers, declared)
                # Before: +400 MiB (the body, then a copy of it) for every one of them.
                if peak.growth > 16:
                    failures.append(f"{where}: the service's memory grew by {peak.growth} MiB")
                if base == proxied:
                    # The service stops reading (and closes) after 1 MiB: the proxy
                    # passes its answer on, or says 503 for the connection it lost.
                    if not (400 <= resp.status_code < 500 or resp.status_code == 503):
                        failures.append(f"{where}: {resp.status_code} {resp.text[:200]!r}")
                elif resp.status_code != status or (code and _code(resp) != code):
                    failures.append(f"{where}: {resp.status_code} {resp.text[:200]!r}")

    # The skill's owner may send a bundle, but not 200 MiB of one: declared, it is
    # refused at once (413); streamed, the service keeps at most the bundle limit
    # (50 MiB) and, past twice that, tornado closes the connection (a bare 400).
    for declared, status in ((True, 413), (False, 400)):
        with PeakMemory(pid) as peak:
            resp = _send(direct + bundle, "PUT", token, declared)
        assert resp.status_code == status, resp.text[:200]
        assert status == 400 or _code(resp) == "too_large"
        assert peak.growth < 50 + 16, peak.growth
    assert not failures, "\n".join(failures)
    # Nothing was created or changed.
    assert user.sac("GET", f"users/{name}/agents").json()["agents"] == []
    assert user.sac("GET", f"skills/{mine.json()['id']}").json()["bundle"] is None


def test_an_answer_before_the_body_reaches_the_client_through_the_proxy(
    stack: dict, new_user
) -> None:
    """A refusal given before the body is read (no token, another's agent, a method
    nobody serves) waits for a body of up to 1 MiB and keeps the connection: closing
    it with the body unread made the kernel reset it, and the hub's proxy, still
    writing the body, told the client 503 instead (about one request in two with
    100 KiB bodies; with small ones on a busy machine)."""
    name, user = new_user("early")
    slug = f"a{uuid.uuid4().hex[:6]}"
    assert user.sac("POST", "agents", json={"slug": slug}).status_code == 201
    token = {"Authorization": f"token {user.token}"}
    body = bytes(512 * 1024)
    # (what, method, path under /services/sac/, headers, status, error code)
    cases = [
        ("anonymous, a sandbox's upload", "PUT", "api/agent/workspace/files/a.bin", {}, 401,
         "unauthorized"),
        ("a user's token, another's workspace", "PUT",
         "api/users/admin/agents/nope/workspace/files/a.bin", token, 404, "not_found"),
        ("a method nobody serves", "TRACE",
         f"api/users/{name}/agents/{slug}/workspace/files/0", token, 405,
         "method_not_allowed"),
        ("anonymous, the credential proxy", "POST", "llm/v1/messages", {}, 401,
         "authentication_error"),
    ]  # fmt: skip
    direct = stack["admin"].hub("GET", "services/sac").json()["url"].rstrip("/")
    failures = []
    for what, method, path, headers, status, code in cases:
        for chunked in (False, True):
            content = iter([body]) if chunked else body
            # At the service's own address: answered, and the connection kept.
            resp = httpx.request(method, f"{direct}/services/sac/{path}", content=content,
                                 headers=headers, timeout=60)  # fmt: skip
            if (resp.status_code, _code(resp)) != (status, code):
                failures.append(f"{what}, direct: {resp.status_code} {resp.text[:200]!r}")
            if resp.headers.get("connection", "").lower() == "close":
                failures.append(f"{what}, direct: the service closed the connection")
            # Through the proxy, again and again on one connection: always the answer.
            with httpx.Client(timeout=60, headers=headers) as client:
                for _ in range(8):
                    content = iter([body]) if chunked else body
                    resp = client.request(method, stack["service_url"] + path, content=content)
                    if (resp.status_code, _code(resp)) != (status, code):
                        failures.append(f"{what}, {'chunked' if chunked else 'declared'},"
                                        f" proxied: {resp.status_code} {resp.text[:120]!r}")  # fmt: skip
    # A body over 1 MiB that the endpoint could have taken (an agent's history batch
    # is up to 16 MiB), sent with a token that may not: it is read and dropped too,
    # and the refusal reaches the client (the fuzzer got the proxy's 503 for one).
    batch = bytes(3 * 1024 * 1024)
    with httpx.Client(timeout=60, headers=token) as client:
        for chunked in (False, True):
            for _ in range(8):
                content = iter([batch]) if chunked else batch
                resp = client.post(stack["service_url"] + "api/history/ingest", content=content)
                if (resp.status_code, _code(resp)) != (401, "unauthorized"):
                    failures.append(f"a person's 3 MiB history batch: {resp.status_code}"
                                    f" {resp.text[:120]!r}")  # fmt: skip
    assert not failures, "\n".join(failures)


def _code(resp: httpx.Response) -> str | None:
    """The error code of a JSON answer (the service's, or the Anthropic format's)."""
    try:
        error = resp.json().get("error")
    except ValueError:
        return None
    return error.get("type") if isinstance(error, dict) else error


def _login(url: str, name: str, password: str) -> httpx.Client:
    """A browser-like session: the hub's login, then the service's OAuth."""
    client = httpx.Client(base_url=url, timeout=60, follow_redirects=True)
    page = client.get("hub/login")
    form = {"username": name, "password": password}
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
    if xsrf:
        form["_xsrf"] = xsrf.group(1)
    resp = client.post("hub/login", data=form, headers={"Sec-Fetch-Mode": "navigate"})
    assert resp.status_code == 200, resp.text[:300]
    return client


def test_large_uploads_still_go_in(stack: dict, new_user) -> None:
    admin: HubApi = stack["admin"]
    name, user = new_user("upl")
    slug = f"a{uuid.uuid4().hex[:6]}"
    assert user.sac("POST", "agents", json={"slug": slug}).status_code == 201
    data = os.urandom(8 * 1024 * 1024)
    sha = hashlib.sha256(data).hexdigest()
    # The API: an agent's file (its owner), a public file (an administrator).
    for client, path in (
        (user, f"users/{name}/agents/{slug}/workspace/files/private/big.bin"),
        (admin, f"workspace/public/files/big-{slug}.bin"),
    ):
        put = client.sac("PUT", path, content=data)
        assert put.status_code == 200, put.text
        assert (put.json()["size"], put.json()["sha256"]) == (len(data), sha)
        got = client.sac("GET", path)
        assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == sha

    # The admin page's upload form, with an API token, then as a browser does it: a
    # login cookie, and the form's XSRF field (checked once the body is in).
    page = admin.service_url + "admin/workspaces"
    form_file = os.urandom(5 * 1024 * 1024)
    sent = admin.client.post(
        page,
        data={"action": "upload", "folder": f"t{slug}"},
        files={"file": ("api.bin", form_file, "application/octet-stream")},
    )
    assert sent.status_code == 303, sent.text[:300]
    browser = _login(stack["url"], "admin", ADMIN_PASSWORD)
    shown = browser.get(page)
    assert shown.status_code == 200, shown.text[:300]
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', shown.text)
    assert xsrf, "the page carries an XSRF token"
    upload = {"file": ("browser.bin", form_file, "application/octet-stream")}
    forged = browser.post(page, data={"action": "upload", "folder": f"t{slug}"}, files=upload)
    assert forged.status_code == 403, forged.text[:300]
    posted = browser.post(
        page,
        data={"_xsrf": xsrf.group(1), "action": "upload", "folder": f"t{slug}"},
        files=upload,
        follow_redirects=False,
    )
    assert posted.status_code == 303, posted.text[:300]
    listing = user.sac("GET", "workspace/public", params={"prefix": f"t{slug}/"}).json()
    stored = {f["path"]: f["sha256"] for f in listing["files"]}
    want = hashlib.sha256(form_file).hexdigest()
    assert stored == {f"public/t{slug}/api.bin": want, f"public/t{slug}/browser.bin": want}
    # Over the form's limit: a 413 page, nothing stored.
    over = admin.client.post(
        page,
        content=_multipart("over.bin", FORM_UPLOAD_BYTES + len(MIB)),
        headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
    )
    assert over.status_code == 413 and "limited to" in over.text, over.text[:300]
    assert user.sac("GET", "workspace/public/files/over.bin").status_code == 404


def _multipart(filename: str, size: int) -> Iterator[bytes]:
    """A form holding action=upload and a file of ``size`` zero bytes, as it is made."""
    yield (
        b'--b0undary\r\nContent-Disposition: form-data; name="action"\r\n\r\nupload\r\n'
        b'--b0undary\r\nContent-Disposition: form-data; name="file"; '
        + f'filename="{filename}"\r\n\r\n'.encode()
    )
    yield from _body(size)
    yield b"\r\n--b0undary--\r\n"
