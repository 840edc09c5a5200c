"""NetSuite bodies: every record type in USD, EUR, JPY and KWD, checked against the schema
file the stand-in enforces; amounts exact in major units; never a float."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from canonical.commands import ErpCommand
from canonical.money import currency_exponent
from connectors.erp import netsuite, netsuite_schema
from connectors.erp.netsuite import NetSuiteMapper, NetSuiteMappingError, OwnIds
from connectors.erp.schemas import RecordType
from streams.mappings import load_mappings
from tests.connectors.erp.builders import (
    apply_payment,
    post_credit_memo,
    post_invoice,
    upsert_contract,
    upsert_customer,
    void_invoice,
)

MAPPINGS = load_mappings(None)
MAPPER = NetSuiteMapper(MAPPINGS)
assert MAPPINGS.netsuite is not None
CUSTOM_FIELDS = frozenset(MAPPINGS.netsuite.fields.model_dump().values())
OWN = OwnIds(customer="1001", invoice="2002")
BOOKS = [("USD", "US01"), ("EUR", "DE01"), ("JPY", "JP01"), ("KWD", "KW01")]


def commands(currency: str, subsidiary: str) -> list[ErpCommand]:
    return [
        upsert_customer(subsidiary=subsidiary, currency=currency),
        upsert_contract(subsidiary="US01"),
        post_invoice(currency=currency, subsidiary=subsidiary),
        apply_payment(currency=currency, subsidiary=subsidiary),
        post_credit_memo(currency=currency, subsidiary=subsidiary),
    ]


def floats(value: Any, at: str = "$") -> list[str]:
    if isinstance(value, float):
        return [at]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in floats(v, f"{at}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in floats(v, f"{at}[{i}]")]
    return []


@pytest.mark.parametrize(("currency", "subsidiary"), BOOKS)
def test_every_body_passes_the_schema_without_a_float(currency: str, subsidiary: str) -> None:
    for command in commands(currency, subsidiary):
        record = MAPPER.record(command, OWN)
        exponent = (
            currency_exponent(command.document.currency) if hasattr(command.document, "currency") else None
        )  # type: ignore[union-attr]
        assert netsuite_schema.check(record.record_type.value, record.body, exponent, CUSTOM_FIELDS) == []
        assert floats(record.body) == []
        # What goes on the wire reads back as the same exact numbers.
        assert netsuite.loads(netsuite.dumps(record.body)) == record.body


@pytest.mark.parametrize(
    ("currency", "expected"), [("USD", "107.20"), ("EUR", "107.20"), ("JPY", "10720"), ("KWD", "10.720")]
)
def test_amounts_are_major_units_with_the_currency_exponent(currency: str, expected: str) -> None:
    payment = MAPPER.record(apply_payment(currency=currency, amount=10720), OWN)
    assert payment.body["payment"] == Decimal(expected)
    assert f'"payment":{expected},'.encode() in netsuite.dumps(payment.body)
    assert payment.body["apply"] == {
        "items": [{"doc": {"id": "2002"}, "apply": True, "amount": Decimal(expected)}]
    }


def test_invoice_books_lines_and_tax_to_the_cent() -> None:
    command = post_invoice()
    body = MAPPER.record(command, OWN).body
    lines = body["item"]["items"]
    assert body["entity"] == {"id": "1001"}
    assert body["subsidiary"] == {"id": "1"} and body["currency"] == {"id": "1"}
    assert lines[0] == {
        "item": {"id": "202"},
        "quantity": 1,
        "rate": Decimal("90.00"),
        "amount": Decimal("90.00"),
        "description": "Platform, March",
        "taxCode": {"id": "7022"},
        "taxDetailsReference": "L1",
    }
    assert body["taxDetailsOverride"] is True
    (tax,) = body["taxDetails"]["items"]
    assert tax["taxAmount"] == Decimal("7.20") and tax["taxBasis"] == Decimal("90.00")
    assert tax["taxDetailsReference"] == {"id": "L1"} and tax["taxCode"] == {"id": "7022"}
    booked = sum(line["amount"] for line in lines) + tax["taxAmount"]
    assert booked == Decimal(command.document.total).scaleb(-2)
    assert body["custbody_lf_billing_invoice_number"] == "INV-0001"
    for invented in ("lines", "customer", "total", "subtotal", "shippingCost", "taxTotal"):
        assert invented not in body


def test_customer_carries_source_ids_in_custom_fields_only() -> None:
    body = MAPPER.record(upsert_customer(), OWN).body
    assert body["custentity_lf_crm_account_id"] == "001xx0000001"
    assert body["custentity_lf_billing_customer_id"] == "cus_1"
    assert not {"crmAccountId", "billingCustomerId", "taxIds", "country"} & set(body)


def test_void_is_a_reversing_credit_memo_keyed_by_the_void() -> None:
    command = void_invoice()
    record = MAPPER.record(command, OWN)
    assert record.record_type is RecordType.CREDIT_MEMO and record.action == "void"
    assert record.external_id == command.idempotency_key == record.body["externalId"]
    assert netsuite_schema.check("creditMemo", record.body, 2, CUSTOM_FIELDS, partial=True) == []


def test_what_the_mappings_cannot_say_is_a_typed_error() -> None:
    with pytest.raises(NetSuiteMappingError, match="SUB-NOPE"):
        invoice = post_invoice()
        line = invoice.document.lines[0].model_copy(update={"item": "SUB-NOPE"})
        document = invoice.document.model_copy(update={"lines": (line, *invoice.document.lines[1:])})
        MAPPER.record(invoice.model_copy(update={"document": document}), OWN)


def test_the_schema_refuses_what_netsuite_refuses() -> None:
    def codes(body: dict[str, Any]) -> list[tuple[str, str]]:
        return [(p.path, p.kind) for p in netsuite_schema.check("customerPayment", body, 2, CUSTOM_FIELDS)]

    good = MAPPER.record(apply_payment(), OWN).body
    assert codes(good) == []
    assert codes({**good, "amount": Decimal("1.00")}) == [("amount", "unknown")]
    assert codes({**good, "total": Decimal("1.00")}) == [("total", "read_only")]
    assert codes({**good, "payment": 107.2}) == [("payment", "value")]
    assert codes({**good, "payment": Decimal("107.201")}) == [("payment", "value")]
    assert codes({**good, "customer": {"externalId": "cust-1", "name": "x"}}) == [("customer", "value")]
    assert codes({**good, "custbody_unknown": "x"}) == [("custbody_unknown", "unknown")]
    line = {"doc": {"id": "2002"}, "apply": True, "amount": Decimal("1"), "bogus": 1}
    assert codes({**good, "apply": {"items": [line]}}) == [("apply.items[0].bogus", "unknown")]
    assert codes({k: v for k, v in good.items() if k != "customer"}) == [("customer", "required")]
