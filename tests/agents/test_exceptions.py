"""The exception state: the latest record per exception id, redeliveries ignored, the bound per
key (pure); then the agent loop with Faust's test_context."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any
from unittest import mock

from agents.exceptions import keep_exception
from canonical import BusinessException, ExceptionReason, ExceptionStatus, MessageRef, codec
from tables.exceptions import KeyExceptions
from tests.factories import T0

CID = "cust-crm-001EXC000000001"


def exception(exception_id: str = "x-1", **over: Any) -> BusinessException:
    fields: dict[str, Any] = {
        "exception_id": exception_id,
        "reason": ExceptionReason.MISSING_TAX_CODE,
        "message": f"invoice in_{exception_id} held: no tax code",
        "customer_id": CID,
        "entity_id": f"in_{exception_id}",
        "correlation_id": f"corr-{exception_id}",
        "first_seen": T0,
        "last_seen": T0,
        "offending": MessageRef(topic="ledgerflow.canonical", partition=1, offset=7),
    }
    fields.update(over)
    return BusinessException(**fields)


def test_the_latest_record_of_each_exception_is_kept() -> None:
    row = keep_exception(None, CID, exception(), T0, partition=1, offset=10)
    replayed = exception(status=ExceptionStatus.REPLAYED, attempts=2, last_seen=T0 + timedelta(minutes=5))
    row = keep_exception(row, CID, replayed, T0 + timedelta(minutes=5), partition=1, offset=11)
    row = keep_exception(row, CID, exception("x-2"), T0, partition=1, offset=12)
    assert {k: v.exception.status for k, v in row.exceptions.items()} == {
        "x-1": ExceptionStatus.REPLAYED,
        "x-2": ExceptionStatus.OPEN,
    }
    assert row.exceptions["x-1"].offset == 11 and row.exceptions["x-1"].exception.attempts == 2


def test_a_problem_raised_again_keeps_its_age_until_someone_resolves_it() -> None:
    row = keep_exception(None, CID, exception(first_seen=T0), T0, partition=1, offset=1)
    replayed = exception(status=ExceptionStatus.REPLAYED, attempts=2, first_seen=T0)
    row = keep_exception(row, CID, replayed, T0 + timedelta(minutes=1), partition=1, offset=2)
    later = T0 + timedelta(hours=1)
    raised_again = exception(first_seen=later, last_seen=later)  # stage 2 re-decided: still wrong
    row = keep_exception(row, CID, raised_again, later, partition=1, offset=3)
    kept = row.exceptions["x-1"].exception
    assert (kept.status, kept.first_seen, kept.last_seen, kept.attempts) == (
        ExceptionStatus.OPEN,
        T0,
        later,
        2,
    )
    resolved = exception(status=ExceptionStatus.RESOLVED, first_seen=T0, last_seen=later)
    row = keep_exception(row, CID, resolved, later, partition=1, offset=4)
    reopened = T0 + timedelta(days=1)
    row = keep_exception(row, CID, exception(first_seen=reopened, last_seen=reopened), reopened, 1, 5)
    assert row.exceptions["x-1"].exception.first_seen == reopened  # a new occurrence


def test_a_redelivered_older_record_changes_nothing() -> None:
    row = keep_exception(None, CID, exception(status=ExceptionStatus.RESOLVED), T0, partition=1, offset=20)
    again = keep_exception(row, CID, exception(), T0, partition=1, offset=19)  # replayed from an old offset
    assert again is row and again.exceptions["x-1"].exception.status is ExceptionStatus.RESOLVED


def test_past_the_bound_closed_exceptions_go_first_then_the_oldest_open_ones_counted() -> None:
    row = None
    for i in range(3):
        closed = exception(f"c-{i}", status=ExceptionStatus.RESOLVED, last_seen=T0 + timedelta(hours=i))
        row = keep_exception(row, CID, closed, T0, partition=0, offset=i)
    for i in range(3):
        opened = exception(f"o-{i}", last_seen=T0 + timedelta(hours=i))
        row = keep_exception(row, CID, opened, T0, partition=0, offset=10 + i, bound=4)
    assert row is not None
    # Six records, room for four: the two oldest closed ones went, no open one, nothing dropped.
    assert sorted(row.exceptions) == ["c-2", "o-0", "o-1", "o-2"] and row.dropped == 0
    for i in range(3, 6):
        row = keep_exception(
            row, CID, exception(f"o-{i}", last_seen=T0 + timedelta(hours=i)), T0, 0, 20 + i, 4
        )
    # Only open ones left to let go: the oldest, each counted.
    assert sorted(row.exceptions) == ["o-2", "o-3", "o-4", "o-5"] and row.dropped == 2


async def test_the_agent_keeps_records_per_key_and_dead_letters_what_does_not_decode() -> None:
    from agents import exceptions as agent_module
    from agents.outbox import Outbox

    table: dict[bytes, bytes] = {}
    sent: list[tuple[str, Any]] = []

    async def record(self: Outbox, topic: Any, key: Any, value: Any, headers: Any) -> None:
        sent.append((topic.get_topic_name(), key))

    with mock.patch.object(agent_module, "exception_table", table), mock.patch.object(Outbox, "send", record):
        async with agent_module.track_exceptions.test_context() as agent:
            await agent.put(exception("x-1"), key=CID, wait=False)
            await agent.put(exception("x-1", status=ExceptionStatus.REPLAYED), key=CID, wait=False)
            await agent.put(exception("u-1", customer_id=None, entity_id="cus_unknown"), key="cus_unknown")
            await agent.put(b"not an exception", key=CID)
            for _ in range(300):
                if b"cus_unknown" in table and CID.encode() in table:
                    break
                await asyncio.sleep(0.01)
    row = codec.loads(KeyExceptions, table[CID.encode()])
    assert row.exceptions["x-1"].exception.status is ExceptionStatus.REPLAYED
    assert list(codec.loads(KeyExceptions, table[b"cus_unknown"]).exceptions) == ["u-1"]
    assert [topic for topic, _ in sent] == ["ledgerflow.dlq"]
