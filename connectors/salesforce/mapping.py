"""Salesforce CDC → canonical `ChangeEvent`s. Pure: no Kafka, no clock, no I/O.

What CDC promises (design §3): `transactionKey` groups one transaction's changes and
`sequenceNumber` orders them inside it; `commitNumber` is diagnostic only; `recordIds` may
name several records (fan out); an UPDATE carries only `changedFields`/`nulledFields` (merge,
never overwrite); `GAP_*` means "re-read the record"; `changeOrigin` lets us drop the echo of
ledgerflow's own write-backs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from canonical import ChangeEvent, Contract, ContractStatus, Customer, EntityType, Source
from canonical.events import Entity
from canonical.money import UnknownCurrencyError, currency_exponent
from connectors.errors import Rejection, RejectionReason, rejection_from
from connectors.salesforce.schemas import ChangeEventHeader, payload_of
from streams.headers import stable_id

CustomerResolver = Callable[[Source, str], str]

WRITEBACK_CLIENT = "ledgerflow-writeback"
"""The `client=` our CRM write-back sends (Sforce-Call-Options); its echoes are dropped."""

# Salesforce field → canonical Customer field. Compound address fields arrive flattened in
# changedFields ("BillingAddress.CountryCode") and nested in the payload.
ACCOUNT_FIELDS = {
    "Name": "name",
    "BillingCountryCode": "country",
    "BillingAddress.CountryCode": "country",
    "ParentId": "parent_account_id",
    "CurrencyIsoCode": "currency",
    "Tax_Id__c": "tax_ids",
}
CONTACT_FIELDS = {"Email": "email"}
CONTRACT_STATUS = {
    "Draft": ContractStatus.DRAFT,
    "In Approval Process": ContractStatus.DRAFT,
    "Activated": ContractStatus.ACTIVE,
    "Expired": ContractStatus.EXPIRED,
    "Terminated": ContractStatus.TERMINATED,
}


class ResyncRequired(Rejection):
    """A GAP_* event: Salesforce could not deliver the change itself; re-read the records."""

    def __init__(self, header: ChangeEventHeader) -> None:
        super().__init__(
            RejectionReason.INVALID_VALUE,
            f"{header.changeType} for {header.entityName}: re-read {len(header.recordIds)} record(s)",
            ("ChangeEventHeader.changeType",),
        )
        self.header = header


def _is_echo(header: ChangeEventHeader, client: str) -> bool:
    return any(part.strip() == f"client={client}" for part in header.changeOrigin.split(";"))


def _get(payload: dict[str, Any], dotted: str) -> Any:
    node: Any = payload
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _canonical_values(payload: dict[str, Any], fields: dict[str, str], present: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sf_name, name in fields.items():
        if sf_name not in present and sf_name.split(".")[0] not in present:
            continue
        value = _get(payload, sf_name)
        if out.get(name) is not None:
            continue  # two Salesforce spellings of one field: the first that has a value wins
        if name == "tax_ids":
            value = (value,) if isinstance(value, str) and value else ()
        elif name == "currency" and isinstance(value, str):
            try:
                currency_exponent(value.upper())
            except UnknownCurrencyError:
                raise Rejection(
                    RejectionReason.INVALID_VALUE, "not an ISO-4217 currency", (sf_name,)
                ) from None
        out[name] = value
    return out


def _date(value: Any, field: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise Rejection(RejectionReason.INVALID_VALUE, "not an ISO date", (field,)) from None


def _present_fields(header: ChangeEventHeader, payload: dict[str, Any]) -> set[str] | None:
    """The fields this event carries: for an UPDATE, only those changed or nulled."""
    if header.changeType == "UPDATE":
        return set(header.changedFields) | set(header.nulledFields)
    return None  # CREATE / UNDELETE / DELETE: a full record


def _account(
    record_id: str, payload: dict[str, Any], present: set[str] | None
) -> tuple[Customer, tuple[str, ...] | None]:
    fields = present if present is not None else set(payload) | {f.split(".")[0] for f in ACCOUNT_FIELDS}
    values = _canonical_values(payload, ACCOUNT_FIELDS, fields)
    if isinstance(values.get("country"), str):
        values["country"] = values["country"].upper()
    customer = Customer(source_ref=record_id, crm_account_id=record_id, **values)
    return customer, (tuple(sorted(values)) if present is not None else None)


def _contact(payload: dict[str, Any], present: set[str] | None) -> tuple[str, Customer, tuple[str, ...]]:
    account = payload.get("AccountId")
    if not isinstance(account, str) or not account:
        # An UPDATE that does not change AccountId does not carry it: the contact → account
        # link lives in stage 2's identity table (issue #4).
        raise Rejection(RejectionReason.MISSING_FIELD, "contact change without AccountId", ("AccountId",))
    fields = present if present is not None else set(payload)
    values = _canonical_values(payload, CONTACT_FIELDS, fields)
    return account, Customer(source_ref=account, crm_account_id=account, **values), tuple(sorted(values))


def _contract(entity: str, record_id: str, payload: dict[str, Any]) -> Contract | None:
    account = payload.get("AccountId")
    currency = payload.get("CurrencyIsoCode")
    if entity == "Opportunity":
        if not payload.get("IsWon") and payload.get("StageName") != "Closed Won":
            return None  # only closed-won opportunities become contracts
        status, start, end = ContractStatus.SIGNED, _date(payload.get("CloseDate"), "CloseDate"), None
    else:  # Contract or Order
        raw_status = payload.get("Status")
        status = (
            CONTRACT_STATUS.get(raw_status, ContractStatus.DRAFT)
            if isinstance(raw_status, str)
            else ContractStatus.DRAFT
        )
        start_field = "StartDate" if entity == "Contract" else "EffectiveDate"
        start, end = _date(payload.get(start_field), start_field), _date(payload.get("EndDate"), "EndDate")
    missing = [name for name, value in (("AccountId", account), ("CurrencyIsoCode", currency)) if not value]
    if start is None:
        missing.append("CloseDate" if entity == "Opportunity" else "StartDate")
    if missing:
        # Contract terms are only posted from full records; a partial CDC update of a contract
        # is re-read (issue #4's client) rather than guessed.
        raise Rejection(
            RejectionReason.MISSING_FIELD, f"{entity} without {', '.join(missing)}", tuple(missing)
        )
    assert start is not None
    return Contract(
        contract_id=record_id,
        crm_account_id=str(account),
        status=status,
        effective_date=start,
        end_date=end,
        currency=str(currency),
    )


def map_cdc_event(
    raw: bytes,
    resolve_customer: CustomerResolver,
    correlation_id: str | None = None,
    writeback_client: str = WRITEBACK_CLIENT,
) -> list[ChangeEvent]:
    """One CDC message → one canonical event per record it names ([] for echoes and entities
    ledgerflow does not book). Raises `ResyncRequired` for GAP_* and `Rejection` for bad input."""
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Rejection(RejectionReason.NOT_JSON, f"body is not JSON ({exc.msg})") from None
    payload = payload_of(message) if isinstance(message, dict) else None
    if payload is None:
        raise Rejection(
            RejectionReason.SCHEMA_INVALID, "no CDC payload with a ChangeEventHeader", ("payload",)
        )
    try:
        header = ChangeEventHeader.model_validate(payload.get("ChangeEventHeader"))
    except ValidationError as exc:
        raise rejection_from(
            exc, RejectionReason.SCHEMA_INVALID, "ChangeEventHeader", "invalid ChangeEventHeader"
        ) from None
    if header.changeType.startswith("GAP_"):
        raise ResyncRequired(header)
    if _is_echo(header, writeback_client):
        return []
    if header.changeType not in ("CREATE", "UPDATE", "DELETE", "UNDELETE"):
        raise Rejection(
            RejectionReason.INVALID_VALUE, "unknown changeType", ("ChangeEventHeader.changeType",)
        )

    present = _present_fields(header, payload)
    deleted = header.changeType == "DELETE"
    base_id = f"sf-{header.transactionKey}-{header.sequenceNumber}"
    correlation_id = correlation_id or stable_id("correlation", "salesforce", header.transactionKey)
    version = (header.commitTimestamp, header.sequenceNumber)
    out: list[tuple[EntityType, str, str, Entity, tuple[str, ...] | None]] = []
    try:
        for record_id in header.recordIds:
            if header.entityName == "Account":
                customer, changed = _account(record_id, payload, None if deleted else present)
                out.append((EntityType.CUSTOMER, record_id, record_id, customer, changed))
            elif header.entityName == "Contact":
                if deleted:
                    continue  # a deleted contact changes no posting
                account, customer, changed = _contact(payload, present)
                out.append((EntityType.CUSTOMER, account, account, customer, changed))
            elif header.entityName in ("Opportunity", "Contract", "Order"):
                if present is not None:
                    raise Rejection(
                        RejectionReason.MISSING_FIELD,
                        f"partial {header.entityName} update: re-read the record",
                        tuple(sorted(present)),
                    )
                contract = _contract(header.entityName, record_id, payload)
                if contract is not None:
                    out.append((EntityType.CONTRACT, record_id, contract.crm_account_id, contract, None))
    except ValidationError as exc:
        raise rejection_from(
            exc, RejectionReason.SCHEMA_INVALID, detail=f"{header.entityName} does not map"
        ) from None
    try:
        occurred = datetime.fromtimestamp(header.commitTimestamp / 1000, UTC)
    except (OverflowError, OSError, ValueError):  # past year 9999, or beyond the C time_t
        raise Rejection(
            RejectionReason.INVALID_VALUE,
            "commitTimestamp is out of range",
            ("ChangeEventHeader.commitTimestamp",),
        ) from None
    # The envelope's own limits (an id past 512 characters, say): input that cannot make a
    # canonical event is a rejection too, never an error that stops the stage.
    try:
        events = [
            ChangeEvent(
                event_id=f"{base_id}-{entity_id}" if len(header.recordIds) > 1 else base_id,
                source=Source.SALESFORCE,
                source_type=f"{header.entityName}.{header.changeType}",
                entity_type=entity_type,
                entity_id=entity_id,
                entity_version=version,
                customer_ref=customer_ref,
                customer_id=resolve_customer(Source.SALESFORCE, customer_ref),
                occurred_at=occurred,
                correlation_id=correlation_id,
                payload=entity,
                changed_fields=changed,
                deleted=deleted,
            )
            for entity_type, entity_id, customer_ref, entity, changed in out
        ]
    except ValidationError as exc:
        raise rejection_from(exc, RejectionReason.SCHEMA_INVALID, "event") from None
    return events
