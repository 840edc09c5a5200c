"""Every object in Stripe's published fixtures: a valid canonical event, a typed rejection that
names the field at fault, or (for objects the ERP does not book) nothing."""

from __future__ import annotations

import json

import orjson
import pytest

from agents.identity import provisional_customer_id
from canonical import (
    ChangeEvent,
    CreditMemo,
    CreditMemoStatus,
    Customer,
    EntityType,
    Invoice,
    Payment,
    Subscription,
    codec,
)
from canonical.money import MAX_MINOR_UNITS
from connectors.errors import Rejection, RejectionReason
from connectors.stripe import map_stripe_event
from connectors.stripe.versions import OLDEST_VERSION, render
from tests.support import _stripe_resources, finalized_fixture_invoice, stripe_event, stripe_fixture

MAPPED = {
    "customer": ("customer.created", Customer),
    "deleted_customer": ("customer.deleted", Customer),
    "subscription": ("customer.subscription.updated", Subscription),
    "credit_note": ("credit_note.created", CreditMemo),
    "invoice": ("invoice.created", Invoice),
}
REJECTED = {
    # Stripe's examples leave the customer empty on these; an unattributable payment must not
    # be guessed at.
    "payment_intent": ("payment_intent.succeeded", RejectionReason.MISSING_FIELD, "data.object.customer"),
    "charge": ("charge.refunded", RejectionReason.MISSING_FIELD, "data.object.customer"),
    "refund": ("refund.created", RejectionReason.MISSING_FIELD, "data.object.customer"),
    # A dispute names its charge, not its customer: it maps once the charge is expanded.
    "dispute": ("charge.dispute.created", RejectionReason.MISSING_FIELD, "data.object.charge"),
    # An invoice_payment names its invoice, never its customer: it must come keyed by the
    # customer stage 1 found for the invoice.
    "invoice_payment": ("invoice_payment.paid", RejectionReason.MISSING_FIELD, "data.object.invoice"),
}
NOT_BOOKED = {
    "event": "plan.created",
    "plan": "plan.updated",
    "price": "price.created",
    "product": "product.created",
    "quote": "quote.finalized",
    "tax_id": "customer.tax_id.created",
    "invoiceitem": "invoiceitem.created",
    "subscription_schedule": "subscription_schedule.created",
    "deleted_invoice": "invoice.deleted",
}
PARTS = {"line_item", "subscription_item", "credit_note_line_item"}  # only inside their parents


def test_every_fixture_object_is_classified() -> None:
    assert set(_stripe_resources()) == set(MAPPED) | set(REJECTED) | set(NOT_BOOKED) | PARTS


def _map(name: str, event_type: str) -> list[ChangeEvent]:
    return map_stripe_event(
        orjson.dumps(stripe_event(stripe_fixture(name), event_type, f"evt_{name}")), provisional_customer_id
    )


@pytest.mark.parametrize("name", sorted(MAPPED))
def test_mapped_objects_give_valid_canonical_events(name: str) -> None:
    event_type, model = MAPPED[name]
    [change] = _map(name, event_type)
    assert isinstance(change.payload, model)
    assert change.entity_type is EntityType(change.payload.kind)
    assert codec.loads(ChangeEvent, codec.dumps(change)) == change  # survives the topic
    assert change.customer_ref == "cus_QXg1o8vcGmoR32"


def test_deleted_customer_and_credit_note_details() -> None:
    [deleted] = _map("deleted_customer", "customer.deleted")
    assert isinstance(deleted.payload, Customer) and deleted.payload.deleted
    [note] = _map("credit_note", "credit_note.created")
    memo = note.payload
    assert isinstance(memo, CreditMemo)
    assert (memo.invoice_id, memo.status, memo.total, memo.currency) == (
        "in_1Pgc75B7WZ01zgkWYv4iMwt7",
        CreditMemoStatus.ISSUED,
        1690,
        "USD",
    )


def test_subscription_items_and_periods() -> None:
    [sub] = _map("subscription", "customer.subscription.updated")
    s = sub.payload
    assert isinstance(s, Subscription) and s.status == "active"
    assert s.items[0].price_id == "price_1PgafmB7WZ01zgkW6dKueIc5" and s.items[0].unit_amount == 2000


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_rejected_objects_name_the_field(name: str) -> None:
    event_type, reason, field = REJECTED[name]
    with pytest.raises(Rejection) as info:
        _map(name, event_type)
    assert info.value.reason is reason and field in info.value.fields


def test_a_dispute_with_its_charge_expanded_is_a_chargeback() -> None:
    obj = stripe_fixture("dispute")
    obj["charge"] = {**stripe_fixture("charge"), "customer": "cus_QXg1o8vcGmoR32"}
    [change] = map_stripe_event(
        orjson.dumps(stripe_event(obj, "charge.dispute.funds_withdrawn")), provisional_customer_id
    )
    assert change.entity_type is EntityType.REFUND and change.payload.reason == "dispute:general"
    assert (change.payload.amount, change.payload.charge_id) == (1000, "ch_1PgafuB7WZ01zgkWXYmPNZs8")


def test_the_same_objects_map_once_they_name_a_customer() -> None:
    for name, event_type in (
        ("payment_intent", "payment_intent.succeeded"),
        ("charge", "charge.refunded"),
        ("refund", "refund.created"),
    ):
        obj = stripe_fixture(name)
        obj["customer"] = "cus_QXg1o8vcGmoR32"
        [change, *_] = map_stripe_event(orjson.dumps(stripe_event(obj, event_type)), provisional_customer_id)
        assert change.customer_ref == "cus_QXg1o8vcGmoR32"


@pytest.mark.parametrize("name", sorted(NOT_BOOKED))
def test_objects_the_erp_does_not_book_map_to_nothing(name: str) -> None:
    assert _map(name, NOT_BOOKED[name]) == []


def test_crm_account_link_uses_the_configured_metadata_key() -> None:
    obj = stripe_fixture("customer")
    obj["metadata"] = {"sf_account": "001XYZ"}
    raw = orjson.dumps(stripe_event(obj, "customer.updated"))
    [default] = map_stripe_event(raw, provisional_customer_id)
    [configured] = map_stripe_event(raw, provisional_customer_id, crm_account_key="sf_account")
    assert isinstance(default.payload, Customer) and default.payload.crm_account_id is None
    assert isinstance(configured.payload, Customer) and configured.payload.crm_account_id == "001XYZ"


def test_an_amount_no_ledger_can_hold_is_refused_at_the_edge() -> None:
    """Found by fuzzing: a 40-digit amount_due passed the mapping and failed where its parked
    row was encoded (orjson holds 64-bit integers), crashing the ingest agent's batch."""
    invoice = finalized_fixture_invoice(corrected=True)
    invoice["amount_due"] = int("9" * 40)
    with pytest.raises(Rejection) as info:
        map_stripe_event(
            json.dumps(stripe_event(invoice, "invoice.finalized", "evt_huge")).encode(),
            provisional_customer_id,
        )
    assert info.value.reason in (RejectionReason.SCHEMA_INVALID, RejectionReason.INVALID_VALUE)
    invoice["amount_due"] = MAX_MINOR_UNITS  # the bound itself is taken
    [change] = map_stripe_event(
        orjson.dumps(stripe_event(invoice, "invoice.finalized", "evt_max")), provisional_customer_id
    )
    codec.dumps(change)


def test_the_invoice_payment_fixture_is_a_payment_applied_to_its_invoice() -> None:
    """Stripe's example, keyed by its invoice's customer: refused while it names no payment and
    is not paid (the example's amount_paid is null, its status a placeholder); as Stripe sends
    it once paid, a payment of the PaymentIntent applied to the invoice."""
    obj = stripe_fixture("invoice_payment")
    raw = orjson.dumps(stripe_event(obj, "invoice_payment.paid", "evt_inpay"))
    with pytest.raises(Rejection) as info:
        map_stripe_event(raw, provisional_customer_id, None, "cus_QXg1o8vcGmoR32")
    assert info.value.fields == ("data.object.payment",)
    obj["payment"]["payment_intent"] = "pi_3PgafuB7WZ01zgkW0"
    with pytest.raises(Rejection) as info:
        map_stripe_event(
            orjson.dumps(stripe_event(obj, "invoice_payment.paid")), provisional_customer_id, None, "cus_Q"
        )
    assert "data.object.status" in info.value.fields
    obj |= {"status": "paid", "amount_paid": obj["amount_requested"], "currency": "usd", "invoice": "in_1Pg"}
    obj["status_transitions"]["paid_at"] = 1_721_954_000
    [change] = map_stripe_event(
        orjson.dumps(stripe_event(obj, "invoice_payment.paid", "evt_inpay")),
        provisional_customer_id,
        None,
        "cus_QXg1o8vcGmoR32",
    )
    payment = change.payload
    assert isinstance(payment, Payment) and change.entity_type is EntityType.PAYMENT
    assert (payment.payment_id, payment.invoice_id, payment.amount, payment.currency) == (
        "pi_3PgafuB7WZ01zgkW0",
        "in_1Pg",
        1112626247,
        "USD",
    )
    assert change.customer_ref == payment.customer_ref == "cus_QXg1o8vcGmoR32"
    assert change.entity_version == (3,)  # above the PaymentIntent's own events: the link wins


@pytest.mark.parametrize("name", ["invoice", "credit_note"])
def test_the_fixtures_map_the_same_rendered_in_the_oldest_version(name: str) -> None:
    """Stripe's examples (current shapes) and the same objects as an acacia Event carries them."""
    event_type, _ = MAPPED[name]
    obj = finalized_fixture_invoice(corrected=True) if name == "invoice" else stripe_fixture(name)
    current = stripe_event(obj, event_type, "evt_now")
    older = stripe_event(render(obj, OLDEST_VERSION), event_type, "evt_now", OLDEST_VERSION)
    [a] = map_stripe_event(orjson.dumps(current), provisional_customer_id)
    [b] = map_stripe_event(orjson.dumps(older), provisional_customer_id)
    assert a.payload == b.payload
