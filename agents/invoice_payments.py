"""Stage 1: Stripe `invoice_payment` Events → `payments.changes`, keyed by their customer.

Since API 2025-03-31.basil a PaymentIntent names no invoice; an `invoice_payment` links the two,
and it names the invoice but no customer. It arrives on `billing.invoice-payments` keyed by the
invoice id. The Stripe ingest agent writes each invoice's owner to `ledgerflow.invoice-owners`
under the same key, so this agent learns locally whose invoice it is: a payment of a known
invoice goes straight on to `payments.changes` (keyed by that customer, where the Stripe ingest
agent maps it like any payment); one of an invoice not seen yet waits in the table, and goes on
when the invoice's owner arrives. With a Stripe API key, one that waited
LEDGERFLOW_STRIPE_LOOKUP_AFTER_S has its invoice read from Stripe (`GET /v1/invoices/{id}`), and
the invoice's customer goes to `ledgerflow.invoice-owners` as if the Stripe agent had announced
it. One still waiting after LEDGERFLOW_PARK_TIMEOUT_S is raised as an `unknown_invoice` exception
(it stays parked: nothing is lost).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from agents.batching import batches
from agents.outbox import Outbox, raise_overdue, send_to_dlq
from canonical import BusinessException, ExceptionReason, FieldError, codec
from canonical.links import InvoiceOwner
from connectors.stripe.client import StripeApi, StripeApiError, StripeNotFound
from connectors.stripe.routing import invoice_of, object_id
from streams import headers as h
from streams import metrics
from streams.app import app
from streams.schemas import Undecodable
from streams.settings import settings
from streams.stripe import shared_stripe_api
from streams.topics import invoice_links_topic, invoice_owners_topic, payments_changes_topic
from tables.invoice_owners import (
    InvoiceOwnerRow,
    ParkedInvoicePayment,
    ParkedInvoicePayments,
    invoice_owners_table,
    parked_invoice_payments_table,
)

log = logging.getLogger(__name__)

STAGE = "ingest"  # `ledgerflow worker --stages …` runs this module's agents and timers or not

if TYPE_CHECKING:
    from faust.types import EventT, StreamT


@dataclass
class Routed:
    """What one message decided: the rows to write (None: unchanged; `unpark`: delete the
    parked row) and what goes on to `payments.changes`, as (billing customer id, value,
    headers, the invoice-payments message it is: its causation)."""

    owner: InvoiceOwnerRow | None = None
    parked: ParkedInvoicePayments | None = None
    unpark: bool = False
    forward: list[tuple[str, bytes, dict[str, str], str]] = field(default_factory=list)


def owner_known(
    owner_row: InvoiceOwnerRow | None, parked: ParkedInvoicePayments | None, owner: InvoiceOwner
) -> Routed:
    """An invoice's owner: remember it and release what waited for it. An invoice never changes
    customer in Stripe; the first owner seen stays (and what waited goes to it)."""
    new_row = None
    if owner_row is None:
        owner_row = new_row = InvoiceOwnerRow(
            invoice_id=owner.invoice_id, billing_customer_id=owner.billing_customer_id
        )
    customer = owner_row.billing_customer_id
    return Routed(
        owner=new_row,
        unpark=parked is not None,
        forward=[(customer, p.value.encode(), p.headers, p.source) for p in parked.parked] if parked else [],
    )


def payment_arrived(
    owner_row: InvoiceOwnerRow | None,
    parked: ParkedInvoicePayments | None,
    body: PaymentBody,
    headers: dict[str, str],
    now: datetime,
    source: str,
) -> Routed:
    """An invoice payment: on to its customer, or parked until the invoice's owner is known (a
    redelivery of one already parked is not parked twice; an Event other than
    `invoice_payment.paid`, which books nothing, is not parked at all)."""
    invoice_id, value = body.invoice_id, body.text
    if owner_row is not None:
        return Routed(forward=[(owner_row.billing_customer_id, value.encode(), headers, source)])
    if body.event_type != PAID:
        return Routed()
    waiting = parked.parked if parked is not None else ()
    if body.event_id is not None and any(p.event_id == body.event_id for p in waiting):
        return Routed()
    entry = ParkedInvoicePayment(
        value=value, event_id=body.event_id, headers=headers, parked_at=now, source=source
    )
    return Routed(parked=ParkedInvoicePayments(invoice_id=invoice_id, parked=(*waiting, entry)))


def overdue_invoice_payments(
    row: ParkedInvoicePayments, now: datetime, timeout_s: float
) -> BusinessException | None:
    """An exception for an invoice whose payments waited longer than allowed for its owner."""
    if not row.parked:
        return None
    oldest = row.parked[0]
    if (now - oldest.parked_at).total_seconds() < timeout_s:
        return None
    return BusinessException(
        exception_id=h.stable_id("exception", "unknown_invoice", row.invoice_id),
        reason=ExceptionReason.UNKNOWN_INVOICE,
        message=(
            f"{len(row.parked)} invoice payment(s) of Stripe invoice {row.invoice_id} wait for the "
            f"invoice (no invoice.* event seen) since {oldest.parked_at.isoformat()}"
        ),
        fields=(FieldError(field="invoice", problem="no invoice.* event seen for this invoice"),),
        entity_id=row.invoice_id,
        correlation_id=_correlation(row),
        first_seen=oldest.parked_at,
        last_seen=now,
        attempts=len(row.parked),
    )


def _correlation(row: ParkedInvoicePayments) -> str:
    """The correlation id of an invoice's first waiting payment."""
    first = row.parked[0].headers.get(h.CORRELATION_ID) if row.parked else None
    return first or h.stable_id("correlation", "stripe", row.invoice_id)


def _text_headers(headers: Any) -> dict[str, str]:
    keep = (h.CORRELATION_ID, h.CAUSATION_ID, metrics.SOURCE_TIMESTAMP)
    return {name: value for name in keep if (value := h.header(headers, name)) is not None}


PAID = "invoice_payment.paid"


@dataclass(frozen=True)
class PaymentBody:
    """What routing needs of an invoice_payment message: its invoice, its Event, its JSON text."""

    invoice_id: str
    event_id: str | None
    event_type: str | None
    text: str


def _payment_body(raw: bytes, key: Any) -> PaymentBody | str:
    """An invoice_payment message's routing facts, or why it cannot be routed."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return f"not_json: body is not JSON ({exc.msg})"
    invoice = invoice_of(data) if isinstance(data, dict) else None
    if invoice is None:
        return "missing_field: an invoice_payment Event must name its invoice (data.object.invoice)"
    if key != invoice:
        return (
            f"invalid_key: an invoice_payment must be keyed by its invoice id on "
            f"billing.invoice-payments (key {key!r}, invoice {invoice!r})"
        )
    event_id, event_type = data.get("id"), data.get("type")
    return PaymentBody(
        invoice,
        event_id if isinstance(event_id, str) else None,
        event_type if isinstance(event_type, str) else None,
        raw.decode("utf-8"),
    )


async def route_event(outbox: Outbox, event: EventT, now: datetime) -> None:
    value, msg = event.value, event.message
    source = f"{msg.topic}/{msg.partition}/{msg.offset}"
    if isinstance(value, InvoiceOwner):
        if event.key != value.invoice_id:
            await send_to_dlq(outbox, event, "invalid_key: an invoice owner must be keyed by its invoice id")
            return
        invoice_id = value.invoice_id
        routed = owner_known(
            outbox.get(invoice_owners_table, invoice_id, InvoiceOwnerRow, event),
            outbox.get(parked_invoice_payments_table, invoice_id, ParkedInvoicePayments, event),
            value,
        )
    elif isinstance(value, bytes | bytearray):
        body = _payment_body(bytes(value), event.key)
        if isinstance(body, str):
            await send_to_dlq(outbox, event, body)
            return
        invoice_id = body.invoice_id
        headers = _text_headers(event.headers)
        headers.setdefault(h.CORRELATION_ID, h.correlation_of(event.headers, msg.topic, source))
        headers.update(metrics.stamp(metrics.source_ms(event)))
        routed = payment_arrived(
            outbox.get(invoice_owners_table, invoice_id, InvoiceOwnerRow, event),
            outbox.get(parked_invoice_payments_table, invoice_id, ParkedInvoicePayments, event),
            body,
            headers,
            now,
            source,
        )
    else:
        reason = value.reason if isinstance(value, Undecodable) else "empty message value"
        await send_to_dlq(outbox, event, f"undecodable_invoice_owner: {reason}")
        return
    # A payment released by its invoice's owner was ready when the invoice arrived.
    ready = metrics.source_ms(event) if isinstance(value, InvoiceOwner) else None
    if routed.owner is not None:
        outbox.put(invoice_owners_table, invoice_id, routed.owner, event)
    if routed.parked is not None or routed.unpark:
        outbox.put(parked_invoice_payments_table, invoice_id, routed.parked, event)
    for customer, raw, headers, cause in routed.forward:
        correlation = headers.get(h.CORRELATION_ID) or h.stable_id("correlation", "stripe", invoice_id)
        extra = {k: v for k, v in headers.items() if k not in (h.CORRELATION_ID, h.CAUSATION_ID)}
        if ready is not None:
            extra |= metrics.stamp(metrics.header_ms(headers), ready)
        await outbox.send(payments_changes_topic, customer, raw, h.outgoing(correlation, cause, **extra))


@app.agent(invoice_links_topic)
async def route_invoice_payments(stream: StreamT[Any]) -> None:
    """`billing.invoice-payments` and `ledgerflow.invoice-owners` (keyed by Stripe invoice id)
    → `payments.changes`, keyed by the invoice's billing customer."""
    async for events in batches(stream):
        now = datetime.now(UTC)
        outbox = Outbox()
        for event in events:
            await route_event(outbox, event, now)
        await outbox.commit()


_raised_overdue: set[str] = set()


@app.timer(interval=30.0)
async def raise_overdue_invoice_payments() -> None:
    """Invoice payments still waiting for their invoice after LEDGERFLOW_PARK_TIMEOUT_S become an
    `unknown_invoice` exception (once per worker process; they stay parked)."""
    await raise_overdue(
        parked_invoice_payments_table,
        ParkedInvoicePayments,
        lambda row: len(row.parked),
        overdue_invoice_payments,
        _raised_overdue,
        "timer:parked-invoice-payments",
        "invoice_payments",
    )


LOOKUPS_PER_TICK = 50
LOOKUP_RETRY_S = 300.0
_looked_up: dict[str, float] = {}
"""Invoice id → when this process last asked Stripe for it (a missing one is asked again later)."""


async def owner_from_stripe(api: StripeApi, invoice_id: str, correlation_id: str) -> InvoiceOwner | None:
    """Whose invoice Stripe says it is, or None when Stripe has no such invoice or cannot say."""
    try:
        invoice = await api.retrieve("invoices", invoice_id)
    except StripeNotFound:
        log.warning("invoice payment names an invoice Stripe does not have", extra={"invoice_id": invoice_id})
        return None
    except StripeApiError as exc:
        log.warning("could not read an invoice from Stripe", extra={"error": type(exc).__name__})
        return None
    customer = object_id(invoice.get("customer"))
    if customer is None:
        return None
    return InvoiceOwner(invoice_id=invoice_id, billing_customer_id=customer, correlation_id=correlation_id)


@app.timer(interval=15.0)
async def look_up_unknown_invoices() -> None:
    """Invoice payments waiting LEDGERFLOW_STRIPE_LOOKUP_AFTER_S for their invoice: read the
    invoices from Stripe (with LEDGERFLOW_STRIPE_API_KEY), and announce their owners."""
    await announce_owners_from_stripe()


async def announce_owners_from_stripe() -> None:
    """One round of `look_up_unknown_invoices`."""
    api = shared_stripe_api(settings)
    if api is None:
        return
    now, clock = datetime.now(UTC), time.monotonic()
    due = []
    waiting: set[str] = set()
    for _key, raw in list(parked_invoice_payments_table.items()):
        row = codec.loads(ParkedInvoicePayments, raw)
        waiting.add(row.invoice_id)
        waited = (now - row.parked[0].parked_at).total_seconds() if row.parked else 0.0
        asked = _looked_up.get(row.invoice_id)
        if (
            row.parked
            and waited >= settings.stripe_lookup_after_s
            and (asked is None or clock - asked > LOOKUP_RETRY_S)
        ):
            due.append(row)
    for gone in _looked_up.keys() - waiting:  # released since, or on another worker now
        del _looked_up[gone]
    outbox = Outbox()
    for row in due[:LOOKUPS_PER_TICK]:
        _looked_up[row.invoice_id] = clock
        correlation = row.parked[0].headers.get(h.CORRELATION_ID) or h.stable_id(
            "correlation", "stripe", row.invoice_id
        )
        owner = await owner_from_stripe(api, row.invoice_id, correlation)
        if owner is not None:
            causation = f"stripe:GET /v1/invoices/{row.invoice_id}"
            await outbox.send(
                invoice_owners_topic, owner.invoice_id, owner, h.outgoing(correlation, causation)
            )
    await outbox.commit()
