"""A workspace folder downloaded as a ZIP (GET sac/api/workspace/archive) from a real
sandbox server (jupyter_server with the jupyter_sac extension, in its own process).

--files files of together --megabytes MiB (default 10 x 1,024 MiB / 10) of real
bytes (a random MiB repeated: it does not compress) are written into the
workspace, then:

- zip_download_rate: MiB/s of the whole ZIP streamed over HTTP to the client
  (dropped as it comes). Baseline: the same files read raw from disk in the same
  run, after a first read (both from the page cache).
- zip_peak_rss: the server's peak RSS (VmHWM, reset before) during the download.
  Baseline: its RSS at rest just before.

Prints one FIGURE line per figure (``FIGURE <name> <value> <unit>``; baselines are
``<name>_baseline``).
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from jupyter_sac.stack import free_port

MIB = 1024 * 1024


def rss(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for {pid}")


def write_files(folder: Path, files: int, megabytes: int) -> int:
    folder.mkdir(parents=True)
    block = os.urandom(MIB)
    each = max(megabytes // files, 1)
    for i in range(files):
        with (folder / f"part{i:03}.bin").open("wb") as f:
            for _ in range(each):
                f.write(block)
    return files * each * MIB


def read_raw(folder: Path) -> int:
    total = 0
    for path in sorted(folder.iterdir()):
        with path.open("rb") as f:
            while block := f.read(MIB):
                total += len(block)
    return total


def start_server(workspace: Path, state: Path, port: int, token: str) -> subprocess.Popen[bytes]:
    args = [
        sys.executable,
        "-m",
        "jupyter_server",
        f"--port={port}",
        "--ip=127.0.0.1",
        "--no-browser",
        "--allow-root",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={state}",
        "--ServerApp.jpserver_extensions=jupyter_sac=True",
        "--SacExtensionApp.agent_sandbox=True",
        f"--SacExtensionApp.workspace={workspace}",
        f"--SacExtensionApp.state_dir={state / 'sac'}",
        f"--SacExtensionApp.claude_config_dir={state / 'claude'}",
        "--SacExtensionApp.skills_sync_interval=0",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAC_", "JUPYTERHUB_"))}
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_up(url: str, headers: dict[str, str], proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited")
        try:
            if httpx.get(url + "sac/api/status", headers=headers).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not come up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--megabytes", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sac-bench-archive-") as tmp:
        workspace, state = Path(tmp) / "workspace", Path(tmp) / "state"
        folder = workspace / "output" / "bench"
        state.mkdir()
        size = write_files(folder, args.files, args.megabytes)
        port, token = free_port(), secrets.token_hex(16)
        url = f"http://127.0.0.1:{port}/"
        headers = {"Authorization": f"token {token}"}
        proc = start_server(workspace, state, port, token)
        try:
            wait_up(url, headers, proc)
            read_raw(folder)  # into the page cache, for both
            started = time.perf_counter()
            raw = read_raw(folder)
            raw_seconds = time.perf_counter() - started

            # a first small download: imports and first allocations are not "at rest"
            httpx.get(url + "sac/api/workspace/archive?path=private", headers=headers)
            time.sleep(0.5)
            at_rest = rss(proc.pid, "VmRSS")
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
            received = 0
            started = time.perf_counter()
            with httpx.stream(
                "GET",
                url + "sac/api/workspace/archive?path=output/bench",
                headers=headers,
                timeout=600,
            ) as resp:
                resp.raise_for_status()
                for chunk in resp.iter_raw(MIB):
                    received += len(chunk)
            zip_seconds = time.perf_counter() - started
            peak = rss(proc.pid, "VmHWM")
        finally:
            proc.terminate()
            proc.wait(30)
    assert raw == size and received > size, (raw, received, size)
    print(f"# {args.files} files, {size / MIB:.0f} MiB; the ZIP is {received / MIB:.1f} MiB")
    print(f"FIGURE zip_download_rate {size / MIB / zip_seconds:.1f} MiB/s")
    print(f"FIGURE zip_download_rate_baseline {raw / MIB / raw_seconds:.1f} MiB/s")
    print(f"FIGURE zip_peak_rss {peak / MIB:.1f} MiB")
    print(f"FIGURE zip_peak_rss_baseline {at_rest / MIB:.1f} MiB")


if __name__ == "__main__":
    main()
