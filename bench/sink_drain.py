"""The sink against the sandbox ERP: postings per second at a given ERP latency and concurrency,
and the time to drain a backlog of commands (issue #5's measures).

    .venv/bin/python -m bench.sink_drain --commands 10000 --concurrency 5 --latency-ms 20

A real broker (started here unless LEDGERFLOW_KAFKA_BOOTSTRAP names one), a sandbox ERP and one
`ledgerflow worker --stages sink`; the backlog is produced to `erp.commands` (per customer one
UpsertCustomer, then PostInvoices) and the clock stops when `erp.results` has every posting.
Prints one JSON line and writes it under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from canonical import codec
from streams.cli.local_kafka import LocalKafka
from streams.kafka_io import produce, read_topics
from tests.connectors.erp.builders import post_invoice, upsert_customer
from tests.support import BUSINESS_CENTRAL_ENV, Stack

RESULTS = Path(__file__).resolve().parent / "results"


def backlog(commands: int, per_customer: int = 10) -> list[tuple[str, bytes, dict[str, str]]]:
    out = []
    for n in range(commands):
        customer, i = f"cust-bench-{n // per_customer:06d}", n % per_customer
        command = (
            upsert_customer(customer_id=customer)
            if i == 0
            else post_invoice(external_id=f"bench-in-{n:07d}", customer_id=customer)
        )
        out.append((customer, codec.dumps(command), {"x-correlation-id": command.correlation_id}))
    return out


def drain(bootstrap: str, root: Path, commands: int, concurrency: int, latency_ms: float, mode: str) -> dict:
    stack = Stack(
        bootstrap=bootstrap,
        root=root,
        partitions=8,
        extra_env={
            "LEDGERFLOW_STAGES": "sink",
            "LEDGERFLOW_ERP_CONCURRENCY": str(concurrency),
            **(BUSINESS_CENTRAL_ENV if mode == "business-central" else {"LEDGERFLOW_ERP_MODE": mode}),
        },
        erp_args=("--latency-ms", str(latency_ms)),
    )
    try:
        stack.start_worker()
        records = backlog(commands)
        results = stack.topic("erp.results")
        started = time.monotonic()
        asyncio.run(produce(bootstrap, stack.topic("erp.commands"), records))
        produced = time.monotonic() - started

        def done(found: dict) -> bool:
            return sum(b'"posted"' in (v or b"") for _, v, _ in found[results]) >= commands

        found = asyncio.run(read_topics(bootstrap, [results], done, timeout=3600))
        seconds = time.monotonic() - started
        posted = sum(b'"posted"' in (v or b"") for _, v, _ in found[results])
    finally:
        stack.stop()
    return {
        "measure": "sink_drain",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "mode": mode,
        "commands": commands,
        "posted": posted,
        "erp_latency_ms": latency_ms,
        "erp_concurrency": concurrency,
        "produce_s": round(produced, 2),
        "drain_s": round(seconds, 2),
        "postings_per_s": round(posted / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--commands", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--mode", choices=["netsuite", "business-central"], default="netsuite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ledgerflow-sink-bench-") as tmp:
        broker = None
        bootstrap = os.environ.get("LEDGERFLOW_KAFKA_BOOTSTRAP")
        if not bootstrap:
            broker = LocalKafka(data_dir=Path(tmp) / "kafka").start()
            bootstrap = broker.bootstrap
        try:
            result = drain(bootstrap, Path(tmp), args.commands, args.concurrency, args.latency_ms, args.mode)
        finally:
            if broker is not None:
                broker.stop()
    RESULTS.mkdir(exist_ok=True)
    stamp = result["at"].replace(":", "").replace("-", "")
    (RESULTS / f"{stamp}-sink-drain-c{args.concurrency}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
