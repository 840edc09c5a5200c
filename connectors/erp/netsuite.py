"""Canonical ERP commands → NetSuite REST record bodies, and NetSuite's records → `ErpDocument`.

The canonical commands keep integer minor units; this edge converts them exactly: an amount
goes as a `Decimal` in major units with the currency's exponent (JPY 0, USD 2, KWD 3) and is
written as a JSON number (`dumps`), never through a float; what NetSuite answers is parsed
with `Decimal` (`loads`) and converted back to minor units or refused.

Bodies use NetSuite's own field names (shared/research/erp-apis.md §A.3-A.6, checked by
`netsuite_schema`): references by internal id (`{"id": "1"}`), configuration records' ids
from the mappings' `[netsuite]` section, ledgerflow's own records (customer, invoice) by the
internal id NetSuite gave them, passed in by the client. Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import orjson

from canonical.commands import (
    ApplyPayment,
    ErpCommand,
    PostCreditMemo,
    PostInvoice,
    UpsertContract,
    UpsertCustomer,
    VoidInvoice,
)
from connectors.erp.errors import ErpMappingError
from connectors.erp.mapping import present, to_major_units, to_minor_units
from connectors.erp.schemas import ErpDocument, ErpRecord, RecordType
from streams.mappings import Mappings, NetSuiteIds


class NetSuiteMappingError(ErpMappingError):
    """The mappings give no NetSuite internal id for something a command names
    (`ledgerflow erp check` finds it first)."""


@dataclass(frozen=True)
class OwnIds:
    """Internal ids NetSuite gave ledgerflow's own records, as the client resolved them."""

    customer: str | None = None
    invoice: str | None = None


def dumps(body: dict[str, Any]) -> bytes:
    """A body as JSON with every `Decimal` written as the exact number it is (12.30, 1234)."""
    return orjson.dumps(body, default=_decimal_fragment)


def _decimal_fragment(value: Any) -> orjson.Fragment:
    if isinstance(value, Decimal):
        return orjson.Fragment(format(value, "f"))
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def loads(raw: bytes | str) -> Any:
    """JSON with its decimals as `Decimal` (NetSuite's 12.3 stays 12.3, not 12.2999…)."""
    return json.loads(raw, parse_float=Decimal)


class NetSuiteMapper:
    """Builds each command's NetSuite record from the mappings' internal ids."""

    def __init__(self, mappings: Mappings) -> None:
        if mappings.netsuite is None:
            raise ValueError("NetSuite mode needs the mappings' [netsuite] section (internal ids)")
        self.mappings = mappings
        self.ids: NetSuiteIds = mappings.netsuite

    # -- references ------------------------------------------------------------------------

    def _config_ref(self, table: dict[str, str], kind: str, code: str) -> dict[str, str]:
        internal_id = table.get(code)
        if internal_id is None:
            raise NetSuiteMappingError(f"no NetSuite internal id for {kind} {code!r} in the mappings")
        return {"id": internal_id}

    def subsidiary(self, code: str) -> dict[str, str]:
        return self._config_ref(self.ids.subsidiaries, "subsidiary", code)

    def currency(self, code: str) -> dict[str, str]:
        return self._config_ref(self.ids.currencies, "currency", code)

    def item(self, code: str) -> dict[str, str]:
        return self._config_ref(self.ids.items, "item", code)

    def deposit_account(self, subsidiary: str) -> dict[str, str]:
        number = self.ids.deposit_accounts.get(subsidiary)
        if number is None:
            raise NetSuiteMappingError(f"no deposit account for subsidiary {subsidiary!r} in the mappings")
        return self._config_ref(self.ids.accounts, "account", number)

    @staticmethod
    def _own(internal_id: str | None, what: str) -> dict[str, str]:
        if internal_id is None:
            raise ValueError(f"the {what}'s NetSuite internal id must be resolved before its body is built")
        return {"id": internal_id}

    # -- records ---------------------------------------------------------------------------

    def record(self, command: ErpCommand, own: OwnIds) -> ErpRecord:
        """The record a command writes; `own` holds the internal ids of the customer and
        invoice it references (the client resolves them first: `references`)."""
        if isinstance(command, UpsertCustomer):
            return self._customer(command)
        if isinstance(command, UpsertContract):
            return self._sales_order(command, own)
        if isinstance(command, PostInvoice):
            return self._invoice(command, own)
        if isinstance(command, ApplyPayment):
            return self._payment(command, own)
        if isinstance(command, PostCreditMemo):
            return self._credit_memo(command, own)
        if isinstance(command, VoidInvoice):
            return self._reversal(command)
        raise TypeError(f"no NetSuite record for command type {type(command).__name__}")

    @staticmethod
    def references(command: ErpCommand) -> tuple[tuple[RecordType, str, str | None], ...]:
        """(record type, external id, internal id if the command knows it) of each of
        ledgerflow's own records the command's body references."""
        if isinstance(command, UpsertCustomer):
            return ()
        if isinstance(command, UpsertContract):
            return ((RecordType.CUSTOMER, command.customer_id, None),)
        if isinstance(command, PostInvoice):
            doc = command.document
            return ((RecordType.CUSTOMER, doc.customer_external_id, doc.customer_erp_id),)
        if isinstance(command, ApplyPayment | PostCreditMemo):
            d = command.document
            return (
                (RecordType.CUSTOMER, d.customer_external_id, d.customer_erp_id),
                (RecordType.INVOICE, d.invoice_external_id, d.invoice_erp_id),
            )
        if isinstance(command, VoidInvoice):
            return ((RecordType.INVOICE, command.invoice_external_id, command.invoice_erp_id),)
        raise TypeError(f"no NetSuite record for command type {type(command).__name__}")

    def _customer(self, command: UpsertCustomer) -> ErpRecord:
        customer = command.document
        fields = self.ids.fields
        body: dict[str, Any] = {
            "externalId": command.external_id,
            "companyName": customer.name or command.external_id,
            "email": customer.email,
            "subsidiary": self.subsidiary(command.subsidiary),
            "currency": self.currency(customer.currency) if customer.currency else None,
            "isInactive": customer.deleted,
            fields.crm_account_id: customer.crm_account_id,
            fields.billing_customer_id: customer.billing_customer_id,
        }
        return ErpRecord(record_type=RecordType.CUSTOMER, external_id=command.external_id, body=present(body))

    def _sales_order(self, command: UpsertContract, own: OwnIds) -> ErpRecord:
        contract = command.document
        lines = []
        for line in contract.lines:
            mapping = self.mappings.item_for(None, line.product_id)
            if mapping is None:
                raise NetSuiteMappingError(f"no item for product {line.product_id!r} in the mappings")
            amount = line.quantity * line.unit_amount
            lines.append(
                {
                    "item": self.item(mapping.item),
                    "quantity": line.quantity,
                    "rate": to_major_units(line.unit_amount, contract.currency),
                    "amount": to_major_units(amount, contract.currency),
                }
            )
        body: dict[str, Any] = {
            "externalId": command.external_id,
            "entity": self._own(own.customer, "customer"),
            "subsidiary": self.subsidiary(command.subsidiary),
            "currency": self.currency(contract.currency),
            "tranDate": contract.effective_date.isoformat(),
            "startDate": contract.effective_date.isoformat(),
            "endDate": contract.end_date.isoformat() if contract.end_date else None,
            "memo": contract.contract_id,
            "item": {"items": lines},
        }
        return ErpRecord(
            record_type=RecordType.SALES_ORDER, external_id=command.external_id, body=present(body)
        )

    def _invoice(self, command: PostInvoice, own: OwnIds) -> ErpRecord:
        doc = command.document
        currency = doc.currency
        lines: list[dict[str, Any]] = []
        taxes: list[dict[str, Any]] = []
        for line in doc.lines:
            reference = f"L{line.line_no}"
            entry: dict[str, Any] = {
                "item": self.item(line.item),
                "quantity": line.quantity,
                "rate": _rate(line.amount, line.quantity, currency),
                "amount": to_major_units(line.amount, currency),
                "description": line.description,
            }
            if line.tax_code is not None:
                entry["taxCode"] = self._tax_code_ref(line.tax_code)
                entry["taxDetailsReference"] = reference
                taxes.append(self._tax_line(reference, line.tax_code, line.amount, line.tax_amount, currency))
            elif line.tax_amount:
                raise NetSuiteMappingError(f"line {line.line_no} is taxed but names no tax code")
            lines.append(present(entry))
        if doc.shipping_total:
            if self.ids.shipping_item is None:
                raise NetSuiteMappingError("the invoice has shipping and the mappings name no shipping_item")
            shipping = to_major_units(doc.shipping_total, currency)
            lines.append(
                {
                    "item": self.item(self.ids.shipping_item),
                    "quantity": 1,
                    "rate": shipping,
                    "amount": shipping,
                    "description": "Shipping",
                }
            )
        fields = self.ids.fields
        body: dict[str, Any] = {
            "externalId": doc.external_id,
            "entity": self._own(own.customer, "customer"),
            "subsidiary": self.subsidiary(doc.subsidiary),
            "currency": self.currency(currency),
            "tranDate": doc.tran_date.isoformat(),
            "dueDate": doc.due_date.isoformat() if doc.due_date else None,
            "memo": doc.memo,
            fields.billing_invoice_id: doc.billing_invoice_id,
            fields.billing_invoice_number: doc.memo,
            "item": {"items": lines},
            # The tax the billing platform charged is booked as it is, to the cent, instead of
            # SuiteTax recomputing it from the nexus (which may differ by a rounding or a rule).
            "taxDetailsOverride": True,
            "taxDetails": {"items": taxes},
        }
        return ErpRecord(record_type=RecordType.INVOICE, external_id=doc.external_id, body=present(body))

    def _tax_code_ref(self, code: str) -> dict[str, str]:
        tax = self.ids.tax_codes.get(code)
        if tax is None:
            raise NetSuiteMappingError(f"no NetSuite tax code for {code!r} in the mappings")
        return {"id": tax.id}

    def _tax_line(self, reference: str, code: str, basis: int, tax: int, currency: str) -> dict[str, Any]:
        tax_code = self.ids.tax_codes.get(code)
        if tax_code is None:
            raise NetSuiteMappingError(f"no NetSuite tax code for {code!r} in the mappings")
        # The rate is informational (a percentage, 4 places); the amount is what books.
        rate = (
            (Decimal(tax) * 100 / basis).quantize(Decimal("0.0001"), ROUND_HALF_EVEN) if basis else Decimal(0)
        )
        return {
            "taxDetailsReference": {"id": reference},
            "taxCode": {"id": tax_code.id},
            "taxType": tax_code.type,
            "taxBasis": to_major_units(basis, currency),
            "taxAmount": to_major_units(tax, currency),
            "taxRate": rate,
        }

    def _payment(self, command: ApplyPayment, own: OwnIds) -> ErpRecord:
        doc = command.document
        amount = to_major_units(doc.amount, doc.currency)
        body: dict[str, Any] = {
            "externalId": doc.external_id,
            "customer": self._own(own.customer, "customer"),
            "subsidiary": self.subsidiary(doc.subsidiary),
            "currency": self.currency(doc.currency),
            "account": self.deposit_account(doc.subsidiary),
            "tranDate": doc.tran_date.isoformat(),
            "payment": amount,
            "memo": doc.source.payment_id,
            # What is not applied stays on the payment as unapplied funds of the customer.
            "apply": self._apply(own, doc.amount if doc.applied is None else doc.applied, doc.currency),
        }
        return ErpRecord(
            record_type=RecordType.CUSTOMER_PAYMENT, external_id=doc.external_id, body=present(body)
        )

    def _apply(self, own: OwnIds, applied: int, currency: str) -> dict[str, Any]:
        """The apply sublist: the invoice, for `applied` minor units, or no line when nothing
        applies (NetSuite refuses an amount of zero, or more than remains due)."""
        if not applied:
            return {"items": []}
        line = {
            "doc": self._own(own.invoice, "invoice"),
            "apply": True,
            "amount": to_major_units(applied, currency),
        }
        return {"items": [line]}

    def _credit_memo(self, command: PostCreditMemo, own: OwnIds) -> ErpRecord:
        doc = command.document
        currency = doc.currency
        if self.ids.credit_item is None:
            raise NetSuiteMappingError("the mappings name no credit_item to book a credit memo on")
        subtotal = to_major_units(doc.subtotal, currency)
        line: dict[str, Any] = {
            "item": self.item(self.ids.credit_item),
            "quantity": 1,
            "rate": subtotal,
            "amount": subtotal,
            "description": "Credit",
        }
        taxes: list[dict[str, Any]] = []
        if doc.tax_total:
            code = self.ids.credit_tax_codes.get(doc.subsidiary)
            if code is None:
                raise NetSuiteMappingError(f"no credit memo tax code for subsidiary {doc.subsidiary!r}")
            line["taxCode"] = self._tax_code_ref(code)
            line["taxDetailsReference"] = "L1"
            taxes.append(self._tax_line("L1", code, doc.subtotal, doc.tax_total, currency))
        body: dict[str, Any] = {
            "externalId": doc.external_id,
            "entity": self._own(own.customer, "customer"),
            "subsidiary": self.subsidiary(doc.subsidiary),
            "currency": self.currency(currency),
            "tranDate": doc.tran_date.isoformat(),
            "item": {"items": [line]},
            "taxDetailsOverride": True,
            "taxDetails": {"items": taxes},
            # A credit not applied to the invoice (it was paid) is credit on the customer's account.
            "apply": self._apply(own, doc.total if doc.applied is None else doc.applied, currency),
        }
        return ErpRecord(record_type=RecordType.CREDIT_MEMO, external_id=doc.external_id, body=present(body))

    @staticmethod
    def _reversal(command: VoidInvoice) -> ErpRecord:
        """A void is a credit memo transformed from the invoice (NetSuite's REST API has no
        void), keyed by the void command's own key so a retry can find it and not reverse twice."""
        body: dict[str, Any] = {
            "externalId": command.idempotency_key,
            "tranDate": command.issued_at.date().isoformat(),
            "memo": _reversal_memo(command),
        }
        return ErpRecord(
            record_type=RecordType.CREDIT_MEMO, external_id=command.idempotency_key, body=body, action="void"
        )

    # -- what NetSuite answers -------------------------------------------------------------

    def document(self, record_type: RecordType | str, payload: dict[str, Any]) -> ErpDocument:
        """A NetSuite record read back: its amount in minor units of its currency (exactly, or
        an error), its currency as an ISO code, its status and number."""
        record_type = RecordType(record_type)
        currency = _ref_id(payload.get("currency"))
        code = self.ids.currency_code(currency) if currency else None
        amount = payload.get("payment" if record_type is RecordType.CUSTOMER_PAYMENT else "total")
        total = None
        if code is not None and amount is not None:
            if isinstance(amount, float):
                raise TypeError("parse NetSuite's answers with netsuite.loads: amounts are never floats")
            total = to_minor_units(amount, code)
        number = payload.get("entityId" if record_type is RecordType.CUSTOMER else "tranId")
        status = payload.get("status")
        return ErpDocument(
            record_type=record_type,
            external_id=_str(payload.get("externalId")),
            erp_internal_id=str(payload["id"]),
            document_number=_str(number),
            status=_str(status.get("refName") or status.get("id"))
            if isinstance(status, dict)
            else _str(status),
            currency=code,
            total=total,
            body=payload,
        )


def _reversal_memo(command: VoidInvoice) -> str:
    return f"Reverses {command.invoice_external_id}" + (f": {command.reason}" if command.reason else "")


def _rate(amount: int, quantity: int, currency: str) -> Decimal | None:
    """The unit price when it is exact in the currency; otherwise none is sent and NetSuite
    derives it from amount and quantity (the amount is what books)."""
    if quantity > 0 and amount % quantity == 0:
        return to_major_units(amount // quantity, currency)
    return None


def _ref_id(value: Any) -> str | None:
    if isinstance(value, dict) and value.get("id") not in (None, ""):
        return str(value["id"])
    return None


def _str(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None
