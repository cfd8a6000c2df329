"""The same client without ``await``, usable in notebooks and scripts.

The asynchronous client runs on an event loop in a background thread of its own,
so the blocking calls work where an event loop already runs (a Jupyter kernel)
and widget callbacks may call them too."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from ._async import REQUEST_TIMEOUT, Answer, AsyncAgent, AsyncClient, AsyncTask, ExecResult
from .errors import SacError, Unauthorized, error_for

T = TypeVar("T")
_END = object()


class _Loop:
    """An event loop in a daemon thread; ``run`` blocks on a coroutine there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sac-client",
                                       daemon=True)  # fmt: skip
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("a blocking client call from the client's own loop")
        if not self.loop.is_running():
            coro.close()  # a stopped loop would never run it: say so instead of hanging
            raise SacError(0, "closed", "the client is closed")
        return self.submit(coro).result()

    def iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        """Yield what ``agen`` yields, one item at a time (it runs ahead by a queue)."""
        items: queue.Queue[Any] = queue.Queue()

        async def pump() -> None:
            try:
                async for item in agen:
                    items.put(item)
            except BaseException as e:  # handed to the consumer
                items.put(e)
            finally:
                items.put(_END)

        future = self.submit(pump())
        try:
            while (item := items.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            future.cancel()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


class Client:
    """Drive my agents from Python.

    >>> sac = Client()                         # inside an agent's server
    >>> sac = Client(url="http://localhost:8000/", token="...")   # from elsewhere
    >>> helper = sac.agent("helper")
    >>> helper.start(); print(helper.ask("list the CSV files").text)
    """

    def __init__(self, url: str | None = None, token: str | None = None,
                 service_url: str | None = None):  # fmt: skip
        """``url``: the hub's public URL; ``service_url``: see AsyncClient."""
        self._loop = _Loop()
        try:
            # httpx binds its connection pool to the loop it first runs on: make it there.
            self.aio: AsyncClient = self._loop.run(_make(url, token, service_url))
        except BaseException:
            self._loop.close()
            raise

    @property
    def url(self) -> str:
        return self.aio.url

    def close(self) -> None:
        self._loop.run(self.aio.close())
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def whoami(self) -> str:
        return self._loop.run(self.aio.whoami())

    def can_decide(self) -> bool:
        """May this token decide approvals (a person's own token; never an agent's)?"""
        return self._loop.run(self.aio.can_decide())

    def service_page(self, path: str = "") -> str:
        """The public URL of a `sac` service page (e.g. ``approvals/<id>``)."""
        return self.aio.service_page(path)

    def identity(self) -> dict[str, Any]:
        """The hub's model of this token's user (``GET /hub/api/user``)."""
        return self._loop.run(self.aio.identity())

    def revoke_token(self) -> None:
        """Revoke this client's own token on the hub."""
        self._loop.run(self.aio.revoke_token())

    def users(self) -> list[dict[str, Any]]:
        return self._loop.run(self.aio.users())

    def agents(self, user: str | None = None, all_users: bool = False) -> list[dict[str, Any]]:
        return self._loop.run(self.aio.agents(user, all_users))

    def agent(self, slug: str, owner: str | None = None) -> Agent:
        return Agent(self, self.aio.agent(slug, owner))

    def create_agent(self, slug: str, **fields: Any) -> Agent:
        return Agent(self, self._loop.run(self.aio.create_agent(slug, **fields)))

    def templates(self) -> list[dict[str, Any]]:
        return self._loop.run(self.aio.templates())

    def template(self, template_id: int | str) -> dict[str, Any]:
        return self._loop.run(self.aio.template(template_id))

    def create_template(self, name: str, definition: dict[str, Any],
                        scope: str = "personal") -> dict[str, Any]:  # fmt: skip
        return self._loop.run(self.aio.create_template(name, definition, scope))

    def update_template(self, template_id: int | str, *, name: str | None = None,
                        definition: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        return self._loop.run(self.aio.update_template(template_id, name=name,
                                                       definition=definition))  # fmt: skip

    def fork_template(self, template_id: int | str, name: str | None = None) -> dict[str, Any]:
        return self._loop.run(self.aio.fork_template(template_id, name))

    def delete_template(self, template_id: int | str) -> None:
        self._loop.run(self.aio.delete_template(template_id))

    def skills(self, q: str | None = None, tier: str | None = None,
               limit: int = 50) -> list[dict[str, Any]]:  # fmt: skip
        return self._loop.run(self.aio.skills(q, tier, limit))

    def skill(self, skill_id: int) -> dict[str, Any]:
        return self._loop.run(self.aio.skill(skill_id))

    def search_history(self, q: str | None = None, *, user: str | None = None,
                       agent: str | None = None, since: str | None = None,
                       until: str | None = None, order: str | None = None,
                       limit: int = 100) -> list[dict[str, Any]]:  # fmt: skip
        return self._loop.run(self.aio.search_history(
            q, user=user, agent=agent, since=since, until=until, order=order, limit=limit
        ))  # fmt: skip

    def export_history(self, q: str | None = None, *, user: str | None = None,
                       agent: str | None = None, since: str | None = None,
                       until: str | None = None) -> Iterator[bytes]:  # fmt: skip
        """CSV chunks of a search's selection, as the service streams them."""
        return self._loop.iterate(self.aio.export_history(
            q, user=user, agent=agent, since=since, until=until
        ))  # fmt: skip

    def settings(self) -> dict[str, Any]:
        return self._loop.run(self.aio.settings())

    def user_settings(self, user: str) -> dict[str, Any]:
        return self._loop.run(self.aio.user_settings(user))

    def set_user_settings(self, user: str, overrides: dict[str, Any]) -> dict[str, Any]:
        return self._loop.run(self.aio.set_user_settings(user, overrides))

    def system_settings(self) -> dict[str, Any]:
        return self._loop.run(self.aio.system_settings())

    def set_system_settings(self, overrides: dict[str, Any]) -> dict[str, Any]:
        return self._loop.run(self.aio.set_system_settings(overrides))

    def tasks(self, status: str | None = None, agent: str | None = None,
              user: str | None = None, limit: int = 100) -> list[Task]:  # fmt: skip
        return [Task(self, t) for t in self._loop.run(self.aio.tasks(status, agent, user, limit))]

    def task(self, task_id: str) -> Task:
        return Task(self, self._loop.run(self.aio.task(task_id)))

    def hitl_requests(self, status: str = "all", agent: str | None = None, *,
                      user: str | None = None, all_users: bool = False,
                      limit: int = 100) -> list[dict[str, Any]]:  # fmt: skip
        return self._loop.run(self.aio.hitl_requests(
            status, agent, user=user, all_users=all_users, limit=limit
        ))  # fmt: skip

    def hitl_request(self, request_id: str) -> dict[str, Any]:
        return self._loop.run(self.aio.hitl_request(request_id))

    def pending(self, agent: str | None = None) -> list[dict[str, Any]]:
        return self._loop.run(self.aio.pending(agent))

    def approve(self, request_id: str, option: str | None = None,
                reason: str | None = None, *, text: str | None = None,
                ) -> dict[str, Any]:  # fmt: skip
        return self._loop.run(self.aio.approve(request_id, option, reason, text=text))

    def deny(self, request_id: str, reason: str | None = None) -> dict[str, Any]:
        return self._loop.run(self.aio.deny(request_id, reason))

    def default_policy(self) -> dict[str, Any]:
        return self._loop.run(self.aio.default_policy())

    def check_policy(self, policy: dict[str, Any]) -> dict[str, Any]:
        return self._loop.run(self.aio.check_policy(policy))

    def watch_pending(self, interval: float = 1.0) -> Iterator[dict[str, Any]]:
        return self._loop.iterate(self.aio.watch_pending(interval))

    def events(self, after: int | None = None, interval: float = 1.0) -> Iterator[dict[str, Any]]:
        """My events as they happen (``AsyncClient.events``)."""
        return self._loop.iterate(self.aio.events(after, interval))

    def on_request(self, callback: Callable[[dict[str, Any]], Any],
                   interval: float = 1.0) -> Subscription:  # fmt: skip
        """Call ``callback(request)`` (in the client's thread) for each new pending
        request until ``.stop()``; the callback may call ``approve``/``deny``."""

        async def start() -> asyncio.Task[None]:
            async def call(request: dict[str, Any]) -> None:
                await asyncio.to_thread(callback, request)

            return self.aio.on_request(call, interval)

        return Subscription(self._loop, self._loop.run(start()))


def request_token(url: str, username: str, password: str, note: str) -> str:
    """A new API token of ``username``, asked of the hub with their password
    (JupyterHub's ``POST /hub/api/users/{name}/tokens`` with ``auth``: the hub's
    authenticator checks it as its login form does). Without scopes, the token
    carries what the user may do, as one from the hub's token page does."""
    hub = url.rstrip("/") + "/hub/api/"
    try:
        resp = httpx.post(
            hub + f"users/{quote(username, safe='')}/tokens",
            json={"auth": {"username": username, "password": password}, "note": note},
            timeout=REQUEST_TIMEOUT,
        )
    except httpx.HTTPError as e:
        raise SacError(0, "unreachable", f"{hub}: {type(e).__name__}: {e}") from e
    if resp.status_code == 403:
        # The hub answers every failed authentication with a bare 403.
        raise Unauthorized(403, "unauthorized", "the hub refused this user name or password")
    if resp.status_code >= 400:
        raise error_for(resp.status_code, resp.text)
    return str(resp.json()["token"])


async def _make(url: str | None, token: str | None, service_url: str | None) -> AsyncClient:
    return AsyncClient(url, token, service_url)


class Subscription:
    def __init__(self, loop: _Loop, task: asyncio.Task[None]):
        self._loop, self._task = loop, task

    def stop(self) -> None:
        self._loop.loop.call_soon_threadsafe(self._task.cancel)

    @property
    def running(self) -> bool:
        return not self._task.done()


class Agent:
    """One of my agents; see AsyncAgent for what each call does."""

    def __init__(self, client: Client, aio: AsyncAgent):
        self.client = client
        self.aio = aio

    def __repr__(self) -> str:
        return repr(self.aio)

    @property
    def slug(self) -> str:
        return self.aio.slug

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.client._loop.run(coro)

    def info(self) -> dict[str, Any]:
        return self._run(self.aio.info())

    def policy(self) -> dict[str, Any]:
        return self._run(self.aio.policy())

    def set_policy(self, policy: dict[str, Any]) -> dict[str, Any]:
        return self._run(self.aio.set_policy(policy))

    def status(self) -> str:
        return self._run(self.aio.status())

    def start(self, progress: Callable[[dict[str, Any]], None] | None = None,
              timeout: float = 300) -> None:  # fmt: skip
        self._run(self.aio.start(progress, timeout))

    def stop(self) -> None:
        self._run(self.aio.stop())

    def restart(self, progress: Callable[[dict[str, Any]], None] | None = None,
                timeout: float = 300) -> None:  # fmt: skip
        self._run(self.aio.restart(progress, timeout))

    def delete(self) -> None:
        self._run(self.aio.delete())

    def spawn_log(self) -> Iterator[dict[str, Any]]:
        return self.client._loop.iterate(self.aio.spawn_log())

    def usage(self) -> dict[str, Any]:
        return self._run(self.aio.usage())

    def exec(self, command: str | list[str], *, cwd: str | None = None,
             env: dict[str, str] | None = None, stdin: str | None = None,
             timeout: float = 60) -> ExecResult:  # fmt: skip
        """Run ``command`` in the agent's sandbox and wait for it: stdout, stderr,
        exit code (see ``AsyncAgent.exec``)."""
        return self._run(self.aio.exec(command, cwd=cwd, env=env, stdin=stdin, timeout=timeout))

    def exec_stream(self, command: str | list[str], *, cwd: str | None = None,
                    env: dict[str, str] | None = None, stdin: str | None = None,
                    timeout: float = 60) -> Iterator[dict[str, Any]]:  # fmt: skip
        """The command's frames as they come (see ``AsyncAgent.exec_stream``)."""
        return self.client._loop.iterate(
            self.aio.exec_stream(command, cwd=cwd, env=env, stdin=stdin, timeout=timeout)
        )

    def screen(self) -> dict[str, Any]:
        """The agent's Claude terminal screen now (see ``AsyncAgent.screen``)."""
        return self._run(self.aio.screen())

    def submit(self, prompt: str, *, timeout: int | None = None,
               repository: dict[str, Any] | str | None = None) -> Task:  # fmt: skip
        return Task(self.client, self._run(self.aio.submit(prompt, timeout=timeout,
                                                           repository=repository)))  # fmt: skip

    def tasks(self, status: str | None = None, limit: int = 100) -> list[Task]:
        return [Task(self.client, t) for t in self._run(self.aio.tasks(status, limit))]

    def ask(self, prompt: str, session_id: str | None = None,
            timeout: float | None = 900) -> Answer:  # fmt: skip
        return self._run(self.aio.ask(prompt, session_id, timeout))

    def stream(self, prompt: str, session_id: str | None = None) -> Iterator[dict[str, Any]]:
        return self.client._loop.iterate(self.aio.stream(prompt, session_id))

    def cancel(self, session_id: str) -> bool:
        return self._run(self.aio.cancel(session_id))

    def sessions(self) -> list[dict[str, Any]]:
        return self._run(self.aio.sessions())

    def install(self, skill: int | str) -> dict[str, Any]:
        return self._run(self.aio.install(skill))

    def uninstall(self, skill: int | str) -> None:
        self._run(self.aio.uninstall(skill))

    def installed(self) -> list[dict[str, Any]]:
        return self._run(self.aio.installed())

    def update_skill(self, skill: int | str, version: int | None = None) -> dict[str, Any]:
        return self._run(self.aio.update_skill(skill, version))

    def run_skill(self, command: str, values: dict[str, Any] | None = None, *,
                  session_id: str | None = None, timeout: float | None = 900,
                  **more: Any) -> Answer:  # fmt: skip
        return self._run(self.aio.run_skill(command, values, session_id=session_id,
                                            timeout=timeout, **more))  # fmt: skip

    def history_sessions(self, limit: int = 50) -> list[dict[str, Any]]:
        return self._run(self.aio.history_sessions(limit))

    def history_events(self, session: str | None = None,
                       limit: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
        return self._run(self.aio.history_events(session, limit))

    def export_history(self, session: str | None = None, since: str | None = None,
                       until: str | None = None) -> Iterator[bytes]:  # fmt: skip
        return self.client._loop.iterate(self.aio.export_history(session, since, until))

    def history_frame(self, session: str | None = None) -> Any:
        return self._run(self.aio.history_frame(session))

    def pending(self) -> list[dict[str, Any]]:
        return self._run(self.aio.pending())


class Task:
    """A task submitted to an agent; see AsyncTask for what each call does."""

    def __init__(self, client: Client, aio: AsyncTask):
        self.client = client
        self.aio = aio

    def __repr__(self) -> str:
        return repr(self.aio)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.client._loop.run(coro)

    @property
    def id(self) -> str:
        return self.aio.id

    @property
    def model(self) -> dict[str, Any]:
        return self.aio.model

    @property
    def status(self) -> str:
        return self.aio.status

    @property
    def done(self) -> bool:
        return self.aio.done

    @property
    def result(self) -> str | None:
        return self.aio.result

    @property
    def error(self) -> str | None:
        return self.aio.error

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        return self.aio.artifacts

    def refresh(self) -> Task:
        self._run(self.aio.refresh())
        return self

    def wait(self, timeout: float | None = None, interval: float = 1.0) -> Task:
        self._run(self.aio.wait(timeout, interval))
        return self

    def cancel(self) -> Task:
        self._run(self.aio.cancel())
        return self

    def read_artifact(self, path: str) -> bytes:
        return self._run(self.aio.read_artifact(path))
