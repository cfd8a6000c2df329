"""The service's client for the JupyterHub REST API (named servers of agents)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any
from urllib.parse import quote

import httpx


class HubError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class HubUnavailable(HubError):
    """The hub did not answer (not running, restarting, or too slow): a 503 to retry."""

    def __init__(self, cause: httpx.TransportError):
        super().__init__(
            503,
            f"JupyterHub did not answer ({type(cause).__name__}) at the moment; try again shortly",
        )


class HubClient:
    def __init__(self, api_url: str | None = None, token: str | None = None, timeout: float = 30.0):
        self.api_url = (api_url or os.environ["JUPYTERHUB_API_URL"]).rstrip("/")
        token = token or os.environ["JUPYTERHUB_API_TOKEN"]
        self.client = httpx.AsyncClient(
            headers={"Authorization": f"token {token}"}, timeout=timeout
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.client.request(method, self.api_url + path, **kwargs)
        except httpx.TransportError as e:
            raise HubUnavailable(e) from e

    @staticmethod
    def _raise(resp: httpx.Response) -> None:
        try:
            message = resp.json().get("message", resp.text)
        except ValueError:
            message = resp.text
        raise HubError(resp.status_code, message or f"hub answered {resp.status_code}")

    async def ping(self) -> None:
        """Raise HubError unless the hub's API answers (its root: the version, no
        database query on the hub's side): the readiness check."""
        resp = await self._request("GET", "/")
        if resp.status_code != 200:
            self._raise(resp)

    async def get_user(self, name: str) -> dict[str, Any] | None:
        resp = await self._request(
            "GET", f"/users/{quote(name, safe='')}", params={"include_stopped_servers": "1"}
        )
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            self._raise(resp)
        return resp.json()

    async def create_server(self, user: str, name: str, display_name: str) -> None:
        """Create a named server without starting it (so it shows on the hub's home page)."""
        resp = await self._request(
            "PUT",
            f"/users/{quote(user, safe='')}/servers/{quote(name, safe='')}",
            json={"display_name": display_name},
        )
        if resp.status_code not in (201, 409):
            self._raise(resp)

    async def active_users(self) -> list[dict[str, Any]]:
        """Users with at least one running or pending server (all pages)."""
        return await self._users({"state": "active"})

    async def all_users(self) -> list[dict[str, Any]]:
        """Every user, with their stopped servers too (all pages)."""
        return await self._users({"include_stopped_servers": "1"})

    async def tokens(self, user: str) -> list[dict[str, Any]]:
        """``user``'s API and OAuth tokens (their models: id, scopes, client; never the
        tokens themselves). Needs ``read:tokens``."""
        resp = await self._request("GET", f"/users/{quote(user, safe='')}/tokens")
        if resp.status_code == 404:
            return []
        if resp.status_code != 200:
            self._raise(resp)
        return resp.json().get("api_tokens") or []

    async def groups(self) -> list[dict[str, Any]]:
        """Every group on the hub with its members (`users`), empty groups too."""
        return await self._all_pages("/groups", {})

    async def _users(self, params: dict[str, str]) -> list[dict[str, Any]]:
        return await self._all_pages("/users", params)

    async def _all_pages(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """Every item of a paginated hub list (the hub caps a page at its own limit)."""
        items: list[dict[str, Any]] = []
        offset = 0
        while True:
            resp = await self._request(
                "GET", path, params={**params, "offset": offset, "limit": 200}
            )
            if resp.status_code != 200:
                self._raise(resp)
            page = resp.json()
            page = page["items"] if isinstance(page, dict) else page
            items += page
            if len(page) < 200:
                return items
            offset += len(page)

    async def named_servers(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(user, server name, server model) of every running or pending named
        server: the agents that are up (the default server is never an agent)."""
        return [
            (user["name"], name, server)
            for user in await self.active_users()
            for name, server in (user.get("servers") or {}).items()
            if name
        ]

    async def stop_server(self, user: str, name: str) -> None:
        """Stop a named server (it stays, stopped, on the hub's home page)."""
        path = f"/users/{quote(user, safe='')}/servers/{quote(name, safe='')}"
        resp = await self._request("DELETE", path)
        if resp.status_code not in (202, 204, 404):
            self._raise(resp)

    async def start_server(self, user: str, name: str) -> None:
        """Ask the hub to start a named server (it spawns in the background)."""
        path = f"/users/{quote(user, safe='')}/servers/{quote(name, safe='')}"
        resp = await self._request("POST", path)
        if resp.status_code not in (201, 202):
            self._raise(resp)

    async def stop_server_and_wait(self, user: str, name: str, timeout: float = 120) -> None:
        """Stop a named server and wait until the hub reports it stopped."""
        await self.stop_server(user, name)
        deadline = time.monotonic() + timeout
        while True:
            model = await self.get_user(user)
            server = (model or {}).get("servers", {}).get(name)
            if not server or not (server.get("ready") or server.get("pending")):
                return
            if time.monotonic() > deadline:
                raise HubError(504, f"server {user}/{name} did not stop within {timeout} s")
            await asyncio.sleep(0.25)

    async def remove_server(self, user: str, name: str, timeout: float = 120) -> None:
        """Stop (if running) and remove a named server; wait until it is gone."""
        path = f"/users/{quote(user, safe='')}/servers/{quote(name, safe='')}"
        deadline = time.monotonic() + timeout
        while True:
            resp = await self._request("DELETE", path, json={"remove": True})
            if resp.status_code == 404:
                return
            if resp.status_code not in (202, 204, 400):
                self._raise(resp)
            if resp.status_code == 204:
                model = await self.get_user(user)
                if model is None or name not in model.get("servers", {}):
                    return
            if time.monotonic() > deadline:
                raise HubError(504, f"server {user}/{name} did not stop within {timeout} s")
            await asyncio.sleep(0.25)
