"""Plain aiokafka producing and reading, for the dev stack, the simulator and tests; and the
client arguments of a secured cluster, for every aiokafka client outside the Faust app."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

if TYPE_CHECKING:
    from streams.settings import Settings

Record = tuple[str | None, bytes | None, dict[str, str]]
"""(key, value, headers) as text where text is due."""


async def produce(
    bootstrap: str, topic: str, records: Iterable[tuple[str | None, bytes, dict[str, str]]]
) -> int:
    """Send records durably (acks=all, idempotent) and return how many were sent."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5)
    await producer.start()
    sent = 0
    try:
        futures = []
        for key, value, headers in records:
            futures.append(
                await producer.send(
                    topic,
                    value,
                    key=key.encode() if key is not None else None,
                    headers=[(k, v.encode()) for k, v in headers.items()],
                )
            )
            sent += 1
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent


async def read_topics(
    bootstrap: str,
    topics: list[str],
    done: Callable[[dict[str, list[Record]]], bool],
    timeout: float = 60.0,
) -> dict[str, list[Record]]:
    """Read the committed messages of `topics` from the start until `done(found)` or `timeout`."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        enable_auto_commit=False,
        metadata_max_age_ms=1000,  # see topics created after we subscribed
    )
    await consumer.start()
    found: dict[str, list[Record]] = {t: [] for t in topics}
    loop = asyncio.get_running_loop()
    try:
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for tp, messages in batch.items():
                for m in messages:
                    headers = {k: v.decode("utf-8", "replace") for k, v in (m.headers or ())}
                    found[tp.topic].append((m.key.decode() if m.key else None, m.value, headers))
            if done(found):
                break
    finally:
        await consumer.stop()
    return found


def kafka_security(s: Settings) -> dict[str, Any]:
    """aiokafka client arguments for a secured cluster (none for PLAINTEXT)."""
    if s.kafka_security_protocol == "PLAINTEXT":
        return {}
    import ssl

    out: dict[str, Any] = {"security_protocol": s.kafka_security_protocol}
    if "SSL" in s.kafka_security_protocol:
        out["ssl_context"] = ssl.create_default_context(
            cafile=str(s.kafka_ssl_cafile) if s.kafka_ssl_cafile else None
        )
    if s.kafka_security_protocol.startswith("SASL"):
        out["sasl_mechanism"] = s.kafka_sasl_mechanism or "PLAIN"
        out["sasl_plain_username"] = s.kafka_sasl_username
        out["sasl_plain_password"] = (
            s.kafka_sasl_password.get_secret_value() if s.kafka_sasl_password else None
        )
    return out
