"""The agents' loops with Faust's `test_context()` (no broker, tables as dicts): stage 1 parks a
billing event until its customer arrives and releases it in order; stage 2 resequences an early
amendment, drops a redelivery and ignores a stale invoice snapshot."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from unittest import mock

import orjson

from agents.outbox import Outbox
from canonical import InvoiceStatus, PostInvoice, UpsertCustomer, codec
from connectors.stripe.samples import customer_object, event_envelope, invoice_object
from tables.contracts import CustomerContracts
from tables.identity import ParkedChanges
from tables.invoices import CustomerInvoices
from tests.agents.test_contracts import S, contract_event
from tests.agents.test_customers import CID, account_change
from tests.factories import invoice, invoice_event, posted

T = 1_767_225_600


async def until(condition: Any, tries: int = 300) -> None:
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.01)


async def test_stage_1_parks_an_invoice_until_its_customer_then_releases_it_in_order(
    sent: list[tuple[str, Any, Any]],
) -> None:
    from agents import ingest

    identity: dict[bytes, bytes] = {}
    parked: dict[bytes, bytes] = {}
    inv = invoice_object("in_ctx1", "cus_ctx", "GB", [("prod_platform", 1)], status="open", created=T)
    cus = customer_object("cus_ctx", "GB", "Ctx Ltd", "ap@ctx.example", "001CTX000000001", T)
    with (
        mock.patch.object(ingest, "billing_identity_table", identity),
        mock.patch.object(ingest, "parked_billing_table", parked),
    ):
        async with ingest.ingest_stripe_changes.test_context() as agent:
            event = event_envelope("evt_inv_ctx", "invoice.finalized", inv, T + 60)
            await agent.put(orjson.dumps(event), key="cus_ctx", wait=False)
            await until(lambda: bool(parked))
            # nothing goes on before the customer is known, but whose invoice it is
            assert [(t.rsplit(".", 1)[-1], k) for t, k, _ in sent] == [("invoice-owners", "in_ctx1")]
            assert len(codec.loads(ParkedChanges, parked[b"cus_ctx"]).changes) == 1
            await agent.put(
                orjson.dumps(event_envelope("evt_cus_ctx", "customer.created", cus, T)),
                key="cus_ctx",
                wait=False,
            )
            await until(lambda: len(sent) == 3)
    canonical = [value for topic, _, value in sent if topic.endswith("ledgerflow.canonical")]
    assert [c.entity_type.value for c in canonical] == ["customer", "invoice"]  # the customer first
    assert {c.customer_id for c in canonical} == {"cust-crm-001CTX000000001"}
    assert b"cus_ctx" in identity and b"cus_ctx" not in parked  # linked, and nothing left parked


async def test_stage_1_announces_an_invoices_owner_once_and_again_after_a_failed_batch(
    sent: list[tuple[str, Any, Any]],
) -> None:
    """An invoice's Events (finalized, paid, a redelivery) announce its owner once; a batch that
    failed, or a rebalance, makes the worker announce again what it may not have sent."""
    from agents import ingest

    identity: dict[bytes, bytes] = {}
    parked: dict[bytes, bytes] = {}
    inv = invoice_object("in_once", "cus_once", "GB", [("prod_platform", 1)], status="open", created=T)
    paid = {**inv, "status": "paid"}

    def owners() -> list[Any]:
        return [k for t, k, _ in sent if t.endswith("invoice-owners")]

    def waiting() -> int:
        return len(codec.loads(ParkedChanges, parked[b"cus_once"]).changes) if parked else 0

    with (
        mock.patch.object(ingest, "billing_identity_table", identity),
        mock.patch.object(ingest, "parked_billing_table", parked),
    ):
        async with ingest.ingest_stripe_changes.test_context() as agent:
            for i, (kind, obj) in enumerate([("invoice.finalized", inv), ("invoice.paid", paid)] * 2):
                event = event_envelope(f"evt_once_{i}", kind, obj, T + i)
                await agent.put(orjson.dumps(event), key="cus_once", wait=False)
            await until(lambda: waiting() == 4)
            assert owners() == ["in_once"]
            await ingest.app.on_partitions_revoked.send(set())  # a rebalance
            event = event_envelope("evt_once_9", "invoice.paid", paid, T + 9)
            await agent.put(orjson.dumps(event), key="cus_once", wait=False)
            await until(lambda: waiting() == 5)
            assert owners() == ["in_once", "in_once"]
    assert ("in_once", "cus_once") in ingest.announced_owners._pairs
    with mock.patch.object(ingest, "ingest_event", side_effect=RuntimeError("broker refused")):
        async with ingest.ingest_stripe_changes.test_context() as agent:
            await agent.put(orjson.dumps(event), key="cus_once", wait=False)
            await until(lambda: ("in_once", "cus_once") not in ingest.announced_owners._pairs)
    assert ("in_once", "cus_once") not in ingest.announced_owners._pairs  # forgotten


async def test_stage_2_resequences_amendments_and_drops_duplicates_and_stale_snapshots(
    sent: list[tuple[str, Any, Any]],
) -> None:
    from agents import posting

    contracts: dict[bytes, bytes] = {}
    invoices: dict[bytes, bytes] = {}
    cid = CID
    with (
        mock.patch.object(posting, "contract_table", contracts),
        mock.patch.object(posting, "invoice_table", invoices),
        mock.patch.object(posting, "customer_table", {}),
    ):
        async with posting.build_posting_commands.test_context() as agent:
            for change in [
                contract_event(S.SIGNED, 1),
                contract_event(S.AMENDED, 3, 2),  # amendment 2 before amendment 1
                contract_event(S.AMENDED, 3, 2),  # … delivered twice
                contract_event(S.AMENDED, 2, 1),
                account_change(),
            ]:
                await agent.put(change, key=cid, wait=False)
            await until(lambda: any(isinstance(v, UpsertCustomer) for _, _, v in sent))
            [upsert] = [v for _, _, v in sent if isinstance(v, UpsertCustomer)]
            await agent.put(posted(upsert), key=cid, wait=False)  # the ERP confirmed the customer
            paid = invoice_event(invoice(status=InvoiceStatus.PAID), "evt_paid", entity_version=(3,))
            stale = invoice_event(invoice(status=InvoiceStatus.OPEN), "evt_open", entity_version=(1,))
            for change in (paid, stale, paid):
                await agent.put(change.model_copy(update={"customer_id": cid}), key=cid, wait=False)

            def decided() -> bool:
                raw = invoices.get(cid.encode())
                row = codec.loads(CustomerInvoices, raw).invoices.get("in_100") if raw else None
                return row is not None and "evt_open" in row.seen_event_ids

            await until(decided)
    row = codec.loads(CustomerContracts, contracts[cid.encode()]).contracts["K-1"]
    assert (row.version, row.amendment_number, row.waiting) == ((3,), 2, ())
    invoice_row = codec.loads(CustomerInvoices, invoices[cid.encode()]).invoices["in_100"]
    assert invoice_row.status is InvoiceStatus.PAID  # the stale open snapshot changed nothing
    commands = [v.idempotency_key for _, _, v in sent if isinstance(v, PostInvoice)]
    assert commands == ["post_invoice-stripe-in_100"]  # once, despite the redelivery


async def test_stage_2_stamps_a_released_invoice_ready_when_what_released_it_was() -> None:
    """An invoice that came before its customer was ready only when the customer's last input
    was: the ERP's confirmation carries that time (x-ready-timestamp) and the invoice's command
    takes it, so the bench can tell the input's disorder from ledgerflow's own latency."""
    from agents import posting
    from streams import metrics

    out: list[tuple[Any, dict[str, bytes]]] = []

    async def record(self: Outbox, topic: Any, key: Any, value: Any, headers: Any) -> None:
        out.append((value, dict(headers)))

    now_ms = int(time.time() * 1000)
    customer_ready = now_ms + 60_000  # later than when stage 2 parked the invoice
    with (
        mock.patch.object(Outbox, "send", record),
        mock.patch.object(posting, "contract_table", {}),
        mock.patch.object(posting, "invoice_table", {}),
        mock.patch.object(posting, "customer_table", {}),
    ):
        async with posting.build_posting_commands.test_context() as agent:
            early = invoice_event(invoice(status=InvoiceStatus.OPEN, contract_id=None), "evt_early")
            stamp = {metrics.SOURCE_TIMESTAMP: str(now_ms - 1000).encode()}
            await agent.put(early.model_copy(update={"customer_id": CID}), key=CID, headers=stamp, wait=False)
            await agent.put(account_change(), key=CID, headers=stamp, wait=False)
            await until(lambda: any(isinstance(v, UpsertCustomer) for v, _ in out))
            assert not any(isinstance(v, PostInvoice) for v, _ in out)  # it waits for the ERP
            [upsert] = [v for v, _ in out if isinstance(v, UpsertCustomer)]
            confirmed = {metrics.READY_TIMESTAMP: str(customer_ready).encode()}
            await agent.put(posted(upsert), key=CID, headers=confirmed, wait=False)
            await until(lambda: any(isinstance(v, PostInvoice) for v, _ in out))
    [(_, headers)] = [(v, hs) for v, hs in out if isinstance(v, PostInvoice)]
    assert headers[metrics.READY_TIMESTAMP] == str(customer_ready).encode()
    assert int(headers[metrics.SOURCE_TIMESTAMP]) < customer_ready  # its own source time stays


async def test_stage_1_routes_an_invoice_payment_to_its_invoices_customer(
    sent: list[tuple[str, Any, Any]],
) -> None:
    """billing.invoice-payments (keyed by invoice): a payment of an invoice not seen yet waits;
    the invoice's owner releases it to payments.changes keyed by the customer; a later payment
    of the same invoice goes straight on; a redelivery while parked is parked once."""
    from agents import invoice_payments as ip
    from canonical.links import InvoiceOwner
    from connectors.stripe.samples import invoice_payment_object

    owners: dict[bytes, bytes] = {}
    parked: dict[bytes, bytes] = {}
    first = orjson.dumps(
        event_envelope(
            "evt_inpay_1",
            "invoice_payment.paid",
            invoice_payment_object("in_ctx2", "pi_1", "gbp", 100, T, T),
            T,
        )
    )
    second = orjson.dumps(
        event_envelope(
            "evt_inpay_2",
            "invoice_payment.paid",
            invoice_payment_object("in_ctx2", "pi_2", "gbp", 50, T, T),
            T,
        )
    )
    orphan_payment = {**invoice_payment_object("in_ctx2", "pi_3", "gbp", 10, T, T), "invoice": None}
    orphan = orjson.dumps(event_envelope("evt_inpay_3", "invoice_payment.paid", orphan_payment, T))
    owner = InvoiceOwner(invoice_id="in_ctx2", billing_customer_id="cus_ctx2", correlation_id="c-1")
    with (
        mock.patch.object(ip, "invoice_owners_table", owners),
        mock.patch.object(ip, "parked_invoice_payments_table", parked),
    ):
        async with ip.route_invoice_payments.test_context() as agent:
            await agent.put(first, key="in_ctx2", wait=False)
            await agent.put(first, key="in_ctx2", wait=False)  # Stripe redelivers
            await until(lambda: b"in_ctx2" in parked)
            assert sent == []
            await agent.put(owner, key="in_ctx2", wait=False)
            await until(lambda: len(sent) == 1)
            await agent.put(second, key="in_ctx2", wait=False)
            await until(lambda: len(sent) == 2)
            await agent.put(b"not json", key="in_ctx2", wait=False)
            await agent.put(second, key="in_other", wait=False)  # keyed by another invoice
            await agent.put(orphan, key=None, wait=False)  # names no invoice: the ingress sends it keyless
            await until(lambda: len(sent) == 5)
    assert [(t.endswith("payments.changes"), k, v) for t, k, v in sent[:2]] == [
        (True, "cus_ctx2", first),
        (True, "cus_ctx2", second),
    ]
    assert [t.endswith("ledgerflow.dlq") for t, _, _ in sent[2:]] == [True, True, True]
    assert (sent[4][1], sent[4][2]) == (None, orphan)  # the message exactly as it came
    assert b"in_ctx2" in owners and b"in_ctx2" not in parked
