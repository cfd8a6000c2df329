"""The person's pages of agent templates (docs/templates.md#the-templates-pages):

- ``templates`` (GET): the templates I may use, organisation and mine;
- ``templates/new`` (GET; POST creates one);
- ``templates/<id>`` (GET: every field of its latest version, and the edit form
  when I may change it; POST with ``action`` save, fork or delete).

Templates are addressed by id, as ``api/templates/<id>`` addresses them (an
organisation template and a personal one may share a name). Every change goes
through the API's operation, so validation, versions, who may write which
template, the 404 for another user's one and the audit entries are the API's.
"""

from __future__ import annotations

from typing import Any

from ..errors import ApiError
from ..rules.providers import PRESETS
from .forms import (
    last,
    template_definition,
    template_error_field,
    template_form_values,
    template_typed_values,
)
from .operations import templates as template_ops
from .pages import DONE_MESSAGES, PageHandler, person_page
from .routes import NAME
from .validation import bad

TEMPLATE_DONE = {
    **DONE_MESSAGES,
    "template-created": "Template {target} created.",
    "template-saved": "Saved as version {target}. Agents made from an earlier version keep it"
    " until their owner updates them.",
    "template-forked": "Forked: {target} is your own copy, and yours to change.",
    "template-deleted": "Template {target} deleted. Agents made from it keep their version.",
}


def may_edit(template: dict[str, Any]) -> bool:
    """Does the page offer to change (and delete) it? The API's ``editable``: the
    caller may write it and it is not a shipped preset (those are forked)."""
    return bool(template["editable"])


def template_path(template_id: int | str) -> str:
    return f"templates/{template_id}"


class TemplatesPage(PageHandler):
    """GET templates: the organisation's templates and mine, with what I may do."""

    done_messages = TEMPLATE_DONE

    @person_page("use the templates pages")
    async def get(self) -> None:
        templates = await template_ops.list_templates(self.ctx, self.actor)
        self.render_page(
            "templates.html",
            active="templates",
            templates=[{**t, "may_edit": may_edit(t)} for t in templates],
        )


class NewTemplatePage(PageHandler):
    """GET templates/new: the form of a new template; POST creates it through the
    API's operation and goes on to its page."""

    done_messages = TEMPLATE_DONE

    def show(
        self,
        values: dict[str, str],
        status: int = 200,
        error: ApiError | None = None,
    ) -> None:
        self.render_page(
            "template_new.html",
            status=status,
            active="templates",
            error=error,
            error_field=template_error_field(str(error.extra.get("field", ""))) if error else "",
            values=values,
            providers=list(PRESETS),
            may_curate=template_ops.may_curate(self.identity),
        )

    @person_page("create templates")
    async def get(self) -> None:
        self.show({"scope": "personal"})

    @person_page("create templates")
    async def post(self) -> None:
        form = self.form()
        try:
            body = {
                "name": last(form, "name").strip(),
                "scope": last(form, "scope") or template_ops.PERSONAL,
                "definition": template_definition(form),
            }
            made = await template_ops.create_template(self.ctx, self.actor, body)
        except ApiError as e:
            self.show(template_typed_values(form), e.status_code, e)
            return
        self.redirect_done(template_path(made["id"]), "template-created", made["name"])


class TemplatePage(PageHandler):
    """GET templates/<id>: a template's latest version, field by field, and the
    edit form for who may change it. POST ``action``: save (the form's definition
    as its next version), fork (a personal copy, ``name`` optional) or delete."""

    done_messages = TEMPLATE_DONE

    async def show(
        self,
        template_id: str,
        status: int = 200,
        error: ApiError | None = None,
        typed: dict[str, str] | None = None,
    ) -> None:
        template = await template_ops.get_template(self.ctx, self.actor, template_id)
        editable = may_edit(template)
        self.render_page(
            "template.html",
            status=status,
            active="templates",
            error=error,
            # Beside its field in the edit form only when the edit form was sent (a
            # fork's name is not the template's).
            error_field=template_error_field(str(error.extra.get("field", "")))
            if error and typed is not None
            else "",
            t=template,
            d=template["definition"],
            may_edit=editable,
            # What was typed stays beside its error; else the stored version.
            values=typed
            if typed is not None
            else {**template_form_values(template["definition"]), "name": template["name"]},
            providers=list(PRESETS),
            path=template_path(template["id"]),
        )

    @person_page("use the templates pages")
    async def get(self, template_id: str) -> None:
        await self.show(template_id)

    @person_page("change templates")
    async def post(self, template_id: str) -> None:
        # 404 for a template I may not see, before the form is read.
        current = await template_ops.get_template(self.ctx, self.actor, template_id)
        form = self.form()
        action = last(form, "action")
        try:
            if action == "save":
                # Who before what: a refused caller learns nothing of the form's rules.
                await template_ops.may_change(self.ctx, self.actor, template_id)
                body: dict[str, Any] = {"definition": template_definition(form)}
                name = last(form, "name").strip()
                if name and name != current["name"]:
                    body["name"] = name
                saved = await template_ops.update_template(self.ctx, self.actor, template_id, body)
                self.redirect_done(
                    template_path(saved["id"]), "template-saved", str(saved["version"])
                )
                return
            if action == "fork":
                name = last(form, "name").strip()
                fork = await template_ops.fork_template(
                    self.ctx, self.actor, template_id, {"name": name} if name else {}
                )
                self.redirect_done(template_path(fork["id"]), "template-forked", fork["name"])
                return
            if action == "delete":
                await template_ops.delete_template(self.ctx, self.actor, template_id)
                self.redirect_done("templates", "template-deleted", current["name"])
                return
            raise bad("action", "expected save, fork or delete")
        except ApiError as e:
            if e.status_code == 404:
                raise
            typed = template_typed_values(form) if action == "save" else None
            await self.show(template_id, e.status_code, e, typed)


def routes(prefix: str) -> list[tuple[str, Any]]:
    return [
        (prefix + "templates", TemplatesPage),
        # Before templates/<id>: "new" is no template's id.
        (prefix + "templates/new", NewTemplatePage),
        (prefix + f"templates/{NAME}", TemplatePage),
    ]
