"""One invoice end to end on the real broker: billing.changes → ingest → ledgerflow.canonical →
core (RocksDB invoice table) → erp.commands, with the DLQ and exceptions beside it."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from canonical import BusinessException, ExceptionReason, PostInvoice, codec
from tests.support import (
    Stack,
    consume_until,
    finalized_fixture_invoice,
    produce,
    stripe_event,
    stripe_fixture,
)

FIXTURE_INVOICE = "in_1Pgc6tB7WZ01zgkWu9fdqL6I"
FIXTURE_CUSTOMER = "cus_QXg1o8vcGmoR32"
CRM_ACCOUNT = "001FIXTURE0000A"
OUT = ["erp.commands", "ledgerflow.exceptions", "ledgerflow.dlq", "ledgerflow.canonical"]


@pytest.fixture(scope="module")
def run(stack: Stack) -> dict[str, Any]:
    """Start a worker, produce the scenario once, read back every output topic."""
    worker = stack.start_worker()
    good = stripe_event(finalized_fixture_invoice(corrected=True), "invoice.finalized", "evt_fixture_good")
    bad_invoice = finalized_fixture_invoice(corrected=False)
    bad_invoice["id"] = "in_fixture_as_published"
    bad = stripe_event(bad_invoice, "invoice.finalized", "evt_fixture_raw")
    customer = stripe_fixture("customer")
    customer["metadata"] = {"crm_account_id": CRM_ACCOUNT}
    customer["name"] = "Jenny Rosen"  # Stripe's example has none; the ERP needs a name
    records = [
        (FIXTURE_CUSTOMER, b'{"id": "evt_poison", "object": "ev', {}),  # truncated JSON
        # The invoice arrives before its customer (Stripe does not promise order): parked...
        (FIXTURE_CUSTOMER, orjson.dumps(good), {"x-correlation-id": "corr-fixture-1"}),
        # ...and released when the customer, linked to its CRM account, arrives.
        (
            FIXTURE_CUSTOMER,
            orjson.dumps(stripe_event(customer, "customer.created", "evt_fixture_customer")),
            {},
        ),
        (FIXTURE_CUSTOMER, orjson.dumps(good), {"x-correlation-id": "corr-fixture-1"}),  # redelivery
        (FIXTURE_CUSTOMER, orjson.dumps(bad), {}),
    ]
    topics = [stack.topic(t) for t in OUT]

    def done(found: dict[str, list[Any]]) -> bool:
        return (
            len(found[stack.topic("erp.commands")]) >= 2
            and len(found[stack.topic("ledgerflow.exceptions")]) >= 1
            and len(found[stack.topic("ledgerflow.dlq")]) >= 1
            and len(found[stack.topic("ledgerflow.canonical")]) >= 4
        )

    async def scenario() -> dict[str, Any]:
        await produce(stack.bootstrap, stack.topic("billing.changes"), records)
        found = await consume_until(stack.bootstrap, topics, done, timeout=90)
        # Let anything extra (a second command for the redelivery, say) arrive before judging.
        extra = await consume_until(stack.bootstrap, topics, lambda f: False, timeout=3)
        return {
            t.removeprefix(stack.prefix): extra[t] if len(extra[t]) >= len(found[t]) else found[t]
            for t in topics
        }

    out = asyncio.run(scenario())
    out["upserts"] = [r for r in out["erp.commands"] if orjson.loads(r[1])["command"] == "upsert_customer"]
    out["erp.commands"] = [r for r in out["erp.commands"] if orjson.loads(r[1])["command"] == "post_invoice"]
    out["worker"] = worker
    return out


def test_fixture_invoice_becomes_one_post_invoice(run: dict[str, Any]) -> None:
    commands = run["erp.commands"]
    assert len(commands) == 1, run["worker"].tail()
    key, value, headers = commands[0]
    command = codec.loads(PostInvoice, value)
    assert command.idempotency_key == f"post_invoice-stripe-{FIXTURE_INVOICE}"
    assert command.document.external_id == f"stripe-{FIXTURE_INVOICE}"
    assert command.document.total == 1000 and command.document.currency == "USD"
    assert command.subsidiary == "US01"
    # The billing customer resolved to the CRM account it is linked to.
    assert key == command.customer_id == f"cust-crm-{CRM_ACCOUNT}"
    assert headers["x-correlation-id"] == "corr-fixture-1" == command.correlation_id
    assert headers["x-causation-id"] == "evt_fixture_good"


def test_the_customer_is_upserted_before_its_invoice(run: dict[str, Any]) -> None:
    [(key, value, _)] = run["upserts"]
    upsert = orjson.loads(value)
    assert key == f"cust-crm-{CRM_ACCOUNT}" and upsert["document"]["name"] == "Jenny Rosen"
    assert upsert["subsidiary"] == "US01"


def test_redelivered_event_is_canonicalised_but_not_posted_twice(run: dict[str, Any]) -> None:
    # Stage 1 maps every delivery (the first one released from parking after the customer);
    # stage 2's invoice table suppresses the duplicate.
    canonical = [orjson.loads(v)["event_id"] for _, v, _ in run["ledgerflow.canonical"]]
    assert canonical[:2] == ["evt_fixture_customer", "evt_fixture_good"]
    assert canonical.count("evt_fixture_good") == 2
    assert len(run["erp.commands"]) == 1


def test_published_fixture_is_held_as_arithmetic_exception(run: dict[str, Any]) -> None:
    exceptions = [codec.loads(BusinessException, v) for _, v, _ in run["ledgerflow.exceptions"]]
    assert [e.reason for e in exceptions] == [ExceptionReason.ARITHMETIC_MISMATCH]
    exc = exceptions[0]
    assert exc.entity_id == "in_fixture_as_published"
    assert {f.field for f in exc.fields} == {"lines[0].amount", "subtotal"}
    assert exc.offending is not None and exc.offending.event_id == "evt_fixture_raw"
    assert all(
        codec.loads(PostInvoice, v).document.external_id != "stripe-in_fixture_as_published"
        for _, v, _ in run["erp.commands"]
    )


def test_poison_message_is_dead_lettered_and_the_partition_keeps_flowing(run: dict[str, Any]) -> None:
    dlq = run["ledgerflow.dlq"]
    assert len(dlq) == 1
    key, value, headers = dlq[0]
    assert value == b'{"id": "evt_poison", "object": "ev'
    assert key == FIXTURE_CUSTOMER
    assert headers["x-dlq-reason"].startswith("not_json")
    assert headers["x-source-topic"].endswith("billing.changes")
    assert headers["x-source-offset"] == "0"
    # The good event behind it on the same partition came through.
    assert len(run["erp.commands"]) == 1
