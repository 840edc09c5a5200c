"""Canonical commands → ERP records: record types, external ids, references, minor units."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from canonical import ErpCommand
from canonical.money import UnknownCurrencyError
from connectors.erp import RecordType, to_major_units, to_minor_units, to_record
from tests.connectors.erp.builders import (
    T0,
    apply_payment,
    post_credit_memo,
    post_invoice,
    upsert_contract,
    upsert_customer,
    void_invoice,
)


def _amounts(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every numeric leaf of a body, with its path."""
    if isinstance(value, dict):
        return [a for k, v in value.items() for a in _amounts(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [a for i, v in enumerate(value) for a in _amounts(v, f"{path}[{i}]")]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [(path, value)]
    return []


def test_customer_is_keyed_by_the_canonical_customer_id() -> None:
    record = to_record(upsert_customer("cust-42", subsidiary="UK01", currency="GBP", name="Beta Ltd"))
    assert (record.record_type, record.external_id, record.action) == (
        RecordType.CUSTOMER,
        "cust-42",
        "upsert",
    )
    assert record.body["externalId"] == "cust-42"
    assert record.body["companyName"] == "Beta Ltd"
    assert record.body["subsidiary"] == {"id": "UK01"}
    assert record.body["currency"] == "GBP"
    assert record.body["taxIds"] == ["US-12-3456789"]
    assert record.body["isInactive"] is False


def test_contract_is_a_sales_order_with_lines_in_minor_units() -> None:
    record = to_record(upsert_contract())
    body = record.body
    assert (record.record_type, record.external_id) == (RecordType.SALES_ORDER, "clm-ctr_1")
    assert body["customer"] == {"externalId": "cust-1"}
    assert body["subsidiary"] == {"id": "US01"}
    assert [(line["item"], line["quantity"], line["rate"], line["amount"]) for line in body["lines"]] == [
        ({"id": "prod_platform"}, 1, 50000, 50000),
        ({"id": "prod_seats"}, 12, 1500, 18000),
    ]
    assert body["total"] == 68000
    assert (body["tranDate"], body["endDate"], body["contractStatus"]) == (
        "2019-06-01",
        "2027-05-31",
        "active",
    )


def test_invoice_carries_customer_subsidiary_lines_and_totals() -> None:
    record = to_record(post_invoice(tran_date=T0.date()))
    body = record.body
    assert (record.record_type, record.external_id) == (RecordType.INVOICE, "stripe-in_1")
    assert body["customer"] == {"externalId": "cust-1"}
    assert (body["subsidiary"], body["currency"], body["tranDate"]) == ({"id": "US01"}, "USD", "2026-03-01")
    first, second = body["lines"]
    assert first == {
        "line": 1,
        "item": {"id": "SUB-PLATFORM"},
        "account": {"id": "4010"},
        "description": "Platform, March",
        "quantity": 1,
        "amount": 9000,
        "taxCode": {"id": "US-SALES"},
        "taxAmount": 720,
    }
    assert second["taxCode"] is None
    assert (body["subtotal"], body["discountTotal"], body["taxTotal"], body["total"]) == (
        11000,
        1000,
        720,
        10720,
    )
    assert "status" not in body  # the ERP decides; a replayed post must never un-void


def test_payment_and_credit_memo_reference_the_invoice_by_external_id() -> None:
    payment = to_record(apply_payment(amount=5000))
    memo = to_record(post_credit_memo())
    assert payment.record_type is RecordType.CUSTOMER_PAYMENT
    assert payment.body["invoice"] == {"externalId": "stripe-in_1"}
    assert payment.body["amount"] == 5000
    assert memo.record_type is RecordType.CREDIT_MEMO
    assert memo.body["invoice"] == {"externalId": "stripe-in_1"}
    assert (memo.body["subtotal"], memo.body["taxTotal"], memo.body["total"]) == (1000, 80, 1080)


def test_void_is_an_update_of_the_invoice_record() -> None:
    record = to_record(void_invoice("stripe-in_9"))
    assert (record.record_type, record.external_id, record.action) == (
        RecordType.INVOICE,
        "stripe-in_9",
        "void",
    )
    assert record.body == {"status": "voided", "voidReason": "customer cancelled"}


@pytest.mark.parametrize(
    "command",
    [upsert_contract(), post_invoice(), apply_payment(), post_credit_memo()],
    ids=lambda c: c.command,
)
def test_every_amount_in_a_body_is_an_integer(command: ErpCommand) -> None:
    amounts = _amounts(to_record(command).body)
    assert amounts, "the body carries amounts"
    assert all(isinstance(value, int) for _, value in amounts), amounts


def test_a_command_type_without_a_record_is_refused() -> None:
    bare = ErpCommand(
        idempotency_key="k", customer_id="c", correlation_id="x", subsidiary="US01", issued_at=T0
    )
    with pytest.raises(TypeError, match="ErpCommand"):
        to_record(bare)


@pytest.mark.parametrize(
    ("minor", "currency", "major"),
    [(123456, "USD", "1234.56"), (-5, "EUR", "-0.05"), (1000, "JPY", "1000"), (1234, "KWD", "1.234")],
)
def test_minor_and_major_units_convert_exactly(minor: int, currency: str, major: str) -> None:
    assert to_major_units(minor, currency) == Decimal(major)
    assert to_minor_units(Decimal(major), currency) == minor
    assert to_minor_units(major, currency) == minor


def test_conversion_refuses_what_the_currency_cannot_hold() -> None:
    with pytest.raises(ValueError, match="more decimals"):
        to_minor_units("0.005", "USD")
    with pytest.raises(ValueError, match="more decimals"):
        to_minor_units("1.5", "JPY")
    with pytest.raises(TypeError, match="never floats"):
        to_minor_units(1.5, "USD")  # type: ignore[arg-type]
    with pytest.raises(UnknownCurrencyError):
        to_major_units(1, "XXX")
