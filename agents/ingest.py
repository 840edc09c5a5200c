"""Stage 1: platform payloads on the source topics → canonical events, keyed by customer."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from agents.batching import batches
from agents.identity import provisional_customer_id
from agents.outbox import send_exception, send_to_dlq
from canonical import BusinessException, ChangeEvent, ExceptionReason, FieldError, MessageRef, Severity
from connectors.clm import map_clm_event
from connectors.errors import Rejection
from connectors.salesforce import ResyncRequired, map_cdc_event
from connectors.stripe import map_stripe_event
from streams import headers as h
from streams.app import app
from streams.settings import settings
from streams.topics import (
    billing_changes_topic,
    canonical_topic,
    clm_changes_topic,
    crm_changes_topic,
    payments_changes_topic,
)

if TYPE_CHECKING:
    from faust.types import EventT, StreamT

Adapter = Callable[[bytes, Any, str | None], list[ChangeEvent]]
"""(raw bytes, customer resolver, incoming correlation id) → canonical events, or Rejection."""

stripe_adapter: Adapter = partial(map_stripe_event, crm_account_key=settings.crm_account_metadata_key)
salesforce_adapter: Adapter = map_cdc_event
clm_adapter: Adapter = map_clm_event


def resync_exception(resync: ResyncRequired, event: EventT, now: datetime) -> BusinessException:
    """A GAP_* event becomes a person's task: which records to re-read, from where."""
    header = resync.header
    msg = event.message
    return BusinessException(
        exception_id=h.stable_id("exception", "resync", header.transactionKey, str(header.sequenceNumber)),
        reason=ExceptionReason.RESYNC_REQUIRED,
        severity=Severity.WARNING,
        message=resync.detail,
        fields=tuple(
            FieldError(field=f"{header.entityName}.{rid}", problem=header.changeType)
            for rid in header.recordIds
        ),
        customer_id=event.key if isinstance(event.key, str) else None,
        entity_id=header.recordIds[0],
        correlation_id=h.correlation_of(event.headers, "salesforce", header.transactionKey),
        first_seen=now,
        last_seen=now,
        offending=MessageRef(topic=msg.topic, partition=msg.partition, offset=msg.offset),
    )


async def ingest_event(event: EventT, adapter: Adapter) -> int:
    """Map one source message and send what it means; bad input goes to the DLQ, a GAP_* to
    the exceptions. Returns how many canonical events were sent."""
    raw = event.value
    if not isinstance(raw, bytes | bytearray):
        await send_to_dlq(event, "not_json: empty message value")
        return 0
    try:
        changes = adapter(bytes(raw), provisional_customer_id, h.header(event.headers, h.CORRELATION_ID))
    except ResyncRequired as resync:
        exc = resync_exception(resync, event, datetime.now(UTC))
        await send_exception(exc, f"{event.message.topic}/{event.message.partition}/{event.message.offset}")
        return 0
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


async def _ingest(stream: StreamT[Any], adapter: Adapter) -> None:
    async for events in batches(stream):
        for event in events:
            await ingest_event(event, adapter)


@app.agent(billing_changes_topic)
async def ingest_billing_changes(stream: StreamT[Any]) -> None:
    """Stripe billing Events (`billing.changes`) → `ledgerflow.canonical`."""
    await _ingest(stream, stripe_adapter)


@app.agent(payments_changes_topic)
async def ingest_payment_changes(stream: StreamT[Any]) -> None:
    """Stripe payment Events (`payments.changes`: intents, refunds, disputes) → `ledgerflow.canonical`."""
    await _ingest(stream, stripe_adapter)


@app.agent(crm_changes_topic)
async def ingest_crm_changes(stream: StreamT[Any]) -> None:
    """Salesforce Change Data Capture (`crm.changes`) → `ledgerflow.canonical`."""
    await _ingest(stream, salesforce_adapter)


@app.agent(clm_changes_topic)
async def ingest_contract_changes(stream: StreamT[Any]) -> None:
    """CLM contract lifecycle events (`clm.changes`) → `ledgerflow.canonical`."""
    await _ingest(stream, clm_adapter)
