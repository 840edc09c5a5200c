"""Invoice state, per canonical customer: each invoice's latest snapshot and its ERP status."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from canonical import ChangeEvent, InvoiceStatus, LedgerModel, MessageRef, UtcDatetime
from canonical.base import NonEmptyStr
from canonical.money import Currency, MinorUnits
from streams.app import app
from streams.settings import settings

SEEN_EVENT_IDS_KEPT = 32
"""Event ids remembered per invoice for dedup; Stripe's redeliveries come within days, and an
invoice sees only a handful of distinct events in its life."""


class InvoiceErpStatus(StrEnum):
    NOT_SENT = "not_sent"  # not postable yet (draft), or held by an exception
    HELD = "held"  # validation failed: an open exception names why
    PENDING = "pending"  # PostInvoice emitted, the ERP has not confirmed
    POSTED = "posted"
    FAILED = "failed"  # the ERP refused it, or could not take it yet (an exception says which)
    VOID_PENDING = "void_pending"
    VOIDED = "voided"


class InvoiceRow(LedgerModel):
    invoice_id: NonEmptyStr
    status: InvoiceStatus
    version: tuple[int, ...]
    currency: Currency
    total: MinorUnits
    settled: MinorUnits = 0
    """What ledgerflow's payments and credit memos applied to it so far: an ERP refuses to
    apply more than remains due, so the next one applies at most `total - settled`."""
    erp_status: InvoiceErpStatus = InvoiceErpStatus.NOT_SENT
    idempotency_key: str | None = None
    document_number: str | None = None
    erp_internal_id: str | None = None
    subsidiary: str | None = None
    exception_ids: tuple[str, ...] = ()
    seen_event_ids: tuple[str, ...] = ()


class WaitingChange(LedgerModel):
    """A document waiting for what must come first: "customer" (its ERP upsert),
    "contract:<id>" (signed and known), or "invoice:<id>" (posted, for payments and credit memos)."""

    change: ChangeEvent
    waits_for: NonEmptyStr
    parked_at: UtcDatetime
    offending: MessageRef | None = None  # where it came from, for the exception that may follow


class CustomerInvoices(LedgerModel):
    """Stage 2's document state of one customer."""

    customer_id: NonEmptyStr
    invoices: dict[str, InvoiceRow] = Field(default_factory=dict)
    waiting: tuple[WaitingChange, ...] = ()
    payments: dict[str, str] = Field(default_factory=dict)  # payment id → idempotency key sent
    credit_memos: dict[str, str] = Field(default_factory=dict)  # credit memo id → idempotency key sent
    confirmed: dict[str, str] = Field(default_factory=dict)
    """Idempotency key → ERP internal id, for every payment and credit memo the ERP confirmed."""


invoice_table = app.Table(
    "invoice-state",
    # Raw bytes both ways: keys are UTF-8 ids as on the topics, so a key hashes to the same
    # partition as the topic's; values are pydantic rows as JSON (tables/rows.py).
    key_type=bytes,
    value_type=bytes,
    partitions=settings.partitions,
    help="Invoices per canonical customer id: snapshot status, version, ERP status.",
)
