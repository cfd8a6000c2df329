"""The egress proxy: its pure rules, the settings that feed it, and the proxy itself
over a real unix socket in front of a real local HTTP server."""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import os
import stat
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
import pytest_asyncio

from jupyter_sac.egress import ByteCounter, resolve, serve_unix
from jupyter_sac.objects import LocalStore, S3Store
from jupyter_sac.rules import settings as s
from jupyter_sac.rules.egress import (
    Address,
    decide,
    decide_name,
    is_loopback_host,
    is_public,
    parse_pattern,
)


def ips(*texts: str) -> list[Address]:
    return [ipaddress.ip_address(t) for t in texts]


# ---- patterns ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "normalised"),
    [
        ("*", "any", "*"),
        ("PyPI.org.", "name", "pypi.org"),
        ("*.GitHubUserContent.com", "wildcard", "*.githubusercontent.com"),
        ("10.0.0.0/8", "network", "10.0.0.0/8"),
        ("192.0.2.7", "network", "192.0.2.7"),
        ("[::1]", "network", "::1"),
        ("fd00::/8", "network", "fd00::/8"),
        ("::ffff:10.1.2.3", "network", "10.1.2.3"),
        ("xn--bcher-kva.example", "name", "xn--bcher-kva.example"),
    ],
)
def test_patterns_parse_and_normalise(text: str, kind: str, normalised: str) -> None:
    p = parse_pattern(text)
    assert (p.kind, p.text) == (kind, normalised)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("bücher.example", "xn--"),
        ("10.0.0.1/8", "not a network"),
        ("pypi.org:443", "without a port"),
        ("https://pypi.org", "without a port"),
        ("a.*.example.com", "'*' may only"),
        ("*example.com", "'*' may only"),
        ("*.10.0.0.1", "not an address"),
        ("bad_host!.com", "not a valid host name"),
        ("127.1", "neither an IP address nor a host name"),
        ("a" * 254, "longer than 253"),
    ],
)
def test_bad_patterns_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_pattern(text)
    assert message in str(err.value)


def test_wildcard_names_the_domain_and_its_subdomains_only() -> None:
    p = parse_pattern("*.example.com")
    assert p.matches_name("example.com")
    assert p.matches_name("a.b.example.com")
    assert not p.matches_name("badexample.com")
    assert not p.matches_name("example.com.evil.org")


# ---- decisions --------------------------------------------------------------------

PUBLIC = "151.101.0.223"
CASES: list[tuple[str, list[str], list[str], list[str], bool, str | None]] = [
    # host, addresses, allow, deny, allowed, address
    ("pypi.org", [PUBLIC], ["pypi.org"], [], True, PUBLIC),
    ("PyPI.org.", [PUBLIC], ["pypi.org"], [], True, PUBLIC),
    ("evil.org", [PUBLIC], ["pypi.org"], [], False, None),
    ("files.example.com", [PUBLIC], ["*.example.com"], [], True, PUBLIC),
    ("example.com", [PUBLIC], ["*.example.com"], [], True, PUBLIC),
    ("anything.org", [PUBLIC], ["*"], [], True, PUBLIC),
    # `*` opens the internet, not the host's or the cloud's networks
    ("169.254.169.254", ["169.254.169.254"], ["*"], [], False, None),
    ("metadata.google.internal", ["169.254.169.254"], ["*"], [], False, None),
    ("127.0.0.1", ["127.0.0.1"], ["*"], [], False, None),
    ("intranet.corp", ["10.1.2.3"], ["*"], [], False, None),
    ("cgnat.example", ["100.64.0.1"], ["*"], [], False, None),
    ("ula.example", ["fd12::1"], ["*"], [], False, None),
    ("ll6.example", ["fe80::1"], ["*"], [], False, None),
    ("mcast.example", ["224.0.0.251"], ["*"], [], False, None),
    ("zero.example", ["0.0.0.0"], ["*"], [], False, None),
    ("mapped.example", ["::ffff:127.0.0.1"], ["*"], [], False, None),
    ("nat64.example", ["64:ff9b::a9fe:a9fe"], ["*"], [], False, None),
    # an explicit name, or the address's network, opens a non-public address
    ("localhost", ["127.0.0.1"], ["localhost"], [], True, "127.0.0.1"),
    ("db.corp", ["10.1.2.3"], ["*.corp"], [], True, "10.1.2.3"),
    ("127.0.0.1", ["127.0.0.1"], ["127.0.0.0/8"], [], True, "127.0.0.1"),
    ("db.corp", ["10.1.2.3"], ["10.0.0.0/8"], [], True, "10.1.2.3"),
    ("mapped.example", ["::ffff:10.1.2.3"], ["10.0.0.0/8"], [], True, "10.1.2.3"),
    # the public address of a name that also has a private one is the one used
    ("mixed.example", ["10.0.0.1", PUBLIC], ["*"], [], True, PUBLIC),
    # deny wins, by name or by any address
    ("pypi.org", [PUBLIC], ["*"], ["pypi.org"], False, None),
    ("pypi.org", [PUBLIC], ["pypi.org"], ["*.org"], False, None),
    ("mixed.example", ["10.0.0.1", PUBLIC], ["*"], ["10.0.0.0/8"], False, None),
    ("localhost", ["127.0.0.1"], ["localhost"], ["127.0.0.1"], False, None),
    ("anything.org", [PUBLIC], ["*"], ["*"], False, None),
    # nothing resolved, nothing allowed, a bad list: refused
    ("pypi.org", [], ["*"], [], False, None),
    ("pypi.org", [PUBLIC], [], [], False, None),
    ("pypi.org", [PUBLIC], ["*"], ["not a pattern"], False, None),
]


@pytest.mark.parametrize(("host", "addresses", "allow", "deny", "allowed", "address"), CASES)
def test_decide(
    host: str,
    addresses: list[str],
    allow: list[str],
    deny: list[str],
    allowed: bool,
    address: str | None,
) -> None:
    d = decide(host, ips(*addresses), allow, deny)
    assert d.allowed is allowed, d.reason
    assert d.address == (ipaddress.ip_address(address) if address else None)
    assert d.reason


def test_names_the_policy_refuses_are_refused_before_any_lookup() -> None:
    assert decide_name("x.attacker.example", ["pypi.org"], []) == decide(
        "x.attacker.example", ips(PUBLIC), ["pypi.org"], []
    )
    assert decide_name("pypi.org", ["*"], ["pypi.org"]) is not None
    assert decide_name("pypi.org", ["pypi.org"], []) is None
    assert decide_name("anything.example", ["*"], []) is None
    # an allowed network may hold any name's addresses: those are looked up
    assert decide_name("db.corp", ["10.0.0.0/8"], []) is None


def test_is_public() -> None:
    assert is_public(ipaddress.ip_address("8.8.8.8"))
    assert is_public(ipaddress.ip_address("2606:4700::1"))
    assert not is_public(ipaddress.ip_address("::ffff:169.254.169.254"))
    assert not is_public(ipaddress.ip_address("ff02::1"))


def test_loopback_hosts_are_known_by_their_text() -> None:
    for host in ("localhost", "sac--service.localhost.", "127.0.0.1", "127.9.9.9", "[::1]",
                 "::ffff:127.0.0.1"):  # fmt: skip
        assert is_loopback_host(host), host
    for host in ("10.0.0.1", "169.254.169.254", "s3.amazonaws.com", "localhost.example"):
        assert not is_loopback_host(host), host


@pytest.mark.parametrize(
    ("traits", "hosts"),
    [
        ({"endpoint_url": "http://127.0.0.1:9000"}, [("127.0.0.1", 9000)]),
        ({"endpoint_url": "https://minio.corp.example", "addressing_style": "virtual"},
         [("b.minio.corp.example", 443)]),
        ({"endpoint_url": "https://minio.corp.example", "addressing_style": "auto"},
         [("minio.corp.example", 443), ("b.minio.corp.example", 443)]),
        ({"region": "eu-west-1"}, [("s3.amazonaws.com", 443), ("s3.eu-west-1.amazonaws.com", 443)]),
    ],
)  # fmt: skip
def test_an_s3_store_names_where_its_presigned_urls_point(
    traits: dict, hosts: list[tuple[str, int]]
) -> None:
    assert S3Store(bucket="b", **traits).presign_hosts() == hosts
    assert LocalStore(root="/nowhere").presign_hosts() == []


def test_a_sandbox_reaches_the_object_store_its_presigned_urls_name() -> None:
    """On this machine's loopback: relayed to the same port inside. Elsewhere: allowed
    through the egress proxy beside the agent's own list, whatever the settings say."""
    from traitlets.config import Config

    from jupyter_sac.spawner.local import LocalAgentSpawner

    def spawner(endpoint: str) -> LocalAgentSpawner:
        config = Config()
        config.SacService.object_store = "s3"
        config.S3Store.bucket = "b"
        config.S3Store.endpoint_url = endpoint
        return LocalAgentSpawner(config=config, host_endpoints=["127.0.0.1:8081"])

    local = spawner("http://127.0.0.1:9000")
    assert local.endpoints() == [("127.0.0.1", 8081), ("127.0.0.1", 9000)]
    assert local.egress_allowed({"egress_allow": ["pypi.org"]}) == ("pypi.org",)
    remote = spawner("https://minio.corp.example:9443")
    assert remote.endpoints() == [("127.0.0.1", 8081)]
    assert remote.egress_allowed({"egress_allow": ["pypi.org"]}) == (
        "pypi.org",
        "minio.corp.example",
    )
    assert LocalAgentSpawner().egress_allowed({"egress_allow": []}) == ()


@pytest.mark.asyncio
async def test_resolve_keeps_literals_and_localhost_without_dns() -> None:
    assert await resolve("[::1]") == ips("::1")
    assert await resolve("10.0.0.1") == ips("10.0.0.1")
    assert await resolve("something.LOCALHOST.") == ips("127.0.0.1")
    with pytest.raises(ValueError):
        await resolve("bücher.example")


# ---- settings ---------------------------------------------------------------------


def test_hosts_settings_are_validated_and_normalised() -> None:
    clean = s.validate_overrides({"egress_allow": ["PyPI.org.", "pypi.org", "*"]}, "system")
    assert clean == {"egress_allow": ("pypi.org", "*")}
    for bad, message in [
        ("pypi.org", "expected a list"),
        ([1], "expected a list"),
        (["ü.example"], "xn--"),
        (["10.0.0.1/8"], "not a network"),
        (["a.example"] * 257, "at most 256"),
        (["a" * 254], "at most 253"),
    ]:
        with pytest.raises(s.SettingsError) as err:
            s.validate_overrides({"egress_deny": bad}, "user")
        assert err.value.field == "egress_deny"
        assert message in err.value.message


def test_egress_allow_is_for_administrators_only() -> None:
    with pytest.raises(s.SettingsError, match="cannot be set per agent"):
        s.validate_overrides({"egress_allow": ["*"]}, "agent")
    # and a stored one (from before) is ignored
    assert s.resolve({}, {}, {"egress_allow": ["*"]})["egress_allow"] == s.EGRESS_SEED
    assert s.resolve({"egress_allow": ["*"]}, {}, {})["egress_allow"] == ["*"]
    assert s.resolve({"egress_allow": ["*"]}, {"egress_allow": ["a.org"]}, {})["egress_allow"] == [
        "a.org"
    ]


def test_egress_deny_adds_up_across_levels() -> None:
    system = {"egress_deny": ["a.org"]}
    user = {"egress_deny": ["b.org", "a.org"]}
    agent = {"egress_deny": ["c.org"]}
    assert s.resolve({}, {}, {})["egress_deny"] == ()
    assert s.resolve_user(system, user)["egress_deny"] == ("a.org", "b.org")
    assert s.resolve(system, user, agent)["egress_deny"] == ("a.org", "b.org", "c.org")
    assert s.resolve({}, {}, agent)["egress_deny"] == ("c.org",)
    # an agent's empty list narrows nothing, and cannot remove the user's entries
    assert s.resolve(system, user, {"egress_deny": []})["egress_deny"] == ("a.org", "b.org")
    assert s.jsonable(s.resolve(system, user, agent))["egress_deny"] == ["a.org", "b.org", "c.org"]


def test_seed_allow_list_is_valid() -> None:
    assert s.validate_overrides({"egress_allow": list(s.EGRESS_SEED)}, "system") == {
        "egress_allow": s.EGRESS_SEED
    }


# ---- the proxy --------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello {self.path} host={self.headers['Host']} conn={self.headers['Connection']}"
        body += f" proxy={self.headers.get('Proxy-Authorization')}"
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def origin() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


class Policy:
    def __init__(self) -> None:
        self.allow: Sequence[str] = ["*.localhost"]
        self.deny: Sequence[str] = []

    def __call__(self) -> tuple[Sequence[str], Sequence[str]]:
        return self.allow, self.deny


@pytest_asyncio.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[tuple[str, Policy, ByteCounter]]:
    policy = Policy()
    counter = ByteCounter()
    path = str(tmp_path / "egress.sock")
    server = await serve_unix(path, policy, counter)
    yield path, policy, counter
    server.close()
    await server.wait_closed()


async def exchange(path: str, data: bytes, shut: bool = False) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(data)
    await writer.drain()
    if shut:
        writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@pytest.mark.asyncio
async def test_socket_is_writable_by_other_users(proxy: tuple[str, Policy, ByteCounter]) -> None:
    path, _, _ = proxy
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o666


@pytest.mark.asyncio
async def test_connect_tunnels_to_an_allowed_name(
    proxy: tuple[str, Policy, ByteCounter], origin: int
) -> None:
    path, _, counter = proxy
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(f"CONNECT app.localhost:{origin} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 200 Connection established\r\n\r\n"
    request = b"GET /tunnel HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n"
    writer.write(request)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.0 200") or answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(b"hello /tunnel host=app.localhost conn=close proxy=None")
    assert counter.sent == len(request)
    assert counter.received == len(answer)


@pytest.mark.asyncio
async def test_absolute_form_get_is_sent_in_origin_form(
    proxy: tuple[str, Policy, ByteCounter], origin: int
) -> None:
    path, _, counter = proxy
    request = (
        f"GET http://App.localhost:{origin}/p?q=1 HTTP/1.1\r\nHost: other.example\r\n"
        "Proxy-Authorization: Basic eDp5\r\nProxy-Connection: keep-alive\r\n"
        "Connection: keep-alive\r\n\r\n"
    ).encode()
    answer = await exchange(path, request)
    assert status(answer) == 200
    # Host follows the URL (no fronting), Proxy-* removed, the connection closes
    assert answer.endswith(
        f"hello /p?q=1 host=App.localhost:{origin} conn=close proxy=None".encode()
    )
    assert counter.received == len(answer)
    assert counter.sent > 0


@pytest.mark.asyncio
async def test_a_name_not_allowed_is_refused_with_403(
    proxy: tuple[str, Policy, ByteCounter], origin: int
) -> None:
    path, policy, counter = proxy
    policy.allow = ["pypi.org"]
    for request in (
        f"CONNECT app.localhost:{origin} HTTP/1.1\r\n\r\n",
        f"GET http://app.localhost:{origin}/ HTTP/1.1\r\n\r\n",
    ):
        answer = await exchange(path, request.encode())
        assert status(answer) == 403
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"\r\nX-Sac-Egress: denied\r\n" in head
        assert b"app.localhost is not allowed by this sandbox's network policy" in body
        assert b"egress_allow" in body
    assert (counter.sent, counter.received) == (0, 0)


@pytest.mark.asyncio
async def test_a_refused_name_is_never_looked_up(
    proxy: tuple[str, Policy, ByteCounter], caplog: pytest.LogCaptureFixture
) -> None:
    path, policy, _ = proxy
    policy.allow = ["pypi.org"]
    caplog.set_level("INFO", "jupyter_sac.egress")
    # it does not resolve: 403 (not 502) shows nothing asked DNS about it
    answer = await exchange(path, b"CONNECT secret-data.nonexistent.invalid:443 HTTP/1.1\r\n\r\n")
    assert status(answer) == 403
    assert "egress secret-data.nonexistent.invalid:443 allowed=False" in caplog.text


@pytest.mark.parametrize("target", ["169.254.169.254:80", "127.0.0.1:{port}", "localhost:{port}"])
@pytest.mark.asyncio
async def test_star_does_not_open_local_addresses(
    proxy: tuple[str, Policy, ByteCounter], origin: int, target: str
) -> None:
    path, policy, counter = proxy
    policy.allow = ["*"]
    target = target.format(port=origin)
    answer = await exchange(path, f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
    assert status(answer) == 403
    assert b"X-Sac-Egress: denied" in answer
    answer = await exchange(path, f"GET http://{target}/ HTTP/1.1\r\n\r\n".encode())
    assert status(answer) == 403
    assert (counter.sent, counter.received) == (0, 0)


@pytest.mark.asyncio
async def test_deny_wins_over_an_explicit_allow(
    proxy: tuple[str, Policy, ByteCounter], origin: int
) -> None:
    path, policy, _ = proxy
    policy.deny = ["127.0.0.0/8"]
    answer = await exchange(path, f"GET http://app.localhost:{origin}/ HTTP/1.1\r\n\r\n".encode())
    assert status(answer) == 403


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /origin-form HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
        b"GET https://app.localhost/ HTTP/1.1\r\n\r\n",
        b"CONNECT app.localhost HTTP/1.1\r\n\r\n",
        b"CONNECT app.localhost:99999 HTTP/1.1\r\n\r\n",
        b"CONNECT user@app.localhost:80 HTTP/1.1\r\n\r\n",
        "CONNECT bücher.localhost:80 HTTP/1.1\r\n\r\n".encode(),
        b"GET http://app.localhost/ HTTP/1.1\r\nno colon here\r\n\r\n",
        b"nonsense\r\n\r\n",
    ],
)
@pytest.mark.asyncio
async def test_malformed_requests_get_400(
    proxy: tuple[str, Policy, ByteCounter], request_bytes: bytes
) -> None:
    path, _, _ = proxy
    assert status(await exchange(path, request_bytes)) == 400


@pytest.mark.asyncio
async def test_a_huge_head_gets_400_without_hanging(
    proxy: tuple[str, Policy, ByteCounter],
) -> None:
    path, _, _ = proxy
    request = b"GET http://app.localhost/ HTTP/1.1\r\nX-Big: " + b"a" * 40_000
    answer = await asyncio.wait_for(exchange(path, request), 5)
    assert status(answer) == 400
    assert b"too large" in answer


@pytest.mark.asyncio
async def test_a_head_cut_short_gets_400(proxy: tuple[str, Policy, ByteCounter]) -> None:
    path, _, _ = proxy
    assert status(await exchange(path, b"CONNECT app.localhost:1 HTTP/1.1\r\n", shut=True)) == 400


@pytest.mark.asyncio
async def test_an_unreachable_upstream_gets_502(
    proxy: tuple[str, Policy, ByteCounter],
) -> None:
    path, _, _ = proxy
    # a port nobody listens on: bind one, then close it
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    answer = await exchange(path, f"CONNECT app.localhost:{port} HTTP/1.1\r\n\r\n".encode())
    assert status(answer) == 502
