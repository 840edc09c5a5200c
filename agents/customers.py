"""The customer master: merging every source's view of a customer by attribute ownership,
and the ERP upsert that follows a real change. Pure."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

import orjson

from canonical import ChangeEvent, Customer, UpsertCustomer, to_external_id
from streams.mappings import Mappings
from tables.customers import CustomerMaster

MERGED_FIELDS = (
    "crm_account_id",
    "billing_customer_id",
    "name",
    "email",
    "country",
    "currency",
    "tax_ids",
    "parent_account_id",
)
ERP_FIELDS = (
    "name",
    "email",
    "country",
    "currency",
    "tax_ids",
    "parent_account_id",
    "crm_account_id",
    "billing_customer_id",
    "deleted",
)


def _empty(value: object) -> bool:
    return value is None or value == ()


def merge_customer(
    master: Customer | None, change: ChangeEvent, ownership: dict[str, str], customer_id: str
) -> Customer:
    """Take from the event the attributes its source owns, and any the record still lacks;
    a partial update (CDC) offers only the fields it changed."""
    incoming = change.payload
    assert isinstance(incoming, Customer)
    base = master or Customer(source_ref=customer_id)
    offered = change.changed_fields if change.changed_fields is not None else MERGED_FIELDS
    updates: dict[str, object] = {}
    for name in offered:
        if name not in MERGED_FIELDS:
            continue
        value = getattr(incoming, name)
        owner = ownership.get(name)
        if owner == change.source.value:
            updates[name] = value  # the system of record, nulls included
        elif not _empty(value) and (owner is None or _empty(getattr(base, name))):
            updates[name] = value  # a fallback until the owner speaks
    if change.deleted or incoming.deleted:
        owner = ownership.get("deleted")
        if owner is None or owner == change.source.value:
            updates["deleted"] = True
    return base.model_copy(update=updates)


def digest(customer: Customer) -> str:
    content = {name: getattr(customer, name) for name in ERP_FIELDS}
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def missing_for_erp(customer: Customer) -> list[str]:
    """What the ERP needs of a customer before documents can be booked to it."""
    return [name for name in ("name",) if _empty(getattr(customer, name))] + (
        ["country"] if customer.country is None and customer.currency is None else []
    )


@dataclass
class CustomerDecision:
    master: CustomerMaster
    upsert: UpsertCustomer | None
    duplicate: bool = False


def decide_customer(
    master: CustomerMaster | None, change: ChangeEvent, mappings: Mappings, now: datetime
) -> CustomerDecision:
    """Merge one customer event; emit an UpsertCustomer when the ERP-relevant content changed
    and the record is complete enough to book to."""
    customer_id = change.customer_id
    if master is not None and change.event_id in master.seen_event_ids:
        return CustomerDecision(master, None, duplicate=True)
    version_key = f"{change.source.value}:{change.entity_id}"
    seen = ((master.seen_event_ids if master else ()) + (change.event_id,))[-32:]
    current = master.versions.get(version_key) if master else None
    if master is not None and current is not None and change.entity_version < current:
        return CustomerDecision(master.model_copy(update={"seen_event_ids": seen}), None)  # stale
    record = merge_customer(master.record if master else None, change, mappings.ownership, customer_id)
    versions = {**(master.versions if master else {}), version_key: change.entity_version}
    updated = CustomerMaster(
        customer_id=customer_id,
        record=record,
        versions=versions,
        upserted_digest=master.upserted_digest if master else None,
        subsidiary=master.subsidiary if master else None,
        erp_internal_id=master.erp_internal_id if master else None,
        seen_event_ids=seen,
    )
    subsidiary = mappings.subsidiary_for(record.country, record.currency or "")
    content = digest(record)
    if missing_for_erp(record) or subsidiary is None or content == updated.upserted_digest:
        return CustomerDecision(updated, None)
    upsert = UpsertCustomer(
        idempotency_key=to_external_id("upsert_customer", customer_id, content),
        customer_id=customer_id,
        correlation_id=change.correlation_id,
        subsidiary=subsidiary.id,
        issued_at=now,
        external_id=customer_id,
        document=record,
    )
    return CustomerDecision(
        updated.model_copy(update={"upserted_digest": content, "subsidiary": subsidiary.id}), upsert
    )
