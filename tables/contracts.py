"""Contract state per canonical customer: each contract's status, terms and dates, and the
events that arrived ahead of their turn."""

from __future__ import annotations

from datetime import date

from pydantic import Field

from canonical import ChangeEvent, ContractStatus, LedgerModel, UtcDatetime
from canonical.base import NonEmptyStr
from streams.app import app
from streams.settings import settings


class EarlyChange(LedgerModel):
    """A contract event that arrived before the one it follows (amendment n+1 before n)."""

    change: ChangeEvent
    parked_at: UtcDatetime


class ContractRow(LedgerModel):
    contract_id: NonEmptyStr
    status: ContractStatus
    version: tuple[int, ...]
    amendment_number: int = 0
    effective_date: date
    end_date: date | None = None
    currency: str
    waiting: tuple[EarlyChange, ...] = ()
    seen_event_ids: tuple[str, ...] = ()


class CustomerContracts(LedgerModel):
    customer_id: NonEmptyStr
    contracts: dict[str, ContractRow] = Field(default_factory=dict)


contract_table = app.Table(
    "contract-state",
    key_type=bytes,
    value_type=bytes,
    partitions=settings.partitions,
    help="Contracts per canonical customer id: status, terms, dates, early amendments.",
)
