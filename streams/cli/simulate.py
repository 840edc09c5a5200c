"""`ledgerflow simulate`: produce a generated quote-to-cash history and write its ground truth."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import click
import httpx
import orjson
from aiokafka import AIOKafkaProducer

from connectors import signing
from connectors.simulation import Message, Scenario, generate
from connectors.stripe.versions import CURRENT_VERSION
from streams.kafka_io import kafka_security
from streams.settings import Settings
from streams.web.ingress import RELAY_SIGNATURE_HEADER

WEBHOOK_PATH = {
    "billing.changes": "/webhooks/stripe",
    "payments.changes": "/webhooks/stripe",
    "billing.invoice-payments": "/webhooks/stripe",
    "crm.changes": "/webhooks/salesforce",
    "clm.changes": "/webhooks/clm",
}


async def produce_to_topics(s: Settings, messages: list[Message], tick: Any) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=s.bootstrap, acks="all", enable_idempotence=True, linger_ms=10, **kafka_security(s)
    )
    await producer.start()
    try:
        pending = []
        for m in messages:
            pending.append(await producer.send(s.topic(m.topic), m.value, key=m.key.encode()))
            if len(pending) >= 1000:
                await asyncio.gather(*pending)
                tick(len(pending))
                pending = []
        await asyncio.gather(*pending)
        tick(len(pending))
    finally:
        await producer.stop()


async def post_to_ingress(
    s: Settings, base_url: str, messages: list[Message], tick: Any, concurrency: int = 16
) -> None:
    """Signed POSTs; one customer's messages in order, customers in parallel."""
    stripe_secrets = signing.parse_secrets(
        s.stripe_webhook_secret.get_secret_value() if s.stripe_webhook_secret else None
    )
    relay_secret = s.relay_secret.get_secret_value() if s.relay_secret else None
    if not stripe_secrets or not relay_secret:
        raise click.ClickException(
            "--via-webhooks needs LEDGERFLOW_STRIPE_WEBHOOK_SECRET and LEDGERFLOW_RELAY_SECRET"
        )
    lanes: dict[str, list[Message]] = {}
    for m in messages:
        lanes.setdefault(m.key, []).append(m)
    gate = asyncio.Semaphore(concurrency)

    async def lane(client: httpx.AsyncClient, items: list[Message]) -> None:
        async with gate:
            for m in items:
                stripe = WEBHOOK_PATH[m.topic] == "/webhooks/stripe"
                header = (
                    "Stripe-Signature" if stripe else RELAY_SIGNATURE_HEADER,
                    signing.sign(stripe_secrets[0] if stripe else relay_secret, m.value, int(time.time())),
                )
                for attempt in range(5):
                    r = await client.post(
                        WEBHOOK_PATH[m.topic],
                        content=m.value,
                        headers={"Content-Type": "application/json", header[0]: header[1]},
                    )
                    if r.status_code < 500:
                        break
                    await asyncio.sleep(0.2 * 2**attempt)  # 503: Kafka busy, the platform retries
                if r.status_code >= 300:
                    raise click.ClickException(f"ingress answered {r.status_code}: {r.text[:200]}")
                tick(1)

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        await asyncio.gather(*(lane(client, items) for items in lanes.values()))


def run_simulation(
    s: Settings,
    customers: int,
    months: int,
    seed: int,
    duplicate_rate: float,
    reorder_rate: float,
    truth_path: Path,
    via_webhooks: str | None,
    first_customer: int = 0,
    stripe_api_version: str = CURRENT_VERSION,
) -> Scenario:
    started = time.monotonic()
    scenario = generate(
        customers, months, seed, duplicate_rate, reorder_rate, first_customer, stripe_api_version
    )
    generated = time.monotonic() - started
    truth_path.parent.mkdir(parents=True, exist_ok=True)
    truth_path.write_bytes(orjson.dumps(scenario.truth, option=orjson.OPT_INDENT_2))
    total = len(scenario.messages)
    with click.progressbar(length=total, label=f"{total} messages", show_pos=True, show_eta=True) as bar:
        started = time.monotonic()
        if via_webhooks:
            asyncio.run(post_to_ingress(s, via_webhooks, scenario.messages, bar.update))
        else:
            asyncio.run(produce_to_topics(s, scenario.messages, bar.update))
        sent = time.monotonic() - started
    counts = ", ".join(f"{t} {n}" for t, n in sorted(scenario.truth["messages"]["by_topic"].items()))
    click.echo(
        f"generated in {generated:.2f}s, sent in {sent:.2f}s "
        f"({total / max(sent, 1e-9):.0f} messages/s): {counts}"
    )
    truth = scenario.truth
    click.echo(
        f"ground truth {truth_path}: {len(truth['customers'])} customers, {len(truth['invoices'])} invoices, "
        f"{len(truth['payments'])} payments, {len(truth['credit_memos'])} credit memos, "
        f"{len(truth['refunds'])} refunds; {truth['messages']['duplicates']} duplicates, "
        f"{truth['messages']['reordered']} reordered"
    )
    return scenario
