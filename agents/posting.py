"""Stage 2: canonical events → invoice state → validated ERP posting commands.

`decide_invoice` holds the rules and is pure; `build_posting_commands` only loops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from agents.batching import batches, group_by_key
from agents.contracts import InvoiceGate, apply_contract_change, gate_invoice, overdue_gaps
from agents.customers import decide_customer
from agents.duplicates import fingerprints
from agents.outbox import Outbox, send_exception, send_to_dlq
from agents.validation import Problem, ResolvedInvoice, validate_invoice
from canonical import (
    ApplyPayment,
    BusinessException,
    ChangeEvent,
    Contract,
    CreditMemo,
    CreditMemoStatus,
    CrmWriteback,
    Customer,
    ErpCommand,
    ErpCreditMemo,
    ErpInvoice,
    ErpInvoiceLine,
    ErpPayment,
    ExceptionReason,
    FieldError,
    Invoice,
    InvoiceStatus,
    MessageRef,
    Payment,
    PaymentStatus,
    PostCreditMemo,
    PostingOutcome,
    PostingResult,
    PostInvoice,
    UpsertCustomer,
    VoidInvoice,
    codec,
    to_external_id,
    writeback_for,
)
from streams import headers as h
from streams import metrics
from streams.app import app
from streams.mappings import Mappings, load_mappings
from streams.schemas import Undecodable
from streams.settings import settings
from streams.topics import (
    core_inputs_topic,
    crm_writeback_topic,
    customer_fingerprints_topic,
    erp_commands_topic,
)
from tables.contracts import ContractRow, CustomerContracts, contract_table
from tables.customers import CustomerMaster, customer_table
from tables.invoices import (
    SEEN_EVENT_IDS_KEPT,
    CustomerInvoices,
    InvoiceErpStatus,
    InvoiceRow,
    WaitingChange,
    invoice_table,
)

STAGE = "core"  # `ledgerflow worker --stages …` runs this module's agents and timers or not

if TYPE_CHECKING:
    from faust.types import EventT, StreamT

log = logging.getLogger(__name__)

POSTABLE = frozenset({InvoiceStatus.OPEN, InvoiceStatus.PAID, InvoiceStatus.UNCOLLECTIBLE})

_I = InvoiceStatus
# Which invoice status may follow which (Stripe's lifecycle). A snapshot of a lower lifecycle
# rank is stale (late delivery) and ignored; one of equal or higher rank that is not listed here
# is an illegal transition and becomes an exception.
INVOICE_TRANSITIONS: dict[InvoiceStatus, frozenset[InvoiceStatus]] = {
    _I.DRAFT: frozenset({_I.DRAFT, _I.OPEN, _I.PAID, _I.VOID, _I.UNCOLLECTIBLE}),
    _I.OPEN: frozenset({_I.OPEN, _I.PAID, _I.VOID, _I.UNCOLLECTIBLE}),
    _I.UNCOLLECTIBLE: frozenset({_I.UNCOLLECTIBLE, _I.PAID, _I.VOID}),
    _I.PAID: frozenset({_I.PAID}),
    _I.VOID: frozenset({_I.VOID}),
}
RETRY_VALIDATION = frozenset({InvoiceErpStatus.NOT_SENT, InvoiceErpStatus.HELD})
CONFIRMED = frozenset({InvoiceErpStatus.POSTED, InvoiceErpStatus.VOID_PENDING, InvoiceErpStatus.VOIDED})
VOIDABLE = frozenset({InvoiceErpStatus.PENDING, InvoiceErpStatus.POSTED})


class Outcome(StrEnum):
    DUPLICATE = "duplicate"
    STALE = "stale"
    APPLIED = "applied"
    COMMANDED = "commanded"
    HELD = "held"
    WAITING = "waiting"  # for its contract
    IGNORED = "ignored"  # an entity stage 2 does not book yet
    ILLEGAL = "illegal"  # a transition the lifecycle does not allow: an exception


@dataclass
class InvoiceDecision:
    outcome: Outcome
    row: InvoiceRow
    commands: list[ErpCommand] = field(default_factory=list)
    exceptions: list[BusinessException] = field(default_factory=list)


def invoice_external_id(invoice: Invoice) -> str:
    return to_external_id("stripe", invoice.invoice_id)


def posting_key(command: str, external_id: str) -> str:
    """The idempotency key: one per business document and action, whatever the retries."""
    return to_external_id(command, external_id)


def to_posting_command(
    invoice: Invoice,
    customer_id: str,
    resolved: ResolvedInvoice,
    correlation_id: str,
    now: datetime,
    customer_erp_id: str | None = None,
) -> PostInvoice:
    """A validated invoice → the ERP-ready `PostInvoice` (amounts stay in minor units)."""
    external_id = invoice_external_id(invoice)
    lines = tuple(
        ErpInvoiceLine(
            line_no=i,
            item=item.item,
            gl_account=item.gl_account,
            description=line.description,
            quantity=line.quantity,
            amount=line.amount,
            tax_code=codes[0] if codes else None,
            tax_amount=line.tax_amount,
        )
        for i, (line, item, codes) in enumerate(
            zip(invoice.lines, resolved.items, resolved.tax_codes, strict=True), start=1
        )
    )
    return PostInvoice(
        idempotency_key=posting_key("post_invoice", external_id),
        customer_id=customer_id,
        correlation_id=correlation_id,
        subsidiary=resolved.subsidiary.id,
        issued_at=now,
        document=ErpInvoice(
            external_id=external_id,
            customer_external_id=customer_id,
            customer_erp_id=customer_erp_id,
            billing_invoice_id=invoice.invoice_id,
            subsidiary=resolved.subsidiary.id,
            currency=invoice.currency,
            tran_date=invoice.issued_at.date(),
            due_date=invoice.due_at.date() if invoice.due_at else None,
            memo=invoice.number,
            lines=lines,
            subtotal=invoice.subtotal,
            discount_total=invoice.discount_total,
            tax_total=invoice.tax_total,
            shipping_total=invoice.shipping_total,
            total=invoice.total,
        ),
    )


def _held(
    change: ChangeEvent,
    invoice: Invoice,
    problems: list[Problem],
    now: datetime,
    offending: MessageRef | None,
) -> list[BusinessException]:
    return [
        BusinessException(
            # One id per invoice and reason: a re-raise updates the same exception.
            exception_id=h.stable_id("exception", p.reason.value, change.customer_id, invoice.invoice_id),
            reason=p.reason,
            message=f"invoice {invoice.invoice_id} held: {p.message}",
            fields=p.fields,
            customer_id=change.customer_id,
            entity_id=invoice.invoice_id,
            correlation_id=change.correlation_id,
            first_seen=now,
            last_seen=now,
            offending=offending,
        )
        for p in problems
    ]


def decide_invoice(
    row: InvoiceRow | None,
    change: ChangeEvent,
    mappings: Mappings,
    now: datetime,
    offending: MessageRef | None = None,
    contract: ContractRow | None = None,
    replay: bool = False,
    customer_erp_id: str | None = None,
    customer_subsidiary: str | None = None,
) -> InvoiceDecision:
    """Apply one invoice snapshot to its row: dedup, ordering, contract gate, validation,
    commands. `contract` is the row of the contract the invoice names, if known; `replay`
    says an operator re-drove this event after a fix, so having seen it is no reason to skip."""
    invoice = change.payload
    assert isinstance(invoice, Invoice)
    if row is not None and change.event_id in row.seen_event_ids and not replay:
        return InvoiceDecision(Outcome.DUPLICATE, row)
    seen = ((row.seen_event_ids if row else ()) + (change.event_id,))[-SEEN_EVENT_IDS_KEPT:]
    if row is not None and change.entity_version < row.version:
        # An older snapshot arriving late never overwrites a newer one.
        return InvoiceDecision(Outcome.STALE, row.model_copy(update={"seen_event_ids": seen}))

    if row is not None and invoice.status not in INVOICE_TRANSITIONS[row.status]:
        exc = BusinessException(
            exception_id=h.stable_id(
                "exception",
                "invoice_transition",
                change.customer_id,
                invoice.invoice_id,
                invoice.status.value,
            ),
            reason=ExceptionReason.ILLEGAL_TRANSITION,
            message=f"invoice {invoice.invoice_id}: {row.status.value} → {invoice.status.value} "
            "is not a legal transition",
            fields=(
                FieldError(
                    field="status", problem=f"{row.status.value} cannot become {invoice.status.value}"
                ),
            ),
            customer_id=change.customer_id,
            entity_id=invoice.invoice_id,
            correlation_id=change.correlation_id,
            first_seen=now,
            last_seen=now,
            offending=offending,
        )
        return InvoiceDecision(Outcome.ILLEGAL, row.model_copy(update={"seen_event_ids": seen}), [], [exc])

    outcome = Outcome.APPLIED
    subsidiary = row.subsidiary if row else None
    commands: list[ErpCommand] = []
    exceptions: list[BusinessException] = []
    erp_status = row.erp_status if row else InvoiceErpStatus.NOT_SENT
    key = row.idempotency_key if row else None
    exception_ids = row.exception_ids if row else ()

    if invoice.status in POSTABLE and erp_status in RETRY_VALIDATION:
        gate = gate_invoice(invoice, contract)
        if gate is InvoiceGate.WAIT:
            return InvoiceDecision(Outcome.WAITING, row)  # type: ignore[arg-type]
        if gate is not InvoiceGate.OPEN:
            reason = (
                ExceptionReason.CONTRACT_TERMINATED
                if gate is InvoiceGate.TERMINATED
                else (ExceptionReason.CONTRACT_NOT_ACTIVE)
            )
            problem = f"contract {invoice.contract_id} is not in force on {invoice.issued_at.date()}"
            problems = [Problem(reason, (FieldError(field="contract_id", problem=problem),))]
            resolved = None
        else:
            resolved, problems = validate_invoice(invoice, mappings, customer_subsidiary)
        if resolved is not None:
            command = to_posting_command(
                invoice, change.customer_id, resolved, change.correlation_id, now, customer_erp_id
            )
            commands.append(command)
            outcome, erp_status, key, exception_ids = (
                Outcome.COMMANDED,
                InvoiceErpStatus.PENDING,
                command.idempotency_key,
                (),
            )
            subsidiary = resolved.subsidiary.id
        else:
            exceptions = _held(change, invoice, problems, now, offending)
            outcome, erp_status = Outcome.HELD, InvoiceErpStatus.HELD
            exception_ids = tuple(e.exception_id for e in exceptions)
    elif invoice.status is InvoiceStatus.VOID and erp_status in VOIDABLE and key is not None:
        external_id = invoice_external_id(invoice)
        commands.append(
            VoidInvoice(
                idempotency_key=posting_key("void_invoice", external_id),
                customer_id=change.customer_id,
                correlation_id=change.correlation_id,
                subsidiary=row.subsidiary if row and row.subsidiary else _subsidiary_of(invoice, mappings),
                issued_at=now,
                invoice_external_id=external_id,
                invoice_erp_id=row.erp_internal_id if row else None,
            )
        )
        outcome, erp_status = Outcome.COMMANDED, InvoiceErpStatus.VOID_PENDING

    new_row = InvoiceRow(
        invoice_id=invoice.invoice_id,
        status=invoice.status,
        version=change.entity_version,
        currency=invoice.currency,
        total=invoice.total,
        settled=row.settled if row else 0,
        erp_status=erp_status,
        idempotency_key=key,
        document_number=row.document_number if row else None,
        erp_internal_id=row.erp_internal_id if row else None,
        subsidiary=subsidiary,
        exception_ids=exception_ids,
        seen_event_ids=seen,
    )
    return InvoiceDecision(outcome, new_row, commands, exceptions)


def _confirmed(row: InvoiceRow, result: PostingResult) -> InvoiceRow:
    """An invoice row after the ERP's answer to its PostInvoice or VoidInvoice."""
    if result.outcome is not PostingOutcome.POSTED:
        return row.model_copy(update={"erp_status": InvoiceErpStatus.FAILED})
    status = InvoiceErpStatus.VOIDED if result.command == "void_invoice" else InvoiceErpStatus.POSTED
    if row.erp_status is InvoiceErpStatus.VOID_PENDING and result.command == "post_invoice":
        status = (
            InvoiceErpStatus.VOID_PENDING
        )  # a late confirmation of the post: the void is still on its way
    return row.model_copy(
        update={
            "erp_status": status,
            "document_number": result.document_number or row.document_number,
            "erp_internal_id": result.erp_internal_id or row.erp_internal_id,
        }
    )


def _subsidiary_of(invoice: Invoice, mappings: Mappings) -> str:
    # The invoice was posted, so its subsidiary resolved then; mappings may have moved since,
    # and the void must go to the entity that booked it.
    subsidiary = mappings.subsidiary_for(invoice.customer_country, invoice.currency)
    return subsidiary.id if subsidiary else "unmapped"


def _ref(event: EventT, change: ChangeEvent | None) -> MessageRef:
    msg = event.message
    return MessageRef(
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        key=event.key if isinstance(event.key, str) else None,
        event_id=change.event_id if change else None,
    )


@dataclass
class CustomerBook:
    """One customer's stage-2 state for a batch: read once, changed in memory, written once.
    Everything it decides to send is collected, with the event that caused it."""

    customer_id: str
    docs: CustomerInvoices
    contracts: dict[str, ContractRow]
    master: CustomerMaster | None
    mappings: Mappings
    commands: list[tuple[ErpCommand, str]] = field(default_factory=list)
    exceptions: list[tuple[BusinessException, str]] = field(default_factory=list)
    writebacks: list[tuple[CrmWriteback, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.invoices = dict(self.docs.invoices)
        self.waiting = list(self.docs.waiting)
        self.payments = dict(self.docs.payments)
        self.credit_memos = dict(self.docs.credit_memos)
        self.confirmed = dict(self.docs.confirmed)

    def state(self) -> CustomerInvoices:
        return CustomerInvoices(
            customer_id=self.customer_id,
            invoices=self.invoices,
            waiting=tuple(self.waiting),
            payments=self.payments,
            credit_memos=self.credit_memos,
            confirmed=self.confirmed,
        )

    def apply(
        self, change: ChangeEvent, now: datetime, offending: MessageRef | None = None, replay: bool = False
    ) -> str:
        payload = change.payload
        if isinstance(payload, Customer):
            customer = decide_customer(self.master, change, self.mappings, now)
            self.master = customer.master
            if customer.upsert is not None:
                self.commands.append((customer.upsert, change.event_id))
            outcome = Outcome.DUPLICATE.value if customer.duplicate else Outcome.APPLIED.value
        elif isinstance(payload, Contract):
            decision = apply_contract_change(self.contracts.get(payload.contract_id), change, now)
            if decision.row is not None:
                self.contracts[payload.contract_id] = decision.row
            self.exceptions += [(e, change.event_id) for e in decision.exceptions]
            outcome = decision.outcome.value
        elif isinstance(payload, Invoice | Payment | CreditMemo):
            outcome = self._document(change, now, offending, replay).value
        else:
            return Outcome.IGNORED.value  # subscriptions and refunds book nothing yet
        self._retry_waiting(now)
        return outcome

    def _blocker(self, change: ChangeEvent) -> str | None:
        """What this document waits for before it may go to the ERP, if anything."""
        doc = change.payload
        if isinstance(doc, Invoice):
            row = self.invoices.get(doc.invoice_id)
            if doc.status not in POSTABLE or (row is not None and row.erp_status not in RETRY_VALIDATION):
                return None
            if self.master is None or self.master.erp_internal_id is None:
                return "customer"  # no invoice before the ERP confirmed its customer exists
            contract = self.contracts.get(doc.contract_id) if doc.contract_id else None
            if doc.contract_id and gate_invoice(doc, contract) is InvoiceGate.WAIT:
                return f"contract:{doc.contract_id}"
            return None
        invoice_id = doc.invoice_id if isinstance(doc, Payment | CreditMemo) else None
        if invoice_id is None or (isinstance(doc, Payment) and doc.status is not PaymentStatus.SUCCEEDED):
            return None
        row = self.invoices.get(invoice_id)
        if row is None or row.erp_status not in CONFIRMED:
            return f"invoice:{invoice_id}"  # no payment or credit before the ERP confirmed the invoice
        return None

    def apply_result(self, result: PostingResult, now: datetime) -> str:
        """What the ERP confirmed (or refused) for one of this customer's commands: its ids
        go into the rows, and documents waiting for that confirmation are released."""
        posted = result.outcome is PostingOutcome.POSTED
        if result.command == "upsert_customer":
            if posted and self.master is not None and self.master.erp_internal_id != result.erp_internal_id:
                self.master = self.master.model_copy(update={"erp_internal_id": result.erp_internal_id})
        elif result.command in ("post_invoice", "void_invoice"):
            for invoice_id, row in self.invoices.items():
                external_id = to_external_id("stripe", invoice_id)
                if result.idempotency_key in (row.idempotency_key, posting_key("void_invoice", external_id)):
                    self.invoices[invoice_id] = _confirmed(row, result)
        elif posted and result.erp_internal_id is not None:
            self.confirmed[result.idempotency_key] = result.erp_internal_id
        # What the ERP confirmed goes back to the CRM account (ERP ids, invoice and payment status).
        crm_account_id = self.master.record.crm_account_id if self.master is not None else None
        writeback = writeback_for(result, crm_account_id)
        if writeback is not None:
            self.writebacks.append((writeback, result.idempotency_key))
        self._retry_waiting(now)
        return f"result_{result.outcome.value}"

    def _document(
        self, change: ChangeEvent, now: datetime, offending: MessageRef | None, replay: bool = False
    ) -> Outcome:
        if any(w.change.event_id == change.event_id for w in self.waiting):
            return Outcome.DUPLICATE
        blocker = self._blocker(change)
        if blocker is not None:
            self.waiting.append(
                WaitingChange(change=change, waits_for=blocker, parked_at=now, offending=offending)
            )
            return Outcome.WAITING
        doc = change.payload
        if isinstance(doc, Invoice):
            contract = self.contracts.get(doc.contract_id) if doc.contract_id else None
            decision = decide_invoice(
                self.invoices.get(doc.invoice_id),
                change,
                self.mappings,
                now,
                offending,
                contract,
                replay,
                self._customer_erp_id(),
                self.master.subsidiary if self.master is not None else None,
            )
            if decision.row is not None:
                self.invoices[doc.invoice_id] = decision.row
            self.commands += [(c, change.event_id) for c in decision.commands]
            self.exceptions += [(e, change.event_id) for e in decision.exceptions]
            return decision.outcome
        if isinstance(doc, Payment):
            return self._payment(change, doc, now)
        assert isinstance(doc, CreditMemo)
        return self._credit_memo(change, doc, now)

    def _payment(self, change: ChangeEvent, payment: Payment, now: datetime) -> Outcome:
        if payment.status is not PaymentStatus.SUCCEEDED or payment.invoice_id is None or payment.amount == 0:
            return Outcome.IGNORED  # a failed attempt, or unapplied cash: nothing to book yet
        if payment.payment_id in self.payments:
            return Outcome.DUPLICATE
        row = self.invoices[payment.invoice_id]
        command = payment_command(
            payment, self.customer_id, row, change.correlation_id, now, self._customer_erp_id()
        )
        self._settle(row, command.document.applied)
        self.payments[payment.payment_id] = command.idempotency_key
        self.commands.append((command, change.event_id))
        return Outcome.COMMANDED

    def _credit_memo(self, change: ChangeEvent, memo: CreditMemo, now: datetime) -> Outcome:
        if memo.status is not CreditMemoStatus.ISSUED:
            return Outcome.IGNORED
        if memo.credit_memo_id in self.credit_memos:
            return Outcome.DUPLICATE
        row = self.invoices[memo.invoice_id]
        command = credit_memo_command(
            memo, self.customer_id, row, change.correlation_id, now, self._customer_erp_id()
        )
        self._settle(row, command.document.applied)
        self.credit_memos[memo.credit_memo_id] = command.idempotency_key
        self.commands.append((command, change.event_id))
        return Outcome.COMMANDED

    def _settle(self, row: InvoiceRow, applied: int | None) -> None:
        if applied:
            self.invoices[row.invoice_id] = row.model_copy(update={"settled": row.settled + applied})

    def _customer_erp_id(self) -> str | None:
        """The ERP's internal id of this customer, once the ERP confirmed it (the sink then
        references it without looking it up)."""
        return self.master.erp_internal_id if self.master is not None else None

    def _retry_waiting(self, now: datetime) -> None:
        """Release, in arrival order, every waiting document whose prerequisite is now met."""
        progress = True
        while progress and self.waiting:
            progress = False
            for waiting in list(self.waiting):
                if self._blocker(waiting.change) is None:
                    self.waiting.remove(waiting)
                    self._document(waiting.change, now, waiting.offending)
                    progress = True


def _against_invoice(
    command: str,
    source_id: str,
    invoice: InvoiceRow,
    customer_id: str,
    correlation_id: str,
    now: datetime,
    customer_erp_id: str | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The envelope and document fields every command against a posted invoice shares: it
    books to the entity that booked the invoice."""
    external_id = to_external_id("stripe", source_id)
    subsidiary = invoice.subsidiary or "unmapped"
    envelope = {
        "idempotency_key": posting_key(command, external_id),
        "customer_id": customer_id,
        "correlation_id": correlation_id,
        "subsidiary": subsidiary,
        "issued_at": now,
    }
    document = {
        "external_id": external_id,
        "customer_external_id": customer_id,
        "invoice_external_id": to_external_id("stripe", invoice.invoice_id),
        "customer_erp_id": customer_erp_id,
        "invoice_erp_id": invoice.erp_internal_id,
        "subsidiary": subsidiary,
    }
    return envelope, document


def payment_command(
    payment: Payment,
    customer_id: str,
    invoice: InvoiceRow,
    correlation_id: str,
    now: datetime,
    customer_erp_id: str | None = None,
) -> ApplyPayment:
    envelope, document = _against_invoice(
        "apply_payment", payment.payment_id, invoice, customer_id, correlation_id, now, customer_erp_id
    )
    return ApplyPayment(
        **envelope,
        document=ErpPayment(
            **document,
            currency=payment.currency,
            amount=payment.amount,
            applied=_applicable(payment.amount, invoice),
            tran_date=payment.received_at.date(),
            source=payment,
        ),
    )


def credit_memo_command(
    memo: CreditMemo,
    customer_id: str,
    invoice: InvoiceRow,
    correlation_id: str,
    now: datetime,
    customer_erp_id: str | None = None,
) -> PostCreditMemo:
    envelope, document = _against_invoice(
        "post_credit_memo", memo.credit_memo_id, invoice, customer_id, correlation_id, now, customer_erp_id
    )
    return PostCreditMemo(
        **envelope,
        document=ErpCreditMemo(
            **document,
            currency=memo.currency,
            tran_date=memo.issued_at.date(),
            subtotal=memo.subtotal,
            tax_total=memo.tax_total,
            total=memo.total,
            applied=_applicable(memo.total, invoice),
        ),
    )


def _applicable(amount: int, invoice: InvoiceRow) -> int:
    """How much of a payment or credit can apply to the invoice: what remains due on it as far
    as stage 2 knows (its total less what earlier payments and credits applied)."""
    return max(0, min(amount, invoice.total - invoice.settled))


async def _post_one(
    outbox: Outbox, book: CustomerBook, customer_id: str, event: EventT, now: datetime, counts: dict[str, int]
) -> None:
    """One message of the customer's batch into its book."""
    change = event.value
    if isinstance(change, PostingResult | ChangeEvent) and change.customer_id != customer_id:
        # Stage 1 and the sink key by customer id: another key would mix two customers' rows.
        await send_to_dlq(outbox, event, "misrouted: the message key is not its customer_id")
        return
    if isinstance(change, PostingResult):
        outcome = book.apply_result(change, now)
        counts[outcome] = counts.get(outcome, 0) + 1
        return
    if not isinstance(change, ChangeEvent):
        reason = change.reason if isinstance(change, Undecodable) else type(change).__name__
        await send_to_dlq(outbox, event, f"undecodable canonical event: {reason}")
        return
    replay = h.header(event.headers, h.REPLAY_OF) is not None
    outcome = book.apply(change, now, _ref(event, change), replay)
    counts[outcome] = counts.get(outcome, 0) + 1
    metrics.stage2_outcome(change.entity_type, outcome)


async def post_customer_changes(
    outbox: Outbox, customer_id: str, events: list[EventT], mappings: Mappings, now: datetime
) -> dict[str, int]:
    """One customer's events of a batch, in order: read its rows once, stage them once."""
    counts: dict[str, int] = {}
    first, last = events[0], events[-1]
    docs = outbox.get(invoice_table, customer_id, CustomerInvoices, first) or CustomerInvoices(
        customer_id=customer_id
    )
    contracts = outbox.get(contract_table, customer_id, CustomerContracts, first) or CustomerContracts(
        customer_id=customer_id
    )
    master = outbox.get(customer_table, customer_id, CustomerMaster, first)
    book = CustomerBook(customer_id, docs, dict(contracts.contracts), master, mappings)
    decided_on: list[int | None] = []  # per command: when the message it was decided on was ready
    for event in events:
        emitted = len(book.commands)
        await _post_one(outbox, book, customer_id, event, now, counts)
        decided_on += [metrics.ready_ms(event)] * (len(book.commands) - emitted)
    stamps = metrics.source_stamps(events, docs.waiting) if book.commands else {}
    for (command, causation), ready in zip(book.commands, decided_on, strict=True):
        # A document released by a later message (its customer's, its invoice's or the ERP's
        # confirmation of them) was ready when that message was.
        source = metrics.stamp(stamps.get(causation), ready)
        await outbox.send(
            erp_commands_topic, customer_id, command, h.outgoing(command.correlation_id, causation, **source)
        )
        if isinstance(command, UpsertCustomer):
            # Re-keyed by fingerprint, so customers that look alike meet in one partition.
            for fp in fingerprints(command.document, customer_id, command.correlation_id):
                await outbox.send(
                    customer_fingerprints_topic, fp.fingerprint, fp, h.outgoing(fp.correlation_id, causation)
                )
    for exc, causation in book.exceptions:
        await send_exception(outbox, exc, causation)
    for writeback, causation in book.writebacks:
        headers = h.outgoing(writeback.correlation_id, causation)
        await outbox.send(crm_writeback_topic, writeback.crm_account_id, writeback, headers)
    state = book.state()
    if state != docs:
        outbox.put(invoice_table, customer_id, state, last)
    if book.contracts != contracts.contracts:
        rows = CustomerContracts(customer_id=customer_id, contracts=book.contracts)
        outbox.put(contract_table, customer_id, rows, last)
    if book.master is not None and book.master != master:
        outbox.put(customer_table, customer_id, book.master, last)
    metrics.stage2_emitted(book.commands, book.exceptions, stamps)
    return counts


@app.agent(core_inputs_topic)
async def build_posting_commands(stream: StreamT[Any]) -> None:
    """`ledgerflow.canonical` and `erp.results` → the customer's tables → `erp.commands` /
    `ledgerflow.exceptions`."""
    # Read once at start: a broken mappings file stops the agent here, loudly, instead of
    # sending every event to the DLQ.
    mappings = load_mappings(settings.mappings)
    async for events in batches(stream):
        now = datetime.now(UTC)
        outbox = Outbox()
        for customer_id, customer_events in group_by_key(events).items():
            if customer_id is None:
                for event in customer_events:
                    await send_to_dlq(outbox, event, "canonical event without a customer key")
                continue
            try:
                await post_customer_changes(outbox, customer_id, customer_events, mappings, now)
            except Exception as exc:
                # A bug must not stop the partition: the events go to the DLQ with the error
                # type, to be replayed after a fix.
                log.exception("posting failed", extra={"customer_id": customer_id})
                for event in customer_events:
                    await send_to_dlq(outbox, event, f"internal_error: {type(exc).__name__}")
        await outbox.commit()


_raised_overdue: set[str] = set()


WAIT_REASONS = {
    "customer": (
        ExceptionReason.CUSTOMER_INCOMPLETE,
        "its customer is not complete enough to exist in the ERP",
    ),
    "contract": (ExceptionReason.CONTRACT_NOT_ACTIVE, "no signed contract with this id has arrived"),
    "invoice": (ExceptionReason.INVOICE_NOT_POSTED, "the invoice it applies to has not been posted"),
}


def overdue_waiting_invoices(
    book: CustomerInvoices, now: datetime, timeout_s: float
) -> list[BusinessException]:
    """Documents that waited longer than allowed for what must come first (they keep waiting)."""
    out = []
    for w in book.waiting:
        if (now - w.parked_at).total_seconds() < timeout_s:
            continue
        kind = w.waits_for.split(":", 1)[0]
        reason, problem = WAIT_REASONS[kind]
        out.append(
            BusinessException(
                exception_id=h.stable_id(
                    "exception", "wait", book.customer_id, w.change.entity_id, w.waits_for
                ),
                reason=reason,
                message=f"{w.change.entity_type.value} {w.change.entity_id} waits for {w.waits_for} since "
                f"{w.parked_at.isoformat()}",
                fields=(FieldError(field=kind, problem=problem),),
                customer_id=book.customer_id,
                entity_id=w.change.entity_id,
                correlation_id=w.change.correlation_id,
                first_seen=w.parked_at,
                last_seen=now,
            )
        )
    return out


@app.timer(interval=60.0)
async def raise_overdue_waits() -> None:
    """Early amendments whose predecessor never came, and invoices whose contract never came,
    become exceptions after LEDGERFLOW_PARK_TIMEOUT_S (once per worker process)."""
    now = datetime.now(UTC)
    found: list[BusinessException] = []
    for _key, raw in list(contract_table.items()):
        for row in codec.loads(CustomerContracts, raw).contracts.values():
            found += overdue_gaps(row, now, settings.park_timeout_s)
    waiting = 0
    for _key, raw in list(invoice_table.items()):
        docs = codec.loads(CustomerInvoices, raw)
        waiting += len(docs.waiting)
        found += overdue_waiting_invoices(docs, now, settings.park_timeout_s)
    metrics.set_parked("core", waiting)
    outbox = Outbox()
    fresh = [exc for exc in found if exc.exception_id not in _raised_overdue]
    for exc in fresh:
        await send_exception(outbox, exc, "timer:overdue-waits")
    await outbox.commit()
    _raised_overdue.update(exc.exception_id for exc in fresh)
