"""`ledgerflow bench` (design §7): one generated scenario through a real broker, measured for
ledgerflow and, in the same run on the same broker and input, two references.

* **ledgerflow** — real `ledgerflow worker` processes (every stage, the sink posting to a
  sandbox ERP process), timed from the first message consumed to the last command emitted,
  and only done when every posting the scenario's ground truth implies is confirmed on
  `erp.results`. Latency is measured per stage from record timestamps: the source message
  (produced by the bench with the correlation headers the webhook ingress sets) → the command
  on `erp.commands` (matched by its correlation id) → its confirmation on `erp.results`
  (matched by idempotency key). A pre-produced backlog makes those latencies queueing time,
  so a second, *paced* run produces the scenario live at `--rate` events/s and measures them
  at that load.
* **faust** — a bare Faust agent forwarding the Stripe topics unchanged: the framework's own
  per-event cost (`bench/peers/faust_passthrough.py`).
* **quix** — the same Stripe pipeline in Quix Streams: decode and map with ledgerflow's own
  mapper, re-key by customer, RocksDB dedup and invoice state, a command per postable invoice
  (`bench/peers/quix_pipeline.py`).

Each contender reads the same pre-produced topics from the start with its own consumer group,
one after the other. Results go to `bench/results/<UTC timestamp>-<host>.json` (and a py-spy
summary of the ledgerflow worker beside it with `--profile`) and are printed as a table; the
rates are also given as ratios, which survive a noisy machine better than the rates do.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from click.core import ParameterSource

from connectors.erp.business_central_sandbox import BusinessCentralSandboxConfig
from connectors.erp.client import NETSUITE_RECORD_PATH, SUITEQL_PATH
from connectors.simulation import Message, Scenario, generate
from streams import headers as h
from streams.cli.local_kafka import LocalKafka, LocalKafkaError, free_port
from streams.cli.processes import ProcessFailed, terminate, wait_for_log
from streams.metrics import READY_TIMESTAMP, header_ms
from streams.settings import Settings
from streams.topic_names import CANONICAL, ERP_COMMANDS, ERP_RESULTS, SOURCE_TOPICS, STRIPE_TOPICS

REPO = Path(__file__).resolve().parent.parent
PEERS = REPO / "bench" / "peers"
RESULTS = REPO / "bench" / "results"
CONTENDERS = ("ledgerflow", "faust", "quix")
ERP_TOKEN = "bench-token"
# Variables a bench deployment must not inherit: its ERP is the sandbox, and no write-back
# may reach a real CRM.
NOT_INHERITED = (
    "LEDGERFLOW_ERP_BASE_URL",
    "LEDGERFLOW_ERP_TOKEN",
    "LEDGERFLOW_ERP_TOKEN_URL",
    "LEDGERFLOW_ERP_CLIENT_ID",
    "LEDGERFLOW_ERP_CLIENT_SECRET",
    "LEDGERFLOW_CRM_BASE_URL",
    "LEDGERFLOW_CRM_TOKEN",
    "LEDGERFLOW_CRM_TOKEN_URL",
)
PERCENTILES = (50, 95, 99)


class BenchError(RuntimeError):
    """A contender failed, or did not finish its input in time."""


@dataclass(frozen=True)
class BenchOptions:
    customers: int = 300
    months: int = 6
    seed: int = 7
    duplicate_rate: float = 0.1
    reorder_rate: float = 0.1
    partitions: int = 4
    contenders: tuple[str, ...] = CONTENDERS
    rate: float = 500.0
    """Events/s of the paced ledgerflow run; 0 skips it."""
    paced_customers: int | None = None
    """Customers in the paced run's scenario (None: the same scenario as the backlog)."""
    erp_latency_ms: float = 0.0
    workers: int = 1
    sink_workers: int = 1
    """Workers running only the sink (`--stages sink`, their own consumer group) beside `workers`
    running ingest and core; 0 runs every stage in every worker. The sink's ERP calls wait on
    the event loop, which stage 1 and 2 hold for a whole batch at a time: in a process of its
    own it kept up (docs/performance.md)."""
    timeout_s: float = 900.0
    profile: bool = False
    results_dir: Path = RESULTS
    keep_work: bool = False
    erp_bound: bool = False
    """Run only the ERP-bound mode (`run_erp_bound`): no peers, no paced run."""
    erp_concurrency_limits: tuple[int, ...] = (5, 10)
    """The sandbox's concurrency limit of each ERP-bound run, and the sink's LEDGERFLOW_ERP_CONCURRENCY."""
    erp_mode: str = "netsuite"
    """The ERP stand-in the ERP-bound runs post to (`netsuite` or `business-central`)."""
    erp_batch: tuple[bool, ...] = (False, True)
    """Business Central: each limit runs without and with the sink's shared `$batch`
    (LEDGERFLOW_BC_BATCH); NetSuite has none and runs once."""
    erp_operation_ms: float = 10.0
    """Business Central: the stand-in's latency for each operation of a `$batch` (Microsoft gives
    no figure: an assumption, said in the results)."""
    erp_rate_limit: int = 200
    erp_rate_window_s: float = 10.0
    """Business Central: the stand-in's rate limit, Microsoft's 6,000 requests per 5 minutes scaled
    to the same 20 a second over a window a short run fills (0: none)."""


QUICK = {"customers": 8, "months": 2, "partitions": 2, "rate": 200.0, "timeout_s": 300.0}
"""`--quick`: enough to see every contender work end to end, not to measure anything."""
ERP_BOUND = {"customers": 205, "months": 12, "erp_latency_ms": 250.0}
"""`--erp-bound`'s defaults: at seed 7, 4,805 documents (invoices, payments, credit memos) and 205
customers, ~5,000 ERP writes, at NetSuite's ~250 ms a call; a month-end backlog is big enough
that the start-up and the last batch's tail are a few percent of the run, not its shape."""
ERP_BOUND_QUICK = {"customers": 20, "months": 6, "erp_latency_ms": 50.0, "partitions": 2, "timeout_s": 300.0}
"""`--erp-bound --quick`: ~260 writes at 50 ms a call, a few seconds per limit: does the mode work?"""


# --- input -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceRecord:
    """One scenario message as the webhook ingress would produce it (design topic name)."""

    topic: str
    key: bytes
    value: bytes
    correlation_id: str
    causation_id: str


def source_records(messages: Sequence[Message]) -> list[SourceRecord]:
    """The scenario with the ingress's correlation headers: a Stripe Event's follow from its
    id (a redelivery carries the same), a relay message's from its place in the history."""
    out = []
    for i, m in enumerate(messages):
        if m.topic in STRIPE_TOPICS:
            event_id = str(orjson.loads(m.value)["id"])
            causation = f"webhook:stripe:{event_id}"
            correlation = h.stable_id("correlation", "stripe", event_id)
        else:
            source = "salesforce" if m.topic == "crm.changes" else "clm"
            causation = f"bench:{source}:{i}"
            correlation = h.stable_id("correlation", source, causation)
        out.append(SourceRecord(m.topic, m.key.encode(), m.value, correlation, causation))
    return out


@dataclass(frozen=True)
class Expected:
    """What the ERP must have confirmed before a ledgerflow run counts as done."""

    documents: frozenset[str]
    """Idempotency keys of every invoice, payment and credit memo posting the truth implies."""
    customers: int
    """Customers that must each have a confirmed `upsert_customer`."""

    @classmethod
    def of(cls, truth: dict[str, Any]) -> Expected:
        documents = (
            {f"post_invoice-stripe-{i['invoice_id']}" for i in truth["invoices"]}
            | {f"apply_payment-stripe-{p['payment_id']}" for p in truth["payments"]}
            | {f"post_credit_memo-stripe-{m['credit_memo_id']}" for m in truth["credit_memos"]}
        )
        return cls(frozenset(documents), len(truth["customers"]))

    def met_by(self, seen: Observed) -> bool:
        return len(seen.customers_confirmed) >= self.customers and self.documents <= seen.confirmed_at.keys()

    def settled_by(self, seen: Observed) -> bool:
        """Every customer confirmed and every document answered for good, posted or not: the
        ERP-bound runs end there, since a document the ERP refuses spent its call like any other
        and will not be confirmed however long the run waits (its refusal is reported)."""
        answered = seen.confirmed_at.keys() | seen.not_posted.keys()
        return len(seen.customers_confirmed) >= self.customers and self.documents <= answered

    def shortfall(self, seen: Observed) -> str:
        missing = sorted(self.documents - seen.confirmed_at.keys())
        return (
            f"{len(seen.customers_confirmed)}/{self.customers} customers and "
            f"{len(self.documents) - len(missing)}/{len(self.documents)} documents confirmed; "
            f"missing e.g. {missing[:3]}"
        )


@dataclass
class Input:
    """One scenario, ready to produce, with its ground truth."""

    scenario: Scenario
    records: list[SourceRecord]
    expected: Expected

    @classmethod
    def generate(cls, options: BenchOptions, customers: int) -> Input:
        scenario = generate(
            customers, options.months, options.seed, options.duplicate_rate, options.reorder_rate
        )
        return cls(scenario, source_records(scenario.messages), Expected.of(scenario.truth))

    def count(self, topics: Sequence[str]) -> int:
        return sum(1 for r in self.records if r.topic in topics)


# --- Kafka -----------------------------------------------------------------------------------


async def create_topics(bootstrap: str, names: Sequence[str], partitions: int, replication: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, replication) for name in names])
        # Wait for every partition's leader: the first sends would otherwise be refused and retried.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            described = await admin.describe_topics(list(names))
            led = [p["leader"] >= 0 for t in described if t["error_code"] == 0 for p in t["partitions"]]
            if len(led) == partitions * len(names) and all(led):
                return
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def delete_topics_containing(bootstrap: str, marker: str) -> int:
    """Remove a finished run's topics from a shared broker (best effort)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if marker in t]
        if names:
            await admin.delete_topics(names)
        return len(names)
    finally:
        await admin.close()


@dataclass
class Produced:
    source_at: dict[str, int]
    """Correlation id → timestamp (ms) of its first source record."""
    seconds: float


async def produce(
    bootstrap: str, prefix: str, records: Sequence[SourceRecord], rate: float = 0.0
) -> Produced:
    """Produce the records in order, each stamped when it is sent; with a rate, message i is
    sent at start + i/rate (live traffic), else as fast as the broker takes them (a backlog)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=0 if rate else 10,
        max_batch_size=1 << 18,
    )
    await producer.start()
    source_at: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        pending = []
        for i, record in enumerate(records):
            if rate:
                delay = started + i / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            at = int(time.time() * 1000)
            source_at.setdefault(record.correlation_id, at)
            pending.append(
                await producer.send(
                    prefix + record.topic,
                    record.value,
                    key=record.key,
                    timestamp_ms=at,
                    headers=[
                        (h.CORRELATION_ID, record.correlation_id.encode()),
                        (h.CAUSATION_ID, record.causation_id.encode()),
                    ],
                )
            )
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return Produced(source_at, loop.time() - started)


async def earliest_timestamp(bootstrap: str, topic: str, timeout_s: float = 30.0) -> int | None:
    """The smallest record timestamp of a topic (its first record in each partition)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # fetches metadata for every topic
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return None
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        waiting = {tp for tp in partitions if ends[tp] > starts[tp]}
        first: list[int] = []
        deadline = time.monotonic() + timeout_s
        while waiting and time.monotonic() < deadline:
            batch = await consumer.getmany(*waiting, timeout_ms=500, max_records=50)
            for tp, messages in batch.items():
                if messages and tp in waiting:
                    first.append(min(m.timestamp for m in messages))
                    waiting.discard(tp)
        return min(first) if first else None
    finally:
        await consumer.stop()


@dataclass
class Observed:
    """What a ledgerflow deployment emitted and what the ERP confirmed, as record timestamps."""

    command_at: dict[str, int] = field(default_factory=dict)
    """Idempotency key → timestamp (ms) of its first `erp.commands` record."""
    command_correlation: dict[str, str] = field(default_factory=dict)
    command_kind: dict[str, str] = field(default_factory=dict)
    """Idempotency key → its command (`post_invoice`, …)."""
    command_ready_at: dict[str, int] = field(default_factory=dict)
    """Idempotency key → its `x-ready-timestamp` (ms), where it waited for a later input."""
    confirmed_at: dict[str, int] = field(default_factory=dict)
    """Idempotency key → timestamp (ms) of its first posted `erp.results` record."""
    customers_confirmed: set[str] = field(default_factory=set)
    not_posted: dict[str, str] = field(default_factory=dict)
    """Idempotency key → error code of its last result other than posted (refused, or parked on
    an ERP that would not take it): calls that bought no document."""
    not_posted_at: dict[str, int] = field(default_factory=dict)
    """Idempotency key → timestamp (ms) of its first result other than posted."""
    commands: int = 0
    results: int = 0
    first_command_at: int = 0
    last_command_at: int = 0

    def add_command(self, at: int, value: bytes, headers: Sequence[tuple[str, bytes]]) -> None:
        self.commands += 1
        command = orjson.loads(value)
        key = str(command["idempotency_key"])
        if key not in self.command_at:
            self.command_at[key] = at
            self.command_kind[key] = str(command.get("command"))
            given = dict(headers)
            correlation = given.get(h.CORRELATION_ID)
            if correlation is not None:
                self.command_correlation[key] = correlation.decode()
            ready = header_ms(given, READY_TIMESTAMP)
            if ready is not None:
                self.command_ready_at[key] = ready
        self.first_command_at = min(self.first_command_at or at, at)
        self.last_command_at = max(self.last_command_at, at)

    def add_result(self, at: int, value: bytes) -> None:
        self.results += 1
        result = orjson.loads(value)
        key = str(result["idempotency_key"])
        if result["outcome"] != "posted":
            self.not_posted[key] = str(result.get("error_code"))
            self.not_posted_at.setdefault(key, at)
            return
        self.confirmed_at.setdefault(key, at)
        if result["command"] == "upsert_customer":
            self.customers_confirmed.add(str(result["customer_id"]))


async def watch(
    bootstrap: str,
    prefix: str,
    expected: Expected,
    timeout_s: float,
    alive: Callable[[], None],
    done: Callable[[Observed], bool] | None = None,
) -> Observed:
    """Read `erp.commands` and `erp.results` from the start until the ERP has confirmed every
    expected posting (or until `done`); `alive` raises if a process of the deployment died."""
    done = done or expected.met_by
    consumer = AIOKafkaConsumer(
        prefix + ERP_COMMANDS,
        prefix + ERP_RESULTS,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        metadata_max_age_ms=1000,
    )
    await consumer.start()
    seen = Observed()
    deadline = time.monotonic() + timeout_s
    try:
        while not done(seen):
            if time.monotonic() > deadline:
                raise BenchError(
                    f"ledgerflow did not finish within {timeout_s:.0f}s: {expected.shortfall(seen)}"
                )
            alive()
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for tp, messages in batch.items():
                for m in messages:
                    if m.value is None:
                        continue
                    if tp.topic.endswith(ERP_COMMANDS):
                        seen.add_command(m.timestamp, m.value, list(m.headers or ()))
                    else:
                        seen.add_result(m.timestamp, m.value)
    finally:
        await consumer.stop()
    return seen


# --- measures --------------------------------------------------------------------------------


def percentiles(values: Sequence[float]) -> dict[str, float] | None:
    """Nearest-rank p50/p95/p99 and the maximum (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    out: dict[str, float] = {"count": len(ordered)}
    for p in PERCENTILES:
        out[f"p{p}"] = ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]
    out["max"] = ordered[-1]
    return out


def stage_latencies(source_at: dict[str, int], seen: Observed) -> dict[str, Any]:
    """Per command (first emission of each idempotency key): source → emitted → confirmed."""
    by_time: list[tuple[int, float]] = []
    by_kind: dict[str, list[float]] = {}
    ready_by_kind: dict[str, list[float]] = {}
    to_confirmed: list[float] = []
    end_to_end: list[float] = []
    for key, emitted in seen.command_at.items():
        source = source_at.get(seen.command_correlation.get(key, ""))
        confirmed = seen.confirmed_at.get(key)
        if source is not None:
            kind = seen.command_kind.get(key, "?")
            by_time.append((source, emitted - source))
            by_kind.setdefault(kind, []).append(emitted - source)
            ready = max(source, seen.command_ready_at.get(key, source))
            ready_by_kind.setdefault(kind, []).append(emitted - ready)
        if confirmed is not None:
            to_confirmed.append(confirmed - emitted)
        if source is not None and confirmed is not None:
            end_to_end.append(confirmed - source)
    return {
        "source_to_command": percentiles([latency for _, latency in by_time]),
        "command_to_confirmed": percentiles(to_confirmed),
        "source_to_confirmed": percentiles(end_to_end),
        # An invoice waits for the ERP to confirm its customer, a payment or credit memo for
        # its invoice (design invariant 4): their source → command includes those round trips.
        "source_to_command_by_command": {kind: percentiles(v) for kind, v in sorted(by_kind.items())},
        # From the last input a command needed (metrics.READY_TIMESTAMP): without the time it
        # waited for a prerequisite that arrived after it (Stripe's reordering, a customer's
        # CRM account after its Stripe customer), with the ERP round trips of the gates.
        "ready_to_command": percentiles([v for values in ready_by_kind.values() for v in values]),
        "ready_to_command_by_command": {kind: percentiles(v) for kind, v in sorted(ready_by_kind.items())},
        # Tenths of the run by source time: a slow start (cold worker) shows in the first.
        "source_to_command_by_tenth": [percentiles(tenth) for tenth in tenths(by_time)],
    }


def tenths(samples: list[tuple[int, float]]) -> list[list[float]]:
    """(time, value) pairs → the values of each tenth of the time span, in time order."""
    if not samples:
        return []
    start = min(t for t, _ in samples)
    span = max(t for t, _ in samples) - start or 1
    out: list[list[float]] = [[] for _ in range(10)]
    for t, value in samples:
        out[min(9, (t - start) * 10 // span)].append(value)
    return out


def proc_status(pid: int) -> dict[str, int]:
    """The numeric fields of a live process's /proc status (memory in kB: VmHWM, VmRSS,
    RssAnon …); empty once it is gone."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            value = rest.split()
            if value and value[0].isdigit():
                out[name] = int(value[0])
    return out


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident set of a live process: VmHWM from /proc, else psutil's current RSS."""
    kb = proc_status(pid).get("VmHWM")
    if kb is not None:
        return round(kb / 1024, 1)
    try:
        import psutil
    except ImportError:
        return None
    with contextlib.suppress(psutil.Error):
        return round(psutil.Process(pid).memory_info().rss / (1 << 20), 1)
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process so far (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def rate(events: int, seconds: float) -> float:
    return round(events / seconds, 1) if seconds > 0 else 0.0


# --- processes -------------------------------------------------------------------------------


@dataclass
class Child:
    """A process the bench started, its output in a log file of the work dir."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "<no log>"

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")


def spawn(name: str, args: Sequence[str], env: dict[str, str], work: Path) -> Child:
    log = work / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(args), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
        )
    return Child(name, proc, log)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Deployment:
    """A ledgerflow deployment of its own: sandbox ERP, workers, topics under `prefix`."""

    bootstrap: str
    prefix: str
    app_id: str
    partitions: int
    work: Path
    erp_latency_ms: float
    workers: int
    sink_workers: int = 0
    worker_env: dict[str, str] = field(default_factory=dict)
    """Settings of every worker over the caller's (LEDGERFLOW_ERP_CONCURRENCY, say)."""
    erp_faults: dict[str, Any] = field(default_factory=dict)
    """Sandbox fault settings (`POST /admin/faults`) set before any worker starts: the sandbox
    has no flag for some (its `concurrency_limit`), and a call before them would escape them."""
    erp: Child | None = None
    erp_url: str = ""
    processes: list[Child] = field(default_factory=list)

    def start(self) -> Deployment:
        self.work.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.erp = spawn(
            f"{self.app_id}-erp",
            [
                *(sys.executable, "-m", "streams", "erp-sandbox", "--port", str(port)),
                *("--db", str(self.work / "erp.sqlite3"), "--token", ERP_TOKEN),
                *("--latency-ms", str(self.erp_latency_ms)),
            ],
            child_env(),
            self.work,
        )
        wait_for_log(self.erp.log, "ERP sandbox on", self.erp.proc, 60)
        self.erp_url = f"http://127.0.0.1:{port}"
        if self.erp_faults:
            set_erp_faults(self.erp_url, self.erp_faults)
        web_ports = []
        for index in range(self.workers + self.sink_workers):
            stages = "ingest,core,sink" if not self.sink_workers else "ingest,core"
            web_ports.append(free_port())
            env = child_env(
                LEDGERFLOW_STAGES=stages if index < self.workers else "sink",
                LEDGERFLOW_KAFKA_BOOTSTRAP=self.bootstrap,
                LEDGERFLOW_APP_ID=self.app_id,
                LEDGERFLOW_TOPIC_PREFIX=self.prefix,
                LEDGERFLOW_PARTITIONS=str(self.partitions),
                LEDGERFLOW_DATA_DIR=str(self.work / f"worker{index}"),
                LEDGERFLOW_WEB_PORT=str(web_ports[-1]),
                LEDGERFLOW_ERP_BASE_URL=self.erp_url,
                LEDGERFLOW_ERP_TOKEN=ERP_TOKEN,
            )
            env.update(self.worker_env)
            command = [sys.executable, "-m", "streams", "worker", "-l", "info"]
            self.processes.append(spawn(f"{self.app_id}-worker{index}", command, env, self.work))
        for worker in self.processes:
            try:
                wait_for_log(worker.log, "Worker ready", worker.proc, 180)
            except ProcessFailed as exc:
                raise BenchError(f"{exc}:\n{worker.tail()}") from None
        self._wait_ready(web_ports)
        return self

    def _wait_ready(self, web_ports: list[int], timeout_s: float = 120.0) -> None:
        """Until every worker's `/ready` says 200 at once: each holds its partitions and none
        rebalances or recovers. "Worker ready" in the log comes before the group's last
        rebalance, and the paced run's first events would otherwise wait for it."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while True:
                statuses = []
                for port in web_ports:
                    try:
                        statuses.append(client.get(f"http://127.0.0.1:{port}/ready").status_code)
                    except httpx.HTTPError:
                        statuses.append(0)
                if all(status == 200 for status in statuses):
                    return
                self.alive()
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"the workers were not all ready within {timeout_s:.0f} s: /ready {statuses}"
                    )
                time.sleep(0.2)

    @property
    def sink_processes(self) -> int:
        """Processes running the sink: each holds LEDGERFLOW_ERP_CONCURRENCY calls of its own."""
        return self.sink_workers or self.workers

    def alive(self) -> None:
        for child in [*self.processes, *([self.erp] if self.erp else [])]:
            child.check()

    def resources(self) -> dict[str, Any]:
        rss = [peak_rss_mb(w.proc.pid) for w in self.processes]
        cpu = [cpu_seconds(w.proc.pid) for w in self.processes]
        known_rss = [r for r in rss if r is not None]
        known_cpu = [c for c in cpu if c is not None]
        return {
            "peak_rss_mb": max(known_rss) if known_rss else None,
            "peak_rss_mb_per_worker": rss,
            "cpu_s": round(sum(known_cpu), 2) if known_cpu else None,
            "cpu_s_per_worker": cpu,
            # The sandbox ERP shares the machine's cores with the workers.
            "erp_cpu_s": cpu_seconds(self.erp.proc.pid) if self.erp is not None else None,
        }

    def stop(self) -> None:
        for child in self.processes:
            terminate(child.proc)
        if self.erp is not None:
            terminate(self.erp.proc)


def set_erp_faults(erp_url: str, faults: dict[str, Any]) -> None:
    """Merge `faults` into the sandbox's fault settings, and check it took them: a setting it
    does not know would be refused, and a run under the wrong limit would measure nothing."""
    try:
        answer = httpx.post(f"{erp_url}/admin/faults", json=faults, timeout=10.0)
    except httpx.HTTPError as exc:
        raise BenchError(f"the sandbox ERP at {erp_url} did not take its fault settings: {exc}") from exc
    settings = answer.json() if answer.is_success else {}
    if any(settings.get(name) != value for name, value in faults.items()):
        raise BenchError(
            f"the sandbox ERP refused the fault settings {faults}: {answer.status_code} {answer.text}"
        )


class Profiler:
    """py-spy sampling one process until stopped; raw collapsed stacks to `out`."""

    def __init__(self, pid: int, out: Path, log: Path) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(exe).exists():
            raise BenchError("--profile needs py-spy (pip install py-spy)")
        self.out = out
        with log.open("ab") as sink:
            self.proc = subprocess.Popen(
                [
                    exe,
                    "record",
                    "--pid",
                    str(pid),
                    "--format",
                    "raw",
                    "--nolineno",
                    "--rate",
                    "100",
                    "-o",
                    str(out),
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                terminate(self.proc)
        return self.out.read_text(errors="replace") if self.out.exists() else ""


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*)\)$")


OWN_CODE = ("agents/", "canonical/", "connectors/", "streams/", "tables/")
ENTRY_POINTS = ("streams/__main__.py", "streams/cli/main.py")
LOOP_RUNNERS = frozenset(
    {"Worker.execute_from_commandline (mode/worker.py)", "ServiceThread._start_thread (mode/threads.py)"}
)
"""The Python frames that run a uvloop loop (the worker's, the consumer thread's): a sample that
ends there is in uvloop's C code, its wait for I/O and its own work, which py-spy cannot tell
apart (under asyncio's loop the wait is the `select` frame)."""

POOL_WAIT = "_worker (concurrent/futures/thread.py)"
"""A thread-pool thread waiting on its queue (in C, GIL released): py-spy samples it as
running, but /proc's per-thread CPU times of a backlog run show those threads at 0.0 s."""


def summarize_profile(raw: str, title: str, top: int = 15) -> str:
    """py-spy's collapsed stacks → the frames with the most samples of their own (the leaf
    frame: where the CPU was), own time by package, and ledgerflow's own functions with what
    they call (which stage the time belongs to). Samples waiting in the event loop's select
    are counted apart: py-spy cannot tell that wait from work."""
    own: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = idle = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [(f, m.group("file")) for f in stack.split(";") if (m := _FRAME.match(f))]
        if not frames:
            continue
        leaf, leaf_file = frames[-1]
        if leaf.endswith(".select (selectors.py)") or leaf in LOOP_RUNNERS or leaf == POOL_WAIT:
            idle += count  # waiting (for I/O, for pool work): py-spy samples it as running
            continue
        total += count
        own[leaf] += count
        packages[_package_of(leaf_file)] += count
        for frame in {f for f, file in frames if file.startswith(OWN_CODE) and file not in ENTRY_POINTS}:
            ours[frame] += count
    if not total:
        return f"{title}\n(no samples)\n"

    def table(counter: Counter[str], heading: str) -> list[str]:
        rows = [heading, f"{'samples':>8} {'share':>6}  frame"]
        rows += [f"{n:>8} {n / total:>6.1%}  {frame}" for frame, n in counter.most_common(top)]
        return rows

    lines = [
        title,
        f"{total + idle} samples at 100 Hz; {idle} ({idle / (total + idle):.1%}) waiting, left out: in the "
        "event loop's select (under uvloop, all of its C code) or an idle thread pool's queue; shares "
        f"below are of the {total} busy samples",
        "",
    ]
    lines += table(own, f"Top {top} frames by own time (where the CPU was):")
    lines += ["", *table(packages, "Own time by package:")]
    lines += ["", *table(ours, f"Top {top} of ledgerflow's own functions, with what they call:")]
    return "\n".join(lines) + "\n"


def _package_of(filename: str) -> str:
    """py-spy's short file name (`faust/streams.py`, `<frozen …>`, `asyncio/events.py`) → its
    top-level package or module."""
    if not filename or filename.startswith("<"):
        return filename or "?"
    head = filename.split("/", 1)[0]
    return head.removesuffix(".py")


# --- contenders ------------------------------------------------------------------------------


@dataclass
class Run:
    """One bench run: its id, broker, work dir and input."""

    options: BenchOptions
    bootstrap: str
    work: Path
    run_id: str
    input: Input
    source_at: dict[str, int] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return f"bench-{self.run_id}."

    @property
    def replication(self) -> int:
        return Settings().replication_factor


def worker_role(deployment: Deployment, worker: Child) -> str:
    """`worker0` (ingest,core or every stage), `sink-worker1`: names a worker's profile."""
    index = deployment.processes.index(worker)
    return f"{'sink-' if index >= deployment.workers else ''}worker{index}"


def run_ledgerflow(run: Run) -> dict[str, Any]:
    """The pre-produced backlog through a real deployment, until the ERP confirmed it all."""
    options = run.options
    deployment = Deployment(
        run.bootstrap,
        run.prefix,
        f"bench-{run.run_id}-lf",
        options.partitions,
        run.work / "ledgerflow",
        options.erp_latency_ms,
        options.workers,
        options.sink_workers,
    )
    profilers: dict[str, Profiler] = {}
    profiles: dict[str, str] = {}
    try:
        deployment.start()
        if options.profile:
            for worker in deployment.processes:  # every worker: ingest+core and the sink apart
                name = worker_role(deployment, worker)
                profilers[name] = Profiler(
                    worker.proc.pid, run.work / f"{name}.pyspy.txt", run.work / f"{name}.py-spy.log"
                )
        seen = asyncio.run(
            watch(run.bootstrap, run.prefix, run.input.expected, options.timeout_s, deployment.alive)
        )
        resources = deployment.resources()
        while profilers:
            name, profiler = profilers.popitem()
            profiles[name] = profiler.stop()
        first = asyncio.run(earliest_timestamp(run.bootstrap, run.prefix + CANONICAL))
    finally:
        for profiler in profilers.values():
            profiler.stop()
        deployment.stop()
    events = len(run.input.records)
    seconds = (seen.last_command_at - (first or seen.first_command_at)) / 1000
    result: dict[str, Any] = {
        "inputs": list(SOURCE_TOPICS),
        "events": events,
        "seconds": round(seconds, 2),
        "events_per_s": rate(events, seconds),
        "commands": seen.commands,
        "documents_confirmed": len(run.input.expected.documents),
        "customers_confirmed": len(seen.customers_confirmed),
        "latency_ms": stage_latencies(run.source_at, seen),
        **resources,
    }
    if profiles:
        result["_profile_raw"] = dict(sorted(profiles.items()))
    return result


def run_ledgerflow_paced(run: Run) -> dict[str, Any]:
    """A fresh deployment on empty topics, the scenario produced live at `--rate` events/s:
    latency at that load rather than queueing time."""
    options = run.options
    paced_input = (
        run.input
        if options.paced_customers in (None, options.customers)
        else Input.generate(options, options.paced_customers or options.customers)
    )
    prefix = f"bench-{run.run_id}-paced."
    asyncio.run(
        create_topics(run.bootstrap, [prefix + t for t in SOURCE_TOPICS], options.partitions, run.replication)
    )
    deployment = Deployment(
        run.bootstrap,
        prefix,
        f"bench-{run.run_id}-lfpaced",
        options.partitions,
        run.work / "ledgerflow-paced",
        options.erp_latency_ms,
        options.workers,
        options.sink_workers,
    )

    async def drive() -> tuple[Produced, Observed]:
        # Either failing fails the run at once; asyncio.run cancels the other.
        return await asyncio.gather(
            produce(run.bootstrap, prefix, paced_input.records, options.rate),
            watch(run.bootstrap, prefix, paced_input.expected, options.timeout_s, deployment.alive),
        )

    try:
        deployment.start()  # ready: the first events should not pay for the group's rebalance
        produced, seen = asyncio.run(drive())
        resources = deployment.resources()
    finally:
        deployment.stop()
    events = len(paced_input.records)
    return {
        "inputs": list(SOURCE_TOPICS),
        "target_rate": options.rate,
        "events": events,
        "produced_per_s": rate(events, produced.seconds),
        "seconds": round(produced.seconds, 2),
        # How long after the last event the last command came: far above the batch window,
        # the deployment could not keep up with the rate and the latencies are queueing again.
        "drain_s": round((seen.last_command_at - max(produced.source_at.values(), default=0)) / 1000, 2),
        "commands": seen.commands,
        "latency_ms": stage_latencies(produced.source_at, seen),
        **resources,
    }


def run_peer(run: Run, name: str, script: str, args: Sequence[str], expect_outputs: int) -> dict[str, Any]:
    """A reference pipeline on the pre-produced Stripe topics until it handled all of them."""
    options = run.options
    inputs = [run.prefix + t for t in STRIPE_TOPICS]
    output = f"{run.prefix}bench.{name}-out"
    asyncio.run(create_topics(run.bootstrap, [output], options.partitions, run.replication))
    work = run.work / name
    work.mkdir(parents=True, exist_ok=True)
    stats = work / "stats.json"
    events = run.input.count(STRIPE_TOPICS)
    env = child_env(
        BENCH_BOOTSTRAP=run.bootstrap,
        BENCH_INPUTS=",".join(inputs),
        BENCH_OUTPUT=output,
        BENCH_GROUP=f"bench-{run.run_id}-{name}",
        BENCH_EXPECT=str(events),
        BENCH_STATS=str(stats),
        BENCH_DATA_DIR=str(work),
    )
    child = spawn(name, [sys.executable, str(PEERS / script), *args], env, work)
    deadline = time.monotonic() + options.timeout_s
    try:
        while not stats.exists():
            if child.proc.poll() is not None and not stats.exists():
                raise BenchError(f"{name} exited with {child.proc.returncode}:\n{child.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{name} did not handle its input within {options.timeout_s:.0f}s:\n{child.tail()}"
                )
            time.sleep(0.2)
    finally:
        terminate(child.proc)
    data = orjson.loads(stats.read_bytes())
    seconds = float(data["last_at"]) - float(data["first_at"])
    if data["outputs"] != expect_outputs:
        raise BenchError(f"{name} emitted {data['outputs']} messages, expected {expect_outputs}")
    return {
        "inputs": list(STRIPE_TOPICS),
        "events": int(data["events"]),
        "seconds": round(seconds, 2),
        "events_per_s": rate(int(data["events"]), seconds),
        "outputs": int(data["outputs"]),
        "peak_rss_mb": data["peak_rss_mb"],
        "cpu_s": data["cpu_s"],
    }


def run_faust(run: Run) -> dict[str, Any]:
    stripe = run.input.count(STRIPE_TOPICS)
    # `faust worker` turns the app's web_enabled=False back on (its --with-web default), and
    # port 6066 may be a test worker's beside the bench.
    args = ["worker", "-l", "warn", "--without-web"]
    return run_peer(run, "faust", "faust_passthrough.py", args, stripe)


def run_quix(run: Run) -> dict[str, Any]:
    return run_peer(run, "quix", "quix_pipeline.py", [], len(run.input.scenario.truth["invoices"]))


RUNNERS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "ledgerflow": run_ledgerflow,
    "faust": run_faust,
    "quix": run_quix,
}


# --- ERP-bound --------------------------------------------------------------------------------
#
# NetSuite's concurrency limit is per account and shared by every integration: every call spends
# it, so at month-end the bound is documents/s <= limit / latency. These runs put the sink against
# a sandbox ERP that answers in `erp_latency_ms` and refuses a call beyond its limit, and measure
# how close to that bound it gets and what each document costs in calls.

REQUEST_LOG_SIZE = 2000
"""Entries the sandbox ERP's request log keeps (its `request_log_size` default): fewer than a run
makes, so `ErpCalls` follows the log while the run goes."""
RECORD_PREFIX = NETSUITE_RECORD_PATH + "/"


def call_kind(method: str, path: str) -> tuple[str, str]:
    """(kind, record) of one sandbox API call: `PUT record`/`PUT invoice`, `GET record`/`GET
    customer`, `POST suiteql`, `POST transform`/`POST invoice` (a void's credit memo): what a
    document's calls were for, beyond the one write it needs."""
    if path.startswith(RECORD_PREFIX):
        record_type = path[len(RECORD_PREFIX) :].split("/", 1)[0]
        kind = "transform" if "/!transform/" in path else "record"
        return f"{method} {kind}", f"{method} {record_type}"
    if path == SUITEQL_PATH:
        return f"{method} suiteql", f"{method} suiteql"
    if "/api/v2.0/" in path:  # Business Central: the entity path without its keys or company
        rest = re.sub(r"\([^)]*\)", "", path.split("/api/v2.0/", 1)[1]).removeprefix("companies/")
        return f"{method} {rest}", f"{method} {rest}"
    return f"{method} {path}", f"{method} {path}"


@dataclass
class ErpCalls:
    """The sandbox ERP's API calls, read from its request log (`GET /admin/requests`) while a run
    goes: the log keeps only the last `REQUEST_LOG_SIZE` entries, so a whole run's calls can be
    counted (refusals included) only by following it. Each entry has a `seq`, one per API call
    (admin calls are not logged): the highest is the calls the sandbox took. An entry is counted
    once answered (a call in flight is logged without a status yet), in `seq` order; entries
    that left the log before they were read are `missed`."""

    calls: int = 0
    """The highest `seq` seen: API calls the sandbox took, answered or refused."""
    operations: int = 0
    """What the calls counted carried: a Business Central `$batch` its operations, any other one."""
    counted: int = 0
    """Entries up to this `seq` are counted (or missed)."""
    missed: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    by_record: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    refused_by_kind: Counter[str] = field(default_factory=Counter)

    def add(self, entries: Sequence[dict[str, Any]]) -> None:
        """Count the entries after `counted`, up to the first still in flight (read again later)."""
        ordered = sorted(entries, key=lambda e: int(e["seq"]))
        if ordered:
            self.calls = max(self.calls, int(ordered[-1]["seq"]))
        for entry in ordered:
            seq = int(entry["seq"])
            if seq <= self.counted:
                continue
            if entry.get("status") is None and entry.get("fault") is None:
                # In flight: it and everything after it wait for the next read. (A dropped
                # connection has no status ever, but says so in its fault.)
                return
            self.missed += seq - self.counted - 1
            self.counted = seq
            self.operations += int(entry.get("operations") or 1)
            kind, record = call_kind(str(entry.get("method")), str(entry.get("path")))
            self.by_kind[kind] += 1
            self.by_record[record] += 1
            self.statuses[str(entry.get("status"))] += 1
            fault = entry.get("fault")
            if fault is not None:
                self.faults[str(fault)] += 1
                if fault == "concurrency_limit":
                    self.refused_by_kind[kind] += 1

    async def poll(self, client: httpx.AsyncClient) -> None:
        """One read: the newest entry's `seq`, then every entry after `counted` (two small
        answers rather than the whole log each time: the sandbox's CPU is the run's too)."""
        newest = (await client.get("/admin/requests", params={"limit": 1})).json()["requests"]
        if not newest or int(newest[0]["seq"]) <= self.counted:
            return
        # A margin for calls logged between the two reads: the whole gap must be in the answer.
        limit = min(REQUEST_LOG_SIZE, int(newest[0]["seq"]) - self.counted + 200)
        self.add((await client.get("/admin/requests", params={"limit": limit})).json()["requests"])

    async def follow(self, client: httpx.AsyncClient, interval_s: float = 1.0) -> None:
        """Poll until cancelled; a failed read is only a later one's work (or a `missed` count)."""
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                await self.poll(client)
            await asyncio.sleep(interval_s)

    async def finish(self, client: httpx.AsyncClient, timeout_s: float = 15.0) -> None:
        """Read until every call logged so far is counted: the last ones may still be in flight."""
        deadline = time.monotonic() + timeout_s
        await self.poll(client)
        while self.counted < self.calls and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            await self.poll(client)

    def summary(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "log_missed": self.missed,
            "log_uncounted": self.calls - self.counted,
            "refused": self.faults["concurrency_limit"],
            "throttled": self.faults["rate_limit"],
            "operations": self.operations,
            "calls_by_kind": dict(self.by_kind.most_common()),
            "calls_by_record": dict(self.by_record.most_common()),
            "refused_by_kind": dict(self.refused_by_kind.most_common()),
            "statuses": dict(sorted(self.statuses.items())),
            "faults": dict(sorted(self.faults.items())),
        }


async def watch_with_erp_calls(
    run: Run, prefix: str, deployment: Deployment, poll_s: float = 1.0
) -> tuple[Observed, ErpCalls]:
    """`watch` until the ERP confirmed the backlog, following the sandbox's request log meanwhile."""
    calls = ErpCalls()
    async with httpx.AsyncClient(base_url=deployment.erp_url, timeout=10.0) as client:
        follower = asyncio.create_task(calls.follow(client, poll_s))
        try:
            expected = run.input.expected
            seen = await watch(
                run.bootstrap, prefix, expected, run.options.timeout_s, deployment.alive, expected.settled_by
            )
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        await calls.finish(client)
    return seen, calls


def erp_bound_measures(
    seen: Observed, calls: ErpCalls, limit: int, latency_ms: float, expected: Expected
) -> dict[str, Any]:
    """One ERP-bound run's figures. A *document* is every ERP write the backlog came to, each
    distinct command the ERP answered for good — confirmed, or refused (`documents_refused`, by
    error code): customers as well as invoices, payments and credit memos, since each spends the
    account's concurrency as much as any other. Timed from the first command on `erp.commands`
    to the last such answer on `erp.results` (record timestamps: the sandbox's log has none)."""
    refused = {k: code for k, code in seen.not_posted.items() if k not in seen.confirmed_at}
    documents = len(seen.confirmed_at) + len(refused)
    answered_at = [*seen.confirmed_at.values(), *(seen.not_posted_at[k] for k in refused)]
    seconds = (max(answered_at, default=seen.first_command_at) - seen.first_command_at) / 1000
    per_s = documents / seconds if seconds > 0 else 0.0
    bound = limit / (latency_ms / 1000) if latency_ms > 0 else math.inf
    taken = calls.calls - calls.faults["concurrency_limit"]

    def by_command(keys: set[str]) -> dict[str, int]:
        return dict(sorted(Counter(seen.command_kind.get(k, "?") for k in keys).items()))

    return {
        "concurrency_limit": limit,
        "erp_concurrency": limit,
        "documents": documents,
        "documents_confirmed": len(seen.confirmed_at),
        "documents_refused": len(refused),
        "documents_expected": len(expected.documents) + expected.customers,
        # Of the scenario's own: its documents confirmed, and its customers (each at least once).
        "expected_confirmed": len(expected.documents & seen.confirmed_at.keys())
        + min(expected.customers, len(seen.customers_confirmed)),
        "confirmed_by_command": by_command(set(seen.confirmed_at)),
        "refused_by_command": by_command(set(refused)),
        "refused_codes": dict(Counter(refused.values()).most_common()),
        "timed": "first command on erp.commands -> last confirmed or refused on erp.results",
        "seconds": round(seconds, 2),
        "documents_per_s": round(per_s, 2),
        "bound_per_s": round(bound, 2) if math.isfinite(bound) else None,
        "share_of_bound": round(per_s / bound, 3) if math.isfinite(bound) else None,
        "calls_per_document": round(calls.calls / documents, 3) if documents else None,
        # What a rate limit counting a `$batch`'s operations (not its one request) would spend.
        "operations_per_document": round(calls.operations / documents, 3) if documents else None,
        # How much of the account's concurrency the run held (a call taken ≈ one slot for one
        # latency): share_of_bound is this over calls_per_document, so what share_of_bound
        # misses beyond the extra calls is slots the sink left empty.
        "concurrency_used": (
            round(taken * latency_ms / 1000 / (limit * seconds), 3) if seconds > 0 and latency_ms else None
        ),
        **calls.summary(),
    }


def run_erp_bound_limit(run: Run, limit: int, batch: bool = False) -> dict[str, Any]:
    """One ERP-bound run: the backlog on fresh topics (a ledgerflow deployment reads and writes
    its own topics under its prefix, so each run needs its own), a sandbox ERP that refuses a
    call beyond `limit` in flight, a sink allowed `limit` calls, until every document is answered
    (`Expected.settled_by`). Business Central: its rate limit too, and `batch` turns the sink's
    shared `$batch` on."""
    options = run.options
    label = erp_run_label(limit, batch).replace("+", "-")  # a topic name has no "+"
    prefix = f"bench-{run.run_id}-erp{label}."
    asyncio.run(
        create_topics(run.bootstrap, [prefix + t for t in SOURCE_TOPICS], options.partitions, run.replication)
    )
    asyncio.run(produce(run.bootstrap, prefix, run.input.records))
    deployment = Deployment(
        run.bootstrap,
        prefix,
        f"bench-{run.run_id}-lferp{label}",
        options.partitions,
        run.work / f"ledgerflow-erp{label}",
        options.erp_latency_ms,
        options.workers,
        options.sink_workers,
        worker_env={
            "LEDGERFLOW_ERP_CONCURRENCY": str(limit),
            **erp_mode_env(options.erp_mode),
            "LEDGERFLOW_BC_BATCH": "true" if batch else "false",
        },
        erp_faults={"concurrency_limit": limit, **business_central_faults(options)},
    )
    try:
        deployment.start()
        seen, calls = asyncio.run(watch_with_erp_calls(run, prefix, deployment))
        resources = deployment.resources()
    finally:
        deployment.stop()
    return {
        **erp_bound_measures(seen, calls, limit, options.erp_latency_ms, run.input.expected),
        "batch": batch,
        "commands": seen.commands,
        "latency_ms": {"command_to_confirmed": stage_latencies({}, seen)["command_to_confirmed"]},
        **resources,
    }


def erp_run_label(limit: int, batch: bool) -> str:
    return f"{limit}+batch" if batch else str(limit)


def business_central_faults(options: BenchOptions) -> dict[str, Any]:
    """The Business Central stand-in's rate limit and `$batch` operation latency (none for NetSuite)."""
    if options.erp_mode != "business-central":
        return {}
    return {
        "operation_ms": options.erp_operation_ms,
        "rate_limit": options.erp_rate_limit,
        "rate_window_s": options.erp_rate_window_s,
    }


def erp_mode_env(mode: str) -> dict[str, str]:
    """A worker's settings for the stand-in's ERP `mode` (Business Central: its tenant too)."""
    if mode == "business-central":
        return {
            "LEDGERFLOW_ERP_MODE": mode,
            "LEDGERFLOW_BC_TENANT": BusinessCentralSandboxConfig().tenant,
            "LEDGERFLOW_BC_ENVIRONMENT": BusinessCentralSandboxConfig().environment,
        }
    return {"LEDGERFLOW_ERP_MODE": mode}


def run_erp_bound(run: Run, echo: Callable[[str], None]) -> dict[str, Any]:
    """The ERP-bound runs, one per concurrency limit, on the same backlog."""
    options = run.options
    expected = run.input.expected
    runs: dict[str, dict[str, Any]] = {}
    batches = options.erp_batch if options.erp_mode == "business-central" else (False,)
    for limit, batch in itertools.product(options.erp_concurrency_limits, batches):
        label = erp_run_label(limit, batch)
        echo(f"ERP-bound {label}, concurrency limit {limit} at {options.erp_latency_ms:g} ms a call: running")
        result = run_erp_bound_limit(run, limit, batch)
        runs[label] = result
        echo(
            f"ERP-bound {label}: {result['documents']} documents in {result['seconds']:.1f}s, "
            f"{result['documents_per_s']:.2f}/s of {result['bound_per_s']:.0f}/s "
            f"({result['share_of_bound']}), {result['calls_per_document']} calls/document "
            f"({result['operations_per_document']} operations), {result['refused']} calls refused "
            f"(429), {result['documents_refused']} documents refused"
        )
    return {
        "erp_mode": options.erp_mode,
        "erp_latency_ms": options.erp_latency_ms,
        **(
            {
                "erp_operation_ms": options.erp_operation_ms,
                "erp_operation_ms_is": "assumed: Microsoft documents no per-operation cost of a $batch",
                "erp_rate_limit": options.erp_rate_limit,
                "erp_rate_window_s": options.erp_rate_window_s,
            }
            if options.erp_mode == "business-central"
            else {}
        ),
        "documents_expected": len(expected.documents) + expected.customers,
        "sink_processes": options.sink_workers or options.workers,
        "targets": {"share_of_bound": 0.9, "calls_per_document": 1.05},
        "runs": runs,
    }


# --- the run ---------------------------------------------------------------------------------


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info(kafka_version: str) -> dict[str, Any]:
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory_gb = None
    kb = _proc_status_meminfo()
    if kb is not None:
        memory_gb = round(kb / (1 << 20), 1)
    return {
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gb": memory_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "kafka": kafka_version,
        "faust_streaming": _version("faust-streaming"),
        "aiokafka": _version("aiokafka"),
        "quixstreams": _version("quixstreams"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _proc_status_meminfo() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return None


@contextlib.contextmanager
def broker(work: Path) -> Iterator[tuple[str, str, bool]]:
    """(bootstrap, Kafka version, external?): LEDGERFLOW_KAFKA_BOOTSTRAP's broker, or a local
    Apache Kafka started here for the run."""
    s = Settings()
    if s.kafka_bootstrap:
        if s.kafka_security_protocol != "PLAINTEXT":
            raise BenchError("the bench's peers speak PLAINTEXT only: point it at a plaintext broker")
        yield s.kafka_bootstrap, os.environ.get("LEDGERFLOW_KAFKA_VERSION", "external"), True
        return
    local = LocalKafka(data_dir=work / "kafka")
    try:
        local.start()
    except LocalKafkaError as exc:
        raise BenchError(str(exc)) from exc
    try:
        yield local.bootstrap, local.version, False
    finally:
        local.stop()


def ratios(contenders: dict[str, dict[str, Any]]) -> dict[str, float]:
    out = {}
    ours = contenders.get("ledgerflow", {}).get("events_per_s")
    for peer in ("faust", "quix"):
        theirs = contenders.get(peer, {}).get("events_per_s")
        if ours and theirs:
            out[f"ledgerflow_to_{peer}"] = round(ours / theirs, 3)
    return out


def run_bench(options: BenchOptions, echo: Callable[[str], None] = click.echo) -> tuple[dict[str, Any], Path]:
    """Everything: input, each contender in turn, the JSON. Returns (results, JSON path)."""
    started = datetime.now(UTC)
    run_id = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix=f"ledgerflow-bench-{run_id}-"))
    ok = False
    try:
        with broker(work) as (bootstrap, kafka_version, external):
            machine = machine_info(kafka_version)
            echo(f"generating {options.customers} customers x {options.months} months (seed {options.seed})")
            run = Run(options, bootstrap, work, run_id, Input.generate(options, options.customers))
            contenders: dict[str, dict[str, Any]] = {}
            erp_bound = None
            if options.erp_bound:
                erp_bound = run_erp_bound(run, echo)
            else:
                names = [run.prefix + t for t in SOURCE_TOPICS]
                asyncio.run(create_topics(bootstrap, names, options.partitions, run.replication))
                produced = asyncio.run(produce(bootstrap, run.prefix, run.input.records))
                run.source_at = produced.source_at
                echo(
                    f"{len(run.input.records)} messages pre-produced to {options.partitions} partitions in "
                    f"{produced.seconds:.1f}s on {bootstrap}"
                )
            for name in () if options.erp_bound else options.contenders:
                echo(f"{name}: running")
                contenders[name] = RUNNERS[name](run)
                echo(f"{name}: {contenders[name]['events_per_s']:.0f} events/s")
                if name == "ledgerflow" and options.rate > 0:
                    echo(f"ledgerflow paced at {options.rate:.0f} events/s: running")
                    contenders[name]["paced"] = run_ledgerflow_paced(run)
            if external:
                with contextlib.suppress(Exception):
                    asyncio.run(delete_topics_containing(bootstrap, run_id))
        results = assemble(options, machine, run, contenders, started, erp_bound)
        path = write_results(results, options.results_dir, started, machine["host"])
        ok = True
        return results, path
    finally:
        if ok and not options.keep_work:
            shutil.rmtree(work, ignore_errors=True)
        else:
            echo(f"work dir (logs, ERP database) kept: {work}")


def assemble(
    options: BenchOptions,
    machine: dict[str, Any],
    run: Run,
    contenders: dict[str, dict[str, Any]],
    started: datetime,
    erp_bound: dict[str, Any] | None = None,
) -> dict[str, Any]:
    s = Settings()
    parameters = {
        "customers": options.customers,
        "months": options.months,
        "seed": options.seed,
        "duplicate_rate": options.duplicate_rate,
        "reorder_rate": options.reorder_rate,
        "partitions": options.partitions,
        "contenders": list(options.contenders),
        "rate": options.rate,
        "paced_customers": options.paced_customers or options.customers,
        "erp_latency_ms": options.erp_latency_ms,
        "workers": options.workers,
        "sink_workers": options.sink_workers,
        "profile": options.profile,
        "erp_bound": options.erp_bound,
        "erp_concurrency_limits": list(options.erp_concurrency_limits) if options.erp_bound else None,
        "ledgerflow_settings": {
            "batch_size": s.batch_size,
            "batch_window_ms": s.batch_window_ms,
            "producer_linger_ms": s.producer_linger_ms,
            "processing_guarantee": s.processing_guarantee,
            "erp_concurrency": s.erp_concurrency,
        },
    }
    by_topic = Counter(r.topic for r in run.input.records)
    truth = run.input.scenario.truth
    results: dict[str, Any] = {
        "schema_version": 1,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "parameters": parameters,
        "input": {
            "messages": len(run.input.records),
            "by_topic": dict(sorted(by_topic.items())),
            "customers": len(truth["customers"]),
            "invoices": len(truth["invoices"]),
            "documents": len(run.input.expected.documents),
        },
        "contenders": contenders,
        "ratios": ratios(contenders),
    }
    if erp_bound is not None:
        results["erp_bound"] = erp_bound
    return results


def write_results(results: dict[str, Any], directory: Path, started: datetime, host: str) -> Path:
    """`<UTC timestamp>-<host>.json`, and the profile summary as `….profile.txt` beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{started:%Y%m%dT%H%M%SZ}-{re.sub(r'[^A-Za-z0-9_.-]', '_', host)}"
    ours = results["contenders"].get("ledgerflow", {})
    raws: dict[str, str] = ours.pop("_profile_raw", None) or {}
    if raws:
        profile = directory / f"{stem}.profile.txt"
        profile.write_text(
            "\n\n".join(
                summarize_profile(
                    raw,
                    f"py-spy of ledgerflow's {name} during the backlog run {stem} "
                    f"({results['input']['messages']} messages, {ours.get('events_per_s')} events/s)",
                )
                for name, raw in raws.items()
            )
        )
        results["profile"] = profile.name
        for name, raw in raws.items():  # py-spy's collapsed stacks, for a closer look (not kept in git)
            (directory / f"{stem}.{name}.collapsed").write_text(raw)
    path = directory / f"{stem}.json"
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    return path


def _ms(latency: dict[str, Any] | None, stage: str) -> str:
    stats = (latency or {}).get(stage)
    if not stats:
        return "-"
    return "/".join(f"{stats[f'p{p}']:.0f}" for p in PERCENTILES)


def format_table(results: dict[str, Any]) -> str:
    """The results as a plain-text table (docs/performance.md shows the latest one)."""
    machine, params, given = results["machine"], results["parameters"], results["input"]
    header = (
        f"ledgerflow bench {results['started_at']} on {machine['host']} ({machine['cpus']} CPUs, "
        f"Kafka {machine['kafka']}, Python {machine['python']}): {params['customers']} customers x "
        f"{params['months']} months = {given['messages']} messages, {params['partitions']} partitions"
    )
    columns = (
        f"{'contender':<18} {'input':<17} {'events':>7} {'s':>7} {'events/s':>9} "
        f"{'src→cmd ms p50/95/99':>21} {'ready→cmd p50/95/99':>20} {'cmd→ERP ms p50/95/99':>21} "
        f"{'RSS MB':>7} {'CPU s':>6}"
    )
    rows = [header, "", columns] if results["contenders"] else [header]

    def row(label: str, inputs: str, c: dict[str, Any], per_s: float) -> str:
        latency = c.get("latency_ms")
        rss = c.get("peak_rss_mb")
        cpu = c.get("cpu_s")
        return (
            f"{label:<18} {inputs:<17} {c['events']:>7} {c['seconds']:>7.1f} {per_s:>9.0f} "
            f"{_ms(latency, 'source_to_command'):>21} {_ms(latency, 'ready_to_command'):>20} "
            f"{_ms(latency, 'command_to_confirmed'):>21} "
            f"{(f'{rss:.0f}' if rss is not None else '-'):>7} {(f'{cpu:.0f}' if cpu is not None else '-'):>6}"
        )

    for name, c in results["contenders"].items():
        inputs = "all 4 sources" if name == "ledgerflow" else "billing+payments"
        rows.append(row(name, inputs, c, c["events_per_s"]))
        paced = c.get("paced")
        if paced:
            rows.append(row(f"  paced @{paced['target_rate']:.0f}/s", inputs, paced, paced["produced_per_s"]))
            if paced.get("drain_s", 0) > 5:
                rows.append(
                    f"  (paced: fell behind; last command {paced['drain_s']:.0f}s after the last event)"
                )
    ratio_text = ", ".join(f"{k.replace('_to_', '/')} {v:.2f}" for k, v in results["ratios"].items())
    if ratio_text:
        rows += ["", f"events/s ratios: {ratio_text}"]
    if "erp_bound" in results:
        rows += ["", *erp_bound_table(results["erp_bound"])]
    return "\n".join(rows)


def erp_bound_table(erp_bound: dict[str, Any]) -> list[str]:
    """The ERP-bound runs, a row per concurrency limit N: documents/s against N / latency."""
    latency = erp_bound["erp_latency_ms"]
    targets = erp_bound.get("targets", {})
    rows = [
        f"ERP-bound: {erp_bound['documents_expected']} documents at {latency:g} ms a call; bound = N / "
        f"{latency / 1000:g} s (targets: share >= {targets.get('share_of_bound', 0.9)}, calls/doc <= "
        f"{targets.get('calls_per_document', 1.05)}); s = first command -> last answered; refused: by the "
        "ERP, for good; 429s: calls over the limit; slots used: calls taken x latency / (N x s)",
        f"{'N':>7} {'documents':>9} {'refused':>7} {'s':>7} {'docs/s':>7} {'bound':>6} {'share':>6} "
        f"{'calls/doc':>9} {'ops/doc':>7} {'429s':>5} {'slots used':>10}  calls by kind",
    ]
    if "erp_rate_limit" in erp_bound:
        rows.insert(
            1,
            f"Business Central: rate limit {erp_bound['erp_rate_limit']} calls per "
            f"{erp_bound['erp_rate_window_s']:g} s (429s count its refusals too); a $batch operation adds "
            f"{erp_bound['erp_operation_ms']:g} ms ({erp_bound['erp_operation_ms_is']}); N+batch: the sink's "
            "shared $batch on; ops/doc: what a limit counting operations would spend",
        )
    for n, r in erp_bound["runs"].items():
        share = r.get("share_of_bound")
        per_doc = r.get("calls_per_document")
        used = r.get("concurrency_used")
        kinds = ", ".join(f"{k} {v}" for k, v in r.get("calls_by_kind", {}).items())
        bound = r.get("bound_per_s")
        ops = r.get("operations_per_document")
        rows.append(
            f"{n:>7} {r['documents']:>9} {r['documents_refused']:>7} {r['seconds']:>7.1f} "
            f"{r['documents_per_s']:>7.2f} {(f'{bound:.0f}' if bound is not None else '-'):>6} "
            f"{(f'{share:.3f}' if share is not None else '-'):>6} "
            f"{(f'{per_doc:.3f}' if per_doc is not None else '-'):>9} "
            f"{(f'{ops:.3f}' if ops is not None else '-'):>7} {r['refused'] + r.get('throttled', 0):>5} "
            f"{(f'{used:.3f}' if used is not None else '-'):>10}  {kinds}"
        )
    refused = Counter[str]()
    for r in erp_bound["runs"].values():
        refused.update(r.get("refused_codes", {}))
    if refused:
        codes = ", ".join(f"{code} {n}" for code, n in refused.most_common())
        rows.append(f"documents the ERP refused (all runs; counted as documents, not confirmed): {codes}")
    return rows


def _contenders(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown or not names:
        raise click.BadParameter(f"choose from {', '.join(CONTENDERS)} (got {value!r})")
    return names


def _limits(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        limits = tuple(int(n) for n in value.split(",") if n.strip())
    except ValueError:
        limits = ()
    if not limits or any(n < 1 for n in limits):
        raise click.BadParameter(f"positive integers, comma-separated (got {value!r})")
    return limits


@click.command("bench")
@click.option(
    "--customers",
    type=click.IntRange(1),
    default=300,
    show_default=True,
    help=f"Customers of the scenario [--erp-bound: {ERP_BOUND['customers']}].",
)
@click.option(
    "--months",
    type=click.IntRange(1, 60),
    default=6,
    show_default=True,
    help=f"Months of the scenario [--erp-bound: {ERP_BOUND['months']}].",
)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--duplicate-rate", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--reorder-rate", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--partitions", type=click.IntRange(1, 256), default=4, show_default=True)
@click.option(
    "--contenders",
    default=",".join(CONTENDERS),
    show_default=True,
    callback=_contenders,
    help="Which to run, comma-separated.",
)
@click.option(
    "--rate",
    type=click.FloatRange(0),
    default=500.0,
    show_default=True,
    help="Events/s of the paced ledgerflow run (latency under load); 0 skips it.",
)
@click.option(
    "--paced-customers",
    type=click.IntRange(1),
    default=None,
    help="Customers in the paced run's scenario [default: --customers].",
)
@click.option(
    "--erp-latency-ms",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help=f"Sandbox ERP latency [--erp-bound: {ERP_BOUND['erp_latency_ms']:g}].",
)
@click.option(
    "--workers", type=click.IntRange(1, 16), default=1, show_default=True, help="ledgerflow workers."
)
@click.option(
    "--sink-workers",
    type=click.IntRange(0, 16),
    default=BenchOptions.sink_workers,
    show_default=True,
    help="Workers running only the sink beside --workers running ingest and core (0: all stages in each).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(1),
    default=900.0,
    show_default=True,
    help="Longest one contender may take.",
)
@click.option(
    "--profile/--no-profile",
    default=False,
    show_default=True,
    help="py-spy every ledgerflow worker during the backlog run; a text summary goes beside the JSON.",
)
@click.option(
    "--erp-bound",
    is_flag=True,
    help="Only the ERP-bound mode: the backlog against a sandbox ERP with a concurrency limit N (and "
    "the sink at LEDGERFLOW_ERP_CONCURRENCY=N), for each of --erp-concurrency-limits: documents/s "
    "against N / latency, and ERP calls per document.",
)
@click.option(
    "--erp-concurrency-limits",
    default=",".join(str(n) for n in BenchOptions.erp_concurrency_limits),
    show_default=True,
    callback=_limits,
    help="The limits N of the --erp-bound runs, comma-separated.",
)
@click.option(
    "--erp-mode",
    type=click.Choice(["netsuite", "business-central"]),
    default="netsuite",
    show_default=True,
    help="The ERP stand-in of the --erp-bound runs.",
)
@click.option(
    "--erp-batch",
    type=click.Choice(["off", "on", "both"]),
    default="both",
    show_default=True,
    callback=lambda _c, _p, v: {"off": (False,), "on": (True,), "both": (False, True)}[v],
    help="Business Central: run each limit without the sink's shared $batch, with it, or both.",
)
@click.option(
    "--erp-operation-ms",
    type=click.FloatRange(0),
    default=BenchOptions.erp_operation_ms,
    show_default=True,
    help="Business Central: the stand-in's latency per $batch operation (an assumption).",
)
@click.option(
    "--erp-rate-limit",
    type=click.IntRange(0),
    default=BenchOptions.erp_rate_limit,
    show_default=True,
    help="Business Central: calls per --erp-rate-window-s the stand-in takes before 429 (0: none).",
)
@click.option(
    "--erp-rate-window-s",
    type=click.FloatRange(0.1),
    default=BenchOptions.erp_rate_window_s,
    show_default=True,
)
@click.option(
    "--quick", is_flag=True, help="A tiny run that checks every contender works (numbers mean little)."
)
@click.option(
    "--results-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=RESULTS,
    show_default=True,
)
@click.option(
    "--keep-work", is_flag=True, help="Keep the work dir (logs, ERP database, state) after success."
)
@click.pass_context
def bench_command(ctx: click.Context, quick: bool, **given: Any) -> None:
    """Measure ledgerflow against a bare Faust agent and a Quix Streams peer on one broker
    (or, with --erp-bound, how close its sink gets to an ERP's concurrency / latency)."""
    defaults = QUICK if quick else {}
    if given["erp_bound"]:
        defaults = ERP_BOUND_QUICK if quick else ERP_BOUND
    for name, value in defaults.items():
        if ctx.get_parameter_source(name) is ParameterSource.DEFAULT:
            given[name] = value
    options = replace(BenchOptions(), **given)
    if options.erp_bound and (options.sink_workers or options.workers) != 1:
        # LEDGERFLOW_ERP_CONCURRENCY is each process's: two sinks at N would hold 2N calls
        # against an account that takes N, and the run would measure the refusals.
        raise click.UsageError(
            "--erp-bound needs one process running the sink (--sink-workers 1, or 0 with --workers 1)"
        )
    # A freshly created partition may refuse the first sends once; aiokafka retries and says so.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    try:
        results, path = run_bench(options)
    except BenchError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo("")
    click.echo(format_table(results))
    click.echo(f"\nresults: {path}" + (f" (profile: {results['profile']})" if "profile" in results else ""))
