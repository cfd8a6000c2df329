"""Workspace archives on the real stack (hub, proxy, service, a local sandbox), through
the agent's server as its owner reaches it, and in JupyterLab in headless Chromium:
a ZIP uploaded through the API is unpacked (a bad one refused and nothing
written), a folder's "Download as ZIP" in the file browser's context menu saves
the folder's files, and "Upload ZIP Here…" unpacks a chosen ZIP into the folder
shown."""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import ADMIN_PASSWORD
from helpers import CHROMIUM_ARGS, HubApi, model_agent, sign_up_and_log_in

from sac_testing.stack import poll_until

pytestmark = pytest.mark.stack

PASSWORD = "a-long-enough-password-1"
FILES = {"a.txt": b"alpha\n", "data/b.csv": b"x,y\n1,2\n", "Résumé.md": b"# CV\n"}


def make_zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_folders_go_and_come_as_zips_in_jupyterlab(
    stack: dict, fake: str, browser: object, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    base = stack["url"]
    admin: HubApi = stack["admin"]
    name = f"zip{uuid.uuid4().hex[:6]}"
    page = sign_up_and_log_in(
        browser, base, name, PASSWORD, ADMIN_PASSWORD,
        viewport={"width": 1400, "height": 900}, accept_downloads=True,
    )  # fmt: skip
    owner = admin.harness_api().token_for(name)
    resp = owner.sac("POST", "agents", json={"slug": "desk", **model_agent(fake)})
    assert resp.status_code == 201, resp.text
    try:
        owner.start(name, "desk")
        lab = admin.server_url(name, "desk")
        api = httpx.Client(headers={"Authorization": f"token {owner.token}"}, timeout=60)
        archive = lab + "sac/api/workspace/archive"

        # The API through the hub's proxy: unpacked, refused as a whole, or a 409.
        made = api.post(archive, params={"path": "output/report"}, content=make_zip(FILES))
        assert made.status_code == 200, made.text
        assert sorted(made.json()["files"]) == sorted(f"output/report/{n}" for n in FILES)
        bad = make_zip({"fine.txt": b"fine", "../../escape.txt": b"x"})
        refused = api.post(archive, params={"path": "output/report"}, content=bad)
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_archive"
        listing = api.get(lab + "api/contents/output/report").json()["content"]
        assert sorted(i["name"] for i in listing) == ["Résumé.md", "a.txt", "data"]
        again = api.post(archive, params={"path": "output/report"}, content=make_zip(FILES))
        assert again.status_code == 409 and again.json()["error"] == "conflict"

        # JupyterLab: right-click the folder, Download as ZIP.
        page.goto(lab + "lab/tree/output")
        folder = page.locator('.jp-DirListing-item[data-isdir="true"]', has_text="report")
        expect(folder).to_be_visible(timeout=60_000)
        folder.click(button="right")
        with page.expect_download() as download:
            page.locator(".lm-Menu-item", has_text="Download as ZIP").click()
        assert download.value.suggested_filename == "report.zip"
        saved = tmp_path / "report.zip"
        download.value.save_as(saved)
        with zipfile.ZipFile(saved) as z:
            assert z.testzip() is None
            assert {n: z.read(n) for n in z.namelist() if not n.endswith("/")} == FILES

        # Upload ZIP Here… on the listing: unpacked into the folder shown (output/).
        upload = tmp_path / "more.zip"
        upload.write_bytes(make_zip({"more/notes.txt": b"more notes\n"}))
        page.locator(".jp-DirListing-content").click(button="right", position={"x": 50, "y": 250})
        with page.expect_file_chooser() as chooser:
            page.locator(".lm-Menu-item", has_text="Upload ZIP Here").click()
        chooser.value.set_files(str(upload))
        notes = lab + "api/contents/output/more/notes.txt"
        poll_until(lambda: api.get(notes).status_code == 200, 30, "output/more/notes.txt")
        assert api.get(notes, params={"content": "1"}).json()["content"] == "more notes\n"
        # and the listing shows it (refreshed after the upload)
        expect(
            page.locator('.jp-DirListing-item[data-isdir="true"]', has_text="more")
        ).to_be_visible(timeout=30_000)
    finally:
        owner.sac("DELETE", f"users/{name}/agents/desk")
