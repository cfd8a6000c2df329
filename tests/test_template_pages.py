"""The templates pages (docs/templates.md#the-templates-pages): a person forks a
shipped preset in Chromium, edits the copy's system prompt into version 2 and makes
an agent of it; a bad JSON field is shown beside itself and changes nothing; an
organisation template offers a person no edit form and refuses a forged one, while
a template curator changes it through the same operation (and audit entry) as
the API."""

from __future__ import annotations

import html
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import ADMIN_PASSWORD
from helpers import CHROMIUM_ARGS, HubApi, browser_client, log_in, service_url, sign_up, xsrf_of

pytestmark = pytest.mark.stack

PASSWORD = "a-long-enough-password-1"
CURATORS = "sac-template-curators"


@pytest.fixture
def person(stack: dict, admin: HubApi) -> Iterator[tuple[str, HubApi]]:
    """A person who signed up (a password, for the browser) and their API client."""
    name = f"tp{uuid.uuid4().hex[:8]}"
    sign_up(stack["url"], name, PASSWORD, ADMIN_PASSWORD)
    yield name, admin.create_user(name)


def error_beside(text: str, field: str) -> str:
    found = re.search(rf'id="t-{field}-error">([^<]*)<', text)
    return html.unescape(found.group(1)) if found else ""


def follow(browser: httpx.Client, stack: dict, resp: httpx.Response) -> str:
    """The page a form's redirect leads to (on the service's own host)."""
    path = resp.headers["location"].split("services/sac/", 1)[1]
    return browser.get(service_url(stack["url"]) + path).text


def post_form(browser: httpx.Client, url: str, form: dict[str, str]) -> httpx.Response:
    """A form posted as from the page at ``url``: with that page's XSRF token."""
    token = xsrf_of(browser.get(url).text)
    return browser.post(url, data={**form, "_xsrf": token}, follow_redirects=False)


def test_a_person_forks_a_preset_edits_it_and_makes_an_agent_of_version_2(
    stack: dict, person: tuple[str, HubApi], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    name, client = person
    artifacts = Path(os.environ.get("SAC_TEST_ARTIFACTS", tmp_path)) / "templates"
    artifacts.mkdir(parents=True, exist_ok=True)
    base = service_url(stack["url"])
    listed = client.sac("GET", "templates").json()["templates"]
    (preset,) = [t for t in listed if t["name"] == "code-assistant" and t["builtin"]]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            tab = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
            log_in(tab, stack["url"], name, PASSWORD)
            # From the home page's New agent form to the Templates page.
            tab.goto(base)
            tab.locator("#templates-link").click()
            expect(tab.locator("h1")).to_have_text("Agent templates")
            expect(tab.locator("nav .nav-link.active")).to_have_text("Templates")
            org_row = tab.locator(f"#template-{preset['id']}")
            expect(org_row).to_contain_text("organisation")
            expect(org_row).to_contain_text(preset["definition"]["display_name"])
            # A shipped preset is forked, never edited or deleted.
            expect(org_row.get_by_role("link", name="Edit code-assistant")).to_have_count(0)
            expect(org_row.get_by_role("button", name="Delete code-assistant")).to_have_count(0)
            tab.screenshot(path=str(artifacts / "1-templates.png"), full_page=True)
            org_row.get_by_role("button", name="Fork code-assistant").click()
            expect(tab.locator("#done")).to_contain_text("Forked: code-assistant is your own copy")
            expect(tab.locator("#template-scope")).to_contain_text(f"personal ({name})")
            expect(tab.locator("#template-version")).to_have_text("1")
            # Every field of the preset is shown: its prompt, tools, sub-agent, skills.
            expect(tab.locator("#template-system-prompt")).to_contain_text(
                preset["definition"]["system_prompt"][:40]
            )
            expect(tab.locator("#template-disallowed")).to_contain_text("WebSearch")
            expect(tab.locator("#template-skills")).to_contain_text("review-diff")
            expect(tab.locator("#sub-code-reviewer")).to_be_visible()
            fork_id = int(tab.url.rstrip("/").split("/")[-1].split("?")[0])

            # The system prompt edited on the page: version 2.
            tab.get_by_label("System prompt (optional)").fill("Answer in haiku.\nAlways.")
            tab.get_by_role("button", name="Save as a new version").click()
            expect(tab.locator("#done")).to_contain_text("Saved as version 2")
            expect(tab.locator("#template-version")).to_have_text("2")
            expect(tab.locator("#template-system-prompt")).to_have_text("Answer in haiku.\nAlways.")

            # A bad JSON field: the error beside it, what was typed kept, nothing saved.
            tab.get_by_label("Sub-agents (JSON)").fill('{"helper": {"description": "x"')
            tab.get_by_role("button", name="Save as a new version").click()
            expect(tab.locator("#t-subagents-error")).to_contain_text("not valid JSON")
            expect(tab.get_by_label("Sub-agents (JSON)")).to_have_value(
                '{"helper": {"description": "x"'
            )
            expect(tab.locator("#template-version")).to_have_text("2")
            # Valid JSON the API's rules refuse: the same words as the API, same place.
            tab.get_by_label("Sub-agents (JSON)").fill('{"helper": {"description": "x"}}')
            tab.get_by_role("button", name="Save as a new version").click()
            expect(tab.locator("#t-subagents-error")).to_contain_text("definition.subagents.helper")
            expect(tab.locator("#template-version")).to_have_text("2")
            tab.screenshot(path=str(artifacts / "2-template-error.png"), full_page=True)

            # The list shows my copy at version 2, mine to change.
            tab.get_by_role("link", name="Templates", exact=True).click()
            mine = tab.locator(f"#template-{fork_id}")
            expect(mine).to_contain_text("personal")
            expect(mine.locator("td").nth(4)).to_have_text("2")
            expect(mine.get_by_role("link", name="Edit code-assistant")).to_be_visible()
            expect(mine.get_by_role("button", name="Delete code-assistant")).to_be_visible()
        finally:
            browser.close()

    stored = client.sac("GET", f"templates/{fork_id}").json()
    assert (stored["scope"], stored["version"]) == ("personal", 2)
    assert stored["definition"]["system_prompt"] == "Answer in haiku.\nAlways."
    assert stored["definition"]["subagents"] == preset["definition"]["subagents"]
    # Apart from its prompt, the copy is the preset's definition, unchanged by the form.
    rest = {k: v for k, v in stored["definition"].items() if k != "system_prompt"}
    assert rest == {k: v for k, v in preset["definition"].items() if k != "system_prompt"}
    slug = f"h{uuid.uuid4().hex[:6]}"
    made = client.sac(
        "POST", "agents", json={"slug": slug, "template": fork_id, "api_key": "sk-unused-key-0000"}
    )
    assert made.status_code == 201, made.text
    try:
        agent = client.sac("GET", f"users/{name}/agents/{slug}").json()
        assert agent["template"] == {
            "id": fork_id, "name": "code-assistant", "version": 2, "latest_version": 2,
        }  # fmt: skip
    finally:
        client.sac("DELETE", f"users/{name}/agents/{slug}")
        client.sac("DELETE", f"templates/{fork_id}")


def test_an_organisation_template_is_changed_only_by_curators_through_the_api_rules(
    stack: dict, admin: HubApi, person: tuple[str, HubApi]
) -> None:
    name, _client = person
    org_name = f"org-{uuid.uuid4().hex[:6]}"
    definition = {"display_name": "Shared", "system_prompt": "Be brief."}
    made = admin.sac(
        "POST",
        "templates",
        json={"name": org_name, "scope": "organisation", "definition": definition},
    )
    assert made.status_code == 201, made.text
    org_id = made.json()["id"]
    curator = f"tc{uuid.uuid4().hex[:8]}"
    sign_up(stack["url"], curator, PASSWORD, ADMIN_PASSWORD)
    admin.create_user(curator)
    joined = admin.hub("POST", f"groups/{CURATORS}/users", json={"users": [curator]})
    assert joined.status_code == 200, joined.text
    url = service_url(stack["url"]) + f"templates/{org_id}"
    try:
        # A person sees it, every field, and may fork it; no edit or delete form.
        browser = browser_client(stack["url"], name, PASSWORD)
        shown = browser.get(url)
        assert shown.status_code == 200
        assert "Be brief." in shown.text and 'id="fork"' in shown.text
        assert 'id="template-form"' not in shown.text and 'id="delete"' not in shown.text
        listed = browser.get(service_url(stack["url"]) + "templates").text
        row = listed.split(f'id="template-{org_id}"', 1)[1].split("</tr>", 1)[0]
        assert "Fork" in row and "Edit" not in row and "Delete" not in row
        # Forged forms (with the page's own XSRF token) are refused; nothing changes.
        forged = post_form(browser, url, {"action": "save", "display_name": "Mine now"})
        assert forged.status_code == 403
        assert "organisation templates need an administrator" in html.unescape(forged.text)
        assert post_form(browser, url, {"action": "delete"}).status_code == 403
        after = admin.sac("GET", f"templates/{org_id}").json()
        assert (after["version"], after["definition"]) == (1, definition)

        # A curator (the group's scope) gets the form; a save is the API's, audited.
        desk = browser_client(stack["url"], curator, PASSWORD)
        assert 'id="template-form"' in desk.get(url).text
        bad = post_form(desk, url, {"action": "save", "display_name": "Shared",
                                    "hitl_policy": '{"default": "sometimes"}'})  # fmt: skip
        assert bad.status_code == 400
        assert "definition.hitl_policy.default" in error_beside(bad.text, "hitl_policy")
        assert admin.sac("GET", f"templates/{org_id}").json()["version"] == 1
        saved = post_form(desk, url, {"action": "save", "display_name": "Shared",
                                      "system_prompt": "Be briefer."})  # fmt: skip
        assert saved.status_code == 303, saved.text
        assert "Saved as version 2" in follow(desk, stack, saved)
        assert admin.sac("GET", f"templates/{org_id}").json()["definition"] == {
            "display_name": "Shared", "system_prompt": "Be briefer.",
        }  # fmt: skip
        entries = admin.sac("GET", "audit", params={"target": org_name}).json()["entries"]
        update = [e for e in entries if e["action"] == "template.update"]
        assert len(update) == 1 and update[0]["actor"] == curator
        assert update[0]["after"]["version"] == 2
    finally:
        admin.hub("DELETE", f"groups/{CURATORS}/users", json={"users": [curator]})
        admin.sac("DELETE", f"templates/{org_id}")


def test_a_person_creates_and_deletes_a_personal_template_on_the_pages(
    stack: dict, person: tuple[str, HubApi]
) -> None:
    name, client = person
    browser = browser_client(stack["url"], name, PASSWORD)
    new = service_url(stack["url"]) + "templates/new"
    # Like every page: never framed, scripts only the service's own files.
    for url in (new, service_url(stack["url"]) + "templates"):
        csp = browser.get(url).headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self';" in csp, url
    form = browser.get(new).text
    # Only curators are offered the organisation scope.
    assert 'name="scope" value="personal"' in form and "organisation:" not in form
    refused = post_form(browser, new, {"name": "Not A Name", "display_name": "X"})
    assert refused.status_code == 400 and "name" in error_beside(refused.text, "name")
    assert 'value="Not A Name"' in refused.text
    typed = {"name": "notes", "display_name": "Notes", "max_turns": "12",
             "allowed_tools": "Read\r\nBash(git diff:*)\r\n",
             "workspace_files": '{"README.md": "# Notes"}'}  # fmt: skip
    made = post_form(browser, new, typed)
    assert made.status_code == 303, made.text
    assert "Template notes created." in follow(browser, stack, made)
    (mine,) = [
        t for t in client.sac("GET", "templates").json()["templates"] if t["name"] == "notes"
    ]
    assert mine["definition"] == {
        "display_name": "Notes", "max_turns": 12, "allowed_tools": ["Read", "Bash(git diff:*)"],
        "workspace_files": {"README.md": "# Notes"},
    }  # fmt: skip
    page = service_url(stack["url"]) + f"templates/{mine['id']}"
    gone = post_form(browser, page, {"action": "delete"})
    assert gone.status_code == 303
    assert "Template notes deleted." in follow(browser, stack, gone)
    assert client.sac("GET", f"templates/{mine['id']}").status_code == 404
