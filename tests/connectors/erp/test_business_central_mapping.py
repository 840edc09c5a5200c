"""Business Central bodies: every document in USD, EUR and JPY checked against the schema file
written from Microsoft's v2.0 reference; amounts exact in major units; keys that fit Code fields."""

from __future__ import annotations

import tomllib
from decimal import Decimal

import pytest
from pydantic import ValidationError

from canonical.commands import ErpCommand, ErpInvoiceLine, PostInvoice
from connectors.erp import netsuite
from connectors.erp.business_central import (
    ENTITIES,
    BusinessCentralMapper,
    BusinessCentralMappingError,
    bc_code,
    check_body,
    customer_number,
    totals_agree,
)
from connectors.erp.schemas import RecordType
from streams.mappings import EXAMPLE_MAPPINGS, Mappings, load_mappings
from tests.connectors.erp.builders import (
    apply_payment,
    post_credit_memo,
    post_invoice,
    upsert_customer,
    void_invoice,
)

MAPPINGS = load_mappings(None)
MAPPER = BusinessCentralMapper(MAPPINGS)
INVOICE_ID = "0e8b5c1a-2f3d-4a6b-9c7d-000000000001"
BOOKS = [("USD", "US01"), ("EUR", "DE01"), ("JPY", "JP01")]


def commands(currency: str, subsidiary: str) -> list[ErpCommand]:
    return [
        upsert_customer(subsidiary=subsidiary, currency=currency),
        post_invoice(currency=currency, subsidiary=subsidiary),
        apply_payment(currency=currency, subsidiary=subsidiary),
        post_credit_memo(currency=currency, subsidiary=subsidiary),
    ]


@pytest.mark.parametrize(("currency", "subsidiary"), BOOKS)
def test_every_body_passes_the_schema(currency: str, subsidiary: str) -> None:
    for command in commands(currency, subsidiary):
        record = MAPPER.record(command, INVOICE_ID)
        assert check_body(ENTITIES[record.record_type], record.body) == [], type(command).__name__
        # The company's local currency is an empty code, as Business Central writes it.
        if "currencyCode" in record.body:
            assert record.body["currencyCode"] == ""
        assert record.company.id == MAPPINGS.business_central.companies[subsidiary].id  # type: ignore[union-attr]


@pytest.mark.parametrize(("currency", "exact"), [("USD", "90"), ("EUR", "90"), ("JPY", "9000")])
def test_amounts_are_exact_major_units(currency: str, exact: str) -> None:
    record = MAPPER.record(post_invoice(currency=currency, subsidiary=dict(BOOKS)[currency]))
    first = record.body["salesInvoiceLines"][0]
    assert first["unitPrice"] == Decimal(exact) and first["quantity"] == 1
    assert netsuite.dumps(first).decode().count(f'"unitPrice":{exact}') == 1
    assert record.total == 10720 and record.tax_total == 720


def test_a_unit_price_that_does_not_round_back_goes_as_one_times_the_amount() -> None:
    base = post_invoice()
    doc = base.document
    lines = (
        ErpInvoiceLine(line_no=1, item="SUB-SEATS", gl_account="4020", quantity=3, amount=1000),
        ErpInvoiceLine(line_no=2, item="SUB-SEATS", gl_account="4020", quantity=4, amount=1000),
    )
    odd = PostInvoice.model_validate(
        {
            **base.model_dump(),
            "document": {**doc.model_dump(), "lines": lines, "subtotal": 2000, "discount_total": 0}
            | {"tax_total": 0, "total": 2000},
        }
    )
    one, two = MAPPER.record(odd).body["salesInvoiceLines"]
    # 10.00 / 3 = 3.33333 (5 places), and 3 x 3.33333 rounds to 10.00: kept.
    assert (one["quantity"], one["unitPrice"]) == (3, Decimal("3.33333"))
    assert (two["quantity"], two["unitPrice"]) == (4, Decimal("2.5"))


def test_keys_fit_the_code_fields_and_are_stable() -> None:
    assert bc_code("stripe-in_1", 35) == "STRIPE-IN_1"
    long_id = "cust-crm-001Dn00000ABCdeIAH"
    number = customer_number(long_id)
    assert len(number) == 20 and number.startswith("LF") and number == number.upper()
    assert number == customer_number(long_id) != customer_number(long_id + "x")
    # Upper-casing is what Business Central does to Code values; a key never depends on it.
    assert bc_code("abc", 20) == bc_code("ABC", 20)
    payment = MAPPER.record(apply_payment(external_id="stripe-pi_3MtwBwLkdIwHu7ix28a3tqPa"), INVOICE_ID)
    assert len(payment.body["documentNumber"]) <= 20
    assert payment.body["externalDocumentNumber"] == "STRIPE-PI_3MTWBWLKDIWHU7IX28A3TQPA"


def test_a_payment_credits_the_customer_and_applies_to_its_invoice() -> None:
    record = MAPPER.record(apply_payment(), INVOICE_ID)
    assert record.body["amount"] == Decimal("-107.20")
    assert record.body["appliesToInvoiceId"] == INVOICE_ID
    positive = BusinessCentralMapper(MAPPINGS, payment_sign="positive").record(apply_payment(), INVOICE_ID)
    assert positive.body["amount"] == Decimal("107.20")


def test_a_foreign_currency_payment_is_refused_with_a_reason() -> None:
    with pytest.raises(BusinessCentralMappingError, match="customerPayments API has no currency"):
        MAPPER.record(apply_payment(currency="EUR", subsidiary="US01"), INVOICE_ID)


def test_a_void_cancels_the_posted_invoice() -> None:
    record = MAPPER.record(void_invoice(), INVOICE_ID)
    assert (record.action, record.key, record.record_type) == ("cancel", INVOICE_ID, RecordType.INVOICE)


def test_the_schema_refuses_what_business_central_refuses() -> None:
    body = MAPPER.record(post_invoice()).body
    assert check_body("salesInvoice", {**body, "externalId": "x"}) == [
        "externalId: the property does not exist on salesInvoice"
    ]
    assert check_body("salesInvoice", {**body, "totalAmountIncludingTax": Decimal(1)}) == [
        "totalAmountIncludingTax: the property is read-only"
    ]
    line = {**body["salesInvoiceLines"][0], "unitPrice": 90.0}
    [problem] = check_body("salesInvoice", {**body, "salesInvoiceLines": [line]})
    assert problem.startswith("salesInvoiceLines[0].unitPrice: a float")
    assert check_body("customer", {"number": "lower"}) == [
        "number: not a Code[20] (at most 20 characters, upper case)"
    ]


def test_computed_totals_are_compared_with_what_billing_charged() -> None:
    record = MAPPER.record(post_invoice())
    assert (
        totals_agree(
            record, {"totalAmountIncludingTax": Decimal("107.20"), "totalTaxAmount": Decimal("7.20")}
        )
        is None
    )
    differs = totals_agree(
        record, {"totalAmountIncludingTax": Decimal("107.21"), "totalTaxAmount": Decimal("7.21")}
    )
    assert differs is not None and "107.21 USD" in differs and "107.20" in differs


def test_a_document_reads_back_in_minor_units() -> None:
    company = MAPPINGS.business_central.companies["JP01"]  # type: ignore[union-attr]
    payload = netsuite.loads(
        b'{"id": "g1", "number": "103001", "externalDocumentNumber": "STRIPE-IN_1",'
        b' "currencyCode": "", "totalAmountIncludingTax": 10720, "status": "Open"}'
    )
    doc = MAPPER.document(RecordType.INVOICE, company, payload)
    assert (doc.total, doc.currency, doc.document_number, doc.status) == (10720, "JPY", "103001", "Open")
    with pytest.raises(ValueError, match="more decimals"):
        MAPPER.document(RecordType.INVOICE, company, {**payload, "totalAmountIncludingTax": Decimal("1.5")})


def test_mappings_name_a_company_for_every_subsidiary_in_a_currency_it_enables() -> None:
    text = EXAMPLE_MAPPINGS.read_text()
    raw = tomllib.loads(text)
    del raw["business_central"]["companies"]["KW01"]
    with pytest.raises(ValidationError, match="no company for KW01"):
        Mappings.model_validate(raw)
    raw = tomllib.loads(text)
    raw["business_central"]["companies"]["JP01"]["currency"] = "USD"
    with pytest.raises(ValidationError, match="local currency USD is not one of"):
        Mappings.model_validate(raw)
