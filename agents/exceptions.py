"""`ledgerflow.exceptions` → the exception state table (`tables/exceptions.py`): the latest
record of each exception, so open, resolved and replayed ones can be listed by the web views.

`keep_exception` is the rule and is pure; `track_exceptions` only loops.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agents.batching import batches, group_by_key
from agents.outbox import Outbox, send_to_dlq
from canonical import BusinessException, ExceptionStatus
from streams.app import app
from streams.schemas import Undecodable
from streams.topics import exceptions_topic
from tables.exceptions import KEPT_PER_KEY, UNKEYED, KeptException, KeyExceptions, exception_table

if TYPE_CHECKING:
    from faust.types import EventT, StreamT

STAGE = "core"  # `ledgerflow worker --stages …` runs this module's agents and timers or not


def keep_exception(
    row: KeyExceptions | None,
    key: str,
    exc: BusinessException,
    recorded_at: datetime,
    partition: int,
    offset: int,
    bound: int = KEPT_PER_KEY,
) -> KeyExceptions:
    """The row after one record of the exceptions topic. A record at or before the one kept
    (a redelivery after a crash) changes nothing. A problem raised again before anyone
    resolved it (stage 2 re-decides a held invoice on each of its snapshots, and after a replay)
    keeps its first `first_seen` and its attempts, so its age is the problem's age. Past
    `bound`, closed exceptions are let go first, then the oldest open ones (counted in
    `dropped`)."""
    current = row or KeyExceptions(key=key)
    kept = current.exceptions.get(exc.exception_id)
    if kept is not None and kept.partition == partition and kept.offset >= offset:
        return current
    if kept is not None and kept.exception.status is not ExceptionStatus.RESOLVED:
        before = kept.exception
        exc = exc.model_copy(
            update={
                "first_seen": min(before.first_seen, exc.first_seen),
                "attempts": max(before.attempts, exc.attempts),
            }
        )
    exceptions = dict(current.exceptions)
    exceptions[exc.exception_id] = KeptException(
        exception=exc, recorded_at=recorded_at, partition=partition, offset=offset
    )
    dropped = current.dropped
    if len(exceptions) > bound:

        def eviction_order(item: tuple[str, KeptException]) -> tuple[bool, datetime, str]:
            e = item[1].exception
            return (e.status is ExceptionStatus.OPEN, e.last_seen, item[0])

        surplus = len(exceptions) - bound
        for exception_id, gone in sorted(exceptions.items(), key=eviction_order)[:surplus]:
            if gone.exception.status is ExceptionStatus.OPEN:
                dropped += 1
            del exceptions[exception_id]
    return KeyExceptions(key=key, exceptions=exceptions, dropped=dropped)


def _recorded_at(event: EventT) -> datetime:
    stamp = event.message.timestamp  # seconds (Faust converts Kafka's milliseconds)
    return datetime.fromtimestamp(stamp, UTC) if stamp and stamp > 0 else datetime.now(UTC)


async def keep_batch(outbox: Outbox, events: list[EventT]) -> int:
    """One batch of exception records into their rows; returns how many were kept."""
    kept = 0
    for key, key_events in group_by_key(events).items():
        row_key = key if isinstance(key, str) and key else UNKEYED
        row = outbox.get(exception_table, row_key, KeyExceptions, key_events[0])
        before = row
        for event in key_events:
            value = event.value
            if not isinstance(value, BusinessException):
                reason = value.reason if isinstance(value, Undecodable) else type(value).__name__
                await send_to_dlq(outbox, event, f"undecodable business exception: {reason}")
                continue
            msg = event.message
            row = keep_exception(row, row_key, value, _recorded_at(event), msg.partition, msg.offset)
            kept += 1
        if row is not None and row != before:
            outbox.put(exception_table, row_key, row, key_events[-1])
    return kept


@app.agent(exceptions_topic)
async def track_exceptions(stream: StreamT[Any]) -> None:
    """`ledgerflow.exceptions` → the latest state of every exception (open, resolved, replayed)."""
    async for events in batches(stream):
        outbox = Outbox()
        await keep_batch(outbox, events)
        await outbox.commit()
