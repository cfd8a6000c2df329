"""AgentsPanel: my agents, their state, Start / Stop / Open, and a create form."""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import quote

import ipywidgets as w

from ..client import Client
from ._base import OK_STYLE, SacWidget, error_html, error_text, esc, muted_html, plain_text, shorten

COLUMNS = {"name": "16em", "state": "6em", "model": "20em", "buttons": "11em", "open": "4em"}


def _cell(width: str) -> w.Layout:
    return w.Layout(width=width, flex="0 0 auto")


class AgentRow:
    """One agent in an ``AgentsPanel``.

    Attributes: ``slug``, ``owner``, ``record`` (the agent as last listed), ``name``
    (HTML: the slug and display name), ``state`` (Label: ``running``, ``pending`` or
    ``stopped``), ``model`` (Label: ``provider/model``), ``start_button``,
    ``stop_button``, ``open_link`` (HTML link to the agent's JupyterLab), ``status``
    (HTML: start progress and errors), ``progress`` (the last start's progress
    messages) and ``events`` (its progress events as the hub sent them), ``box``
    (the row's HBox) and ``working`` (a start or stop is under way)."""

    def __init__(self, panel: AgentsPanel, record: dict[str, Any]):
        self.panel = panel
        self.slug: str = record["slug"]
        self.owner: str = record["owner"]
        self.record: dict[str, Any] = record
        self.progress: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.working = False
        self.name = w.HTML(layout=_cell(COLUMNS["name"]))
        self.state = w.Label(layout=_cell(COLUMNS["state"]))
        self.model = w.Label(layout=_cell(COLUMNS["model"]))
        self.start_button = w.Button(
            description="Start",
            icon="play",
            tooltip="Start the agent",
            layout=w.Layout(width="5.3em"),
        )
        self.stop_button = w.Button(
            description="Stop",
            icon="stop",
            tooltip="Stop the agent",
            layout=w.Layout(width="5.3em"),
        )
        self.open_link = w.HTML(layout=_cell(COLUMNS["open"]))
        self.status = w.HTML(layout=w.Layout(flex="1 1 auto"))
        self.start_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        buttons = w.HBox([self.start_button, self.stop_button], layout=_cell(COLUMNS["buttons"]))
        self.box = w.HBox([self.name, self.state, self.model, buttons, self.open_link, self.status])
        self.update(record)

    @property
    def url(self) -> str:
        """The agent's JupyterLab."""
        base = self.panel.client.url if self.panel.client else "/"
        return f"{base}user/{quote(self.owner)}/{quote(self.slug)}/lab"

    def update(self, record: dict[str, Any]) -> None:
        self.record = record
        display = record.get("display_name") or self.slug
        extra = f" {muted_html(display)}" if display != self.slug else ""
        self.name.value = f"<b>{esc(self.slug)}</b>{extra}"
        self.model.value = f"{record.get('provider') or '?'}/{record.get('model') or '?'}"
        self.open_link.value = (
            f'<a href="{esc(self.url)}" target="_blank" rel="noopener" '
            f'title="Open {esc(self.slug)} in JupyterLab">Open</a>'
        )
        self.set_state(record.get("state", "stopped"))

    def set_state(self, state: str) -> None:
        self.record["state"] = state
        self.state.value = state
        self._buttons()

    def _buttons(self) -> None:
        state = self.state.value
        self.start_button.disabled = self.working or state != "stopped"
        self.stop_button.disabled = self.working or state == "stopped"

    def start(self) -> None:
        """Start the agent (in the background); the hub's progress shows in ``status``."""
        if self.working:
            return
        self.working = True
        self.progress = []
        self.events = []
        before = self.state.value
        self.set_state("pending")
        self.status.value = muted_html("starting…")
        agent = self.panel.client.agent(self.slug, self.owner)

        def progress(event: dict[str, Any]) -> None:
            self.events.append(event)
            message = event.get("message") or ""
            if message:
                self.progress.append(message)
            percent = event.get("progress")
            text = f"{message} ({percent}%)" if percent is not None else message
            self.panel._later(self._show, muted_html(text))

        def work() -> None:
            try:
                agent.start(progress=progress)
            except Exception as e:
                self.panel._later(self._failed, error_text(e), self._state_of(agent) or before)
            else:
                self.panel._later(self._done, "running", "started")

        self.panel._spawn(f"start-{self.slug}", work)

    def stop(self) -> None:
        """Stop the agent (in the background)."""
        if self.working:
            return
        self.working = True
        self.set_state(self.state.value)
        self.status.value = muted_html("stopping…")
        agent = self.panel.client.agent(self.slug, self.owner)

        def work() -> None:
            try:
                agent.stop()
            except Exception as e:
                self.panel._later(self._failed, error_text(e), self._state_of(agent))
            else:
                self.panel._later(self._done, "stopped", "stopped")

        self.panel._spawn(f"stop-{self.slug}", work)

    @staticmethod
    def _state_of(agent: Any) -> str | None:
        try:
            return agent.status()
        except Exception:
            return None

    def _show(self, html: str) -> None:
        if self.working:
            self.status.value = html

    def _done(self, state: str, what: str) -> None:
        self.working = False
        self.set_state(state)
        self.status.value = f'<span style="{OK_STYLE}">{esc(what)}</span>'

    def _failed(self, message: str, state: str | None) -> None:
        self.working = False
        self.set_state(state or self.state.value)
        self.status.value = error_html(message)

    def summary(self) -> str:
        model = shorten(self.model.value, 40)
        line = f"  {self.slug:<20} {self.state.value:<8} {model:<40}"
        status = shorten(plain_text(self.status.value), 80)
        return (line + "  " + status if status else line).rstrip()


class AgentsPanel(SacWidget):
    """My agents as a table, with their state and model, Start / Stop buttons (a
    start shows the hub's progress messages), an Open link to each agent's
    JupyterLab, a form to create an agent (slug, optional template and model) and
    Refresh.

    >>> panel = AgentsPanel()            # Client() from $SAC_HUB_URL and the token
    >>> panel                            # in a notebook: the table; in a console: text

    Attributes for code: ``rows`` (``AgentRow`` list, one per agent), ``row(slug)``,
    ``agents`` (the records as last listed), ``refresh_button``, ``status`` (HTML:
    listing errors), ``slug_input``, ``template_input`` (the templates' names),
    ``model_input``, ``create_button``,
    ``create_status`` (HTML: the service's answer to a create). Network calls run
    in background threads; errors show the service's message, never a traceback.
    ``refresh(wait=True)`` lists synchronously."""

    def __init__(self, client: Client | None = None) -> None:
        super().__init__(client, layout=w.Layout(width="100%"))
        self.rows: list[AgentRow] = []
        self.agents: list[dict[str, Any]] | None = None
        self.error: str | None = None
        self._generation = 0
        self._generation_lock = threading.Lock()
        self.refresh_button = w.Button(
            description="Refresh", icon="refresh", layout=w.Layout(width="7em")
        )
        self.refresh_button.on_click(lambda _: self.refresh())
        self.status = w.HTML()
        self.table = w.VBox()
        self.slug_input = w.Text(
            placeholder="new-agent", description="Slug", layout=w.Layout(width="16em")
        )
        self.model_input = w.Text(
            placeholder="the provider's default", description="Model", layout=w.Layout(width="22em")
        )
        # The agent templates I may use (docs/templates.md), filled in by each listing.
        self.template_input = w.Dropdown(
            options=[("no template", "")], value="", description="Template",
            layout=w.Layout(width="22em"),
        )  # fmt: skip
        self.create_button = w.Button(
            description="Create", icon="plus", button_style="primary", layout=w.Layout(width="7em")
        )
        self.create_button.on_click(lambda _: self.create())
        self.create_status = w.HTML()
        header = w.HBox(
            [
                w.HTML(f"<b>{label}</b>", layout=_cell(COLUMNS[key]))
                for key, label in [
                    ("name", "Agent"),
                    ("state", "State"),
                    ("model", "Provider/model"),
                    ("buttons", ""),
                    ("open", ""),
                ]
            ]
        )
        self.header = header
        self.children = (
            w.HBox([w.HTML("<b>My agents</b>"), self.refresh_button, self.status]),
            header,
            self.table,
            w.HBox(
                [
                    self.slug_input,
                    self.template_input,
                    self.model_input,
                    self.create_button,
                    self.create_status,
                ]
            ),
        )
        self.refresh(wait=not self._ui.interactive)

    # ---- listing ---------------------------------------------------------------------

    def refresh(self, wait: bool = False) -> None:
        """List the agents again (in the background unless ``wait``)."""
        with self._generation_lock:
            self._generation += 1
            generation = self._generation
        self.status.value = muted_html("loading…") if self.agents is None else ""
        if wait:
            self._load(generation)
        else:
            self._spawn("agents", self._load, generation)

    def _load(self, generation: int) -> None:
        assert self.client is not None
        try:
            agents = self.client.agents()
        except Exception as e:
            message = error_text(e)
            self.error = message
            self._later(self._apply_error, generation, message)
            return
        self.error = None
        self.agents = agents
        try:
            templates = self.client.templates()
        except Exception:
            templates = None  # the list stays as it was; creating without one still works
        self._later(self._apply, generation, agents)
        if templates is not None:
            self._later(self._apply_templates, templates)

    def _apply_error(self, generation: int, message: str) -> None:
        if generation == self._generation:
            self.status.value = error_html(message)

    def _apply(self, generation: int, agents: list[dict[str, Any]]) -> None:
        if generation != self._generation:
            return  # a newer listing is on its way
        self.status.value = ""
        by_slug = {row.slug: row for row in self.rows}
        rows = []
        for record in agents:
            row = by_slug.pop(record["slug"], None)
            if row is None:
                row = AgentRow(self, record)
            elif not row.working:
                row.update(record)
            rows.append(row)
        for gone in by_slug.values():
            gone.box.close()
        self.rows = rows
        self.table.children = tuple(row.box for row in rows) or (
            w.HTML(muted_html("No agents yet: create one below.")),
        )

    def _apply_templates(self, templates: list[dict[str, Any]]) -> None:
        chosen = self.template_input.value
        options = [("no template", "")] + [
            (f"{t['definition'].get('display_name', t['name'])} ({t['name']})", t["name"])
            for t in templates
        ]
        self.template_input.options = options
        self.template_input.value = chosen if chosen in {v for _, v in options} else ""

    def row(self, slug: str) -> AgentRow | None:
        """The row of agent ``slug`` (None if it is not listed)."""
        return next((row for row in self.rows if row.slug == slug), None)

    # ---- create ----------------------------------------------------------------------

    def create(
        self, slug: str | None = None, model: str | None = None, template: str | None = None
    ) -> None:
        """Create an agent from the form (or these values: ``template`` an agent
        template's name) in the background; it is listed, stopped, when the service
        has it."""
        slug = (self.slug_input.value if slug is None else slug).strip()
        model = (self.model_input.value if model is None else model).strip()
        template = self.template_input.value if template is None else template
        if not slug:
            self.create_status.value = error_html("give the new agent a slug")
            return
        fields: dict[str, Any] = {"model": model} if model else {}
        if template:
            fields["template"] = template
        self.create_button.disabled = True
        self.create_status.value = muted_html(f"creating {slug}…")

        def work() -> None:
            assert self.client is not None
            try:
                self.client.create_agent(slug, **fields)
            except Exception as e:
                self._later(self._created, slug, error_text(e))
                return
            self._later(self._created, slug, None)
            self._load(self._next_generation())

        self._spawn("create", work)

    def _next_generation(self) -> int:
        with self._generation_lock:
            self._generation += 1
            return self._generation

    def _created(self, slug: str, error: str | None) -> None:
        self.create_button.disabled = False
        if error:
            self.create_status.value = error_html(error)
        else:
            self.create_status.value = f'<span style="{OK_STYLE}">created {esc(slug)}</span>'
            if self.slug_input.value.strip() == slug:
                self.slug_input.value = ""
                self.model_input.value = ""
                self.template_input.value = ""

    # ---- text ------------------------------------------------------------------------

    def summary(self) -> str:
        url = self.client.url if self.client else ""
        lines = [f"SAC agents at {url}"]
        if self.agents is None and self.error is None:
            lines.append("  (loading…)")
        elif self.error and not self.rows:
            lines.append(f"  error: {self.error}")
        elif not self.rows and not self.agents:
            lines.append("  (no agents)")
        else:
            lines.append(f"  {'agent':<20} {'state':<8} provider/model")
            if self.rows:
                lines += [row.summary() for row in self.rows]
            else:  # listed, not drawn yet (the kernel is busy)
                lines += [
                    f"  {a['slug']:<20} {a.get('state', '?'):<8} "
                    f"{a.get('provider')}/{a.get('model')}"
                    for a in self.agents or []
                ]
            if self.error:
                lines.append(f"  error: {self.error}")
        return "\n".join(lines)
