"""`ledgerflow reconcile`: what ledgerflow posted, per its own topics, against what the ERP holds.

What ledgerflow believes was posted follows from two topics: `erp.commands` carries every
command with its document, `erp.results` the sink's outcome per idempotency key. A document is
expected in the ERP once a command for it was confirmed POSTED; its latest confirmed command
says what it should hold (a void makes it "voided"). Commands that FAILED are not expected:
they are exceptions already. Every ERP document of the record types ledgerflow writes is then
listed and compared: missing, extra, duplicated, and amount, status or currency different.

The three reads run in this order, so that traffic during a run cannot pass for a difference:
results, then the ERP, then commands. A POSTED result was written after its document reached
the ERP, so every document the results vouch for was there when the ERP was listed; and a
document in the ERP was commanded before it was written, so the commands read last name every
document that was listed. A document whose latest command is not confirmed yet is in flight:
it must exist if an earlier command was confirmed, but its content is not compared.

Reading is bounded, as in `ledgerflow replay` (whose Kafka reader this reuses): each topic is
read to the end offsets it had when the read began. Deriving and comparing are pure; each
difference becomes a `reconciliation_difference` exception whose id is stable per kind and
document, so a later run updates it (and resolves it once the difference is gone).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import Any

from pydantic import TypeAdapter, ValidationError

from canonical import codec
from canonical.commands import (
    AnyErpCommand,
    ApplyPayment,
    ErpCommand,
    PostCreditMemo,
    PostingOutcome,
    PostingResult,
    PostInvoice,
    UpsertContract,
    UpsertCustomer,
    VoidInvoice,
)
from canonical.exceptions import (
    BusinessException,
    ExceptionReason,
    ExceptionStatus,
    FieldError,
    Severity,
)
from connectors.erp import ClientCredentialsToken, ErpDocument, RecordType
from connectors.erp.schemas import DRAFT, VOIDED
from streams import headers as h
from streams.operations.replay import KafkaLink, RawRecord, ReplayError, latest_exceptions
from streams.settings import Settings

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 60.0
"""Longest a reconciliation spends reading one topic up to the end offsets it found."""
HISTORY_SLACK = timedelta(hours=1)
"""When retention has cut the start of `erp.commands`, ERP documents created before the
oldest command left (plus this margin for the sink's lag) cannot be judged extra."""

WRITTEN_RECORD_TYPES: tuple[RecordType, ...] = tuple(RecordType)
"""The record types ledgerflow writes (`posting`), in report order."""

POSTED = "posted"
ACTIVE = "active"
CANCELED = "canceled"
INACTIVE = "inactive"
"""Statuses as compared: documents are posted, voided or draft; customers active or inactive."""

DocumentKey = tuple[RecordType, str]
"""(record type, external id): one ERP document as ledgerflow names it."""
Tick = Callable[[int], None]

_COMMANDS: TypeAdapter[Any] = TypeAdapter(AnyErpCommand)


class DifferenceKind(StrEnum):
    MISSING = "missing"
    """Posted per `erp.results`, absent from the ERP."""
    EXTRA = "extra"
    """In the ERP under an external id ledgerflow never commanded."""
    DUPLICATE = "duplicate"
    """Several ERP documents with one key of ledgerflow's (Business Central keeps no unique one)."""
    STATUS_DIFFERENT = "status_different"
    AMOUNT_DIFFERENT = "amount_different"
    CURRENCY_DIFFERENT = "currency_different"


SEVERITY = {
    DifferenceKind.MISSING: Severity.ERROR,
    DifferenceKind.EXTRA: Severity.WARNING,
    DifferenceKind.DUPLICATE: Severity.CRITICAL,  # books the document twice
    DifferenceKind.STATUS_DIFFERENT: Severity.ERROR,
    DifferenceKind.AMOUNT_DIFFERENT: Severity.ERROR,
    DifferenceKind.CURRENCY_DIFFERENT: Severity.ERROR,
}

_KIND_TEXT = {
    DifferenceKind.MISSING: "missing from the ERP",
    DifferenceKind.EXTRA: "in the ERP but never commanded by ledgerflow",
    DifferenceKind.DUPLICATE: "several ERP documents share the external id",
    DifferenceKind.STATUS_DIFFERENT: "status differs",
    DifferenceKind.AMOUNT_DIFFERENT: "amount differs (minor units)",
    DifferenceKind.CURRENCY_DIFFERENT: "currency differs",
}
_CONTENT_KINDS = (
    DifferenceKind.STATUS_DIFFERENT,
    DifferenceKind.AMOUNT_DIFFERENT,
    DifferenceKind.CURRENCY_DIFFERENT,
)


class ReconcileError(Exception):
    """The reconciliation could not read what it needs from Kafka or the ERP."""


def _no_tick(_: int) -> None:
    return None


# --- what ledgerflow expects -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expected:
    """One document ledgerflow posted, as its latest confirmed command describes it."""

    record_type: RecordType
    external_id: str
    status: str
    amount: int | None
    """Document total or payment amount in minor units of `currency`; None for customers."""
    currency: str | None
    customer_id: str
    correlation_id: str
    idempotency_key: str
    """Of the latest confirmed command on the document."""
    erp_internal_id: str | None = None
    document_number: str | None = None
    settled: bool = True
    """False while a later command on the document awaits its result (in flight, or failed
    and parked): the document must exist, but its content is not compared."""

    @property
    def key(self) -> DocumentKey:
        return (self.record_type, self.external_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "amount": self.amount,
            "currency": self.currency,
            "idempotency_key": self.idempotency_key,
            "erp_internal_id": self.erp_internal_id,
            "document_number": self.document_number,
            "settled": self.settled,
        }


@dataclass(frozen=True, slots=True)
class Posting:
    """What a command writes, whichever ERP: the record, its amount in minor units (a
    document's total, a payment's amount; None for a customer) and currency, or a void."""

    record_type: RecordType
    external_id: str
    amount: int | None
    currency: str | None
    void: bool = False


def posting(command: ErpCommand) -> Posting:
    if isinstance(command, UpsertCustomer):
        return Posting(RecordType.CUSTOMER, command.external_id, None, command.document.currency)
    if isinstance(command, UpsertContract):
        contract = command.document
        total = sum(line.quantity * line.unit_amount for line in contract.lines)
        return Posting(RecordType.SALES_ORDER, command.external_id, total, contract.currency)
    if isinstance(command, PostInvoice):
        doc = command.document
        return Posting(RecordType.INVOICE, doc.external_id, doc.total, doc.currency)
    if isinstance(command, ApplyPayment):
        payment = command.document
        return Posting(RecordType.CUSTOMER_PAYMENT, payment.external_id, payment.amount, payment.currency)
    if isinstance(command, PostCreditMemo):
        memo = command.document
        return Posting(RecordType.CREDIT_MEMO, memo.external_id, memo.total, memo.currency)
    if isinstance(command, VoidInvoice):
        return Posting(RecordType.INVOICE, command.invoice_external_id, None, None, void=True)
    raise TypeError(f"no ERP record for command type {type(command).__name__}")


def _content_status(command: ErpCommand, current: Expected | None) -> str:
    if isinstance(command, UpsertCustomer):
        return INACTIVE if command.document.deleted else ACTIVE
    # An upsert of a voided document leaves it voided (the body carries no status).
    return VOIDED if current is not None and current.status == VOIDED else POSTED


def expected_documents(
    commands: Iterable[ErpCommand], results: Iterable[PostingResult]
) -> dict[DocumentKey, Expected]:
    """The documents the ERP should hold, from commands and results in log order.

    One customer's commands and results share a partition, so log order is their order; the
    latest result per idempotency key is the sink's last word on that command."""
    outcome = {r.idempotency_key: r for r in results}  # the later result of a key wins
    expected: dict[DocumentKey, Expected] = {}
    for command in commands:
        record = posting(command)
        key = (record.record_type, record.external_id)
        current = expected.get(key)
        result = outcome.get(command.idempotency_key)
        if result is None or result.outcome is not PostingOutcome.POSTED:
            if current is not None:
                expected[key] = replace(current, settled=False)
            continue
        if record.void:
            if current is not None:  # a void never creates: nothing to expect without a posting
                expected[key] = replace(
                    current,
                    status=VOIDED,
                    correlation_id=command.correlation_id,
                    idempotency_key=command.idempotency_key,
                )
            continue
        expected[key] = Expected(
            record_type=record.record_type,
            external_id=record.external_id,
            status=_content_status(command, current),
            amount=record.amount,
            currency=record.currency,
            customer_id=command.customer_id,
            correlation_id=command.correlation_id,
            idempotency_key=command.idempotency_key,
            erp_internal_id=result.erp_internal_id,
            document_number=result.document_number,
        )
    return expected


def commanded_documents(commands: Iterable[ErpCommand]) -> dict[DocumentKey, ErpCommand]:
    """Every document ledgerflow ever commanded (confirmed or not), with its latest command."""
    out: dict[DocumentKey, ErpCommand] = {}
    for command in commands:
        record = posting(command)
        out[(record.record_type, record.external_id)] = command
    return out


def history_horizon(
    records: Iterable[RawRecord], beginnings: Mapping[int, int], slack: timedelta = HISTORY_SLACK
) -> datetime | None:
    """Since when `erp.commands` is complete: None if no partition lost its start to retention,
    else the latest of the truncated partitions' oldest record times, plus `slack`."""
    truncated = {p for p, offset in beginnings.items() if offset > 0}
    if not truncated:
        return None
    oldest: dict[int, datetime] = {}
    for record in records:
        if record.partition in truncated and record.timestamp is not None:
            seen = oldest.get(record.partition)
            oldest[record.partition] = record.timestamp if seen is None else min(seen, record.timestamp)
    if not oldest:
        return datetime.max.replace(tzinfo=UTC)  # truncated and nothing left: judge nothing
    return max(oldest.values()) + slack


# --- what the ERP holds, and the differences -------------------------------------------------


def erp_status(document: ErpDocument) -> str:
    """The document's status as compared: posted, voided or draft; active or inactive."""
    status = (document.status or "").lower()
    if document.record_type is RecordType.CUSTOMER:
        # NetSuite's isInactive; Business Central's customer blocked for everything.
        blocked = document.body.get("isInactive") is True or document.body.get("blocked") == "All"
        return INACTIVE if blocked or status == INACTIVE else ACTIVE
    if status == CANCELED:  # Business Central's canceled invoice: the void ledgerflow made
        return VOIDED
    if status in (VOIDED, DRAFT):
        return status
    return POSTED


def created_at(document: ErpDocument) -> datetime | None:
    """When the ERP created the document (NetSuite `createdDate`, OData `createdDateTime`)."""
    raw = document.body.get("createdDate") or document.body.get("createdDateTime")
    try:
        parsed = datetime.fromisoformat(str(raw)) if raw else None
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed is not None and parsed.tzinfo is not None else None


def _money(amount: int | None, currency: str | None) -> str:
    return "none" if amount is None else f"{amount} {currency or '?'}"


def _ids(documents: Sequence[ErpDocument]) -> str:
    return ", ".join(d.erp_internal_id for d in documents)


@dataclass(frozen=True, slots=True)
class Difference:
    """One way the ERP disagrees with ledgerflow about one document."""

    kind: DifferenceKind
    record_type: RecordType
    external_id: str
    field: str
    """What differs: `document`, `externalId`, `status`, `total`/`amount`, `currency`."""
    ledgerflow: str
    """What ledgerflow says, for people (amounts in minor units with their currency)."""
    erp: str
    """What the ERP holds, in the same form."""
    customer_id: str | None = None
    correlation_id: str | None = None
    expected: Expected | None = None
    documents: tuple[ErpDocument, ...] = ()

    @property
    def exception_id(self) -> str:
        return exception_id_for(self.kind, (self.record_type, self.external_id))

    def describe(self) -> str:
        return (
            f"{self.record_type.value} {self.external_id}: {_KIND_TEXT[self.kind]}: "
            f"ledgerflow {self.ledgerflow}; ERP {self.erp}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "record_type": self.record_type.value,
            "external_id": self.external_id,
            "field": self.field,
            "ledgerflow": self.ledgerflow,
            "erp": self.erp,
            "customer_id": self.customer_id,
            "correlation_id": self.correlation_id,
            "exception_id": self.exception_id,
            "expected": self.expected.to_json() if self.expected else None,
            # Never the body: it holds names and e-mail addresses.
            "erp_documents": [
                {
                    "erp_internal_id": d.erp_internal_id,
                    "document_number": d.document_number,
                    "status": d.status,
                    "total": d.total,
                    "currency": d.currency,
                }
                for d in self.documents
            ],
        }


def exception_id_for(kind: DifferenceKind, key: DocumentKey) -> str:
    """Stable per kind and document: a later run updates the exception instead of adding one."""
    reason = ExceptionReason.RECONCILIATION_DIFFERENCE.value
    return h.stable_id("exception", reason, kind.value, key[0].value, key[1])


def _primary(documents: Sequence[ErpDocument], status: str) -> ErpDocument:
    # Of duplicates, compare the one in the expected status, else a booked one before a draft.
    for document in documents:
        if erp_status(document) == status:
            return document
    return next((d for d in documents if erp_status(d) != DRAFT), documents[0])


def _content_differences(expected: Expected, documents: Sequence[ErpDocument]) -> list[Difference]:
    doc = _primary(documents, expected.status)
    found: list[Difference] = []

    def differs(kind: DifferenceKind, field_name: str, ours: str, theirs: str) -> None:
        found.append(
            Difference(
                kind,
                expected.record_type,
                expected.external_id,
                field_name,
                ours,
                theirs,
                expected.customer_id,
                expected.correlation_id,
                expected,
                (doc,),
            )
        )

    status = erp_status(doc)
    if status != expected.status:
        differs(DifferenceKind.STATUS_DIFFERENT, "status", expected.status, status)
    if expected.currency is not None and (doc.currency or "").upper() != expected.currency.upper():
        differs(DifferenceKind.CURRENCY_DIFFERENT, "currency", expected.currency, doc.currency or "none")
    # A voided document's amounts are not compared: some ERPs zero them on void.
    if expected.amount is not None and expected.status != VOIDED and doc.total != expected.amount:
        name = "amount" if expected.record_type is RecordType.CUSTOMER_PAYMENT else "total"
        differs(
            DifferenceKind.AMOUNT_DIFFERENT,
            name,
            _money(expected.amount, expected.currency),
            _money(doc.total, doc.currency),
        )
    return found


def in_ledgerflow_ids(
    documents: Sequence[ErpDocument],
    commanded: Iterable[DocumentKey],
    key: Callable[[RecordType, str], str] | None,
) -> list[ErpDocument]:
    """The ERP's documents named by ledgerflow's external ids, where the ERP keeps another key
    of ours (Business Central: `key` maps an external id to it); a document whose key no command
    made keeps the ERP's, and is judged extra."""
    if key is None:
        return list(documents)
    names = {(rt, key(rt, eid)): eid for rt, eid in commanded}
    return [
        d.model_copy(update={"external_id": names.get((d.record_type, d.external_id), d.external_id)})
        if d.external_id is not None
        else d
        for d in documents
    ]


def judge(
    expected: Mapping[DocumentKey, Expected],
    erp_documents: Iterable[ErpDocument],
    commanded: Mapping[DocumentKey, ErpCommand],
    record_types: Iterable[RecordType],
    horizon: datetime | None,
) -> tuple[list[Difference], set[str]]:
    """`compare`, and the exception ids of every (kind, document) it judged: an open exception
    of a document that was not judged (in flight, or beyond the commands' history) stays open."""
    found: dict[DocumentKey, list[ErpDocument]] = defaultdict(list)
    for document in erp_documents:
        if document.external_id is not None:  # ledgerflow writes every document with one
            found[(document.record_type, document.external_id)].append(document)
    types = list(record_types)
    order = {rt: i for i, rt in enumerate(WRITTEN_RECORD_TYPES)}
    differences: list[Difference] = []
    judged: set[str] = set()
    for key in sorted(set(expected) | set(found), key=lambda k: (order[k[0]], k[1])):
        rt, external_id = key
        documents = tuple(found.get(key, ()))
        exp = expected.get(key)
        command = commanded.get(key)
        if exp is not None:
            judged.update(
                exception_id_for(k, key) for k in (DifferenceKind.MISSING, DifferenceKind.DUPLICATE)
            )
            if not documents:
                ours = f"posted as ERP id {exp.erp_internal_id}"
                ours += f" ({exp.document_number})" if exp.document_number else ""
                differences.append(
                    Difference(
                        DifferenceKind.MISSING,
                        rt,
                        external_id,
                        "document",
                        ours,
                        "absent",
                        exp.customer_id,
                        exp.correlation_id,
                        exp,
                    )
                )
                continue
            if exp.settled:
                judged.update(exception_id_for(k, key) for k in _CONTENT_KINDS)
                differences += _content_differences(exp, documents)
        elif command is not None:
            judged.add(exception_id_for(DifferenceKind.DUPLICATE, key))
        else:
            judged_now = [d for d in documents if horizon is None or (created_at(d) or horizon) > horizon]
            if rt in types and judged_now:
                judged.add(exception_id_for(DifferenceKind.EXTRA, key))
                differences.append(
                    Difference(
                        DifferenceKind.EXTRA,
                        rt,
                        external_id,
                        "externalId",
                        "never commanded",
                        f"{len(documents)} document(s): ERP id {_ids(documents)}",
                        documents=documents,
                    )
                )
            continue
        if len(documents) > 1:
            who = exp or command
            assert who is not None
            differences.append(
                Difference(
                    DifferenceKind.DUPLICATE,
                    rt,
                    external_id,
                    "externalId",
                    "1 document",
                    f"{len(documents)} documents: ERP id {_ids(documents)}",
                    who.customer_id,
                    who.correlation_id,
                    exp,
                    documents,
                )
            )
    kind_order = list(DifferenceKind)
    differences.sort(key=lambda d: (order[d.record_type], d.external_id, kind_order.index(d.kind)))
    return differences, judged


def compare(
    expected: Mapping[DocumentKey, Expected],
    erp_documents: Iterable[ErpDocument],
    *,
    commanded: Mapping[DocumentKey, ErpCommand] | None = None,
    record_types: Iterable[RecordType] = WRITTEN_RECORD_TYPES,
    horizon: datetime | None = None,
) -> list[Difference]:
    """Every difference between what ledgerflow posted and the ERP's documents.

    `commanded` names the documents ledgerflow commanded without a confirmation (they are not
    extra); EXTRA is judged only for `record_types`, and, when `horizon` is set (the commands'
    history was cut by retention), only for documents the ERP created after it."""
    differences, _ = judge(expected, erp_documents, commanded or {}, record_types, horizon)
    return differences


# --- exceptions ------------------------------------------------------------------------------


def difference_exception(diff: Difference, now: datetime) -> BusinessException:
    """The difference as a `reconciliation_difference` exception (no personal data in it)."""
    correlation = diff.correlation_id or h.stable_id(
        "correlation", "reconcile", diff.record_type.value, diff.external_id
    )
    return BusinessException(
        exception_id=diff.exception_id,
        reason=ExceptionReason.RECONCILIATION_DIFFERENCE,
        severity=SEVERITY[diff.kind],
        message=diff.describe(),
        fields=(
            FieldError(
                field=diff.field, problem=f"{diff.kind.value}: ledgerflow {diff.ledgerflow}; ERP {diff.erp}"
            ),
        ),
        customer_id=diff.customer_id,
        entity_id=diff.external_id,
        correlation_id=correlation,
        first_seen=now,
        last_seen=now,
    )


def reconciliation_exceptions(
    differences: Iterable[Difference],
    judged: set[str],
    previous: Mapping[str, BusinessException],
    now: datetime,
) -> tuple[list[BusinessException], list[BusinessException]]:
    """What to produce: each difference (an open one keeps its first_seen and counts the run),
    and each open reconciliation exception whose document was judged and no longer differs,
    as resolved."""
    raised = []
    for diff in differences:
        exc = difference_exception(diff, now)
        before = previous.get(exc.exception_id)
        if before is not None:
            first_seen = before.first_seen if before.status is ExceptionStatus.OPEN else now
            exc = exc.model_copy(update={"first_seen": first_seen, "attempts": before.attempts + 1})
        raised.append(exc)
    current = {exc.exception_id for exc in raised}
    resolved = [
        exc.model_copy(update={"status": ExceptionStatus.RESOLVED, "last_seen": now})
        for exc_id, exc in sorted(previous.items())
        if exc.status is ExceptionStatus.OPEN
        and exc.reason is ExceptionReason.RECONCILIATION_DIFFERENCE
        and exc_id in judged
        and exc_id not in current
    ]
    return raised, resolved


# --- the report ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TypeCount:
    record_type: RecordType
    expected: int
    in_erp: int
    matched: int
    in_flight: int
    differences: int


def count_by_type(
    expected: Mapping[DocumentKey, Expected],
    erp_documents: Sequence[ErpDocument],
    differences: Sequence[Difference],
) -> list[TypeCount]:
    """Per record type: documents expected, in the ERP, matched (compared, no difference),
    in flight (not compared), and differences."""
    out = []
    for rt in WRITTEN_RECORD_TYPES:
        ours = [e for e in expected.values() if e.record_type is rt]
        differing = {d.external_id for d in differences if d.record_type is rt}
        out.append(
            TypeCount(
                record_type=rt,
                expected=len(ours),
                in_erp=sum(1 for d in erp_documents if d.record_type is rt),
                matched=sum(1 for e in ours if e.settled and e.external_id not in differing),
                in_flight=sum(1 for e in ours if not e.settled),
                differences=sum(1 for d in differences if d.record_type is rt),
            )
        )
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> list[str]:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    return [
        "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)
        ).rstrip()
        for row in (header, *rows)
    ]


@dataclass
class ReconcileReport:
    """One reconciliation: counts per record type, and every difference found."""

    run_id: str
    started_at: datetime
    erp_mode: str
    commands_read: int
    results_read: int
    unreadable: int
    unconfirmed: int
    """Documents commanded without a POSTED result (failed, parked or in flight): not expected."""
    counts: list[TypeCount]
    differences: list[Difference]
    horizon: datetime | None = None
    raise_exceptions: bool = True
    exceptions_raised: int = 0
    exceptions_resolved: int = 0
    exceptions: list[BusinessException] = field(default_factory=list)
    """What was produced to `ledgerflow.exceptions` (raised, then resolved)."""

    @property
    def clean(self) -> bool:
        return not self.differences

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for diff in self.differences:
            out[diff.kind.value] = out.get(diff.kind.value, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "started_at": self.started_at.isoformat(),
            "erp_mode": self.erp_mode,
            "clean": self.clean,
            "commands_read": self.commands_read,
            "results_read": self.results_read,
            "unreadable": self.unreadable,
            "unconfirmed": self.unconfirmed,
            "history_horizon": self.horizon.isoformat() if self.horizon else None,
            "record_types": [
                {
                    "record_type": c.record_type.value,
                    "expected": c.expected,
                    "in_erp": c.in_erp,
                    "matched": c.matched,
                    "in_flight": c.in_flight,
                    "differences": c.differences,
                }
                for c in self.counts
            ],
            "by_kind": self.by_kind(),
            "differences": [d.to_json() for d in self.differences],
            "exceptions_raised": self.exceptions_raised,
            "exceptions_resolved": self.exceptions_resolved,
        }

    def render(self) -> str:
        """A readable table: counts per record type, then one line per difference."""
        found = "no differences" if self.clean else f"{len(self.differences)} difference(s)"
        lines = [
            f"reconcile {self.run_id} (ERP {self.erp_mode}, {self.started_at:%Y-%m-%d %H:%M:%S} UTC): "
            f"{found}",
            f"read {self.commands_read} commands and {self.results_read} results; "
            f"{self.unconfirmed} commanded document(s) without a posted result are not expected",
        ]
        if self.unreadable:
            lines.append(f"{self.unreadable} records could not be decoded and were left out")
        if self.horizon is not None:
            lines.append(
                f"erp.commands starts at {self.horizon:%Y-%m-%d %H:%M} UTC (retention): older ERP "
                "documents without a command are not judged extra"
            )
        lines.append("")
        lines += _table(
            ("record type", "expected", "in ERP", "matched", "in flight", "differences"),
            [
                (
                    c.record_type.value,
                    str(c.expected),
                    str(c.in_erp),
                    str(c.matched),
                    str(c.in_flight),
                    str(c.differences),
                )
                for c in self.counts
            ],
            right=(1, 2, 3, 4, 5),
        )
        if self.differences:
            lines += ["", "differences (amounts in minor units):"]
            lines += _table(
                (
                    "kind",
                    "record type",
                    "external id",
                    "field",
                    "ledgerflow",
                    "ERP",
                    "customer",
                    "correlation",
                ),
                [
                    (
                        d.kind.value,
                        d.record_type.value,
                        d.external_id,
                        d.field,
                        d.ledgerflow,
                        d.erp,
                        d.customer_id or "-",
                        d.correlation_id or "-",
                    )
                    for d in self.differences
                ],
            )
        if self.raise_exceptions:
            lines += [
                "",
                f"{self.exceptions_raised} exception(s) raised to ledgerflow.exceptions, "
                f"{self.exceptions_resolved} resolved",
            ]
        else:
            lines += ["", "no exceptions raised (--no-raise)"]
        return "\n".join(lines)


# --- Kafka and the ERP -----------------------------------------------------------------------


def progress_steps(raise_exceptions: bool) -> int:
    """Ticks a run makes: results, each record type, commands, and the exceptions if raised."""
    return 2 + len(WRITTEN_RECORD_TYPES) + (1 if raise_exceptions else 0)


def _decoded_commands(records: Iterable[RawRecord]) -> tuple[list[ErpCommand], int]:
    commands: list[ErpCommand] = []
    unreadable = 0
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        try:
            commands.append(codec.loads_any(_COMMANDS, record.value or b""))
        except ValidationError:
            unreadable += 1
    return commands, unreadable


def _decoded_results(records: Iterable[RawRecord]) -> tuple[list[PostingResult], int]:
    results: list[PostingResult] = []
    unreadable = 0
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        try:
            results.append(codec.loads(PostingResult, record.value or b""))
        except ValidationError:
            unreadable += 1
    return results, unreadable


def _contract_names() -> tuple[str, str, str]:
    # streams.topics builds the Faust app on import: only a running reconciliation needs them.
    from streams.topic_names import ERP_COMMANDS, ERP_RESULTS, EXCEPTIONS

    return ERP_COMMANDS, ERP_RESULTS, EXCEPTIONS


async def list_erp_documents(s: Settings, correlation_id: str, tick: Tick = _no_tick) -> list[ErpDocument]:
    """Every document of every record type ledgerflow writes, from the configured ERP."""
    from streams.erp import erp_client, read_with_retries, retry_policy, token_provider

    tokens = token_provider(s)
    client = erp_client(s, tokens)
    policy = retry_policy(s)
    documents: list[ErpDocument] = []
    try:
        for record_type in WRITTEN_RECORD_TYPES:
            documents += await read_with_retries(policy, partial(client.list, record_type, correlation_id))
            tick(1)
    finally:
        await client.aclose()
        if isinstance(tokens, ClientCredentialsToken):
            await tokens.aclose()
    return documents


async def _require_topics(link: KafkaLink, *topics: str) -> None:
    # A wrong prefix or bootstrap would otherwise make every ERP document look extra.
    for topic in topics:
        if not await link.partitions(topic):
            raise ReconcileError(f"topic {topic} does not exist (check LEDGERFLOW_TOPIC_PREFIX)")


async def _produce_exceptions(
    link: KafkaLink, topic: str, exceptions: Sequence[BusinessException], cause: str
) -> None:
    if not exceptions:
        return
    if not await link.partitions(topic):
        raise ReconcileError(f"topic {topic} does not exist: start a worker once, or create it")
    futures = []
    for exc in exceptions:
        key = exc.customer_id or exc.entity_id
        futures.append(
            await link.send(
                topic,
                key.encode() if key is not None else None,
                codec.dumps(exc),
                list(h.outgoing(exc.correlation_id, cause).items()),
            )
        )
    await asyncio.gather(*futures)


async def reconcile(
    s: Settings,
    *,
    raise_exceptions: bool = True,
    tick: Tick = _no_tick,
    now: datetime | None = None,
    timeout: float = READ_TIMEOUT_S,
) -> ReconcileReport:
    """Compare what `erp.commands` and `erp.results` say was posted with the ERP's documents,
    and (with `raise_exceptions`) produce each difference to `ledgerflow.exceptions`."""
    from streams.erp import erp_key

    started = (now or datetime.now(UTC)).astimezone(UTC)
    run_id = f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    cause = f"reconcile:{run_id}"
    commands_name, results_name, exceptions_name = _contract_names()
    commands_topic, results_topic = s.topic(commands_name), s.topic(results_name)
    try:
        async with KafkaLink(s, timeout) as link:
            await _require_topics(link, results_topic, commands_topic)
            # Results, then the ERP, then commands (module docstring: why this order).
            results, bad_results = _decoded_results(await link.read_to_end(results_topic))
            tick(1)
            documents = await list_erp_documents(s, cause, tick)
            command_records = await link.read_to_end(commands_topic)
            commands, bad_commands = _decoded_commands(command_records)
            partitions = await link.partitions(commands_topic)
            beginnings = await link.consumer.beginning_offsets(partitions)
            tick(1)

            horizon = history_horizon(command_records, {tp.partition: o for tp, o in beginnings.items()})
            expected = expected_documents(commands, results)
            commanded = commanded_documents(commands)
            documents = in_ledgerflow_ids(documents, commanded, erp_key(s))
            differences, judged = judge(expected, documents, commanded, WRITTEN_RECORD_TYPES, horizon)
            report = ReconcileReport(
                run_id=run_id,
                started_at=started,
                erp_mode=s.erp_mode,
                commands_read=len(command_records),
                results_read=len(results) + bad_results,
                unreadable=bad_results + bad_commands,
                unconfirmed=len(set(commanded) - set(expected)),
                counts=count_by_type(expected, documents, differences),
                differences=differences,
                horizon=horizon,
                raise_exceptions=raise_exceptions,
            )
            _log(report, cause)
            if raise_exceptions:
                exceptions_topic = s.topic(exceptions_name)
                entries, _ = latest_exceptions(await link.read_to_end(exceptions_topic))
                previous = {
                    e.exception.exception_id: e.exception
                    for e in entries
                    if e.exception.reason is ExceptionReason.RECONCILIATION_DIFFERENCE
                }
                raised, resolved = reconciliation_exceptions(differences, judged, previous, started)
                await _produce_exceptions(link, exceptions_topic, [*raised, *resolved], cause)
                report.exceptions = [*raised, *resolved]
                report.exceptions_raised, report.exceptions_resolved = len(raised), len(resolved)
                tick(1)
    except ReplayError as exc:  # the shared reader's timeout
        raise ReconcileError(str(exc)) from exc
    return report


def _log(report: ReconcileReport, cause: str) -> None:
    for diff in report.differences:
        log.warning(
            "reconciliation difference",
            extra={
                "correlation_id": diff.correlation_id or cause,
                "run_id": report.run_id,
                "kind": diff.kind.value,
                "record_type": diff.record_type.value,
                "external_id": diff.external_id,
                "customer_id": diff.customer_id,
            },
        )
    log.info(
        "reconciliation finished",
        extra={
            "correlation_id": cause,
            "differences": len(report.differences),
            "by_kind": report.by_kind(),
            "commands_read": report.commands_read,
            "results_read": report.results_read,
        },
    )


# --- command line ----------------------------------------------------------------------------

EXIT_CLEAN = 0
EXIT_DIFFERENCES = 1
EXIT_FAILED = 2
