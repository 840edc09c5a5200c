"""The sink: `erp.commands` → the ERP, exactly once in effect → `erp.results`.

One customer's commands go to the ERP strictly in order; different customers' commands go in
parallel, at most LEDGERFLOW_ERP_CONCURRENCY calls at a time. Transient failures are retried
(backoff with jitter, `Retry-After` honoured, a circuit breaker when the ERP is down); when a
command's retries run out its customer's lane is *parked*: the command is raised as an
`erp_unavailable` exception, the customer's later commands queue behind it, and a timer tries
it again — other customers go on. A permanent refusal is an `erp_rejected` exception with the
ERP's own message. Every outcome goes to `erp.results`.

A NetSuite upsert answers without the document number NetSuite assigned; the customers' and
invoices' numbers (which the CRM write-back shows) are read for the whole batch at once, one
SuiteQL query per record type instead of a GET per document, before the batch's results go out
(`read_document_numbers`). A number that cannot be read leaves its command posted without one.

The posting ledger (`tables/ledger.py`) makes delivery effectively-once: a command the ERP
confirmed is never sent again (its result is repeated instead), and against an ERP that cannot
upsert (Business Central) a command is marked in flight, durably, before the call, so after a
crash or a timeout the next attempt looks the document up before creating it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from agents.batching import batches, group_by_key
from agents.outbox import Outbox, send_exception, send_to_dlq
from canonical import (
    BusinessException,
    ErpCommand,
    ExceptionReason,
    FieldError,
    MessageRef,
    PostingOutcome,
    PostingResult,
    codec,
)
from connectors.erp import (
    CallSlots,
    CircuitBreaker,
    ErpClient,
    ErpDocument,
    ErpError,
    ErpPermanentError,
    ErpReceipt,
    RecordType,
    RetriesExhausted,
    RetryPolicy,
    call_with_retries,
)
from connectors.erp.client import READ_BACK_RECORD_TYPES
from streams import headers as h
from streams import metrics
from streams.app import app
from streams.erp import erp_client, retry_policy
from streams.logs import log_context
from streams.settings import Settings, settings
from streams.topics import erp_commands_topic, erp_results_topic
from tables.ledger import CustomerLedger, DeliveryState, LedgerEntry, posting_ledger_table

STAGE = "sink"  # `ledgerflow worker --stages …` runs this module's agents and timers or not

if TYPE_CHECKING:
    from faust.types import EventT, StreamT

log = logging.getLogger(__name__)

UNCONFIRMED = frozenset({DeliveryState.IN_FLIGHT, DeliveryState.PARKED})
"""An earlier attempt may have written: the next one looks before it creates."""


@dataclass
class ErpLink:
    """The worker's connection to the ERP, shared by every customer's lane."""

    client: ErpClient
    policy: RetryPolicy
    breaker: CircuitBreaker
    calls: CallSlots
    looks_first: bool
    """The ERP cannot upsert (Business Central): a command is marked in flight, durably, before
    its first call, so the attempt after a crash looks the document up before creating it."""

    @property
    def gathers(self) -> bool:
        """The client gathers the lanes' calls into shared requests and takes `calls` per request
        itself (Business Central's `$batch`): a lane's call then holds no slot of its own."""
        return getattr(self.client, "gatherer", None) is not None

    def slot(self, priority: int) -> contextlib.AbstractAsyncContextManager[None]:
        """What a lane's call holds while it runs: one of the ERP's slots, unless the client
        spends them per request."""
        return contextlib.nullcontext() if self.gathers else self.calls.slot(priority)


def erp_link(s: Settings) -> ErpLink:
    calls = CallSlots(s.erp_concurrency)
    return ErpLink(
        client=erp_client(s, slots=calls),
        policy=retry_policy(s),
        breaker=CircuitBreaker(s.erp_breaker_failures, s.erp_breaker_open_s),
        calls=calls,
        looks_first=s.erp_mode == "business-central",
    )


def posting_result(command: ErpCommand, entry: LedgerEntry) -> PostingResult:
    posted = entry.state is DeliveryState.POSTED
    return PostingResult(
        idempotency_key=command.idempotency_key,
        command=entry.command,
        customer_id=command.customer_id,
        correlation_id=command.correlation_id,
        outcome=PostingOutcome.POSTED if posted else PostingOutcome.FAILED,
        erp_internal_id=entry.erp_internal_id,
        document_number=entry.document_number,
        posted_at=entry.updated_at if posted else None,
        error_code=entry.error_code,
        error_message=entry.error_message,
        attempts=max(1, entry.attempts),
    )


def delivery_exception(
    command: ErpCommand, entry: LedgerEntry, now: datetime, offending: MessageRef | None
) -> BusinessException:
    """A command the ERP refused, or could not take within the retry bound."""
    rejected = entry.state is DeliveryState.REJECTED
    reason = ExceptionReason.ERP_REJECTED if rejected else ExceptionReason.ERP_UNAVAILABLE
    what = "refused" if rejected else f"unavailable after {entry.attempts} attempt(s)"
    return BusinessException(
        exception_id=h.stable_id("exception", reason.value, command.idempotency_key),
        reason=reason,
        message=f"{entry.command} {command.idempotency_key}: ERP {what}: {entry.error_code}: "
        f"{entry.error_message}",
        fields=(FieldError(field=entry.command, problem=entry.error_code or "error"),),
        customer_id=command.customer_id,
        entity_id=command.idempotency_key,
        correlation_id=command.correlation_id,
        first_seen=now,
        last_seen=now,
        attempts=max(1, entry.attempts),
        offending=offending,
    )


def _ref(event: EventT) -> MessageRef:
    msg = event.message
    key = event.key if isinstance(event.key, str) else None
    return MessageRef(topic=msg.topic, partition=msg.partition, offset=msg.offset, key=key)


@dataclass
class Lane:
    """One customer's commands of a batch, delivered in order against its ledger row."""

    customer_id: str
    ledger: CustomerLedger
    link: ErpLink
    outbox: Outbox
    work: list[tuple[ErpCommand, EventT]] = field(default_factory=list)
    uncertain: set[str] = field(default_factory=set)
    owed: list[tuple[ErpCommand, EventT]] = field(default_factory=list)
    """The results the batch owes, in order; sent by `finish`, once the numbers are read."""
    unnumbered: list[tuple[ErpCommand, ErpReceipt]] = field(default_factory=list)
    """Commands the ERP took whose document number is still to be read (`read_document_numbers`)."""
    left: int = 0
    """Commands of the batch still to go in this lane, the current one included: its calls'
    priority for a slot (`CallSlots`), so the batch's longest lanes do not end it alone."""

    def mark_in_flight(self, now: datetime) -> None:
        """Create-only mode: record every command about to be attempted before any call, and
        write the row through at once (the agent then flushes the changelog)."""
        entries = dict(self.ledger.entries)
        for command, _ in self.work:
            entry = entries.get(command.idempotency_key)
            if entry is None:
                entries[command.idempotency_key] = LedgerEntry(
                    idempotency_key=command.idempotency_key,
                    command=command.command,  # type: ignore[attr-defined]
                    state=DeliveryState.IN_FLIGHT,
                    updated_at=now,
                )
        if entries != self.ledger.entries:
            self.ledger = self.ledger.model_copy(update={"entries": entries})
            self.outbox.write_through(posting_ledger_table, self.customer_id, self.ledger, self.work[-1][1])

    async def run(self, now: datetime) -> None:
        for done, (command, event) in enumerate(self.work):
            self.left = len(self.work) - done
            await self._handle(command, event, now)

    async def finish(self, kept: bool) -> None:
        """Send the results the batch owes, as the ledger has them now (with the numbers read
        since), and, for a lane that ran to its end, its ledger row."""
        for command, event in self.owed:
            await self._result(command, self.ledger.entries[command.idempotency_key], event)
        if kept:
            self.outbox.put(posting_ledger_table, self.customer_id, self.ledger, self.work[-1][1])

    def numbered(self, command: ErpCommand, document: ErpDocument) -> None:
        """The document number (and internal id) the ERP assigned the command's record."""
        key = command.idempotency_key
        entry = self.ledger.entries[key]
        entry = entry.model_copy(
            update={
                "document_number": document.document_number,
                "erp_internal_id": entry.erp_internal_id or document.erp_internal_id,
            }
        )
        self.ledger = self.ledger.model_copy(update={"entries": {**self.ledger.entries, key: entry}})

    async def _handle(self, command: ErpCommand, event: EventT, now: datetime) -> None:
        key = command.idempotency_key
        entry = self.ledger.entries.get(key)
        if entry is not None and entry.state is DeliveryState.POSTED:
            self.owed.append((command, event))  # a redelivery or replay: say it again, post nothing
            return
        blocked = self.ledger.blocked_on
        if blocked is not None and blocked.idempotency_key != key:
            if all(q.idempotency_key != key for q in self.ledger.queued):
                self.ledger = self.ledger.model_copy(update={"queued": (*self.ledger.queued, command)})
            return
        if not await self._deliver(command, event, now):
            return
        # The lane was blocked on this command and it went through: drain what queued behind it.
        while self.ledger.queued and self.ledger.blocked_on is None:
            head, *rest = self.ledger.queued
            self.ledger = self.ledger.model_copy(update={"queued": tuple(rest)})
            await self._deliver(head, event, now)

    async def _deliver(self, command: ErpCommand, event: EventT, now: datetime) -> bool:
        """One command to the ERP with retries; False when the lane is parked on it."""
        key = command.idempotency_key
        previous = self.ledger.entries.get(key)
        uncertain = previous is not None and previous.state in UNCONFIRMED and key in self.uncertain
        kind: str = command.command  # type: ignore[attr-defined]
        # Every line the call logs (the client's "erp call failed" among them) names the command.
        context = {
            "command": kind,
            "idempotency_key": key,
            "customer_id": command.customer_id,
            "correlation_id": command.correlation_id,
        }

        tries = 0

        async def attempt(unsure: bool) -> Any:
            # Any retry looks first, not only after a timeout: a Business Central delivery is
            # several calls (create, then post), and a failure of a later one leaves a draft.
            nonlocal tries
            tries += 1
            async with self.link.slot(self.left + len(self.ledger.queued)):
                with metrics.erp_call(kind), log_context(**context):
                    return await self.link.client.deliver(
                        command, uncertain=unsure or uncertain or tries > 1, read_back=False
                    )

        blocked_on: Any
        try:
            receipt, attempts = await call_with_retries(attempt, self.link.policy, self.link.breaker)
        except ErpPermanentError as exc:
            entry = self._entry(command, kind, DeliveryState.REJECTED, now, exc.attempts or 1, exc)
            blocked_on = self.ledger.blocked_on if self.ledger.blocked_on != command else None
        except (RetriesExhausted, ErpError) as exc:
            entry = self._entry(command, kind, DeliveryState.PARKED, now, exc.attempts or 1, exc)
            blocked_on = command
        else:
            entry = LedgerEntry(
                idempotency_key=key,
                command=kind,
                state=DeliveryState.POSTED,
                attempts=attempts + (previous.attempts if previous else 0),
                erp_internal_id=receipt.erp_internal_id,
                document_number=receipt.document_number,
                updated_at=datetime.now(UTC),
            )
            blocked_on = None
            metrics.erp_confirmed(command, event)
            if receipt.document_number is None and receipt.record_type in READ_BACK_RECORD_TYPES:
                self.unnumbered.append((command, receipt))
        self.ledger = self.ledger.model_copy(
            update={"entries": {**self.ledger.entries, key: entry}, "blocked_on": blocked_on}
        )
        self.owed.append((command, event))
        if entry.state is not DeliveryState.POSTED:
            await self._failed(command, entry, event, now)
        return entry.state is not DeliveryState.PARKED

    async def _failed(self, command: ErpCommand, entry: LedgerEntry, event: EventT, now: datetime) -> None:
        """Log a command the ERP refused or could not take, and raise it as an exception."""
        log.warning(
            "erp delivery failed",
            extra={
                "correlation_id": command.correlation_id,
                "customer_id": command.customer_id,
                "idempotency_key": command.idempotency_key,
                "state": entry.state.value,
                "error_code": entry.error_code,
            },
        )
        exc = delivery_exception(command, entry, now, _ref(event))
        await send_exception(self.outbox, exc, command.idempotency_key)

    def _entry(
        self,
        command: ErpCommand,
        kind: str,
        state: DeliveryState,
        now: datetime,
        tries: int,
        exc: ErpError,
    ) -> LedgerEntry:
        previous = self.ledger.entries.get(command.idempotency_key)
        return LedgerEntry(
            idempotency_key=command.idempotency_key,
            command=kind,
            state=state,
            attempts=tries + (previous.attempts if previous else 0),
            error_code=exc.code,
            error_message=str(exc.message)[:500],
            updated_at=now,
        )

    async def _result(self, command: ErpCommand, entry: LedgerEntry, event: EventT) -> None:
        # The command's ready time goes on with its result: a document the result releases in
        # stage 2 was ready no earlier (`metrics.READY_TIMESTAMP`). A command that queued behind
        # a parked one is delivered on another's event: its result carries none.
        ready = metrics.stamp(None, metrics.ready_ms(event) if metrics.carried_by(command, event) else None)
        await self.outbox.send(
            erp_results_topic,
            command.customer_id,
            posting_result(command, entry),
            h.outgoing(command.correlation_id, command.idempotency_key, **ready),
        )


async def deliver_batch(link: ErpLink, events: list[EventT], now: datetime) -> Outbox:
    """A batch of commands: customers in parallel, each customer's in order."""
    outbox = Outbox()
    lanes: list[Lane] = []
    for customer_id, customer_events in group_by_key(events).items():
        work = []
        for event in customer_events:
            if isinstance(event.value, ErpCommand) and customer_id == event.value.customer_id:
                work.append((event.value, event))
            else:
                await send_to_dlq(outbox, event, "undecodable ERP command or key ≠ customer_id")
        if not work:
            continue
        ledger = outbox.get(posting_ledger_table, customer_id, CustomerLedger, work[0][1])
        lane = Lane(customer_id, ledger or CustomerLedger(customer_id=customer_id), link, outbox, work)
        lane.uncertain = {k for k, e in lane.ledger.entries.items() if e.state in UNCONFIRMED}
        lanes.append(lane)
    if link.looks_first and lanes:
        for lane in lanes:
            lane.mark_in_flight(now)
        await app.producer.flush()  # the in-flight marks reach the changelog before any call
    await run_lanes(link, lanes, now)
    return outbox


async def run_lanes(link: ErpLink, lanes: list[Lane], now: datetime) -> None:
    """The lanes in parallel, then the numbers their upserts did not bring back, then each
    lane's results (in its order) and ledger row."""
    results = await asyncio.gather(*(lane.run(now) for lane in lanes), return_exceptions=True)
    await read_document_numbers(link, lanes)
    for lane, result in zip(lanes, results, strict=True):
        failed = isinstance(result, BaseException)
        await lane.finish(kept=not failed)
        if failed:
            # A bug must not stop the partition: the customer's commands go to the DLQ.
            log.error("sink lane failed", exc_info=result, extra={"customer_id": lane.customer_id})
            for _, event in lane.work:
                await send_to_dlq(lane.outbox, event, f"internal_error: {type(result).__name__}")


async def read_document_numbers(link: ErpLink, lanes: list[Lane]) -> None:
    """The document numbers the batch's upserts did not bring back (a NetSuite upsert answers
    204 with the record's Location only): one query per record type, with the delivery's
    retries and breaker, instead of a GET per document; a record the answer lacks is read on
    its own. The write itself went through: a number that cannot be read leaves its command
    posted without one (logged), never re-sent, so no older version is written over a newer."""
    wanted: dict[RecordType, dict[str, list[tuple[Lane, ErpCommand]]]] = {}
    for lane in lanes:
        for command, receipt in lane.unnumbered:
            by_id = wanted.setdefault(receipt.record_type, {})
            by_id.setdefault(receipt.external_id, []).append((lane, command))
        lane.unnumbered = []
    client = link.client
    # The whole batch's results wait on these reads: they go before any lane's next call.
    behind = sum(len(lane.owed) for lane in lanes)
    for record_type, by_id in wanted.items():
        found = await _erp_read(link, partial(client.document_numbers, record_type, tuple(by_id)), behind)
        for external_id, waiting in by_id.items():
            document = found.get(external_id) if found is not None else None
            if document is None and found is not None:  # not in the answer: read it on its own
                document = await _erp_read(link, partial(client.get, record_type, external_id), behind)
            for lane, command in waiting:
                if document is not None:
                    lane.numbered(command, document)
                    continue
                log.warning(
                    "erp document number not read",
                    extra={
                        "correlation_id": command.correlation_id,
                        "idempotency_key": command.idempotency_key,
                        "record_type": record_type.value,
                    },
                )


async def _erp_read(link: ErpLink, read: Callable[[], Awaitable[Any]], priority: int) -> Any:
    """One read from the ERP with the delivery's retries and breaker; None when it cannot be
    had (the ERP down past the retries, or a bug: logged, the batch goes on)."""

    async def attempt(_unsure: bool) -> Any:
        async with link.slot(priority):
            with metrics.erp_call(metrics.READ_NUMBERS), log_context(command=metrics.READ_NUMBERS):
                return await read()

    try:
        answer, _ = await call_with_retries(attempt, link.policy, link.breaker)
    except (RetriesExhausted, ErpError) as exc:
        log.warning("erp read failed", extra={"code": getattr(exc, "code", None)})
        return None
    except Exception:
        log.exception("erp read failed")
        return None
    return answer


@app.agent(erp_commands_topic)
async def deliver_erp_commands(stream: StreamT[Any]) -> None:
    """`erp.commands` → the ERP → `erp.results` (and exceptions for what it cannot take)."""
    link = erp_link(settings)
    metrics.watch_breaker("erp", link.breaker)
    try:
        async for events in batches(stream):
            outbox = await deliver_batch(link, events, datetime.now(UTC))
            await outbox.commit()
    finally:
        await link.client.aclose()


@app.timer(interval=settings.erp_park_retry_s)
async def retry_parked_lanes() -> None:
    """Each parked customer's blocked command goes round again (its retries start afresh)."""
    for _key, raw in list(posting_ledger_table.items()):
        ledger = codec.loads(CustomerLedger, raw)
        command = ledger.blocked_on
        if command is not None:
            await erp_commands_topic.send(
                key=ledger.customer_id,
                value=command,
                headers=h.outgoing(command.correlation_id, f"retry:{command.idempotency_key}"),
            )
