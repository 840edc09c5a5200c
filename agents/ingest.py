"""Stage 1: platform payloads on the source topics → canonical events, keyed by customer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agents.batching import batches
from agents.identity import provisional_customer_id
from agents.outbox import send_to_dlq
from connectors.errors import Rejection
from connectors.stripe import map_stripe_event
from streams import headers as h
from streams.app import app
from streams.settings import settings
from streams.topics import billing_changes_topic, canonical_topic, payments_changes_topic

if TYPE_CHECKING:
    from faust.types import EventT, StreamT


async def ingest_stripe_event(event: EventT) -> int:
    """Map one Stripe Event message and send what it means; bad input goes to the DLQ.

    Returns how many canonical events were sent.
    """
    raw = event.value
    if not isinstance(raw, bytes | bytearray):
        await send_to_dlq(event, "not_json: empty message value")
        return 0
    try:
        changes = map_stripe_event(
            bytes(raw),
            provisional_customer_id,
            h.header(event.headers, h.CORRELATION_ID),
            settings.crm_account_metadata_key,
        )
    except Rejection as rejection:
        await send_to_dlq(event, rejection.header_value)
        return 0
    for change in changes:
        await canonical_topic.send(
            key=change.customer_id,
            value=change,
            headers=h.outgoing(change.correlation_id, change.event_id),
        )
    return len(changes)


@app.agent(billing_changes_topic)
async def ingest_billing_changes(stream: StreamT[Any]) -> None:
    """Stripe billing Events (`billing.changes`) → `ledgerflow.canonical`."""
    async for events in batches(stream):
        for event in events:
            await ingest_stripe_event(event)


@app.agent(payments_changes_topic)
async def ingest_payment_changes(stream: StreamT[Any]) -> None:
    """Stripe payment Events (`payments.changes`: intents, refunds, disputes) → `ledgerflow.canonical`."""
    async for events in batches(stream):
        for event in events:
            await ingest_stripe_event(event)
