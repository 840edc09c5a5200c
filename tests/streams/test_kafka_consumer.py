"""The strict offset bookkeeping of streams/kafka_consumer.py, one function at a time (the
scaling and chaos tests prove it with real workers)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from faust.types import TP

from streams.app import RUNNING_MARKER, forget_tables_after_unclean_stop
from streams.kafka_consumer import MAX_SEEKS_TO_ONE_OFFSET, Consumer

TOPIC_PARTITION = TP("billing.changes", 3)


def consumer(next_commit: int | None = None, next_read: int | None = None) -> Any:
    """A Consumer with only the bookkeeping these functions use (no broker, no app)."""
    c: Any = object.__new__(Consumer)
    c._acked = defaultdict(list)
    c._acked_index = defaultdict(set)
    c._next_commit = {} if next_commit is None else {TOPIC_PARTITION: next_commit}
    c._next_read = {} if next_read is None else {TOPIC_PARTITION: next_read}
    c._seeks = {}
    c._held_since = {}
    c._ahead = {}
    c._positions_reset = 0
    c._committed_offset = defaultdict(lambda: None)
    return c


def ack(c: Any, *offsets: int) -> None:
    c._acked[TOPIC_PARTITION].extend(offsets)
    c._acked_index[TOPIC_PARTITION].update(offsets)


def test_commits_only_a_run_that_starts_at_the_committed_offset() -> None:
    c = consumer(next_commit=147)
    ack(c, 149, 150, 151)  # 147 and 148 never handed over (the rebalance loss)
    assert c._new_offset(TOPIC_PARTITION) is None  # held back, not skipped
    ack(c, 148)
    assert c._new_offset(TOPIC_PARTITION) is None
    ack(c, 147)
    assert c._new_offset(TOPIC_PARTITION) == 152
    assert c._acked[TOPIC_PARTITION] == [] and not c._acked_index[TOPIC_PARTITION]


def test_a_run_stops_at_the_first_missing_offset_and_resumes_from_it() -> None:
    c = consumer(next_commit=10)
    ack(c, 12, 10, 11, 14)
    assert c._new_offset(TOPIC_PARTITION) == 13
    assert c._acked[TOPIC_PARTITION] == [14]
    ack(c, 13)
    assert c._new_offset(TOPIC_PARTITION) == 15


def test_acks_below_the_committed_offset_are_forgotten() -> None:
    c = consumer(next_commit=20)
    ack(c, 5, 6, 20)
    assert c._new_offset(TOPIC_PARTITION) == 21
    assert c._acked[TOPIC_PARTITION] == []


def test_a_commit_that_landed_past_the_baseline_moves_it() -> None:
    """Seen in the scaling test: a seek reset the baseline to 41 while a commit of 59 landed;
    Faust's ack() drops acks below 59, so waiting for 41..58 would hold the partition for good."""
    c = consumer(next_commit=41)
    c._committed_offset[TOPIC_PARTITION] = 59
    ack(c, 59, 60)
    assert c._new_offset(TOPIC_PARTITION) == 61


def test_no_commit_without_a_baseline() -> None:
    c = consumer()
    ack(c, 0, 1, 2)
    assert c._new_offset(TOPIC_PARTITION) is None


def test_records_are_handed_over_in_offset_order() -> None:
    c = consumer(next_read=147)
    assert c._accept(TOPIC_PARTITION, 147) is True
    c._next_read[TOPIC_PARTITION] = 148
    assert c._accept(TOPIC_PARTITION, 147) is False  # already handed over: dropped
    assert c._accept(TOPIC_PARTITION, 150) is None  # 148, 149 missing: seek back
    assert c._accept(TOPIC_PARTITION, 148) is True


def test_a_missing_offset_that_never_comes_back_is_skipped_after_bounded_seeks() -> None:
    c = consumer(next_read=5)
    verdicts = [c._accept(TOPIC_PARTITION, 9) for _ in range(MAX_SEEKS_TO_ONE_OFFSET + 1)]
    assert verdicts == [None] * MAX_SEEKS_TO_ONE_OFFSET + [True]


def test_a_partition_without_a_read_position_takes_any_offset() -> None:
    assert consumer()._accept(TOPIC_PARTITION, 42) is True


def test_records_fetched_and_never_handed_over_are_fetched_again() -> None:
    """The scaling test's stuck partition: fetched to 298, handed over to 287, nothing after."""
    c = consumer(next_read=287)
    assert c._dropped({TOPIC_PARTITION: 298}) == {}  # once could be a seek half done
    assert c._dropped({TOPIC_PARTITION: 298}) == {TOPIC_PARTITION: 287}


def test_a_partition_that_moved_between_checks_is_not_fetched_again() -> None:
    c = consumer(next_read=287)
    assert c._dropped({TOPIC_PARTITION: 298}) == {}
    c._next_read[TOPIC_PARTITION] = 290  # handed over meanwhile
    assert c._dropped({TOPIC_PARTITION: 298}) == {}
    assert c._dropped({TOPIC_PARTITION: 299}) == {}  # fetched meanwhile
    assert c._dropped({TOPIC_PARTITION: 299}) == {TOPIC_PARTITION: 290}


def test_a_seek_between_checks_starts_the_watch_again() -> None:
    c = consumer(next_read=287)
    assert c._dropped({TOPIC_PARTITION: 298}) == {}
    c._positions_reset += 2  # a rebalance's seek ran in between
    assert c._dropped({TOPIC_PARTITION: 298}) == {}
    assert c._dropped({TOPIC_PARTITION: 298}) == {TOPIC_PARTITION: 287}


def test_a_position_at_or_behind_the_next_offset_is_in_step() -> None:
    c = consumer(next_read=287)
    for position in (287, 280, 287, 280):  # caught up; or a seek back not fetched yet
        assert c._dropped({TOPIC_PARTITION: position}) == {}
    assert consumer()._dropped({TOPIC_PARTITION: 5}) == {}  # no read position: nothing to compare


async def test_the_fetch_loop_seeks_a_stalled_partition_back_and_survives_a_revocation() -> None:
    """`_fetch_dropped_again` on aiokafka's fetch state as the consumer thread keeps it."""
    from types import SimpleNamespace

    from aiokafka.errors import IllegalStateError

    c = consumer(next_read=287)
    other = TP("billing.changes", 4)
    c._next_read[other] = 10
    fetch_state = {
        TOPIC_PARTITION: SimpleNamespace(position=298, has_valid_position=True, paused=False),
        other: SimpleNamespace(position=None, has_valid_position=False, paused=False),  # being reset
    }
    subscription = SimpleNamespace(assignment=SimpleNamespace(state_value=fetch_state.get))
    kafka = SimpleNamespace(_subscription=SimpleNamespace(subscription=subscription))
    c._thread = SimpleNamespace(_ensure_consumer=lambda: kafka)
    c.assignment = lambda: set(fetch_state)
    c.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: True), in_transaction=True)
    seeks: list[tuple[TP, int]] = []

    async def seek(tp: TP, offset: int) -> None:
        seeks.append((tp, offset))
        if len(seeks) > 1:
            raise IllegalStateError("No current assignment for partition")

    c.seek = seek
    for _ in range(3):  # exactly_once: commit markers take offsets, nothing to look for
        await c._fetch_dropped_again()
    assert seeks == []
    c.app.in_transaction = False
    await c._fetch_dropped_again()
    assert seeks == []  # seen once
    await c._fetch_dropped_again()
    assert seeks == [(TOPIC_PARTITION, 287)]
    await c._fetch_dropped_again()  # not fetched yet: watched again, not sought twice at once
    await c._fetch_dropped_again()  # revoked meanwhile: logged, the loop goes on
    assert seeks == [(TOPIC_PARTITION, 287)] * 2


def test_table_stores_are_dropped_only_after_an_unclean_stop(tmp_path: Path) -> None:
    datadir, tabledir = tmp_path / "data", tmp_path / "data" / "v1" / "tables"
    tabledir.mkdir(parents=True)
    (tabledir / "invoice-state-0.db").write_bytes(b"rows")
    assert forget_tables_after_unclean_stop(datadir, tabledir) is False  # first start
    assert (tabledir / "invoice-state-0.db").exists() and (datadir / RUNNING_MARKER).exists()
    # killed: the marker stays, so the next start drops the stores
    assert forget_tables_after_unclean_stop(datadir, tabledir) is True
    assert not tabledir.exists() and (datadir / RUNNING_MARKER).exists()
    (datadir / RUNNING_MARKER).unlink()  # a clean stop removes it (LedgerflowApp.on_stop)
    tabledir.mkdir(parents=True)
    assert forget_tables_after_unclean_stop(datadir, tabledir) is False


def delivering_consumer() -> Any:
    """A Consumer with only what `_deliver` uses: the flow's suspension and mode's wait_first."""
    from mode.utils.locks import Event

    c: Any = object.__new__(Consumer)
    c.suspend_flow = Event()
    c._stopped = Event()
    c._crashed = Event()
    c._loop = asyncio.get_running_loop()
    return c


async def test_a_delivery_that_never_suspends_is_done_without_a_task() -> None:
    c = delivering_consumer()
    steps: list[str] = []

    async def delivery() -> None:
        steps.append("delivered")

    tasks_before = len(asyncio.all_tasks())
    assert await c._deliver(delivery()) is True
    assert steps == ["delivered"] and len(asyncio.all_tasks()) == tasks_before


async def test_a_delivery_that_waits_on_a_full_queue_is_finished_with_its_result() -> None:
    c = delivering_consumer()
    room: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    steps: list[str] = []

    async def delivery() -> None:
        steps.append("waiting")
        steps.append(await room)
        await asyncio.sleep(0)  # a bare yield after it
        steps.append("delivered")

    asyncio.get_running_loop().call_later(0.01, room.set_result, "room")
    assert await c._deliver(delivery()) is True
    assert steps == ["waiting", "room", "delivered"]


async def test_a_failure_while_waiting_is_thrown_into_the_delivery() -> None:
    c = delivering_consumer()
    room: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seen: list[BaseException] = []

    async def delivery() -> None:
        try:
            await room
        except ValueError as exc:
            seen.append(exc)
            raise

    asyncio.get_running_loop().call_later(0.01, room.set_exception, ValueError("queue closed"))
    with pytest.raises(ValueError, match="queue closed"):
        await c._deliver(delivery())
    assert len(seen) == 1


async def test_a_rebalance_while_a_delivery_waits_abandons_it() -> None:
    c = delivering_consumer()
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    cancelled: list[bool] = []

    async def delivery() -> None:
        try:
            await never
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    asyncio.get_running_loop().call_later(0.01, c.suspend_flow.set)
    assert await c._deliver(delivery()) is False
    await asyncio.sleep(0.01)
    assert cancelled == [True]
