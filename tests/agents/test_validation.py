"""Each validation rule with a passing and a failing case."""

from __future__ import annotations

from datetime import date

import pytest

from agents.validation import check_arithmetic, validate_invoice
from canonical import ExceptionReason
from streams.mappings import ClosedPeriod, Mappings, load_mappings
from tests.factories import T0, invoice, invoice_line

MAPPINGS = load_mappings(None)


def _reasons(inv, mappings=MAPPINGS):  # type: ignore[no-untyped-def]
    resolved, problems = validate_invoice(inv, mappings)
    return resolved, {p.reason: {f.field for f in p.fields} for p in problems}


def test_a_consistent_invoice_passes_and_resolves_entity_items_and_tax() -> None:
    resolved, reasons = _reasons(invoice())
    assert reasons == {}
    assert resolved is not None and resolved.subsidiary.id == "UK01"
    assert resolved.items[0].gl_account == "4010" and resolved.tax_codes == (("UK-VAT-S",),)


@pytest.mark.parametrize(
    ("inv", "field"),
    [
        (invoice(lines=(invoice_line(amount=9999),)), "lines[0].amount"),
        (invoice(subtotal=9000), "subtotal"),
        (invoice(discount_total=10), "discount_total"),
        (invoice(tax_total=1999), "tax_total"),
        (invoice(total=12001), "total"),
        (invoice(lines=(), subtotal=0, tax_total=0, total=0), "lines"),
    ],
)
def test_arithmetic_failures_name_the_field(inv, field) -> None:  # type: ignore[no-untyped-def]
    _, reasons = _reasons(inv)
    assert field in reasons[ExceptionReason.ARITHMETIC_MISMATCH]


def test_discounts_and_shipping_add_up() -> None:
    line = invoice_line(subtotal=10000, discount_amount=1500, amount=8500, tax_amount=1700)
    inv = invoice(lines=(line,), shipping_total=500, total=10000 - 1500 + 1700 + 500)
    assert check_arithmetic(inv) == []


def test_zero_decimal_currency_is_whole_units() -> None:
    line = invoice_line(subtotal=69800, amount=69800, tax_amount=6980, tax_rate_ids=("txr_jp_ct10",))
    resolved, reasons = _reasons(invoice(currency="JPY", customer_country="JP", lines=(line,)))
    assert reasons == {} and resolved is not None and resolved.subsidiary.id == "JP01"


def test_unknown_country_falls_back_to_currency_then_fails() -> None:
    resolved, reasons = _reasons(
        invoice(customer_country=None, currency="USD", lines=(invoice_line(tax_amount=0, tax_rate_ids=()),))
    )
    assert reasons == {} and resolved is not None and resolved.subsidiary.id == "US01"
    _, reasons = _reasons(invoice(customer_country="BR", currency="BRL"))
    assert "customer_country" in reasons[ExceptionReason.UNMAPPED_SUBSIDIARY]


def test_currency_not_enabled_for_the_subsidiary() -> None:
    _, reasons = _reasons(invoice(customer_country="DE", currency="GBP"))
    assert reasons[ExceptionReason.CURRENCY_NOT_ENABLED] == {"currency"}


def test_closed_period() -> None:
    closed = MAPPINGS.model_copy(
        update={"closed_periods": (ClosedPeriod(start=date(2026, 3, 1), end=date(2026, 3, 31)),)}
    )
    _, reasons = _reasons(invoice(), closed)
    assert reasons[ExceptionReason.CLOSED_PERIOD] == {"issued_at"}
    _, reasons = _reasons(invoice(issued_at=T0.replace(month=4)), closed)
    assert reasons == {}


def test_missing_gl_mapping_and_tax_code() -> None:
    line = invoice_line(price_id="price_unknown", product_id="prod_unknown", tax_rate_ids=("txr_unknown",))
    _, reasons = _reasons(invoice(lines=(line,)))
    assert reasons[ExceptionReason.MISSING_GL_MAPPING] == {"lines[0].price_id"}
    assert reasons[ExceptionReason.MISSING_TAX_CODE] == {"lines[0].tax_rate_ids"}
    _, reasons = _reasons(invoice(lines=(invoice_line(tax_rate_ids=()),)))
    assert reasons[ExceptionReason.MISSING_TAX_CODE] == {"lines[0].tax_rate_ids"}


def test_one_off_lines_use_the_default_item() -> None:
    line = invoice_line(price_id=None, product_id=None)
    resolved, reasons = _reasons(invoice(lines=(line,)))
    assert reasons == {} and resolved is not None and resolved.items[0].item == "SVC-GENERAL"


def test_mappings_refuse_references_to_unknown_subsidiaries() -> None:
    with pytest.raises(ValueError, match="unknown"):
        Mappings.model_validate(
            {
                "subsidiaries": [{"id": "US01", "name": "x", "currencies": ["USD"]}],
                "default_subsidiary_by_currency": {"USD": "XX99"},
            }
        )


def test_an_invoice_books_in_its_customers_subsidiary_even_without_an_address() -> None:
    # A GB customer (UK01) invoiced in EUR with no address on the billing record: EUR alone
    # would say DE01, but the ERP keeps the customer in UK01 and UK01 takes EUR.
    resolved, problems = validate_invoice(invoice(customer_country=None, currency="EUR"), MAPPINGS, "UK01")
    assert problems == [] and resolved is not None and resolved.subsidiary.id == "UK01"
    resolved, problems = validate_invoice(invoice(customer_country=None), MAPPINGS, "UK01")
    assert problems == [] and resolved is not None and resolved.subsidiary.id == "UK01"


@pytest.mark.parametrize(
    ("inv", "field", "named"),
    [
        # Its own country is American: US01, not the customer's UK01.
        (invoice(customer_country="US", currency="USD"), "customer_country", ("US01", "UK01")),
        # No address, and JPY is JP01's currency, which UK01 does not take.
        (invoice(customer_country=None, currency="JPY"), "currency", ("JP01", "UK01")),
    ],
)
def test_an_invoice_contradicting_its_customers_subsidiary_is_an_exception_naming_both(
    inv, field, named
) -> None:  # type: ignore[no-untyped-def]
    resolved, problems = validate_invoice(inv, MAPPINGS, "UK01")
    assert resolved is None
    [problem] = [p for p in problems if p.reason is ExceptionReason.SUBSIDIARY_MISMATCH]
    [error] = problem.fields
    assert error.field == field and all(s in error.problem for s in named)
    assert ExceptionReason.UNMAPPED_SUBSIDIARY not in {p.reason for p in problems}


def test_a_country_no_subsidiary_takes_is_no_mismatch_and_an_agreeing_country_keeps_its_reason() -> None:
    # ES maps to no subsidiary: the UK01 customer's EUR invoice books in UK01, as without a country.
    resolved, problems = validate_invoice(invoice(customer_country="ES", currency="EUR"), MAPPINGS, "UK01")
    assert problems == [] and resolved is not None and resolved.subsidiary.id == "UK01"
    # A US invoice of a US01 customer in EUR: the country agrees, US01 just does not take EUR.
    _, problems = validate_invoice(invoice(customer_country="US", currency="EUR"), MAPPINGS, "US01")
    assert {p.reason for p in problems} >= {ExceptionReason.CURRENCY_NOT_ENABLED}
    assert ExceptionReason.SUBSIDIARY_MISMATCH not in {p.reason for p in problems}


def test_a_customer_subsidiary_the_mappings_lost_is_unmapped_not_another_one() -> None:
    resolved, problems = validate_invoice(invoice(), MAPPINGS, "XX99")
    assert resolved is None and ExceptionReason.UNMAPPED_SUBSIDIARY in {p.reason for p in problems}
