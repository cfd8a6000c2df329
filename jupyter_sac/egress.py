"""The egress proxy: a sandbox's only way out to the network, and the policy it applies.

A local sandbox has its own network namespace with no route out; an HTTP(S) forward
proxy in the hub's process, reached through a unix socket, is its way to the
internet. It answers ``CONNECT host:port`` (tunnels, for HTTPS) and absolute-form
plain HTTP (``GET http://host/path``), and lets a request through only when the
host is allowed by the settings ``egress_allow`` and not refused by ``egress_deny``.

The policy (patterns, the decision) is pure and lives in ``jupyter_sac.rules.egress``;
this module is the proxy's I/O. The proxy resolves a name once, decides on the addresses it got and
connects to exactly the address the decision names, so a name cannot be re-resolved
to another address between the check and the connection (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import socket
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .rules.egress import (
    Address,
    address_without_dns,
    decide,
    decide_name,
    normalise_host,
)

log = logging.getLogger("jupyter_sac.egress")

Lists = Callable[[], tuple[Sequence[str], Sequence[str]]]

MAX_HEAD = 16 * 1024
HEAD_TIMEOUT = 10.0
RESOLVE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
_CHUNK = 64 * 1024

# ---- resolution -------------------------------------------------------------------


async def resolve(host: str) -> list[Address]:
    """The addresses to judge for ``host``: an IP literal as it is; ``localhost`` and
    its subdomains as 127.0.0.1 without asking DNS (RFC 6761, as browsers do);
    otherwise the system resolver's answers, in its order, without duplicates.

    Raises ValueError for an invalid host, OSError when the name does not resolve.
    """
    name = normalise_host(host)
    known = address_without_dns(name)
    if known is not None:
        return [known]
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(
        loop.getaddrinfo(name, None, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT
    )
    out: list[Address] = []
    for *_, sockaddr in infos:
        a = ipaddress.ip_address(str(sockaddr[0]))
        if a not in out:
            out.append(a)
    return out


# ---- the proxy --------------------------------------------------------------------


class ByteCounter:
    """Bytes the proxy moved: ``sent`` from the sandbox out, ``received`` back in."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0


class _BadRequest(Exception):
    pass


@dataclass(frozen=True)
class _Request:
    method: str
    host: str  # normalised
    port: int
    authority: str  # host[:port] as the Host header carries it
    path: str  # origin-form, for plain HTTP
    version: str
    headers: list[tuple[str, str]]


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "host",  # replaced by the request target's authority
}


def _split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    if not authority or "@" in authority:
        raise _BadRequest(f"bad authority {authority!r}")
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise _BadRequest(f"bad authority {authority!r}")
        host, rest = authority[1:end], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            raise _BadRequest(f"bad authority {authority!r}")
        port_text = rest[1:] if rest else ""
    else:
        # An IPv6 address without brackets leaves an empty or odd host: refused below.
        host, _, port_text = authority.partition(":")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise _BadRequest(f"bad port {port_text!r}")
        port = int(port_text)
    elif default_port is None:
        raise _BadRequest("CONNECT needs host:port")
    else:
        port = default_port
    try:
        return normalise_host(host), port
    except ValueError as e:
        raise _BadRequest(str(e)) from None


def parse_head(head: bytes) -> _Request:
    """The request line and headers of a proxy request (without the final CRLF CRLF)."""
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[2].startswith("HTTP/1."):
        raise _BadRequest("bad request line")
    method, target, version = parts
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name):
            raise _BadRequest("bad header line")
        headers.append((name, value.strip(" \t")))
    if method == "CONNECT":
        host, port = _split_authority(target, None)
        return _Request(method, host, port, target, "", version, headers)
    if not target.lower().startswith("http://"):
        raise _BadRequest("expected CONNECT host:port or an absolute http:// URL")
    rest = target[len("http://") :]
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:].split("#", 1)[0]
    host, port = _split_authority(authority, 80)
    if not path.startswith("/"):
        path = "/" + path
    return _Request(method, host, port, authority, path, version, headers)


def _origin_head(req: _Request) -> bytes:
    """The request as the origin server gets it: origin-form, Host from the URL (so a
    different Host header cannot reach another site on an allowed address), without
    the Proxy-* and hop-by-hop headers, and ``Connection: close``."""
    named = {
        token.strip().lower()
        for name, value in req.headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    lines = [f"{req.method} {req.path} {req.version}", f"Host: {req.authority}"]
    for name, value in req.headers:
        lower = name.lower()
        if lower.startswith("proxy-") or lower in _HOP_BY_HOP or lower in named:
            continue
        lines.append(f"{name}: {value}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _response(status: str, body: str, extra: Sequence[tuple[str, str]] = ()) -> bytes:
    data = body.encode()
    head = [
        f"HTTP/1.1 {status}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(data)}",
        *(f"{k}: {v}" for k, v in extra),
        "Connection: close",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The request head and what followed it, or _BadRequest when it is larger than
    MAX_HEAD, incomplete or slower than HEAD_TIMEOUT."""
    buf = b""
    async with asyncio.timeout(HEAD_TIMEOUT):
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                if end > MAX_HEAD:
                    raise _BadRequest("request head too large")
                return buf[:end], buf[end + 4 :]
            if len(buf) > MAX_HEAD:
                raise _BadRequest("request head too large")
            chunk = await reader.read(4096)
            if not chunk:
                raise _BadRequest("incomplete request head")
            buf += chunk


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


async def _answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, response: bytes
) -> None:
    """Send an error response and close, after reading (and dropping) a little of what
    the client still sends, so it gets the answer rather than a reset."""
    with contextlib.suppress(Exception):
        writer.write(response)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(1.0):
            left = 64 * 1024
            while left > 0 and (chunk := await reader.read(min(left, _CHUNK))):
                left -= len(chunk)
    await _close(writer)


async def _copy(
    src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: Callable[[int], None]
) -> None:
    while chunk := await src.read(_CHUNK):
        count(len(chunk))
        dst.write(chunk)
        await dst.drain()


async def _pump(
    client_r: asyncio.StreamReader,
    client_w: asyncio.StreamWriter,
    up_r: asyncio.StreamReader,
    up_w: asyncio.StreamWriter,
    counter: ByteCounter,
) -> None:
    """Copy both ways. The client's end of input is passed on as a half-close (a
    client may shut down writing and still read the answer); the upstream's end, or
    an error either way, ends the connection."""

    def add_sent(n: int) -> None:
        counter.sent += n

    def add_received(n: int) -> None:
        counter.received += n

    async def outbound() -> None:
        await _copy(client_r, up_w, add_sent)
        if up_w.can_write_eof():
            up_w.write_eof()
        await asyncio.Future()  # wait for the inbound side to end the connection

    tasks = [
        asyncio.ensure_future(outbound()),
        asyncio.ensure_future(_copy(up_r, client_w, add_received)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def handle_client(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    lists: Lists,
    counter: ByteCounter | None = None,
    label: str = "",
) -> None:
    """Serve one proxy connection: one CONNECT tunnel or one plain HTTP request.

    ``lists`` gives the (allow, deny) patterns that apply now; it is called for each
    connection, so a settings change applies to the next one. ``label`` (say the
    agent, ``alice/helper``) starts each log line."""
    counter = counter if counter is not None else ByteCounter()
    who = f"egress[{label}]" if label else "egress"
    try:
        try:
            head, early = await _read_head(reader)
            req = parse_head(head)
        except (_BadRequest, TimeoutError) as e:
            reason = str(e) or "request head not received in time"
            log.info("%s: bad request: %s", who, reason)
            await _answer(reader, writer, _response("400 Bad Request", f"{reason}\n"))
            return
        allow, deny = lists()
        decision = decide_name(req.host, allow, deny)
        if decision is None:
            try:
                addresses = await resolve(req.host)
            except (OSError, ValueError, TimeoutError) as e:
                log.info(
                    "%s %s:%d allowed=False reason=does not resolve (%s)",
                    who,
                    req.host,
                    req.port,
                    e,
                )
                body = f"{req.host} does not resolve\n"
                await _answer(reader, writer, _response("502 Bad Gateway", body))
                return
            decision = decide(req.host, addresses, allow, deny)
        log.info(
            "%s %s:%d allowed=%s reason=%s",
            who,
            req.host,
            req.port,
            decision.allowed,
            decision.reason,
        )
        if not decision.allowed or decision.address is None:
            body = (
                f"{req.host} is not allowed by this sandbox's network policy"
                f" (settings egress_allow / egress_deny): {decision.reason}\n"
            )
            refusal = _response("403 Forbidden", body, [("X-Sac-Egress", "denied")])
            await _answer(reader, writer, refusal)
            return
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                up_r, up_w = await asyncio.open_connection(str(decision.address), req.port)
        except (OSError, TimeoutError) as e:
            log.info("%s %s:%d upstream unreachable: %s", who, req.host, req.port, e)
            body = f"cannot reach {req.host}:{req.port} ({decision.address})\n"
            await _answer(reader, writer, _response("502 Bad Gateway", body))
            return
        try:
            if req.method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                first = early
            else:
                first = _origin_head(req) + early
            if first:
                counter.sent += len(first)
                up_w.write(first)
                await up_w.drain()
            await _pump(reader, writer, up_r, up_w, counter)
        finally:
            await _close(up_w)
    except Exception:  # a handler's exception would only be logged by asyncio, unclosed
        log.exception("%s: connection failed", who)
    finally:
        await _close(writer)


async def serve_unix(
    path: str, lists: Lists, counter: ByteCounter | None = None, label: str = ""
) -> asyncio.AbstractServer:
    """Start the proxy on a unix socket at ``path`` (a stale socket there is replaced),
    writable by everyone: the sandbox runs as another uid, and the directory holding
    the socket is what limits who reaches it."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Cancelled when the loop shuts down: nothing awaits this task, and Python
        # 3.11's stream callback logs a cancelled one as an error, so end quietly.
        with contextlib.suppress(asyncio.CancelledError):
            await handle_client(reader, writer, lists, counter, label)

    server = await asyncio.start_unix_server(on_client, path=path)
    os.chmod(path, 0o666)
    return server
