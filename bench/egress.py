"""What the egress proxy costs a sandbox's request, next to the same request made
directly, in the same run.

A local HTTP server serves a small answer and a large one; each is fetched N times
directly and N times through the egress proxy (``jupyter_sac.egress.handle_client``,
the hub's side of a sandbox's ``HTTP_PROXY``, here on a TCP port with a policy that
allows the server), a new connection each time as a sandbox's tools make them.
The relay between the sandbox's loopback and the hub's unix socket is not in this
figure; the policy decision, the resolution and the copying are.

Prints medians, their ratios and FIGURE lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import http.server
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from jupyter_sac.egress import handle_client

SMALL = b"x" * 1024
LARGE = b"y" * (16 * 2**20)


class _Payloads(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = LARGE if self.path == "/large" else SMALL
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def origin() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Payloads)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


@contextmanager
def egress_proxy() -> Iterator[int]:
    """The egress handler on a TCP port, in a thread with its own event loop."""
    loop = asyncio.new_event_loop()
    ready: list[int] = []
    started = threading.Event()

    async def serve() -> None:
        server = await asyncio.start_server(
            lambda r, w: handle_client(r, w, lambda: (("127.0.0.1",), ()), None, "bench"),
            "127.0.0.1",
            0,
        )
        ready.append(server.sockets[0].getsockname()[1])
        started.set()
        async with server:
            await server.serve_forever()

    task = loop.create_task(serve())

    def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield ready[0]
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(10)


def timed(port: int, path: str, proxy_port: int | None, runs: int) -> list[float]:
    """GETs on a new connection each, with the standard library's client (lean, so
    the figure is the path's, not a client library's set-up)."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        if proxy_port is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", path)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=60)
            conn.request("GET", f"http://127.0.0.1:{port}{path}")
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        assert resp.status == 200 and body, resp.status
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200, help="small requests of each kind")
    parser.add_argument("--large-runs", type=int, default=20, help="16 MiB downloads of each")
    args = parser.parse_args()
    with origin() as port, egress_proxy() as proxy_port:
        timed(port, "/small", None, 5), timed(port, "/small", proxy_port, 5)  # warm both
        direct_small, proxied_small = [], []
        direct_large, proxied_large = [], []
        # Interleaved, so a slower moment of the machine falls on both.
        for _ in range(args.runs // 10):
            direct_small += timed(port, "/small", None, 10)
            proxied_small += timed(port, "/small", proxy_port, 10)
        for _ in range(args.large_runs):
            direct_large += timed(port, "/large", None, 1)
            proxied_large += timed(port, "/large", proxy_port, 1)
    ms = [statistics.median(t) * 1000 for t in (direct_small, proxied_small)]
    mbps = [len(LARGE) / 2**20 / statistics.median(t) for t in (direct_large, proxied_large)]
    print(f"1 KiB request, new connection: direct {ms[0]:.2f} ms, through egress {ms[1]:.2f} ms")
    print(f"16 MiB download: direct {mbps[0]:.0f} MiB/s, through egress {mbps[1]:.0f} MiB/s")
    print(f"FIGURE egress_small_request_median {ms[1]:.3f} ms")
    print(f"FIGURE egress_small_request_median_baseline {ms[0]:.3f} ms")
    print(f"FIGURE egress_small_request_ratio {ms[1] / ms[0]:.2f} x")
    print(f"FIGURE egress_download_throughput {mbps[1]:.1f} MiB/s")
    print(f"FIGURE egress_download_throughput_baseline {mbps[0]:.1f} MiB/s")
    print(f"FIGURE egress_download_throughput_ratio {mbps[1] / mbps[0]:.2f} x")


if __name__ == "__main__":
    main()
