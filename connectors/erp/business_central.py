"""Canonical ERP commands → Business Central API v2.0 bodies, and its entities → `ErpDocument`.

The bodies use Business Central's own property names (shared/research/erp-apis.md §B,
checked by `check_body` against `business_central_entities.json`); amounts go as `Decimal`s in
major units (written exactly by `netsuite.dumps`, read back with `netsuite.loads`), dates as
`YYYY-MM-DD`. Pure: no I/O, no clock.

Business Central has no external id and no upsert. ledgerflow's keys become values of its own
fields, deterministically, so a lookup after an uncertain write finds what the write made:
`bc_code` fits an external id into a Code[N] field (the customer's `number`, Code[20]; a
document's `externalDocumentNumber`, Code[35]; a payment line's `documentNumber`, Code[20],
which its posted ledger entries keep). Code fields are stored upper-cased, so a key that does
not fit as it is becomes "LF" + a base32 digest of it.

A subsidiary books in its own company (`BusinessCentralIds.companies`); the company's local
currency is written as an empty `currencyCode`, as Business Central does. Tax is Business
Central's to compute from the line's `taxCode`: the client compares the totals it answers with
the billing platform's before it posts (`totals_agree`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from canonical.commands import (
    ApplyPayment,
    ErpCommand,
    ErpInvoiceLine,
    PostCreditMemo,
    PostInvoice,
    UpsertCustomer,
    VoidInvoice,
)
from canonical.money import currency_exponent
from connectors.erp.errors import ErpMappingError
from connectors.erp.mapping import present, to_major_units, to_minor_units
from connectors.erp.schemas import ErpDocument, RecordType
from streams.mappings import BusinessCentralCompany, BusinessCentralIds, Mappings

SCHEMA_PATH = Path(__file__).with_name("business_central_entities.json")
CUSTOMER_NUMBER_WIDTH = 20
DOCUMENT_NUMBER_WIDTH = 20
EXTERNAL_DOCUMENT_NUMBER_WIDTH = 35
UNIT_PRICE_PLACES = 5
"""Business Central's default unit-amount rounding precision (0.00001)."""
PaymentSign = Literal["negative", "positive"]
"""The sign of a customer payment journal line's amount: a receipt credits the customer, so
Business Central's data model has it negative, while Microsoft's API example sends 1500 [UNSURE]."""

ENTITIES: dict[RecordType, str] = {
    RecordType.CUSTOMER: "customer",
    RecordType.INVOICE: "salesInvoice",
    RecordType.CREDIT_MEMO: "salesCreditMemo",
    RecordType.CUSTOMER_PAYMENT: "customerPayment",
}
ENTITY_SETS: dict[RecordType, str] = {
    RecordType.CUSTOMER: "customers",
    RecordType.INVOICE: "salesInvoices",
    RecordType.CREDIT_MEMO: "salesCreditMemos",
}
"""The entity set of each record type under a company (payments are a journal's)."""
LINES = {RecordType.INVOICE: "salesInvoiceLines", RecordType.CREDIT_MEMO: "salesCreditMemoLines"}
"""The navigation property a sales document's lines are written and read in."""
KEY_FIELDS = {
    RecordType.CUSTOMER: "number",
    RecordType.INVOICE: "externalDocumentNumber",
    RecordType.CREDIT_MEMO: "externalDocumentNumber",
    RecordType.CUSTOMER_PAYMENT: "documentNumber",
}
"""The property that holds ledgerflow's key of a record (`BcRecord.key`): what it is looked up by."""
DRAFT = "Draft"
CANCELED = "Canceled"
_CODE_CHARS = re.compile(r"^[A-Z0-9_\-]+$")


class BusinessCentralMappingError(ErpMappingError):
    """The mappings name no company, account or tax code Business Central needs for a command."""


def bc_code(external_id: str, width: int) -> str:
    """An external id as a Code[width] value: itself upper-cased when it fits, else "LF" and
    a base32 SHA-256 digest of it (upper-case by construction, `width - 2` characters, at least
    90 bits: a collision among one company's documents is not a practical concern). Case is
    folded either way, as Business Central folds it."""
    upper = external_id.upper()
    if len(upper) <= width and _CODE_CHARS.match(upper):
        return upper
    digest = base64.b32encode(hashlib.sha256(external_id.encode()).digest()).decode().rstrip("=")
    return "LF" + digest[: width - 2]


def customer_number(external_id: str) -> str:
    """The customer's `number` ledgerflow gives it (ledgerflow's ids are longer than Code[20])."""
    return bc_code(external_id, CUSTOMER_NUMBER_WIDTH)


@dataclass(frozen=True)
class BcRecord:
    """One write: the company it goes to, the entity set, the body."""

    record_type: RecordType
    company: BusinessCentralCompany
    key: str
    """What a lookup filters on: the customer's `number`, a document's `externalDocumentNumber`,
    a payment line's `documentNumber`, the invoice's id for a cancel."""
    body: dict[str, Any]
    action: Literal["create", "cancel"] = "create"
    total: int | None = None
    """The document total in minor units the billing platform charged (the client checks
    Business Central's computed total against it before posting)."""
    tax_total: int | None = None


class BusinessCentralMapper:
    """Builds each command's Business Central body from the mappings."""

    def __init__(self, mappings: Mappings, payment_sign: PaymentSign = "negative") -> None:
        if mappings.business_central is None:
            raise ValueError("Business Central mode needs the mappings' [business_central] section")
        self.mappings = mappings
        self.ids: BusinessCentralIds = mappings.business_central
        self.payment_sign = payment_sign

    def company(self, subsidiary: str) -> BusinessCentralCompany:
        company = self.ids.companies.get(subsidiary)
        if company is None:
            raise BusinessCentralMappingError(f"no Business Central company for subsidiary {subsidiary!r}")
        return company

    def record(self, command: ErpCommand, invoice_id: str | None = None) -> BcRecord:
        """The write a command makes; `invoice_id` is the Business Central id of the invoice a
        payment, credit memo or void references (the client resolves it first)."""
        if isinstance(command, UpsertCustomer):
            return self._customer(command)
        if isinstance(command, PostInvoice):
            return self._invoice(command)
        if isinstance(command, ApplyPayment):
            return self._payment(command, invoice_id)
        if isinstance(command, PostCreditMemo):
            return self._credit_memo(command, invoice_id)
        if isinstance(command, VoidInvoice):
            if invoice_id is None:
                raise ValueError("the invoice's Business Central id must be resolved before a cancel")
            company = self.company(command.subsidiary)
            return BcRecord(RecordType.INVOICE, company, invoice_id, {}, action="cancel")
        raise BusinessCentralMappingError(f"Business Central has no record for {type(command).__name__}")

    def _currency_code(self, company: BusinessCentralCompany, currency: str) -> str:
        return "" if currency == company.currency else currency

    def _customer(self, command: UpsertCustomer) -> BcRecord:
        customer = command.document
        company = self.company(command.subsidiary)
        number = customer_number(command.external_id)
        body: dict[str, Any] = {
            "number": number,
            "displayName": (customer.name or command.external_id)[:100],
            "type": "Company",
            "email": customer.email,
            "country": customer.country,
            "currencyCode": self._currency_code(company, customer.currency) if customer.currency else None,
            "blocked": "All" if customer.deleted else " ",
        }
        return BcRecord(RecordType.CUSTOMER, company, number, present(body))

    def _invoice(self, command: PostInvoice) -> BcRecord:
        doc = command.document
        company = self.company(doc.subsidiary)
        lines = [self._item_line(line, doc.currency) for line in doc.lines]
        if doc.shipping_total:
            if self.ids.shipping_account is None:
                raise BusinessCentralMappingError(
                    "the invoice has shipping and the mappings name no shipping_account"
                )
            lines.append(
                _account_line(self.ids.shipping_account, "Shipping", doc.shipping_total, doc.currency)
            )
        key = bc_code(doc.external_id, EXTERNAL_DOCUMENT_NUMBER_WIDTH)
        body: dict[str, Any] = {
            "externalDocumentNumber": key,
            "customerNumber": customer_number(doc.customer_external_id),
            "invoiceDate": doc.tran_date.isoformat(),
            "postingDate": doc.tran_date.isoformat(),
            "dueDate": doc.due_date.isoformat() if doc.due_date else None,
            "customerPurchaseOrderReference": doc.memo[:35] if doc.memo else None,
            "currencyCode": self._currency_code(company, doc.currency),
            "salesInvoiceLines": lines,
        }
        return BcRecord(
            RecordType.INVOICE, company, key, present(body), total=doc.total, tax_total=doc.tax_total
        )

    def _item_line(self, line: ErpInvoiceLine, currency: str) -> dict[str, Any]:
        quantity, unit_price = _quantity_and_price(line.amount, line.quantity, currency)
        if line.tax_amount and line.tax_code is None:
            raise BusinessCentralMappingError(f"line {line.line_no} is taxed but names no tax code")
        entry = {
            "lineType": "Item",
            "lineObjectNumber": line.item,
            "description": (line.description or line.item)[:100],
            "quantity": quantity,
            "unitPrice": unit_price,
            "taxCode": line.tax_code,
        }
        return present(entry)

    def _payment(self, command: ApplyPayment, invoice_id: str | None) -> BcRecord:
        doc = command.document
        company = self.company(doc.subsidiary)
        if doc.currency != company.currency:
            # A journal line's amount is in the journal's currency; a foreign-currency receipt
            # needs a currency code the v2.0 customerPayments entity does not have.
            raise BusinessCentralMappingError(
                f"a {doc.currency} payment cannot be entered in company {company.id} (local currency "
                f"{company.currency}): Business Central's customerPayments API has no currency"
            )
        amount = to_major_units(doc.amount, doc.currency)
        applied = doc.amount if doc.applied is None else doc.applied
        key = bc_code(doc.external_id, DOCUMENT_NUMBER_WIDTH)
        body: dict[str, Any] = {
            "customerNumber": customer_number(doc.customer_external_id),
            "postingDate": doc.tran_date.isoformat(),
            "documentNumber": key,
            "externalDocumentNumber": bc_code(doc.external_id, EXTERNAL_DOCUMENT_NUMBER_WIDTH),
            "amount": -amount if self.payment_sign == "negative" else amount,
            # What is not applied stays open on the customer's ledger as a payment.
            "appliesToInvoiceId": _own(invoice_id, "invoice") if applied else None,
            "description": doc.source.payment_id[:100],
        }
        return BcRecord(RecordType.CUSTOMER_PAYMENT, company, key, present(body), total=doc.amount)

    def _credit_memo(self, command: PostCreditMemo, invoice_id: str | None) -> BcRecord:
        doc = command.document
        company = self.company(doc.subsidiary)
        if self.ids.credit_account is None:
            raise BusinessCentralMappingError("the mappings name no credit_account to book a credit memo to")
        line = _account_line(self.ids.credit_account, "Credit", doc.subtotal, doc.currency)
        if doc.tax_total:
            if company.credit_tax_code is None:
                raise BusinessCentralMappingError(f"no credit_tax_code for subsidiary {doc.subsidiary!r}")
            line["taxCode"] = company.credit_tax_code
        applied = doc.total if doc.applied is None else doc.applied
        key = bc_code(doc.external_id, EXTERNAL_DOCUMENT_NUMBER_WIDTH)
        body: dict[str, Any] = {
            "externalDocumentNumber": key,
            "customerNumber": customer_number(doc.customer_external_id),
            "creditMemoDate": doc.tran_date.isoformat(),
            "postingDate": doc.tran_date.isoformat(),
            "currencyCode": self._currency_code(company, doc.currency),
            # Linked to its invoice, a posted credit memo applies to what remains due on it.
            "invoiceId": _own(invoice_id, "invoice") if applied else None,
            "salesCreditMemoLines": [line],
        }
        return BcRecord(
            RecordType.CREDIT_MEMO, company, key, present(body), total=doc.total, tax_total=doc.tax_total
        )

    # -- what Business Central answers -------------------------------------------------------

    def document(
        self, record_type: RecordType, company: BusinessCentralCompany, payload: dict[str, Any]
    ) -> ErpDocument:
        """An entity read back: its total in minor units (exactly, or an error), its currency as
        an ISO code (the company's for an empty code), its status and number."""
        currency = iso_currency(payload, company)
        if record_type is RecordType.CUSTOMER_PAYMENT:
            amount = payload.get("amount")
            total = abs(to_minor_units(amount, currency)) if amount is not None else None
            number = key = payload.get("documentNumber")
        else:
            amount = payload.get("totalAmountIncludingTax")
            total = to_minor_units(amount, currency) if amount is not None else None
            number = payload.get("number")
            key = payload.get("number" if record_type is RecordType.CUSTOMER else "externalDocumentNumber")
        return ErpDocument(
            record_type=record_type,
            external_id=str(key) if key else None,
            erp_internal_id=str(payload["id"]),
            document_number=str(number) if number else None,
            status=str(payload["status"]) if payload.get("status") else None,
            currency=currency,
            total=total,
            body=payload,
        )


def totals_agree(record: BcRecord, payload: dict[str, Any]) -> str | None:
    """None when Business Central's computed totals of a draft are the billing platform's; else
    what differs, in words (its tax setup computed another tax than the one charged)."""
    if record.total is None:
        return None
    currency = iso_currency(record.body, record.company)
    problems = []
    for name, expected in (("totalAmountIncludingTax", record.total), ("totalTaxAmount", record.tax_total)):
        value = payload.get(name)
        if expected is None or value is None:
            continue
        got = to_minor_units(value, currency)
        if got != expected:
            problems.append(
                f"{name} {value} {currency} where the billing platform charged "
                f"{to_major_units(expected, currency)}"
            )
    return "; ".join(problems) or None


def iso_currency(body: dict[str, Any], company: BusinessCentralCompany) -> str:
    """A body's currency as an ISO code: an empty currencyCode is the company's local currency."""
    return str(body.get("currencyCode") or "") or company.currency


def _quantity_and_price(amount: int, quantity: int, currency: str) -> tuple[int, Decimal]:
    """Quantity and unit price whose product Business Central rounds to `amount` exactly; when
    no unit price of at most 5 decimals does, the line goes as 1 x amount (the amount books)."""
    if quantity <= 0:
        if amount:
            raise BusinessCentralMappingError(f"a line of quantity 0 cannot carry {amount} minor units")
        return quantity, Decimal(0)
    major = to_major_units(amount, currency)
    price = (major / quantity).quantize(Decimal(1).scaleb(-UNIT_PRICE_PLACES))
    if (price * quantity).quantize(Decimal(1).scaleb(-currency_exponent(currency))) == major:
        return quantity, _plain(price)
    return 1, major


def _plain(value: Decimal) -> Decimal:
    """Without trailing zeros, never in exponent form: 12.50000 → 12.5, 100.00000 → 100."""
    normal = value.normalize()
    exponent = normal.as_tuple().exponent
    return normal.quantize(Decimal(1)) if isinstance(exponent, int) and exponent > 0 else normal


def _account_line(account: str, description: str, amount: int, currency: str) -> dict[str, Any]:
    return {
        "lineType": "Account",
        "lineObjectNumber": account,
        "description": description,
        "quantity": 1,
        "unitPrice": to_major_units(amount, currency),
    }


def _own(internal_id: str | None, what: str) -> str:
    if internal_id is None:
        raise ValueError(f"the {what}'s Business Central id must be resolved before the body is built")
    return internal_id


# -- the schema check -----------------------------------------------------------------------


@functools.cache
def _entities() -> dict[str, dict[str, Any]]:
    raw: dict[str, dict[str, Any]] = json.loads(SCHEMA_PATH.read_text("utf-8"))["entities"]
    return raw


def check_body(entity: str, body: dict[str, Any], path: str = "") -> list[str]:
    """What is wrong with a body written to `entity`, as Business Central would refuse it: an
    unknown or read-only property, a wrong type, a Code or Text value too long, a lower-case
    code, an option that does not exist, a float. Empty when nothing is."""
    shape = _entities()[entity]
    properties: dict[str, str] = shape["properties"]
    read_only = set(shape["read_only"])
    problems: list[str] = []
    for name, value in body.items():
        where = f"{path}{name}"
        kind = properties.get(name)
        if kind is None:
            problems.append(f"{where}: the property does not exist on {entity}")
            continue
        if name in read_only:
            problems.append(f"{where}: the property is read-only")
            continue
        problem = _type_problem(kind, value)
        if problem is not None:
            problems.append(f"{where}: {problem}")
        elif kind.startswith("lines:"):
            for i, line in enumerate(value):
                problems += check_body(kind.split(":", 1)[1], line, f"{where}[{i}].")
    return problems


def _type_problem(kind: str, value: Any) -> str | None:
    name, _, arg = kind.partition(":")
    if isinstance(value, float):
        return "a float: amounts and quantities go as exact decimals"
    if name in ("string", "code", "guid", "date", "enum") and not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    if name == "string" and len(value) > int(arg):
        return f"longer than {arg} characters"
    if name == "code" and (len(value) > int(arg) or value != value.upper()):
        return f"not a Code[{arg}] (at most {arg} characters, upper case)"
    if name == "enum" and value not in arg.split("|"):
        return f"{value!r} is not an option ({arg.replace('|', ', ')})"
    if name == "date":
        try:
            date.fromisoformat(value)
        except ValueError:
            return f"{value!r} is not a date (YYYY-MM-DD)"
    if name == "decimal" and (isinstance(value, bool) or not isinstance(value, int | Decimal)):
        return f"expected a number, got {type(value).__name__}"
    if name == "boolean" and not isinstance(value, bool):
        return f"expected true or false, got {type(value).__name__}"
    if name == "lines" and not (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
        return "expected an array of objects"
    return None
