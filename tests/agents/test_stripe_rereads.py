"""Stage 1 reads Stripe (the stand-in, over loopback HTTP) when an Event cannot be taken as it
came: an invoice whose lines are paginated is read whole instead of dead-lettered, and an
invoice payment whose invoice has not been seen learns its customer from the invoice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import orjson

from canonical import Invoice, codec
from canonical.links import InvoiceOwner
from connectors.stripe.client import StripeApi
from connectors.stripe.samples import event_envelope, invoice_payment_object
from connectors.stripe.sandbox import StripeFaults, StripeSandbox, stripe_sandbox_server
from tables.identity import ParkedChanges
from tables.invoice_owners import ParkedInvoicePayment, ParkedInvoicePayments
from tests.agents.test_agents_in_context import until
from tests.connectors.stripe.stand_in import KEY, VERSION, customer_events, long_invoice_event

T = 1_767_225_600


async def test_a_paginated_invoice_is_read_whole_not_dead_lettered(sent: list[tuple[str, Any, Any]]) -> None:
    from agents import ingest

    long = long_invoice_event("in_LONG1", 40, T, "cus_T00000")
    sandbox = StripeSandbox(
        [*customer_events(1, T - 60), long],
        paginate_long_invoices=True,
        faults=StripeFaults(rate_limit_per_s=0),
    )
    async with stripe_sandbox_server(sandbox) as server, StripeApi(KEY, VERSION, server.url, 1000) as api:
        webhook = dict(long)
        webhook["data"] = {"object": {**long["data"]["object"]}}
        obj = webhook["data"]["object"]
        obj["lines"] = {**obj["lines"], "data": obj["lines"]["data"][:10], "has_more": True}
        waiting: dict[bytes, bytes] = {}  # the customer is not known: the invoice waits for it
        with (
            mock.patch.object(ingest, "billing_identity_table", {}),
            mock.patch.object(ingest, "parked_billing_table", waiting),
            mock.patch.object(ingest, "shared_stripe_api", lambda _s: api),
        ):
            async with ingest.ingest_stripe_changes.test_context() as agent:
                await agent.put(orjson.dumps(webhook), key="cus_T00000", wait=False)
                await until(lambda: bool(waiting))
            with mock.patch.object(ingest, "shared_stripe_api", lambda _s: None):
                async with ingest.ingest_stripe_changes.test_context() as agent:  # no API key: DLQ
                    await agent.put(orjson.dumps(webhook), key="cus_T00000", wait=False)
                    await until(lambda: any(t.endswith("ledgerflow.dlq") for t, _, _ in sent))
    [change] = codec.loads(ParkedChanges, waiting[b"cus_T00000"]).changes
    invoice = change.change.payload
    assert isinstance(invoice, Invoice) and len(invoice.lines) == 40  # read whole, all 40 lines
    assert change.change.event_id == long["id"]
    assert [t.rsplit(".", 1)[-1] for t, _, _ in sent].count("dlq") == 1  # without a key: dead-lettered
    owners = [v for t, _, v in sent if t.endswith("invoice-owners")]
    assert [o.invoice_id for o in owners] == ["in_LONG1"]
    assert sandbox.requests and any(r["path"] == "/v1/invoices/in_LONG1/lines" for r in sandbox.requests)


async def test_an_unknown_invoice_is_read_from_stripe_for_its_customer(
    sent: list[tuple[str, Any, Any]],
) -> None:
    from agents import invoice_payments as ip

    invoice = long_invoice_event("in_ORPHAN", 3, T, "cus_T00000")
    sandbox = StripeSandbox([*customer_events(1, T - 60), invoice], faults=StripeFaults(rate_limit_per_s=0))
    payment = event_envelope(
        "evt_inpay_o", "invoice_payment.paid", invoice_payment_object("in_ORPHAN", "pi_O", "usd", 1, T, T), T
    )
    waited = datetime.now(UTC) - timedelta(seconds=120)

    def parked(invoice_id: str) -> bytes:
        entry = ParkedInvoicePayment(
            value=orjson.dumps(payment).decode(), headers={}, parked_at=waited, source="ip/0/1"
        )
        return codec.dumps(ParkedInvoicePayments(invoice_id=invoice_id, parked=(entry,)))

    table = {b"in_ORPHAN": parked("in_ORPHAN"), b"in_MISSING": parked("in_MISSING")}
    async with stripe_sandbox_server(sandbox) as server, StripeApi(KEY, VERSION, server.url, 1000) as api:
        with (
            mock.patch.object(ip, "parked_invoice_payments_table", table),
            mock.patch.object(ip, "shared_stripe_api", lambda _s: api),
        ):
            ip._looked_up.clear()
            await ip.announce_owners_from_stripe()
            await ip.announce_owners_from_stripe()  # asked once each, not every tick
    [(topic, key, owner)] = sent
    assert topic.endswith("ledgerflow.invoice-owners") and key == "in_ORPHAN"
    assert isinstance(owner, InvoiceOwner) and owner.billing_customer_id == "cus_T00000"
    asked = [r["path"] for r in sandbox.requests if r["path"].startswith("/v1/invoices/")]
    assert sorted(asked) == ["/v1/invoices/in_MISSING", "/v1/invoices/in_ORPHAN"]


async def test_a_basil_invoice_of_2025_04_30_has_its_payments_read_from_stripe(
    sent: list[tuple[str, Any, Any]],
) -> None:
    """At 2025-03-31/04-30.basil a PaymentIntent names no invoice and Stripe sends no
    invoice_payment.paid: when an invoice is paid, stage 1 reads its paid invoice payments
    (`GET /v1/invoice_payments?invoice=…&status=paid`) and sends each on as the invoice_payment.paid
    Event a later version would have sent. Without an API key, or when Stripe does not answer in
    time, the Event is dead-lettered (replayable), and for a while Stripe is not asked again."""
    from agents import ingest
    from connectors.stripe.samples import invoice_object
    from connectors.stripe.snapshots import BACKFILL_ID_PREFIX
    from streams.settings import settings

    version = "2025-04-30.basil"
    paid = invoice_object("in_B1", "cus_T00000", "US", [("prod_platform", 1)], status="paid", created=T)
    webhook = orjson.dumps(event_envelope("evt_in_b1_paid", "invoice.paid", paid, T + 60, version))
    sandbox = StripeSandbox(customer_events(1, T - 60), faults=StripeFaults(rate_limit_per_s=0))
    sandbox.hold(invoice_payment_object("in_B1", "pi_B1", "usd", 1200, T, T + 60))  # no Event announced it
    sandbox.hold({**invoice_payment_object("in_B1", "pi_B0", "usd", 1200, T, T), "status": "canceled"})
    sandbox.hold(invoice_payment_object("in_B2", "pi_B2", "usd", 900, T, T + 90))  # another invoice's
    waiting: dict[bytes, bytes] = {}  # the customer is not known: the invoice waits for it

    async def take(api: StripeApi | None) -> None:
        with (
            mock.patch.object(ingest, "billing_identity_table", {}),
            mock.patch.object(ingest, "parked_billing_table", waiting),
            mock.patch.object(ingest, "shared_stripe_api", lambda _s: api),
        ):
            async with ingest.ingest_stripe_changes.test_context() as agent:
                await agent.put(webhook, key="cus_T00000", wait=False)
                await until(lambda: any(t.endswith(("dlq", "invoice-owners")) for t, _, _ in sent))

    async with stripe_sandbox_server(sandbox) as server, StripeApi(KEY, VERSION, server.url, 1000) as api:
        ingest._stripe_paused_until = 0.0
        await take(api)
        [(key, value)] = [(k, v) for t, k, v in sent if t.endswith("billing.invoice-payments")]
        event = orjson.loads(value)
        assert key == "in_B1" and event["type"] == "invoice_payment.paid"
        assert event["id"].startswith(BACKFILL_ID_PREFIX)
        assert event["data"]["object"]["payment"]["payment_intent"] == "pi_B1"  # the paid one only
        [parked] = codec.loads(ParkedChanges, waiting[b"cus_T00000"]).changes  # the invoice itself too
        assert parked.change.entity_id == "in_B1"
        assert [r["path"] for r in sandbox.requests].count("/v1/invoice_payments") == 1
        sent.clear()
        sandbox.faults = StripeFaults(rate_limit_per_s=0, burst_429=1000)  # Stripe keeps refusing
        calls = len(sandbox.requests)
        quick = settings.model_copy(update={"stripe_read_timeout_s": 0.5})
        with mock.patch.object(ingest, "settings", quick):
            await take(api)
            assert [t.rsplit(".", 1)[-1] for t, _, _ in sent] == ["dlq"]
            asked = len(sandbox.requests) - calls
            sent.clear()
            await take(api)  # within the pause: dead-lettered without asking
        assert [t.rsplit(".", 1)[-1] for t, _, _ in sent] == ["dlq"]
        assert asked > 0 and len(sandbox.requests) - calls == asked
    ingest._stripe_paused_until = 0.0
    sent.clear()
    await take(None)  # no API key
    assert [t.rsplit(".", 1)[-1] for t, _, _ in sent] == ["dlq"]
