"""Where things are with subdomains (jupyter_sac.rules.urls) and a sandbox's own
/etc/hosts (spawner/sandbox.py): pure rules, no stack."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx
import pytest
from traitlets.config import Config

from jupyter_sac.proxy_transport import ProxyTransport
from jupyter_sac.rules.urls import PublicUrls, default_service_url, via_proxy
from jupyter_sac.spawner.sandbox import SandboxLayout, bwrap_argv, sandbox_hosts, write_in_place

HUB = PublicUrls("http://localhost:8000")


def test_the_hub_the_service_and_each_user_have_their_own_host() -> None:
    assert HUB.hub == "http://localhost:8000/"
    assert HUB.service() == "http://sac--service.localhost:8000/services/sac/"
    assert HUB.server("alice", "desk") == "http://alice.localhost:8000/user/alice/desk/"
    # Named servers of one user share the user's host.
    assert HUB.server("alice", "other").startswith("http://alice.localhost:8000/")
    assert HUB.host_names("alice") == ["localhost", "sac--service.localhost", "alice.localhost"]
    # Every user's host, as a CSP source (a form's redirects may end there).
    assert HUB.users_origin == "http://*.localhost:8000"


def test_names_that_are_not_dns_safe_are_encoded_as_jupyterhub_does() -> None:
    from jupyterhub.utils import subdomain_hook_idna

    for name in ("ann.lee", "a_b", "élodie", "bob@example.org"):
        host = HUB.user_host(name)
        assert host == subdomain_hook_idna(name, "localhost", "user")
        assert host.endswith(".localhost") and host.count(".") == 1
        assert all(c.isalnum() or c in "-." for c in host), host
    assert HUB.server("ann.lee", "x") == "http://u-annlee--2a39e9c.localhost:8000/user/ann.lee/x/"


def test_without_subdomains_everything_is_a_path_on_one_origin() -> None:
    one = PublicUrls()
    assert (one.hub, one.service(), one.server("a b", "x")) == (
        "/",
        "/services/sac/",
        "/user/a%20b/x/",
    )
    assert one.host_names("alice") == []


def test_the_layout_follows_the_hub_configuration() -> None:
    c = Config()
    c.JupyterHub.subdomain_host = "https://jupyter.example.org/"
    c.JupyterHub.base_url = "/jh"
    urls = PublicUrls.from_config(c)
    assert urls.service() == "https://sac--service.jupyter.example.org/jh/services/sac/"
    assert urls.hub == "https://jupyter.example.org/jh/"
    assert PublicUrls.from_config(Config()) == PublicUrls()


def test_a_client_finds_the_service_beside_the_hub() -> None:
    assert default_service_url("http://localhost:8000/") == (
        "http://sac--service.localhost:8000/services/sac/"
    )
    assert default_service_url("https://jupyter.example.org") == (
        "https://sac--service.jupyter.example.org/services/sac/"
    )
    # A hub reached by its address cannot have subdomains.
    assert default_service_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000/services/sac/"


def test_via_proxy_keeps_the_public_host_for_host_routing() -> None:
    assert via_proxy(
        "http://alice.localhost:8000/user/alice/x/api?a=1", "http://127.0.0.1:8000/"
    ) == (
        "http://127.0.0.1:8000/user/alice/x/api?a=1",
        "alice.localhost:8000",
    )
    assert via_proxy("wss://a.example.org/user/a/x/ws", "http://proxy-public/") == (
        "ws://proxy-public/user/a/x/ws",
        "a.example.org",
    )
    assert via_proxy("http://alice.localhost:8000/x", "") == ("http://alice.localhost:8000/x", None)


def test_the_proxy_transport_sends_the_public_host() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    async def main() -> None:
        transport = ProxyTransport("http://127.0.0.1:9999/", httpx.MockTransport(answer))
        async with httpx.AsyncClient(transport=transport) as client:
            resp = await client.get("http://bob.localhost:8000/user/bob/x/sac/api/activity")
            assert resp.json() == {"ok": True}

    import asyncio

    asyncio.run(main())
    (request,) = seen
    assert str(request.url) == "http://127.0.0.1:9999/user/bob/x/sac/api/activity"
    assert request.headers["Host"] == "bob.localhost:8000"


BASE_HOSTS = """127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
# The following lines are desirable for IPv6 capable hosts
10.1.2.3\ts3.internal minio
127.0.0.1\tbob.localhost   # someone's own entry
"""


def test_a_sandbox_resolves_exactly_the_hub_the_service_and_its_owner() -> None:
    names = HUB.host_names("alice")
    hosts = sandbox_hosts(BASE_HOSTS, names, "127.0.0.1", "localhost")
    entries = {}
    for line in hosts.splitlines():
        fields = line.partition("#")[0].split()
        for name in fields[1:]:
            entries.setdefault(name, []).append(fields[0])
    assert entries["localhost"] == ["127.0.0.1"]
    assert entries["sac--service.localhost"] == ["127.0.0.1"]
    assert entries["alice.localhost"] == ["127.0.0.1"]
    # No other user's host, whatever the machine's file said; the rest is kept.
    assert "bob.localhost" not in entries
    assert entries["s3.internal"] == ["10.1.2.3"] and entries["ip6-localhost"] == ["::1"]
    assert "# The following lines are desirable for IPv6 capable hosts" in hosts


def test_a_real_domain_keeps_the_machines_localhost() -> None:
    example = PublicUrls("http://sac.example.org:8000")
    hosts = sandbox_hosts(
        "127.0.0.1 localhost\n10.0.0.9 bob.sac.example.org sac.example.org other\n",
        example.host_names("ann"),
        "10.0.0.5",
        example.domain,
    )
    assert hosts.splitlines()[1:] == [
        "127.0.0.1 localhost",
        "10.0.0.9 other",
        "10.0.0.5 sac.example.org sac--service.sac.example.org ann.sac.example.org",
    ]


def test_the_hosts_file_is_bound_read_only_over_etc_hosts(tmp_path: Path) -> None:
    layout = SandboxLayout(tmp_path / "agent")
    layout.create()
    write_in_place(layout.hosts, "127.0.0.1 localhost\n")
    argv = bwrap_argv(
        "bwrap", layout, readonly_paths=[], hostname="sac-x", command=["true"],
        hosts_file=layout.hosts,
    )  # fmt: skip
    i = argv.index(str(layout.hosts))
    assert argv[i - 1 : i + 2] == ["--ro-bind", str(layout.hosts), "/etc/hosts"]
    # After the system's own /etc (bound read-only first), so it wins.
    assert argv.index("/etc") < i
    without = bwrap_argv(
        "bwrap", layout, readonly_paths=[], hostname="sac-x", command=["true"],
    )  # fmt: skip
    assert "/etc/hosts" not in without


def test_rewriting_keeps_the_inode_a_running_sandbox_has_bound(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    write_in_place(path, "127.0.0.1 localhost sac--service.localhost\n" * 3)
    inode = os.stat(path).st_ino
    write_in_place(path, "127.0.0.1 localhost\n")
    assert os.stat(path).st_ino == inode
    assert path.read_text() == "127.0.0.1 localhost\n"


def test_the_test_process_resolves_localhost_subdomains() -> None:
    # conftest.py calls resolve_localhost() for the whole session.
    found = {info[4][0] for info in socket.getaddrinfo("sac--service.localhost", 80)}
    assert found == {"127.0.0.1"}
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("no-such-host.invalid", 80)
