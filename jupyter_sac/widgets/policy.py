"""PolicyEditor: an agent's approval (HITL) policy, edited in a notebook.

The policy is JSON (docs/api.md#human-in-the-loop): which tool calls run, wait
for a person, or are refused. It is checked by the service as it is typed
(``POST api/hitl/policy-check``, which stores nothing) and saved with the
person's own token (``PUT …/hitl-policy``). A notebook in an agent's sandbox
holds no token that may change a policy (an agent must not loosen its own): there
the editor shows the policy and links to the agent's page on the service.
"""

from __future__ import annotations

import json
from typing import Any

import ipywidgets as w

from ..client import Client
from ._base import OK_STYLE, SacWidget, error_html, error_text, esc, muted_html

SYNTAX_HELP = (
    "<details><summary>Rule syntax</summary><ul style='margin: 0'>"
    "<li><code>default</code>: <code>allow</code>, <code>ask</code> or <code>deny</code>,"
    " for tool calls no rule names.</li>"
    "<li><code>allow</code>, <code>ask</code>, <code>deny</code>: lists of rules;"
    " deny wins over ask, ask over allow.</li>"
    "<li>A rule is <code>Tool</code> (every call: <code>Read</code>,"
    " <code>mcp__docs__*</code>) or <code>Tool(pattern)</code> matched against the"
    " call's main argument: <code>Bash(git status:*)</code> (a command and what"
    " follows), <code>Write(/workspace/output/*)</code>,"
    " <code>WebFetch(domain:example.org)</code>.</li></ul></details>"
)


class PolicyEditor(SacWidget):
    """One of my agents' approval policy: pick the agent, edit the JSON (checked by
    the service when the text changes), **Save** (a person's token), **Reload**.

    >>> PolicyEditor(sac, agent="helper")

    In an agent's sandbox (a token that may not change policies) it shows no
    policy and no Save, only the link to the agent's page on SAC.

    Attributes for code: ``agent`` (Dropdown of my agents' slugs), ``text``
    (Textarea: the policy as JSON), ``check`` (HTML: what the check said),
    ``save_button``, ``reload_button``, ``status`` (HTML: saved, or the refusal),
    ``policy`` (the policy as last loaded or saved), ``can_save`` (this token may
    change policies), ``check_now()``, ``save()``, ``load()``."""

    def __init__(self, client: Client | None = None, agent: str | None = None) -> None:
        super().__init__(client, layout=w.Layout(width="100%"))
        self.policy: dict[str, Any] | None = None
        self.can_save = False
        self._user = ""
        self.agent = w.Dropdown(description="Agent", options=[agent] if agent else [])
        self.text = w.Textarea(
            placeholder='{"default": "ask", "allow": ["Read"], "ask": [], "deny": []}',
            continuous_update=False,
            layout=w.Layout(width="100%", height="10em"),
        )
        self.check = w.HTML()
        self.status = w.HTML()
        self.save_button = w.Button(description="Save", icon="check", button_style="primary")
        self.reload_button = w.Button(description="Reload", icon="refresh")
        self.link = w.HTML()
        self.save_button.on_click(lambda _: self.save())
        self.reload_button.on_click(lambda _: self.load())
        self.text.observe(lambda _: self.check_now(), "value")
        self.agent.observe(lambda _: self.load(), "value")
        self.children = (
            w.HTML("<b>Approval policy</b>"),
            self.agent,
            self.text,
            self.check,
            w.HBox([self.save_button, self.reload_button, self.link, self.status]),
            w.HTML(SYNTAX_HELP),
        )
        self._spawn("policy-agents", self._list_agents, agent)

    # ---- loading -----------------------------------------------------------------------

    def _list_agents(self, wanted: str | None) -> None:
        client = self.client
        assert client is not None
        try:
            user = client.whoami()
            can_save = client.can_decide()
            slugs = [a["slug"] for a in client.agents()]
        except Exception as e:
            self._later(self._show_status, error_html(error_text(e)))
            return
        self._later(self._agents_listed, user, can_save, slugs, wanted)

    def _agents_listed(
        self, user: str, can_save: bool, slugs: list[str], wanted: str | None
    ) -> None:
        self._user = user
        self.can_save = can_save
        self.save_button.layout.display = "" if can_save else "none"
        chosen = wanted if wanted in slugs else (slugs[0] if slugs else None)
        self.agent.options = slugs
        if chosen is not None and self.agent.value != chosen:
            self.agent.value = chosen  # loads it (the observer)
        elif chosen is not None:
            self.load()

    def load(self) -> None:
        """Show the chosen agent's policy as stored (in the background)."""
        slug = self.agent.value
        if not slug or self.client is None:
            return
        self._show_link(slug)
        if not self.can_save:
            # A token an agent holds may neither read nor change a policy (an agent
            # must not learn how to get past its own): its person does, on SAC.
            self.text.layout.display = "none"
            self.status.value = muted_html(
                "Approval policies are read and changed by a person, on the agent's page."
            )
            return
        agent = self.client.agent(slug)
        self._spawn("policy-load", self._load, agent)

    def _load(self, agent: Any) -> None:
        try:
            policy = agent.policy()
        except Exception as e:
            self._later(self._show_status, error_html(error_text(e)))
            return
        self._later(self._loaded, policy)

    def _loaded(self, policy: dict[str, Any]) -> None:
        self.policy = policy
        self.text.value = json.dumps(policy, indent=2)
        self.status.value = ""

    def _show_link(self, slug: str) -> None:
        assert self.client is not None
        page = self.client.service_page(f"agents/{self._user}/{slug}")
        label = "Its page on SAC" if self.can_save else "Change it on SAC"
        self.link.value = f'<a href="{esc(page)}" target="_blank" rel="noopener">{label} ↗</a>'

    # ---- checking and saving ---------------------------------------------------------

    def _parsed(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self.text.value)
        except ValueError as e:
            self.check.value = error_html(f"not JSON: {e}")
            return None
        if not isinstance(value, dict):
            self.check.value = error_html("a policy is a JSON object")
            return None
        return value

    def check_now(self) -> None:
        """Ask the service whether the text is a valid policy (stores nothing)."""
        text = self.text.value
        policy = self._parsed()
        if policy is None or self.client is None:
            return
        self.check.value = muted_html("checking…")
        self._spawn("policy-check", self._check, text, policy)

    def _check(self, text: str, policy: dict[str, Any]) -> None:
        assert self.client is not None
        try:
            self.client.check_policy(policy)
        except Exception as e:
            self._later(self._checked, text, error_html(error_text(e)))
            return
        self._later(self._checked, text, f'<span style="{OK_STYLE}">✓ a valid policy</span>')

    def _checked(self, text: str, markup: str) -> None:
        # Only what is in the box now: the answer for an earlier text may come late.
        if text == self.text.value:
            self.check.value = markup

    def save(self) -> None:
        """Save the text as the chosen agent's policy (a person's token)."""
        policy = self._parsed()
        slug = self.agent.value
        if policy is None or not slug or self.client is None:
            return
        self.save_button.disabled = True
        self.status.value = muted_html("saving…")
        self._spawn("policy-save", self._save, self.client.agent(slug), policy)

    def _save(self, agent: Any, policy: dict[str, Any]) -> None:
        try:
            saved = agent.set_policy(policy)
        except Exception as e:
            self._later(self._saved, None, error_html(error_text(e)))
            return
        self._later(self._saved, saved, f'<span style="{OK_STYLE}">saved: it applies from'
                    " the agent's next tool call</span>")  # fmt: skip

    def _saved(self, saved: dict[str, Any] | None, markup: str) -> None:
        self.save_button.disabled = False
        self.status.value = markup
        if saved is not None:
            self.policy = saved
            self.text.value = json.dumps(saved, indent=2)

    def _show_status(self, markup: str) -> None:
        self.status.value = markup

    def summary(self) -> str:
        slug = self.agent.value or "(no agent)"
        return f"PolicyEditor: {slug}: {json.dumps(self.policy) if self.policy else '…'}"
