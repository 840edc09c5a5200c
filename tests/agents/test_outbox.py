"""Decoded rows stand for their store: read once, then known until written, deleted, forgotten
on a rebalance or a commit that failed."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest

from agents import outbox as ob
from agents.outbox import DecodedRows, Outbox
from canonical import codec
from tables.customers import CustomerMaster
from tests.agents.test_customers import account_change


class Event:
    """What the outbox needs of a Faust event when its tables are dicts."""


class CountingTable(dict[bytes, bytes]):
    """A store that counts its reads."""

    reads = 0

    def get(self, key: bytes, default: Any = None) -> Any:
        self.reads += 1
        return super().get(key, default)


def master(subsidiary: str = "US01") -> CustomerMaster:
    row = CustomerMaster(customer_id="c1", record=account_change().payload)  # type: ignore[arg-type]
    return row.model_copy(update={"subsidiary": subsidiary})


@pytest.fixture
def rows() -> DecodedRows:
    return DecodedRows(size=2)


async def test_a_row_is_read_from_its_store_once_then_known_and_a_committed_row_is_what_it_reads(
    rows: DecodedRows,
) -> None:
    table, event = CountingTable({b"c1": codec.dumps(master())}), Event()
    first = Outbox(rows).get(table, "c1", CustomerMaster, event)  # type: ignore[arg-type]
    assert first == master() and table.reads == 1
    assert Outbox(rows).get(table, "c1", CustomerMaster, event) is first and table.reads == 1
    batch = Outbox(rows)
    batch.put(table, "c1", master("UK01"), event)  # type: ignore[arg-type]
    assert batch.get(table, "c1", CustomerMaster, event).subsidiary == "UK01"  # type: ignore[arg-type,union-attr]
    assert Outbox(rows).get(table, "c1", CustomerMaster, event) is first  # not committed yet
    await batch.commit()
    assert codec.loads(CustomerMaster, table[b"c1"]).subsidiary == "UK01"
    assert Outbox(rows).get(table, "c1", CustomerMaster, event).subsidiary == "UK01"  # type: ignore[arg-type,union-attr]
    assert table.reads == 1


async def test_a_deleted_row_is_forgotten_and_another_table_with_the_same_key_is_its_own(
    rows: DecodedRows,
) -> None:
    table, other, event = CountingTable({b"c1": codec.dumps(master())}), CountingTable(), Event()
    assert Outbox(rows).get(table, "c1", CustomerMaster, event) is not None  # type: ignore[arg-type]
    assert Outbox(rows).get(other, "c1", CustomerMaster, event) is None  # type: ignore[arg-type]
    batch = Outbox(rows)
    batch.put(table, "c1", None, event)  # type: ignore[arg-type]
    assert batch.get(table, "c1", CustomerMaster, event) is None  # type: ignore[arg-type]
    await batch.commit()
    assert b"c1" not in table and Outbox(rows).get(table, "c1", CustomerMaster, event) is None  # type: ignore[arg-type]


async def test_a_failed_commit_and_a_rebalance_forget_every_row(rows: DecodedRows) -> None:
    table, event = CountingTable({b"c1": codec.dumps(master())}), Event()
    Outbox(rows).get(table, "c1", CustomerMaster, event)  # type: ignore[arg-type]
    batch = Outbox(rows)
    batch.put(table, "c1", master("UK01"), event)  # type: ignore[arg-type]
    with (
        mock.patch.object(ob, "write_rows", side_effect=RuntimeError("half written")),
        pytest.raises(RuntimeError),
    ):
        await batch.commit()
    assert Outbox(rows).get(table, "c1", CustomerMaster, event) is not None and table.reads == 2  # type: ignore[arg-type]
    for rebalance in (ob.app.on_partitions_revoked, ob.app.on_partitions_assigned):
        ob.decoded_rows.remember(table, None, b"c1", master())  # type: ignore[arg-type]  # the worker's own
        await rebalance.send(set())
        assert ob.decoded_rows.trusted(table, None, b"c1", CustomerMaster) is None  # type: ignore[arg-type]


def test_the_oldest_row_goes_first(rows: DecodedRows) -> None:
    table: dict[bytes, bytes] = {}
    for key in (b"c1", b"c2", b"c3"):
        rows.remember(table, 0, key, master())
    assert rows.trusted(table, 0, b"c1", CustomerMaster) is None  # size 2
    assert rows.trusted(table, 0, b"c3", CustomerMaster) is not None


class PartitionedTable(dict[bytes, bytes]):
    """A table whose store has a RocksDB per partition, as `read_row` reads it."""

    def __init__(self, stores: dict[int, dict[bytes, bytes]]) -> None:
        super().__init__()
        self.data = SimpleNamespace(_db_for_partition=stores.__getitem__)


def test_one_key_in_two_partitions_is_two_rows(rows: DecodedRows) -> None:
    """A keyless record's row (`-`) lands in the partition its record did: each partition's
    store has its own, and the cache must not hand one partition's row to the other."""
    p0, p1 = master("P0"), master("P1")
    table = PartitionedTable({0: {b"-": codec.dumps(p0)}, 1: {b"-": codec.dumps(p1)}})
    on = [SimpleNamespace(message=SimpleNamespace(partition=p)) for p in (0, 1)]
    assert Outbox(rows).get(table, "-", CustomerMaster, on[0]) == p0  # type: ignore[arg-type]
    assert Outbox(rows).get(table, "-", CustomerMaster, on[1]) == p1  # type: ignore[arg-type]
    batch = Outbox(rows)
    batch.put(table, "-", master("UK01"), on[0])  # type: ignore[arg-type]
    assert batch.get(table, "-", CustomerMaster, on[1]) == p1  # type: ignore[arg-type]
