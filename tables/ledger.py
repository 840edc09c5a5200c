"""The sink's posting ledger, per canonical customer: every command's delivery state, and the
customer's lane when the ERP keeps failing (the blocked command and what queues behind it)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from canonical import AnyErpCommand, LedgerModel, UtcDatetime
from canonical.base import NonEmptyStr
from streams.app import app
from streams.settings import settings


class DeliveryState(StrEnum):
    IN_FLIGHT = "in_flight"  # about to be (or being) written: after a crash, look before creating
    POSTED = "posted"  # the ERP confirmed it
    REJECTED = "rejected"  # the ERP refused it (a permanent error): an exception names why
    PARKED = "parked"  # transient failures past the retry bound: the customer's lane is blocked


class LedgerEntry(LedgerModel):
    idempotency_key: NonEmptyStr
    command: NonEmptyStr
    state: DeliveryState
    attempts: int = 0
    erp_internal_id: str | None = None
    document_number: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    updated_at: UtcDatetime


class CustomerLedger(LedgerModel):
    customer_id: NonEmptyStr
    entries: dict[str, LedgerEntry] = Field(default_factory=dict)
    blocked_on: AnyErpCommand | None = None
    """The command whose retries ran out; the customer's later commands queue behind it, so
    the ERP still receives them in order."""
    queued: tuple[AnyErpCommand, ...] = ()


posting_ledger_table = app.Table(
    "posting-ledger",
    key_type=bytes,
    value_type=bytes,
    partitions=settings.partitions,
    help="Canonical customer id → each ERP command's delivery state and the customer's lane.",
)
