"""Stage 1: platform payloads on the source topics → canonical events, keyed by customer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from agents.batching import batches
from agents.identity import IdentityDecision, overdue_parked, provisional_customer_id, resolve_billing_change
from agents.outbox import Outbox, raise_overdue, send_exception, send_to_dlq
from canonical import (
    BusinessException,
    ChangeEvent,
    EntityType,
    ExceptionReason,
    FieldError,
    MessageRef,
    Severity,
)
from canonical.links import InvoiceOwner
from connectors.clm import map_clm_event
from connectors.errors import Rejection, RejectionReason
from connectors.salesforce import ResyncRequired, map_cdc_event
from connectors.stripe import map_stripe_event
from connectors.stripe.client import StripeApi, StripeApiError
from connectors.stripe.mapping import PaginatedInvoice
from connectors.stripe.snapshots import snapshot_event
from connectors.stripe.versions import api_version
from streams import headers as h
from streams import metrics
from streams.app import app
from streams.settings import settings
from streams.stripe import shared_stripe_api
from streams.topics import (
    canonical_topic,
    clm_changes_topic,
    crm_changes_topic,
    invoice_owners_topic,
    invoice_payments_topic,
    stripe_changes_topic,
)
from tables.identity import BillingIdentity, ParkedChanges, billing_identity_table, parked_billing_table

log = logging.getLogger(__name__)
T = TypeVar("T")

STAGE = "ingest"  # `ledgerflow worker --stages …` runs this module's agents and timers or not

if TYPE_CHECKING:
    from faust.types import EventT, StreamT

Adapter = Callable[[bytes, Any, str | None, str | None], list[ChangeEvent]]
"""(raw bytes, customer resolver, incoming correlation id, message key) → canonical events, or
Rejection. Only Stripe's reads the key: the customer of an `invoice_payment`."""

stripe_adapter: Adapter = partial(
    map_stripe_event,
    crm_account_key=settings.crm_account_metadata_key,
    on_unknown_version=metrics.stripe_unknown_api_version,
)


def salesforce_adapter(
    raw: bytes, resolve: Any, correlation_id: str | None, _key: str | None
) -> list[ChangeEvent]:
    return map_cdc_event(raw, resolve, correlation_id)


def clm_adapter(raw: bytes, resolve: Any, correlation_id: str | None, _key: str | None) -> list[ChangeEvent]:
    return map_clm_event(raw, resolve, correlation_id)


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


def link_billing_identities(
    outbox: Outbox, event: EventT, changes: list[ChangeEvent], now: datetime
) -> IdentityDecision:
    """Stripe events name a Stripe customer: resolve each to its canonical customer through
    the identity table, parking what arrives before the customer itself. The rows are staged:
    a released parked event must be delivered before its parking row is deleted."""
    msg = event.message
    source = f"{msg.topic}/{msg.partition}/{msg.offset}"
    out = IdentityDecision()
    for change in changes:
        key = change.customer_ref
        decision = resolve_billing_change(
            change,
            outbox.get(billing_identity_table, key, BillingIdentity, event),
            outbox.get(parked_billing_table, key, ParkedChanges, event),
            now,
            source,
        )
        if decision.identity is not None:
            outbox.put(billing_identity_table, key, decision.identity, event)
        if decision.parked is not None:
            outbox.put(parked_billing_table, key, decision.parked if decision.parked.changes else None, event)
        out.send += decision.send
        out.exceptions += decision.exceptions
    return out


class AnnouncedOwners:
    """The (invoice, billing customer) pairs this worker announced lately. An invoice's owner
    never changes and the owners table keeps it, but every Event of an invoice (created,
    finalized, paid, …: 3 to 4 each) announced it again, a message for stage 1 to send and for the
    invoice payments agent to read and write. Forgotten on a batch that failed and on a
    rebalance: an announcement whose send may not have landed (an aborted transaction, a
    crash) is made again, which the owners table takes as the duplicate it is."""

    def __init__(self, size: int = 10_000) -> None:
        # An invoice's Events come days apart at most; 10,000 pairs is ~2.5 MB (the state RSS
        # bench at 100,000 customers went over its 600 MB with 50,000).
        self._size = size
        self._pairs: OrderedDict[tuple[str, str], None] = OrderedDict()

    def first_sighting(self, invoice_id: str, owner: str) -> bool:
        pair = (invoice_id, owner)
        if pair in self._pairs:
            return False
        self._pairs[pair] = None
        if len(self._pairs) > self._size:
            self._pairs.popitem(last=False)
        return True

    def forget(self, *_: Any, **__: Any) -> None:
        self._pairs.clear()


announced_owners = AnnouncedOwners()
app.on_partitions_revoked.connect(announced_owners.forget)


async def announce_invoice_owners(outbox: Outbox, changes: list[ChangeEvent], stamp: dict[str, str]) -> None:
    """Each Stripe invoice's owner, keyed by the invoice id, for the invoice payments that name
    the invoice but not its customer (`agents.invoice_payments`); once per worker while it
    holds the partition (`AnnouncedOwners`)."""
    for change in changes:
        if change.entity_type is EntityType.INVOICE and announced_owners.first_sighting(
            change.entity_id, change.customer_ref
        ):
            owner = InvoiceOwner(
                invoice_id=change.entity_id,
                billing_customer_id=change.customer_ref,
                correlation_id=change.correlation_id,
            )
            await outbox.send(
                invoice_owners_topic,
                change.entity_id,
                owner,
                h.outgoing(change.correlation_id, change.event_id, **stamp),
            )


STRIPE_PAUSE_S = 30.0
"""After a Stripe read timed out or Stripe failed, how long stage 1 dead-letters what would need
one without asking (a batch of such Events would otherwise wait one timeout each)."""
_stripe_paused_until = 0.0


def _stripe_unwell(exc: Exception) -> bool:
    """A timeout, a 429 or a 5xx, or no answer: not a refusal of this one request."""
    status = getattr(exc, "status", None)
    return isinstance(exc, TimeoutError) or status is None or status == 429 or status >= 500


async def read_stripe(read: Coroutine[Any, Any, T], what: str, fields: tuple[str, ...]) -> T:
    """A Stripe read stage 1 makes while taking an Event in, bounded by
    LEDGERFLOW_STRIPE_READ_TIMEOUT_S: when Stripe fails or is slow, a `Rejection` (the Event is
    dead-lettered, replayable once Stripe answers) rather than a stalled partition; for
    STRIPE_PAUSE_S after that, the next reads are not even tried."""
    global _stripe_paused_until
    if time.monotonic() < _stripe_paused_until:
        read.close()
        raise Rejection(
            RejectionReason.INVALID_VALUE,
            f"{what} and Stripe did not answer a moment ago (not asked again for {STRIPE_PAUSE_S:.0f} s)",
            fields,
        )
    try:
        return await asyncio.wait_for(read, settings.stripe_read_timeout_s)
    except (StripeApiError, TimeoutError) as exc:
        status, code = getattr(exc, "status", None), getattr(exc, "code", None)
        log.warning(
            "could not read Stripe",
            extra={"read": what, "error": type(exc).__name__, "status": status, "code": code},
        )
        if _stripe_unwell(exc):
            _stripe_paused_until = time.monotonic() + STRIPE_PAUSE_S
        raise Rejection(
            RejectionReason.INVALID_VALUE,
            f"{what} and Stripe could not be read ({type(exc).__name__})",
            fields,
        ) from None


async def read_invoice_whole(raw: bytes, paginated: PaginatedInvoice) -> bytes:
    """The Event again with its invoice read whole from Stripe at the pinned API version (its
    current state: a newer snapshot is ordered by its lifecycle like any other), or the
    rejection again when there is no Stripe API key."""
    api = shared_stripe_api(settings)
    if api is None:
        raise paginated
    invoice = await read_stripe(
        api.invoice_whole(paginated.invoice_id),
        "invoice lines are paginated (has_more)",
        ("data.object.lines.has_more",),
    )
    event = orjson.loads(raw)
    event["data"]["object"] = invoice
    event["api_version"] = api.api_version
    return orjson.dumps(event)


LINKED_BY_LOOKUP_HINT = b"2025-0"
"""In the body of every Event of a version whose invoice payments stage 1 must read (2025-03-31
and 2025-04-30.basil): a cheap test before the body is parsed again for its `api_version`."""
PAID_INVOICE_TYPES = ("invoice.paid", "invoice.payment_succeeded")


def invoices_to_link(raw: bytes, changes: list[ChangeEvent]) -> list[str]:
    """The invoices a 2025-03-31/04-30.basil Event says are paid. At those versions a
    PaymentIntent names no invoice and Stripe sends no `invoice_payment.paid`, so stage 1 asks
    Stripe which payments paid each one."""
    paid = [c.entity_id for c in changes if c.source_type in PAID_INVOICE_TYPES]
    if not paid or LINKED_BY_LOOKUP_HINT not in raw:
        return []
    return paid if api_version(orjson.loads(raw).get("api_version")).looks_up_invoice_payments else []


async def _paid_invoice_payments(api: StripeApi, invoice_id: str) -> list[dict[str, Any]]:
    query = {"invoice": invoice_id, "status": "paid"}
    return [link async for link in api.list_all("invoice_payments", query)]


async def link_invoice_payments(
    outbox: Outbox, invoices: list[str], correlation: str, headers: dict[str, str]
) -> None:
    """Each paid `invoice_payment` of these invoices, read from Stripe, onto
    `billing.invoice-payments` as the `invoice_payment.paid` Event a later version would have sent
    (a snapshot id: a second read, a redelivery or a backfill of it is a duplicate). Without an
    API key the Event is dead-lettered: its payments could never be applied."""
    api = shared_stripe_api(settings)
    if api is None:
        raise Rejection(
            RejectionReason.MISSING_FIELD,
            "an invoice paid at API 2025-03-31/04-30.basil: Stripe sends no invoice_payment.paid at "
            "that version, so its payments are read from Stripe: set LEDGERFLOW_STRIPE_API_KEY",
            ("data.object.payments",),
        )
    links = []
    for invoice in invoices:
        found = await read_stripe(
            _paid_invoice_payments(api, invoice),
            "the payments of a 2025-03-31/04-30.basil invoice are read from Stripe",
            ("data.object.payments",),
        )
        if not found:  # paid out of band, or nothing to pay: no Stripe payment to apply
            log.info("a paid invoice has no paid invoice payment in Stripe", extra={"invoice_id": invoice})
        links += [(invoice, link) for link in found]
    for invoice, link in links:  # sent once every read succeeded
        event = snapshot_event(link, api.api_version)
        if event is not None:
            causation = f"stripe:GET /v1/invoice_payments?invoice={invoice}"
            outgoing = h.outgoing(correlation, causation, **headers)
            await outbox.send(invoice_payments_topic, invoice, orjson.dumps(event), outgoing)


async def ingest_event(outbox: Outbox, event: EventT, adapter: Adapter, link_billing: bool = False) -> int:
    """Map one source message and send what it means; bad input goes to the DLQ, a GAP_* to
    the exceptions. Returns how many canonical events were sent."""
    raw = event.value
    if not isinstance(raw, bytes | bytearray):
        await send_to_dlq(outbox, event, "not_json: empty message value")
        return 0
    key = event.key if isinstance(event.key, str) else None
    correlation = h.header(event.headers, h.CORRELATION_ID)
    try:
        try:
            changes = adapter(bytes(raw), provisional_customer_id, correlation, key)
        except PaginatedInvoice as paginated:
            whole = await read_invoice_whole(bytes(raw), paginated)
            changes = adapter(whole, provisional_customer_id, correlation, key)
        if link_billing and (invoices := invoices_to_link(bytes(raw), changes)):
            await link_invoice_payments(
                outbox, invoices, changes[0].correlation_id, metrics.stamp(metrics.source_ms(event))
            )
    except ResyncRequired as resync:
        exc = resync_exception(resync, event, datetime.now(UTC))
        await send_exception(
            outbox, exc, f"{event.message.topic}/{event.message.partition}/{event.message.offset}"
        )
        return 0
    except Rejection as rejection:
        await send_to_dlq(outbox, event, rejection.header_value)
        return 0
    if link_billing:
        await announce_invoice_owners(outbox, changes, metrics.stamp(metrics.source_ms(event)))
        linked = link_billing_identities(outbox, event, changes, datetime.now(UTC))
        changes = linked.send
        for exc in linked.exceptions:
            await send_exception(
                outbox, exc, f"{event.message.topic}/{event.message.partition}/{event.message.offset}"
            )
    source = metrics.stamp(metrics.source_ms(event))
    for change in changes:
        await outbox.send(
            canonical_topic,
            change.customer_id,
            change,
            h.outgoing(change.correlation_id, change.event_id, **source),
        )
    return len(changes)


async def _ingest(stream: StreamT[Any], adapter: Adapter, link_billing: bool = False) -> None:
    async for events in batches(stream):
        outbox = Outbox()
        try:
            for event in events:
                await ingest_event(outbox, event, adapter, link_billing)
            await outbox.commit()
        except BaseException:
            announced_owners.forget()  # what this batch announced may not have been sent
            raise


@app.agent(stripe_changes_topic)
async def ingest_stripe_changes(stream: StreamT[Any]) -> None:
    """Stripe billing and payment Events (`billing.changes`, `payments.changes`: invoices,
    intents, refunds, disputes …) → `ledgerflow.canonical`."""
    await _ingest(stream, stripe_adapter, link_billing=True)


@app.agent(crm_changes_topic)
async def ingest_crm_changes(stream: StreamT[Any]) -> None:
    """Salesforce Change Data Capture (`crm.changes`) → `ledgerflow.canonical`."""
    await _ingest(stream, salesforce_adapter)


@app.agent(clm_changes_topic)
async def ingest_contract_changes(stream: StreamT[Any]) -> None:
    """CLM contract lifecycle events (`clm.changes`) → `ledgerflow.canonical`."""
    await _ingest(stream, clm_adapter)


_raised_overdue: set[str] = set()


@app.timer(interval=30.0)
async def raise_overdue_parked_events() -> None:
    """Billing events still waiting for their customer after LEDGERFLOW_PARK_TIMEOUT_S become
    an `unknown_customer` exception (once per worker process; they stay parked)."""
    await raise_overdue(
        parked_billing_table,
        ParkedChanges,
        lambda parked: len(parked.changes),
        overdue_parked,
        _raised_overdue,
        "timer:parked-billing",
        "ingest",
    )
