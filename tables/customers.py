"""The customer master, per canonical customer: the record merged from every source by
attribute ownership, and what was last sent to the ERP."""

from __future__ import annotations

from pydantic import Field

from canonical import Customer, LedgerModel
from canonical.base import NonEmptyStr
from streams.app import app
from streams.settings import settings


class CustomerMaster(LedgerModel):
    customer_id: NonEmptyStr
    record: Customer
    versions: dict[str, tuple[int, ...]] = Field(default_factory=dict)  # "source:entity" → newest applied
    upserted_digest: str | None = None  # content of the last UpsertCustomer emitted
    subsidiary: str | None = None
    erp_internal_id: str | None = None  # set once the ERP confirmed an upsert (erp.results)
    seen_event_ids: tuple[str, ...] = ()


customer_table = app.Table(
    "customer-master",
    key_type=bytes,
    value_type=bytes,
    partitions=settings.partitions,
    help="Canonical customer id → the merged customer record and its ERP upsert state.",
)
