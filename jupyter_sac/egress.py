"""The egress proxy: a sandbox's only way out to the network, and the policy it applies.

A local sandbox has its own network namespace with no route out; an HTTP(S) forward
proxy in the hub's process, reached through a unix socket, is its way to the
internet. It answers ``CONNECT host:port`` (tunnels, for HTTPS) and absolute-form
plain HTTP (``GET http://host/path``), and lets a request through only when the
host is allowed by the settings ``egress_allow`` and not refused by ``egress_deny``.

The first half of this module is pure rules (patterns, the decision); the second the
proxy's I/O. The proxy resolves a name once, decides on the addresses it got and
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
from typing import Literal

log = logging.getLogger("jupyter_sac.egress")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Lists = Callable[[], tuple[Sequence[str], Sequence[str]]]

MAX_HOST = 253
MAX_HEAD = 16 * 1024
HEAD_TIMEOUT = 10.0
RESOLVE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
_CHUNK = 64 * 1024

# A DNS label, ASCII only (IDNs must be given in their xn-- form). Underscores are
# not valid in host names but occur in real ones (service records, some CDNs).
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
# The NAT64 well-known prefix maps IPv4 addresses into IPv6: a host with NAT64
# would reach 64:ff9b::a9fe:a9fe as 169.254.169.254, so it is judged as that.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


# ---- pure rules -------------------------------------------------------------------


def normalise_host(text: str) -> str:
    """A request's or a pattern's host in canonical form: lower case, no trailing dot,
    IPv6 literals without brackets and in their compressed form.

    Raises ValueError for anything that is neither an IP literal nor an ASCII host
    name (non-ASCII names must be written in their ``xn--`` form; a last label of
    digits only is refused because resolvers read names such as ``127.1`` as IPv4).
    """
    host = text.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    address = _ip_literal(host)
    if address is not None:
        return str(address)
    if not host.isascii():
        raise ValueError(f"{text!r} is not ASCII: write internationalised names as xn--")
    host = host.lower().removesuffix(".")
    if not host or len(host) > MAX_HOST:
        raise ValueError(f"{text!r} is not a host name (1 to {MAX_HOST} characters)")
    labels = host.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{text!r} is not a valid host name")
    if labels[-1].isdigit():
        raise ValueError(f"{text!r} is neither an IP address nor a host name")
    return host


def _ip_literal(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def canonical_address(address: Address) -> Address:
    """The address as it is reached: IPv4-mapped (``::ffff:a.b.c.d``) and NAT64
    (``64:ff9b::a.b.c.d``) IPv6 addresses as their IPv4 address, scope ids dropped."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.scope_id:
            return ipaddress.IPv6Address(str(address).split("%", 1)[0])
    return address


def address_without_dns(name: str) -> Address | None:
    """The address a normalised host name has without asking DNS: an IP literal as
    it is, ``localhost`` and its subdomains 127.0.0.1 (RFC 6761, as browsers do)."""
    literal = _ip_literal(name)
    if literal is not None:
        return literal
    if name == "localhost" or name.endswith(".localhost"):
        return ipaddress.IPv4Address("127.0.0.1")
    return None


def is_loopback_host(host: str) -> bool:
    """Is ``host`` this machine's loopback by its text alone (``localhost``, a
    ``*.localhost`` name, ``127.0.0.0/8``, ``::1``)? No resolution."""
    try:
        address = address_without_dns(normalise_host(host))
    except ValueError:
        return False
    return address is not None and canonical_address(address).is_loopback


def is_public(address: Address) -> bool:
    """Is this address globally routable? Refuses loopback, private, link-local (the
    cloud metadata address 169.254.169.254 among them), shared (CGNAT 100.64/10),
    unique-local, multicast, unspecified and reserved addresses, and IPv4 ones
    wrapped in IPv6."""
    a = canonical_address(address)
    return a.is_global and not (a.is_multicast or a.is_reserved or a.is_unspecified)


@dataclass(frozen=True)
class Pattern:
    """One entry of an allow or deny list.

    - ``any`` (``*``): every host (but see ``decide``: not the non-public addresses);
    - ``name`` (``pypi.org``): exactly that host name;
    - ``wildcard`` (``*.example.com``): every subdomain of example.com *and
      example.com itself*, as a proxy's ``.example.com`` does (someone who trusts
      the subdomains trusts the domain);
    - ``network`` (``10.0.0.0/8``, ``192.0.2.7``, ``::1``): addresses in it, whether
      given as the request's host or resolved from a name.
    """

    text: str
    kind: Literal["any", "name", "wildcard", "network"]
    name: str = ""
    network: Network | None = None

    def matches_name(self, host: str) -> bool:
        """Does this pattern name ``host`` (normalised)? Network patterns name no host;
        they match addresses (``contains``)."""
        if self.kind == "any":
            return True
        if self.kind == "name":
            return host == self.name
        if self.kind == "wildcard":
            return host == self.name or host.endswith("." + self.name)
        return False

    def contains(self, address: Address) -> bool:
        """Is ``address`` in this network pattern? (IPv4-mapped addresses as IPv4.)"""
        if self.network is None:
            return False
        a = canonical_address(address)
        return a.version == self.network.version and a in self.network


def parse_pattern(text: str) -> Pattern:
    """A pattern from its text; ValueError with a message saying what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"expected a host pattern as text, got {text!r}")
    raw = text.strip()
    if not raw:
        raise ValueError("empty host pattern")
    if len(raw) > MAX_HOST:
        raise ValueError(f"{raw[:40]!r}... is longer than {MAX_HOST} characters")
    if not raw.isascii():
        raise ValueError(f"{raw!r} is not ASCII: write internationalised names as xn--")
    if raw == "*":
        return Pattern("*", "any")
    if "://" in raw:
        raise ValueError(f"{raw!r}: patterns name hosts, without a port or scheme")
    if "/" in raw:
        try:
            network = ipaddress.ip_network(raw.strip("[]"), strict=True)
        except ValueError as e:
            raise ValueError(
                f"{raw!r} is not a network such as 10.0.0.0/8 or fd00::/8 ({e})"
            ) from None
        return Pattern(str(network), "network", network=network)
    address = _ip_literal(raw.strip("[]"))
    if address is not None:
        network = ipaddress.ip_network(canonical_address(address))
        return Pattern(str(network.network_address), "network", network=network)
    if raw.startswith("*."):
        name = normalise_host(raw[2:])
        if _ip_literal(name) is not None:
            raise ValueError(f"{raw!r}: a wildcard takes a domain, not an address")
        return Pattern("*." + name, "wildcard", name=name)
    if "*" in raw:
        raise ValueError(f"{raw!r}: '*' may only be the whole pattern or its first label (*.)")
    if ":" in raw:
        raise ValueError(f"{raw!r}: patterns name hosts, without a port or scheme")
    try:
        name = normalise_host(raw)
    except ValueError as e:
        raise ValueError(f"{e}; expected *, a host name, *.domain, an address or a CIDR") from None
    return Pattern(name, "name", name=name)


@dataclass(frozen=True)
class Decision:
    """What the proxy does with one request: ``address`` is the one to connect to
    (one that passed every rule), None when refused."""

    allowed: bool
    reason: str
    address: Address | None = None


def _refuse(reason: str) -> Decision:
    return Decision(False, reason, None)


def decide_name(host: str, allow: Sequence[str], deny: Sequence[str]) -> Decision | None:
    """The refusal that needs no resolution, or None when the addresses decide.

    The proxy asks this before resolving, so a name the policy refuses anyway is
    never looked up: otherwise a sandbox could send data out through DNS queries
    for ``<data>.attacker.example``, or probe which names resolve. A name is
    resolved only when an allow pattern names it or an allowed network might hold
    its addresses, and no deny pattern names it.
    """
    try:
        name = normalise_host(host)
        allow_p = [parse_pattern(p) for p in allow]
        deny_p = [parse_pattern(p) for p in deny]
    except ValueError as e:
        return _refuse(str(e))
    denied = next((p for p in deny_p if p.matches_name(name)), None)
    if denied is not None:
        return _refuse(f"denied by {denied.text!r}")
    if any(p.matches_name(name) or p.kind == "network" for p in allow_p):
        return None
    return _refuse("not in egress_allow")


def decide(
    host: str, addresses: Sequence[Address], allow: Sequence[str], deny: Sequence[str]
) -> Decision:
    """Whether a sandbox may connect to ``host``, which resolved to ``addresses``.

    1. A deny pattern naming the host, or containing any of its addresses, refuses.
    2. Otherwise an allow pattern must name the host or contain the address.
    3. An address that is not public (``is_public``) passes only when an allow
       pattern other than the bare ``*`` names the host (``localhost.example``,
       ``*.corp.example``) or an allowed network contains the address: ``*`` opens
       the internet, never the host's or the cloud's own networks.

    The decision names the first address (in resolver order) that passed. A list
    holding a pattern that does not parse refuses everything (fail closed): the
    settings never store one, so it means a bug, not a policy.
    """
    try:
        name = normalise_host(host)
    except ValueError as e:
        return _refuse(f"invalid host: {e}")
    try:
        allow_p = [parse_pattern(p) for p in allow]
        deny_p = [parse_pattern(p) for p in deny]
    except ValueError as e:
        return _refuse(f"invalid egress policy: {e}")
    found = [canonical_address(a) for a in addresses]
    if not found:
        return _refuse(f"{name} has no address")
    for p in deny_p:
        if p.matches_name(name):
            return _refuse(f"denied by {p.text!r}")
        for a in found:
            if p.contains(a):
                return _refuse(f"address {a} denied by {p.text!r}")
    naming = [p for p in allow_p if p.matches_name(name)]
    explicit = next((p for p in naming if p.kind != "any"), None)
    refused: list[str] = []
    for a in found:
        network = next((p for p in allow_p if p.contains(a)), None)
        if network is not None:
            return Decision(True, f"address {a} allowed by {network.text!r}", a)
        if not naming:
            continue
        if is_public(a):
            return Decision(True, f"allowed by {naming[0].text!r}", a)
        if explicit is not None:
            return Decision(True, f"non-public address {a} allowed by {explicit.text!r}", a)
        refused.append(str(a))
    if not naming:
        return _refuse("not in egress_allow")
    return _refuse(
        f"address {', '.join(refused)} is not public; '*' does not open it, only an"
        " explicit name or network in egress_allow does"
    )


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
