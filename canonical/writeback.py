"""CRM write-back: what the ERP confirmed, as the fields finance reads on the CRM account.

Stage 2 turns each confirmed `PostingResult` into a `CrmWriteback` (`writeback_for`) and sends
it to `crm.writeback`, keyed by CRM account id; the write-back agent coalesces one account's
write-backs (`merge_writebacks`) and PATCHes the account once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import StringConstraints, model_validator

from canonical.base import ExternalId, LedgerModel, NonEmptyStr, TopicModel, UtcDatetime, to_external_id
from canonical.commands import PostingOutcome, PostingResult

_CRM_ACCOUNT_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
CrmAccountId = Annotated[str, StringConstraints(pattern=_CRM_ACCOUNT_ID.pattern)]
"""A Salesforce record id: 15 characters (case-sensitive) or 18 (case-safe)."""

CrmInvoiceStatus = Literal["posted", "voided"]
CrmPaymentStatus = Literal["paid"]


def is_crm_account_id(value: str | None) -> bool:
    """Whether `value` can name a Salesforce Account (and so be put in a REST path)."""
    return value is not None and _CRM_ACCOUNT_ID.match(value) is not None


class CrmAccountFields(LedgerModel):
    """The ERP's view of a customer, as the CRM account shows it. A field left None is not
    part of this write-back: the account keeps the value it has."""

    erp_customer_id: NonEmptyStr | None = None
    """The ERP's internal id of the customer record."""
    erp_customer_number: NonEmptyStr | None = None
    """The customer number the ERP shows (NetSuite `entityId`)."""
    last_invoice_number: NonEmptyStr | None = None
    """The ERP document number of the invoice most recently posted or voided."""
    last_invoice_status: CrmInvoiceStatus | None = None
    last_payment_status: CrmPaymentStatus | None = None
    """"paid" once the ERP applied a payment to one of the customer's invoices."""
    updated_at: UtcDatetime
    """When the ERP confirmed what this write-back reports (not when it was sent)."""

    @model_validator(mode="after")
    def _says_something(self) -> CrmAccountFields:
        if not self.changes():
            raise ValueError("a write-back must set at least one field besides updated_at")
        return self

    def changes(self) -> dict[str, Any]:
        """The fields this write-back sets, updated_at excluded."""
        return {k: v for k, v in self.model_dump(exclude_none=True).items() if k != "updated_at"}


class CrmWriteback(TopicModel):
    """ERP ids and statuses to write to one CRM account (`crm.writeback`, keyed by account id)."""

    idempotency_key: ExternalId
    crm_account_id: CrmAccountId
    customer_id: NonEmptyStr
    correlation_id: NonEmptyStr
    fields: CrmAccountFields


def _fields_for(result: PostingResult) -> dict[str, Any] | None:
    if result.command == "upsert_customer":
        return {"erp_customer_id": result.erp_internal_id, "erp_customer_number": result.document_number}
    if result.command == "post_invoice":
        return {"last_invoice_number": result.document_number, "last_invoice_status": "posted"}
    if result.command == "void_invoice":
        return {"last_invoice_number": result.document_number, "last_invoice_status": "voided"}
    if result.command == "apply_payment":
        return {"last_payment_status": "paid"}
    return None  # contracts and credit memos change nothing finance reads on the account


def writeback_for(result: PostingResult, crm_account_id: str | None) -> CrmWriteback | None:
    """What a confirmed ERP posting means for the customer's CRM account, or None: nothing for
    a failed posting, a command the account does not show, or a customer without a (valid)
    CRM account id. Deterministic: the same result always yields the same write-back."""
    if result.outcome is not PostingOutcome.POSTED or not is_crm_account_id(crm_account_id):
        return None
    values = _fields_for(result)
    if values is None or result.posted_at is None:
        return None
    assert crm_account_id is not None
    return CrmWriteback(
        idempotency_key=to_external_id("crm_writeback", result.idempotency_key),
        crm_account_id=crm_account_id,
        customer_id=result.customer_id,
        correlation_id=result.correlation_id,
        fields=CrmAccountFields(
            **{k: v for k, v in values.items() if v is not None}, updated_at=result.posted_at
        ),
    )


def merge_writebacks(writebacks: Sequence[CrmWriteback]) -> CrmWriteback:
    """One account's write-backs as one: per field, the value of the newest write-back that
    sets it wins (newest by `updated_at`, then by arrival). The result carries the newest
    write-back's key and correlation id."""
    if not writebacks:
        raise ValueError("nothing to merge")
    if len({w.crm_account_id for w in writebacks}) > 1:
        raise ValueError("write-backs of different CRM accounts cannot be merged")
    ordered = sorted(writebacks, key=lambda w: w.fields.updated_at)  # stable: arrival breaks ties
    values: dict[str, Any] = {}
    for writeback in ordered:
        values.update(writeback.fields.changes())
    newest = ordered[-1]
    if len(ordered) == 1:
        return newest
    return newest.model_copy(
        update={"fields": CrmAccountFields(**values, updated_at=newest.fields.updated_at)}
    )
