"""Agents' tasks (docs/api.md#tasks): a prompt submitted to an agent and run in
the background as one chat turn by the leader's task runner (service/tasks.py).

Persons submit, read, list and cancel tasks of their own agents, administrators
of anyone's, and the owner's drivers (an agent allowed to drive its owner's
other agents, which may already start them and chat with them) too. A task
names one of the owner's secrets for its repository only when a person submits
it: agents and their drivers never reach secrets. An agent's own token may not
use tasks at all, not even for itself: it would let a sandbox start work with
nobody watching, beyond the one turn a person or its driver gave it.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote, urlsplit

from ...errors import ApiError
from ...store.tasks import TaskRecord
from .access import authorize_user, get_agent, require_person
from .context import Actor, ServiceContext, audit

# A task's timeout when the body names none (seconds; the contract bounds it).
DEFAULT_TIMEOUT = 600
LIST_LIMIT = 100


def task_model(ctx: ServiceContext, task: TaskRecord) -> dict[str, Any]:
    files = (
        f"{ctx.public.service()}api/users/{quote(task.owner, safe='')}/agents/{task.agent_slug}"
        "/workspace/files/"
    )
    return {
        "id": str(task.id),
        "owner": task.owner,
        "agent": task.agent_slug,
        "prompt": task.prompt,
        "timeout": task.timeout_seconds,
        "repository": task.repository,
        "status": task.status,
        "result": task.result,
        "error": task.error,
        "session_id": task.session_id,
        "artifacts": [{**a, "url": files + quote(a["path"], safe="/")} for a in task.artifacts],
        "cancel_requested": task.cancel_requested,
        "created_by": task.created_by,
        "created_at": task.created_at.isoformat(),
        "started_at": task.started_at.isoformat() if task.started_at else None,
        "finished_at": task.finished_at.isoformat() if task.finished_at else None,
    }


def _repository(body: Any) -> dict[str, Any] | None:
    """The checked repository of a task body (the contract has checked its shape:
    an http(s) URL, a ref, a secret's name). A URL with a user or password in it is
    refused: it would be stored and shown with the task; a token goes in a secret."""
    repo = body.get("repository")
    if repo is None:
        return None
    url = urlsplit(repo["url"])
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ApiError(
            400, "invalid_field", "repository.url: expected an http(s) URL", field="repository/url"
        )
    if url.username is not None or url.password is not None:
        raise ApiError(
            400,
            "invalid_field",
            "repository.url: no credentials in the URL; name one of your secrets in"
            " repository.secret instead",
            field="repository/url",
        )
    return {"url": repo["url"], "ref": repo.get("ref"), "secret": repo.get("secret")}


async def create_task(
    ctx: ServiceContext, actor: Actor, owner: str, slug: str, body: dict[str, Any]
) -> TaskRecord:
    """Queue ``body`` (``{prompt, timeout?, repository?}``, checked against the
    contract by the handler) for ``owner``'s agent ``slug``."""
    agent = await get_agent(ctx, actor, owner, slug, "submit tasks", driver_may=True)
    repository = _repository(body)
    if repository and repository["secret"]:
        require_person(actor, "name a secret in a task")
        # Only a secret of the agent's owner, named here (never another user's,
        # even when an administrator submits).
        names = {s.name for s in await ctx.store.secrets.of_owner(owner)}
        if repository["secret"] not in names:
            raise ApiError(
                400,
                "unknown_secret",
                f"{owner} has no secret {repository['secret']!r}",
                field="repository/secret",
            )
    async with ctx.store.transaction() as conn:
        task = await ctx.store.tasks.create(
            agent_id=agent.id,
            owner=owner,
            agent_slug=slug,
            prompt=body["prompt"],
            timeout_seconds=int(body.get("timeout", DEFAULT_TIMEOUT)),
            repository=repository,
            created_by=actor.name,
            conn=conn,
        )
        await audit(
            ctx,
            actor,
            "task.create",
            str(task.id),
            target_user=owner,
            after={"agent": slug, "timeout": task.timeout_seconds, "repository": repository},
            conn=conn,
        )
    return task


def parse_task_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(404, "not_found", "no such task") from None


async def get_task(ctx: ServiceContext, actor: Actor, raw_id: str) -> TaskRecord:
    """A task the actor may see: their own (as a person or a driver of theirs), or
    any (administrators). Another user's is not found, as their agents are not."""
    ident = authorize_user(actor, actor.name, "read tasks", driver_may=True)
    task = await ctx.store.tasks.get(parse_task_id(raw_id))
    if task is None or (task.owner != ident.name and not ident.admin):
        raise ApiError(404, "not_found", "no such task")
    return task


async def list_tasks(
    ctx: ServiceContext,
    actor: Actor,
    *,
    user: str | None,
    agent: str | None,
    status: str | None,
    limit: int = LIST_LIMIT,
) -> list[TaskRecord]:
    """The actor's tasks (administrators: ``user``'s, or everyone's with ``user``
    ``*``), newest first, filtered by agent and status."""
    owner: str | None = user or actor.name
    authorize_user(actor, actor.name if owner == "*" else str(owner), "list tasks", driver_may=True)
    if owner == "*":
        if not actor.admin:
            raise ApiError(404, "not_found", "no such user")
        owner = None
    return await ctx.store.tasks.list(owner=owner, agent_slug=agent, status=status, limit=limit)


async def cancel_task(ctx: ServiceContext, actor: Actor, raw_id: str) -> TaskRecord:
    """Cancel a task: a queued one ends ``cancelled`` at once; a running one is
    flagged, and the runner interrupts its turn and ends it ``cancelled``. An
    ended task cannot be cancelled (409)."""
    task = await get_task(ctx, actor, raw_id)
    async with ctx.store.transaction() as conn:
        changed = await ctx.store.tasks.finish(
            task.id,
            "cancelled",
            error="cancelled by " + actor.name,
            from_states=("queued",),
            conn=conn,
        ) or await ctx.store.tasks.request_cancel(task.id, conn)
        if changed is None:
            raise ApiError(409, "task_ended", f"the task has ended ({task.status})")
        await audit(
            ctx,
            actor,
            "task.cancel",
            str(task.id),
            target_user=task.owner,
            before={"status": task.status},
            after={"status": changed.status, "cancel_requested": changed.cancel_requested},
            conn=conn,
        )
    return changed
