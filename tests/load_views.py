"""A bounded load on one web view, from its own process: requests/s and latency percentiles.

    python -m tests.load_views --url http://127.0.0.1:6066 --token T --path /customers/{id} \
        --id cust-a --id cust-b --seconds 5 --concurrency 8

Every request must answer 200 (anything else is counted and reported). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from typing import Any

import aiohttp
import orjson


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


async def run(
    url: str, token: str, path: str, ids: list[str], seconds: float, concurrency: int, max_requests: int
) -> dict[str, Any]:
    latencies: list[float] = []
    failures: dict[str, int] = {}
    targets = itertools.cycle(ids)
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base_url=url, headers=headers, connector=connector) as session:
        # Warm up: connections, the routers' metadata, RocksDB caches.
        for customer in ids[:concurrency]:
            async with session.get(path.format(id=customer)) as response:
                await response.read()
        started = time.perf_counter()
        deadline = started + seconds

        async def loop() -> None:
            while time.perf_counter() < deadline and len(latencies) + sum(failures.values()) < max_requests:
                t0 = time.perf_counter()
                async with session.get(path.format(id=next(targets))) as response:
                    await response.read()
                    status = response.status
                if status == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    failures[str(status)] = failures.get(str(status), 0) + 1

        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    ok = len(latencies)
    return {
        "path": path,
        "requests": ok,
        "failures": failures,
        "seconds": round(elapsed, 2),
        "concurrency": concurrency,
        "rps": round(ok / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--path", default="/customers/{id}")
    parser.add_argument("--id", dest="ids", action="append", required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=200_000)
    args = parser.parse_args(argv)
    result = asyncio.run(
        run(args.url, args.token, args.path, args.ids, args.seconds, args.concurrency, args.max_requests)
    )
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
