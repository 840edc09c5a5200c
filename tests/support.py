"""Shared test helpers: fixture data, a worker process, and reading topics back."""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from connectors.stripe.versions import CURRENT_VERSION as CURRENT_STRIPE_VERSION
from streams.cli.local_kafka import free_port
from streams.cli.processes import ProcessFailed, terminate, wait_for_log
from streams.kafka_io import Record, produce, read_topics

__all__ = ["Record", "consume_until", "produce"]

REPO = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """`../shared/data` beside the checkout (CI lays it there), or LEDGERFLOW_SHARED_DATA."""
    env = os.environ.get("LEDGERFLOW_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@cache
def _stripe_resources() -> dict[str, Any]:
    path = shared_data_dir() / "stripe" / "fixtures.json"
    return orjson.loads(path.read_bytes())["resources"]


def stripe_fixture(name: str) -> dict[str, Any]:
    """A deep copy of one of Stripe's published example objects."""
    return copy.deepcopy(_stripe_resources()[name])


def stripe_event(
    obj: dict[str, Any],
    event_type: str,
    event_id: str | None = None,
    api_version: str = CURRENT_STRIPE_VERSION,
) -> dict[str, Any]:
    """An Event carrying `obj`, in the current API version unless told (Stripe's fixtures are
    in the current shapes)."""
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "api_version": api_version,
        "created": 1_721_954_100,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


def finalized_fixture_invoice(*, corrected: bool) -> dict[str, Any]:
    """Stripe's example invoice as `invoice.finalized` would carry it (status open).

    Stripe's example is not self-consistent: its one line says amount 1000 but subtotal
    2,060,319,484, while the invoice's subtotal and total are 1000. `corrected=True` sets the
    line's subtotal to its amount, the one change that makes the document add up.
    """
    invoice = stripe_fixture("invoice")
    invoice["status"] = "open"
    if corrected:
        for line in invoice["lines"]["data"]:
            line["subtotal"] = line["amount"]
    return invoice


@dataclass
class Worker:
    """A `ledgerflow worker` subprocess with its own data dir and web port."""

    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready_after: float = 0.0
    log_offset: int = 0

    @property
    def url(self) -> str:
        """Where its web server (views, ingress, metrics) answers."""
        return f"http://127.0.0.1:{self.env['LEDGERFLOW_WEB_PORT']}"

    def start(self, timeout: float = 90.0) -> Worker:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams", "worker", "-l", "info"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        try:
            self.ready_after = wait_for_log(
                self.log_path, "Worker ready", self.proc, timeout, self.log_offset
            )
        except ProcessFailed as exc:
            raise RuntimeError(f"{exc}:\n{self.tail()}") from None

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "<no log>"

    def stop(self, timeout: float = 30.0) -> None:
        proc, self.proc = self.proc, None
        terminate(proc, timeout)

    def kill(self) -> None:
        """kill -9: no shutdown, no commit."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@dataclass
class Stack:
    """One isolated ledgerflow deployment on the shared broker: own app id and topic prefix."""

    bootstrap: str
    root: Path
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}.")
    partitions: int = 4
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: list[Worker] = field(default_factory=list)
    erp: ErpSandbox | None = None
    erp_args: tuple[str, ...] = ()

    def topic(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def env(self, index: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLOW_")}
        env.update(
            {
                "LEDGERFLOW_KAFKA_BOOTSTRAP": self.bootstrap,
                "LEDGERFLOW_APP_ID": f"lf-{self.prefix.rstrip('.')}",
                "LEDGERFLOW_TOPIC_PREFIX": self.prefix,
                "LEDGERFLOW_PARTITIONS": str(self.partitions),
                "LEDGERFLOW_DATA_DIR": str(self.root / f"worker{index}"),
                "LEDGERFLOW_WEB_PORT": str(free_port()),
                "LEDGERFLOW_BATCH_WINDOW_MS": "10",
                "LEDGERFLOW_ERP_TOKEN": ErpSandbox.token,
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.erp is not None:
            env["LEDGERFLOW_ERP_BASE_URL"] = self.erp.url
        env.update(self.extra_env)
        return env

    def start_erp(self) -> ErpSandbox:
        """The sandbox ERP the stack's sinks post to (started with the first worker)."""
        if self.erp is None:
            self.erp = ErpSandbox(self.root, self.erp_args).start()
        return self.erp

    def start_worker(self) -> Worker:
        self.start_erp()
        index = len(self.workers)
        worker = Worker(self.env(index), self.root / f"worker{index}.log").start()
        self.workers.append(worker)
        return worker

    def start_worker_again(self, worker: Worker) -> Worker:
        """A new process on the same data dir and port, as a restarted pod would be."""
        again = Worker(worker.env, worker.log_path).start()
        self.workers.append(again)
        return again

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.erp is not None:
            self.erp.stop()


@dataclass
class ErpSandbox:
    """A `ledgerflow erp-sandbox` subprocess on a free port, its SQLite file under `root`."""

    root: Path
    args: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    token = "sandbox-token"
    names: dict[tuple[str, str], str] = field(default_factory=dict)
    """(record type, the key Business Central holds) → ledgerflow's external id: Business Central
    keeps no external id, so its documents are read back in ledgerflow's ids through this map
    (`in_ledgerflow_ids`); empty for NetSuite, which keeps ledgerflow's ids itself."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "erp-sandbox.log"

    def start(self, timeout: float = 30.0) -> ErpSandbox:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "streams", "erp-sandbox", "--port", str(self.port)),
                *("--db", str(self.root / "erp.sqlite3"), "--token", self.token, *self.args),
            ],
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        wait_for_log(self.log_path, "ERP sandbox on", self.proc, timeout, offset)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        terminate(proc)

    def wait_for(self, expected: dict[tuple[str, str], int], timeout: float = 300.0) -> dict[str, Any]:
        """Poll until every expected (record type, external id) is in the ERP; the admin view."""

        deadline = time.monotonic() + timeout
        while True:
            view = self.documents()
            have = {(d["record_type"], d["external_id"]) for d in view["documents"]}
            if set(expected) <= have or time.monotonic() > deadline:
                return dict(view)
            time.sleep(1.0)

    def documents(self, **query: str) -> dict[str, Any]:
        """The admin view of the documents, in ledgerflow's external ids."""
        import httpx

        view = httpx.get(f"{self.url}/admin/documents", params=query, timeout=60).json()
        return in_ledgerflow_ids(view, self.names)

    def admin(self, method: str, path: str, **json_body: Any) -> Any:
        import httpx

        response = httpx.request(method, f"{self.url}/admin/{path}", json=json_body or None, timeout=30)
        response.raise_for_status()
        return response.json() if response.content else None


def start_simulation(stack: Stack, truth_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """`ledgerflow simulate` into the stack's topics (args: --customers, --seed …), in the
    background; its ground truth goes to `truth_path`."""
    return subprocess.Popen(
        [sys.executable, "-m", "streams", "simulate", "--truth", str(truth_path), *args],
        cwd=REPO,
        env={**stack.env(0), "LEDGERFLOW_DATA_DIR": str(stack.root / "simulate")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def finish_simulation(simulate: subprocess.Popen[bytes], truth_path: Path) -> dict[str, Any]:
    """Wait for the simulator and return its ground truth."""
    stderr = simulate.communicate(timeout=300)[1]
    assert simulate.returncode == 0, stderr.decode(errors="replace")
    truth: dict[str, Any] = orjson.loads(truth_path.read_bytes())
    return truth


def assert_erp_holds_exactly(view: dict[str, Any], expected: dict[tuple[str, str], int]) -> None:
    """Every expected document once (whatever the retries), with the truth's amount; none extra."""
    docs = [d for d in view["documents"] if d["record_type"] in {rt for rt, _ in expected}]
    counts = Counter((d["record_type"], d["external_id"]) for d in docs)
    assert view["duplicates"] == [] and set(counts.values()) == {1}, view["duplicates"]
    amounts = {(d["record_type"], d["external_id"]): document_amount(d) for d in docs}
    assert amounts == expected


def document_amount(document: dict[str, Any]) -> int | None:
    """A sandbox document's total (a payment's amount) in minor units, as the ERP computed it
    from its lines in major units (the sandbox's `books` summary)."""
    amount: int | None = document["books"].get("amount")
    return amount


def assert_books_balance(view: dict[str, Any]) -> None:
    """The ERP's books as the truth implies them: each payment and credit applied to its
    invoice and to no other, no invoice over-applied, each reversed invoice reversed once."""
    netsuite = [d for d in view["documents"] if "books" in d]
    invoices = {d["external_id"]: d for d in netsuite if d["record_type"] == "invoice"}
    reversals = Counter(d["books"].get("created_from") for d in netsuite if d["record_type"] == "creditMemo")
    reversals.pop(None, None)
    assert set(reversals.values()) <= {1}, reversals
    for d in netsuite:
        if d["record_type"] in ("customerPayment", "creditMemo"):  # what is not applied stays unapplied
            assert sum(d["books"]["applied_to"].values()) <= d["books"]["amount"], d["external_id"]
        for invoice_id in d["books"].get("applied_to", {}):
            assert invoice_id in invoices, (d["external_id"], invoice_id)
    for invoice in invoices.values():
        assert invoice["books"]["remaining"] >= 0, invoice["external_id"]


BUSINESS_CENTRAL_ENV = {
    "LEDGERFLOW_ERP_MODE": "business-central",
    "LEDGERFLOW_BC_TENANT": "ledgerflow-sandbox",
    "LEDGERFLOW_BC_ENVIRONMENT": "sandbox",
}
"""A worker pointed at the stand-in's Business Central tenant and environment (its defaults)."""
BC_STATUSES = {
    "Active": "active",
    "Open": "open",
    "Paid": "open",
    "Posted": "deposited",
    "Canceled": "voided",
}
"""Business Central's statuses of booked documents as the NetSuite stand-in's (a paid invoice is
booked and open in NetSuite's sense: its status there is not the payment's)."""


def ledgerflow_names(external_ids: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """(record type, Business Central key) → ledgerflow external id, for `ErpSandbox.names`."""
    from connectors.erp.business_central_client import key_of
    from connectors.erp.schemas import RecordType

    return {(rt, key_of(RecordType(rt), eid)): eid for rt, eid in external_ids}


def in_ledgerflow_ids(view: dict[str, Any], names: dict[tuple[str, str], str]) -> dict[str, Any]:
    """The admin view with Business Central's documents named by ledgerflow's external ids (and
    their customers and invoices too) and their statuses in the NetSuite stand-in's words."""
    if not names:
        return view

    def name(record_type: str, key: Any) -> Any:
        return names.get((record_type, key), key) if isinstance(key, str) else key

    documents = []
    for d in view["documents"]:
        if d.get("api") == "business-central":
            books = dict(d["books"])
            books["customer"] = name("customer", books.get("customer"))
            books["applied_to"] = {name("invoice", k): v for k, v in (books.get("applied_to") or {}).items()}
            if "created_from" in books:
                books["created_from"] = name("invoice", books["created_from"])
            d = {
                **d,
                "external_id": name(d["record_type"], d["external_id"]),
                "status": BC_STATUSES.get(d["status"], d["status"]),
                "books": books,
            }
        documents.append(d)
    duplicates = [
        {**dup, "external_id": name(dup["record_type"], dup["external_id"])} for dup in view["duplicates"]
    ]
    return {**view, "documents": documents, "duplicates": duplicates}


def erp_documents_of(truth: dict[str, Any]) -> dict[tuple[str, str], int]:
    """(ERP record type, external id) → amount in minor units: every posting the truth implies."""
    docs = {("invoice", i["external_id"]): i["total"] for i in truth["invoices"]}
    docs.update({("customerPayment", f"stripe-{p['payment_id']}"): p["amount"] for p in truth["payments"]})
    docs.update({("creditMemo", f"stripe-{m['credit_memo_id']}"): m["total"] for m in truth["credit_memos"]})
    return docs


async def consume_until(
    bootstrap: str, topics: list[str], done: Any, timeout: float = 60.0
) -> dict[str, list[Record]]:
    return await read_topics(bootstrap, topics, done, timeout)


@contextlib.contextmanager
def env_vars(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


VOLATILE = {"age_s"}
"""Fields of a view that change between two reads of the same state (an exception's age)."""


def without_volatile(value: Any) -> Any:
    """A view's answer without its VOLATILE fields, to compare two workers' answers."""
    if isinstance(value, dict):
        return {k: without_volatile(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [without_volatile(v) for v in value]
    return value


async def unconsumed(bootstrap: str, group: str, topics: list[str], partitions: int) -> dict[str, int]:
    """Per `topic:partition` with a backlog: its end offset minus the group's committed offset
    (the whole partition when the group never committed there)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        left = {tp: ends[tp] - (committed[tp].offset if tp in committed else 0) for tp in tps}
        return {f"{tp.topic}:{tp.partition}": n for tp, n in left.items() if n > 0}
    finally:
        await consumer.stop()
        await admin.close()
