"""The customer master: attribute ownership, partial updates, upserts only on real change,
and the documents that wait for their customer, invoice or contract."""

from __future__ import annotations

from agents.customers import decide_customer
from agents.posting import CustomerBook, Outcome, overdue_waiting_invoices
from canonical import (
    ApplyPayment,
    ChangeEvent,
    CreditMemo,
    CreditMemoStatus,
    Customer,
    EntityType,
    ExceptionReason,
    Payment,
    PaymentStatus,
    PostCreditMemo,
    PostInvoice,
    Source,
    UpsertCustomer,
)
from streams.mappings import load_mappings
from tables.invoices import CustomerInvoices
from tests.factories import T0, invoice_event, posted

MAPPINGS = load_mappings(None)
CID = "cust-crm-001A"


def _customer_change(
    customer: Customer,
    source: Source,
    event_id: str,
    version: int = 1,
    changed: tuple[str, ...] | None = None,
) -> ChangeEvent:
    return invoice_event().model_copy(
        update={
            "event_id": event_id,
            "source": source,
            "entity_type": EntityType.CUSTOMER,
            "entity_id": customer.source_ref,
            "entity_version": (version,),
            "customer_id": CID,
            "payload": customer,
            "changed_fields": changed,
            "source_type": "customer",
        }
    )


def account_change(name: str = "Acme Ltd", version: int = 1, event_id: str = "sf-1") -> ChangeEvent:
    return _customer_change(
        Customer(source_ref="001A", crm_account_id="001A", name=name, country="GB"),
        Source.SALESFORCE,
        event_id,
        version,
    )


def stripe_change(name: str = "ACME LIMITED", event_id: str = "evt_cus") -> ChangeEvent:
    return _customer_change(
        Customer(
            source_ref="cus_100",
            billing_customer_id="cus_100",
            crm_account_id="001A",
            name=name,
            email="ap@acme.example",
            country="US",
            currency="GBP",
        ),
        Source.STRIPE,
        event_id,
    )


def test_ownership_decides_whatever_the_arrival_order() -> None:
    crm_first = decide_customer(None, account_change(), MAPPINGS, T0)
    both = decide_customer(crm_first.master, stripe_change(), MAPPINGS, T0)
    stripe_first = decide_customer(None, stripe_change(), MAPPINGS, T0)
    both_other_way = decide_customer(stripe_first.master, account_change(), MAPPINGS, T0)
    assert both.master.record == both_other_way.master.record
    record = both.master.record
    assert (record.name, record.country, record.email, record.currency, record.billing_customer_id) == (
        "Acme Ltd",
        "GB",
        "ap@acme.example",
        "GBP",
        "cus_100",
    )


def test_upsert_only_when_complete_and_changed() -> None:
    first = decide_customer(None, account_change(), MAPPINGS, T0)
    assert isinstance(first.upsert, UpsertCustomer) and first.upsert.subsidiary == "UK01"
    same = decide_customer(first.master, account_change(event_id="sf-2", version=2), MAPPINGS, T0)
    assert same.upsert is None  # nothing the ERP holds changed
    renamed = decide_customer(first.master, account_change("Acme Europe Ltd", 3, "sf-3"), MAPPINGS, T0)
    assert renamed.upsert is not None and renamed.upsert.idempotency_key != first.upsert.idempotency_key
    again = decide_customer(None, account_change(), MAPPINGS, T0)
    assert again.upsert is not None and again.upsert.idempotency_key == first.upsert.idempotency_key
    nameless = _customer_change(
        Customer(source_ref="001B", crm_account_id="001B", country="GB"), Source.SALESFORCE, "sf-9"
    )
    assert decide_customer(None, nameless, MAPPINGS, T0).upsert is None


def test_stale_and_duplicate_customer_events() -> None:
    newer = decide_customer(None, account_change("New", 5, "sf-5"), MAPPINGS, T0)
    older = decide_customer(newer.master, account_change("Old", 4, "sf-4"), MAPPINGS, T0)
    assert older.master.record.name == "New" and older.upsert is None
    assert decide_customer(newer.master, account_change("New", 5, "sf-5"), MAPPINGS, T0).duplicate


def test_partial_update_changes_only_its_fields() -> None:
    full = decide_customer(None, account_change(), MAPPINGS, T0)
    partial = _customer_change(
        Customer(source_ref="001A", crm_account_id="001A", name=None),
        Source.SALESFORCE,
        "sf-p",
        2,
        changed=("parent_account_id",),
    )
    merged = decide_customer(full.master, partial, MAPPINGS, T0).master.record
    assert merged.name == "Acme Ltd" and merged.country == "GB"


def _payment(invoice_id: str = "in_100") -> ChangeEvent:
    payment = Payment(
        payment_id="pi_1",
        customer_ref="cus_100",
        invoice_id=invoice_id,
        amount=12000,
        currency="GBP",
        status=PaymentStatus.SUCCEEDED,
        received_at=T0,
    )
    return invoice_event().model_copy(
        update={
            "event_id": "evt_pi",
            "entity_type": EntityType.PAYMENT,
            "entity_id": "pi_1",
            "payload": payment,
            "customer_id": CID,
        }
    )


def _memo() -> ChangeEvent:
    memo = CreditMemo(
        credit_memo_id="cn_1",
        customer_ref="cus_100",
        invoice_id="in_100",
        status=CreditMemoStatus.ISSUED,
        currency="GBP",
        issued_at=T0,
        subtotal=1000,
        tax_total=200,
        total=1200,
    )
    return invoice_event().model_copy(
        update={
            "event_id": "evt_cn",
            "entity_type": EntityType.CREDIT_MEMO,
            "entity_id": "cn_1",
            "payload": memo,
            "customer_id": CID,
        }
    )


def test_documents_wait_for_what_must_come_first_then_go_in_order() -> None:
    book = CustomerBook(CID, CustomerInvoices(customer_id=CID), {}, None, MAPPINGS)
    invoice = invoice_event().model_copy(update={"customer_id": CID})
    assert book.apply(_payment(), T0) == Outcome.WAITING.value  # before its invoice
    assert book.apply(_memo(), T0) == Outcome.WAITING.value
    assert book.apply(invoice, T0) == Outcome.WAITING.value  # before its customer
    assert book.commands == []
    book.apply(account_change(), T0)  # the customer arrives: its upsert goes out
    assert [type(c) for c, _ in book.commands] == [UpsertCustomer]
    book.apply_result(posted(book.commands[0][0]), T0)  # the ERP confirms it: the invoice follows
    assert [type(c) for c, _ in book.commands] == [UpsertCustomer, PostInvoice]
    assert len(book.waiting) == 2  # payment and credit memo wait for the ERP to confirm the invoice
    book.apply_result(posted(book.commands[1][0], "202", "INV0001"), T0)
    kinds = [type(c) for c, _ in book.commands]
    assert kinds == [UpsertCustomer, PostInvoice, ApplyPayment, PostCreditMemo]
    assert book.waiting == []
    row = book.invoices["in_100"]
    assert (row.erp_status.value, row.document_number, row.erp_internal_id) == ("posted", "INV0001", "202")
    payment = book.commands[2][0]
    assert isinstance(payment, ApplyPayment) and payment.document.invoice_external_id == "stripe-in_100"
    assert payment.subsidiary == "UK01" and payment.idempotency_key == "apply_payment-stripe-pi_1"
    assert book.apply(_payment(), T0) == Outcome.DUPLICATE.value
    book.apply_result(posted(payment, "303"), T0)
    assert book.state().confirmed == {"apply_payment-stripe-pi_1": "303"}


def test_waiting_too_long_is_raised_by_reason() -> None:
    book = CustomerBook(CID, CustomerInvoices(customer_id=CID), {}, None, MAPPINGS)
    book.apply(invoice_event().model_copy(update={"customer_id": CID}), T0)
    book.apply(_payment("in_999"), T0)
    reasons = {e.reason for e in overdue_waiting_invoices(book.state(), T0.replace(hour=20), 3600)}
    assert reasons == {ExceptionReason.CUSTOMER_INCOMPLETE, ExceptionReason.INVOICE_NOT_POSTED}


def test_a_credit_on_a_paid_invoice_applies_nothing_and_a_payment_only_what_remains_due() -> None:
    """An ERP refuses to apply more than an invoice still owes: stage 2 keeps what its payments
    and credits applied, so a credit note on a paid invoice stays credit on the customer's
    account, and a payment after a credit applies the rest and leaves its excess unapplied."""
    for first, second in ((_payment, _memo), (_memo, _payment)):
        book = CustomerBook(CID, CustomerInvoices(customer_id=CID), {}, None, MAPPINGS)
        book.apply(account_change(), T0)
        book.apply_result(posted(book.commands[0][0]), T0)
        book.apply(invoice_event().model_copy(update={"customer_id": CID}), T0)
        book.apply_result(posted(book.commands[1][0], "202", "INV0001"), T0)
        book.apply(first(), T0)
        book.apply(second(), T0)
        applied = {
            type(c).__name__: c.document.applied
            for c, _ in book.commands
            if isinstance(c, ApplyPayment | PostCreditMemo)
        }
        if first is _payment:  # paid in full (12000), then credited 1200
            assert applied == {"ApplyPayment": 12000, "PostCreditMemo": 0}
        else:  # credited 1200 first: the payment of 12000 applies the 10800 that remain
            assert applied == {"PostCreditMemo": 1200, "ApplyPayment": 10800}
        assert book.invoices["in_100"].settled == 12000
