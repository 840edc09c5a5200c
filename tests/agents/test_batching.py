"""agents.batching: a batch the agent did not finish is never acknowledged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from agents.batching import batches


@dataclass
class Message:
    acked: bool = False
    topic: str = "billing.changes"


@dataclass
class Event:
    message: Message = field(default_factory=Message)


class Stream:
    """What `batches` uses of a Faust stream; like take_events, it acknowledges a batch's
    events when its generator goes on or closes (records which, as the consumer would)."""

    prefix = "agents.test.agent"

    def __init__(self, *batches: list[Event]) -> None:
        self.batches = batches
        self.committed: list[Event] = []

    async def take_events(self, max_: int, within: float) -> AsyncIterator[list[Event]]:
        for events in self.batches:
            try:
                yield events
            finally:
                for event in events:
                    if not event.message.acked:  # Consumer.ack skips a message marked acked
                        event.message.acked = True
                        self.committed.append(event)


async def test_a_handled_batch_is_acknowledged() -> None:
    first, second = [Event(), Event()], [Event()]
    stream = Stream(first, second)
    seen = [events async for events in batches(stream)]  # type: ignore[arg-type]
    assert seen == [first, second] and stream.committed == [*first, *second]


async def test_a_batch_the_agent_raised_in_is_never_acknowledged() -> None:
    first, second = [Event(), Event()], [Event()]
    stream = Stream(first, second)
    taken: Any = batches(stream)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        async for events in taken:
            if events is second:
                raise RuntimeError("a table write failed")
    await taken.aclose()  # what the event loop does to the abandoned generator
    assert stream.committed == first
