"""Canonical ERP commands → the create-only API's records (the sandbox's OData dialect, until
#16 speaks Business Central's own). Pure: no I/O, no clock. NetSuite's bodies are
`connectors.erp.netsuite`'s.

Amounts stay integer minor units next to their ISO-4217 currency code in this dialect.
`to_major_units` and `to_minor_units` convert exactly at an edge that takes major units
(NetSuite), with canonical/money.py's exponent table (JPY 0, USD 2, KWD 3).

References to other ERP records are objects: `{"externalId": …}` for records ledgerflow
created (customer, invoice), `{"id": …}` for configuration records keyed by their code
(subsidiary, item, GL account, tax code).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from canonical.commands import (
    ApplyPayment,
    ErpCommand,
    ErpCreditMemo,
    ErpInvoice,
    ErpPayment,
    PostCreditMemo,
    PostInvoice,
    UpsertContract,
    UpsertCustomer,
    VoidInvoice,
)
from canonical.money import currency_exponent
from connectors.erp.schemas import VOIDED, ErpRecord, RecordType


def to_record(command: ErpCommand) -> ErpRecord:
    """The ERP record a command writes, keyed by the external id that makes it idempotent."""
    if isinstance(command, UpsertCustomer):
        return _customer(command)
    if isinstance(command, UpsertContract):
        return _sales_order(command)
    if isinstance(command, PostInvoice):
        return _invoice(command)
    if isinstance(command, ApplyPayment):
        return _payment(command)
    if isinstance(command, PostCreditMemo):
        return _credit_memo(command)
    if isinstance(command, VoidInvoice):
        return _void(command)
    raise TypeError(f"no ERP record for command type {type(command).__name__}")


def to_major_units(amount: int, currency: str) -> Decimal:
    """Minor units → the exact decimal a major-unit API expects: 123456 USD → Decimal('1234.56')."""
    return Decimal(amount).scaleb(-currency_exponent(currency))


def present(body: dict[str, Any]) -> dict[str, Any]:
    """A body without its None fields: an absent field stays as it is in the ERP, where a null
    would clear it on an update."""
    return {k: v for k, v in body.items() if v is not None}


def to_minor_units(value: Decimal | str | int, currency: str) -> int:
    """A major-unit amount from the ERP → minor units; refuses what does not fit the currency
    (0.005 USD) instead of rounding, so a mismatch shows up as an error, not a lost cent."""
    if isinstance(value, float):
        raise TypeError("amounts are never floats; pass a Decimal or a string")
    minor = Decimal(value).scaleb(currency_exponent(currency))
    if minor != minor.to_integral_value():
        raise ValueError(f"{value} {currency} has more decimals than the currency allows")
    return int(minor)


def _ref(value: str | None, key: str = "id") -> dict[str, str] | None:
    return {key: value} if value is not None else None


def _transaction(doc: ErpInvoice | ErpPayment | ErpCreditMemo) -> dict[str, Any]:
    """The fields every transaction record starts with: its key, customer, subsidiary, currency, date."""
    return {
        "externalId": doc.external_id,
        "customer": _ref(doc.customer_external_id, "externalId"),
        "subsidiary": _ref(doc.subsidiary),
        "currency": doc.currency,
        "tranDate": doc.tran_date.isoformat(),
    }


def _customer(command: UpsertCustomer) -> ErpRecord:
    customer = command.document
    body: dict[str, Any] = {
        "externalId": command.external_id,
        "companyName": customer.name or command.external_id,
        "email": customer.email,
        "subsidiary": _ref(command.subsidiary),
        "currency": customer.currency,
        "country": customer.country,
        "isInactive": customer.deleted,
        "taxIds": list(customer.tax_ids),
        "crmAccountId": customer.crm_account_id,
        "billingCustomerId": customer.billing_customer_id,
        "parentCrmAccountId": customer.parent_account_id,
    }
    return ErpRecord(record_type=RecordType.CUSTOMER, external_id=command.external_id, body=body)


def _sales_order(command: UpsertContract) -> ErpRecord:
    contract = command.document
    lines = [
        {
            "line": i,
            "item": _ref(line.product_id),
            "quantity": line.quantity,
            "rate": line.unit_amount,
            "amount": line.quantity * line.unit_amount,
        }
        for i, line in enumerate(contract.lines, start=1)
    ]
    body: dict[str, Any] = {
        "externalId": command.external_id,
        # The command's subsidiary wins over the contract's legal entity: stage 2 resolved it
        # against the mappings, the contract only carries what CLM typed.
        "customer": _ref(command.customer_id, "externalId"),
        "subsidiary": _ref(command.subsidiary),
        "currency": contract.currency,
        "tranDate": contract.effective_date.isoformat(),
        "startDate": contract.effective_date.isoformat(),
        "endDate": contract.end_date.isoformat() if contract.end_date else None,
        "contractId": contract.contract_id,
        "contractStatus": contract.status.value,
        "amendmentNumber": contract.amendment_number,
        "lines": lines,
        "total": sum(line["amount"] for line in lines),
    }
    return ErpRecord(record_type=RecordType.SALES_ORDER, external_id=command.external_id, body=body)


def _invoice(command: PostInvoice) -> ErpRecord:
    doc = command.document
    body: dict[str, Any] = {
        **_transaction(doc),
        "dueDate": doc.due_date.isoformat() if doc.due_date else None,
        "memo": doc.memo,
        "lines": [
            {
                "line": line.line_no,
                "item": _ref(line.item),
                "account": _ref(line.gl_account),
                "description": line.description,
                "quantity": line.quantity,
                "amount": line.amount,
                "taxCode": _ref(line.tax_code),
                "taxAmount": line.tax_amount,
            }
            for line in doc.lines
        ],
        "subtotal": doc.subtotal,
        "discountTotal": doc.discount_total,
        "taxTotal": doc.tax_total,
        "shippingCost": doc.shipping_total,
        "total": doc.total,
    }
    return ErpRecord(record_type=RecordType.INVOICE, external_id=doc.external_id, body=body)


def _payment(command: ApplyPayment) -> ErpRecord:
    doc = command.document
    body: dict[str, Any] = {
        **_transaction(doc),
        "invoice": _ref(doc.invoice_external_id, "externalId"),
        "amount": doc.amount,
        "paymentMethod": doc.source.method,
        "memo": doc.source.payment_id,
    }
    return ErpRecord(record_type=RecordType.CUSTOMER_PAYMENT, external_id=doc.external_id, body=body)


def _credit_memo(command: PostCreditMemo) -> ErpRecord:
    doc = command.document
    body: dict[str, Any] = {
        **_transaction(doc),
        "invoice": _ref(doc.invoice_external_id, "externalId"),
        "subtotal": doc.subtotal,
        "taxTotal": doc.tax_total,
        "total": doc.total,
    }
    return ErpRecord(record_type=RecordType.CREDIT_MEMO, external_id=doc.external_id, body=body)


def _void(command: VoidInvoice) -> ErpRecord:
    body: dict[str, Any] = {"status": VOIDED, "voidReason": command.reason}
    return ErpRecord(
        record_type=RecordType.INVOICE, external_id=command.invoice_external_id, body=body, action="void"
    )
