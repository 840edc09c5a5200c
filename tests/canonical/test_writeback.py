"""What a confirmed ERP posting means for the CRM account (pure), and how write-backs merge."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from canonical import (
    SCHEMA_VERSION,
    CrmAccountFields,
    CrmWriteback,
    PostingOutcome,
    PostingResult,
    codec,
    merge_writebacks,
    writeback_for,
)
from tests.factories import T0

ACCOUNT = "001SIM000000042"
ACCOUNT_18 = "001SIM000000042AAA"


def result(command: str, **over: Any) -> PostingResult:
    fields: dict[str, Any] = {
        "idempotency_key": f"{command}-stripe-in_100",
        "command": command,
        "customer_id": "cust-crm-001SIM000000042",
        "correlation_id": "corr-1",
        "outcome": PostingOutcome.POSTED,
        "erp_internal_id": "4711",
        "document_number": "INV000012",
        "posted_at": T0,
    }
    fields.update(over)
    return PostingResult(**fields)


def test_a_confirmed_customer_upsert_writes_the_erp_customer_id_and_number() -> None:
    wb = writeback_for(result("upsert_customer", document_number="CUST000007"), ACCOUNT)
    assert wb is not None
    assert (wb.crm_account_id, wb.customer_id, wb.correlation_id) == (
        ACCOUNT,
        "cust-crm-001SIM000000042",
        "corr-1",
    )
    assert wb.fields.changes() == {"erp_customer_id": "4711", "erp_customer_number": "CUST000007"}
    assert wb.fields.updated_at == T0  # when the ERP confirmed, not when this ran
    assert wb.idempotency_key == "crm_writeback-upsert_customer-stripe-in_100"
    assert wb.schema_version == SCHEMA_VERSION


def test_a_posted_invoice_writes_its_erp_number_and_status() -> None:
    wb = writeback_for(result("post_invoice"), ACCOUNT_18)
    assert wb is not None and wb.crm_account_id == ACCOUNT_18
    assert wb.fields.changes() == {"last_invoice_number": "INV000012", "last_invoice_status": "posted"}


def test_a_voided_invoice_writes_status_voided() -> None:
    wb = writeback_for(result("void_invoice"), ACCOUNT)
    assert wb is not None
    assert wb.fields.changes() == {"last_invoice_number": "INV000012", "last_invoice_status": "voided"}


def test_an_applied_payment_writes_paid_and_nothing_else() -> None:
    wb = writeback_for(result("apply_payment", document_number="PYMT000003"), ACCOUNT)
    assert wb is not None
    assert wb.fields.changes() == {"last_payment_status": "paid"}


def test_an_invoice_without_a_document_number_still_writes_its_status() -> None:
    wb = writeback_for(result("post_invoice", document_number=None), ACCOUNT)
    assert wb is not None and wb.fields.changes() == {"last_invoice_status": "posted"}


def test_failed_postings_produce_nothing() -> None:
    failed = result(
        "post_invoice",
        outcome=PostingOutcome.FAILED,
        erp_internal_id=None,
        document_number=None,
        posted_at=None,
        error_code="INVALID_KEY_OR_REF",
    )
    assert writeback_for(failed, ACCOUNT) is None


@pytest.mark.parametrize("account", [None, "", "001A", "001SIM00000004/../x", "001SIM0000000421"])
def test_customers_without_a_valid_crm_account_produce_nothing(account: str | None) -> None:
    assert writeback_for(result("post_invoice"), account) is None


@pytest.mark.parametrize("command", ["upsert_contract", "post_credit_memo"])
def test_postings_the_account_does_not_show_produce_nothing(command: str) -> None:
    assert writeback_for(result(command), ACCOUNT) is None


def test_the_same_result_always_yields_the_same_writeback() -> None:
    assert writeback_for(result("post_invoice"), ACCOUNT) == writeback_for(result("post_invoice"), ACCOUNT)


def test_a_writeback_round_trips_as_json_and_refuses_bad_input() -> None:
    wb = writeback_for(result("upsert_customer"), ACCOUNT)
    assert wb is not None
    assert codec.loads(CrmWriteback, codec.dumps(wb)) == wb
    with pytest.raises(ValidationError):
        CrmAccountFields(updated_at=T0)  # says nothing
    with pytest.raises(ValidationError):
        CrmAccountFields(last_invoice_status="paid", updated_at=T0)  # type: ignore[arg-type]
    raw = orjson.loads(codec.dumps(wb))
    raw["crm_account_id"] = "001/../../x"  # it goes into a URL path: only Salesforce ids pass
    with pytest.raises(ValidationError):
        codec.loads(CrmWriteback, orjson.dumps(raw))


def _wb(at_minutes: int, **fields: Any) -> CrmWriteback:
    return CrmWriteback(
        idempotency_key=f"crm_writeback-{at_minutes}",
        crm_account_id=ACCOUNT,
        customer_id="cust-1",
        correlation_id=f"corr-{at_minutes}",
        fields=CrmAccountFields(**fields, updated_at=T0 + timedelta(minutes=at_minutes)),
    )


def test_merging_keeps_the_newest_value_of_each_field() -> None:
    customer = _wb(1, erp_customer_id="4711", erp_customer_number="CUST000007")
    invoice = _wb(2, last_invoice_number="INV000012", last_invoice_status="posted")
    paid = _wb(3, last_payment_status="paid")
    voided = _wb(4, last_invoice_number="INV000012", last_invoice_status="voided")
    merged = merge_writebacks([customer, invoice, paid, voided])
    assert merged.fields.changes() == {
        "erp_customer_id": "4711",
        "erp_customer_number": "CUST000007",
        "last_invoice_number": "INV000012",
        "last_invoice_status": "voided",
        "last_payment_status": "paid",
    }
    assert merged.fields.updated_at == voided.fields.updated_at
    assert (merged.idempotency_key, merged.correlation_id) == (voided.idempotency_key, "corr-4")


def test_an_older_writeback_arriving_late_does_not_overwrite_a_newer_one() -> None:
    newer = _wb(5, last_invoice_number="INV000013", last_invoice_status="posted")
    older = _wb(2, last_invoice_number="INV000012", last_invoice_status="voided")
    merged = merge_writebacks([newer, older])
    assert merged.fields.changes() == {"last_invoice_number": "INV000013", "last_invoice_status": "posted"}


def test_one_writeback_merges_to_itself_and_accounts_never_mix() -> None:
    one = _wb(1, last_payment_status="paid")
    assert merge_writebacks([one]) is one
    other = one.model_copy(update={"crm_account_id": "001SIM000000043"})
    with pytest.raises(ValueError, match="different CRM accounts"):
        merge_writebacks([one, other])
    with pytest.raises(ValueError):
        merge_writebacks([])
