"""Webhook notifications (api/webhooks) on the real stack: a receiver on this
machine (an http.server thread on 127.0.0.1, which the administrator puts on the
allow-list) gets a signed HITL notification as the request is filed, in both
formats; a receiver that fails is tried again until it answers; the allow-list,
the owner and the kind of token are enforced."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from helpers import HubApi, run_in_terminal, running_agent

from jupyter_sac.rules.webhooks import verify
from sac_testing.stack import poll_until

pytestmark = pytest.mark.stack


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when the receiver read it


@dataclass
class Receiver:
    """A webhook receiver: records every POST; answers each path with the statuses
    scripted for it, in turn (200 once they are spent)."""

    server: http.server.ThreadingHTTPServer
    got: list[Received] = field(default_factory=list)
    script: dict[str, list[int]] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def on(self, path: str) -> list[Received]:
        return [r for r in self.got if r.path == path]

    def wait_for(self, path: str, count: int = 1, timeout: float = 20) -> list[Received]:
        poll_until(lambda: len(self.on(path)) >= count, timeout, f"{count} posts to {path}")
        return self.on(path)


def start_receiver() -> Receiver:
    receiver: Receiver

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            receiver.got.append(Received(self.path, dict(self.headers), body, time.time()))
            statuses = receiver.script.get(self.path)
            status = statuses.pop(0) if statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver = Receiver(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver


@pytest.fixture(scope="module")
def world(stack: dict) -> Iterator[dict[str, Any]]:
    """Ann with a running agent (its sandbox files HITL requests with its own token),
    Bob, a receiver, and the allow-list naming 127.0.0.1 (restored afterwards)."""
    admin: HubApi = stack["admin"]
    saved = admin.sac("GET", "settings/system").json()["overrides"]
    resp = admin.sac(
        "PUT", "settings/system", json={**saved, "webhook_allowed_hosts": ["127.0.0.1"]}
    )
    assert resp.status_code == 200, resp.text
    receiver = start_receiver()
    ann = f"whann{uuid.uuid4().hex[:6]}"
    try:
        with running_agent(admin, ann, "gate", api_key="sk-unused-key") as owner:
            token = asyncio.run(
                run_in_terminal(stack["url"], owner.token, ann, "gate", "echo $SAC_AGENT_TOKEN")
            ).strip()
            assert token.startswith("sac-agent-"), token
            sandbox = httpx.Client(
                base_url=stack["service_url"] + "api/",
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            )
            bob = admin.create_user(f"whbob{uuid.uuid4().hex[:6]}")
            yield {"ann": ann, "owner": owner, "sandbox": sandbox, "bob": bob,
                   "admin": admin, "receiver": receiver}  # fmt: skip
            sandbox.close()
    finally:
        receiver.server.shutdown()
        admin.sac("PUT", "settings/system", json=saved)


def create(api: HubApi, url: str, kinds: list[str], **more: Any) -> dict[str, Any]:
    resp = api.sac("POST", "webhooks", json={"url": url, "kinds": kinds, **more})
    assert resp.status_code == 201, resp.text
    return resp.json()


def file(world: dict[str, Any], command: str) -> tuple[str, float]:
    """File a HITL request from the sandbox: (its id, the time just before filing)."""
    before = time.time()
    resp = world["sandbox"].post(
        "hitl/requests", json={"kind": "tool", "tool": "Bash", "input": {"command": command}}
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["id"], before


def deliveries(api: HubApi, hook_id: str) -> list[dict[str, Any]]:
    resp = api.sac("GET", f"webhooks/{hook_id}/deliveries")
    assert resp.status_code == 200, resp.text
    return resp.json()["deliveries"]


def test_a_hitl_request_reaches_a_json_webhook_signed_as_it_is_filed(
    world: dict[str, Any],
) -> None:
    owner, receiver = world["owner"], world["receiver"]
    path = f"/json-{uuid.uuid4().hex[:6]}"
    hook = create(owner, receiver.url(path), ["hitl.requested"])
    secret = hook["secret"]
    assert secret.startswith("whsec_") and hook["format"] == "json" and hook["enabled"]
    # The secret is shown once: never in a read or a list.
    assert "secret" not in owner.sac("GET", f"webhooks/{hook['id']}").json()
    listed = owner.sac("GET", "webhooks").json()["webhooks"]
    assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]

    rid, filed_at = file(world, "make deploy")
    (got,) = receiver.wait_for(path)
    print(f"\nFIGURE webhook_hitl_latency {got.at - filed_at:.3f} s (filing to receipt)")

    headers = {k.lower(): v for k, v in got.headers.items()}
    assert headers["x-sac-event"] == "hitl.requested"
    assert headers["content-type"] == "application/json"
    assert verify(secret, headers["x-sac-timestamp"], got.body, headers["x-sac-signature"])
    assert not verify(
        "whsec_wrong", headers["x-sac-timestamp"], got.body, headers["x-sac-signature"]
    )
    # A body changed in transit, or the same body with another timestamp, fails too.
    assert not verify(
        secret, headers["x-sac-timestamp"], got.body + b" ", headers["x-sac-signature"]
    )
    assert not verify(secret, str(int(headers["x-sac-timestamp"]) + 1), got.body,
                      headers["x-sac-signature"])  # fmt: skip
    body = json.loads(got.body)
    assert set(body) == {"id", "kind", "user", "agent", "time", "data"}
    assert body["kind"] == "hitl.requested" and body["user"] == world["ann"]
    assert body["agent"] == "gate" and isinstance(body["id"], int)
    assert body["data"]["id"] == rid and body["data"]["summary"] == "Bash: make deploy"

    def delivered() -> list[dict[str, Any]]:
        return [d for d in deliveries(owner, hook["id"]) if d["status"] == "delivered"]

    poll_until(delivered, 10, "the delivery recorded as delivered")
    (done,) = delivered()
    assert done["id"] == headers["x-sac-delivery"] and done["event_id"] == body["id"]
    assert done["attempts"] == 1 and done["last_status"] == 200 and done["last_error"] is None
    assert owner.sac("DELETE", f"webhooks/{hook['id']}").status_code == 204


def test_a_slack_webhook_gets_one_readable_line_linking_to_the_approval(
    world: dict[str, Any],
) -> None:
    owner, receiver = world["owner"], world["receiver"]
    path = f"/slack-{uuid.uuid4().hex[:6]}"
    hook = create(owner, receiver.url(path), ["hitl.requested"], format="slack")
    rid, _ = file(world, "rm -rf build")
    (got,) = receiver.wait_for(path)
    body = json.loads(got.body)
    assert list(body) == ["text"] and "\n" not in body["text"]
    assert f"{world['ann']}/gate" in body["text"] and "Bash: rm -rf build" in body["text"]
    assert f"/services/sac/approvals/{rid}|" in body["text"], body
    assert owner.sac("DELETE", f"webhooks/{hook['id']}").status_code == 204


def test_a_failing_receiver_is_tried_again_until_it_answers(world: dict[str, Any]) -> None:
    owner, receiver = world["owner"], world["receiver"]
    path = f"/flaky-{uuid.uuid4().hex[:6]}"
    receiver.script[path] = [500, 500, 200]
    hook = create(owner, receiver.url(path), ["hitl.decided"])
    resp = owner.sac("POST", f"webhooks/{hook['id']}/test")
    assert resp.status_code == 202, resp.text
    delivery = resp.json()["delivery"]
    posts = receiver.wait_for(path, 3)
    # One delivery, three attempts: the same X-SAC-Delivery each time.
    assert {p.headers["X-SAC-Delivery"] for p in posts} == {delivery}
    assert json.loads(posts[0].body)["kind"] == "webhook.test"

    def status() -> dict[str, Any] | None:
        (d,) = deliveries(owner, hook["id"])
        return d if d["status"] != "pending" else None

    done = poll_until(status, 10, "the delivery finished")
    assert done["status"] == "delivered" and done["attempts"] == 3 and done["last_status"] == 200

    # A 4xx other than 408 and 429 is not tried again: the receiver refuses it.
    gone = f"/gone-{uuid.uuid4().hex[:6]}"
    receiver.script[gone] = [410]
    resp = owner.sac("PATCH", f"webhooks/{hook['id']}", json={"url": receiver.url(gone)})
    assert resp.status_code == 200, resp.text
    assert owner.sac("POST", f"webhooks/{hook['id']}/test").status_code == 202

    def failed() -> dict[str, Any] | None:
        latest = deliveries(owner, hook["id"])[0]
        return latest if latest["status"] == "failed" else None

    refused = poll_until(failed, 10, "the delivery failed")
    assert refused["attempts"] == 1 and refused["last_status"] == 410
    assert "HTTP 410" in refused["last_error"]
    assert len(receiver.on(gone)) == 1
    assert owner.sac("DELETE", f"webhooks/{hook['id']}").status_code == 204


def test_the_allow_list_the_owner_and_the_kind_of_token_are_enforced(
    world: dict[str, Any],
) -> None:
    owner, bob, admin, receiver = world["owner"], world["bob"], world["admin"], world["receiver"]
    kinds = ["hitl.requested"]
    for url, code in [
        ("http://example.com/hook", "url_not_allowed"),
        ("http://localhost:9/hook", "url_not_allowed"),
        ("ftp://127.0.0.1/hook", "invalid_url"),
        ("http://user:pw@127.0.0.1/hook", "invalid_url"),
    ]:
        resp = owner.sac("POST", "webhooks", json={"url": url, "kinds": kinds})
        assert resp.status_code == 400 and resp.json()["error"] == code, (url, resp.text)
    resp = owner.sac("POST", "webhooks", json={"url": receiver.url("/x"), "kinds": ["nope"]})
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_field", resp.text

    hook = create(owner, receiver.url("/mine"), kinds)
    hid = hook["id"]
    # Another user's webhook does not exist for Bob.
    for method, path, body in [
        ("GET", f"webhooks/{hid}", None),
        ("PATCH", f"webhooks/{hid}", {"enabled": False}),
        ("DELETE", f"webhooks/{hid}", None),
        ("GET", f"webhooks/{hid}/deliveries", None),
        ("POST", f"webhooks/{hid}/test", None),
        ("POST", f"webhooks/{hid}/secret", None),
    ]:
        resp = bob.sac(method, path, json=body)
        assert resp.status_code == 404, (method, path, resp.text)
    assert bob.sac("GET", "webhooks").json()["webhooks"] == []
    assert bob.sac("GET", f"webhooks?user={world['ann']}").status_code in (403, 404)
    # The agent's own token never reaches webhooks, not even its owner's.
    sandbox = world["sandbox"]
    assert sandbox.get("webhooks").status_code == 403
    resp = sandbox.post("webhooks", json={"url": receiver.url("/agent"), "kinds": kinds})
    assert resp.status_code == 403, resp.text
    assert sandbox.get(f"webhooks/{hid}").status_code == 403

    # The owner changes it; a new secret is shown once; all audited, never a secret.
    resp = owner.sac(
        "PATCH", f"webhooks/{hid}", json={"enabled": False, "kinds": ["budget.exhausted"]}
    )
    assert resp.status_code == 200 and resp.json()["kinds"] == ["budget.exhausted"]
    assert owner.sac("POST", f"webhooks/{hid}/test").status_code == 409  # disabled
    rotated = owner.sac("POST", f"webhooks/{hid}/secret").json()["secret"]
    assert rotated.startswith("whsec_") and rotated != hook["secret"]
    # An administrator lists and removes another user's.
    listed = admin.sac("GET", f"webhooks?user={world['ann']}").json()["webhooks"]
    assert [h["id"] for h in listed] == [hid]
    assert admin.sac("DELETE", f"webhooks/{hid}?user={world['ann']}").status_code == 204
    assert owner.sac("GET", f"webhooks/{hid}").status_code == 404
    entries = admin.sac("GET", f"audit?target={hid}").json()["entries"]
    assert {e["action"] for e in entries} == {
        "webhook.create", "webhook.change", "webhook.secret", "webhook.delete",
    }  # fmt: skip
    text = json.dumps(entries)
    assert hook["secret"] not in text and rotated not in text and "/mine" not in text

    # Without an allow-list webhooks are off.
    saved = admin.sac("GET", "settings/system").json()["overrides"]
    off = {k: v for k, v in saved.items() if k != "webhook_allowed_hosts"}
    assert admin.sac("PUT", "settings/system", json=off).status_code == 200
    try:
        resp = owner.sac("POST", "webhooks", json={"url": receiver.url("/off"), "kinds": kinds})
        assert resp.status_code == 403 and resp.json()["error"] == "webhooks_not_allowed"
        assert "webhook_allowed_hosts" in resp.json()["message"]
    finally:
        assert admin.sac("PUT", "settings/system", json=saved).status_code == 200


def test_a_person_manages_webhooks_on_the_notifications_page(
    world: dict[str, Any], stack: dict
) -> None:
    import re

    from conftest import ADMIN_PASSWORD
    from helpers import browser_client, service_url, sign_up, xsrf_of

    name, password = f"whpg{uuid.uuid4().hex[:6]}", "a-long-enough-password-1"
    sign_up(stack["url"], name, password, ADMIN_PASSWORD)
    browser = browser_client(stack["url"], name, password)
    page = service_url(stack["url"]) + "notifications"

    def submit(form: dict[str, Any]) -> httpx.Response:
        token = xsrf_of(browser.get(page).text)
        return browser.post(page, data={**form, "_xsrf": token}, follow_redirects=False)

    shown = browser.get(page)
    assert shown.status_code == 200 and 'id="no-webhooks"' in shown.text
    assert "127.0.0.1" in shown.text  # the allow-list, said
    refused = submit({"action": "create", "url": "https://elsewhere.example/x",
                      "format": "json", "kinds": ["hitl.requested"]})  # fmt: skip
    assert refused.status_code == 400 and "elsewhere.example" in refused.text
    receiver = world["receiver"]
    made = submit({"action": "create", "url": receiver.url("/page"), "format": "json",
                   "kinds": ["hitl.requested", "agent.failed"]})  # fmt: skip
    assert made.status_code == 201, made.text
    secret = re.search(r'id="new-secret">[^<]*<code>([^<]+)</code>', made.text)
    assert secret, made.text
    listed = browser.get(page)
    assert receiver.url("/page") in listed.text and secret.group(1) not in listed.text
    hook_id = re.search(r'name="id" value="([^"]+)"', listed.text).group(1)

    assert submit({"action": "test", "id": hook_id}).status_code == 303
    (got,) = receiver.wait_for("/page")
    assert got.headers["X-SAC-Event"] == "webhook.test"
    assert verify(secret.group(1), got.headers["X-SAC-Timestamp"], got.body,
                  got.headers["X-SAC-Signature"])  # fmt: skip
    poll_until(lambda: "sac-delivery-delivered" in browser.get(page).text, 20, "the delivery shown")

    assert submit({"action": "disable", "id": hook_id}).status_code == 303
    assert "disabled" in browser.get(page).text
    assert submit({"action": "delete", "id": hook_id}).status_code == 303
    assert 'id="no-webhooks"' in browser.get(page).text
