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
        yield events
        metrics.batch_done(agent, started)


def group_by_key(events: Sequence[EventT]) -> dict[Any, list[EventT]]:
    """Events of one key keep their order; keys keep first-seen order."""
    groups: dict[Any, list[EventT]] = {}
    for event in events:
        groups.setdefault(event.key, []).append(event)
    return groups
