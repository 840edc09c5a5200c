"""`ledgerflow reconcile`: deriving what was posted and comparing it (pure), and a whole run
against a real sandbox ERP and a real broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from click.testing import CliRunner
from pydantic import SecretStr

from canonical import codec
from canonical.commands import ErpCommand, PostingOutcome, PostingResult
from canonical.exceptions import BusinessException, ExceptionReason, ExceptionStatus, Severity
from connectors.erp import ErpDocument, RecordType, netsuite
from connectors.erp.business_central_client import BusinessCentralClient
from connectors.erp.sandbox import DEFAULT_TOKEN, SandboxServer
from streams import headers as h
from streams.cli.reconcile import reconcile_command
from streams.erp import erp_client
from streams.operations.reconcile import (
    ACTIVE,
    INACTIVE,
    POSTED,
    DifferenceKind,
    ReconcileReport,
    commanded_documents,
    compare,
    count_by_type,
    difference_exception,
    erp_status,
    expected_documents,
    history_horizon,
    judge,
    posting,
    reconcile,
    reconciliation_exceptions,
)
from streams.operations.replay import KafkaLink, RawRecord
from streams.settings import Settings
from tests.connectors.erp.builders import (
    T0,
    apply_payment,
    post_credit_memo,
    post_invoice,
    upsert_contract,
    upsert_customer,
    void_invoice,
)
from tests.connectors.erp.support import sandbox_config
from tests.factories import posted
from tests.support import produce

COMMANDS = "erp.commands"
RESULTS = "erp.results"
EXCEPTIONS = "ledgerflow.exceptions"
INVOICE, PAYMENT, CUSTOMER = RecordType.INVOICE, RecordType.CUSTOMER_PAYMENT, RecordType.CUSTOMER


def failed(command: ErpCommand) -> PostingResult:
    return PostingResult(
        idempotency_key=command.idempotency_key,
        command=command.command,  # type: ignore[attr-defined]
        customer_id=command.customer_id,
        correlation_id=command.correlation_id,
        outcome=PostingOutcome.FAILED,
        error_code="USER_ERROR",
        error_message="closed period",
    )


def erp_doc(
    command: ErpCommand,
    internal_id: str = "1",
    status: str | None = None,
    created: datetime = T0,
    **changes: Any,
) -> ErpDocument:
    """The command's record as the ERP answers it, with `changes` made in the ERP (`total`,
    `amount` and `currency` are the document's; any other change is in its body)."""
    record = posting(command)
    default = "active" if record.record_type is CUSTOMER else "open"
    total = changes.pop("total", changes.pop("amount", record.amount))
    return ErpDocument(
        record_type=record.record_type,
        external_id=record.external_id,
        erp_internal_id=internal_id,
        status=status or default,
        currency=changes.pop("currency", record.currency),
        total=total,
        body={**changes, "createdDate": created.isoformat()},
    )


def history() -> tuple[list[ErpCommand], list[PostingResult]]:
    """One customer's postings, every one confirmed: customer, contract, two invoices (one
    voided), a payment and a credit memo."""
    commands: list[ErpCommand] = [
        upsert_customer(),
        upsert_contract(),
        post_invoice("stripe-in_1"),
        apply_payment("stripe-pi_1", "stripe-in_1"),
        post_invoice("stripe-in_2"),
        post_credit_memo("stripe-cn_1", "stripe-in_2"),
        void_invoice("stripe-in_2"),
    ]
    return commands, [posted(c, erp_internal_id=str(i)) for i, c in enumerate(commands, start=1)]


def erp_as_posted(commands: Sequence[ErpCommand]) -> list[ErpDocument]:
    """What the ERP holds when everything in `history()` was delivered."""
    docs: dict[tuple[RecordType, str], ErpDocument] = {}
    for i, command in enumerate(commands, start=1):
        record = posting(command)
        if record.void:
            key = (record.record_type, record.external_id)
            docs[key] = docs[key].model_copy(update={"status": "voided"})
        else:
            docs[(record.record_type, record.external_id)] = erp_doc(command, str(i))
    return list(docs.values())


def altered(documents: Sequence[ErpDocument], external_id: str, **update: Any) -> list[ErpDocument]:
    """The documents, with one changed in the ERP."""
    return [d.model_copy(update=update) if d.external_id == external_id else d for d in documents]


def kinds(differences: Sequence[Any]) -> list[tuple[DifferenceKind, RecordType, str]]:
    return [(d.kind, d.record_type, d.external_id) for d in differences]


# --- pure: what ledgerflow expects ----------------------------------------------------------


def test_expected_documents_hold_amounts_currency_and_status_of_every_confirmed_document() -> None:
    commands, results = history()
    expected = expected_documents(commands, results)
    got = {
        (k[0].value, k[1]): (e.status, e.amount, e.currency, e.erp_internal_id) for k, e in expected.items()
    }
    assert got == {
        ("customer", "cust-1"): (ACTIVE, None, "USD", "1"),
        ("salesOrder", "clm-ctr_1"): (POSTED, 68000, "USD", "2"),
        ("invoice", "stripe-in_1"): (POSTED, 10720, "USD", "3"),
        ("customerPayment", "stripe-pi_1"): (POSTED, 10720, "USD", "4"),
        # Voided, with the amount it was posted with and its posting's ERP id.
        ("invoice", "stripe-in_2"): ("voided", 10720, "USD", "5"),
        ("creditMemo", "stripe-cn_1"): (POSTED, 1080, "USD", "6"),
    }
    voided = expected[(INVOICE, "stripe-in_2")]
    assert (voided.idempotency_key, voided.correlation_id) == (
        "void_invoice-stripe-in_2",
        "corr-void_invoice-stripe-in_2",
    )
    assert all(e.settled and e.customer_id == "cust-1" for e in expected.values())


def test_only_documents_whose_result_says_posted_are_expected() -> None:
    refused, pending, retried = (
        post_invoice("stripe-in_7"),
        post_invoice("stripe-in_8"),
        post_invoice("stripe-in_9"),
    )
    commands = [refused, pending, retried]
    # The sink's later result of a key is its last word: failed, then posted on a retry.
    results = [failed(refused), failed(retried), posted(retried, "99")]
    expected = expected_documents(commands, results)
    assert list(expected) == [(INVOICE, "stripe-in_9")]
    assert expected[(INVOICE, "stripe-in_9")].erp_internal_id == "99"
    assert set(commanded_documents(commands)) == {(INVOICE, f"stripe-in_{n}") for n in (7, 8, 9)}


def test_the_latest_confirmed_upsert_of_a_customer_is_the_expectation() -> None:
    first = upsert_customer(currency="USD")
    renamed = upsert_customer(currency="EUR", correlation_id="corr-2")
    renamed = renamed.model_copy(update={"idempotency_key": "upsert_customer-cust-1-v2"})
    gone = renamed.model_copy(
        update={
            "idempotency_key": "upsert_customer-cust-1-v3",
            "document": renamed.document.model_copy(update={"deleted": True}),
        }
    )
    expected = expected_documents([first, renamed, gone], [posted(first), posted(renamed), failed(gone)])
    customer = expected[(CUSTOMER, "cust-1")]
    assert (customer.currency, customer.correlation_id, customer.status) == ("EUR", "corr-2", ACTIVE)
    # The deletion failed: the customer must exist, but its content is not compared meanwhile.
    assert customer.settled is False
    confirmed = expected_documents([first, gone], [posted(first), posted(gone)])
    assert (confirmed[(CUSTOMER, "cust-1")].status, confirmed[(CUSTOMER, "cust-1")].settled) == (
        INACTIVE,
        True,
    )


def test_a_void_without_a_confirmed_posting_expects_nothing() -> None:
    void = void_invoice("stripe-in_1")
    assert expected_documents([void], [posted(void)]) == {}


# --- pure: the differences ------------------------------------------------------------------


def test_everything_as_posted_is_a_clean_match() -> None:
    commands, results = history()
    expected = expected_documents(commands, results)
    documents = erp_as_posted(commands)
    assert compare(expected, documents, commanded=commanded_documents(commands)) == []
    counts = {
        c.record_type: (c.expected, c.in_erp, c.matched, c.differences)
        for c in count_by_type(expected, documents, [])
    }
    assert counts[INVOICE] == (2, 2, 2, 0) and counts[RecordType.SALES_ORDER] == (1, 1, 1, 0)


def test_a_posted_document_absent_from_the_erp_is_missing() -> None:
    commands, results = history()
    documents = [d for d in erp_as_posted(commands) if d.record_type is not PAYMENT]
    [diff] = compare(expected_documents(commands, results), documents)
    assert (diff.kind, diff.record_type, diff.external_id, diff.field) == (
        DifferenceKind.MISSING,
        PAYMENT,
        "stripe-pi_1",
        "document",
    )
    assert (diff.ledgerflow, diff.erp, diff.customer_id, diff.correlation_id) == (
        "posted as ERP id 4",
        "absent",
        "cust-1",
        "corr-apply_payment-stripe-pi_1",
    )


def test_a_document_ledgerflow_never_commanded_is_extra() -> None:
    commands, results = history()
    stranger = post_invoice("manual-7")
    unconfirmed = post_invoice("stripe-in_5")
    documents = [
        *erp_as_posted(commands),
        erp_doc(stranger, "70"),
        erp_doc(unconfirmed, "71"),  # commanded, result not in yet: not extra
        ErpDocument(
            record_type=INVOICE, external_id=None, erp_internal_id="72", status="open", total=5, body={}
        ),
    ]
    expected = expected_documents(commands, results)
    commanded = commanded_documents([*commands, unconfirmed])
    differences = compare(expected, documents, commanded=commanded)
    assert kinds(differences) == [(DifferenceKind.EXTRA, INVOICE, "manual-7")]
    assert (differences[0].ledgerflow, differences[0].erp, differences[0].customer_id) == (
        "never commanded",
        "1 document(s): ERP id 70",
        None,
    )
    # Only for the record types asked about.
    assert compare(expected, documents, commanded=commanded, record_types=[CUSTOMER]) == []


def test_extra_is_not_judged_for_documents_older_than_the_commands_history() -> None:
    old = erp_doc(post_invoice("stripe-in_old"), "80", created=T0 - timedelta(days=30))
    new = erp_doc(post_invoice("stripe-in_new"), "81", created=T0 + timedelta(hours=2))
    differences = compare({}, [old, new], horizon=T0)
    assert kinds(differences) == [(DifferenceKind.EXTRA, INVOICE, "stripe-in_new")]
    assert len(compare({}, [old, new])) == 2


def test_an_altered_total_is_an_amount_difference_in_minor_units() -> None:
    commands, results = history()
    documents = altered(erp_as_posted(commands), "stripe-in_1", total=9999)
    [diff] = compare(expected_documents(commands, results), documents)
    assert (diff.kind, diff.external_id, diff.field, diff.ledgerflow, diff.erp) == (
        DifferenceKind.AMOUNT_DIFFERENT,
        "stripe-in_1",
        "total",
        "10720 USD",
        "9999 USD",
    )


def test_a_payment_amount_is_compared_too() -> None:
    payment = apply_payment()
    [diff] = compare(expected_documents([payment], [posted(payment)]), [erp_doc(payment, amount=10000)])
    assert (diff.kind, diff.field, diff.ledgerflow, diff.erp) == (
        DifferenceKind.AMOUNT_DIFFERENT,
        "amount",
        "10720 USD",
        "10000 USD",
    )


@pytest.mark.parametrize(
    ("commanded", "erp_status_", "ours", "theirs"),
    [
        ("void", "open", "voided", POSTED),  # the void never took effect
        ("post", "voided", POSTED, "voided"),  # voided in the ERP behind ledgerflow's back
        ("post", "draft", POSTED, "draft"),  # created but never booked (a Business Central draft)
        ("void", "Canceled", "voided", None),  # Business Central's cancel is the void
        ("post", "paidInFull", POSTED, None),  # any booked status is posted: no difference
    ],
)
def test_status_differences(commanded: str, erp_status_: str, ours: str, theirs: str | None) -> None:
    invoice = post_invoice()
    commands: list[ErpCommand] = [invoice] if commanded == "post" else [invoice, void_invoice()]
    expected = expected_documents(commands, [posted(c) for c in commands])
    differences = compare(expected, [erp_doc(invoice, status=erp_status_)])
    if theirs is None:
        assert differences == []
        return
    [diff] = differences
    assert (diff.kind, diff.field, diff.ledgerflow, diff.erp) == (
        DifferenceKind.STATUS_DIFFERENT,
        "status",
        ours,
        theirs,
    )


def test_a_voided_documents_amount_is_not_compared() -> None:
    invoice, void = post_invoice(), void_invoice()
    expected = expected_documents([invoice, void], [posted(invoice), posted(void)])
    assert compare(expected, [erp_doc(invoice, status="voided", total=0)]) == []


def test_a_customer_made_inactive_in_the_erp_is_a_status_difference() -> None:
    customer = upsert_customer()
    expected = expected_documents([customer], [posted(customer)])
    [diff] = compare(expected, [erp_doc(customer, isInactive=True)])
    assert (diff.kind, diff.ledgerflow, diff.erp) == (DifferenceKind.STATUS_DIFFERENT, ACTIVE, INACTIVE)
    assert erp_status(erp_doc(customer)) == ACTIVE


def test_a_different_currency_is_reported_apart_from_the_amount() -> None:
    invoice = post_invoice()
    expected = expected_documents([invoice], [posted(invoice)])
    [diff] = compare(expected, [erp_doc(invoice, currency="EUR")])
    assert (diff.kind, diff.ledgerflow, diff.erp) == (DifferenceKind.CURRENCY_DIFFERENT, "USD", "EUR")


def test_two_erp_documents_with_one_external_reference_are_a_duplicate() -> None:
    invoice = post_invoice()
    expected = expected_documents([invoice], [posted(invoice)])
    # Business Central keeps no unique key: a second create made a twin.
    twins = [erp_doc(invoice, n) for n in ("11", "12")]
    [diff] = compare(expected, twins)
    assert (diff.kind, diff.external_id, diff.ledgerflow, diff.erp, diff.customer_id) == (
        DifferenceKind.DUPLICATE,
        "stripe-in_1",
        "1 document",
        "2 documents: ERP id 11, 12",
        "cust-1",
    )
    # Twins of a document whose command is not confirmed yet are duplicates all the same.
    [diff] = compare({}, twins, commanded=commanded_documents([invoice]))
    assert (diff.kind, diff.correlation_id) == (DifferenceKind.DUPLICATE, "corr-post_invoice-stripe-in_1")


def test_a_document_in_flight_must_exist_but_its_content_is_not_compared() -> None:
    first = upsert_customer(currency="USD")
    update = upsert_customer(currency="EUR").model_copy(
        update={"idempotency_key": "upsert_customer-cust-1-v2"}
    )
    expected = expected_documents([first, update], [posted(first)])
    assert compare(expected, [erp_doc(update)]) == []  # the update may or may not have landed
    assert kinds(compare(expected, [])) == [(DifferenceKind.MISSING, CUSTOMER, "cust-1")]


def test_every_kind_at_once_comes_sorted_by_record_type_and_external_id() -> None:
    commands, results = history()
    documents = [d for d in erp_as_posted(commands) if d.external_id != "stripe-pi_1"]
    documents = altered(documents, "stripe-in_1", total=1)
    documents.append(erp_doc(post_invoice("manual-1"), "90"))
    documents.append(erp_doc(commands[5], "91"))  # a twin of the credit memo
    differences = compare(expected_documents(commands, results), documents)
    assert kinds(differences) == [
        (DifferenceKind.EXTRA, INVOICE, "manual-1"),
        (DifferenceKind.AMOUNT_DIFFERENT, INVOICE, "stripe-in_1"),
        (DifferenceKind.MISSING, PAYMENT, "stripe-pi_1"),
        (DifferenceKind.DUPLICATE, RecordType.CREDIT_MEMO, "stripe-cn_1"),
    ]


def test_history_horizon_is_set_only_when_retention_cut_the_commands() -> None:
    def record(partition: int, offset: int, at: datetime) -> RawRecord:
        return RawRecord(COMMANDS, partition, offset, at, b"cust-1", b"{}")

    records = [record(0, 0, T0), record(1, 40, T0 + timedelta(days=2)), record(1, 41, T0 + timedelta(days=3))]
    assert history_horizon(records, {0: 0, 1: 0}) is None
    assert history_horizon(records, {0: 0, 1: 40}, slack=timedelta(hours=1)) == T0 + timedelta(
        days=2, hours=1
    )


# --- pure: exceptions -----------------------------------------------------------------------


def test_a_difference_becomes_a_reconciliation_exception_with_a_stable_id() -> None:
    commands, results = history()
    expected = expected_documents(commands, results)
    [diff] = compare(expected, altered(erp_as_posted(commands), "stripe-in_1", total=9999))
    exc = difference_exception(diff, T0)
    assert exc.reason is ExceptionReason.RECONCILIATION_DIFFERENCE
    assert (exc.customer_id, exc.entity_id, exc.correlation_id, exc.severity) == (
        "cust-1",
        "stripe-in_1",
        "corr-post_invoice-stripe-in_1",
        Severity.ERROR,
    )
    assert exc.message == (
        "invoice stripe-in_1: amount differs (minor units): ledgerflow 10720 USD; ERP 9999 USD"
    )
    assert [(f.field, f.problem) for f in exc.fields] == [
        ("total", "amount_different: ledgerflow 10720 USD; ERP 9999 USD")
    ]
    # The same difference on a later run has the same id; another kind of the same document not.
    [later] = compare(expected, altered(erp_as_posted(commands), "stripe-in_1", total=1))
    assert difference_exception(later, T0 + timedelta(hours=1)).exception_id == exc.exception_id
    missing = compare(expected, [])[0]
    assert difference_exception(missing, T0).exception_id != exc.exception_id
    # No personal data: the customer's name and e-mail never reach the message.
    dump = codec.dumps(exc).decode()
    assert "Acme" not in dump and "@" not in dump
    assert codec.loads(BusinessException, codec.dumps(exc)) == exc


def test_an_extra_document_has_no_customer_and_a_stable_correlation() -> None:
    [diff] = compare({}, [erp_doc(post_invoice("manual-7"), "70")])
    exc = difference_exception(diff, T0)
    assert (exc.customer_id, exc.entity_id, exc.severity) == (None, "manual-7", Severity.WARNING)
    assert exc.correlation_id == difference_exception(diff, T0 + timedelta(days=1)).correlation_id


def test_rerun_updates_open_exceptions_and_resolves_those_that_are_gone() -> None:
    commands, results = history()
    expected = expected_documents(commands, results)
    documents = erp_as_posted(commands)
    tampered = altered(documents, "stripe-in_1", total=1)
    first, judged = judge(expected, tampered[1:], {}, list(RecordType), None)  # and the customer gone
    raised, resolved = reconciliation_exceptions(first, judged, {}, T0)
    assert [e.attempts for e in raised] == [1, 1] and resolved == []
    previous = {e.exception_id: e for e in raised}
    # An hour later the customer is back; the amount is still wrong.
    later = T0 + timedelta(hours=1)
    second, judged = judge(expected, tampered, {}, list(RecordType), None)
    raised, resolved = reconciliation_exceptions(second, judged, previous, later)
    [amount] = raised
    assert (amount.first_seen, amount.last_seen, amount.attempts) == (T0, later, 2)
    [fixed] = resolved
    assert (fixed.entity_id, fixed.status, fixed.first_seen, fixed.last_seen) == (
        "cust-1",
        ExceptionStatus.RESOLVED,
        T0,
        later,
    )
    # A document that was not judged this run (here: no longer in the commands' history) keeps
    # its exception open.
    extra = compare({}, [erp_doc(post_invoice("manual-7"), "70")])
    opened, _ = reconciliation_exceptions(extra, set(), {}, T0)
    _, judged = judge({}, [erp_doc(post_invoice("manual-7"), "70", created=T0)], {}, list(RecordType), T0)
    assert reconciliation_exceptions([], judged, {e.exception_id: e for e in opened}, later) == ([], [])


# --- pure: the report -----------------------------------------------------------------------


def sample_report() -> ReconcileReport:
    commands, results = history()
    expected = expected_documents(commands, results)
    documents = [d for d in erp_as_posted(commands) if d.external_id != "stripe-pi_1"]
    documents = altered(documents, "stripe-in_1", total=9999)
    differences = compare(expected, documents)
    return ReconcileReport(
        run_id="20260301T120000Z-abc123",
        started_at=T0,
        erp_mode="netsuite",
        commands_read=9,
        results_read=8,
        unreadable=0,
        unconfirmed=1,
        counts=count_by_type(expected, documents, differences),
        differences=differences,
        exceptions_raised=2,
    )


def test_report_renders_counts_and_differences_as_a_table() -> None:
    text = sample_report().render()
    lines = text.splitlines()
    assert (
        lines[0]
        == "reconcile 20260301T120000Z-abc123 (ERP netsuite, 2026-03-01 12:00:00 UTC): 2 difference(s)"
    )
    assert "record type      expected  in ERP  matched  in flight  differences" in lines
    assert "invoice                 2       2        1          0            1" in lines
    assert "customerPayment         1       0        0          0            1" in lines
    assert any(
        line.startswith("amount_different  invoice          stripe-in_1  total     10720 USD")
        for line in lines
    )
    assert any(
        line.startswith("missing           customerPayment  stripe-pi_1  document  posted as ERP id 4")
        for line in lines
    )
    assert lines[-1] == "2 exception(s) raised to ledgerflow.exceptions, 0 resolved"


def test_report_json_is_complete_and_carries_no_document_body() -> None:
    data = sample_report().to_json()
    assert (data["clean"], data["by_kind"]) == (False, {"amount_different": 1, "missing": 1})
    [amount, missing] = data["differences"]
    assert amount["expected"]["amount"] == 10720 and amount["erp_documents"][0]["total"] == 9999
    assert missing["erp_documents"] == []
    assert orjson.loads(orjson.dumps(data)) == data
    assert "ap@acme.test" not in orjson.dumps(data).decode()


def test_reconcile_is_a_ledgerflow_command_and_documents_its_exit_status() -> None:
    from streams.cli.main import cli

    assert cli.commands["reconcile"] is reconcile_command
    result = CliRunner().invoke(reconcile_command, ["--help"])
    assert result.exit_code == 0
    assert "1  differences found" in result.output and "--raise / --no-raise" in result.output


# --- the scheduled run ----------------------------------------------------------------------


async def test_the_timer_runs_a_raising_reconciliation_and_survives_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import agents.reconcile as scheduled

    calls: list[tuple[Settings, bool]] = []
    report = sample_report()

    async def fake(s: Settings, *, raise_exceptions: bool) -> ReconcileReport:
        calls.append((s, raise_exceptions))
        return report

    monkeypatch.setattr(scheduled, "reconcile", fake)
    assert await scheduled.reconcile_with_erp() is report
    assert calls == [(scheduled.settings, True)]

    async def broken(s: Settings, *, raise_exceptions: bool) -> ReconcileReport:
        raise httpx.ConnectError("refused")

    monkeypatch.setattr(scheduled, "reconcile", broken)
    assert await scheduled.reconcile_with_erp() is None


# --- a real sandbox ERP and a real broker ---------------------------------------------------


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[SandboxServer]:
    async with SandboxServer(sandbox_config(tmp_path / "erp.sqlite3")) as server:
        yield server


def isolated(bootstrap: str, sandbox: SandboxServer, mode: str = "netsuite") -> Settings:
    bc = sandbox.config.business_central
    return Settings(
        kafka_bootstrap=bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
        erp_base_url=sandbox.url,
        erp_token=SecretStr(DEFAULT_TOKEN),
        erp_mode=mode,
        bc_tenant=bc.tenant,
        bc_environment=bc.environment,
    )


async def create_topics(s: Settings, *names: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(s.topic(n), num_partitions=2, replication_factor=1) for n in names]
        )
    finally:
        await admin.close()


async def read_all(s: Settings, name: str) -> list[RawRecord]:
    async with KafkaLink(s, timeout=20) as link:
        return await link.read_to_end(s.topic(name))


async def deliver_and_record(
    s: Settings, commands: Sequence[ErpCommand], refused: Sequence[ErpCommand] = ()
) -> None:
    """Deliver the commands to the ERP with the real client, and write them and their results
    to the topics as stage 2 and the sink would; `refused` are commanded but FAILED."""
    results = []
    client = erp_client(s)
    try:
        for command in commands:
            receipt = await client.deliver(command)
            results.append(
                PostingResult(
                    idempotency_key=command.idempotency_key,
                    command=command.command,  # type: ignore[attr-defined]
                    customer_id=command.customer_id,
                    correlation_id=command.correlation_id,
                    outcome=PostingOutcome.POSTED,
                    erp_internal_id=receipt.erp_internal_id,
                    document_number=receipt.document_number,
                    posted_at=datetime.now(UTC),
                )
            )
    finally:
        await client.aclose()
    everything = [*commands, *refused]
    results += [failed(c) for c in refused]

    def outgoing(model: Any, c: ErpCommand) -> tuple[str, bytes, dict[str, str]]:
        return (c.customer_id, codec.dumps(model), {h.CORRELATION_ID: c.correlation_id})

    await produce(s.bootstrap, s.topic(COMMANDS), [outgoing(c, c) for c in everything])
    await produce(
        s.bootstrap, s.topic(RESULTS), [outgoing(r, c) for r, c in zip(results, everything, strict=True)]
    )


async def alter_total(admin: httpx.AsyncClient, external_id: str, by: str) -> None:
    """Change an invoice's first line as a user in NetSuite's UI would (NetSuite computes the
    total from the lines; it has no total to set)."""
    view = (await admin.get("/admin/documents")).json()
    [doc] = [d for d in view["documents"] if (d["record_type"], d["external_id"]) == ("invoice", external_id)]
    items = _decimals(doc["body"]["item"]["items"])
    line = items[0]
    amount = line["amount"] + Decimal(by)
    items[0] = {**line, "amount": amount, "rate": amount / line.get("quantity", 1)}
    patched = await admin.patch(
        f"/admin/documents/invoice/{external_id}",
        content=netsuite.dumps({"item": {"items": items}}),
        headers={"content-type": "application/json"},
    )
    assert patched.status_code == 200, patched.text


def _decimals(value: Any) -> Any:
    """JSON numbers read back as NetSuite keeps them: decimals, never floats."""
    if isinstance(value, float | int) and not isinstance(value, bool):
        return Decimal(str(value))
    if isinstance(value, list):
        return [_decimals(v) for v in value]
    if isinstance(value, dict):
        return {k: _decimals(v) for k, v in value.items()}
    return value


async def test_reconcile_finds_a_deleted_and_an_altered_document_and_raises_them(
    kafka_bootstrap: str, sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = isolated(kafka_bootstrap, sandbox)
    await create_topics(s, COMMANDS, RESULTS, EXCEPTIONS)
    commands: list[ErpCommand] = [
        upsert_customer(),
        post_invoice("stripe-in_1"),
        apply_payment("stripe-pi_1", "stripe-in_1"),
        post_invoice("stripe-in_2"),
        post_invoice("stripe-in_3"),
        void_invoice("stripe-in_3"),
    ]
    await deliver_and_record(s, commands, refused=[post_invoice("stripe-in_9")])

    clean = await reconcile(s, raise_exceptions=True, timeout=20)
    assert clean.clean, clean.render()
    assert (clean.commands_read, clean.results_read, clean.unconfirmed) == (7, 7, 1)
    counts = {c.record_type: (c.expected, c.in_erp, c.matched) for c in clean.counts}
    assert counts[INVOICE] == (3, 3, 3) and counts[PAYMENT] == (1, 1, 1) and counts[CUSTOMER] == (1, 1, 1)
    assert await read_all(s, EXCEPTIONS) == []

    # Behind ledgerflow's back: a payment deleted, an invoice's total changed.
    async with httpx.AsyncClient(base_url=sandbox.url, timeout=5) as admin:
        assert (await admin.delete("/admin/documents/customerPayment/stripe-pi_1")).status_code == 200
        await alter_total(admin, "stripe-in_2", "-7.21")  # 107.20 → 99.99

        ticks: list[int] = []
        report = await reconcile(s, raise_exceptions=True, tick=ticks.append, timeout=20)
        assert kinds(report.differences) == [
            (DifferenceKind.AMOUNT_DIFFERENT, INVOICE, "stripe-in_2"),
            (DifferenceKind.MISSING, PAYMENT, "stripe-pi_1"),
        ]
        assert [(d.ledgerflow, d.erp) for d in report.differences] == [
            ("10720 USD", "9999 USD"),
            # The sandbox's ids on a fresh database; a payment's number is not read back.
            ("posted as ERP id 3", "absent"),
        ]
        assert sum(ticks) == 8 and report.exceptions_raised == 2

        produced = await read_all(s, EXCEPTIONS)
        assert len(produced) == 2
        by_entity = {codec.loads(BusinessException, r.value or b"").entity_id: r for r in produced}
        for diff in report.differences:
            record = by_entity[diff.external_id]
            exc = codec.loads(BusinessException, record.value or b"")
            assert (exc.reason, exc.exception_id, exc.customer_id, exc.correlation_id) == (
                ExceptionReason.RECONCILIATION_DIFFERENCE,
                diff.exception_id,
                "cust-1",
                diff.correlation_id,
            )
            assert record.key == b"cust-1"
            assert record.header(h.CORRELATION_ID) == diff.correlation_id
            assert record.header(h.CAUSATION_ID) == f"reconcile:{report.run_id}"

        # The invoice is put right: its exception is resolved, the missing payment's updated.
        await alter_total(admin, "stripe-in_2", "7.21")
    again = await reconcile(s, raise_exceptions=True, timeout=20)
    assert kinds(again.differences) == [(DifferenceKind.MISSING, PAYMENT, "stripe-pi_1")]
    assert (again.exceptions_raised, again.exceptions_resolved) == (1, 1)
    latest = {
        e.exception_id: e
        for e in (codec.loads(BusinessException, r.value or b"") for r in await read_all(s, EXCEPTIONS))
    }
    assert len(latest) == 2
    amount_id, missing_id = (d.exception_id for d in report.differences)
    assert latest[amount_id].status is ExceptionStatus.RESOLVED
    assert (latest[missing_id].status, latest[missing_id].attempts) == (ExceptionStatus.OPEN, 2)
    assert latest[missing_id].first_seen == report.started_at

    # The command line: a table or JSON, the JSON also to a file, exit status 1, nothing raised.
    monkeypatch.setattr("streams.settings.settings", s)
    out = tmp_path / "report.json"
    result = await asyncio.to_thread(
        CliRunner().invoke, reconcile_command, ["--json", "--no-raise", "--out", str(out)]
    )
    assert result.exit_code == 1, result.output
    data = orjson.loads(result.stdout)
    assert [(d["kind"], d["external_id"]) for d in data["differences"]] == [("missing", "stripe-pi_1")]
    assert orjson.loads(out.read_bytes())["differences"] == data["differences"]
    assert len(await read_all(s, EXCEPTIONS)) == 4  # two, then one raised and one resolved
    table = await asyncio.to_thread(CliRunner().invoke, reconcile_command, ["--no-raise"])
    assert table.exit_code == 1
    assert any(
        line.split()[:3] == ["missing", "customerPayment", "stripe-pi_1"]
        for line in table.stdout.splitlines()
    )


async def test_business_central_duplicates_are_found_through_its_listing(
    kafka_bootstrap: str, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = isolated(kafka_bootstrap, sandbox, mode="business-central")
    await create_topics(s, COMMANDS, RESULTS, EXCEPTIONS)
    invoice = post_invoice("stripe-in_1")
    await deliver_and_record(s, [upsert_customer(), invoice])
    clean = await reconcile(s, raise_exceptions=False, timeout=20)
    assert clean.clean, clean.render()

    # A create that the sink could not see land, made again without the lookup: the ERP now
    # books it twice (Business Central does not enforce unique external document numbers).
    client = erp_client(s)
    assert isinstance(client, BusinessCentralClient)
    try:
        client._entities.clear()
        await client.deliver(invoice, uncertain=False)
    finally:
        await client.aclose()
    report = await reconcile(s, raise_exceptions=False, timeout=20)
    assert kinds(report.differences) == [(DifferenceKind.DUPLICATE, INVOICE, "stripe-in_1")]
    assert report.exceptions_raised == 0 and await read_all(s, EXCEPTIONS) == []

    monkeypatch.setattr("streams.settings.settings", s)
    result = await asyncio.to_thread(CliRunner().invoke, reconcile_command, ["--no-raise"])
    assert result.exit_code == 1 and "duplicate" in result.stdout


async def test_reconcile_refuses_to_run_without_the_topics(
    kafka_bootstrap: str, sandbox: SandboxServer
) -> None:
    from streams.operations.reconcile import ReconcileError

    s = isolated(kafka_bootstrap, sandbox)
    with pytest.raises(ReconcileError, match="does not exist"):
        await reconcile(s, timeout=20)
