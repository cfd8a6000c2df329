"""Byte relays across a local sandbox's network namespace.

A local sandbox has a network namespace of its own with only a loopback
interface: no route leaves it, so the host's ports, the link-local metadata
address, private ranges and the internet are all unreachable by construction.
What it may reach crosses on unix sockets in a directory the hub owns
(``<agent>/net``, bound read-only at ``/run/sac`` inside):

- inbound, the hub's proxy reaches the agent's server: the hub listens on
  ``127.0.0.1:<port>`` on the host and connects to ``server.sock``, a listening
  socket the hub made and handed to the sandbox as an open file; inside, the
  server itself accepts on it (no relay inside: one hop less per keystroke);
- outbound, each of the host's endpoints a sandbox may use (the proxy, the `sac`
  service) is a listener on the same port of the sandbox's loopback, relayed to
  ``tcp-<port>.sock``, where the hub connects to the real endpoint;
- the internet only through ``egress.sock``, the hub's egress proxy, which
  applies the agent's host allow and deny lists (jupyter_sac.egress).

Sockets the sandbox connects to live in a directory it cannot write, so it can
neither replace them nor point the hub's side at another file. The same small
pump serves both sides; the hub's side counts the bytes (the agent's network use).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..egress import ByteCounter

log = logging.getLogger("jupyter_sac.netrelay")

SANDBOX_NET_DIR = "/run/sac"
SERVER_SOCKET = "server.sock"
EGRESS_SOCKET = "egress.sock"
# Inside the sandbox: where its HTTP(S)_PROXY points.
EGRESS_PORT = 3128
CHUNK = 64 * 1024

Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, ByteCounter], Awaitable[None]]


def forward_socket_name(port: int) -> str:
    return f"tcp-{port}.sock"


async def pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    count: Callable[[int], None] | None = None,
) -> None:
    """Copy until EOF, then half-close the writer so the peer sees the end.

    A connection reset on either side (a process killed with requests at it) ends
    the other side too: half-open, its peer would wait for an answer that cannot
    come until its own timeout (a sandbox's call to a killed service: a minute)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            if count is not None:
                count(len(data))
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def splice(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    connect: Connect,
    traffic: ByteCounter | None = None,
    *,
    into_sandbox: bool = False,
) -> None:
    """Join an accepted connection to a new one made by ``connect``.

    ``into_sandbox``: the accepted side is outside (the hub's proxy), so what it
    sends is received by the sandbox.
    """
    try:
        up_reader, up_writer = await connect()
    except (OSError, TimeoutError):
        writer.close()
        return

    def add(field: str) -> Callable[[int], None] | None:
        if traffic is None:
            return None

        def _add(n: int) -> None:
            setattr(traffic, field, getattr(traffic, field) + n)

        return _add

    outward, inward = ("received", "sent") if into_sandbox else ("sent", "received")
    try:
        await asyncio.gather(
            pump(reader, up_writer, add(outward)), pump(up_reader, writer, add(inward))
        )
    except asyncio.CancelledError:
        # The hub stopping while its agents keep running (they outlive it): the
        # connection just ends. Re-raised, asyncio's stream callback would log a
        # traceback per open connection.
        pass
    finally:
        # No await here: at a sandbox's exit its relays' tasks are closed mid-way.
        writer.close()
        up_writer.close()


# A unix socket's address holds at most 107 bytes of path.
UNIX_PATH_MAX = 107


@contextlib.contextmanager
def unix_address(path: Path) -> Iterator[str]:
    """An address for the socket at ``path`` that fits a unix socket address: the
    path itself, or, for a longer one (a data dir deep in the file system), the
    same file through an open handle on its directory (``/proc/self/fd/N/name``),
    valid while the block runs."""
    if len(os.fsencode(str(path))) <= UNIX_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


async def open_unix(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    with unix_address(path) as address:
        return await asyncio.open_unix_connection(address)


def listening_unix_socket(path: Path, mode: int = 0o666) -> socket.socket:
    """A listening unix socket at ``path`` (replacing a stale one), connectable by
    the sandbox's unprivileged user."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with unix_address(path) as address:
        sock.bind(address)
    os.chmod(path, mode)
    sock.listen(128)
    return sock


# ---- the hub's side ---------------------------------------------------------------


class HostRelays:
    """The hub's side of one sandbox's relays (runs on the hub's event loop)."""

    def __init__(self, net_dir: Path) -> None:
        self.net_dir = net_dir
        # Everything the sandbox sent and received, through any of its relays.
        self.traffic = ByteCounter()
        self._servers: list[asyncio.AbstractServer] = []

    async def serve_inbound(self, host: str, port: int) -> None:
        """The agent's server as the proxy reaches it: ``host:port`` here, relayed
        into the sandbox through its server socket."""
        path = self.net_dir / SERVER_SOCKET
        server = await asyncio.start_server(
            lambda r, w: splice(r, w, lambda: open_unix(path), self.traffic, into_sandbox=True),
            host,
            port,
            reuse_address=True,
        )
        self._servers.append(server)

    async def serve_forward(self, port: int, target_host: str, target_port: int) -> None:
        """One of the host's endpoints, reached from inside at 127.0.0.1:``port``."""
        sock = listening_unix_socket(self.net_dir / forward_socket_name(port))
        server = await asyncio.start_unix_server(
            lambda r, w: splice(
                r, w, lambda: asyncio.open_connection(target_host, target_port), self.traffic
            ),
            sock=sock,
        )
        self._servers.append(server)

    async def serve_egress(
        self,
        handle: Callable[
            [asyncio.StreamReader, asyncio.StreamWriter, ByteCounter], Awaitable[None]
        ],
    ) -> None:
        """The egress proxy, for this sandbox's HTTP(S)_PROXY."""
        sock = listening_unix_socket(self.net_dir / EGRESS_SOCKET)
        server = await asyncio.start_unix_server(lambda r, w: handle(r, w, self.traffic), sock=sock)
        self._servers.append(server)

    def close(self) -> None:
        for server in self._servers:
            server.close()
        self._servers = []


# ---- the sandbox's side (in the launcher, before the server starts) --------------------


@dataclass(frozen=True)
class SandboxRelays:
    """What the launcher relays inside the sandbox, from its assignment: the way out
    (the server accepts on its own way in: server_extension.SERVER_SOCKET_FD_ENV)."""

    forwards: tuple[int, ...]
    egress: bool

    @classmethod
    def from_assignment(cls, net: dict) -> SandboxRelays:
        return cls(
            forwards=tuple(int(p) for p in net.get("forwards", ())),
            egress=bool(net.get("egress")),
        )

    async def _serve(self, started: threading.Event) -> None:
        net = Path(SANDBOX_NET_DIR)
        listeners = [(port, net / forward_socket_name(port)) for port in self.forwards]
        if self.egress:
            listeners.append((EGRESS_PORT, net / EGRESS_SOCKET))
        for port, path in listeners:
            await asyncio.start_server(
                lambda r, w, path=path: splice(
                    r, w, lambda: asyncio.open_unix_connection(str(path))
                ),
                "127.0.0.1",
                port,
                reuse_address=True,
            )
        started.set()
        await asyncio.Event().wait()

    def start(self) -> None:
        """Run the relays on a loop of their own in a daemon thread; return once
        they listen (the server must find its endpoints from its first request)."""
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self._serve(started))
            except Exception:
                log.exception("sandbox relays stopped")
                started.set()

        threading.Thread(target=run, name="sac-relays", daemon=True).start()
        started.wait(10)


def egress_env(domain: str) -> dict[str, str]:
    """A sandbox's proxy variables: the internet through the egress proxy; the hub,
    the service and its own servers (names under ``domain`` and the loopback, which
    its /etc/hosts and relays serve) directly."""
    proxy = f"http://127.0.0.1:{EGRESS_PORT}"
    direct = ["localhost", "127.0.0.1", "::1", ".localhost"]
    if domain and domain != "localhost":
        direct += [domain, f".{domain}"]
    no_proxy = ",".join(direct)
    return {
        "HTTP_PROXY": proxy,
        "HTTPS_PROXY": proxy,
        "http_proxy": proxy,
        "https_proxy": proxy,
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
    }
