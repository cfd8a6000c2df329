"""What checking a pooled PostgreSQL connection as it is handed out costs.

The SAC store's pool (``jupyter_sac/store/__init__.py``) checks each connection
before handing it out (psycopg_pool's ``check_connection``), so that after
PostgreSQL restarts no request fails on a dead idle connection. The check is one
more round trip per checkout. This measures a checkout plus ``SELECT 1`` with the
check against the same without it (the baseline), on one PostgreSQL started
here (pgserver), interleaved in blocks of --block, --blocks times; medians of
the blocks. Prints FIGURE lines (``FIGURE <name> <value> <unit>``; baselines
``<name>_baseline``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

import pgserver
from psycopg_pool import AsyncConnectionPool


async def per_checkout_us(pool: AsyncConnectionPool, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
    return (time.perf_counter() - started) / n * 1e6


async def main(blocks: int, block: int) -> None:
    with tempfile.TemporaryDirectory(prefix="sac-pool-bench-") as data:
        server = pgserver.get_server(data, cleanup_mode="stop")
        url = server.get_uri()
        checked = AsyncConnectionPool(
            url, min_size=1, max_size=1, open=False, check=AsyncConnectionPool.check_connection
        )
        plain = AsyncConnectionPool(url, min_size=1, max_size=1, open=False)
        for pool in (checked, plain):
            await pool.open(wait=True)
        try:
            times: dict[str, list[float]] = {"checked": [], "plain": []}
            for _ in range(blocks):
                times["checked"].append(await per_checkout_us(checked, block))
                times["plain"].append(await per_checkout_us(plain, block))
        finally:
            for pool in (checked, plain):
                await pool.close()
        with_check = statistics.median(times["checked"])
        without = statistics.median(times["plain"])
        print(f"FIGURE pool_checkout_select {with_check:.1f} us")
        print(f"FIGURE pool_checkout_select_baseline {without:.1f} us")
        print(f"FIGURE pool_check_cost {with_check - without:.1f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--block", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.blocks, args.block))
