"""The widgets in a real browser: headless Chromium logs in to the hub, opens a
notebook in an agent's JupyterLab, runs it (the kernel is inside the sandbox and
finds the hub by itself: the agent may drive the others), sees AgentsPanel and
ApprovalsPanel render, and decides a request another agent is waiting on through
the panel's link to the service's page (no token in a sandbox decides)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ADMIN_PASSWORD
from helpers import (
    CHROMIUM_ARGS,
    HubApi,
    allow_all,
    log_in,
    model_agent,
    run_in_terminal,
    script_model,
)

from sac_testing.stack import poll_until

pytestmark = pytest.mark.stack


NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "metadata": {},
            "outputs": [],
            "execution_count": None,
            "source": src,
        }
        for src in (
            "from jupyter_sac.widgets import AgentsPanel, ApprovalsPanel",
            "AgentsPanel()",
            "ApprovalsPanel(interval=0.5)",
        )
    ],
    "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
    },
    "nbformat": 4,
    "nbformat_minor": 5,
}


def run_cells_one_by_one(page: Any, artifacts: Path, count: int) -> None:
    """Run the notebook's cells as a person does, Shift+Enter on each once the one
    before has its execution count. A failure here keeps the notebook's text,
    JupyterLab's notifications and a screenshot. (A CI run once had "Run All Cells"
    run only the first cell: it ran before JupyterLab had attached the notebook to its
    kernel, see the wait for the kernel's name below.)"""
    from playwright.sync_api import expect

    cells = page.locator(".jp-Notebook .jp-CodeCell")
    for index in range(count):
        cell = cells.nth(index)
        try:
            cell.locator(".jp-InputArea-editor").click()
            page.keyboard.press("Shift+Enter")
            expect(cell.locator(".jp-InputPrompt")).to_have_text(
                re.compile(r"^\[\d+\]:$"), timeout=90_000
            )
        except AssertionError as failed:
            page.screenshot(path=str(artifacts / f"widgets-cell-{index + 1}-failed.png"))
            notebook = page.locator(".jp-Notebook").inner_text()
            toasts = page.locator(".jp-toast-message, .Toastify__toast").all_inner_texts()
            raise AssertionError(
                f"cell {index + 1} did not run: {failed}\n"
                f"notebook:\n{notebook}\nnotifications: {toasts}"
            ) from None


def open_kernel_session(admin: HubApi, desk: str, notebook: str) -> str:
    """The notebook's kernel session, made before the page opens, so JupyterLab
    attaches to it instead of (sometimes) asking which kernel to start; its kernel's id."""
    session = httpx.post(
        admin.server_url("admin", desk) + "api/sessions",
        headers={"Authorization": f"token {admin.token}"},
        json={"path": notebook, "name": notebook, "type": "notebook",
              "kernel": {"name": "python3"}},
        timeout=60,
    )  # fmt: skip
    assert session.status_code == 201, session.text
    kernel_id: str = session.json()["kernel"]["id"]
    return kernel_id


@pytest.fixture
def agents(stack: dict) -> Iterator[tuple[HubApi, str, str]]:
    """Two of the admin's agents: "desk" (where the notebook runs; it may drive the
    others) and "worker"."""
    admin: HubApi = stack["admin"]
    suffix = uuid.uuid4().hex[:4]
    desk, worker = f"desk{suffix}", f"worker{suffix}"
    for slug in (desk, worker):
        fields = {"slug": slug, "api_key": "sk-unused-key", "drive_agents": slug == desk}
        resp = admin.sac("POST", "agents", json=fields)
        assert resp.status_code == 201, resp.text
        admin.start("admin", slug)
    try:
        yield admin, desk, worker
    finally:
        for slug in (desk, worker):
            admin.sac("DELETE", f"users/admin/agents/{slug}")


def test_approvals_panel_hands_over_to_the_service_from_jupyterlab(
    stack: dict, agents: tuple[HubApi, str, str], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    admin, desk, worker = agents
    artifacts = Path(os.environ.get("SAC_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    (root,) = (stack["data_dir"] / "agents").glob(f"*-{desk}")
    (root / "workspace" / "widgets.ipynb").write_text(json.dumps(NOTEBOOK))

    # The worker agent waits on a human for a command (filed with its own token).
    token = asyncio.run(
        run_in_terminal(stack["url"], admin.token, "admin", worker, "echo $SAC_AGENT_TOKEN")
    )
    command = f"make report-{uuid.uuid4().hex[:6]}"
    filed = httpx.post(
        stack["service_url"] + "api/hitl/requests",
        headers={"Authorization": f"Bearer {token}"},
        json={"kind": "tool", "tool": "Bash", "input": {"command": command}},
    )
    assert filed.status_code == 201, filed.text
    request_id = filed.json()["id"]

    # The notebook's kernel session exists before the page opens, so JupyterLab
    # attaches to it instead of (sometimes) asking which kernel to start.
    kernel_id = open_kernel_session(admin, desk, "widgets.ipynb")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        # The page's console goes to the artifacts: when a page error comes from
        # inside JupyterLab, its warnings around it are what tell why.
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        try:
            log_in(page, stack["url"], "admin", ADMIN_PASSWORD)
            page.goto(admin.server_url("admin", desk) + "lab/tree/widgets.ipynb")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            # JupyterLab attaches the notebook to its kernel's session a moment after
            # the cells show. A cell run before then makes JupyterLab start a second
            # kernel and shut down the first, together with anything it was doing
            # (two CI runs lost cells or a widget's comm that way), so wait until the
            # toolbar names the kernel, as a person would see before running a cell.
            kernel_name = page.locator(".jp-NotebookPanel-toolbar .jp-Toolbar-kernelName")
            expect(kernel_name).to_contain_text("Python 3", timeout=90_000)
            page.wait_for_selector(
                ".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000
            )
            run_cells_one_by_one(page, artifacts, len(NOTEBOOK["cells"]))

            # AgentsPanel lists both agents as running.
            agents_out = page.locator(".jp-OutputArea-output").filter(has_text="My agents")
            expect(agents_out).to_contain_text(worker, timeout=90_000)
            expect(agents_out).to_contain_text(desk)
            expect(agents_out.get_by_text("running")).to_have_count(2)
            # ApprovalsPanel shows the worker's request, without Approve (the kernel's
            # token is the sandbox's): its link opens the service's page, where the
            # person decides with their own login.
            approvals = page.locator(".jp-OutputArea-output").filter(
                has_text="Waiting for approval"
            )
            expect(approvals).to_contain_text(command, timeout=60_000)
            expect(approvals.get_by_role("button", name="Approve")).to_have_count(0)
            page.screenshot(path=str(artifacts / "widgets-1-pending.png"))
            with page.context.expect_page() as opened:
                approvals.get_by_role("link", name=re.compile("Review and decide on SAC")).click()
            decide = opened.value
            decide.wait_for_load_state()
            assert decide.url == stack["service_url"] + f"approvals/{request_id}", decide.url
            decide.get_by_role("button", name="Approve").click()
            expect(decide.locator("#done")).to_contain_text("Allowed")
            decide.close()

            def decided() -> str | None:
                got = admin.sac("GET", f"hitl/requests/{request_id}").json()
                return got["status"] if got["status"] != "pending" else None

            assert poll_until(decided, 30, "the request decided") == "approved"
            expect(approvals).not_to_contain_text(command, timeout=30_000)
            expect(approvals).to_contain_text("Waiting for approval (0)")
            page.screenshot(path=str(artifacts / "widgets-2-approved.png"))

            # The next request is denied the same way: the worker, waiting on it, is
            # told no.
            refused = f"make purge-{uuid.uuid4().hex[:6]}"
            second = httpx.post(
                stack["service_url"] + "api/hitl/requests",
                headers={"Authorization": f"Bearer {token}"},
                json={"kind": "tool", "tool": "Bash", "input": {"command": refused}},
            )
            assert second.status_code == 201, second.text
            expect(approvals).to_contain_text(refused, timeout=60_000)
            with page.context.expect_page() as opened:
                approvals.get_by_role("link", name=re.compile("Review and decide on SAC")).click()
            decide = opened.value
            decide.wait_for_load_state()
            assert decide.url == stack["service_url"] + f"approvals/{second.json()['id']}"
            decide.get_by_role("button", name="Deny").click()
            expect(decide.locator("#done")).to_contain_text("Denied")
            decide.close()
            waited = httpx.get(
                stack["service_url"] + f"api/hitl/requests/{second.json()['id']}/wait",
                headers={"Authorization": f"Bearer {token}"},
                params={"timeout": 30},
                timeout=60,
            )
            assert waited.status_code == 200, waited.text
            assert (waited.json()["status"], waited.json()["decision"]) == ("denied", "deny")
            expect(approvals).not_to_contain_text(refused, timeout=30_000)
            expect(approvals).to_contain_text("Waiting for approval (0)")

            # The cells ran on the kernel of the session made above: JupyterLab did
            # not replace it with a kernel of its own.
            kernels = httpx.get(
                admin.server_url("admin", desk) + "api/kernels",
                headers={"Authorization": f"token {admin.token}"},
            ).json()
            assert [k["id"] for k in kernels] == [kernel_id]
        finally:
            (artifacts / "widgets-console.txt").write_text("\n".join(console))
            browser.close()
    assert not errors, f"page errors: {errors}\nconsole, last lines:\n" + "\n".join(console[-30:])


def test_tasks_panel_submits_a_task_and_shows_its_result_in_jupyterlab(
    stack: dict, fake: str, tmp_path: Path
) -> None:
    """A notebook in one agent ("desk", which may drive the others) shows another
    agent's TasksPanel; a person types a prompt and submits it; the panel follows
    the task (the service starts the stopped worker) to its result and file."""
    from playwright.sync_api import expect, sync_playwright

    admin: HubApi = stack["admin"]
    suffix = uuid.uuid4().hex[:4]
    desk, worker = f"tdesk{suffix}", f"tworker{suffix}"
    resp = admin.sac("POST", "agents", json={"slug": desk, "api_key": "sk-unused-key",
                                             "drive_agents": True})  # fmt: skip
    assert resp.status_code == 201, resp.text
    resp = admin.sac("POST", "agents", json={"slug": worker, **model_agent(fake)})
    assert resp.status_code == 201, resp.text
    artifacts = Path(os.environ.get("SAC_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    try:
        allow_all(admin, "admin", worker)
        admin.start("admin", desk)
        script_model(
            fake,
            {"text": "Writing.", "tool_use": {"name": "Write", "input": {
                "file_path": "/workspace/output/summary.md", "content": "short\n"}}},
            "Summary written to output/summary.md.",
        )  # fmt: skip
        notebook = {
            **NOTEBOOK,
            "cells": [
                {**NOTEBOOK["cells"][0], "source": src}
                for src in (
                    "from jupyter_sac.client import Client\n"
                    "from jupyter_sac.widgets import TasksPanel",
                    f"TasksPanel(Client().agent({worker!r}), interval=0.5)",
                )
            ],
        }
        (root,) = (stack["data_dir"] / "agents").glob(f"*-{desk}")
        (root / "workspace" / "tasks.ipynb").write_text(json.dumps(notebook))
        open_kernel_session(admin, desk, "tasks.ipynb")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            try:
                log_in(page, stack["url"], "admin", ADMIN_PASSWORD)
                page.goto(admin.server_url("admin", desk) + "lab/tree/tasks.ipynb")
                page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
                kernel_name = page.locator(".jp-NotebookPanel-toolbar .jp-Toolbar-kernelName")
                expect(kernel_name).to_contain_text("Python 3", timeout=90_000)
                page.wait_for_selector(
                    ".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000
                )
                run_cells_one_by_one(page, artifacts, len(notebook["cells"]))
                panel = page.locator(".jp-OutputArea-output").filter(has_text=f"Tasks of {worker}")
                expect(panel).to_contain_text("No tasks yet", timeout=60_000)
                panel.locator("textarea").fill("Summarise the notes into output/summary.md")
                panel.get_by_role("button", name="Submit").click()
                expect(panel).to_contain_text("submitted", timeout=60_000)
                expect(panel).to_contain_text("Summarise the notes", timeout=60_000)
                # The service starts the stopped worker and runs the turn.
                expect(panel).to_contain_text("succeeded", timeout=240_000)
                expect(panel).to_contain_text("Summary written to output/summary.md.")
                link = panel.get_by_role("link", name="output/summary.md")
                expect(link).to_have_count(1)
                expect(panel.get_by_role("button", name="Cancel")).to_be_disabled()
                page.screenshot(path=str(artifacts / "tasks-panel.png"))
            finally:
                browser.close()
        assert not errors, f"page errors: {errors}"
        (task,) = admin.sac("GET", "tasks", params={"agent": worker}).json()["tasks"]
        assert task["status"] == "succeeded" and task["created_by"] == "admin"
        assert [a["path"] for a in task["artifacts"]] == ["output/summary.md"]
    finally:
        for slug in (desk, worker):
            admin.sac("DELETE", f"users/admin/agents/{slug}")
