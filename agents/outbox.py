"""What a batch decided, delivered in the right order: its messages first, then its state.

Faust writes a table row to RocksDB at once, while a send made from inside an agent is, by
default, *attached* to the current event and published only at the next offset commit. A
worker killed in between restarts with state saying "sent" for a message that never left, and
the replayed event is then a duplicate to that state: the message is lost. So every batch
collects its sends and its row writes in an `Outbox`; `commit()` sends everything, waits for
the broker to acknowledge it, and only then writes the rows. A crash before the rows are
written re-sends on restart, with the same idempotency keys, instead of losing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from pydantic import BaseModel

from agents.batching import acting_for
from canonical import BusinessException, codec
from streams import headers as h
from streams import metrics
from streams.app import app
from streams.kafka_consumer import aiokafka_producer
from streams.publishing import Outgoing, Record, count_table_writes, publish, submit
from streams.settings import settings
from streams.topics import dlq_topic, exceptions_topic

if TYPE_CHECKING:
    from collections.abc import MutableMapping

    from faust.types import EventT, TopicT

log = logging.getLogger(__name__)

R = TypeVar("R", bound=BaseModel)
Rows: TypeAlias = "MutableMapping[bytes, bytes]"
Slot: TypeAlias = "tuple[int, int | None, bytes]"
"""(id of the table, partition, key): a key can be in several partitions' stores (a keyless
record's row, `-`, lands where its record did)."""


def partition_of(event: EventT) -> int | None:
    """The partition whose store holds `event`'s rows (None: a test's event without a message)."""
    message = getattr(event, "message", None)
    return getattr(message, "partition", None)


class DecodedRows:
    """Rows as their store holds them, decoded, by table and key: parsing a customer's rows with
    pydantic every batch cost more than the batch's decisions, and reading them from RocksDB
    again ~5% of a worker. Rows are frozen models, so sharing one between batches is safe.

    A row enters when it was read from its store, or once a batch's commit wrote it there; a
    deleted row leaves. Only this process writes its partitions' stores while it holds them,
    so what is here is what the store holds, until a rebalance (another worker may write, a
    recovery replays the changelog: everything is forgotten) or a commit that failed half-way
    (likewise)."""

    def __init__(self, size: int = 10_000) -> None:
        # 10,000 rows: a bench worker's 1,000 customers' rows all fit; at 100,000 customers
        # 20,000 decoded rows took the state RSS bench to 600.5 MB (target < 600).
        self._size = size
        # (table, row): the table is held, so no other table can take its id while it is here.
        self._rows: OrderedDict[Slot, tuple[Rows, BaseModel]] = OrderedDict()

    def trusted(self, table: Rows, partition: int | None, key: bytes, row_type: type[R]) -> R | None:
        """The row the partition's store holds, if known, without reading the store."""
        slot = (id(table), partition, key)
        hit = self._rows.get(slot)
        if hit is None or hit[0] is not table or type(hit[1]) is not row_type:
            return None
        self._rows.move_to_end(slot)
        return hit[1]

    def decode(self, table: Rows, partition: int | None, key: bytes, raw: bytes, row_type: type[R]) -> R:
        """A row just read from the partition's store."""
        row = codec.loads(row_type, raw)
        self.remember(table, partition, key, row)
        return row

    def remember(self, table: Rows, partition: int | None, key: bytes, row: BaseModel) -> None:
        slot = (id(table), partition, key)
        self._rows[slot] = (table, row)
        self._rows.move_to_end(slot)
        if len(self._rows) > self._size:
            self._rows.popitem(last=False)

    def forget(self, table: Rows, partition: int | None, key: bytes) -> None:
        self._rows.pop((id(table), partition, key), None)

    def clear(self, *_: Any, **__: Any) -> None:
        self._rows.clear()


decoded_rows = DecodedRows()
app.on_partitions_revoked.connect(decoded_rows.clear)
app.on_partitions_assigned.connect(decoded_rows.clear)


def read_row(table: Rows, key: bytes, event: EventT) -> bytes | None:
    """A row's stored bytes, from the store of the partition `event` came from.

    A Faust table's `get` goes through its mapping layers, a sensor and a second RocksDB read
    (`Store._contains`, then `_get`): 8% of the worker's time in the bench profile. Our tables
    store raw bytes under raw keys, so reading the partition's RocksDB directly is the same
    read; anything else (a dict in tests, another store) takes the table's own path."""
    db_for_partition = getattr(getattr(table, "data", None), "_db_for_partition", None)
    if db_for_partition is not None:
        value: bytes | None = db_for_partition(event.message.partition).get(key)
        return value
    with acting_for(event):
        return table.get(key)


class Outbox:
    """One batch's sends and table writes; reads through it see the batch's own writes."""

    def __init__(self, rows: DecodedRows = decoded_rows) -> None:
        self._sending: list[Outgoing] = []
        self._writes: dict[
            Slot, tuple[MutableMapping[bytes, bytes], EventT, bytes | None, BaseModel | None]
        ] = {}
        self._rows = rows

    async def send(self, topic: TopicT, key: Any, value: Any, headers: dict[str, bytes]) -> None:
        # Published by `commit`, not attached to the current event: an attached send is
        # published at the next offset commit, after this batch's rows are written (the crash
        # gap above).
        self._sending.append((topic, key, value, headers))

    def get(self, table: Rows, key: str, row_type: type[R], event: EventT) -> R | None:
        encoded, partition = key.encode(), partition_of(event)
        staged = self._writes.get((id(table), partition, encoded))
        if staged is not None:
            return staged[3]  # type: ignore[return-value]
        known = self._rows.trusted(table, partition, encoded, row_type)
        if known is not None:
            return known
        raw = read_row(table, encoded, event)
        return None if raw is None else self._rows.decode(table, partition, encoded, raw, row_type)

    def put(self, table: Rows, key: str, row: BaseModel | None, event: EventT) -> None:
        """Stage a row (None deletes it), written by `commit` as if while handling `event`."""
        raw = None if row is None else codec.dumps(row)
        self._writes[(id(table), partition_of(event), key.encode())] = (table, event, raw, row)

    def write_through(self, table: Rows, key: str, row: BaseModel, event: EventT) -> None:
        """Write a row into its table at once, through Faust's table (its changelog record goes
        when the producer flushes), and stage it as `put` does: the sink's in-flight marks."""
        self.put(table, key, row, event)
        partition, encoded = partition_of(event), key.encode()
        with acting_for(event):
            table[encoded] = self._writes[(id(table), partition, encoded)][2]  # type: ignore[assignment]
        # Until the commit, the store is ahead of the batch: a batch that fails leaves no old row known.
        self._rows.forget(table, partition, encoded)

    async def commit(self) -> None:
        """Deliver every send (raises if the broker refuses), then write the rows."""
        sending, self._sending = self._sending, []
        await publish(sending)
        writes, self._writes = self._writes, {}
        try:
            await write_rows(
                [(table, key, event, raw) for (_, _, key), (table, event, raw, _) in writes.items()]
            )
        except BaseException:
            self._rows.clear()  # some rows may be in their stores, some not
            raise
        for (_, partition, key), (table, _event, raw, row) in writes.items():
            if raw is None or row is None:
                self._rows.forget(table, partition, key)
            else:
                self._rows.remember(table, partition, key, row)


async def write_rows(rows: list[tuple[Rows, bytes, EventT, bytes | None]]) -> None:
    """Each row (None deletes it) into the store of its event's partition, and onto its table's
    changelog: what a Faust table's `__setitem__` does, for a whole batch at once.

    Faust sends every row's changelog record on its own (`send_soon`: a buffer, a task and a
    `Topic.send` per row, 9% of the worker in the bench profile). Here the records go as one
    record batch per changelog partition, not awaited, like Faust's: the consumer flushes the
    producer before it commits offsets. When a batch is acknowledged, the store remembers the
    changelog offset it holds, as Faust's `_on_changelog_sent` does, so a restart recovers only
    the changelog's tail. Inside transactions, or for a table without RocksDB partitions (a
    dict in tests), the table's own path. Either way a table is checked co-partitioned with the
    topic its rows come from (billing.invoice-payments and ledgerflow.invoice-owners share tables)."""
    producer = aiokafka_producer(app)
    # As Faust's own path does, before anything is written: a source topic with another partition
    # count than the table would put one key's rows on two partitions (PartitionsMismatch names
    # both topics; once per table and topic, then a set lookup).
    for table, _key, event, _raw in rows:
        verify = getattr(table, "_verify_source_topic_partitions", None)
        if verify is not None:
            verify(event.message.topic)
    records: list[Record] = []
    stores: dict[tuple[str, int], Any] = {}
    updated: Counter[Any] = Counter()  # by table
    for table, key, event, raw in rows:
        store: Any = getattr(table, "data", None)
        db_for_partition = getattr(store, "_db_for_partition", None)
        if producer is None or db_for_partition is None:
            with acting_for(event):
                if raw is None:
                    table.pop(key, None)
                else:
                    table[key] = raw
            continue
        partition = event.message.partition
        db = db_for_partition(partition)
        if raw is None:
            db.delete(key)
            store._key_index.pop(key, None)
        else:
            db.put(key, raw)
            store._key_index[key] = partition
        name = table.changelog_topic.get_topic_name()  # type: ignore[attr-defined]
        records.append((name, partition, key, raw, []))
        stores[name, partition] = store
        updated[table] += 1
    if not records:
        return
    for future, count in await submit(producer, records):
        future.add_done_callback(partial(_persisted, stores, count))
    count_table_writes(updated)


def _persisted(stores: dict[tuple[str, int], Any], count: int, future: asyncio.Future[Any]) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is not None:
        log.error("changelog records not written: %r", error)
        return
    sent = future.result()
    stores[sent.topic, sent.partition].set_persisted_offset(sent.topic_partition, sent.offset + count - 1)


async def send_to_dlq(outbox: Outbox, event: EventT, reason: str) -> None:
    """The message exactly as it came, with why and where it came from."""
    msg = event.message
    correlation = h.correlation_of(event.headers, msg.topic, str(msg.partition), str(msg.offset))
    causation = f"{msg.topic}/{msg.partition}/{msg.offset}"
    log.warning(
        "dead-lettered message",
        extra={"correlation_id": correlation, "source": causation, "reason": reason},
    )
    metrics.dead_lettered(reason)
    await outbox.send(
        dlq_topic,
        event.key,
        msg.value,
        h.outgoing(
            correlation,
            causation,
            **{
                h.DLQ_REASON: reason,
                h.SOURCE_TOPIC: msg.topic,
                h.SOURCE_PARTITION: str(msg.partition),
                h.SOURCE_OFFSET: str(msg.offset),
            },
        ),
    )


async def send_exception(outbox: Outbox, exc: BusinessException, causation_id: str) -> None:
    log.info(
        "business exception raised",
        extra={
            "correlation_id": exc.correlation_id,
            "customer_id": exc.customer_id,
            "reason": exc.reason.value,
            "exception_id": exc.exception_id,
        },
    )
    await outbox.send(
        exceptions_topic, exc.customer_id or exc.entity_id, exc, h.outgoing(exc.correlation_id, causation_id)
    )


async def raise_overdue(
    table: Rows,
    row_type: type[R],
    waiting: Callable[[R], int],
    overdue: Callable[[R, datetime, float], BusinessException | None],
    raised: set[str],
    causation_id: str,
    stage: str,
) -> None:
    """A parking table's timer: every row waiting past LEDGERFLOW_PARK_TIMEOUT_S becomes its
    exception, once per worker process (`raised` remembers them; the rows stay parked), and
    `ledgerflow_events_parked{stage}` counts what waits."""
    now = datetime.now(UTC)
    outbox = Outbox()
    new = []
    count = 0
    for _key, raw in list(table.items()):
        row = codec.loads(row_type, raw)
        count += waiting(row)
        exc = overdue(row, now, settings.park_timeout_s)
        if exc is not None and exc.exception_id not in raised:
            await send_exception(outbox, exc, causation_id)
            new.append(exc.exception_id)
    await outbox.commit()
    raised.update(new)
    metrics.set_parked(stage, count)
