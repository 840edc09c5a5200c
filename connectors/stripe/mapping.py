"""Stripe Event JSON → canonical `ChangeEvent`s. Pure: no Kafka, no clock, no I/O.

What Stripe promises (design §3): at-least-once, any order, never order by `created`. So an
object's snapshots are ordered by the rank of their status in its lifecycle.

Each Event is read in the shapes of its own `api_version` (`connectors.stripe.versions`):
acacia's fields before 2025-03-31.basil, the current ones after. A payment reaches its invoice
through `payment_intent.invoice` (acacia) or an `invoice_payment` (basil and later).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from canonical import (
    ChangeEvent,
    CreditMemo,
    CreditMemoStatus,
    Customer,
    EntityType,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    Payment,
    PaymentStatus,
    Refund,
    Source,
    Subscription,
    SubscriptionItem,
)
from canonical.events import Entity
from canonical.money import UnknownCurrencyError, currency_exponent
from connectors.errors import Rejection, RejectionReason, rejection_from
from connectors.stripe.routing import object_id
from connectors.stripe.schemas import (
    StripeCharge,
    StripeCreditNote,
    StripeCustomer,
    StripeEvent,
    StripeInvoice,
    StripeInvoicePayment,
    StripeLineItem,
    StripePaymentIntent,
    StripeRefund,
    StripeSubscription,
)
from connectors.stripe.versions import Shapes, api_version
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
M = TypeVar("M", bound=BaseModel)
E = TypeVar("E")


def _ts(seconds: int) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):  # past year 9999, or beyond the C time_t
        raise Rejection(RejectionReason.INVALID_VALUE, "a timestamp is out of range") from None


def _schema_rejection(exc: ValidationError, prefix: str) -> Rejection:
    return rejection_from(exc, RejectionReason.SCHEMA_INVALID, prefix)


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


def _line(item: StripeLineItem, shapes: Shapes) -> InvoiceLine:
    discount = sum(d.amount for d in item.discount_amounts or ())
    if shapes is Shapes.ACACIA:
        taxes = item.tax_amounts or []
        price_id = object_id(item.price)
        product_id = object_id(item.price.get("product")) if item.price else None
    else:
        taxes = item.taxes or []
        details = item.pricing.price_details if item.pricing else None
        price_id = details.price if details else None
        product_id = details.product if details else None
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


class PaginatedInvoice(Rejection):
    """An invoice whose `lines` hold only their first page: it must be read whole first."""

    def __init__(self, invoice_id: str) -> None:
        super().__init__(
            RejectionReason.INVALID_VALUE,
            "invoice lines are paginated (has_more): read the invoice whole (LEDGERFLOW_STRIPE_API_KEY)",
            ("data.object.lines.has_more",),
        )
        self.invoice_id = invoice_id


def map_invoice(obj: dict[str, Any], shapes: Shapes = Shapes.CURRENT) -> Invoice:
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
        # than stopping: stage 1 reads the invoice whole from Stripe, or dead-letters it.
        raise PaginatedInvoice(inv.id)
    transitions = inv.status_transitions
    issued = (transitions.finalized_at if transitions else None) or inv.effective_at or inv.created
    if shapes is Shapes.ACACIA:
        subscription = inv.subscription
        taxes = inv.total_tax_amounts
        tax_total = sum(t.amount for t in taxes) if taxes is not None else inv.tax or 0
    else:
        details = inv.parent.subscription_details if inv.parent else None
        subscription = details.subscription if details else None
        tax_total = sum(t.amount for t in inv.total_taxes or ())
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
            lines=tuple(_line(item, shapes) for item in inv.lines.data),
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


def _require_customer(value: str | dict[str, Any] | None, kind: str) -> str:
    ref = object_id(value)
    if ref is None:
        raise Rejection(RejectionReason.MISSING_FIELD, f"{kind} has no customer", ("data.object.customer",))
    return ref


def _currency(code: str) -> str:
    try:
        currency_exponent(code.upper())
    except UnknownCurrencyError:
        raise Rejection(
            RejectionReason.INVALID_VALUE, "not an ISO-4217 currency", ("data.object.currency",)
        ) from None
    return code


def _validated(model: type[M], obj: dict[str, Any]) -> M:
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise _schema_rejection(exc, "data.object") from None


def _canonical(build: Callable[[], E]) -> E:
    try:
        return build()
    except ValidationError as exc:
        raise _schema_rejection(exc, "data.object") from None


def map_customer(obj: dict[str, Any], deleted: bool, crm_key: str) -> Customer:
    cus = _validated(StripeCustomer, obj)
    country = cus.address.country if cus.address else None
    return _canonical(
        lambda: Customer(
            source_ref=cus.id,
            billing_customer_id=cus.id,
            crm_account_id=cus.metadata.get(crm_key) or None,
            name=cus.name,
            email=cus.email,
            country=country.upper() if country else None,
            currency=_currency(cus.currency) if cus.currency else None,
            deleted=deleted or cus.deleted,
        )
    )


def map_subscription(obj: dict[str, Any]) -> Subscription:
    sub = _validated(StripeSubscription, obj)
    customer = _require_customer(sub.customer, "subscription")
    first = sub.items.data[0] if sub.items.data else None
    start = sub.current_period_start or (first.current_period_start if first else None)
    end = sub.current_period_end or (first.current_period_end if first else None)
    return _canonical(
        lambda: Subscription(
            subscription_id=sub.id,
            customer_ref=customer,
            status=sub.status,
            currency=_currency(sub.currency),
            items=tuple(
                SubscriptionItem(
                    price_id=item.price.id,
                    product_id=object_id(item.price.product),
                    quantity=item.quantity if item.quantity is not None else 1,
                    unit_amount=item.price.unit_amount,
                )
                for item in sub.items.data
            ),
            current_period_start=_ts(start) if start else None,
            current_period_end=_ts(end) if end else None,
            contract_id=sub.metadata.get("contract_id"),
        )
    )


def map_credit_note(obj: dict[str, Any], shapes: Shapes = Shapes.CURRENT) -> CreditMemo:
    note = _validated(StripeCreditNote, obj)
    customer = _require_customer(note.customer, "credit note")
    invoice = object_id(note.invoice)
    if invoice is None:
        raise Rejection(
            RejectionReason.MISSING_FIELD, "credit note names no invoice", ("data.object.invoice",)
        )
    try:
        status = CreditMemoStatus(note.status)
    except ValueError:
        raise Rejection(
            RejectionReason.INVALID_VALUE, "unknown credit note status", ("data.object.status",)
        ) from None
    taxes = (note.tax_amounts if shapes is Shapes.ACACIA else note.total_taxes) or []
    return _canonical(
        lambda: CreditMemo(
            credit_memo_id=note.id,
            number=note.number,
            customer_ref=customer,
            invoice_id=invoice,
            status=status,
            currency=_currency(note.currency),
            issued_at=_ts(note.effective_at or note.created),
            subtotal=note.subtotal,
            tax_total=sum(t.amount for t in taxes),
            total=note.total,
            reason=note.reason,
        )
    )


def map_payment_intent(obj: dict[str, Any], event_type: str, shapes: Shapes = Shapes.CURRENT) -> Payment:
    """A PaymentIntent. Under acacia it names its invoice; since basil it does not, so on its
    own it is unapplied cash (booked nothing) until its `invoice_payment` links it."""
    intent = _validated(StripePaymentIntent, obj)
    customer = _require_customer(intent.customer, "payment intent")
    succeeded = event_type == "payment_intent.succeeded"
    error = intent.last_payment_error or {}
    return _canonical(
        lambda: Payment(
            payment_id=intent.id,
            customer_ref=customer,
            invoice_id=object_id(intent.invoice) if shapes is Shapes.ACACIA else None,
            amount=intent.amount_received if succeeded else intent.amount,
            currency=_currency(intent.currency),
            status=PaymentStatus.SUCCEEDED if succeeded else PaymentStatus.FAILED,
            received_at=_ts(intent.created),
            method=intent.payment_method_types[0] if intent.payment_method_types else None,
            failure_reason=None if succeeded else str(error.get("code") or "payment_failed"),
        )
    )


def map_invoice_payment(obj: dict[str, Any], billing_customer: str | None) -> Payment:
    """A paid `invoice_payment`: the payment (its PaymentIntent, or the Charge or payment
    record when there is none) applied to one invoice for `amount_paid`. It names no customer:
    it arrives keyed by the customer whose invoice it is (`billing_customer`, the key stage 1
    gave it on `payments.changes`)."""
    paid = _validated(StripeInvoicePayment, obj)
    if billing_customer is None:
        raise Rejection(
            RejectionReason.MISSING_FIELD,
            "an invoice_payment names no customer: it must arrive keyed by its invoice's customer "
            "(send it to billing.invoice-payments, keyed by the invoice id)",
            ("data.object.invoice",),
        )
    ref = paid.payment
    payment_id = object_id(ref.payment_intent) or object_id(ref.charge) or object_id(ref.payment_record)
    if payment_id is None:
        raise Rejection(
            RejectionReason.MISSING_FIELD,
            f"an invoice_payment of type {ref.type} names no payment",
            ("data.object.payment",),
        )
    amount = paid.amount_paid
    if paid.status != "paid" or amount is None:
        raise Rejection(
            RejectionReason.INVALID_VALUE,
            "invoice_payment.paid carries a payment that is not paid",
            ("data.object.status", "data.object.amount_paid"),
        )
    at = paid.status_transitions.paid_at if paid.status_transitions else None
    return _canonical(
        lambda: Payment(
            payment_id=payment_id,
            customer_ref=billing_customer,
            invoice_id=object_id(paid.invoice),
            amount=amount,
            currency=_currency(paid.currency),
            status=PaymentStatus.SUCCEEDED,
            received_at=_ts(at or paid.created),
            method=None,  # "payment_intent" is no method; the intent's own Event names it (card …)
        )
    )


def map_charge_refunds(obj: dict[str, Any]) -> list[Refund]:
    charge = _validated(StripeCharge, obj)
    customer = _require_customer(charge.customer, "charge")
    refunds = charge.refunds.data if charge.refunds and charge.refunds.data else None
    if refunds is None:
        # An older API version without the refunds list: one refund for the amount refunded.
        refunds = [
            StripeRefund(
                id=f"{charge.id}-refunded",
                amount=charge.amount_refunded,
                currency=charge.currency,
                status="succeeded",
                created=charge.created,
            )
        ]

    def refund(r: StripeRefund) -> Refund:
        return Refund(
            refund_id=r.id,
            customer_ref=customer,
            payment_id=r.payment_intent or charge.payment_intent,
            charge_id=charge.id,
            amount=r.amount,
            currency=_currency(r.currency),
            status=r.status or "succeeded",
            created_at=_ts(r.created),
            reason=r.reason,
        )

    return [_canonical(partial(refund, r)) for r in refunds]


def map_refund(obj: dict[str, Any]) -> Refund:
    r = _validated(StripeRefund, obj)
    customer = _require_customer(obj.get("customer"), "refund")
    return _canonical(
        lambda: Refund(
            refund_id=r.id,
            customer_ref=customer,
            payment_id=r.payment_intent,
            charge_id=r.charge,
            amount=r.amount,
            currency=_currency(r.currency),
            status=r.status or "pending",
            created_at=_ts(r.created),
            reason=r.reason,
        )
    )


DISPUTE_RANK = {
    "warning_needs_response": 0,
    "needs_response": 0,
    "warning_under_review": 1,
    "under_review": 1,
    "warning_closed": 2,
    "won": 2,
    "lost": 2,
}


def map_dispute(obj: dict[str, Any]) -> Refund:
    """A chargeback reverses a payment like a refund does: carried as a `Refund` whose reason
    starts with "dispute:" and whose status is the dispute's (won, lost, under_review …)."""
    charge = obj.get("charge")
    customer = object_id(charge.get("customer")) if isinstance(charge, dict) else None
    if customer is None:
        raise Rejection(
            RejectionReason.MISSING_FIELD,
            "a dispute names no customer: deliver it with its charge expanded (charge.customer)",
            ("data.object.charge",),
        )
    r = _validated(
        StripeRefund,
        {**obj, "charge": object_id(charge), "payment_intent": object_id(obj.get("payment_intent"))},
    )
    return _canonical(
        lambda: Refund(
            refund_id=r.id,
            customer_ref=customer,
            payment_id=r.payment_intent,
            charge_id=r.charge,
            amount=r.amount,
            currency=_currency(r.currency),
            status=str(obj.get("status") or "needs_response"),
            created_at=_ts(r.created),
            reason=f"dispute:{obj.get('reason') or 'general'}",
        )
    )


CUSTOMER_RANK = {"customer.created": 0, "customer.updated": 1, "customer.deleted": 2}
# Subscriptions move back and forth (past_due → active); the rank orders the usual path and
# a tie keeps the later arrival. A snapshot in doubt is re-read by the client of issue #4.
SUBSCRIPTION_RANK = {
    "incomplete": 0,
    "trialing": 1,
    "active": 2,
    "past_due": 3,
    "paused": 3,
    "unpaid": 4,
    "canceled": 5,
    "incomplete_expired": 5,
}
CREDIT_NOTE_RANK = {CreditMemoStatus.ISSUED: 1, CreditMemoStatus.VOID: 2}
PAYMENT_EVENT_TYPES = frozenset({"payment_intent.succeeded", "payment_intent.payment_failed"})
# A PaymentIntent's own events rank 1 (failed) and 2 (succeeded); its invoice_payment, which
# links it to the invoice, ranks above both, so whichever arrives last the link stays.
INVOICE_PAYMENT_RANK = 3


def map_stripe_event(
    raw: bytes,
    resolve_customer: CustomerResolver,
    correlation_id: str | None = None,
    billing_customer: str | None = None,
    *,
    crm_account_key: str = "crm_account_id",
    on_unknown_version: Callable[[str], None] | None = None,
) -> list[ChangeEvent]:
    """One Stripe Event → the canonical events it means ([] for types ledgerflow ignores).

    `correlation_id` comes from the message's header; without one, it is derived from the
    Stripe event id, so a redelivery carries the same id. `billing_customer` is the message's
    key: the customer of an object that names none (an `invoice_payment`). An `api_version`
    ledgerflow does not know is read with the nearest shapes it has, and reported to
    `on_unknown_version`. Raises `Rejection` for input that cannot be mapped; the caller sends
    it to the DLQ.
    """
    event = decode_event(raw)
    correlation_id = correlation_id or stable_id("correlation", "stripe", event.id)
    version = api_version(event.api_version)
    if not version.known and on_unknown_version is not None:
        on_unknown_version(event.api_version or "none")
    shapes = version.shapes
    obj, kind = event.data.object, event.type
    entities: list[tuple[EntityType, str, tuple[int, ...], str, Entity]] = []
    if kind in INVOICE_EVENT_TYPES:
        invoice = map_invoice(obj, shapes)
        entities.append(
            (
                EntityType.INVOICE,
                invoice.invoice_id,
                (INVOICE_LIFECYCLE_RANK[invoice.status],),
                invoice.customer_ref,
                invoice,
            )
        )
    elif kind in CUSTOMER_RANK:
        customer = map_customer(obj, kind == "customer.deleted", crm_account_key)
        entities.append(
            (EntityType.CUSTOMER, customer.source_ref, (CUSTOMER_RANK[kind],), customer.source_ref, customer)
        )
    elif kind.startswith("customer.subscription."):
        sub = map_subscription(obj)
        entities.append(
            (
                EntityType.SUBSCRIPTION,
                sub.subscription_id,
                (SUBSCRIPTION_RANK.get(sub.status, 2),),
                sub.customer_ref,
                sub,
            )
        )
    elif kind.startswith("credit_note."):
        note = map_credit_note(obj, shapes)
        entities.append(
            (
                EntityType.CREDIT_MEMO,
                note.credit_memo_id,
                (CREDIT_NOTE_RANK[note.status],),
                note.customer_ref,
                note,
            )
        )
    elif kind in PAYMENT_EVENT_TYPES:
        payment = map_payment_intent(obj, kind, shapes)
        rank = 2 if payment.status is PaymentStatus.SUCCEEDED else 1
        entities.append((EntityType.PAYMENT, payment.payment_id, (rank,), payment.customer_ref, payment))
    elif kind == "invoice_payment.paid":
        payment = map_invoice_payment(obj, billing_customer)
        entities.append(
            (EntityType.PAYMENT, payment.payment_id, (INVOICE_PAYMENT_RANK,), payment.customer_ref, payment)
        )
    elif kind == "charge.refunded":
        for refund in map_charge_refunds(obj):
            entities.append((EntityType.REFUND, refund.refund_id, (1,), refund.customer_ref, refund))
    elif kind in ("refund.created", "refund.updated"):
        refund = map_refund(obj)
        entities.append((EntityType.REFUND, refund.refund_id, (1,), refund.customer_ref, refund))
    elif kind.startswith("charge.dispute."):
        dispute = map_dispute(obj)
        rank = DISPUTE_RANK.get(dispute.status, 1)
        entities.append((EntityType.REFUND, dispute.refund_id, (rank,), dispute.customer_ref, dispute))
    # Every field was checked on its own; what is left is the envelope's own limits (an id past
    # 512 characters, say): input that cannot make a canonical event is a rejection too.
    try:
        events = [
            ChangeEvent(
                event_id=event.id if len(entities) == 1 else f"{event.id}:{entity_id}",
                source=Source.STRIPE,
                source_type=kind,
                entity_type=entity_type,
                entity_id=entity_id,
                entity_version=version,
                customer_ref=customer_ref,
                customer_id=resolve_customer(Source.STRIPE, customer_ref),
                occurred_at=_ts(event.created),
                correlation_id=correlation_id,
                payload=payload,
            )
            for entity_type, entity_id, version, customer_ref, payload in entities
        ]
    except ValidationError as exc:
        raise _schema_rejection(exc, "event") from None
    return events
