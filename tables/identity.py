"""Identity cross-reference: a billing customer (Stripe) → its canonical customer, and the
billing events waiting for that link. Keyed by the Stripe customer id, like `billing.changes`
and `payments.changes`, so stage 1's look-ups stay on the local partition."""

from __future__ import annotations

from pydantic import Field

from canonical import ChangeEvent, LedgerModel, UtcDatetime
from canonical.base import NonEmptyStr
from streams.app import app
from streams.settings import settings


class BillingIdentity(LedgerModel):
    billing_customer_id: NonEmptyStr
    customer_id: NonEmptyStr
    crm_account_id: str | None = None
    linked_at: UtcDatetime


class ParkedChange(LedgerModel):
    change: ChangeEvent
    parked_at: UtcDatetime
    source: NonEmptyStr  # topic/partition/offset of the message it came from


class ParkedChanges(LedgerModel):
    """Canonical events of a billing customer not known yet, in arrival order."""

    billing_customer_id: NonEmptyStr
    changes: tuple[ParkedChange, ...] = Field(default=())


billing_identity_table = app.Table(
    "billing-identity",
    key_type=bytes,
    value_type=bytes,
    partitions=settings.partitions,
    help="Stripe customer id → canonical customer id (and the CRM account it is linked to).",
)

parked_billing_table = app.Table(
    "parked-billing",
    key_type=bytes,
    value_type=bytes,
    partitions=settings.partitions,
    help="Billing events waiting for their customer's identity, keyed by Stripe customer id.",
)
