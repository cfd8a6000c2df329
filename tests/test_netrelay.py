"""The hub's side of a sandbox's relays where the data dir is deep in the file
system: a unix socket's address holds at most 107 bytes, and a sandbox's sockets
live under <data dir>/agents/<id>-<slug>/net (a start failed with "AF_UNIX path
too long" under pytest-xdist's longer temporary directories)."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import pytest

from jupyter_sac.spawner.netrelay import (
    SERVER_SOCKET,
    UNIX_PATH_MAX,
    HostRelays,
    forward_socket_name,
    listening_unix_socket,
    open_unix,
)
from jupyter_sac.stack import free_port


def deep_net_dir(tmp_path: Path) -> Path:
    net = tmp_path / ("d" * 60) / ("e" * 60) / "agents" / "12-agent" / "net"
    net.mkdir(parents=True)
    assert len(str(net / forward_socket_name(65535)).encode()) > UNIX_PATH_MAX
    return net


@pytest.mark.asyncio
async def test_relays_work_under_a_deep_data_dir(tmp_path: Path) -> None:
    net = deep_net_dir(tmp_path)
    # The sandbox's server: it accepts on the socket the hub made and handed to it.
    inside = listening_unix_socket(net / SERVER_SOCKET)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"inside:" + await reader.readline())
        await writer.drain()
        writer.close()

    sandbox_server = await asyncio.start_unix_server(echo, sock=inside)
    # A host endpoint the sandbox reaches through its forward socket.
    target = await asyncio.start_server(echo, "127.0.0.1", 0)
    target_port = target.sockets[0].getsockname()[1]

    relays = HostRelays(net)
    port = free_port()
    await relays.serve_inbound("127.0.0.1", port)
    await relays.serve_forward(target_port, "127.0.0.1", target_port)
    try:
        # The proxy's way in: TCP on the hub's side, into the sandbox's server.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello\n")
        assert await asyncio.wait_for(reader.read(), 10) == b"inside:hello\n"
        writer.close()
        # The sandbox's way out: its forward socket, to the host's endpoint.
        reader, writer = await open_unix(net / forward_socket_name(target_port))
        writer.write(b"out\n")
        assert await asyncio.wait_for(reader.read(), 10) == b"inside:out\n"
        writer.close()
    finally:
        relays.close()
        sandbox_server.close()
        target.close()


@pytest.mark.asyncio
async def test_a_reset_at_the_endpoint_ends_the_relayed_connection(tmp_path: Path) -> None:
    """The host's endpoint dies with a request at it (the `sac` service killed: its
    connections are reset): the sandbox's side of the relay is ended too, so the
    caller learns at once instead of waiting out its own timeout."""
    net = tmp_path / "net"
    net.mkdir()
    received = asyncio.Event()

    async def reset_after_request(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readline()
        received.set()
        # Closed with unread data and no linger: the kernel resets the connection,
        # as it does for a killed process's sockets.
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    target = await asyncio.start_server(reset_after_request, "127.0.0.1", 0)
    target_port = target.sockets[0].getsockname()[1]
    relays = HostRelays(net)
    await relays.serve_forward(target_port, "127.0.0.1", target_port)
    try:
        reader, writer = await open_unix(net / forward_socket_name(target_port))
        writer.write(b"POST /api/history/ingest\n")
        await asyncio.wait_for(received.wait(), 10)
        # A hang guard, not a deadline: without the fix the read never returns.
        try:
            answer = await asyncio.wait_for(reader.read(), 30)
        except ConnectionResetError:
            answer = b""
        assert answer == b""
        writer.close()
    finally:
        relays.close()
        target.close()
