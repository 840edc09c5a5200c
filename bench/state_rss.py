"""Peak RSS of ONE ledgerflow worker holding N customers' state (issue #8: < 600 MB at 100,000).

    .venv/bin/python bench/state_rss.py --customers 100000

Starts a local Kafka broker (KRaft, loopback, its own temp dir), the sandbox ERP and one
`ledgerflow worker` running every stage (ingest, core, sink), creates the source topics and
produces a generated scenario to them (`connectors.simulation.generate`, one month, no
duplicates or reordering), then waits until the ERP holds every customer and invoice and the
worker's consumer group has no lag. It samples the worker's VmHWM/VmRSS and the size of its
data dir (RocksDB tables) along the way, so the run itself shows how RSS grows per customer.

`--events first` (the default) keeps, per customer, only the events that build its whole state
once: the Salesforce Account CREATE, Stripe `customer.created`, the CLM contract `signed` and
Stripe `invoice.finalized` of the first invoice (4 events). `--events month` sends the whole
first month (~8 events: subscription, invoice created/finalized/paid, payments, some credit
notes and refunds).

Writes `bench/results/<UTC timestamp>-<host>-state-rss.json` and prints a short table. Every
process it started is stopped on exit, error or Ctrl-C; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import orjson  # noqa: E402
from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402

from bench.harness import (  # noqa: E402
    child_env,
    cpu_seconds,
    create_topics,
    machine_info,
    proc_status,
    produce,
    source_records,
    spawn,
)
from connectors.simulation import Message, generate  # noqa: E402
from streams.cli.local_kafka import LocalKafka, free_port  # noqa: E402
from streams.cli.processes import terminate, wait_for_log  # noqa: E402
from streams.topic_names import SOURCE_TOPICS  # noqa: E402

RESULTS = REPO / "bench" / "results"
ERP_TOKEN = "state-rss-token"
CHUNK = 5000  # customers generated and produced at a time (keeps this process small)
FIRST_EVENTS = {"customer.created", "invoice.finalized"}


def _on_sigterm(_signum: int, _frame: Any) -> None:
    """SIGTERM unwinds through the `finally` blocks like Ctrl-C does (a BaseException, so no
    `except Exception` in a library swallows it)."""
    raise KeyboardInterrupt("SIGTERM")


# --- input -----------------------------------------------------------------------------------


def keep(message: Message, events: str) -> bool:
    """`first`: Account CREATE, contract signed, Stripe customer.created, first invoice finalized."""
    if events == "month" or message.topic in ("crm.changes", "clm.changes"):
        return True  # one month has only CREATEs and `signed` on these two
    return message.topic == "billing.changes" and orjson.loads(message.value)["type"] in FIRST_EVENTS


def chunks(customers: int, events: str, seed: int) -> Any:
    """(messages, truth counts) per CHUNK customers, numbered on from the previous chunk."""
    for first in range(0, customers, CHUNK):
        n = min(CHUNK, customers - first)
        scenario = generate(n, 1, seed + first, 0.0, 0.0, first)
        messages = [m for m in scenario.messages if keep(m, events)]
        truth = scenario.truth
        yield messages, {"customers": len(truth["customers"]), "invoices": len(truth["invoices"])}


# --- measures --------------------------------------------------------------------------------


def disk_usage(root: Path) -> tuple[int, dict[str, int]]:
    """Bytes on disk (allocated blocks) under `root`, and per RocksDB table (its partitions summed)."""
    total = 0
    tables: Counter[str] = Counter()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                size = os.lstat(os.path.join(dirpath, name)).st_blocks * 512
                total += size
                match = re.search(r"/tables/([^/]+?)-\d+\.db(/|$)", dirpath)
                if match:
                    tables[match.group(1)] += size
    return total, dict(sorted(tables.items()))


def mb(kb_or_bytes: int | None, unit: int = 1024) -> float | None:
    return None if kb_or_bytes is None else round(kb_or_bytes / unit, 1)


class ErpCounts:
    """Documents per record type in the sandbox ERP (its NetSuite collection's totalResults)."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ERP_TOKEN}"}, timeout=30)

    def count(self, record_type: str) -> int:
        response = self.client.get(f"/services/rest/record/v1/{record_type}", params={"limit": 1})
        response.raise_for_status()
        return int(response.json()["totalResults"])

    def close(self) -> None:
        self.client.close()


ROCKSDB_MEMORY = re.compile(r'^ledgerflow_rocksdb_memory_bytes\{kind="(\w+)"\} (\S+)$', re.M)


def rocksdb_memory_mb(web_url: str) -> dict[str, float]:
    """The worker's `ledgerflow_rocksdb_memory_bytes` by kind, in MB (empty if not served)."""
    try:
        text = httpx.get(f"{web_url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    return {kind: round(float(value) / (1 << 20), 1) for kind, value in ROCKSDB_MEMORY.findall(text)}


async def group_lag(bootstrap: str, group: str) -> tuple[int | None, int]:
    """(messages the group has not committed yet over the partitions it committed, partitions);
    None before its first commit. Changelogs are produced, not consumed, so not counted."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        committed = {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
        if not committed:
            return None, 0
        # Every partition of every topic the group committed to: one not committed yet counts whole.
        described = await admin.describe_topics(sorted({tp.topic for tp in committed}))
    finally:
        await admin.close()
    partitions = [TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return sum(max(0, end - committed.get(tp, 0)) for tp, end in ends.items()), len(partitions)


# --- the run ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = datetime.now(UTC)
    run_id = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix=f"ledgerflow-state-rss-{run_id}-"))
    prefix, app_id = f"rss-{run_id}.", f"rss-{run_id}"
    kafka = LocalKafka(data_dir=work / "kafka")
    children = []
    erp_counts: ErpCounts | None = None
    ok = False
    try:
        kafka.start(timeout=120)
        bootstrap = kafka.bootstrap
        machine = machine_info(kafka.version)
        print(f"broker {bootstrap}, work dir {work}", flush=True)
        asyncio.run(create_topics(bootstrap, [prefix + t for t in SOURCE_TOPICS], args.partitions, 1))

        port = free_port()
        erp = spawn(
            "erp",
            [
                *(sys.executable, "-m", "streams", "erp-sandbox", "--port", str(port)),
                *("--db", str(work / "erp.sqlite3"), "--token", ERP_TOKEN),
            ],
            child_env(),
            work,
        )
        children.append(erp)
        wait_for_log(erp.log, "ERP sandbox on", erp.proc, 60)
        data_dir = work / "worker"
        web_port = free_port()
        worker = spawn(
            "worker",
            [sys.executable, "-m", "streams", "worker", "-l", "info"],
            child_env(
                LEDGERFLOW_STAGES="ingest,core,sink",
                LEDGERFLOW_KAFKA_BOOTSTRAP=bootstrap,
                LEDGERFLOW_APP_ID=app_id,
                LEDGERFLOW_TOPIC_PREFIX=prefix,
                LEDGERFLOW_PARTITIONS=str(args.partitions),
                LEDGERFLOW_DATA_DIR=str(data_dir),
                LEDGERFLOW_WEB_PORT=str(web_port),
                LEDGERFLOW_WEB_BIND="127.0.0.1",
                LEDGERFLOW_ERP_BASE_URL=f"http://127.0.0.1:{port}",
                LEDGERFLOW_ERP_TOKEN=ERP_TOKEN,
            ),
            work,
        )
        children.append(worker)
        wait_for_log(worker.log, "Worker ready", worker.proc, 180)
        pid = worker.proc.pid
        idle = proc_status(pid)
        print(f"worker ready (pid {pid}), RSS at start {mb(idle.get('VmRSS'))} MB", flush=True)

        erp_counts = ErpCounts(f"http://127.0.0.1:{port}")
        t0 = time.monotonic()
        deadline = t0 + args.timeout
        by_topic: Counter[str] = Counter()
        expected = Counter[str]()
        samples: list[dict[str, Any]] = []

        def sample(phase: str) -> dict[str, Any]:
            for child in children:
                child.check()
            status = proc_status(pid)
            disk, _ = disk_usage(data_dir)
            row = {
                "t_s": round(time.monotonic() - t0, 1),
                "phase": phase,
                "erp_customers": erp_counts.count("customer"),
                "erp_invoices": erp_counts.count("invoice"),
                "vm_hwm_mb": mb(status.get("VmHWM")),
                "vm_rss_mb": mb(status.get("VmRSS")),
                "rss_anon_mb": mb(status.get("RssAnon")),
                "data_dir_mb": mb(disk, 1 << 20),
                "rocksdb_mb": rocksdb_memory_mb(f"http://127.0.0.1:{web_port}"),
            }
            samples.append(row)
            return row

        produce_s = 0.0
        for messages, truth in chunks(args.customers, args.events, args.seed):
            if time.monotonic() > deadline:
                raise TimeoutError(f"still producing after {args.timeout:.0f}s")
            begun = time.monotonic()
            asyncio.run(produce(bootstrap, prefix, source_records(messages)))
            produce_s += time.monotonic() - begun
            by_topic.update(m.topic for m in messages)
            expected.update(truth)
            sample("producing")
        events = sum(by_topic.values())
        customers = expected["customers"]
        print(f"produced {events} events for {customers} customers in {produce_s:.0f}s", flush=True)

        last_print = 0.0
        settled = 0
        while True:
            row = sample("draining")
            lag, partitions = asyncio.run(group_lag(bootstrap, app_id))
            row["lag"], row["lag_partitions"] = lag, partitions
            done = (
                row["erp_customers"] >= expected["customers"]
                and row["erp_invoices"] >= expected["invoices"]
                and lag == 0
            )
            settled = settled + 1 if done else 0
            if time.monotonic() - last_print > 30 or settled:
                last_print = time.monotonic()
                print(
                    f"  {row['t_s']:>7.0f}s  ERP {row['erp_customers']}/{expected['customers']} customers "
                    f"{row['erp_invoices']}/{expected['invoices']} invoices  lag {lag}  "
                    f"RSS {row['vm_rss_mb']} MB (peak {row['vm_hwm_mb']})  disk {row['data_dir_mb']} MB  "
                    f"rocksdb {row['rocksdb_mb']}",
                    flush=True,
                )
            if settled >= 2:  # lag 0 twice in a row: the results' follow-ups are in the tables too
                break
            if time.monotonic() > deadline:  # the samples so far still go out, marked incomplete
                print(f"not done within {args.timeout:.0f}s: {row}", file=sys.stderr, flush=True)
                break
            time.sleep(args.sample_every)
        elapsed = time.monotonic() - t0
        status = proc_status(pid)
        disk, tables = disk_usage(data_dir)
        result = {
            "schema_version": 1,
            "started_at": started.isoformat(timespec="seconds"),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine,
            "parameters": {
                "customers": args.customers,
                "events": args.events,
                "months": 1,
                "seed": args.seed,
                "partitions": args.partitions,
                "stages": "ingest,core,sink",
                "ledgerflow_env": {k: v for k, v in os.environ.items() if k.startswith("LEDGERFLOW_")},
            },
            "state": (
                "per customer: Salesforce Account CREATE, Stripe customer.created, CLM contract "
                "signed, Stripe invoice.finalized (first invoice)"
                if args.events == "first"
                else "per customer: the whole first month of the simulated history"
            ),
            "input": {
                "events": events,
                "by_topic": dict(sorted(by_topic.items())),
                "customers": expected["customers"],
                "invoices": expected["invoices"],
            },
            "erp": {"customers": samples[-1]["erp_customers"], "invoices": samples[-1]["erp_invoices"]},
            "complete": settled >= 2,
            "elapsed_s": round(elapsed, 1),
            "produce_s": round(produce_s, 1),
            "events_per_s": round(events / elapsed, 1) if elapsed else None,
            "worker": {
                "vm_hwm_mb": mb(status.get("VmHWM")),
                "vm_rss_mb": mb(status.get("VmRSS")),
                "rss_anon_mb": mb(status.get("RssAnon")),
                "rss_file_mb": mb(status.get("RssFile")),
                "rss_at_ready_mb": mb(idle.get("VmRSS")),
                "cpu_s": cpu_seconds(pid),
            },
            "data_dir_mb": mb(disk, 1 << 20),
            "table_dirs_mb": {name: mb(size, 1 << 20) for name, size in tables.items()},
            "samples": samples,
        }
        ok = True
        return result
    finally:
        if erp_counts is not None:
            erp_counts.close()
        for child in reversed(children):
            terminate(child.proc)
        kafka.stop()
        if ok and not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work dir (logs, data) kept: {work}", file=sys.stderr)


def write(result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromisoformat(result["started_at"]).strftime("%Y%m%dT%H%M%SZ")
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())
    path = RESULTS / f"{stamp}-{host}-state-rss.json"
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    return path


def table(result: dict[str, Any]) -> str:
    w, given = result["worker"], result["input"]
    rows = [
        f"state RSS {result['started_at']} ({result['machine']['cpus']} CPUs, "
        f"load {result['machine']['load_average_at_start']}): {result['state']}",
        f"{'customers':>9} {'events':>8} {'elapsed s':>9} {'ev/s':>6} {'VmHWM MB':>9} {'VmRSS MB':>9} "
        f"{'at ready':>8} {'disk MB':>8}",
        f"{given['customers']:>9} {given['events']:>8} {result['elapsed_s']:>9.0f} "
        f"{result['events_per_s']:>6.0f} {w['vm_hwm_mb']:>9} {w['vm_rss_mb']:>9} "
        f"{w['rss_at_ready_mb']:>8} {result['data_dir_mb']:>8}",
    ]
    if not result.get("complete", True):
        rows.append("INCOMPLETE: the timeout came before the ERP held everything with no lag")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--events", choices=("first", "month"), default="first")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds for the whole run")
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument("--keep-work", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        result = run(args)
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130
    path = write(result)
    print(table(result))
    print(f"-> {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
