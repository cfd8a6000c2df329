"""SkillRunner: run an installed skill with a form made from its parameters."""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

import ipywidgets as w

from ..client import Agent, Answer, BadRequest
from ._base import (
    OK_STYLE,
    SacWidget,
    error_html,
    error_text,
    esc,
    muted_html,
    plain_text,
    shorten,
)

# A bound for a number input whose skill gives only the other one (the browser
# keeps integers exact up to 2**53).
UNBOUNDED = 2**53
LABEL_STYLE = {"description_width": "10em"}


def _integral(*values: Any) -> bool:
    given = [v for v in values if v is not None]
    return bool(given) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and float(v).is_integer()
        for v in given
    )


class SkillField:
    """One parameter's input in a ``SkillRunner``: ``param`` (its definition),
    ``input`` (Text for text, BoundedIntText/BoundedFloatText for a number with
    min/max, IntText/FloatText without, DatePicker for date, Dropdown for select;
    required ones are marked ``*``, defaults filled in, help as tooltip and text),
    ``error`` (HTML: the service's complaint about this value) and ``box``."""

    def __init__(self, param: dict[str, Any]):
        self.param = param
        self.name: str = param["name"]
        self.type: str = param.get("type", "text")
        self.required = bool(param.get("required"))
        self.touched = False
        default = param.get("default")
        help_text = param.get("help") or ""
        label = self.name + (" *" if self.required else "")
        common: dict[str, Any] = {
            "description": label,
            "style": LABEL_STYLE,
            "tooltip": help_text or None,
            "layout": w.Layout(width="32em"),
        }
        self.input: w.Widget
        if self.type == "number":
            self.input = self._number(default, common)
        elif self.type == "date":
            value = None
            if isinstance(default, str):
                try:
                    value = dt.date.fromisoformat(default)
                except ValueError:
                    value = None
            self.input = w.DatePicker(value=value, **common)
        elif self.type == "select":
            options = [str(o) for o in param.get("options") or []]
            value = default if default in options else None
            self.input = w.Dropdown(options=options, value=value, **common)
        else:
            placeholder = shorten(help_text, 60) if help_text else ""
            self.input = w.Text(
                value="" if default is None else str(default), placeholder=placeholder, **common
            )
        self.input.observe(self._changed, names="value")
        self.help = w.HTML(muted_html(help_text), layout=w.Layout(max_width="30em"))
        self.error = w.HTML()
        self.box = w.HBox([self.input, self.error, self.help])

    def _number(self, default: Any, common: dict[str, Any]) -> w.Widget:
        low, high = self.param.get("min"), self.param.get("max")
        integral = _integral(low, high, default)
        value = default if default is not None else (low if low is not None else 0)
        if low is not None or high is not None:
            kind = w.BoundedIntText if integral else w.BoundedFloatText
            bounds = {
                "min": low if low is not None else -UNBOUNDED,
                "max": high if high is not None else UNBOUNDED,
            }
            return kind(value=value, **bounds, **common)
        kind = w.IntText if integral else w.FloatText
        return kind(value=value, **common)

    def _changed(self, _: Any) -> None:
        self.touched = True
        self.error.value = ""

    def value(self) -> Any:
        """The value to send, or None to leave it out (the skill's default, or the
        service's "required")."""
        value = self.input.value
        if self.type == "number":
            given = self.required or self.param.get("default") is not None or self.touched
            if not given or value is None or (isinstance(value, float) and math.isnan(value)):
                return None
            return value
        if self.type == "date":
            return value.isoformat() if isinstance(value, dt.date) else None
        if self.type == "select":
            return value or None
        return value if isinstance(value, str) and value.strip() else None


class SkillRunner(SacWidget):
    """Run one of an agent's installed skills with typed parameter values.

    >>> runner = SkillRunner(Client().agent("helper"))

    Pick a skill in the Dropdown; its parameters become a form (a Text for text, a
    number box honouring min/max, a DatePicker for dates, a Dropdown for choices;
    required ones marked ``*``, defaults filled in, help beside each and as its
    tooltip). Run sends the values (``agent.run_skill``) in a background thread
    and shows the answer; a value the agent refuses shows its message next to
    that input.

    Each skill is shown as the agent has it: the version its install pins. When
    the skill has a newer version, "Update to vN" moves the install to it
    (``agent.update_skill``); nothing updates by itself.

    Attributes for code: ``skill_picker`` (Dropdown of commands), ``skills`` (the
    installed skills as listed), ``refresh_button``, ``description`` (HTML),
    ``update_button`` (shown when an update is available), ``form`` (VBox),
    ``fields`` (``{name: SkillField}``), ``run_button``, ``status`` (HTML),
    ``answer_view`` (HTML), ``answer`` (the last ``Answer``), ``running``,
    ``values()`` (what Run would send)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        super().__init__(agent.client, layout=w.Layout(width="100%"))
        self.skills: list[dict[str, Any]] | None = None
        self.error: str | None = None
        self.fields: dict[str, SkillField] = {}
        self.answer: Answer | None = None
        self.running = False
        self.skill_picker = w.Dropdown(
            description="Skill",
            options=[],
            value=None,
            style=LABEL_STYLE,
            layout=w.Layout(width="32em"),
        )
        self.refresh_button = w.Button(
            icon="refresh", tooltip="List the installed skills again", layout=w.Layout(width="3em")
        )
        self.description = w.HTML()
        self.update_button = w.Button(
            icon="arrow-up",
            tooltip="Install the skill's newest version in this agent",
            layout=w.Layout(display="none"),
        )
        self.form = w.VBox()
        self.run_button = w.Button(
            description="Run", icon="play", button_style="primary", disabled=True
        )
        self.status = w.HTML()
        self.answer_view = w.HTML()
        self.skill_picker.observe(lambda _: self._build_form(), names="value")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.update_button.on_click(lambda _: self.update())
        self.run_button.on_click(lambda _: self.run())
        self.children = (
            w.HTML(f"<b>Skills of {esc(agent.slug)}</b>"),
            w.HBox([self.skill_picker, self.refresh_button]),
            w.HBox([self.description, self.update_button]),
            self.form,
            w.HBox([self.run_button, self.status]),
            self.answer_view,
        )
        self.refresh(wait=not self._ui.interactive)

    def _wants_client(self) -> bool:
        return False

    # ---- skills ----------------------------------------------------------------------

    def refresh(self, wait: bool = False) -> None:
        """List the agent's installed skills again (in the background unless ``wait``)."""
        self.status.value = muted_html("loading skills…")
        if wait:
            self._load()
        else:
            self._spawn("skills", self._load)

    def _load(self) -> None:
        try:
            skills = self.agent.installed()
        except Exception as e:
            self.error = error_text(e)
            self._later(self._show_status, error_html(self.error))
            return
        self.error = None
        self.skills = sorted(skills, key=lambda s: s["command"])
        self._later(self._apply, self.skills)

    def _show_status(self, html: str) -> None:
        self.status.value = html

    def _apply(self, skills: list[dict[str, Any]]) -> None:
        current = self.skill_picker.value
        commands = [s["command"] for s in skills]
        self.skill_picker.options = [
            (f"/{s['command']} v{s.get('version')} — {s.get('title') or ''}".rstrip(" —"),
             s["command"])
            for s in skills
        ]  # fmt: skip
        if current in commands:
            self.skill_picker.value = current
        elif commands:
            self.skill_picker.value = commands[0]
        else:
            self.skill_picker.value = None
        self.status.value = (
            ""
            if skills
            else muted_html(
                f"no skills installed in {self.agent.slug}: agent.install('summarise-csv')"
            )
        )
        self._build_form()

    def skill(self) -> dict[str, Any] | None:
        """The chosen skill (as listed)."""
        command = self.skill_picker.value
        return next((s for s in self.skills or [] if s["command"] == command), None)

    def _build_form(self) -> None:
        skill = self.skill()
        for field in self.fields.values():
            field.box.close()
        self.fields = {}
        if skill is None:
            self.description.value = ""
            self.update_button.layout.display = "none"
            self.form.children = ()
            self.run_button.disabled = True
            return
        notes = [f"version {skill.get('version')}"]
        if skill.get("update_available"):
            notes.append(f"v{skill['latest_version']} available")
        self.description.value = muted_html(
            f"{skill.get('description') or ''} ({', '.join(notes)})"
        )
        if skill.get("update_available"):
            self.update_button.description = f"Update to v{skill['latest_version']}"
            self.update_button.layout.display = None
            self.update_button.disabled = False
        else:
            self.update_button.layout.display = "none"
        self.fields = {p["name"]: SkillField(p) for p in skill.get("parameters") or []}
        self.form.children = tuple(f.box for f in self.fields.values())
        self.run_button.disabled = self.running
        self.answer_view.value = ""

    # ---- updating --------------------------------------------------------------------

    def update(self) -> None:
        """Move the chosen skill's install to the version the button names (in the
        background), then list the skills again."""
        skill = self.skill()
        if skill is None or not skill.get("update_available"):
            return
        version = skill["latest_version"]
        self.update_button.disabled = True
        self.status.value = muted_html(f"updating /{skill['command']} to v{version}…")

        def work() -> None:
            try:
                # The version shown: if the skill moved on meanwhile, the service
                # refuses (409) rather than install a version nobody looked at.
                self.agent.update_skill(skill["id"], version=version)
            except Exception as e:
                self._later(self._update_failed, error_text(e))
                return
            self._load()

        self._spawn("update-skill", work)

    def _update_failed(self, message: str) -> None:
        self.status.value = error_html(message)
        self.update_button.disabled = False

    # ---- running ---------------------------------------------------------------------

    def values(self) -> dict[str, Any]:
        """The parameter values Run sends (left-out ones take their default)."""
        values = {name: field.value() for name, field in self.fields.items()}
        return {name: value for name, value in values.items() if value is not None}

    def run(self) -> None:
        """Run the chosen skill with the form's values (in the background)."""
        skill = self.skill()
        if skill is None:
            self.status.value = error_html("choose a skill first")
            return
        if self.running:
            return
        for field in self.fields.values():
            field.error.value = ""
        values = self.values()
        self.running = True
        self.run_button.disabled = True
        self.answer_view.value = ""
        self.status.value = muted_html(f"running /{skill['command']}…")

        def work() -> None:
            try:
                answer = self.agent.run_skill(skill["command"], **values)
            except Exception as e:
                self._later(self._failed, e)
            else:
                self.answer = answer
                self._later(self._answered, answer)

        self._spawn("run-skill", work)

    def _answered(self, answer: Answer) -> None:
        self.running = False
        self.run_button.disabled = self.skill() is None
        cost = f" · ${answer.cost_usd:.4f}" if answer.cost_usd is not None else ""
        tools = f" · {len(answer.tool_calls)} tool call(s)" if answer.tool_calls else ""
        if answer.is_error:
            self.status.value = error_html("the run failed" + tools + cost)
        else:
            self.status.value = f'<span style="{OK_STYLE}">done{esc(tools + cost)}</span>'
        self.answer_view.value = (
            f'<div style="white-space: pre-wrap">{esc(answer.text or "(no text)")}</div>'
            f"{muted_html(f'session {answer.session_id}')}"
        )

    def _failed(self, e: Exception) -> None:
        self.running = False
        self.run_button.disabled = self.skill() is None
        name = _field_name(e)
        if isinstance(e, BadRequest) and name in self.fields:
            message = e.message
            if e.field and message.startswith(f"{e.field}: "):  # said where it is shown
                message = message[len(e.field) + 2 :]
            self.fields[name].error.value = error_html(message)
            self.status.value = error_html(f"{name}: {message}")
        else:
            self.status.value = error_html(error_text(e))

    # ---- text ------------------------------------------------------------------------

    def summary(self) -> str:
        lines = [f"Skills of {self.agent.slug}"]
        if self.skills is None:
            lines.append("  " + (f"error: {self.error}" if self.error else "(loading…)"))
            return "\n".join(lines)
        if not self.skills:
            lines.append("  (none installed)")
        for skill in self.skills:
            mark = "*" if skill["command"] == self.skill_picker.value else " "
            params = ", ".join(
                p["name"] + ("*" if p.get("required") else "") + f" ({p.get('type', 'text')})"
                for p in skill.get("parameters") or []
            )
            version = f"v{skill.get('version')}"
            if skill.get("update_available"):
                version += f", v{skill['latest_version']} available"
            lines.append(f" {mark}/{skill['command']} ({version}): {params or 'no parameters'}")
        for name, field in self.fields.items():
            error = plain_text(field.error.value)
            if error:
                lines.append(f"  {name}: {error}")
        if self.answer is not None:
            lines.append("Answer: " + (self.answer.text or "(no text)"))
        return "\n".join(lines)


def _field_name(e: Exception) -> str | None:
    """The parameter a BadRequest names (``values.since`` → ``since``)."""
    field = e.field if isinstance(e, BadRequest) else None
    if not field or not field.startswith("values."):
        return None
    return re.split(r"[.\[]", field[len("values.") :])[0]
