"""Decoded rows are reused only while the stored bytes are the same; a message handed over
ahead of the batch is still acknowledged before the batch's rows are written."""

from __future__ import annotations

import asyncio
import tracemalloc
from typing import Any
from unittest import mock

from agents import outbox as outbox_module
from agents.outbox import DecodedRows, Outbox
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


async def test_a_message_sent_now_is_handed_over_at_once_and_acked_before_the_rows() -> None:
    loop = asyncio.get_running_loop()
    handed: list[list[Any]] = []
    acks: list[asyncio.Future[None]] = []
    written: list[Any] = []

    async def hand_over(messages: list[Any]) -> list[asyncio.Future[None]]:
        handed.append([value for _, _, value, _ in messages])
        acks.append(loop.create_future())
        return [acks[-1]]

    async def write_rows(rows: list[Any]) -> None:
        written.extend(rows)

    box = Outbox()
    with (
        mock.patch.object(outbox_module, "hand_over", hand_over),
        mock.patch.object(outbox_module, "write_rows", write_rows),
    ):
        await box.send_now("erp.results", "k", "result", {})
        await box.send("ledgerflow.exceptions", "k", "exception", {})
        assert handed == [["result"]]  # before the batch's commit
        box.put({}, "k", None, mock.Mock())
        committing = asyncio.ensure_future(box.commit())
        await asyncio.sleep(0.01)
        assert handed == [["result"], ["exception"]]
        acks[1].set_result(None)
        await asyncio.sleep(0.01)
        assert written == [] and not committing.done()  # the early message is not acked yet
        acks[0].set_result(None)
        await committing
    assert len(written) == 1
