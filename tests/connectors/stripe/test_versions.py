"""Every Stripe API version since 2024-09-30.acacia: the same business document, rendered in
acacia's shapes or the current ones, maps to the same canonical document; an unknown version
is reported and read with the nearest shapes, never dropped."""

from __future__ import annotations

import orjson
import pytest

from agents.identity import provisional_customer_id
from canonical import CreditMemo, Invoice, Payment
from connectors.stripe import map_stripe_event
from connectors.stripe.samples import (
    credit_note_object,
    event_envelope,
    invoice_object,
    payment_intent_object,
)
from connectors.stripe.versions import CURRENT_VERSION, OLDEST_VERSION, Shapes, api_version, render

T = 1_767_225_600


@pytest.mark.parametrize(
    ("name", "shapes", "known"),
    [
        ("2024-09-30.acacia", Shapes.ACACIA, True),
        ("2025-02-24.acacia", Shapes.ACACIA, True),
        ("2025-03-31.basil", Shapes.CURRENT, True),
        ("2025-05-28.basil", Shapes.CURRENT, True),
        ("2025-11-17.clover", Shapes.CURRENT, True),
        ("2026-08-26.dahlia", Shapes.CURRENT, True),
        ("2026-10-28.endive", Shapes.CURRENT, False),  # newer than ledgerflow: the newest shapes
        ("2023-10-16", Shapes.ACACIA, False),  # older than acacia: the oldest
        ("2025-13-45.x", Shapes.CURRENT, False),
        (None, Shapes.CURRENT, False),
        ("", Shapes.CURRENT, False),
    ],
)
def test_a_version_means_its_shapes(name: str | None, shapes: Shapes, known: bool) -> None:
    version = api_version(name)
    assert (version.shapes, version.known) == (shapes, known)


def _one(event: dict[str, object], key: str | None = None, seen: list[str] | None = None) -> object:
    hook = seen.append if seen is not None else None
    [change] = map_stripe_event(
        orjson.dumps(event), provisional_customer_id, None, key, on_unknown_version=hook
    )
    return change.payload


def _invoice() -> dict[str, object]:
    return invoice_object(
        "in_V1",
        "cus_V",
        "DE",
        [("prod_platform", 1), ("prod_seats", 7)],
        status="open",
        created=T,
        number="V-1",
        subscription="sub_V",
    )


def test_an_invoice_maps_the_same_from_acacia_and_current_shapes() -> None:
    current = _invoice()
    acacia = render(current, OLDEST_VERSION)
    assert "parent" not in acacia and "total_taxes" not in acacia and acacia["subscription"] == "sub_V"
    assert all("price" in line and "pricing" not in line for line in acacia["lines"]["data"])
    a = _one(event_envelope("evt_a", "invoice.finalized", acacia, T, OLDEST_VERSION))
    c = _one(event_envelope("evt_c", "invoice.finalized", current, T, CURRENT_VERSION))
    assert isinstance(a, Invoice) and isinstance(c, Invoice)
    assert a == c
    assert a.subscription_id == "sub_V" and a.tax_total == sum(line.tax_amount for line in a.lines) > 0
    assert [(line.price_id, line.product_id) for line in a.lines] == [
        ("price_platform_monthly", "prod_platform"),
        ("price_seat_monthly", "prod_seats"),
    ]


def test_each_version_is_read_in_its_own_shapes_only() -> None:
    """A current-version invoice carrying acacia's fields (not Stripe's) does not take them;
    an acacia one does not read the current fields."""
    current = _invoice()
    mixed = {**current, "subscription": "sub_OTHER", "total_tax_amounts": [{"amount": 1}]}
    c = _one(event_envelope("evt_m", "invoice.finalized", mixed, T, CURRENT_VERSION))
    assert isinstance(c, Invoice) and c.subscription_id == "sub_V" and c.tax_total > 1
    acacia = {**render(current, OLDEST_VERSION), "parent": current["parent"], "total_taxes": []}
    acacia["subscription"] = None
    a = _one(event_envelope("evt_a", "invoice.finalized", acacia, T, OLDEST_VERSION))
    assert isinstance(a, Invoice) and a.subscription_id is None and a.tax_total == c.tax_total


def test_a_credit_note_maps_the_same_in_both_shapes() -> None:
    note = credit_note_object("cn_V", "cus_V", "in_V1", "eur", 1000, 190, "txr_de_vat19", T, "CN-1")
    a = _one(event_envelope("evt_a", "credit_note.created", render(note, OLDEST_VERSION), T, OLDEST_VERSION))
    c = _one(event_envelope("evt_c", "credit_note.created", note, T, CURRENT_VERSION))
    assert isinstance(a, CreditMemo) and a == c and a.tax_total == 190


def test_an_acacia_payment_intent_names_its_invoice_a_current_one_does_not() -> None:
    intent = payment_intent_object("pi_V", "cus_V", "eur", 1190, True, T)
    old = _one(
        event_envelope(
            "evt_a",
            "payment_intent.succeeded",
            render(intent, OLDEST_VERSION, invoice_id="in_V1"),
            T,
            OLDEST_VERSION,
        )
    )
    assert isinstance(old, Payment) and old.invoice_id == "in_V1"
    # Since basil Stripe sends no invoice on the intent; one there (or in metadata) is not Stripe's
    # link and is not read: the invoice_payment is.
    stray = {**intent, "invoice": "in_V1", "metadata": {"invoice_id": "in_V1"}}
    new = _one(event_envelope("evt_c", "payment_intent.succeeded", stray, T, CURRENT_VERSION))
    assert isinstance(new, Payment) and new.invoice_id is None and new.amount == 1190


def test_an_unknown_version_is_reported_and_mapped() -> None:
    seen: list[str] = []
    newer = _one(event_envelope("evt_n", "invoice.finalized", _invoice(), T, "2027-01-27.fig"), seen=seen)
    assert isinstance(newer, Invoice) and newer.subscription_id == "sub_V"
    _one(event_envelope("evt_k", "invoice.finalized", _invoice(), T, CURRENT_VERSION), seen=seen)
    assert seen == ["2027-01-27.fig"]
