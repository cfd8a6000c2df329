"""ApprovalsPanel: the human in the loop, live in a notebook."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import weakref
from typing import Any

import ipywidgets as w

from ..client import Client, Conflict, Forbidden, SacError
from ._base import (
    OK_STYLE,
    SacWidget,
    describe_input,
    error_html,
    error_text,
    esc,
    muted_html,
    plain_text,
    shorten,
)
from .policy import PolicyEditor


class ApprovalRow:
    """One pending request in an ``ApprovalsPanel``.

    Attributes: ``request`` (as the service listed it), ``id``, ``agent`` and
    ``tool`` (Labels), ``input_view`` (HTML: a short rendering of the input; for a
    terminal prompt its question and options), ``option`` (Dropdown of a terminal
    prompt's options, else None), ``answer`` (Text: the answer to a prompt that
    takes text, else None), ``reason`` (Text, optional), ``approve_button``,
    ``deny_button``, ``dismiss_button`` (shown once the row is settled),
    ``status`` (HTML: the outcome, or the service's refusal such as 403 or 409),
    ``decision`` (``approved``/``denied`` once decided here), ``settled`` (kept
    until dismissed because it shows an outcome the user should see) and ``box``."""

    def __init__(self, panel: ApprovalsPanel, request: dict[str, Any]):
        self.panel = panel
        self.request = request
        self.id: str = request["id"]
        self.decision: str | None = None
        self.settled = False
        self.working = False
        self.agent = w.Label(request.get("agent", "?"), layout=w.Layout(width="10em"))
        self.tool = w.Label(
            request.get("tool") or request.get("kind", "?"), layout=w.Layout(width="8em")
        )
        self.input_view = w.HTML(_summary_html(request), layout=w.Layout(flex="1 1 auto"))
        self.option: w.Dropdown | None = None
        options = request.get("options") or []
        if options:
            self.option = w.Dropdown(
                options=[(f"{o.get('key')}. {o.get('label')}", o.get("key")) for o in options],
                value=options[0].get("key"),
                description="Option",
                layout=w.Layout(width="20em"),
            )
        self.answer: w.Text | None = None
        if request.get("text_max"):
            self.answer = w.Text(
                placeholder=f"or answer with text (≤ {request['text_max']})",
                layout=w.Layout(width="16em"),
            )
        self.reason = w.Text(placeholder="reason (optional)", layout=w.Layout(width="12em"))
        self.approve_button = w.Button(
            description="Approve",
            icon="check",
            button_style="success",
            layout=w.Layout(width="8.5em"),
        )
        self.deny_button = w.Button(
            description="Deny", icon="times", button_style="danger", layout=w.Layout(width="6em")
        )
        self.dismiss_button = w.Button(
            icon="times", tooltip="Dismiss", layout=w.Layout(width="2.5em", display="none")
        )
        self.status = w.HTML()
        # Where a person decides it: the service's own page, opened in a new window
        # (a notebook in an agent's sandbox holds no token that may decide).
        self.review = w.HTML(_review_html(panel, self.id))
        self.approve_button.on_click(lambda _: self.approve())
        self.deny_button.on_click(lambda _: self.deny())
        self.dismiss_button.on_click(lambda _: self.panel._dismiss(self))
        controls = [c for c in (self.option, self.answer, self.reason) if c is not None]
        self.box = w.VBox(
            [
                w.HBox([self.agent, self.tool, self.input_view]),
                w.HBox(
                    [
                        *controls,
                        self.approve_button,
                        self.deny_button,
                        self.review,
                        self.status,
                        self.dismiss_button,
                    ]
                ),
            ],
            layout=w.Layout(
                border="1px solid var(--jp-border-color2, #ddd)", padding="4px", margin="2px 0"
            ),
        )

    def approve(self, option: str | None = None, text: str | None = None) -> None:
        """Allow the request (in the background); for a terminal prompt with the
        chosen option (``option``, or the Dropdown's), or with ``text`` (or what
        the answer field holds) for a prompt that takes text."""
        if text is None and option is None and self.answer is not None:
            text = self.answer.value or None
        if text is None and option is None and self.option is not None:
            option = self.option.value
        self._decide("allow", option, text)

    def deny(self) -> None:
        """Deny the request (in the background)."""
        self._decide("deny", None)

    def _decide(self, decision: str, option: str | None, text: str | None = None) -> None:
        if self.working or self.decision:
            return
        self.working = True
        self._buttons()
        self.status.value = muted_html("sending…")
        reason = self.reason.value.strip() or None
        client = self.panel.client

        def work() -> None:
            assert client is not None
            try:
                if decision == "allow":
                    decided = client.approve(self.id, option=option, reason=reason, text=text)
                else:
                    decided = client.deny(self.id, reason=reason)
            except Exception as e:
                self.panel._later(self._failed, e)
            else:
                self.panel._later(self._decided, decided)

        self.panel._spawn("decide", work)

    def _buttons(self) -> None:
        off = self.working or self.decision is not None or self.settled
        self.approve_button.disabled = off
        self.deny_button.disabled = off
        for field in (self.option, self.answer):
            if field is not None:
                field.disabled = off
        self.reason.disabled = off
        # Only a person's token decides here; an agent's hands over to the service.
        shown = "" if self.panel.can_decide else "none"
        controls = (self.approve_button, self.deny_button, self.option, self.answer, self.reason)
        for control in controls:
            if control is not None:
                control.layout.display = shown

    def _decided(self, decided: dict[str, Any]) -> None:
        self.working = False
        self.decision = decided.get("status") or "decided"
        option, answer = decided.get("option"), decided.get("text")
        text = self.decision + (f" (option {option})" if option else "")
        text += f" (answered “{answer}”)" if answer is not None else ""
        self.status.value = f'<span style="{OK_STYLE}">{esc(text)}</span>'
        self._buttons()
        self.panel._decided(self)

    def _failed(self, e: Exception) -> None:
        self.working = False
        self.status.value = error_html(error_text(e))
        if isinstance(e, Conflict):
            # Decided elsewhere or timed out: kept (with its message) until dismissed.
            self.settled = True
            self.dismiss_button.layout.display = ""
        elif isinstance(e, Forbidden):
            self.settled = True  # still pending, but not for this token to decide
        self._buttons()

    def text(self) -> str:
        line = f"  {self.request.get('agent', '?'):<16} {self.tool.value:<10} "
        line += _summary_text(self.request)
        status = self.status.value
        if status:
            line += "  [" + plain_text(status) + "]"
        return line


def _summary_text(request: dict[str, Any]) -> str:
    if request.get("kind") == "terminal":
        options = " / ".join(
            f"{o.get('key')}. {o.get('label')}" for o in request.get("options", [])
        )
        question = request.get("question") or "the terminal asks"
        return shorten(f"{question}  [{options}]", 160)
    return describe_input(request.get("tool") or "", request.get("input"), 160)


def _summary_html(request: dict[str, Any]) -> str:
    if request.get("kind") == "terminal":
        question = request.get("question") or "The terminal asks:"
        options = "".join(
            f"<li><code>{esc(o.get('key'))}</code> {esc(o.get('label'))}</li>"
            for o in request.get("options", [])
        )
        return f"<b>{esc(question)}</b><ul style='margin: 0'>{options}</ul>"
    text = describe_input(request.get("tool") or "", request.get("input"), 400)
    return f"<code style='white-space: pre-wrap'>{esc(text)}</code>"


def _review_html(panel: ApprovalsPanel, request_id: str) -> str:
    client = panel.client
    if client is None:
        return ""
    url = client.service_page(f"approvals/{request_id}")
    label = "Open on SAC" if panel.can_decide else "Review and decide on SAC"
    return f'<a href="{esc(url)}" target="_blank" rel="noopener noreferrer">{esc(label)} ↗</a>'


# How often the refresher looks whether it was stopped while the stream runs.
STOP_CHECK_SECONDS = 0.2


def _refresher(ref: weakref.ref[ApprovalsPanel], stop: threading.Event, interval: float) -> None:
    """Keep the panel's list current until ``stop``: follow the event stream, or
    poll every ``interval`` seconds where the stream is refused (a service without
    it). Holds the panel only while listing."""
    if not _follow(ref, stop, interval):
        _poll_every(ref, stop, interval)


def _follow(ref: weakref.ref[ApprovalsPanel], stop: threading.Event, interval: float) -> bool:
    """List the requests when the event stream opens and again whenever it tells
    of one filed or ended (``Client.events``: it reconnects after ``interval``
    seconds, from the last event it saw). False when the service refuses the
    stream: the caller polls instead."""
    panel = ref()
    client = panel.client if panel is not None else None
    del panel
    if client is None:
        return True

    async def follow() -> None:
        # _follow: the stream's ``ready`` too, which is when to list.
        async for message in client.aio._follow(None, interval):
            if message["event"] == "ready" or message["event"].startswith("hitl."):
                panel = ref()
                if panel is None:
                    return
                await asyncio.to_thread(panel._poll)
                del panel

    try:
        future = client._loop.submit(follow())
    except RuntimeError:  # the client's loop is closed
        return True
    while not stop.wait(STOP_CHECK_SECONDS) and not future.done():
        pass
    if not future.done():
        future.cancel()
        return True
    with contextlib.suppress(concurrent.futures.CancelledError):
        error = future.exception()
        if isinstance(error, SacError) and 0 < error.status < 500:
            return False
    return True


def _poll_every(ref: weakref.ref[ApprovalsPanel], stop: threading.Event, interval: float) -> None:
    """Poll for pending requests until ``stop``; holds the panel only while polling."""
    while not stop.is_set():
        panel = ref()
        if panel is None:
            return
        panel._poll()
        del panel
        stop.wait(interval)


class ApprovalsPanel(SacWidget):
    """Requests of my agents waiting for a human, live: a background thread follows
    my event stream (``GET api/events``) and lists the requests again whenever one
    is filed or ends, adding new requests and dropping decided ones (every
    ``interval`` seconds where the service has no stream; a broken stream is
    reconnected after ``interval`` seconds).

    >>> panel = ApprovalsPanel()        # Client() from the environment
    >>> panel                           # Approve / Deny each request

    Each row shows the agent, the tool and a short rendering of its input (for a
    terminal prompt: the question and its options) and a link to the request's
    page on the `sac` service. A person's own token (``Client(url, token)`` outside
    a sandbox) also gets an optional reason, an option Dropdown and Approve / Deny;
    the token of an agent's sandbox never decides (docs/security.md#principals), so
    there the link is how the person decides, in their own browser session. A
    refusal shows in the row: 403 when this token may not decide, 409 when it was
    already decided or timed out (such rows stay until dismissed).

    The kernel applies the refresher's updates, and the buttons' clicks, between
    cells: while a cell blocks (``agent.ask(...)`` waiting for this very approval)
    the panel can neither change nor be clicked. Send such work from ``AgentChat``
    (which returns at once), or decide in code with ``Client.on_request``.

    Attributes for code: ``rows`` (``ApprovalRow`` list, oldest first),
    ``row(request_id)``, ``requests`` (as last listed), ``status`` (HTML),
    ``refresh()`` (poll once now), ``stop()`` / ``start()`` (the refresher),
    ``refreshing``, ``policies`` (a ``PolicyEditor`` of my agents' approval policies,
    in the collapsed *Approval policies* section). ``close()`` stops the refresher
    and closes a client the panel made for itself."""

    def __init__(self, client: Client | None = None, interval: float = 1.0) -> None:
        super().__init__(client, layout=w.Layout(width="100%"))
        self.interval = interval
        self.rows: list[ApprovalRow] = []
        self.requests: list[dict[str, Any]] | None = None
        # May this client's token decide? Learnt at the first poll (a notebook in an
        # agent's sandbox may not: its rows link to the service's page instead).
        self.can_decide = False
        self.error: str | None = None
        self._poll_lock = threading.Lock()
        self._generation = 0
        self._applied = 0
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        self.status = w.HTML()
        self.heading = w.HTML("<b>Waiting for approval</b>")
        self.entries = w.VBox()
        # What decides which calls wait here: each agent's policy, edited below.
        self.policies = PolicyEditor(self.client)
        self.policy_section = w.Accordion(children=[self.policies], selected_index=None)
        self.policy_section.set_title(0, "Approval policies")
        self.children = (w.HBox([self.heading, self.status]), self.entries, self.policy_section)
        self._draw()
        if not self._ui.interactive:
            self._poll()  # a console prints the panel right away: have the list
        self.start()

    # ---- refreshing ------------------------------------------------------------------

    def start(self) -> None:
        """Start the background refresher (done by the constructor)."""
        if self.refreshing or self._closing.is_set():
            return
        self._stop = threading.Event()
        self._refresher = threading.Thread(
            target=_refresher,
            args=(weakref.ref(self), self._stop, self.interval),
            name="sac-approvals-refresher",
            daemon=True,
        )
        self._refresher.start()

    def stop(self) -> None:
        """Stop the background refresher (``refresh()`` still polls once)."""
        self._stop.set()

    @property
    def refreshing(self) -> bool:
        """The background refresher is running."""
        return self._refresher is not None and self._refresher.is_alive()

    def refresh(self, wait: bool = False) -> None:
        """Poll once now (in the background unless ``wait``)."""
        if wait:
            self._poll()
        else:
            self._spawn("approvals", self._poll)

    def _poll(self) -> None:
        client = self.client
        if client is None or self._closing.is_set():
            return
        with self._poll_lock:
            self._generation += 1
            generation = self._generation
        try:
            if self.requests is None:
                self.can_decide = client.can_decide()
            requests = client.pending()
        except Exception as e:
            self.error = error_text(e)
            self._later(self._show_error, self.error)
            return
        self.error = None
        self.requests = requests
        self._later(self._apply, generation, requests)

    def _show_error(self, message: str) -> None:
        self.status.value = error_html(message)

    def _apply(self, generation: int, requests: list[dict[str, Any]]) -> None:
        if generation < self._applied:
            return  # an older listing than the one shown
        self._applied = generation
        self.status.value = ""
        by_id = {row.id: row for row in self.rows}
        pending = {r["id"] for r in requests}
        rows = []
        for request in requests:
            row = by_id.get(request["id"])
            if row is None:
                row = ApprovalRow(self, request)
                row._buttons()
            rows.append(row)
        # Rows no longer pending go, unless they show an outcome to read (409).
        for row in self.rows:
            if row.id not in pending and row.settled:
                rows.append(row)
            elif row.id not in pending:
                row.box.close()
        self.rows = rows
        self._draw()

    def _draw(self) -> None:
        empty = "loading…" if self.requests is None else "Nothing is waiting for you."
        self.entries.children = tuple(row.box for row in self.rows) or (w.HTML(muted_html(empty)),)
        count = sum(1 for row in self.rows if not row.decision and not row.settled)
        self.heading.value = f"<b>Waiting for approval ({count})</b>"

    def _decided(self, row: ApprovalRow) -> None:
        self._draw()

    def _dismiss(self, row: ApprovalRow) -> None:
        if row in self.rows:
            self.rows.remove(row)
            row.box.close()
            self._draw()

    def row(self, request_id: str) -> ApprovalRow | None:
        """The row of a request (None if it is not shown)."""
        return next((row for row in self.rows if row.id == request_id), None)

    # ---- closing ---------------------------------------------------------------------

    def _on_close(self) -> None:
        self.stop()

    def _threads_to_join(self) -> list[threading.Thread]:
        return [self._refresher] if self._refresher is not None else []

    # ---- text ------------------------------------------------------------------------

    def summary(self) -> str:
        if self.rows:
            lines = [f"Waiting for approval ({len(self.rows)}):"]
            lines += [row.text() for row in self.rows]
        elif self.requests:  # listed, not drawn yet
            lines = [f"Waiting for approval ({len(self.requests)}):"]
            lines += [
                f"  {r.get('agent', '?'):<16} {r.get('tool') or r.get('kind'):<10} "
                f"{_summary_text(r)}"
                for r in self.requests
            ]
        elif self.requests is None and self.error is None:
            lines = ["Waiting for approval: (loading…)"]
        else:
            lines = ["Waiting for approval: nothing"]
        if self.error:
            lines.append(f"  error: {self.error}")
        if not self.refreshing:
            lines.append("  (not refreshing: .start() to follow new requests)")
        return "\n".join(lines)
