"""Seeds for the Stripe stand-in: a scenario's Stripe Events, and long invoices."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from connectors.simulation import generate
from connectors.stripe.samples import customer_object, event_envelope, invoice_object
from connectors.stripe.sandbox import StripeSandbox, stripe_sandbox_server
from connectors.stripe.versions import CURRENT_VERSION
from streams.topic_names import STRIPE_TOPICS

KEY = "sk_test_ledgerflow_sandbox"
VERSION = CURRENT_VERSION  # the version samples.event_envelope renders


def scenario_events(customers: int, months: int = 2, seed: int = 7) -> list[dict[str, Any]]:
    """The Stripe Events of a generated scenario, once each, in the order they happened."""
    scenario = generate(customers, months, seed)
    return [orjson.loads(m.value) for m in scenario.messages if m.topic in STRIPE_TOPICS]


def customer_events(count: int, created: int = 1_767_225_600) -> list[dict[str, Any]]:
    """`count` customer.created events, one second apart."""
    return [
        event_envelope(
            f"evt_c{n}",
            "customer.created",
            customer_object(f"cus_T{n:05d}", "US", f"T {n}", f"t{n}@x.example", None, created + n),
            created + n,
        )
        for n in range(count)
    ]


def long_invoice_event(
    invoice_id: str, lines: int, created: int = 1_767_225_600, customer: str = "cus_T00000"
) -> dict[str, Any]:
    """An invoice.finalized event whose invoice has `lines` lines (prorations after two)."""
    prorations = [("prod_seats", 1, 2500 + n) for n in range(lines - 2)]
    obj = invoice_object(
        invoice_id,
        customer,
        "US",
        [("prod_platform", 1), ("prod_seats", 3)],
        status="open",
        created=created,
        number=f"N-{invoice_id}",
        prorations=prorations,
    )
    return event_envelope(f"evt_{invoice_id}_fin", "invoice.finalized", obj, created)


@contextmanager
def serving(sandbox: StripeSandbox) -> Iterator[str]:
    """The stand-in served from a thread of its own (for a worker process to read) → its URL."""
    started: queue.Queue[str | BaseException] = queue.Queue()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def run() -> None:
        try:
            async with stripe_sandbox_server(sandbox) as server:
                started.put(server.url)
                await stop.wait()
        except BaseException as exc:  # reported to the test, not lost in the thread
            started.put(exc)

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    url = started.get(timeout=30)
    if isinstance(url, BaseException):
        raise url
    try:
        yield url
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()
