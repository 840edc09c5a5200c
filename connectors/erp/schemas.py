"""The ERP's own shapes: record types, the records ledgerflow sends, what the ERP answers."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field


class RecordType(StrEnum):
    """NetSuite record type names, which ledgerflow uses for every ERP's records."""

    CUSTOMER = "customer"
    SALES_ORDER = "salesOrder"
    INVOICE = "invoice"
    CUSTOMER_PAYMENT = "customerPayment"
    CREDIT_MEMO = "creditMemo"


class SuiteqlTable(NamedTuple):
    """Where NetSuite's SuiteQL keeps a record type."""

    table: str
    type: str | None
    """The transaction type (`transaction.type`), None for an entity table."""
    number: str
    """The column of the document number NetSuite assigns."""


SUITEQL_TABLES: dict[RecordType, SuiteqlTable] = {
    RecordType.CUSTOMER: SuiteqlTable("customer", None, "entityid"),
    RecordType.INVOICE: SuiteqlTable("transaction", "CustInvc", "tranid"),
    RecordType.CUSTOMER_PAYMENT: SuiteqlTable("transaction", "CustPymt", "tranid"),
    RecordType.CREDIT_MEMO: SuiteqlTable("transaction", "CustCred", "tranid"),
    RecordType.SALES_ORDER: SuiteqlTable("transaction", "SalesOrd", "tranid"),
}
"""Each record type's SuiteQL table, transaction type and number column (client and sandbox)."""

POSTING_RECORD_TYPES = frozenset({RecordType.INVOICE, RecordType.CUSTOMER_PAYMENT, RecordType.CREDIT_MEMO})
"""Records that hit the general ledger, so a closed accounting period refuses them."""


VOIDED = "voided"
DRAFT = "draft"


class _ErpModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ErpRecord(_ErpModel):
    """One NetSuite record as it is sent: what `NetSuiteMapper.record` makes of a command.

    `action` "upsert" creates or updates the record by external id; "void" updates an existing
    invoice's status to voided and must never create one."""

    record_type: RecordType
    external_id: str = Field(min_length=1)
    body: dict[str, Any]
    action: Literal["upsert", "void"] = "upsert"


class ErpReceipt(_ErpModel):
    """What the ERP confirmed for one delivered command.

    `created` is True when this delivery made a new record, False when the record already
    existed (an update, a replay, or a document an uncertain earlier attempt had created), None
    when the ERP did not say (a NetSuite upsert that was not read back). `document_number` is
    None for a NetSuite payment, credit memo or sales order: only customers and invoices are
    read back for theirs (`client.READ_BACK_RECORD_TYPES`)."""

    record_type: RecordType
    external_id: str
    erp_internal_id: str
    document_number: str | None = None
    created: bool | None


class ErpDocument(_ErpModel):
    """A record read back from the ERP. Amounts are integer minor units of `currency`; `total`
    is the document total, or the amount of a payment."""

    record_type: RecordType
    external_id: str | None
    erp_internal_id: str
    document_number: str | None = None
    status: str | None = None
    currency: str | None = None
    total: int | None = None
    body: dict[str, Any]


def netsuite_error_body(status: int, code: str, detail: str, title: str | None = None) -> dict[str, Any]:
    """A NetSuite REST error body (RFC 9457 problem details with `o:errorDetails`)."""
    return {
        "type": f"https://www.rfc-editor.org/rfc/rfc9110.html#status.{status}",
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "o:errorDetails": [{"detail": detail, "o:errorCode": code}],
    }


def odata_error_body(code: str, message: str) -> dict[str, Any]:
    """An OData error body, as Business Central and SAP answer."""
    return {"error": {"code": code, "message": message}}


_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
