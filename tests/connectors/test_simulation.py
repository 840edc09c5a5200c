"""The scenario simulator: deterministic, realistic, and its ground truth matches its messages."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

from agents.identity import provisional_customer_id
from agents.validation import validate_invoice
from canonical import ChangeEvent, CreditMemo, Invoice, InvoiceStatus, Payment, PaymentStatus, Refund
from connectors.clm import map_clm_event
from connectors.salesforce import map_cdc_event
from connectors.simulation import generate
from connectors.stripe import map_stripe_event
from connectors.stripe.versions import CURRENT_VERSION, OLDEST_VERSION
from streams.mappings import load_mappings

ADAPTER = {
    "billing.changes": map_stripe_event,
    "payments.changes": map_stripe_event,
    "crm.changes": map_cdc_event,
    "clm.changes": map_clm_event,
}


@pytest.fixture(scope="module", params=[CURRENT_VERSION, OLDEST_VERSION])
def scenario(request):  # type: ignore[no-untyped-def]
    return generate(
        customers=200,
        months=12,
        seed=7,
        duplicate_rate=0.1,
        reorder_rate=0.1,
        stripe_api_version=request.param,
    )


@pytest.fixture(scope="module")
def changes(scenario) -> list[ChangeEvent]:  # type: ignore[no-untyped-def]
    owner = {i["invoice_id"]: i["billing_customer_id"] for i in scenario.truth["invoices"]}
    out: list[ChangeEvent] = []
    for m in scenario.messages:
        if m.topic == "billing.invoice-payments":
            # keyed by its invoice; stage 1 passes it on keyed by the invoice's customer
            out += map_stripe_event(m.value, provisional_customer_id, None, owner[m.key])
        else:
            out += ADAPTER[m.topic](m.value, provisional_customer_id)  # every message maps: no Rejection
    return out


def test_each_version_links_payments_its_own_way(scenario) -> None:  # type: ignore[no-untyped-def]
    events = [orjson.loads(m.value) for m in scenario.messages if m.topic != "crm.changes"]
    stripe = [e for e in events if e.get("object") == "event"]
    assert {e["api_version"] for e in stripe} == {scenario.truth["stripe_api_version"]}
    intents = [e["data"]["object"] for e in stripe if e["type"].startswith("payment_intent.")]
    linked = [e for e in stripe if e["type"] == "invoice_payment.paid"]
    assert all(not i["metadata"] for i in intents)  # Stripe never writes the invoice there
    if scenario.truth["stripe_api_version"] == OLDEST_VERSION:
        assert all(i["invoice"].startswith("in_") for i in intents) and not linked
    else:
        assert all("invoice" not in i for i in intents)
        assert len({e["id"] for e in linked}) == len(scenario.truth["payments"])


def test_same_seed_same_bytes_other_seed_other_history() -> None:
    a, b = generate(20, 6, seed=3, duplicate_rate=0.1, reorder_rate=0.1), generate(20, 6, 3, 0.1, 0.1)
    assert [(m.topic, m.key, m.value) for m in a.messages] == [(m.topic, m.key, m.value) for m in b.messages]
    assert a.truth == b.truth
    c = generate(20, 6, seed=4, duplicate_rate=0.1, reorder_rate=0.1)
    assert [m.value for m in c.messages] != [m.value for m in a.messages]


def test_the_history_covers_the_markets_and_the_lifecycle(scenario) -> None:  # type: ignore[no-untyped-def]
    truth = scenario.truth
    assert {c["currency"] for c in truth["customers"]} == {"USD", "GBP", "EUR", "JPY"}
    assert {c["subsidiary"] for c in truth["customers"]} == {"US01", "UK01", "DE01", "JP01"}
    assert {c["status"] for c in truth["contracts"]} >= {"signed", "amended", "terminated"}
    assert truth["credit_memos"] and truth["refunds"] and truth["failed_payments"]
    assert {i["status"] for i in truth["invoices"]} == {"open", "paid"}
    assert truth["messages"]["duplicates"] > 0 and truth["messages"]["reordered"] > 0


def test_duplicates_are_exact_redeliveries(scenario) -> None:  # type: ignore[no-untyped-def]
    counts = Counter(m.value for m in scenario.messages)
    assert sum(n - 1 for n in counts.values()) == scenario.truth["messages"]["duplicates"]
    assert Counter(m.topic for m in scenario.messages) == scenario.truth["messages"]["by_topic"]


def test_ground_truth_invoices_are_exactly_the_finalized_ones(scenario, changes) -> None:  # type: ignore[no-untyped-def]
    mappings = load_mappings(None)
    latest: dict[str, Invoice] = {}
    for c in changes:
        if isinstance(c.payload, Invoice) and c.payload.status is not InvoiceStatus.DRAFT:
            inv = c.payload
            if inv.invoice_id not in latest or inv.status is InvoiceStatus.PAID:
                latest[inv.invoice_id] = inv
    truth = {i["invoice_id"]: i for i in scenario.truth["invoices"]}
    assert set(latest) == set(truth)
    for invoice_id, inv in latest.items():
        row = truth[invoice_id]
        assert (inv.total, inv.subtotal, inv.tax_total, inv.currency, inv.status.value) == (
            row["total"],
            row["subtotal"],
            row["tax"],
            row["currency"],
            row["status"],
        ), invoice_id
        resolved, problems = validate_invoice(inv, mappings)
        assert problems == [] and resolved is not None and resolved.subsidiary.id == row["subsidiary"]


def test_ground_truth_payments_credit_memos_and_refunds(scenario, changes) -> None:  # type: ignore[no-untyped-def]
    succeeded = [c.payload for c in changes if isinstance(c.payload, Payment)]
    succeeded = [p for p in succeeded if p.status is PaymentStatus.SUCCEEDED]
    paid = {p.payment_id: p for p in succeeded if p.invoice_id is not None}  # applied to an invoice
    assert {p.payment_id for p in succeeded} == set(paid)
    assert {p["payment_id"]: (p["invoice_id"], p["amount"]) for p in scenario.truth["payments"]} == {
        k: (p.invoice_id, p.amount) for k, p in paid.items()
    }
    memos = {c.payload.credit_memo_id: c.payload.total for c in changes if isinstance(c.payload, CreditMemo)}
    assert memos == {m["credit_memo_id"]: m["total"] for m in scenario.truth["credit_memos"]}
    refunds = {c.payload.refund_id: c.payload.amount for c in changes if isinstance(c.payload, Refund)}
    assert refunds == {r["refund_id"]: r["amount"] for r in scenario.truth["refunds"]}
