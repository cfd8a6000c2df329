"""Local sandboxes hold: read from inside a real sandbox through its terminal, the
machine's files, users, ports and networks are out of reach, and its limits bite."""

from __future__ import annotations

import base64
import http.server
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import HubApi, run_in_terminal, running_agent

from jupyter_sac.spawner.local import LocalAgentSpawner
from sac_testing.stack import find_descendant, poll_until

pytestmark = pytest.mark.stack
SANDBOX_UID = LocalAgentSpawner().sandbox_uid


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello from the allowed site\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def site() -> Iterator[int]:
    """A web server on this machine's loopback: a host port the sandbox must not
    reach directly, and the 'allowed site' when its name is allowed."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture(scope="module")
def canaries() -> Iterator[dict[str, Path]]:
    """Files of this machine a sandbox must not see or read."""
    made = {
        "var": Path(f"/var/lib/sac-canary-{uuid.uuid4().hex[:6]}"),
        "opt": Path(f"/opt/sac-canary-{uuid.uuid4().hex[:6]}"),
        "root_only": Path(f"/etc/sac-canary-{uuid.uuid4().hex[:6]}"),
    }
    for path in made.values():
        path.write_text("machine secret\n")
    made["root_only"].chmod(0o600)
    yield made
    for path in made.values():
        path.unlink(missing_ok=True)


def hub_api_port(stack: dict) -> int:
    hub = find_descendant(stack["pid"], b"jupyterhub")
    environ = Path(f"/proc/{hub}/environ").read_bytes().split(b"\0")
    value = next(v for v in environ if v.startswith(b"SAC_HUB_API_PORT="))
    return int(value.split(b"=", 1)[1])


@pytest.fixture(scope="module")
def limited(stack: dict) -> Iterator[tuple[str, HubApi]]:
    """An agent whose owner allows it the test's site and gives it small limits."""
    admin: HubApi = stack["admin"]
    name = f"iso{uuid.uuid4().hex[:6]}"
    admin.create_user(name)
    resp = admin.sac(
        "PUT",
        f"users/{name}/settings",
        json={"egress_allow": ["allowed-site.localhost", "pypi.org"]},
    )
    assert resp.status_code == 200, resp.text
    overrides = {"cpu_limit": 0.5, "mem_limit": "512Mi", "max_processes": 64}
    with running_agent(admin, name, "box", overrides=overrides) as client:
        yield name, client


@pytest.mark.asyncio
async def test_nothing_of_the_machine_outside_its_mounts_is_visible(
    stack: dict, limited, canaries: dict[str, Path]
) -> None:
    name, client = limited
    out = await run_in_terminal(
        stack["url"], client.token, name, "box",
        "ls -A / | tr '\\n' ' '; echo;"
        " ls -A /var | tr '\\n' ' '; echo;"
        f" cat {canaries['var']} {canaries['opt']} 2>&1 | grep -c 'No such file';"
        f" cat {canaries['root_only']} 2>&1 | grep -c 'Permission denied';"
        f" ls -A {stack['data_dir']} 2>&1 | grep -c 'No such file';"
        " ls /srv /mnt /media 2>&1 | grep -c 'No such file';"
        " echo $(ls -A /opt) $(ls -A /opt/sac)",
    )  # fmt: skip
    top, var, missing, denied, data_dir, absent, opt = out.splitlines()
    visible = set(top.split())
    # The Python environment and the package are mounted read-only where they live
    # on this machine (a checkout under /work here, elsewhere on CI).
    mounted = {Path(p).parts[1] for p in LocalAgentSpawner().readonly_paths}
    assert visible <= {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "dev",
                       "proc", "tmp", "run", "var", "home", "workspace", "root", "opt"} | mounted  # fmt: skip
    assert not {"srv", "mnt", "media", "boot"} & visible
    assert var.split() == ["tmp"]
    assert (missing, denied, data_dir, absent) == ("2", "1", "1", "3")
    # Of /opt, only the organisation's package cache (this stack has one), not the
    # machine's /opt (its canary above is not there).
    assert opt.split() == ["sac", "packages"], opt


@pytest.mark.asyncio
async def test_it_runs_as_an_unprivileged_user_of_its_own(stack: dict, limited) -> None:
    name, client = limited
    out = await run_in_terminal(
        stack["url"], client.token, name, "box",
        "id -u; id -un; grep CapEff /proc/self/status | tr -d '\\t';"
        " cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //';"
        " echo made > /workspace/owned.txt; echo done",
    )  # fmt: skip
    uid, user, caps, uid_map, done = out.splitlines()
    assert (uid, user, caps, done) == ("1000", "sac", "CapEff:0000000000000000", "done")
    inside, outside, count = uid_map.split()
    assert (inside, count) == ("1000", "1")
    written = next((stack["data_dir"] / "agents").rglob("owned.txt"))
    if os.geteuid() == 0:
        # The hub is root here: the sandbox is an unprivileged uid of this machine.
        assert int(outside) == SANDBOX_UID
        assert written.stat().st_uid == SANDBOX_UID
    else:
        assert int(outside) == os.geteuid()


@pytest.mark.asyncio
async def test_the_machine_and_private_networks_are_out_of_reach(
    stack: dict, limited, site: int
) -> None:
    name, client = limited
    curl = "curl -s -m 5 -o /dev/null -w '%{http_code}\\n'"
    # The proxy even for what NO_PROXY sends directly (the loopback).
    via = "-x $HTTP_PROXY --noproxy ''"
    out = await run_in_terminal(
        stack["url"], client.token, name, "box",
        # Directly: nothing but its loopback, so no route and nothing listening.
        f"{curl} --noproxy '*' http://127.0.0.1:{site}/;"
        f" {curl} --noproxy '*' http://127.0.0.1:{hub_api_port(stack)}/hub/api/;"
        f" {curl} --noproxy '*' http://169.254.169.254/latest/meta-data/;"
        f" {curl} --noproxy '*' http://10.0.0.1/;"
        # Through the egress proxy: the machine's ports, the metadata address, private
        # ranges and hosts not allowed are refused.
        f" {curl} {via} http://127.0.0.1:{site}/;"
        f" {curl} {via} http://127.0.0.1:{hub_api_port(stack)}/hub/api/;"
        f" {curl} {via} http://169.254.169.254/latest/meta-data/;"
        f" {curl} {via} http://10.0.0.1/;"
        f" {curl} {via} http://denied-site.localhost:{site}/;"
        # The allowed site, by its name (through the proxy: *.localhost is the hub's
        # domain here, which NO_PROXY sends directly).
        f" curl -s -m 5 {via} http://allowed-site.localhost:{site}/;"
        # The hub's API through the proxy, and the model through the service.
        ' A="Authorization: token $JUPYTERHUB_API_TOKEN";'
        f' {curl} -H "$A" $JUPYTERHUB_API_URL/user;'
        f' {curl} -H "x-api-key: $ANTHROPIC_API_KEY" $ANTHROPIC_BASE_URL/v1/models',
    )  # fmt: skip
    lines = out.splitlines()
    assert lines[:4] == ["000"] * 4, "direct connections leave no sandbox"
    assert lines[4:9] == ["403"] * 5, "the egress proxy refuses what is not allowed"
    assert lines[9] == "hello from the allowed site"
    assert lines[10] == "200"
    assert lines[11] != "000", "the credential proxy answers"


@pytest.mark.asyncio
async def test_cpu_memory_and_process_limits_hold(stack: dict, limited) -> None:
    name, client = limited
    out = await run_in_terminal(
        stack["url"], client.token, name, "box",
        # A busy loop for 3 s of wall time gets at most its half core.
        "python3 -c 'import time\nt=time.monotonic()\nc=time.process_time()\n"
        "while time.monotonic()-t<3: pass\n"
        "print(\"share\", round((time.process_time()-c)/(time.monotonic()-t),2))';"
        # 1 GiB does not fit in 512 MiB: the allocating process is killed.
        " python3 -c 'b=bytearray(1<<30); b[::4096]=b\"x\"*len(b[::4096]); print(\"fit\")';"
        " echo exit $?;"
        # A fork bomb stops at the process limit.
        " python3 -c 'import os,time\nn=0\ntry:\n  while n<500:\n"
        "    pid=os.fork()\n    if pid==0:\n      time.sleep(5); os._exit(0)\n    n+=1\n"
        "except OSError as e:\n  print(\"forks\", n, e.errno)\nelse:\n  print(\"forks\", n, 0)'",
        timeout=120,
    )  # fmt: skip
    said = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    share = float(said["share"][0])
    assert share <= 0.65, f"a 0.5 CPU sandbox used {share} of a core"
    assert said["exit"] == ["137"], "the process that did not fit was killed"
    made, errno = said["forks"]
    assert int(made) < 64 and errno == "11", said["forks"]  # EAGAIN


def sandbox_usage(client: HubApi, name: str) -> dict | None:
    resp = client.sac("GET", f"users/{name}/agents/box")
    assert resp.status_code == 200, resp.text
    return resp.json()["sandbox_usage"]


@pytest.mark.asyncio
async def test_what_it_uses_is_shown_beside_the_limits_that_hold(
    stack: dict, limited, site: int
) -> None:
    name, client = limited
    await run_in_terminal(
        stack["url"], client.token, name, "box",
        "head -c 3000000 /dev/urandom > /workspace/three-mb.bin;"
        ' curl -s -o /dev/null -H "Authorization: token $JUPYTERHUB_API_TOKEN"'
        " $JUPYTERHUB_API_URL/user",
    )  # fmt: skip

    def sampled() -> dict | None:
        usage = sandbox_usage(client, name)
        if usage and usage["running"] and (usage["disk_bytes"] or 0) >= 3_000_000:
            return usage
        return None

    usage = poll_until(sampled, 60, "a sample that counts the new file")
    assert usage["limits"] == {"cpu": 0.5, "memory": 512 * 2**20, "processes": 64,
                               "disk": 10 * 2**30}  # fmt: skip
    assert 0 < usage["memory_bytes"] <= 512 * 2**20
    assert 0 < usage["processes"] <= 64
    assert usage["cpu_seconds"] > 0
    assert usage["net_sent_bytes"] > 0 and usage["net_received_bytes"] > 0
    # The admin Agents page says the same, in words.
    admin: HubApi = stack["admin"]
    page = admin.client.get(admin.service_url + "admin/agents", params={"user": name})
    assert page.status_code == 200
    assert "/ 0.5 CPU" in page.text and "/ 512 MiB" in page.text and "/ 64" in page.text
    assert "/ 10.0 GiB" in page.text and "↑ " in page.text


def test_an_agent_over_its_disk_limit_does_not_start(stack: dict) -> None:
    admin: HubApi = stack["admin"]
    name = f"disk{uuid.uuid4().hex[:6]}"
    with running_agent(admin, name, "box", overrides={"disk_limit": "1Mi"}) as client:
        resp = client.agent(name, "box", "PUT", "api/contents/big.bin",
                            json={"type": "file", "format": "base64",
                                  "content": base64.b64encode(os.urandom(2_000_000)).decode()})  # fmt: skip
        assert resp.status_code in (200, 201), resp.text
        poll_until(
            lambda: (sandbox_usage(client, name) or {}).get("disk_bytes", 0) > 2**20,
            60,
            "a sample over the disk limit",
        )
        client.stop(name, "box")
        stopped = sandbox_usage(client, name)
        assert stopped is not None and not stopped["running"] and stopped["disk_bytes"] > 2**20
        resp = client.hub("POST", f"users/{name}/servers/box")
        assert resp.status_code >= 400
        assert "over its disk limit of 1 MiB" in resp.json()["message"]
        # Within their own limit, the owner raises the agent's, and it starts again.
        resp = client.sac("PATCH", f"users/{name}/agents/box",
                          json={"overrides": {"disk_limit": "1Gi"}})  # fmt: skip
        assert resp.status_code == 200, resp.text
        client.start(name, "box")


def test_required_limits_refuse_an_agent_this_machine_cannot_limit(tmp_path: Path) -> None:
    """With require_limits, an agent whose limits cannot be enforced is refused, and
    the message says what and how to fix it."""
    import jupyter_sac.spawner.limits as limits
    from jupyter_sac.spawner.local import AgentSpawnError

    spawner = LocalAgentSpawner(require_limits=True)
    spawner.reset_progress()

    class Ctx:
        class agent:
            id, slug = 1, "x"

        resolved = {"cpu_limit": 1.0, "mem_limit": 2**30, "max_processes": 100}

    class Box:
        pid = os.getpid()

    saved = limits.CGROUP_ROOT
    limits.CGROUP_ROOT = tmp_path  # a machine without writable cgroups
    try:
        with pytest.raises(
            AgentSpawnError, match="cannot enforce the agent's CPU, memory, process"
        ):
            spawner._apply_limits(Ctx, Box)  # type: ignore[arg-type]
    finally:
        limits.CGROUP_ROOT = saved


@pytest.mark.asyncio
async def test_the_organisations_package_cache_is_shared_read_only(stack: dict) -> None:
    """Issue 21: pip (and uv) in every sandbox take wheels from the organisation's
    package cache (c.LocalAgentSpawner.shared_packages_path, seen read-only at
    /opt/sac/packages) without the index; no agent can write into it (a cache two
    agents could write would let one plant code in the other's installs), and each
    agent's own pip cache is in its home."""
    user = f"pk{uuid.uuid4().hex[:6]}"
    with running_agent(stack["admin"], user, "pkg") as client:
        output = await run_in_terminal(
            stack["url"], client.token, user, "pkg",
            "python -m pip install -q --no-index --target /tmp/site sac-probe-pkg 2>&1 | tail -1;"
            " PYTHONPATH=/tmp/site python -c 'import sac_probe_pkg; print(sac_probe_pkg.VALUE)';"
            " touch /opt/sac/packages/wheels/planted 2>/dev/null || echo read-only;"
            " echo $PIP_FIND_LINKS $UV_FIND_LINKS; python -m pip cache dir",
        )  # fmt: skip
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines[-4:] == [
        "from the organisation's package cache",
        "read-only",
        "/opt/sac/packages/wheels /opt/sac/packages/wheels",
        "/home/sac/.cache/pip",
    ], output
    assert not (stack["packages"] / "wheels" / "planted").exists()
