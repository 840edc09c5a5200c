"""Publishing a batch's messages through the app's producer, a record batch per partition.

Faust's `Topic.send` builds a `FutureMessage`, runs the send sensors and hands the message to
aiokafka's `send`, which partitions it and adds it to its accumulator with a future of its
own: ~40 µs a message, 10% of the worker in the bench profile, for messages an agent only
ever awaits all together. `publish` serialises each message with its topic's schema, picks its
partition with the producer's own partitioner (so a key lands where `Topic.send` would have
put it), appends it to one aiokafka `BatchBuilder` per partition and submits each builder
once, in send order per partition. Inside a Kafka transaction (`exactly_once`) Faust picks
the producer by partition, so there it keeps `Topic.send`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeAlias

from aiokafka.partitioner import DefaultPartitioner, murmur2

from streams.app import app
from streams.kafka_consumer import aiokafka_producer, send_open_batches

if TYPE_CHECKING:
    from faust.types import CollectionT, TopicT

Outgoing: TypeAlias = "tuple[TopicT, Any, Any, Mapping[str, bytes]]"
"""(topic, key, value, headers) as `Topic.send` takes them."""


def expedite_sends() -> None:
    """Send what the producer holds now instead of when each batch's linger runs out (see
    `send_open_batches`): an agent that handed over its batch's messages and now waits for
    their acks gains nothing from lingering."""
    producer = aiokafka_producer(app)
    if producer is not None:
        send_open_batches(producer)


Record: TypeAlias = "tuple[str, int | None, bytes | None, bytes | None, list[tuple[str, bytes]]]"
"""(topic name, partition or None for the partitioner's, key, value, headers), serialised."""


async def publish(messages: Sequence[Outgoing]) -> None:
    """Send every message and wait until the broker acknowledged all of them (raises if it
    refused one)."""
    if not messages:
        return
    producer = aiokafka_producer(app)
    if producer is None:
        pending: list[Any] = [
            await topic.send(key=key, value=value, headers=headers, force=True)
            for topic, key, value, headers in messages
        ]
    else:
        pending = [future for future, _ in await submit(producer, [_serialised(m) for m in messages])]
    expedite_sends()
    await asyncio.gather(*pending)
    if producer is not None:
        _count_sent(messages)


def _serialised(message: Outgoing) -> Record:
    topic, key, value, given = message
    schema = topic.schema
    headers: Any = dict(given)
    key_bytes, headers = schema.dumps_key(app, key, headers=headers)
    value_bytes, headers = schema.dumps_value(app, value, headers=headers)
    return (topic.get_topic_name(), None, key_bytes, value_bytes, list(headers.items()))


async def submit(producer: Any, records: Sequence[Record]) -> list[tuple[asyncio.Future[Any], int]]:
    """Hand records to the producer, one record batch per partition in record order; returns
    each batch's future (its result names the batch's first offset) and its record count."""
    builders: dict[tuple[str, int], Any] = {}
    counts: dict[tuple[str, int], int] = {}
    pending: list[tuple[asyncio.Future[Any], int]] = []
    known: set[str] = set()
    for name, given_partition, key, value, headers in records:
        if name not in known:
            await producer.client._wait_on_metadata(name)
            known.add(name)
        partition = _partition(producer, name, given_partition, key, value)
        slot = (name, partition)
        builder = builders.get(slot)
        if builder is None:
            builder = builders[slot] = producer.create_batch()
            counts[slot] = 0
        record = {"timestamp": None, "key": key, "value": value, "headers": headers}
        if builder.append(**record) is None:
            # Full (producer_max_batch_size): submit it and start the partition's next one.
            pending.append((await producer.send_batch(builder, name, partition=partition), counts[slot]))
            builder = builders[slot] = producer.create_batch()
            counts[slot] = 0
            if builder.append(**record) is None:
                raise ValueError(f"a message for {name} is larger than the producer's batch size")
        counts[slot] += 1
    for (name, partition), builder in builders.items():
        pending.append(
            (await producer.send_batch(builder, name, partition=partition), counts[name, partition])
        )
    return pending


@lru_cache(maxsize=16_384)
def _key_hash(key: bytes) -> int:
    """aiokafka's murmur2 is Python, ~6 µs a key; a worker sends to the same customers' keys
    again and again."""
    return int(murmur2(key)) & 0x7FFFFFFF


def _partition(producer: Any, name: str, given: int | None, key: bytes | None, value: bytes | None) -> int:
    """The partition aiokafka's producer would choose (`AIOKafkaProducer._partition`), its
    default partitioner's hash remembered per key."""
    if (
        given is None
        and key is not None
        and type(getattr(producer, "_partitioner", None)) is DefaultPartitioner
    ):
        every = list(producer._metadata.partitions_for_topic(name))
        return int(every[_key_hash(key) % len(every)])
    return int(producer._partition(name, given, None, None, key, value))


def _count_sent(messages: Sequence[Outgoing]) -> None:
    """What Faust's sensor counts for every `Topic.send` (`ledgerflow_faust_*sent*`), counted
    once per topic for a published batch."""
    count_sent = getattr(app.monitor, "count_sent", None)
    if count_sent is not None:
        count_sent(Counter(topic.get_topic_name() for topic, *_ in messages))


def count_table_writes(updated: Counter[CollectionT]) -> None:
    """What Faust's sensor counts for every table write, once per table."""
    count = getattr(app.monitor, "count_table_writes", None)
    if count is not None:
        count(updated)
