"""Tasks: endpoints (the rules: operations/tasks.py) and the runner the leader
runs (docs/api.md#tasks).

The runner claims queued tasks, starts their agent when it is stopped, asks the
agent's server to run the task (``POST sac/api/tasks/run``: the repository's
checkout, then one chat turn with the prompt in a new chat session), follows the
turn, and records how it ended: the turn's result text, and the files written
under ``output/`` while it ran (after asking the server to sync its workspace).
It reaches the agents' servers as the idle culler does: through the proxy, with
the service's token. A task still ``running`` when a runner starts was left by a
runner that died or lost the leadership: it ends ``failed`` ("interrupted"),
its turn cancelled if its agent still runs it; it is not run again, as its turn
may have done part of its work already.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from functools import partial
from typing import Any

import httpx

from ..errors import ApiError
from ..proxy_transport import ProxyTransport
from ..store.tasks import TaskRecord
from .base import BaseHandler
from .culler import SYSTEM_ACTOR
from .hub import HubError
from .operations import tasks as ops
from .operations.context import ServiceContext
from .operations.exec import proxy_url, server_credentials, server_url
from .routes import NAME, SLUG, USER

log = logging.getLogger("jupyter_sac.tasks")

# Seconds an agent may take to start for a task (within the task's own timeout).
START_SECONDS = 300.0


class AgentTasksHandler(BaseHandler):
    """POST api/users/{user}/agents/{slug}/tasks: submit. GET: that agent's tasks."""

    async def post(self, owner: str, slug: str) -> None:
        # Who before what: a refused caller learns nothing of the body's rules.
        await self.get_agent(owner, slug, "submit tasks", driver_may=True)
        task = await ops.create_task(self.ctx, self.actor, owner, slug, self.json_body())
        self.set_header("Location", f"{self.ctx.prefix}api/tasks/{task.id}")
        self.write_json(ops.task_model(self.ctx, task), status=201)

    async def get(self, owner: str, slug: str) -> None:
        await self.get_agent(owner, slug, "list tasks", driver_may=True)
        tasks = await ops.list_tasks(
            self.ctx,
            self.actor,
            user=owner,
            agent=slug,
            status=self.get_argument("status", None),
            limit=self.int_arg("limit", ops.LIST_LIMIT, 1, 1000),
        )
        self.write_json({"tasks": [ops.task_model(self.ctx, t) for t in tasks]})


class TasksHandler(BaseHandler):
    """GET api/tasks?status=&agent=&user=: the caller's tasks (admins: ``user``'s)."""

    async def get(self) -> None:
        tasks = await ops.list_tasks(
            self.ctx,
            self.actor,
            user=self.get_argument("user", None),
            agent=self.get_argument("agent", None),
            status=self.get_argument("status", None),
            limit=self.int_arg("limit", ops.LIST_LIMIT, 1, 1000),
        )
        self.write_json({"tasks": [ops.task_model(self.ctx, t) for t in tasks]})


class TaskHandler(BaseHandler):
    async def get(self, task_id: str) -> None:
        self.write_json(ops.task_model(self.ctx, await ops.get_task(self.ctx, self.actor, task_id)))


class TaskCancelHandler(BaseHandler):
    async def post(self, task_id: str) -> None:
        task = await ops.cancel_task(self.ctx, self.actor, task_id)
        self.write_json(ops.task_model(self.ctx, task), status=202)


def routes(prefix: str) -> list[tuple[str, Any]]:
    api = prefix + "api/"
    return [
        (api + f"users/{USER}/agents/{SLUG}/tasks", AgentTasksHandler),
        (api + "tasks", TasksHandler),
        (api + f"tasks/{NAME}", TaskHandler),
        (api + f"tasks/{NAME}/cancel", TaskCancelHandler),
    ]


class TaskFailed(Exception):
    """A task ends ``failed`` with this message."""


class TaskRunner:
    """Runs queued tasks, at most ``concurrency`` at once, looking for new ones and
    following running ones every ``interval`` seconds."""

    def __init__(self, ctx: ServiceContext, interval: float = 2.0, concurrency: int = 8):
        self.ctx = ctx
        self.interval = interval
        self.concurrency = concurrency
        self.active: dict[str, asyncio.Task[None]] = {}
        self.proxy = proxy_url()
        # Each agent's server is called with its own token (server_credentials), never
        # the service's: a request is signed with the one its server's URL was found with.
        self._credentials: dict[str, dict[str, str]] = {}
        self.http = httpx.AsyncClient(
            timeout=60,
            transport=ProxyTransport(self.proxy),
            event_hooks={"request": [self._sign]},
        )

    async def _sign(self, request: httpx.Request) -> None:
        url = str(request.url)
        for base, headers in self._credentials.items():
            if url.startswith(base):
                request.headers.update(headers)
                return

    async def run(self) -> None:
        try:
            await self._interrupted()
            while True:
                try:
                    await self._claim()
                except Exception:  # the next pass tries again
                    log.exception("task runner pass failed")
                await asyncio.sleep(self.interval)
        finally:
            # Leadership lost (or the service stops): the next runner ends these.
            for task in self.active.values():
                task.cancel()
            self.active.clear()

    async def close(self) -> None:
        await self.http.aclose()

    async def _interrupted(self) -> None:
        for task in await self.ctx.store.tasks.running():
            log.warning("task %s was running when its runner stopped: failed", task.id)
            if task.session_id:
                with contextlib.suppress(Exception):
                    base = await self._server_url(task.owner, task.agent_slug)
                    if base:
                        await self.http.post(
                            base + f"sac/api/chat/sessions/{task.session_id}/cancel"
                        )
            await self._end(task, "failed", error="interrupted: the service restarted")

    async def _claim(self) -> None:
        while len(self.active) < self.concurrency:
            async with self.ctx.store.transaction() as conn:
                task = await self.ctx.store.tasks.claim(conn)
                if task is None:
                    return
                await self.ctx.store.audit.record(
                    "task.start",
                    actor=SYSTEM_ACTOR,
                    actor_admin=True,
                    target=str(task.id),
                    target_user=task.owner,
                    before={"status": "queued"},
                    after={"status": "running", "agent": task.agent_slug},
                    conn=conn,
                )
            key = str(task.id)
            self.active[key] = asyncio.create_task(self._drive(task))
            self.active[key].add_done_callback(partial(self._forget, key))

    def _forget(self, key: str, _done: asyncio.Task[None]) -> None:
        self.active.pop(key, None)

    async def _end(self, task: TaskRecord, status: str, **fields: Any) -> None:
        async with self.ctx.store.transaction() as conn:
            ended = await self.ctx.store.tasks.finish(task.id, status, conn=conn, **fields)
            if ended is None:
                return  # ended meanwhile (cancelled while queued, its agent deleted)
            await self.ctx.store.audit.record(
                "task.end",
                actor=SYSTEM_ACTOR,
                actor_admin=True,
                target=str(task.id),
                target_user=task.owner,
                before={"status": task.status},
                after={"status": status, "error": fields.get("error")},
                conn=conn,
            )

    async def _drive(self, task: TaskRecord) -> None:
        session: list[str] = []
        base = ""
        try:
            async with asyncio.timeout(task.timeout_seconds):
                base = await self._ready_server(task)
                body: dict[str, Any] = {"prompt": task.prompt}
                if task.repository:
                    body["repository"] = await self._checkout_spec(task)
                resp = await self.http.post(
                    base + "sac/api/tasks/run", json=body, timeout=task.timeout_seconds
                )
                if resp.status_code != 202:
                    raise TaskFailed(_message(resp))
                session.append(resp.json()["session_id"])
                await self.ctx.store.tasks.set_session(task.id, session[0])
                outcome = await self._follow(task, base, session[0])
            if outcome is None:
                await self._end(task, "cancelled", error="cancelled")
                return
            status, result = outcome
            artifacts = await self._artifacts(task, base)
            await self._end(
                task,
                status,
                result=result,
                error=None if status == "succeeded" else "the turn ended with an error",
                artifacts=artifacts,
            )
        except TimeoutError:
            if session:
                await self._cancel_turn(base, session[0])
            await self._end(task, "timed-out", error=f"not done within {task.timeout_seconds} s")
        except TaskFailed as e:
            await self._end(task, "failed", error=str(e))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("task %s failed", task.id)
            await self._end(task, "failed", error=f"{type(e).__name__}: {e}")

    async def _server_url(self, owner: str, slug: str) -> str | None:
        """The agent's server URL once it runs (with the credentials to call it)."""
        user = await self.ctx.hub.get_user(owner)
        server = ((user or {}).get("servers") or {}).get(slug)
        agent = await self.ctx.store.agents.get(owner, slug)
        if not server or not server.get("ready") or agent is None:
            return None
        base = server_url(self.proxy, owner, slug, server)
        try:
            self._credentials[base] = await server_credentials(self.ctx, agent.id)
        except ApiError as e:
            raise TaskFailed(e.message) from None
        return base

    async def _ready_server(self, task: TaskRecord) -> str:
        """The agent's server URL, starting the agent first when it is stopped."""
        base = await self._server_url(task.owner, task.agent_slug)
        if base:
            return base
        user = await self.ctx.hub.get_user(task.owner)
        server = ((user or {}).get("servers") or {}).get(task.agent_slug) or {}
        if not server.get("pending"):
            try:
                await self.ctx.hub.start_server(task.owner, task.agent_slug)
            except HubError as e:
                raise TaskFailed(f"could not start the agent: {e.message}") from None
            await self.ctx.store.audit.record(
                "agent.start",
                actor=SYSTEM_ACTOR,
                actor_admin=True,
                target=task.agent_slug,
                target_user=task.owner,
                after={"task": str(task.id)},
            )
        async with asyncio.timeout(START_SECONDS):
            while True:
                base = await self._server_url(task.owner, task.agent_slug)
                if base:
                    return base
                user = await self.ctx.hub.get_user(task.owner)
                server = ((user or {}).get("servers") or {}).get(task.agent_slug) or {}
                if not server.get("pending"):
                    raise TaskFailed("the agent did not start (see its hub log)")
                await asyncio.sleep(1)

    async def _checkout_spec(self, task: TaskRecord) -> dict[str, Any]:
        """What the server needs to check the repository out: the owner's secret's
        value (decrypted here, sent only to the agent's own server, never stored
        with the task nor audited)."""
        repo = dict(task.repository or {})
        name = repo.pop("secret", None)
        if name:
            values = {s.name: s for s in await self.ctx.store.secrets.of_owner(task.owner)}
            if name not in values:
                raise TaskFailed(f"the secret {name!r} is gone")
            repo["token"] = self.ctx.keybox.decrypt(values[name].encrypted_value)
        return {k: v for k, v in repo.items() if v is not None}

    async def _follow(
        self, task: TaskRecord, base: str, session_id: str
    ) -> tuple[str, str | None] | None:
        """Until the turn ends: its status and result text (None: cancelled)."""
        while True:
            await asyncio.sleep(min(self.interval, 1.0))
            current = await self.ctx.store.tasks.get(task.id)
            if current is None or current.status != "running":
                await self._cancel_turn(base, session_id)  # deleted, or ended elsewhere
                return None
            if current.cancel_requested:
                await self._cancel_turn(base, session_id)
                return None
            resp = await self.http.get(base + f"sac/api/chat/sessions/{session_id}")
            if resp.status_code != 200:
                raise TaskFailed(f"the agent's server answered {_message(resp)}")
            model = resp.json()
            if model.get("running"):
                continue
            results = [e for e in model.get("events", []) if e.get("type") == "result"]
            errors = [e for e in model.get("events", []) if e.get("type") == "error"]
            if results and not results[-1].get("is_error"):
                return "succeeded", results[-1].get("text")
            if results:
                return "failed", results[-1].get("text")
            return "failed", errors[-1].get("message") if errors else None

    async def _cancel_turn(self, base: str, session_id: str) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await self.http.post(base + f"sac/api/chat/sessions/{session_id}/cancel")

    async def _artifacts(self, task: TaskRecord, base: str) -> list[dict[str, Any]]:
        """The files under output/ written since the task started, once the server
        has synced its workspace (what the sync has not stored is not listed)."""
        try:
            await self.http.post(base + "sac/api/workspace", timeout=120)
        except httpx.HTTPError as e:
            log.warning("task %s: the workspace sync failed: %s", task.id, e)
        since = task.started_at or datetime.now(UTC)
        files = await self.ctx.store.workspace.list(f"agent:{task.agent_id}", "output/")
        return [
            {"path": f["path"], "size": f["size"], "sha256": f["sha256"]}
            for f in files
            if f["updated_at"] >= since
        ]


def _message(resp: httpx.Response) -> str:
    try:
        return f"{resp.status_code}: {resp.json().get('message', '')}"
    except ValueError:
        return f"{resp.status_code}"
