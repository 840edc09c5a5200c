"""Faust's Kafka consumer with strict offset bookkeeping: an offset is committed only once it
and every offset before it were handed to a stream and acknowledged.

faust-streaming 0.15.3 loses records across rebalances (issue #7; upstream faust-streaming
#606 "Wrong offset commit in case of gaps", #221). Seen in tests/integration/test_scaling.py
with three workers: right after a rebalance the fetcher handed over offset 149 of a partition
whose committed offset was 147 (records fetched before the rebalance finished were dropped
with their position already advanced); Faust took 148 and 149 for a *gap* (as in a compacted or
transactional topic), marked them done and committed past 147 and 148, which no worker ever
processed. When 147 turned up later it was dropped as "already read".

None of the topics whose offsets we commit has real gaps (none is compacted or transactional;
changelogs, which are compacted, are read without acks), so a skip can only be a lost fetch.
This consumer therefore:

* hands records of acked topics to the streams strictly in offset order: a record past the
  next expected offset seeks the partition back to that offset (the skipped records are
  fetched again) instead of being processed; a record before it was already handed over in
  this assignment and is dropped;
* never records gaps, and commits only a run of acknowledged offsets that starts at the
  committed offset (the log's first offset for a partition never committed), so a record that
  went missing holds its partition's commit back instead of being lost;
* forgets acknowledgements and read positions when partitions are (re)assigned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from typing import Any, cast

from aiokafka.errors import IllegalStateError
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as driver
from faust.types import TP
from mode import Service, ServiceT

log = logging.getLogger(__name__)

HELD_LOG_S = 30.0
"""How often a partition whose commit is held back by a missing acknowledgement is logged."""
STALL_CHECK_S = 2.0
"""How often the fetch loop compares fetch positions with what was handed over; a partition
whose position stayed ahead from one check to the next is fetched again (module docstring)."""
MAX_SEEKS_TO_ONE_OFFSET = 5
"""Seeks back to the same missing offset before accepting the skip (the offset has gone, e.g.
deleted by retention while the partition was unassigned); each is logged."""


class Consumer(driver.Consumer):
    """The aiokafka consumer of Faust with the bookkeeping described in the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._next_commit: dict[TP, int] = {}
        """Per partition of an acked topic, the offset the next commit must start from."""
        self._next_read: dict[TP, int] = {}
        """Per partition of an acked topic, the offset to hand to the streams next."""
        self._seeks: dict[TP, tuple[int, int]] = {}
        """Per partition, (offset, times) of the seeks back to a missing offset."""
        self._positions_reset = 0
        """Bumped by every perform_seek: a record whose hand-over straddled one (the fetcher hands
        records over while Faust's recovery seeks) must not move `_next_read` past the offsets
        the seek will hand over again."""
        self._held_since: dict[TP, tuple[float, float]] = {}
        """Per partition whose commit is held back: since when, and when it was last logged."""
        self._ahead: dict[TP, tuple[int, int, int]] = {}
        """Per partition whose fetch position was past the next offset to hand over at the last
        stall check: (next to hand over, fetch position, `_positions_reset`) then."""
        super().__init__(*args, **kwargs)

    async def perform_seek(self) -> None:
        self._positions_reset += 1
        await super().perform_seek()
        acked_tps = {tp for tp in self.assignment() if self.app.topics.acks_enabled_for(tp.topic)}
        committed = {tp: self._committed_offset.get(tp) for tp in acked_tps}
        never_committed = [tp for tp, offset in committed.items() if offset is None]
        earliest = await self.earliest_offsets(*never_committed) if never_committed else {}
        for tp in acked_tps:
            start = committed[tp]
            if start is None:
                start = earliest.get(tp) or 0
            self._next_commit[tp] = self._next_read[tp] = start
            self._seeks.pop(tp, None)
            # What was acked before this seek is handed over again from `start`.
            self._acked.pop(tp, None)
            self._acked_index.pop(tp, None)
            self._gap.pop(tp, None)
        self._positions_reset += 1  # and after: a hand-over begun meanwhile straddled it too

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        for tp in revoked:
            self._next_commit.pop(tp, None)
            self._next_read.pop(tp, None)
            self._seeks.pop(tp, None)
            self._ahead.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Never: a skipped offset is a lost fetch here, not a gap (module docstring)."""

    def _new_offset(self, tp: TP) -> int | None:
        acked = self._acked[tp]
        start = self._next_commit.get(tp)
        if not acked or start is None:
            # No baseline (not assigned through perform_seek): commit nothing rather than guess.
            return None
        committed = self._committed_offset.get(tp)
        if committed is not None and committed > start:
            # A commit (ours, or read from the broker) landed past the baseline while a seek
            # reset it; Faust's ack() drops acks below its committed offset, so waiting for them
            # would hold the partition for good. What lies below it was processed.
            start = committed
        acked.sort()
        index = self._acked_index[tp]
        stale = bisect_left(acked, start)
        if stale:
            index.difference_update(acked[:stale])
            del acked[:stale]
        end = start
        for offset in acked:
            if offset != end:
                break
            end += 1
        if end == start:
            self._held_back(tp, start, acked)
            return None
        self._held_since.pop(tp, None)
        index.difference_update(acked[: end - start])
        del acked[: end - start]
        self._next_commit[tp] = end
        return end

    def _fetch_states(self) -> dict[TP, Any]:
        """aiokafka's fetch state (position, paused) of each assigned partition of an acked topic.
        Read from the consumer thread's subscription: plain attribute reads, as aiokafka's own."""
        subscription = self._thread._ensure_consumer()._subscription.subscription
        assignment = subscription.assignment if subscription is not None else None
        acks_enabled_for = self.app.topics.acks_enabled_for
        return {
            tp: assignment.state_value(tp) if assignment is not None else None
            for tp in sorted(self.assignment())
            if acks_enabled_for(tp.topic)
        }

    def offsets_state(self) -> str:
        """Per assigned partition of an acked topic: fetch position, paused, next to hand over,
        next to commit, acknowledgements waiting (for the SIGUSR1 dump)."""
        lines = []
        for tp, state in self._fetch_states().items():
            position = state.position if state is not None and state.has_valid_position else None
            acked = sorted(self._acked.get(tp, ()))
            lines.append(
                f"{tp.topic}:{tp.partition} position={position} paused={state.paused if state else None} "
                f"next_read={self._next_read.get(tp)} next_commit={self._next_commit.get(tp)} "
                f"committed={self._committed_offset.get(tp)} acked={len(acked)}{acked[:3]}"
            )
        return "\n  ".join(["flow " + ("active" if self.flow_active else "stopped"), *lines])

    def _held_back(self, tp: TP, start: int, acked: list[int]) -> None:
        """Log a partition whose commit waits for a missing acknowledgement, every HELD_LOG_S
        (a record never handed over is fetched again by the stall check, `_dropped`)."""
        now = time.monotonic()
        since, logged = self._held_since.setdefault(tp, (now, now))
        if now - logged >= HELD_LOG_S:
            self._held_since[tp] = (since, now)
            log.warning(
                "%s: commit held back at offset %d for %.0fs: %d later offsets acknowledged (from %d), "
                "next to hand over %s",
                tp,
                start,
                now - since,
                len(acked),
                acked[0],
                self._next_read.get(tp),
            )

    def _accept(self, tp: TP, offset: int) -> bool | None:
        """True: hand the record over; False: drop it (already handed over); None: a record
        before it is missing, seek back (and drop this one)."""
        expected = self._next_read.get(tp)
        if expected is None or offset == expected:
            self._seeks.pop(tp, None)
            return True
        if offset < expected:
            return False
        seeking, times = self._seeks.get(tp, (expected, 0))
        if seeking == expected and times >= MAX_SEEKS_TO_ONE_OFFSET:
            log.error(
                "%s: offsets %d..%d could not be fetched after %d seeks; going on from %d",
                tp,
                expected,
                offset - 1,
                times,
                offset,
            )
            self._seeks.pop(tp, None)
            return True
        self._seeks[tp] = (expected, times + 1 if seeking == expected else 1)
        return None

    def _dropped(self, positions: dict[TP, int]) -> dict[TP, int]:
        """Of the fetch positions read between two fetches (when every record fetched so far was
        handed over or dropped), the partitions to fetch again, with the offset to seek to: those
        whose position was past the next offset to hand over at this check and the one before,
        with nothing handed over and no seek in between. Two checks, so that a position read
        while a rebalance's seek is half done (position reset, next offset not yet) is not acted
        on."""
        seen, self._ahead = self._ahead, {}
        refetch: dict[TP, int] = {}
        for tp, position in positions.items():
            expected = self._next_read.get(tp)
            if expected is None or position <= expected:
                continue
            now = (expected, position, self._positions_reset)
            if seen.get(tp) == now:
                refetch[tp] = expected
            else:
                self._ahead[tp] = now
        return refetch

    async def _fetch_dropped_again(self) -> None:
        """Seek each partition `_dropped` names back to the first record it never handed over.
        Not inside Kafka transactions (`exactly_once`): their commit markers take offsets that
        are never handed over, so a position past the last record is no sign of a drop there."""
        if self.app.in_transaction:
            return
        positions = {
            tp: state.position
            for tp, state in self._fetch_states().items()
            if state is not None and state.has_valid_position
        }
        for tp, offset in self._dropped(positions).items():
            log.warning(
                "%s: offsets %d..%d were fetched and never handed over: fetching them again",
                tp,
                offset,
                positions[tp] - 1,
            )
            try:
                await self.seek(tp, offset)
            except IllegalStateError:  # revoked meanwhile: its next owner reads from the commit
                log.info("%s: revoked before it was fetched again", tp)

    async def _deliver(self, delivery: Any) -> bool:
        """Run one record's delivery coroutine (the conductor's `on_message`); False if a
        rebalance suspended the flow, or the consumer stopped, before it finished.

        Faust races every delivery against the flow's suspension with `wait_first`: four tasks
        and an `asyncio.wait` per record, 9% of the worker in the bench profile, although a
        delivery almost always finishes without ever suspending (its channel's queue has
        room). So the coroutine is first run here up to its first suspension: finished, it is
        delivered, with nothing to race (no rebalance can run in between); suspended (a full
        queue), the rest of it is raced as Faust does."""
        if not self.suspend_flow.is_set():
            try:
                yielded = delivery.send(None)
            except StopIteration:
                return True
            delivery = _resume(delivery, yielded)
        outcome = await self.wait_first(delivery, self.suspend_flow.wait())
        return delivery in outcome.done

    async def _commit_offsets(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        # Faust flushes the producer before it commits (the changelogs first): without the
        # linger, so the fetch loop, which commits every LEDGERFLOW_BATCH_SIZE acks, is not
        # held for it.
        producer = aiokafka_producer(self.app)
        if producer is not None:
            send_open_batches(producer)
        committed: bool = await super()._commit_offsets(offsets, start_new_transaction)
        return committed

    async def _drain_messages(self, fetcher: ServiceT) -> None:  # pragma: no cover
        """Faust's fetch loop (faust/transport/consumer.py, 0.15.3), the per-record checks
        replaced by `_accept` for acked topics; changelogs keep Faust's (gaps are real there)."""
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        read_offset = self._read_offset
        next_read = self._next_read
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        yield_every = 100
        since_yield = 0
        next_stall_check = time.monotonic() + STALL_CHECK_S
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                if time.monotonic() >= next_stall_check:
                    await self._fetch_dropped_again()
                    next_stall_check = time.monotonic() + STALL_CHECK_S
                self.diag.set_flag(CONSUMER_FETCHING)
                records = cast(Any, getmany(timeout=1.0))
                await self.sleep(0)
                if self.should_stop:
                    continue
                seeking: set[TP] = set()
                async for tp, message in records:
                    since_yield += 1
                    if since_yield > yield_every:
                        await asyncio.sleep(0)
                        since_yield = 0
                    offset = message.offset
                    if acks_enabled_for(message.topic):
                        if tp in seeking:
                            continue  # this batch's records of tp are discarded by the seek
                        verdict = self._accept(tp, offset)
                        if verdict is None:
                            expected = next_read[tp]
                            log.warning("%s: got offset %d, expected %d: seeking back", tp, offset, expected)
                            seeking.add(tp)
                            await self.seek(tp, expected)
                            continue
                        if not verdict:
                            continue
                    else:
                        r_offset = read_offset.get(tp)
                        if r_offset is not None and offset < r_offset:
                            continue
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    positions_reset = self._positions_reset
                    delivered = await self._deliver(callback(message))
                    read_offset[tp] = offset
                    if (
                        tp in next_read
                        and delivered  # not when a rebalance suspended the flow
                        and positions_reset == self._positions_reset  # nor across a seek
                    ):
                        next_read[tp] = offset + 1
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


def aiokafka_producer(app: Any) -> Any:
    """The started aiokafka producer behind the app's, or None (not started, or inside Kafka
    transactions, where Faust picks a producer per partition)."""
    if app.in_transaction:
        return None
    producer = getattr(app.producer, "_producer", None)
    return producer if getattr(producer, "_message_accumulator", None) is not None else None


def send_open_batches(producer: Any) -> None:
    """Have an aiokafka producer send the batches it holds now, not when their linger runs out.

    Batches linger (LEDGERFLOW_PRODUCER_LINGER_MS) so that many sends share one produce
    request: on this VM a request that wakes the broker costs ~50 µs of CPU in the socket write
    alone, whatever its size. Whoever is about to wait for what it sent gains nothing from the
    linger, so this closes the open batches (aiokafka's own `flush_for_commit` does the same)
    and wakes the sender: one request for all of them."""
    accumulator = producer._message_accumulator
    for batches in accumulator._batches.values():
        for batch in batches:
            batch._builder.close()
    if not accumulator._waiter_future.done():
        accumulator._waiter_future.set_result(None)


async def _resume(coro: Any, yielded: Any) -> Any:
    """Drive a coroutine already run up to its first suspension (`yielded`: the future it
    waits on, or None for a bare yield) to its end, as an asyncio task would: resumed when
    that future is done, with its exception thrown in (a cancellation of this one too)."""
    while True:
        error: BaseException | None = None
        try:
            if yielded is None:
                await asyncio.sleep(0)
            else:
                yielded._asyncio_future_blocking = False  # taken over, as a task does
                await yielded
        except BaseException as exc:  # the coroutine decides what a failure (or cancel) means
            error = exc
        try:
            yielded = coro.send(None) if error is None else coro.throw(error)
        except StopIteration as stop:
            return stop.value


class Transport(driver.Transport):
    """Faust's aiokafka transport with the strict `Consumer`."""

    Consumer = Consumer
