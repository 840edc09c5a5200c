"""Snapshot and caught-up Events: their types, deterministic ids, and what they carry."""

from __future__ import annotations

import pytest

from connectors.stripe.routing import StripeStream, route
from connectors.stripe.samples import credit_note_object, customer_object, event_envelope, invoice_object
from connectors.stripe.snapshots import backfill_event_id, caught_up_event, snapshot_event, snapshot_type

PINNED = "2026-08-26.dahlia"


@pytest.mark.parametrize(
    ("status", "event_type"),
    [
        ("draft", "invoice.created"),
        ("open", "invoice.finalized"),
        ("paid", "invoice.paid"),
        ("void", "invoice.voided"),
        ("uncollectible", "invoice.marked_uncollectible"),
    ],
)
def test_an_invoice_snapshot_is_named_by_its_status(status: str, event_type: str) -> None:
    invoice = invoice_object("in_1", "cus_1", "DE", [("prod_seats", 2)], status=status)
    event = snapshot_event(invoice, PINNED)
    assert event is not None and event["type"] == event_type
    assert event["created"] == invoice["created"] and event["api_version"] == PINNED
    assert event["data"]["object"] is invoice
    assert route(event) == (StripeStream.BILLING, "cus_1")


def test_other_kinds_and_the_ones_skipped() -> None:
    customer = customer_object("cus_1", "US", "A", "a@x.example", None, 1)
    assert snapshot_type(customer) == "customer.updated"
    assert snapshot_type({**customer, "deleted": True}) == "customer.deleted"
    assert snapshot_type({"object": "subscription", "status": "canceled"}) == "customer.subscription.updated"
    note = credit_note_object("cn_1", "cus_1", "in_1", "usd", 100, 0, None, 5, "CN-1")
    assert snapshot_type(note) == "credit_note.created"
    assert snapshot_type({**note, "status": "void"}) == "credit_note.voided"
    paid = {"object": "invoice_payment", "id": "inpay_1", "invoice": "in_9", "status": "paid", "created": 3}
    event = snapshot_event(paid, PINNED)
    assert event is not None and event["type"] == "invoice_payment.paid"
    assert route(event) == (StripeStream.INVOICE_PAYMENTS, "in_9")
    assert snapshot_event({**paid, "status": "open"}, PINNED) is None
    assert snapshot_event({"object": "plan", "id": "plan_1"}, PINNED) is None
    assert snapshot_type({"object": "invoice", "status": "weird"}) is None


def test_ids_are_deterministic_per_type_object_and_status() -> None:
    invoice = invoice_object("in_1", "cus_1", "US", [("prod_seats", 2)], status="open")
    first, again = snapshot_event(invoice, PINNED), snapshot_event(dict(invoice), "2025-03-31.basil")
    assert first is not None and again is not None and first["id"] == again["id"]
    assert first["id"] == backfill_event_id("invoice.finalized", "in_1", "open")
    assert first["id"].startswith("evt_lfbackfill_") and len(first["id"]) == len("evt_lfbackfill_") + 32
    paid = snapshot_event({**invoice, "status": "paid"}, PINNED)
    assert paid is not None and paid["id"] != first["id"]
    other = snapshot_event({**invoice, "id": "in_2"}, PINNED)
    assert other is not None and other["id"] != first["id"]


def test_a_caught_up_event_keeps_its_id_and_type_and_carries_the_fresh_object() -> None:
    old = customer_object("cus_1", "US", "Old", "a@x.example", None, 1)
    event = {**event_envelope("evt_1", "customer.updated", old, 10), "api_version": "2025-03-31.basil"}
    event["data"]["previous_attributes"] = {"name": "Older"}
    fresh = {**old, "name": "New"}
    out = caught_up_event(event, fresh, PINNED)
    assert (out["id"], out["type"], out["created"]) == ("evt_1", "customer.updated", 10)
    assert out["data"] == {"object": fresh} and out["api_version"] == PINNED
    kept = caught_up_event(event, None, PINNED)
    assert kept["data"]["object"] is old and kept["data"]["previous_attributes"] == {"name": "Older"}
    assert event["api_version"] == "2025-03-31.basil"  # the input is not changed
