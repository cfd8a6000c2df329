"""Exec through the `sac` service next to the same command run here, same run.

- **latency**: `true` through `POST …/agents/{slug}/exec` (the service authorises,
  audits twice, opens the agent's exec socket through the proxy, the sandbox
  starts `/bin/sh -c true`), timed from the request to the answer's end; the
  baseline is the same command as a local subprocess plus one authenticated
  service request (`GET …/agents/{slug}`), the part of the path exec does not add.
- **throughput**: a command writing MEGABYTES of text, read as NDJSON frames;
  the baseline is the same command's output read from a local pipe.

Prints the medians and FIGURE lines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from jupyter_sac.localhost import resolve_localhost
from sac_testing.stack import embedded_stack, poll_until

resolve_localhost()

PASSWORD = "bench-admin-password"
EXTRA_CONFIG = "c.LocalAgentSpawner.warm_sandboxes = 0\n"


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def run(rounds: int, megabytes: int) -> None:
    command = f"head -c {megabytes * 1_000_000} /dev/zero | tr '\\0' a"
    with tempfile.TemporaryDirectory(prefix="sac-bench-") as tmp:
        extra = Path(tmp) / "extra_config.py"
        extra.write_text(EXTRA_CONFIG)
        with embedded_stack(Path(tmp), PASSWORD, extra) as stack:
            headers = {"Authorization": f"token {stack.admin_token}"}
            api = httpx.Client(base_url=stack.url, headers=headers, timeout=300)
            created = api.post(stack.service_url + "api/agents", json={"slug": "bench"})
            assert created.status_code == 201, created.text
            assert api.post("hub/api/users/admin/servers/bench").status_code in (201, 202)
            server = stack.server_url("admin", "bench")
            poll_until(lambda: api.get(server + "sac/api/status").status_code == 200, 120, "agent")
            agent = stack.service_url + "api/users/admin/agents/bench"

            def exec_(cmd: str) -> int:
                resp = api.post(agent + "/exec", json={"command": cmd, "timeout": 600})
                assert resp.status_code == 200, resp.text
                last = json.loads(resp.text.splitlines()[-1])
                assert last["exit_code"] == 0, last
                return len(resp.content)

            def local(cmd: str) -> None:
                subprocess.run(["/bin/sh", "-c", cmd], check=True, stdout=subprocess.PIPE)

            exec_("true")  # warm-up
            via, here = [], []
            for _ in range(rounds):
                via.append(timed(lambda: exec_("true")))
                here.append(timed(lambda: (local("true"), api.get(agent))))
            big_via = [timed(lambda: exec_(command)) for _ in range(3)]
            big_here = [timed(lambda: local(command)) for _ in range(3)]

    latency, latency_base = statistics.median(via) * 1000, statistics.median(here) * 1000
    rate, rate_base = (
        megabytes / statistics.median(big_via),
        megabytes / statistics.median(big_here),
    )
    print(f"`true` (median of {rounds}): exec {latency:.1f} ms, here + one service call"
          f" {latency_base:.1f} ms")  # fmt: skip
    print(f"{megabytes} MB of output (median of 3): exec {rate:.1f} MB/s, a local pipe"
          f" {rate_base:.1f} MB/s")  # fmt: skip
    print(f"FIGURE exec_latency {latency:.2f} ms")
    print(f"FIGURE exec_latency_baseline {latency_base:.2f} ms")
    print(f"FIGURE exec_throughput {rate:.1f} MB/s")
    print(f"FIGURE exec_throughput_baseline {rate_base:.1f} MB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--megabytes", type=int, default=12)
    args = parser.parse_args()
    run(args.rounds, args.megabytes)


if __name__ == "__main__":
    main()
