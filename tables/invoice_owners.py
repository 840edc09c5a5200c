"""A Stripe invoice → its billing customer, and the `invoice_payment` Events waiting to learn
it. Keyed by Stripe invoice id, like `billing.invoice-payments` and `ledgerflow.invoice-owners`.
Two tables: the owners grow with every invoice; the waiting ones stay few, and a timer scans them."""

from __future__ import annotations

from pydantic import Field

from canonical import LedgerModel, UtcDatetime
from canonical.base import NonEmptyStr
from streams.app import app
from streams.settings import settings


class InvoiceOwnerRow(LedgerModel):
    invoice_id: NonEmptyStr
    billing_customer_id: NonEmptyStr


class ParkedInvoicePayment(LedgerModel):
    """An invoice_payment Event exactly as it came (its JSON text), with its headers."""

    value: str
    event_id: str | None = None  # the Event's own id: a redelivery of it is not parked twice
    headers: dict[str, str]
    parked_at: UtcDatetime
    source: NonEmptyStr  # topic/partition/offset of the message it came from


class ParkedInvoicePayments(LedgerModel):
    invoice_id: NonEmptyStr
    parked: tuple[ParkedInvoicePayment, ...] = Field(default=())


invoice_owners_table = app.Table(
    "invoice-owners",
    key_type=bytes,
    value_type=bytes,
    partitions=settings.partitions,
    help="Stripe invoice id → its billing customer.",
)

parked_invoice_payments_table = app.Table(
    "parked-invoice-payments",
    key_type=bytes,
    value_type=bytes,
    partitions=settings.partitions,
    help="Stripe invoice payments waiting for their invoice's customer, keyed by invoice id.",
)
