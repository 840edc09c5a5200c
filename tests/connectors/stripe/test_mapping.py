"""Stripe Event → canonical: Stripe's own example objects, and each typed rejection."""

from __future__ import annotations

import orjson
import pytest

from agents.identity import provisional_customer_id
from canonical import EntityType, InvoiceStatus, Source
from connectors.errors import Rejection, RejectionReason
from connectors.stripe import map_stripe_event
from connectors.stripe.mapping import INVOICE_LIFECYCLE_RANK
from connectors.stripe.samples import event_envelope, invoice_object
from tests.support import finalized_fixture_invoice, stripe_event, stripe_fixture


def _map(event: dict[str, object], correlation: str | None = None):  # type: ignore[no-untyped-def]
    return map_stripe_event(orjson.dumps(event), provisional_customer_id, correlation)


def test_fixture_invoice_maps_field_by_field() -> None:
    [change] = _map(stripe_event(finalized_fixture_invoice(corrected=False), "invoice.finalized", "evt_a"))
    inv = change.payload
    assert change.source is Source.STRIPE and change.entity_type is EntityType.INVOICE
    assert change.entity_id == inv.invoice_id == "in_1Pgc6tB7WZ01zgkWu9fdqL6I"
    assert change.customer_ref == "cus_QXg1o8vcGmoR32"
    assert change.customer_id == "cust-stripe-cus_QXg1o8vcGmoR32"
    assert inv.status is InvoiceStatus.OPEN and inv.currency == "USD"
    assert (inv.subtotal, inv.total, inv.tax_total, inv.shipping_total) == (1000, 1000, 0, 0)
    # Stripe's example line: amount 1000, but a subtotal of 2,060,319,484. Carried as given;
    # stage 2's arithmetic check is what refuses it.
    [line] = inv.lines
    assert (line.amount, line.subtotal, line.discount_amount) == (1000, 2060319484, 0)
    assert inv.subscription_id == "subscription"
    assert inv.issued_at.timestamp() == 1234567890  # effective_at: finalized_at is null


def test_fixture_draft_invoice_ranks_before_open() -> None:
    draft = stripe_fixture("invoice")  # as published: status draft
    [change] = _map(stripe_event(draft, "invoice.created", "evt_d"))
    assert change.payload.status is InvoiceStatus.DRAFT
    assert change.entity_version == (0,) < (INVOICE_LIFECYCLE_RANK[InvoiceStatus.OPEN],)


def test_correlation_id_is_the_header_or_stable_per_event_id() -> None:
    event = stripe_event(finalized_fixture_invoice(corrected=True), "invoice.finalized", "evt_same")
    assert _map(event, "corr-x")[0].correlation_id == "corr-x"
    assert _map(event)[0].correlation_id == _map(event)[0].correlation_id != "corr-x"


def test_sample_invoices_add_up_in_every_market() -> None:
    for country, currency in [("US", "USD"), ("GB", "GBP"), ("DE", "EUR"), ("JP", "JPY")]:
        obj = invoice_object("in_s1", "cus_s1", country, [("prod_platform", 1), ("prod_seats", 7)])
        [change] = _map(event_envelope("evt_s1", "invoice.finalized", obj, 1_767_229_200))
        inv = change.payload
        assert inv.currency == currency and inv.customer_country == country
        assert sum(line.amount for line in inv.lines) == inv.subtotal
        assert inv.subtotal + inv.tax_total == inv.total


def test_other_event_types_map_to_nothing() -> None:
    assert _map(stripe_fixture("event")) == []  # plan.created


@pytest.mark.parametrize(
    ("raw", "reason", "field"),
    [
        (b"{not json", RejectionReason.NOT_JSON, None),
        (b"[1, 2]", RejectionReason.SCHEMA_INVALID, None),
        (
            b'{"id": "evt_1", "object": "event", "created": 1, "data": {"object": {}}}',
            RejectionReason.SCHEMA_INVALID,
            "type",
        ),
        (
            b'{"id": "evt_1", "object": "charge", "type": "invoice.paid", "created": 1, '
            b'"data": {"object": {}}}',
            RejectionReason.SCHEMA_INVALID,
            "object",
        ),
    ],
)
def test_undecodable_envelopes_are_typed_rejections(
    raw: bytes, reason: RejectionReason, field: str | None
) -> None:
    with pytest.raises(Rejection) as info:
        map_stripe_event(raw, provisional_customer_id)
    assert info.value.reason is reason
    if field is not None:
        assert field in info.value.fields


@pytest.mark.parametrize(
    ("mutate", "reason", "field"),
    [
        (lambda o: o.update(customer=None), RejectionReason.MISSING_FIELD, "data.object.customer"),
        (lambda o: o.update(status="pending"), RejectionReason.INVALID_VALUE, "data.object.status"),
        (lambda o: o.update(currency="xyz"), RejectionReason.INVALID_VALUE, "data.object.currency"),
        (lambda o: o.update(total=10.5), RejectionReason.SCHEMA_INVALID, "data.object.total"),
        (lambda o: o.pop("lines"), RejectionReason.SCHEMA_INVALID, "data.object.lines"),
        (
            lambda o: o["lines"].update(has_more=True),
            RejectionReason.INVALID_VALUE,
            "data.object.lines.has_more",
        ),
    ],
)
def test_broken_invoices_are_rejections_that_name_the_field(mutate, reason, field) -> None:  # type: ignore[no-untyped-def]
    obj = finalized_fixture_invoice(corrected=True)
    mutate(obj)
    with pytest.raises(Rejection) as info:
        _map(stripe_event(obj, "invoice.finalized"))
    assert info.value.reason is reason
    assert field in info.value.fields, info.value.fields
    assert info.value.header_value.startswith(reason.value)
