"""Which source topic a Stripe Event belongs on, and its key.

`billing.changes` and `payments.changes` are keyed by the billing customer id. An
`invoice_payment` (API 2025-05-28.basil and later) names its invoice but no customer, so
`invoice_payment.*` events go to `billing.invoice-payments`, keyed by the Stripe invoice id;
stage 1 re-keys each to `payments.changes` once it knows whose invoice it is.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

PAYMENT_PREFIXES = ("payment_intent.", "charge.", "refund.")
INVOICE_PAYMENT_PREFIX = "invoice_payment."


class StripeStream(StrEnum):
    BILLING = "billing.changes"
    PAYMENTS = "payments.changes"
    INVOICE_PAYMENTS = "billing.invoice-payments"


def stream_for(event_type: str) -> StripeStream:
    """`payment_intent.*`, `charge.*` (refunds, disputes) and `refund.*` are payments;
    `invoice_payment.*` waits for its invoice's customer; the rest is billing."""
    if event_type.startswith(INVOICE_PAYMENT_PREFIX):
        return StripeStream.INVOICE_PAYMENTS
    return StripeStream.PAYMENTS if event_type.startswith(PAYMENT_PREFIXES) else StripeStream.BILLING


def _object(event: dict[str, Any]) -> dict[str, Any] | None:
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    return obj if isinstance(obj, dict) else None


def object_id(value: Any) -> str | None:
    """An id, whether Stripe sent it as a string or an expanded object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def billing_customer_of(event: dict[str, Any]) -> str | None:
    """The Stripe customer an Event is about, if its object names one."""
    obj = _object(event)
    if obj is None:
        return None
    if obj.get("object") == "customer":
        return object_id(obj.get("id"))
    ref = object_id(obj.get("customer"))
    charge = obj.get("charge")
    if ref is None and isinstance(charge, dict):  # a dispute, with its charge expanded
        ref = object_id(charge.get("customer"))
    return ref


def invoice_of(event: dict[str, Any]) -> str | None:
    """The invoice an `invoice_payment` Event names (a string, or the expanded invoice)."""
    obj = _object(event)
    return object_id(obj.get("invoice")) if obj is not None else None


def route(event: dict[str, Any]) -> tuple[StripeStream, str | None]:
    """The topic of a Stripe Event and its message key (None: the Event names none; stage 1
    dead-letters an invoice payment without its invoice, with the reason)."""
    event_type = event.get("type")
    stream = stream_for(event_type if isinstance(event_type, str) else "")
    key = invoice_of(event) if stream is StripeStream.INVOICE_PAYMENTS else billing_customer_of(event)
    return stream, key
