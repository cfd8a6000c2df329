"""Egress policy: which hosts and addresses a sandbox may reach (pure, no I/O).

The settings ``egress_allow`` and ``egress_deny`` are lists of patterns (a host,
``*.domain``, an IP address or network, ``*``); the egress proxy
(``jupyter_sac.egress``) resolves a request's host once and asks ``decide`` about
the addresses it got, then connects to exactly the address the decision names.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_HOST = 253

# A DNS label, ASCII only (IDNs must be given in their xn-- form). Underscores are
# not valid in host names but occur in real ones (service records, some CDNs).
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
# The NAT64 well-known prefix maps IPv4 addresses into IPv6: a host with NAT64
# would reach 64:ff9b::a9fe:a9fe as 169.254.169.254, so it is judged as that.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


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
