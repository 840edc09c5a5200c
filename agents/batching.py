"""Batch processing on top of Faust streams.

Faust's per-event machinery costs more than the work of most events, so agents take events in
batches (`stream.take_events`). Faust's tables and stores find the partition to write to
through the *current event*; inside a batch that is whichever event arrived last, which may
belong to another partition. `acting_for(event)` makes the event being handled the current
one while its table rows are read and written.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from faust.streams import _current_event

if TYPE_CHECKING:
    from faust.types import EventT, StreamT

from streams import metrics
from streams.settings import settings


@contextmanager
def acting_for(event: EventT) -> Iterator[None]:
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


async def batches(stream: StreamT[Any]) -> Any:
    """Yield lists of events: up to LEDGERFLOW_BATCH_SIZE, or what came within the window."""
    # take_events is faust-streaming's, missing from StreamT's stubs.
    take_events = stream.take_events  # type: ignore[attr-defined]
    agent = metrics.agent_label(stream.prefix)
    async for events in take_events(settings.batch_size, within=settings.batch_window_ms / 1000):
        started = metrics.batch_taken(agent, events)
        handled = False
        try:
            yield events
            handled = True
        finally:
            if not handled:
                withhold_acks(events)
        metrics.batch_done(agent, started)


def withhold_acks(events: Sequence[EventT]) -> None:
    """Keep a batch the agent did not finish from ever counting as processed.

    Faust's take_events acknowledges a batch when its generator closes, and an agent that raised
    (or was cancelled) mid-batch closes it: the consumer then committed events that were never
    handled (the scaling test lost 768 documents this way when table writes failed). A message
    already marked acked is skipped by the consumer's ack(), so its offset is never committed by
    this worker; the agent's crash stops the worker (agent_supervisor=CrashingSupervisor) and the
    next owner of the partition processes the batch again."""
    for event in events:
        event.message.acked = True


def group_by_key(events: Sequence[EventT]) -> dict[Any, list[EventT]]:
    """Events of one key keep their order; keys keep first-seen order."""
    groups: dict[Any, list[EventT]] = {}
    for event in events:
        groups.setdefault(event.key, []).append(event)
    return groups
