"""Canonical write-back fields → the Salesforce Account custom fields that hold them. Pure.

The custom fields are installed in the CRM org with these API names; `ledgerflow` writes
them and nothing else, so an account's commercial attributes (owned by the CRM) are never
touched by the write-back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from canonical import CrmAccountFields

ACCOUNT_WRITEBACK_FIELDS: dict[str, str] = {
    "erp_customer_id": "Ledgerflow_ERP_Customer_Id__c",
    "erp_customer_number": "Ledgerflow_ERP_Customer_Number__c",
    "last_invoice_number": "Ledgerflow_Last_Invoice_Number__c",
    "last_invoice_status": "Ledgerflow_Last_Invoice_Status__c",
    "last_payment_status": "Ledgerflow_Last_Payment_Status__c",
    "updated_at": "Ledgerflow_ERP_Synced_At__c",
}
"""`CrmAccountFields` field → Salesforce Account field API name (text fields, and one
DateTime for `updated_at`)."""


def salesforce_datetime(value: datetime) -> str:
    """A DateTime as Salesforce's REST API writes and reads it: `2026-03-01T12:00:00.000Z`."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def account_fields(fields: CrmAccountFields) -> dict[str, Any]:
    """The JSON body of the Account PATCH: only the fields this write-back sets."""
    body: dict[str, Any] = {}
    for name, value in fields.model_dump(exclude_none=True).items():
        body[ACCOUNT_WRITEBACK_FIELDS[name]] = (
            salesforce_datetime(value) if isinstance(value, datetime) else value
        )
    return body
