"""Stripe Event JSON → canonical `ChangeEvent`s. Pure: no Kafka, no clock, no I/O.

What Stripe promises (design §3): at-least-once, any order, never order by `created`. So an
object's snapshots are ordered by the rank of their status in its lifecycle.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from canonical import (
    ChangeEvent,
    EntityType,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    Source,
)
from canonical.money import UnknownCurrencyError, currency_exponent
from connectors.errors import Rejection, RejectionReason
from connectors.stripe.schemas import StripeEvent, StripeInvoice, StripeLineItem
from streams.headers import stable_id

# An invoice goes draft → open → paid | void | uncollectible and never back; uncollectible
# can still become paid or void.
INVOICE_LIFECYCLE_RANK: dict[InvoiceStatus, int] = {
    InvoiceStatus.DRAFT: 0,
    InvoiceStatus.OPEN: 1,
    InvoiceStatus.UNCOLLECTIBLE: 2,
    InvoiceStatus.PAID: 3,
    InvoiceStatus.VOID: 3,
}

INVOICE_EVENT_TYPES = frozenset(
    {
        "invoice.created",
        "invoice.updated",
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_succeeded",
        "invoice.voided",
        "invoice.marked_uncollectible",
        "invoice.payment_failed",
    }
)

CustomerResolver = Callable[[Source, str], str]


def _ts(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _schema_rejection(exc: ValidationError, prefix: str) -> Rejection:
    fields = tuple(
        ".".join([prefix, *(str(p) for p in err["loc"])]).strip(".")
        for err in exc.errors(include_input=False, include_url=False)
    )
    detail = "; ".join(
        f"{field}: {err['msg']}"
        for field, err in zip(fields, exc.errors(include_input=False, include_url=False), strict=True)
    )
    return Rejection(RejectionReason.SCHEMA_INVALID, detail[:400], fields)


def decode_event(raw: bytes) -> StripeEvent:
    """Bytes → Stripe Event envelope, or a typed rejection."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Rejection(RejectionReason.NOT_JSON, f"body is not JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise Rejection(RejectionReason.SCHEMA_INVALID, "an Event must be a JSON object")
    try:
        event = StripeEvent.model_validate(data)
    except ValidationError as exc:
        raise _schema_rejection(exc, "") from None
    if event.object != "event":
        raise Rejection(RejectionReason.SCHEMA_INVALID, "object must be 'event'", ("object",))
    return event


def _line(item: StripeLineItem) -> InvoiceLine:
    discount = sum(d.amount for d in item.discount_amounts or ())
    taxes = item.taxes if item.taxes is not None else (item.tax_amounts or [])
    details = item.pricing.price_details if item.pricing else None
    price_id = details.price if details else None
    product_id = details.product if details else None
    if price_id is None and item.price:
        price_id = item.price.get("id")
        product = item.price.get("product")
        product_id = product if isinstance(product, str) else product_id
    return InvoiceLine(
        line_id=item.id,
        description=item.description,
        price_id=price_id,
        product_id=product_id,
        quantity=item.quantity if item.quantity is not None else 1,
        # Stripe's `subtotal` is before discounts; older API versions have only `amount`.
        subtotal=item.subtotal if item.subtotal is not None else item.amount + discount,
        discount_amount=discount,
        amount=item.amount,
        tax_amount=sum(t.amount for t in taxes),
        tax_rate_ids=tuple(r for t in taxes if (r := t.rate_id) is not None),
        period_start=_ts(item.period.start) if item.period and item.period.start else None,
        period_end=_ts(item.period.end) if item.period and item.period.end else None,
    )


def map_invoice(obj: dict[str, Any]) -> Invoice:
    """A Stripe invoice object → canonical `Invoice` (arithmetic is checked later, in stage 2)."""
    try:
        inv = StripeInvoice.model_validate(obj)
    except ValidationError as exc:
        raise _schema_rejection(exc, "data.object") from None
    customer = inv.customer.get("id") if isinstance(inv.customer, dict) else inv.customer
    if not customer:
        raise Rejection(RejectionReason.MISSING_FIELD, "invoice has no customer", ("data.object.customer",))
    try:
        status = InvoiceStatus(inv.status or "")
    except ValueError:
        raise Rejection(
            RejectionReason.INVALID_VALUE, "unknown invoice status", ("data.object.status",)
        ) from None
    try:
        currency_exponent(inv.currency.upper())
    except UnknownCurrencyError:
        raise Rejection(
            RejectionReason.INVALID_VALUE, "not an ISO-4217 currency", ("data.object.currency",)
        ) from None
    if inv.lines.has_more:
        # A webhook snapshot holds the first page only; posting a partial invoice is worse
        # than stopping: the adapter must fetch the rest (issue #3's client) first.
        raise Rejection(
            RejectionReason.INVALID_VALUE,
            "invoice lines are paginated (has_more)",
            ("data.object.lines.has_more",),
        )
    transitions = inv.status_transitions
    issued = (transitions.finalized_at if transitions else None) or inv.effective_at or inv.created
    subscription = inv.subscription or (
        inv.parent.subscription_details.subscription
        if inv.parent and inv.parent.subscription_details
        else None
    )
    tax_total = sum(t.amount for t in inv.total_taxes) if inv.total_taxes is not None else inv.tax or 0
    country = inv.customer_address.country if inv.customer_address else None
    try:
        return Invoice(
            invoice_id=inv.id,
            number=inv.number,
            customer_ref=customer,
            status=status,
            currency=inv.currency,
            issued_at=_ts(issued),
            due_at=_ts(inv.due_date) if inv.due_date else None,
            lines=tuple(_line(item) for item in inv.lines.data),
            subtotal=inv.subtotal,
            discount_total=sum(d.amount for d in inv.total_discount_amounts or ()),
            tax_total=tax_total,
            shipping_total=inv.amount_shipping,
            total=inv.total,
            amount_paid=inv.amount_paid,
            amount_due=inv.amount_due,
            subscription_id=subscription,
            contract_id=inv.metadata.get("contract_id"),
            customer_country=country.upper() if country else None,
        )
    except ValidationError as exc:
        raise _schema_rejection(exc, "data.object") from None


def map_stripe_event(
    raw: bytes, resolve_customer: CustomerResolver, correlation_id: str | None = None
) -> list[ChangeEvent]:
    """One Stripe Event → the canonical events it means ([] for types ledgerflow ignores).

    `correlation_id` comes from the message's header; without one, it is derived from the
    Stripe event id, so a redelivery carries the same id. Raises `Rejection` for input that
    cannot be mapped; the caller sends it to the DLQ.
    """
    event = decode_event(raw)
    correlation_id = correlation_id or stable_id("correlation", "stripe", event.id)
    if event.type not in INVOICE_EVENT_TYPES:
        return []
    invoice = map_invoice(event.data.object)
    return [
        ChangeEvent(
            event_id=event.id,
            source=Source.STRIPE,
            source_type=event.type,
            entity_type=EntityType.INVOICE,
            entity_id=invoice.invoice_id,
            entity_version=(INVOICE_LIFECYCLE_RANK[invoice.status],),
            customer_ref=invoice.customer_ref,
            customer_id=resolve_customer(Source.STRIPE, invoice.customer_ref),
            occurred_at=_ts(event.created),
            correlation_id=correlation_id,
            payload=invoice,
        )
    ]
