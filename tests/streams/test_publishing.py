"""One record batch per partition (streams/publishing.submit) and the changelog offset a store
remembers once a batch is acknowledged (agents/outbox._persisted), without a broker: the
integration, crash and chaos tests prove them against the real one."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from agents.outbox import _persisted
from streams.publishing import submit


class Builder:
    def __init__(self, capacity: int) -> None:
        self.records: list[tuple[Any, Any]] = []
        self._capacity = capacity

    def append(self, *, timestamp: Any, key: Any, value: Any, headers: Any) -> object | None:
        if len(self.records) >= self._capacity:
            return None  # full, as aiokafka's BatchBuilder says
        self.records.append((key, value))
        return object()


class Producer:
    """What `submit` uses of aiokafka's producer: batches of `capacity` records each."""

    def __init__(self, capacity: int = 100) -> None:
        self.capacity = capacity
        self.sent: list[tuple[str, int, list[tuple[Any, Any]]]] = []
        self.client = SimpleNamespace(_wait_on_metadata=self._metadata)
        self.metadata_for: list[str] = []

    async def _metadata(self, name: str) -> None:
        self.metadata_for.append(name)

    def _partition(self, name: str, partition: int | None, *_: Any) -> int:
        return partition if partition is not None else len(_[-2]) % 2  # by key length

    def create_batch(self) -> Builder:
        return Builder(self.capacity)

    async def send_batch(self, builder: Builder, name: str, *, partition: int) -> asyncio.Future[Any]:
        self.sent.append((name, partition, builder.records))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


async def test_records_go_as_one_batch_per_partition_in_their_order() -> None:
    producer = Producer()
    records = [
        ("t", None, b"a", b"1", []),
        ("t", None, b"bb", b"2", []),
        ("t", None, b"c", b"3", []),
        ("u", 1, b"x", b"4", []),
    ]
    pending = await submit(producer, records)
    assert producer.sent == [
        ("t", 1, [(b"a", b"1"), (b"c", b"3")]),
        ("t", 0, [(b"bb", b"2")]),
        ("u", 1, [(b"x", b"4")]),
    ]
    assert [count for _, count in pending] == [2, 1, 1]
    assert producer.metadata_for == ["t", "u"]  # once per topic


async def test_a_full_batch_is_sent_and_the_partition_goes_on_in_a_new_one() -> None:
    producer = Producer(capacity=2)
    records = [("t", 0, bytes([i]), b"v", []) for i in range(5)]
    pending = await submit(producer, records)
    assert [(p, [k for k, _ in r]) for _, p, r in producer.sent] == [
        (0, [b"\x00", b"\x01"]),
        (0, [b"\x02", b"\x03"]),
        (0, [b"\x04"]),
    ]
    assert [count for _, count in pending] == [2, 2, 1]


async def test_an_acknowledged_changelog_batch_sets_the_offset_of_its_last_record() -> None:
    persisted: list[tuple[Any, int]] = []
    store = SimpleNamespace(set_persisted_offset=lambda tp, offset: persisted.append((tp, offset)))
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(SimpleNamespace(topic="c", partition=3, topic_partition=("c", 3), offset=40))
    _persisted({("c", 3): store}, 5, future)
    assert persisted == [(("c", 3), 44)]


async def test_a_refused_changelog_batch_sets_no_offset() -> None:
    persisted: list[int] = []
    store = SimpleNamespace(set_persisted_offset=lambda tp, offset: persisted.append(offset))
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(RuntimeError("broker refused"))
    _persisted({("c", 3): store}, 5, future)
    assert persisted == []


def test_a_keyed_record_goes_where_aiokafkas_producer_would_put_it() -> None:
    """`_partition` remembers the default partitioner's hash per key; it chooses as aiokafka's
    producer does, for every partition count, and leaves a given partition or a custom
    partitioner to the producer."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.cluster import ClusterMetadata
    from aiokafka.producer.producer import _DEFAULT_PARTITIONER

    from streams.publishing import _partition

    for count in (1, 3, 4, 12):
        producer = AIOKafkaProducer.__new__(AIOKafkaProducer)
        producer._metadata = ClusterMetadata()
        producer._metadata._partitions = {"t": {p: object() for p in range(count)}}  # type: ignore[dict-item]
        producer._metadata.available_partitions_for_topic = lambda topic, n=count: set(range(n))  # type: ignore[method-assign]
        producer._partitioner = _DEFAULT_PARTITIONER
        for i in range(300):
            key = f"cust-stripe-cus_{i:05d}".encode()
            for _ in range(2):  # the second from the remembered hash
                assert _partition(producer, "t", None, key, b"v") == producer._partition(
                    "t", None, None, None, key, b"v"
                )
        assert _partition(producer, "t", count - 1, b"k", b"v") == count - 1
    producer._partitioner = lambda key, every, available: every[-1]  # type: ignore[assignment]
    assert _partition(producer, "t", None, b"k", b"v") == 11
