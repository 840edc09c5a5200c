"""The canonical model: what it accepts, and each refusal the design names."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from canonical import (
    PUBLISHED_MODELS,
    SCHEMA_VERSION,
    AnyErpCommand,
    BusinessException,
    ChangeEvent,
    Contract,
    ContractLine,
    ContractStatus,
    EntityType,
    ErpInvoice,
    ErpInvoiceLine,
    ExceptionReason,
    Invoice,
    Payment,
    PaymentStatus,
    PostingOutcome,
    PostingResult,
    PostInvoice,
    codec,
    currency_exponent,
    format_minor,
    to_external_id,
)
from tests.factories import T0, invoice, invoice_event, invoice_line

REPO = Path(__file__).resolve().parents[2]


def test_valid_invoice_round_trips_through_json() -> None:
    inv = invoice()
    raw = codec.dumps(inv)
    assert codec.loads(Invoice, raw) == inv
    assert json.loads(raw)["currency"] == "GBP"


def test_change_event_round_trips_and_carries_schema_version() -> None:
    event = invoice_event()
    raw = codec.dumps(event)
    assert json.loads(raw)["schema_version"] == SCHEMA_VERSION
    back = codec.loads(ChangeEvent, raw)
    assert back == event and isinstance(back.payload, Invoice)


def test_currency_is_normalised_to_upper_case() -> None:
    assert invoice(currency="usd").currency == "USD"


@pytest.mark.parametrize("code", ["XYZ", "US", "usdollar", "", "BTC"])
def test_unknown_currency_is_refused(code: str) -> None:
    with pytest.raises(ValidationError, match="currency"):
        invoice(currency=code)


def test_float_money_is_refused_in_python_and_json() -> None:
    with pytest.raises(ValidationError):
        invoice_line(amount=100.0, subtotal=100)
    raw = json.loads(codec.dumps(invoice()))
    raw["total"] = 12000.0
    with pytest.raises(ValidationError, match="total"):
        codec.loads(Invoice, json.dumps(raw))
    raw["total"] = "12000"
    with pytest.raises(ValidationError, match="total"):
        codec.loads(Invoice, json.dumps(raw))


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        invoice(issued_at=datetime(2026, 3, 1, 12, 0))
    raw = json.loads(codec.dumps(invoice()))
    raw["issued_at"] = "2026-03-01T12:00:00"
    with pytest.raises(ValidationError, match="timezone"):
        codec.loads(Invoice, json.dumps(raw))


def test_aware_datetime_is_normalised_to_utc() -> None:
    tokyo = timezone(timedelta(hours=9))
    inv = invoice(issued_at=datetime(2026, 3, 1, 21, 0, tzinfo=tokyo))
    assert inv.issued_at == T0 and inv.issued_at.utcoffset() == timedelta(0)


def test_models_are_frozen_and_closed() -> None:
    inv = invoice()
    with pytest.raises(ValidationError):
        inv.total = 1  # type: ignore[misc]
    raw = json.loads(codec.dumps(inv))
    raw["surprise"] = 1
    with pytest.raises(ValidationError, match="surprise"):
        codec.loads(Invoice, json.dumps(raw))


def test_change_event_payload_must_match_entity_type() -> None:
    with pytest.raises(ValidationError, match="does not match"):
        invoice_event(entity_type=EntityType.CONTRACT)


def test_contract_dates_and_line_currency_are_checked() -> None:
    line = ContractLine(product_id="prod_platform", quantity=1, unit_amount=100, currency="EUR")
    ok = Contract(
        contract_id="k1",
        crm_account_id="001",
        status=ContractStatus.SIGNED,
        effective_date=T0.date(),
        end_date=T0.date() + timedelta(days=365),
        currency="EUR",
        lines=(line,),
    )
    assert ok.lines[0].currency == "EUR"
    with pytest.raises(ValidationError, match="before effective_date"):
        Contract(
            contract_id="k1",
            crm_account_id="001",
            status=ContractStatus.SIGNED,
            effective_date=T0.date(),
            end_date=T0.date() - timedelta(days=1),
            currency="EUR",
        )
    with pytest.raises(ValidationError, match="contract currency"):
        Contract(
            contract_id="k1",
            crm_account_id="001",
            status=ContractStatus.SIGNED,
            effective_date=T0.date(),
            currency="USD",
            lines=(line,),
        )


def test_negative_payment_is_refused() -> None:
    with pytest.raises(ValidationError, match="amount"):
        Payment(
            payment_id="pi_1",
            customer_ref="cus_1",
            amount=-1,
            currency="USD",
            status=PaymentStatus.SUCCEEDED,
            received_at=T0,
        )


def _erp_invoice(**over: object) -> ErpInvoice:
    fields: dict[str, object] = {
        "external_id": "stripe-in_1",
        "customer_external_id": "cust-1",
        "subsidiary": "UK01",
        "currency": "GBP",
        "tran_date": T0.date(),
        "lines": (
            ErpInvoiceLine(
                line_no=1,
                item="SUB",
                gl_account="4010",
                quantity=1,
                amount=1000,
                tax_code="UK-VAT-S",
                tax_amount=200,
            ),
        ),
        "subtotal": 1000,
        "tax_total": 200,
        "total": 1200,
    }
    fields.update(over)
    return ErpInvoice(**fields)  # type: ignore[arg-type]


def test_erp_invoice_must_add_up() -> None:
    assert _erp_invoice().total == 1200
    with pytest.raises(ValidationError, match="!= total"):
        _erp_invoice(total=1201)
    with pytest.raises(ValidationError, match="line amounts"):
        _erp_invoice(subtotal=1100, total=1300)


@pytest.mark.parametrize("bad", ["stripe:in_1", "in 1", "in_1/2", "é"])
def test_external_ids_must_be_netsuite_valid(bad: str) -> None:
    with pytest.raises(ValidationError, match="external_id"):
        _erp_invoice(external_id=bad)


def test_to_external_id_makes_any_reference_valid() -> None:
    assert to_external_id("stripe", "in_1Pgc/6t B") == "stripe-in_1Pgc_6t_B"


def test_commands_decode_through_the_union_by_their_tag() -> None:
    command = PostInvoice(
        idempotency_key="post_invoice-stripe-in_1",
        customer_id="c1",
        correlation_id="k",
        subsidiary="UK01",
        issued_at=T0,
        document=_erp_invoice(),
    )
    from pydantic import TypeAdapter

    back = codec.loads_any(TypeAdapter(AnyErpCommand), codec.dumps(command))
    assert isinstance(back, PostInvoice) and back == command


def test_posted_result_needs_erp_ids() -> None:
    with pytest.raises(ValidationError, match="erp_internal_id"):
        PostingResult(
            idempotency_key="k",
            command="post_invoice",
            customer_id="c",
            correlation_id="x",
            outcome=PostingOutcome.POSTED,
        )
    failed = PostingResult(
        idempotency_key="k",
        command="post_invoice",
        customer_id="c",
        correlation_id="x",
        outcome=PostingOutcome.FAILED,
        error_code="INVALID_KEY_OR_REF",
    )
    assert failed.erp_internal_id is None


def test_business_exception_reason_is_typed() -> None:
    with pytest.raises(ValidationError, match="reason"):
        codec.loads(
            BusinessException,
            json.dumps(
                {
                    "exception_id": "e",
                    "reason": "something_else",
                    "message": "m",
                    "correlation_id": "c",
                    "first_seen": "2026-03-01T00:00:00Z",
                    "last_seen": "2026-03-01T00:00:00Z",
                }
            ),
        )
    exc = codec.loads(
        BusinessException,
        json.dumps(
            {
                "exception_id": "e",
                "reason": "closed_period",
                "message": "m",
                "correlation_id": "c",
                "first_seen": "2026-03-01T00:00:00Z",
                "last_seen": "2026-03-01T00:00:00Z",
            }
        ),
    )
    assert exc.reason is ExceptionReason.CLOSED_PERIOD


@pytest.mark.parametrize(
    ("currency", "exponent", "shown"),
    [
        ("JPY", 0, "123456 JPY"),
        ("USD", 2, "1234.56 USD"),
        ("KWD", 3, "123.456 KWD"),
    ],
)
def test_currency_exponents(currency: str, exponent: int, shown: str) -> None:
    assert currency_exponent(currency) == exponent
    assert format_minor(123456, currency) == shown


def test_published_json_schemas_are_current() -> None:
    """canonical/schemas/ is what CLM and CPQ teams read: it must match the code."""
    folder = REPO / "canonical" / "schemas"
    for name, model in PUBLISHED_MODELS.items():
        path = folder / f"{name}.schema.json"
        assert path.exists(), f"run `make schemas`: {path} is missing"
        assert json.loads(path.read_text()) == json.loads(json.dumps(codec.json_schema(model))), (
            f"run `make schemas`: {path} is stale"
        )


def test_published_clm_schema_is_current() -> None:
    from connectors.clm import ClmContractEvent

    path = REPO / "connectors" / "clm" / "clm-contract-event.schema.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(codec.json_schema(ClmContractEvent))), (
        f"run `make schemas`: {path} is stale"
    )
