"""x-ready-timestamp across the real broker (streams.metrics.READY_TIMESTAMP): a payment Stripe
delivers before its invoice waits in stage 2 for the invoice and the ERP's confirmation of it;
its command says it was ready when the invoice arrived, which the bench's ready->command
latency is counted from."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson

from connectors.simulation import Message, generate
from streams.metrics import READY_TIMESTAMP, SOURCE_TIMESTAMP
from tests.support import Record, Stack, consume_until, produce

PAUSE_S = 1.5
"""Between the early payment and its invoice."""


def send(stack: Stack, messages: list[Message]) -> None:
    """One message at a time, in this order (each acknowledged before the next is sent)."""
    for m in messages:
        asyncio.run(produce(stack.bootstrap, stack.topic(m.topic), [(m.key, m.value, {})]))


def command_for(stack: Stack, payment_id: str, timeout: float = 120) -> dict[str, str]:
    """The headers of the erp.commands record of this Stripe payment."""
    topic = stack.topic("erp.commands")

    def of(found: dict[str, list[Record]]) -> list[Record]:
        return [r for r in found[topic] if r[1] is not None and payment_id.encode() in r[1]]

    found = asyncio.run(consume_until(stack.bootstrap, [topic], lambda f: bool(of(f)), timeout=timeout))
    [(_, _, headers)] = of(found)
    return headers


def test_a_payment_sent_before_its_invoice_is_ready_when_the_invoice_arrived(
    new_stack: Callable[..., Stack],
) -> None:
    stack = new_stack()
    stack.start_worker()
    messages = generate(1, months=2, seed=3).messages  # one customer, two monthly invoices

    def at(event_type: str, object_id: str) -> int:
        for i, m in enumerate(messages):
            event = orjson.loads(m.value)
            if event.get("type") == event_type and event["data"]["object"]["id"] == object_id:
                return i
        raise AssertionError(f"no {event_type} of {object_id} in the scenario")

    invoice = at("invoice.finalized", "in_SIM000000M01")
    payment = at("invoice_payment.paid", "inpay_SIM000000M01")  # what links it to its invoice
    assert invoice < payment
    send(stack, messages[:invoice])  # the customer and the first month, in order
    in_order = command_for(stack, "pi_SIM000000M00")
    send(stack, [messages[payment]])  # the second month's payment, before its invoice
    time.sleep(PAUSE_S)
    invoice_sent_ms = int(time.time() * 1000)
    send(stack, [messages[invoice], *messages[invoice + 1 : payment], *messages[payment + 1 :]])
    early = command_for(stack, "pi_SIM000000M01")

    # The first payment came after its invoice: ready when it arrived, no header of its own.
    assert READY_TIMESTAMP not in in_order and SOURCE_TIMESTAMP in in_order
    # The early one waited for the invoice (and the ERP's confirmation of it): ready when the
    # invoice arrived, PAUSE_S after the payment itself.
    source, ready = int(early[SOURCE_TIMESTAMP]), int(early[READY_TIMESTAMP])
    assert ready - source >= (PAUSE_S - 0.5) * 1000, (source, ready)
    assert invoice_sent_ms - 100 <= ready <= int(time.time() * 1000), (invoice_sent_ms, ready)
