"""TasksPanel: an agent's tasks (docs/api.md#tasks) with their status, result and
artifacts, Cancel, and a form to submit one."""

from __future__ import annotations

import threading
from typing import Any

import ipywidgets as w

from ..client import Agent
from ..client._async import TASK_ENDED
from ._base import OK_STYLE, SacWidget, error_html, error_text, esc, muted_html, plain_text, shorten

COLUMNS = {"status": "7em", "prompt": "18em", "result": "24em", "artifacts": "14em"}


def _cell(width: str) -> w.Layout:
    return w.Layout(width=width, flex="0 0 auto")


class TaskRow:
    """One task in a ``TasksPanel``: ``task_id``, ``record`` (the task as last
    listed), ``status`` (Label), ``prompt``, ``result`` and ``artifacts`` (HTML:
    links to the files' downloads), ``cancel_button``, ``note`` (HTML: a cancel's
    error) and ``box``."""

    def __init__(self, panel: TasksPanel, record: dict[str, Any]):
        self.panel = panel
        self.task_id: str = record["id"]
        self.record = record
        self.status = w.Label(layout=_cell(COLUMNS["status"]))
        self.prompt = w.HTML(layout=_cell(COLUMNS["prompt"]))
        self.result = w.HTML(layout=_cell(COLUMNS["result"]))
        self.artifacts = w.HTML(layout=_cell(COLUMNS["artifacts"]))
        self.cancel_button = w.Button(
            description="Cancel", icon="times", tooltip="Cancel the task",
            layout=w.Layout(width="6.5em"),
        )  # fmt: skip
        self.cancel_button.on_click(lambda _: self.cancel())
        self.note = w.HTML(layout=w.Layout(flex="1 1 auto"))
        self.box = w.HBox(
            [self.status, self.prompt, self.result, self.artifacts, self.cancel_button, self.note]
        )
        self.update(record)

    def update(self, record: dict[str, Any]) -> None:
        self.record = record
        self.status.value = record["status"]
        self.prompt.value = esc(shorten(record["prompt"], 120))
        if record.get("result"):
            self.result.value = esc(shorten(record["result"], 300))
        elif record.get("error"):
            self.result.value = error_html(shorten(record["error"], 300))
        else:
            self.result.value = muted_html("…" if record["status"] == "running" else "")
        self.artifacts.value = "<br>".join(
            f'<a href="{esc(a["url"])}" target="_blank" rel="noopener">{esc(a["path"])}</a>'
            for a in record.get("artifacts") or []
        )
        self.cancel_button.disabled = record["status"] in TASK_ENDED or bool(
            record.get("cancel_requested")
        )

    def cancel(self) -> None:
        """Cancel the task (in the background); the panel follows it to its end."""
        self.cancel_button.disabled = True
        assert self.panel.client is not None
        client = self.panel.client

        def work() -> None:
            try:
                task = client.task(self.task_id).cancel()
            except Exception as e:
                self.panel._later(self._failed, error_text(e))
                return
            self.panel._later(self.update, task.model)
            self.panel._follow()

        self.panel._spawn(f"cancel-{self.task_id}", work)

    def _failed(self, message: str) -> None:
        self.note.value = error_html(message)
        self.update(self.record)

    def summary(self) -> str:
        result = shorten(plain_text(self.result.value), 60)
        return f"  {self.status.value:<10} {shorten(self.record['prompt'], 40):<40}  {result}"


class TasksPanel(SacWidget):
    """An agent's tasks, newest first: status, prompt, result (or error), links to
    the files written under output/, and Cancel; a form to submit one (prompt,
    timeout, a repository to check out first); Refresh. While a task is queued or
    running the panel asks again every ``interval`` seconds.

    >>> TasksPanel(Client().agent("helper"))

    Attributes for code: ``rows`` (``TaskRow`` list), ``row(task_id)``, ``tasks``
    (the records as last listed), ``refresh_button``, ``status``, ``prompt_input``,
    ``timeout_input``, ``repository_input``, ``ref_input``, ``submit_button``,
    ``submit_status``. ``refresh(wait=True)`` lists synchronously."""

    def __init__(self, agent: Agent, interval: float = 2.0) -> None:
        self.agent = agent
        self.interval = interval
        super().__init__(agent.client, layout=w.Layout(width="100%"))
        self.rows: list[TaskRow] = []
        self.tasks: list[dict[str, Any]] | None = None
        self.error: str | None = None
        self._following = False
        self._wanted = False
        self._follow_lock = threading.Lock()
        self.refresh_button = w.Button(
            description="Refresh", icon="refresh", layout=w.Layout(width="7em")
        )
        self.refresh_button.on_click(lambda _: self.refresh())
        self.status = w.HTML()
        self.table = w.VBox()
        self.prompt_input = w.Textarea(
            placeholder="What should the agent do?", description="Prompt",
            layout=w.Layout(width="40em", height="5em"),
        )  # fmt: skip
        self.timeout_input = w.BoundedIntText(
            value=600, min=10, max=86400, description="Timeout (s)", layout=w.Layout(width="14em")
        )
        self.repository_input = w.Text(
            placeholder="https://… (optional)", description="Repository",
            layout=w.Layout(width="28em"),
        )  # fmt: skip
        self.ref_input = w.Text(
            placeholder="main", description="Ref", layout=w.Layout(width="14em")
        )
        self.submit_button = w.Button(
            description="Submit", icon="paper-plane", button_style="primary",
            layout=w.Layout(width="7em"),
        )  # fmt: skip
        self.submit_button.on_click(lambda _: self.submit())
        self.submit_status = w.HTML()
        header = w.HBox(
            [
                w.HTML(f"<b>{label}</b>", layout=_cell(COLUMNS[key]))
                for key, label in [
                    ("status", "Status"),
                    ("prompt", "Prompt"),
                    ("result", "Result"),
                    ("artifacts", "Files"),
                ]
            ]
        )
        self.children = (
            w.HBox(
                [w.HTML(f"<b>Tasks of {esc(agent.slug)}</b>"), self.refresh_button, self.status]
            ),
            header,
            self.table,
            self.prompt_input,
            w.HBox([self.timeout_input, self.repository_input, self.ref_input]),
            w.HBox([self.submit_button, self.submit_status]),
        )
        self.refresh(wait=not self._ui.interactive)

    # ---- listing ---------------------------------------------------------------------

    def refresh(self, wait: bool = False) -> None:
        """List the tasks again (in the background unless ``wait``)."""
        self.status.value = muted_html("loading…") if self.tasks is None else ""
        if wait:
            self._load()
        else:
            self._spawn("tasks", self._load)

    def _load(self) -> bool:
        """List (and follow while a task is open); whether one is."""
        try:
            tasks = [t.model for t in self.agent.tasks()]
        except Exception as e:
            self.error = error_text(e)
            self._later(self._apply_error, self.error)
            return False
        self.error = None
        self.tasks = tasks
        self._later(self._apply, tasks)
        open_ = any(t["status"] not in TASK_ENDED for t in tasks)
        if open_:
            self._follow()
        return open_

    def _follow(self) -> None:
        """Ask again every ``interval`` seconds until no task is open (one follower;
        a call while it runs makes it go on at least one more round)."""
        with self._follow_lock:
            self._wanted = True
            if self._following:
                return
            self._following = True

        def work() -> None:
            try:
                while not self._closing.wait(self.interval):
                    with self._follow_lock:
                        self._wanted = False
                    still_open = self._list_quietly()
                    with self._follow_lock:
                        if not still_open and not self._wanted:
                            return
            finally:
                with self._follow_lock:
                    self._following = False

        if self._spawn("tasks-follow", work) is None:
            with self._follow_lock:
                self._following = False

    def _list_quietly(self) -> bool:
        """One listing for the follower (which must not start another follower)."""
        try:
            tasks = [t.model for t in self.agent.tasks()]
        except Exception as e:
            self.error = error_text(e)
            self._later(self._apply_error, self.error)
            return True  # try again at the next round
        self.error = None
        self.tasks = tasks
        self._later(self._apply, tasks)
        return any(t["status"] not in TASK_ENDED for t in tasks)

    def _apply_error(self, message: str) -> None:
        self.status.value = error_html(message)

    def _apply(self, tasks: list[dict[str, Any]]) -> None:
        self.status.value = ""
        by_id = {row.task_id: row for row in self.rows}
        rows = []
        for record in tasks:
            row = by_id.pop(record["id"], None)
            if row is None:
                row = TaskRow(self, record)
            else:
                row.update(record)
            rows.append(row)
        for gone in by_id.values():
            gone.box.close()
        self.rows = rows
        self.table.children = tuple(row.box for row in rows) or (
            w.HTML(muted_html("No tasks yet: submit one below.")),
        )

    def row(self, task_id: str) -> TaskRow | None:
        return next((row for row in self.rows if row.task_id == task_id), None)

    # ---- submit ----------------------------------------------------------------------

    def submit(self) -> None:
        """Submit the form's task (in the background); it is listed when queued."""
        prompt = self.prompt_input.value
        if not prompt.strip():
            self.submit_status.value = error_html("write a prompt first")
            return
        url, ref = self.repository_input.value.strip(), self.ref_input.value.strip()
        repository = ({"url": url, **({"ref": ref} if ref else {})}) if url else None
        timeout = int(self.timeout_input.value)
        self.submit_button.disabled = True
        self.submit_status.value = muted_html("submitting…")

        def work() -> None:
            try:
                task = self.agent.submit(prompt, timeout=timeout, repository=repository)
            except Exception as e:
                self._later(self._submitted, None, error_text(e))
                return
            self._later(self._submitted, task.id, None)
            self._load()

        self._spawn("submit", work)

    def _submitted(self, task_id: str | None, error: str | None) -> None:
        self.submit_button.disabled = False
        if error:
            self.submit_status.value = error_html(error)
            return
        self.submit_status.value = f'<span style="{OK_STYLE}">submitted</span>'
        self.prompt_input.value = ""

    # ---- text ------------------------------------------------------------------------

    def summary(self) -> str:
        lines = [f"Tasks of {self.agent.slug}"]
        if self.tasks is None and self.error is None:
            lines.append("  (loading…)")
        elif self.error:
            lines.append(f"  error: {self.error}")
        elif not self.tasks:
            lines.append("  (no tasks)")
        else:
            lines += [row.summary() for row in self.rows] or [
                f"  {t['status']:<10} {shorten(t['prompt'], 40)}" for t in self.tasks
            ]
        return "\n".join(lines)
