"""The chaos run (issue #8; design §6, invariants 1-4): a simulated quote-to-cash history of 500
customers and 22,000 events, with 10% of Stripe's events delivered twice and 10% reordered, half
posted signed to a worker's webhook ingress and half produced straight to the source topics;
two workers on a broker of the test's own; the ERP stand-in, once as NetSuite (its property,
reference and amount checks on: each payment must apply to its invoice) and once as Business
Central (no upsert, no unique key: a second create is a second document, and only a lookup can
tell that a hung create committed), failing 10% of calls with 500s, answering 5% only after
committing them and hanging past the sink's timeout, and in bursts of 429s. Meanwhile a worker
is killed with `kill -9` three times (restarted on its data each time) and the broker restarts.

Afterwards, against the simulator's ground truth: every document in the ERP once, none extra,
with the truth's amounts, currencies and statuses, each customer's documents created in order;
every source message accounted for (`tests/chaos/accounting.py`: the classes, the table); and
`streams.operations.reconcile.reconcile` finds no difference. A failed run keeps the workers', the
sandbox's and the broker's logs, the sandbox database, the ground truths and the report under
`test-artifacts/chaos/`.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from agents.identity import provisional_customer_id
from canonical import PostingOutcome
from connectors.errors import Rejection
from connectors.salesforce import ResyncRequired
from connectors.simulation import generate
from streams.cli.local_kafka import LocalKafka
from streams.operations.reconcile import reconcile
from streams.operations.replay import KafkaLink, RawRecord
from streams.settings import Settings
from tables.invoices import InvoiceErpStatus
from tests.chaos.accounting import SOURCE_TOPICS, Accounting, Fate, Outcomes, account, read_outcomes
from tests.fuzz.seeds import adapters
from tests.support import (
    BUSINESS_CENTRAL_ENV,
    REPO,
    ErpSandbox,
    Stack,
    assert_books_balance,
    assert_erp_holds_exactly,
    erp_documents_of,
    ledgerflow_names,
    unconsumed,
)

pytestmark = pytest.mark.chaos

ARTIFACTS = Path(os.environ.get("LEDGERFLOW_TEST_ARTIFACTS", "test-artifacts")) / "chaos"
"""Where a failed run leaves its logs, the sandbox database, the ground truths and the report."""

HALF = 250
"""Customers per half (direct, webhooks): 500 in all."""
MONTHS = 9
"""≈ 22,100 source messages for 500 customers (8 months would stay under 20,000)."""
SCENARIOS = {"direct": (81, 0), "webhooks": (82, HALF)}
"""Half → (seed, first customer number): the two halves share no ids."""
RATES = ("--duplicate-rate", "0.1", "--reorder-rate", "0.1")
ERP_FAULTS = (
    *("--error-rate", "0.1", "--timeout-rate", "0.05", "--hang-s", "3"),
    *("--retry-after-s", "0.5", "--seed", "88"),
)
"""10% 500s, 5% committed-then-hung answers (3 s, past the sink's 1.5 s timeout)."""
BURST_429 = 20
"""The next this many ERP calls answer 429 with Retry-After, at each burst. Ten in a row open
the sink's circuit breaker, and while it is open only its probes reach the ERP (one per worker
every LEDGERFLOW_ERP_BREAKER_OPEN_S), so the rest of a burst is used up by probes: 40 stalled
the ERP side of the run for about a minute each time."""
WORKER_ENV = {
    "LEDGERFLOW_ERP_TIMEOUT_S": "1.5",
    "LEDGERFLOW_ERP_RETRY_BASE_S": "0.05",
    "LEDGERFLOW_ERP_RETRY_MAX_S": "30",
    "LEDGERFLOW_ERP_MAX_ATTEMPTS": "30",
    "LEDGERFLOW_ERP_PARK_RETRY_S": "5",
    "LEDGERFLOW_ERP_BREAKER_OPEN_S": "2",
    # A gathered `$batch` times out at 1.5 s too, so a hang loses its answer whatever it carries.
    "LEDGERFLOW_BC_OPERATION_TIMEOUT_S": "0",
    "LEDGERFLOW_STRIPE_WEBHOOK_SECRET": "whsec_chaos",
    "LEDGERFLOW_RELAY_SECRET": "relay-chaos",
}
CHANGELOGS = ("parked-billing", "invoice-state", "parked-invoice-payments")
ADAPTERS = adapters()
DRAIN_TIMEOUT_S = 660.0
"""From the workers' start to every command confirmed: about 350 s on this 2-core machine, so a
run that loses a document fails within 12 minutes (and keeps its logs) instead of hanging CI."""


@dataclass
class ChaosRun:
    """The deployment under test, its broker, and the report it prints and keeps."""

    root: Path
    broker: LocalKafka
    stack: Stack
    mode: str
    started: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def erp(self) -> ErpSandbox:
        assert self.stack.erp is not None
        return self.stack.erp

    def note(self, line: str = "") -> None:
        """One report line: printed, and kept in chaos-report.log (an artefact on failure)."""
        self.lines.append(line)
        with (self.root / "chaos-report.log").open("a") as out:
            out.write(line + "\n")

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def settings(self) -> Settings:
        """What `ledgerflow reconcile` would read from the workers' environment."""
        env = self.stack.workers[0].env
        return Settings(
            kafka_bootstrap=self.stack.bootstrap,
            topic_prefix=self.stack.prefix,
            app_id=env["LEDGERFLOW_APP_ID"],
            partitions=self.stack.partitions,
            erp_base_url=self.erp.url,
            erp_mode=self.mode,
            erp_token=SecretStr(ErpSandbox.token),
            bc_tenant=env.get("LEDGERFLOW_BC_TENANT"),
            bc_environment=env.get("LEDGERFLOW_BC_ENVIRONMENT", "production"),
        )


@pytest.fixture(params=["netsuite", "business-central"])
def chaos(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[ChaosRun]:
    """A broker of the run's own (it is restarted mid-run: the session's broker is left alone)
    and a stack on it; on failure everything worth reading goes to test-artifacts/chaos/."""
    root = tmp_path_factory.mktemp("chaos")
    print(f"\nchaos run in {root}; a failed run keeps its logs in {ARTIFACTS.resolve()}")
    broker = LocalKafka(data_dir=root / "kafka")
    started = time.monotonic()
    broker.start()
    mode: str = request.param
    env = {**WORKER_ENV, "LEDGERFLOW_ERP_MODE": mode}
    if mode == "business-central":
        env |= BUSINESS_CENTRAL_ENV
    stack = Stack(bootstrap=broker.bootstrap, root=root, extra_env=env, erp_args=ERP_FAULTS)
    run = ChaosRun(root, broker, stack, mode)
    run.timings["broker up"] = time.monotonic() - started
    failed_before = request.session.testsfailed
    try:
        yield run
    finally:
        stack.stop()
        broker.stop()
        if request.session.testsfailed > failed_before:
            _keep_artifacts(root, broker)


def _keep_artifacts(root: Path, broker: LocalKafka) -> None:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    for pattern in ("*.log", "*.sqlite3*", "*.json"):
        for path in root.glob(pattern):
            shutil.copyfile(path, ARTIFACTS / path.name)
    if broker.log_file.exists():
        shutil.copyfile(broker.log_file, ARTIFACTS / "kafka-broker.log")
    print(f"\nchaos run failed: logs, sandbox database, truths and report kept in {ARTIFACTS.resolve()}")


def simulate(run: ChaosRun, half: str, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    """`ledgerflow simulate` for one half, in the background; its output in simulate-<half>.log."""
    seed, first = SCENARIOS[half]
    truth = run.root / f"truth-{half}.json"
    args = [
        *("--customers", str(HALF), "--months", str(MONTHS), "--seed", str(seed)),
        *("--first-customer", str(first), *RATES, "--truth", str(truth), *extra),
    ]
    with (run.root / f"simulate-{half}.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams", "simulate", *args],
            cwd=REPO,
            env={**run.stack.env(0), "LEDGERFLOW_DATA_DIR": str(run.root / f"simulate-{half}")},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, truth


SINK_LINES = {
    "erp call failed": "failed calls (500s, 429s)",
    "erp call got no answer": "calls without an answer (the hung ones)",
    "posting a draft an earlier attempt left behind": "drafts an earlier attempt had created, posted",
    "erp circuit opened": "times a breaker opened",
}


def sink_observations(root: Path) -> Counter[str]:
    """What the workers' sinks logged of the ERP's faults (a restarted worker appends to its log)."""
    seen: Counter[str] = Counter()
    for log in root.glob("worker*.log"):
        for line in log.read_text(errors="replace").splitlines():
            for text in SINK_LINES:
                if f": {text}" in line:  # `… [WARNING] logger: message key=value …`
                    seen[text] += 1
    return seen


def erp_count(erp: ErpSandbox, record_type: str) -> int:
    view = httpx.get(f"{erp.url}/admin/documents", params={"record_type": record_type}, timeout=60).json()
    return len(view["documents"])


def event_ids(topic: str, raw: bytes, key: str | None) -> tuple[str, ...] | None:
    """The canonical event ids a source message maps to, by the workers' own adapters."""
    try:
        return tuple(c.event_id for c in ADAPTERS[topic](raw, provisional_customer_id, None, key))
    except (Rejection, ResyncRequired):
        return None


async def _read(s: Settings, names: list[str]) -> dict[str, list[RawRecord]]:
    async with KafkaLink(s, timeout=180) as link:
        return {name: await link.read_to_end(name) for name in names}


def read_back(run: ChaosRun, topics: tuple[str, ...], changelogs: tuple[str, ...] = ()) -> dict[str, Any]:
    """Design topics (by design name) and table changelogs (by table name), read to their end."""
    s = run.settings()
    names = {t: s.topic(t) for t in topics} | {c: f"{s.app_id}-{c}-changelog" for c in changelogs}
    found = asyncio.run(_read(s, list(names.values())))
    return {name: found[actual] for name, actual in names.items()}


@dataclass
class Step:
    """One disruption, when the ERP holds `at` of the expected payments (and, for those the
    senders could not ride out, once every message was sent)."""

    at: float
    name: str
    act: Callable[[], str]
    after_input: bool = False


def test_chaos_every_document_once_and_every_event_accounted_for(
    chaos: ChaosRun, capsys: pytest.CaptureFixture[str]
) -> None:
    run = chaos
    stack, erp = run.stack, run.stack.start_erp()
    t = time.monotonic()
    workers = [stack.start_worker(), stack.start_worker()]
    run.timings["two workers ready"] = time.monotonic() - t

    truth_in_advance = [
        generate(HALF, MONTHS, seed, 0.1, 0.1, first).truth for seed, first in SCENARIOS.values()
    ]
    expected_payments = sum(len(t["payments"]) for t in truth_in_advance)
    if run.mode == "business-central":
        every_id = [(rt, eid) for truth in truth_in_advance for rt, eid in erp_documents_of(truth)]
        every_id += [
            ("customer", f"cust-crm-{c['crm_account_id']}") for t in truth_in_advance for c in t["customers"]
        ]
        erp.names = ledgerflow_names(every_id)
    ingress = workers[0].url
    t_input = time.monotonic()
    senders = {
        "direct": simulate(run, "direct"),
        "webhooks": simulate(run, "webhooks", "--via-webhooks", ingress),
    }

    def input_done() -> bool:
        codes = {half: proc.poll() for half, (proc, _) in senders.items()}
        for half, code in codes.items():
            assert code in (None, 0), (
                f"simulate ({half}) failed:\n{(run.root / f'simulate-{half}.log').read_text()}"
            )
        return all(code == 0 for code in codes.values())

    kills = 0

    def kill(index: int) -> str:
        nonlocal kills
        kills += 1
        workers[index].kill()
        workers[index] = stack.start_worker_again(workers[index])
        return f"restarted on its data, ready in {workers[index].ready_after:.1f}s"

    def restart_broker() -> str:
        begun = time.monotonic()
        run.broker.restart()
        return f"down and up again in {time.monotonic() - begun:.1f}s"

    def burst() -> str:
        erp.admin("POST", "faults", burst_429=BURST_429)
        return f"the next {BURST_429} ERP calls answer 429"

    steps = [
        Step(0.03, "429 burst", burst),
        Step(0.08, "kill -9 worker 1", lambda: kill(1)),
        Step(0.20, "429 burst", burst),
        Step(0.30, "kill -9 worker 0 (the webhook ingress)", lambda: kill(0), after_input=True),
        Step(0.45, "broker restart", restart_broker, after_input=True),
        Step(0.55, "429 burst", burst),
        Step(0.65, "kill -9 worker 1", lambda: kill(1)),
        Step(0.80, "429 burst", burst),
    ]
    run.note(f"chaos run: {expected_payments} payments expected; disruptions at shares of them in the ERP")
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    progress = 0.0
    for step in steps:
        while True:
            progress = erp_count(erp, "customerPayment") / expected_payments
            if progress >= step.at and (input_done() or not step.after_input):
                break
            assert time.monotonic() < deadline, f"stuck at {progress:.0%} of the payments before {step.name}"
            time.sleep(2.0)
        begun = time.monotonic()
        detail = step.act()
        run.note(f"{run.elapsed():7.1f}s  {progress:4.0%} of the payments posted  {step.name}: {detail}")
        run.timings[f"{step.name} (at {run.elapsed():.0f}s)"] = time.monotonic() - begun
    assert progress < 1.0, "the last disruption came after the run had finished"
    assert kills == 3
    while not input_done():
        assert time.monotonic() < deadline, "the simulators did not finish"
        time.sleep(1.0)
    truths = [orjson.loads(path.read_bytes()) for _, path in senders.values()]
    assert [t["messages"] for t in truths] == [t["messages"] for t in truth_in_advance]
    for half in senders:
        sent = re.search(r"sent in ([0-9.]+)s", (run.root / f"simulate-{half}.log").read_text())
        run.timings[f"{half} half sent (by the simulator)"] = float(sent[1]) if sent else float("nan")

    # The drain: every document in the ERP, then every command confirmed and nothing waiting.
    expected = erp_documents_of(truths[0]) | erp_documents_of(truths[1])
    customers = {f"cust-crm-{c['crm_account_id']}" for t in truths for c in t["customers"]}
    while erp_count(erp, "customerPayment") < expected_payments:
        assert time.monotonic() < deadline, "not every payment reached the ERP in time"
        time.sleep(2.0)
    view = erp.wait_for(expected, timeout=max(10.0, deadline - time.monotonic()))
    run.timings["all documents in the ERP"] = time.monotonic() - t_input
    while True:
        found = read_back(run, ("erp.commands", "erp.results"), CHANGELOGS)
        outcomes = read_outcomes(
            dlq=[],
            canonical=[],
            commands=found["erp.commands"],
            results=found["erp.results"],
            exceptions=[],
            parked_billing_changelog=found["parked-billing"],
            invoice_state_changelog=found["invoice-state"],
            parked_invoice_payments_changelog=found["parked-invoice-payments"],
        )
        unconfirmed = set(outcomes.commands) - outcomes.posted_keys
        # ... and stages 2 and the sink have taken in everything (the tables are read next).
        group = run.settings()
        stage_inputs = [group.topic(t) for t in ("ledgerflow.canonical", "erp.commands", "erp.results")]
        lag = sum(
            asyncio.run(unconsumed(group.bootstrap, group.group_id, stage_inputs, group.partitions)).values()
        )
        waiting = outcomes.parked_ids or outcomes.parked_invoice_payments
        if not unconfirmed and not waiting and lag == 0:
            break
        assert time.monotonic() < deadline, (
            f"not settled: {len(unconfirmed)} commands unconfirmed (e.g. {sorted(unconfirmed)[:5]}), "
            f"{len(outcomes.parked_ids)} events waiting, {lag} messages not taken in"
        )
        time.sleep(3.0)
    run.timings["settled (every command confirmed)"] = time.monotonic() - t_input
    erp.admin("POST", "faults", error_rate=0.0, timeout_rate=0.0, rate_limit_rate=0.0)  # the run is over
    view = erp.documents()
    faults_left = erp.admin("GET", "faults")
    calls = httpx.get(f"{erp.url}/admin/requests", params={"limit": "1"}, timeout=30).json()

    # Every source message accounted for, from the topics and the tables' changelogs.
    t = time.monotonic()
    topics = (
        *SOURCE_TOPICS,
        "ledgerflow.canonical",
        "erp.commands",
        "erp.results",
        "ledgerflow.exceptions",
        "ledgerflow.dlq",
    )
    found = read_back(run, topics, CHANGELOGS)
    outcomes = read_outcomes(
        dlq=found["ledgerflow.dlq"],
        canonical=found["ledgerflow.canonical"],
        commands=found["erp.commands"],
        results=found["erp.results"],
        exceptions=found["ledgerflow.exceptions"],
        parked_billing_changelog=found["parked-billing"],
        invoice_state_changelog=found["invoice-state"],
        parked_invoice_payments_changelog=found["parked-invoice-payments"],
    )
    books = account({topic: found[topic] for topic in SOURCE_TOPICS}, outcomes, event_ids)
    run.timings["topics read and accounted"] = time.monotonic() - t
    t = time.monotonic()
    report = asyncio.run(reconcile(run.settings(), raise_exceptions=True))
    run.timings["reconcile"] = time.monotonic() - t
    run.timings["whole run"] = run.elapsed()

    # What the ERP holds, against the truth and the tables; reported, then asserted.
    docs = {(d["record_type"], d["external_id"]): d for d in view["documents"]}
    problems = {
        "contents (currency, status, paid)": content_mismatches(docs, truths),
        "stage 2's rows against the ERP": table_mismatches(outcomes, docs, truths),
    }
    pairs, problems["customer → invoice → payment order"] = documents_out_of_order(docs)
    lanes, problems["invoices in source order"] = invoices_out_of_source_order(docs, outcomes, books)
    checks = [
        f"order: {pairs} document pairs (customer → invoice → payment or credit memo) and {lanes} pairs",
        "  of one customer's invoices (in the order their posting events arrived) checked",
        *(
            f"{what}: {len(items)} problem(s) {items[:3] if items else ''}".rstrip()
            for what, items in problems.items()
        ),
    ]
    seen = sink_observations(run.root)
    _report(run, truths, view, outcomes, books, faults_left, calls, checks, report.render(), seen)
    run.note(f"a failed run keeps its logs, the sandbox database and this report in {ARTIFACTS}/")
    with capsys.disabled():
        print("\n" + "\n".join(run.lines))

    assert_erp_holds_exactly(view, expected)  # each once (the sandbox's duplicates list), amounts
    assert_books_balance(view)  # each payment and credit applied to its invoice
    assert set(docs) == set(expected) | {("customer", c) for c in customers}, "a document the truth lacks"
    assert len(view["documents"]) == len(docs), view["duplicates"]
    assert all(not found_problems for found_problems in problems.values()), problems
    messages = sum(t["messages"]["total"] for t in truths)
    duplicates = sum(t["messages"]["duplicates"] for t in truths)
    assert books.unaccounted == [], f"lost: {books.unaccounted[:10]}"
    assert books.total() >= messages >= 20_000 and len(customers) >= 500
    by_topic: Counter[str] = Counter()
    for truth in truths:
        by_topic.update(truth["messages"]["by_topic"])
    assert all(sum(books.counts[topic].values()) >= n for topic, n in by_topic.items()), books.counts
    # Copies beyond the simulators' (a webhook retried after a 503) are redeliveries too; each
    # forwarded invoice payment adds its copy on payments.changes.
    assert books.total(Fate.REDELIVERY) - duplicates == books.total() - messages - books.total(Fate.FORWARDED)
    for fate in (Fate.DEAD_LETTERED, Fate.PARKED, Fate.EXCEPTION):
        assert books.total(fate) == 0, f"{fate.value}: {books.counts}"
    assert outcomes.undecodable == 0
    assert report.clean, report.render()
    assert report.exceptions_raised == 0
    assert faults_left["burst_429"] == 0, "a 429 burst was not used up"
    assert seen["erp call failed"] and seen["erp call got no answer"], "the ERP's faults never bit"


Docs = dict[tuple[str, str], dict[str, Any]]
"""The sandbox's documents by (record type, external id)."""


def content_mismatches(docs: Docs, truths: list[Any]) -> list[str]:
    """Currencies as the truth has them; every document booked (not draft or voided); a payment
    in the ERP for every invoice the truth says is paid, and for no other."""
    currency = {("invoice", i["external_id"]): i["currency"] for t in truths for i in t["invoices"]}
    currency |= {
        ("customerPayment", f"stripe-{p['payment_id']}"): p["currency"] for t in truths for p in t["payments"]
    }
    currency |= {
        ("creditMemo", f"stripe-{m['credit_memo_id']}"): m["currency"]
        for t in truths
        for m in t["credit_memos"]
    }
    out = [
        f"{k}: currency {_currency(docs[k])}, the truth {c}"
        for k, c in currency.items()
        if k in docs and _currency(docs[k]) != c
    ]
    booked = {"customer": "active", "invoice": "open", "customerPayment": "deposited", "creditMemo": "open"}
    out += [f"{k}: status {d['status']}" for k, d in docs.items() if booked.get(k[0]) != d["status"]]
    paid = {("invoice", i["external_id"]) for t in truths for i in t["invoices"] if i["status"] == "paid"}
    applied = {("invoice", _invoice_of(d)) for k, d in docs.items() if k[0] == "customerPayment"}
    out += [f"{k}: paid in the truth, no payment in the ERP" for k in sorted(paid - applied)]
    out += [f"{k}: a payment in the ERP, unpaid in the truth" for k in sorted(applied - paid)]
    return out


def _currency(doc: dict[str, Any]) -> str | None:
    # NetSuite references a currency record by internal id; the sandbox's summary names its code.
    currency = doc["books"]["currency"]
    return str(currency) if currency is not None else None


def _customer_of(doc: dict[str, Any]) -> str:
    return str(doc["books"]["customer"])


def _invoice_of(doc: dict[str, Any]) -> str | None:
    """The invoice a payment or credit memo is for: in NetSuite, the one its apply sublist names
    (none for a credit on a paid invoice: it stays on the customer's account)."""
    applied = list(doc["books"]["applied_to"])
    assert len(applied) <= 1, doc["external_id"]
    return str(applied[0]) if applied else None


def documents_out_of_order(docs: Docs) -> tuple[int, list[str]]:
    """The ERP created each customer before its invoices, and each invoice before its payments
    and credit memos (internal ids are the sandbox's creation order): pairs checked, problems."""
    created = {k: int(d["seq"]) for k, d in docs.items()}
    pairs, out = 0, []
    for key, doc in docs.items():
        before: tuple[str, str] | None = None
        if key[0] == "invoice":
            before = ("customer", _customer_of(doc))
        elif key[0] in ("customerPayment", "creditMemo") and (invoice := _invoice_of(doc)) is not None:
            before = ("invoice", invoice)
        if before is None:
            continue
        pairs += 1
        if before not in created or created[before] > created[key]:
            out.append(f"{key} created before {before}")
    return pairs, out


def invoices_out_of_source_order(docs: Docs, outcomes: Outcomes, books: Accounting) -> tuple[int, list[str]]:
    """Each customer's invoices reached the ERP in the order the events that posted them arrived
    (invariant 3: one customer's events take effect in source order): pairs checked, problems."""
    by_customer: dict[str, list[tuple[int, tuple[str, int, int]]]] = {}
    out = []
    for key, command in outcomes.commands.items():
        if not key.startswith("post_invoice-"):
            continue
        doc = docs.get(("invoice", key.removeprefix("post_invoice-")))
        arrivals = [books.first_seen[e] for e in outcomes.caused_by.get(key, ()) if e in books.first_seen]
        if doc is None or not arrivals:
            out.append(f"{key}: no ERP document or no source event")
            continue
        by_customer.setdefault(command.customer_id, []).append((int(doc["seq"]), min(arrivals)))
    pairs = 0
    for customer_id, invoices in by_customer.items():
        in_erp = [arrived for _, arrived in sorted(invoices)]
        pairs += len(invoices) - 1
        if in_erp != sorted(in_erp):
            out.append(f"{customer_id}: invoices reached the ERP out of source order")
    return pairs, out


def table_mismatches(outcomes: Outcomes, docs: Docs, truths: list[Any]) -> list[str]:
    """Stage 2's rows say what the ERP confirmed: each invoice's status as the truth has it, its
    ERP status posted with the ERP's id and number; each payment and credit memo confirmed with
    the ERP's id."""
    out = []
    account_of = {i["invoice_id"]: i["crm_account_id"] for t in truths for i in t["invoices"]}
    for truth in truths:
        for invoice in truth["invoices"]:
            customer = outcomes.invoices.get(f"cust-crm-{invoice['crm_account_id']}")
            row = customer.invoices.get(invoice["invoice_id"]) if customer else None
            doc = docs.get(("invoice", invoice["external_id"]), {})
            if row is None:
                out.append(f"{invoice['invoice_id']}: no row")
            elif (row.status.value, row.erp_status, row.erp_internal_id, row.document_number) != (
                invoice["status"],
                InvoiceErpStatus.POSTED,
                doc.get("internal_id"),
                doc.get("document_number"),
            ):
                out.append(f"{invoice['invoice_id']}: row {row.status.value}/{row.erp_status.value}")
        for kind, record_type, items, id_field in (
            ("apply_payment", "customerPayment", truth["payments"], "payment_id"),
            ("post_credit_memo", "creditMemo", truth["credit_memos"], "credit_memo_id"),
        ):
            for item in items:
                customer = outcomes.invoices.get(f"cust-crm-{account_of[item['invoice_id']]}")
                confirmed = customer.confirmed.get(f"{kind}-stripe-{item[id_field]}") if customer else None
                doc = docs.get((record_type, f"stripe-{item[id_field]}"), {})
                if confirmed is None or confirmed != doc.get("internal_id"):
                    out.append(f"{item[id_field]}: confirmed {confirmed}, ERP {doc.get('internal_id')}")
    return out


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    return [
        "  ".join(c.rjust(widths[i]) if i else c.ljust(widths[i]) for i, c in enumerate(r)).rstrip()
        for r in (header, *rows)
    ]


def _report(
    run: ChaosRun,
    truths: list[Any],
    view: dict[str, Any],
    outcomes: Outcomes,
    books: Accounting,
    faults_left: dict[str, Any],
    calls: dict[str, Any],
    checks: list[str],
    reconciliation: str,
    seen: Counter[str],
) -> None:
    note = run.note
    messages = sum(t["messages"]["total"] for t in truths)
    note()
    note(
        f"scenario: {sum(len(t['customers']) for t in truths)} customers, {messages} source messages "
        f"({sum(t['messages']['duplicates'] for t in truths)} duplicates, "
        f"{sum(t['messages']['reordered'] for t in truths)} reordered), half via the webhook ingress"
    )
    note(
        f"ERP faults: 10% 500s, 5% committed then hung 3 s (sink timeout 1.5 s), 4 bursts of {BURST_429} "
        f"429s; {calls['requests'][-1]['seq'] if calls['requests'] else 0} API calls in all"
    )
    note("the sinks saw: " + ", ".join(f"{seen[text]} {what}" for text, what in SINK_LINES.items()))
    note()
    note("accounting of the source messages (events in = the sum of the classes):")
    for line in books.table():
        note("  " + line)
    note()
    note("applied without a posting of their own, by event type:")
    for event_type, n in sorted(books.applied_types.items(), key=lambda kv: (-kv[1], kv[0])):
        note(f"  {n:6d}  {event_type}")
    note()
    by_type = Counter(d["record_type"] for d in view["documents"])
    writes: Counter[str] = Counter()
    for d in view["documents"]:
        writes[d["record_type"]] += d["writes"]
    expected = Counter(rt for rt, _ in erp_documents_of(truths[0]) | erp_documents_of(truths[1]))
    expected["customer"] = sum(len(t["customers"]) for t in truths)
    kinds: dict[str, str] = {k: c.command for k, c in outcomes.commands.items()}  # type: ignore[attr-defined]
    keys: Counter[str] = Counter(kinds.values())
    copies: Counter[str] = Counter()
    posted: Counter[str] = Counter()
    for key, kind in kinds.items():
        copies[kind] += outcomes.command_copies[key] - 1
        result = outcomes.final_results.get(key)
        posted[kind] += result is not None and result.outcome is PostingOutcome.POSTED
    rows = [
        [
            rt,
            str(expected[rt]),
            str(by_type[rt]),
            str(sum(1 for d in view["duplicates"] if d["record_type"] == rt)),
            str(writes[rt]),
        ]
        for rt in ("customer", "invoice", "customerPayment", "creditMemo")
    ]
    note(
        f"ERP documents against the truth ({run.mode}; in Business Central a second create would be "
        "a duplicate):"
    )
    for line in _table(["record type", "truth", "in ERP", "duplicated", "writes"], rows):
        note("  " + line)
    note()
    rows = [[kind, str(keys[kind]), str(copies[kind]), str(posted[kind])] for kind in sorted(keys)]
    repeated = sum(outcomes.result_outcomes.values()) - len(outcomes.final_results)
    note(
        f"erp.commands: {sum(outcomes.command_copies.values())} records; erp.results: "
        f"{dict(outcomes.result_outcomes)}, {repeated} of them repeating an earlier result of their key "
        "(a restarted sink re-reads commands it had confirmed: it says the result again, posts nothing)"
    )
    for line in _table(["command", "keys", "repeated copies", "posted"], rows):
        note("  " + line)
    reasons = Counter(
        (e.reason.value, "superseded by a posting" if outcomes.superseded(e) else e.status.value)
        for e in outcomes.exceptions
    )
    note(f"exceptions raised during the run: {dict(reasons) or 'none'}")
    for line in checks:
        note(line)
    note(f"429 bursts left unused: {faults_left['burst_429']}")
    note()
    note(reconciliation)
    note()
    note("timings (seconds):")
    for name, seconds in run.timings.items():
        note(f"  {seconds:7.1f}  {name}")
