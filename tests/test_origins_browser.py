"""Sandbox-served pages never share an origin with the hub or the `sac` service.

An agent's JupyterLab serves whatever its sandbox holds, and a model can write
there. In headless Chromium, a person logged in to the hub and the service opens
their agent's JupyterLab; script in that page (as script a model planted would
be) cannot read the hub's API or the service's with the person's login, nor the
service page that carries its XSRF token, and the hub and the service are not
even routed on the agent's host.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import pytest
from conftest import ADMIN_PASSWORD
from helpers import CHROMIUM_ARGS, HubApi, running_agent, sign_up_and_log_in

pytestmark = pytest.mark.stack

PROBE = """
async (urls) => {
  const out = {origin: location.origin};
  async function read(url, init) {
    try {
      const r = await fetch(url, init);
      return {type: r.type, status: r.status, body: (await r.text()).slice(0, 200)};
    } catch (e) {
      return {error: String(e)};
    }
  }
  const withLogin = {credentials: 'include'};
  out.hubApi = await read(urls.hub + 'hub/api/user', withLogin);
  out.hubApiOpaque = await read(urls.hub + 'hub/api/user', {credentials: 'include', mode: 'no-cors'});
  out.hubHome = await read(urls.hub + 'hub/home', withLogin);
  out.serviceApi = await read(urls.service + 'api/agents', withLogin);
  out.serviceSession = await read(urls.service + 'session', withLogin);
  out.hubHere = await read(location.origin + '/hub/api/user', withLogin);
  out.serviceHere = await read(location.origin + '/services/sac/api/agents', withLogin);
  // The service's session page (it carries the XSRF token) in a frame: unreadable.
  out.frame = await new Promise((resolve) => {
    const frame = document.createElement('iframe');
    frame.style.display = 'none';
    const done = () => {
      let readable;
      try {
        readable = frame.contentDocument !== null && frame.contentDocument.body !== null
          ? frame.contentDocument.body.innerHTML.slice(0, 200) : null;
      } catch (e) {
        readable = null;
      }
      resolve(readable);
    };
    frame.onload = done;
    setTimeout(done, 15000);
    frame.src = urls.service + 'session';
    document.body.appendChild(frame);
  });
  return out;
}
"""


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def test_agent_pages_cannot_use_the_persons_hub_and_service_login(stack: dict) -> None:
    from playwright.sync_api import sync_playwright

    admin: HubApi = stack["admin"]
    base, service = stack["url"], stack["service_url"]
    name, password = f"orig{uuid.uuid4().hex[:6]}", "a-long-enough-password-1"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = sign_up_and_log_in(browser, base, name, password, ADMIN_PASSWORD)
            with running_agent(admin, name, "desk", api_key="sk-unused-key"):
                # Logged in to the service too (its OAuth login), as after using it.
                page.goto(service)
                page.wait_for_selector("#sac-user")
                lab = admin.server_url(name, "desk")
                page.goto(lab + "lab")
                page.wait_for_url(lab + "lab**", timeout=120_000)
                page.wait_for_load_state("load")
                seen = page.evaluate(PROBE, {"hub": base, "service": service})
                # How the sidebar opens an agent (logic.ts agentOpenUrl): the hub's spawn
                # page on the hub's host, whose next path leads on to the agent's host.
                page.goto(f"{base}hub/spawn/{name}/desk?next=%2Fuser%2F{name}%2Fdesk%2Flab")
                page.wait_for_url(lab + "lab**", timeout=120_000)
        finally:
            browser.close()

    # Three origins: the agent's (its owner's host), the hub's and the service's.
    assert seen["origin"] == origin(lab)
    assert seen["origin"] != origin(base) and seen["origin"] != origin(service)
    assert origin(base) != origin(service)
    # The person's login is of no use to the page: cross-origin reads fail (no CORS)
    # or are opaque, and the service's XSRF token cannot be read.
    for key in ("hubApi", "hubHome", "serviceApi", "serviceSession"):
        assert "error" in seen[key], (key, seen[key])
    assert seen["hubApiOpaque"]["type"] == "opaque" and seen["hubApiOpaque"]["status"] == 0
    assert seen["frame"] is None, seen["frame"]
    # Neither the hub nor the service is routed on the agent's host.
    assert seen["hubHere"].get("status") == 404, seen["hubHere"]
    assert seen["serviceHere"].get("status") == 404, seen["serviceHere"]
