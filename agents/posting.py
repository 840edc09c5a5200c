"""Stage 2: canonical events → invoice state → validated ERP posting commands.

`decide_invoice` holds the rules and is pure; `build_posting_commands` only loops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from agents.batching import acting_for, batches, group_by_key
from agents.outbox import send_exception, send_to_dlq
from agents.validation import Problem, ResolvedInvoice, validate_invoice
from canonical import (
    BusinessException,
    ChangeEvent,
    ErpCommand,
    ErpInvoice,
    ErpInvoiceLine,
    Invoice,
    InvoiceStatus,
    MessageRef,
    PostInvoice,
    VoidInvoice,
    to_external_id,
)
from streams import headers as h
from streams.app import app
from streams.mappings import Mappings, load_mappings
from streams.schemas import Undecodable
from streams.settings import settings
from streams.topics import canonical_topic, erp_commands_topic
from tables.invoices import (
    SEEN_EVENT_IDS_KEPT,
    CustomerInvoices,
    InvoiceErpStatus,
    InvoiceRow,
    invoice_table,
)
from tables.rows import get_row, put_row

if TYPE_CHECKING:
    from faust.types import EventT, StreamT

log = logging.getLogger(__name__)

POSTABLE = frozenset({InvoiceStatus.OPEN, InvoiceStatus.PAID, InvoiceStatus.UNCOLLECTIBLE})
RETRY_VALIDATION = frozenset({InvoiceErpStatus.NOT_SENT, InvoiceErpStatus.HELD})
VOIDABLE = frozenset({InvoiceErpStatus.PENDING, InvoiceErpStatus.POSTED})


class Outcome(StrEnum):
    DUPLICATE = "duplicate"
    STALE = "stale"
    APPLIED = "applied"
    COMMANDED = "commanded"
    HELD = "held"


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
) -> InvoiceDecision:
    """Apply one invoice snapshot to its row: dedup, ordering, validation, commands."""
    invoice = change.payload
    assert isinstance(invoice, Invoice)
    if row is not None and change.event_id in row.seen_event_ids:
        return InvoiceDecision(Outcome.DUPLICATE, row)
    seen = ((row.seen_event_ids if row else ()) + (change.event_id,))[-SEEN_EVENT_IDS_KEPT:]
    if row is not None and change.entity_version < row.version:
        # An older snapshot arriving late never overwrites a newer one.
        return InvoiceDecision(Outcome.STALE, row.model_copy(update={"seen_event_ids": seen}))

    outcome = Outcome.APPLIED
    commands: list[ErpCommand] = []
    exceptions: list[BusinessException] = []
    erp_status = row.erp_status if row else InvoiceErpStatus.NOT_SENT
    key = row.idempotency_key if row else None
    exception_ids = row.exception_ids if row else ()

    if invoice.status in POSTABLE and erp_status in RETRY_VALIDATION:
        resolved, problems = validate_invoice(invoice, mappings)
        if resolved is not None:
            command = to_posting_command(invoice, change.customer_id, resolved, change.correlation_id, now)
            commands.append(command)
            outcome, erp_status, key, exception_ids = (
                Outcome.COMMANDED,
                InvoiceErpStatus.PENDING,
                command.idempotency_key,
                (),
            )
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
                subsidiary=_subsidiary_of(invoice, mappings),
                issued_at=now,
                invoice_external_id=external_id,
            )
        )
        outcome, erp_status = Outcome.COMMANDED, InvoiceErpStatus.VOID_PENDING

    new_row = InvoiceRow(
        invoice_id=invoice.invoice_id,
        status=invoice.status,
        version=change.entity_version,
        currency=invoice.currency,
        total=invoice.total,
        erp_status=erp_status,
        idempotency_key=key,
        document_number=row.document_number if row else None,
        exception_ids=exception_ids,
        seen_event_ids=seen,
    )
    return InvoiceDecision(outcome, new_row, commands, exceptions)


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


async def post_customer_changes(
    customer_id: str, events: list[EventT], mappings: Mappings, now: datetime
) -> dict[Outcome, int]:
    """One customer's events of a batch, in order: read its row once, write it once."""
    counts: dict[Outcome, int] = {}
    with acting_for(events[0]):
        state = get_row(invoice_table, customer_id, CustomerInvoices) or CustomerInvoices(
            customer_id=customer_id
        )
    invoices = dict(state.invoices)
    for event in events:
        change = event.value
        if not isinstance(change, ChangeEvent):
            reason = change.reason if isinstance(change, Undecodable) else type(change).__name__
            await send_to_dlq(event, f"undecodable canonical event: {reason}")
            continue
        if not isinstance(change.payload, Invoice):
            continue  # customers, contracts, payments: the stateful core of issue #4
        decision = decide_invoice(invoices.get(change.entity_id), change, mappings, now, _ref(event, change))
        invoices[change.entity_id] = decision.row
        counts[decision.outcome] = counts.get(decision.outcome, 0) + 1
        for command in decision.commands:
            await erp_commands_topic.send(
                key=customer_id, value=command, headers=h.outgoing(command.correlation_id, change.event_id)
            )
        for exc in decision.exceptions:
            await send_exception(exc, change.event_id)
    with acting_for(events[-1]):
        put_row(invoice_table, customer_id, CustomerInvoices(customer_id=customer_id, invoices=invoices))
    return counts


@app.agent(canonical_topic)
async def build_posting_commands(stream: StreamT[Any]) -> None:
    """`ledgerflow.canonical` → invoice table → `erp.commands` / `ledgerflow.exceptions`."""
    # Read once at start: a broken mappings file stops the agent here, loudly, instead of
    # sending every event to the DLQ.
    mappings = load_mappings(settings.mappings)
    async for events in batches(stream):
        now = datetime.now(UTC)
        for customer_id, customer_events in group_by_key(events).items():
            if customer_id is None:
                for event in customer_events:
                    await send_to_dlq(event, "canonical event without a customer key")
                continue
            try:
                await post_customer_changes(customer_id, customer_events, mappings, now)
            except Exception as exc:
                # A bug must not stop the partition: the events go to the DLQ with the error
                # type, to be replayed after a fix.
                log.exception("posting failed", extra={"customer_id": customer_id})
                for event in customer_events:
                    await send_to_dlq(event, f"internal_error: {type(exc).__name__}")
