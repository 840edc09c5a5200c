"""Decoded rows are reused only while the stored bytes are the same."""

from __future__ import annotations

import tracemalloc

from agents.outbox import DecodedRows
from canonical import codec
from tables.customers import CustomerMaster
from tests.agents.test_customers import account_change


def test_a_row_is_parsed_again_only_when_its_bytes_changed() -> None:
    rows, table = DecodedRows(size=2), {}
    master = CustomerMaster(customer_id="c1", record=account_change().payload)  # type: ignore[arg-type]
    raw = codec.dumps(master)
    first = rows.decode(table, b"c1", raw, CustomerMaster)
    assert first == master and rows.decode(table, b"c1", raw, CustomerMaster) is first  # reused
    changed = master.model_copy(update={"subsidiary": "UK01"})
    again = rows.decode(table, b"c1", codec.dumps(changed), CustomerMaster)
    assert again == changed and again is not first  # new bytes: parsed again
    rows.decode(table, b"c2", raw, CustomerMaster)
    rows.decode(table, b"c3", raw, CustomerMaster)  # the oldest entry goes (size 2)
    assert rows.decode(table, b"c1", codec.dumps(changed), CustomerMaster) is not again


def test_a_remembered_row_keeps_only_its_own_length_of_bytes() -> None:
    """orjson's output bytes can be its whole buffer (4 KB from 3.12 on); kept by the
    thousand, that was most of a worker's heap."""
    rows, table = DecodedRows(size=1000), {}
    master = CustomerMaster(customer_id="c1", record=account_change().payload)  # type: ignore[arg-type]
    row_bytes = len(codec.dumps(master))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1000):
            rows.remember(table, f"c{i}".encode(), codec.dumps(master), master)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # the bytes themselves, a key and a dict slot each: well under what a 4 KB buffer would hold
    assert kept < 1000 * (row_bytes + 400)
