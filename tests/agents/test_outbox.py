"""Decoded rows are reused only while the stored bytes are the same."""

from __future__ import annotations

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
