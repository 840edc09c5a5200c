"""Which source topic a Stripe Event belongs on, and its key (the billing customer id)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

PAYMENT_PREFIXES = ("payment_intent.", "charge.", "refund.")


class StripeStream(StrEnum):
    BILLING = "billing.changes"
    PAYMENTS = "payments.changes"


def stream_for(event_type: str) -> StripeStream:
    """`payment_intent.*`, `charge.*` (refunds, disputes) and `refund.*` are payments."""
    return StripeStream.PAYMENTS if event_type.startswith(PAYMENT_PREFIXES) else StripeStream.BILLING


def billing_customer_of(event: dict[str, Any]) -> str | None:
    """The Stripe customer an Event is about, if its object names one."""
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        return None
    if obj.get("object") == "customer":
        ref = obj.get("id")
    else:
        ref = obj.get("customer")
        charge = obj.get("charge")
        if ref is None and isinstance(charge, dict):  # a dispute, with its charge expanded
            ref = charge.get("customer")
        if isinstance(ref, dict):
            ref = ref.get("id")
    return ref if isinstance(ref, str) and ref else None
