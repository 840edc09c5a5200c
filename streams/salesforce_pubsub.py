"""`ledgerflow salesforce-subscribe`: Salesforce Change Data Capture from the Pub/Sub API into
`crm.changes`, exactly once.

One subscription per channel, each with its own transactional producer (`transactional_id`
`<app id>-salesforce-pubsub-<channel>`: a restarted process fences its zombie). Every fetch
batch goes to Kafka in ONE transaction: the decoded events to `crm.changes` (keyed by CRM
account id, CometD-shaped JSON, headers `x-correlation-id` from the transactionKey,
`sf-replay-id`, `sf-schema-id`, `sf-topic`), undecodable ones to `ledgerflow.dlq` (with
`x-dlq-reason`, `x-source-topic`), and the checkpoint — channel → replay id and when — to the
compacted `ledgerflow.salesforce-replay`. On start the checkpoints are read (read_committed) to
their end; a channel resumes CUSTOM from its last id, else from the configured preset.

A CDC event naming several records (a merge) goes once, keyed like the relay's (the first
record id): stage 1's mapping fans it out per record itself, and splitting it here would give
the copies one `sf-<transactionKey>-<sequence>` event id each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from pydantic import SecretStr

from connectors.salesforce.pubsub.auth import LoginConfig, Session, login
from connectors.salesforce.pubsub.decode import account_key
from connectors.salesforce.pubsub.subscriber import (
    ChannelSubscriber,
    Checkpoint,
    Received,
    ResyncRequired,
    SubscriberConfig,
)
from streams import headers as h
from streams import metrics
from streams.kafka_io import kafka_security
from streams.settings import Settings
from streams.topic_names import CRM_CHANGES, DLQ, SALESFORCE_REPLAY

log = logging.getLogger(__name__)

REPLAY_ID_HEADER = "sf-replay-id"
SCHEMA_ID_HEADER = "sf-schema-id"
TOPIC_HEADER = "sf-topic"


def transactional_id(s: Settings, channel: str) -> str:
    return f"{s.app_id}-salesforce-pubsub-{re.sub(r'[^A-Za-z0-9_.-]+', '-', channel.strip('/'))}"


def checkpoint_value(replay_id: bytes, at: datetime) -> bytes:
    return orjson.dumps({"replay_id": replay_id.hex(), "at": at.isoformat()})


def parse_checkpoint(value: bytes) -> Checkpoint:
    data = orjson.loads(value)
    return Checkpoint(bytes.fromhex(data["replay_id"]), datetime.fromisoformat(data["at"]))


async def ensure_topics(s: Settings) -> None:
    """crm.changes and the DLQ as the app declares them (if the worker has not yet), and the
    compacted checkpoint topic."""
    admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap, **kafka_security(s))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(s.topic(name), num_partitions=s.partitions, replication_factor=s.replication_factor)
            for name in (CRM_CHANGES, DLQ)
            if s.topic(name) not in existing
        ]
        if s.topic(SALESFORCE_REPLAY) not in existing:
            wanted.append(
                NewTopic(
                    s.topic(SALESFORCE_REPLAY),
                    num_partitions=1,
                    replication_factor=s.replication_factor,
                    topic_configs={"cleanup.policy": "compact"},
                )
            )
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):  # another subscriber made them meanwhile
                await admin.create_topics(wanted)
    finally:
        await admin.close()


async def read_checkpoints(s: Settings) -> dict[str, Checkpoint]:
    """The last committed checkpoint of every channel (read_committed, to the end)."""
    topic = s.topic(SALESFORCE_REPLAY)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=s.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        **kafka_security(s),
    )
    await consumer.start()
    found: dict[str, Checkpoint] = {}
    try:
        partitions = [TopicPartition(topic, 0)]  # ensure_topics makes it with one partition
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        # The last stable offset: read_committed stops at an open transaction's first record.
        ends = await consumer.end_offsets(partitions)
        for tp in partitions:
            while await consumer.position(tp) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                for message in batch.get(tp, []):
                    if message.key is not None and message.value is not None:
                        found[message.key.decode()] = parse_checkpoint(message.value)
    finally:
        await consumer.stop()
    return found


@dataclass
class KafkaSink:
    """Writes each batch and its checkpoint in one transaction of `producer`."""

    settings: Settings
    producer: AIOKafkaProducer
    on_resync: Callable[[ResyncRequired], Awaitable[None]] | None = None

    async def deliver(self, channel: str, events: list[Received], latest_replay_id: bytes) -> None:
        s = self.settings
        now = datetime.now(UTC)
        async with self.producer.transaction():
            for event in events:
                replay_hex = event.replay_id.hex()
                causation = f"salesforce:{channel}:{replay_hex}"
                sf = {REPLAY_ID_HEADER: replay_hex, SCHEMA_ID_HEADER: event.schema_id, TOPIC_HEADER: channel}
                if event.message is None:
                    error = event.error
                    reason = f"{error.reason}: {error.detail}" if error else "undecodable"
                    metrics.salesforce_undecodable(error.reason if error else "undecodable_avro").inc()
                    metrics.dead_lettered(reason)
                    correlation = h.stable_id("correlation", "salesforce", channel, replay_hex)
                    log.warning(
                        "undecodable Pub/Sub event dead-lettered",
                        extra={"correlation_id": correlation, "channel": channel, "replay_id": replay_hex},
                    )
                    await self.producer.send(
                        s.topic(DLQ),
                        event.payload,
                        key=channel.encode(),
                        headers=_headers(
                            correlation, causation, {**sf, h.DLQ_REASON: reason, h.SOURCE_TOPIC: channel}
                        ),
                    )
                    continue
                header = event.message["payload"]["ChangeEventHeader"]
                correlation = h.stable_id("correlation", "salesforce", str(header.get("transactionKey")))
                await self.producer.send(
                    s.topic(CRM_CHANGES),
                    orjson.dumps(event.message),
                    key=account_key(event.message).encode(),
                    headers=_headers(correlation, causation, sf),
                )
            await self.producer.send(
                s.topic(SALESFORCE_REPLAY), checkpoint_value(latest_replay_id, now), key=channel.encode()
            )
        decoded = sum(1 for e in events if e.message is not None)
        if decoded:
            metrics.salesforce_events(channel).inc(decoded)

    async def resync_required(self, exc: ResyncRequired) -> None:
        metrics.salesforce_resyncs(exc.channel).inc()
        if self.on_resync is not None:
            await self.on_resync(exc)


def _headers(correlation: str, causation: str, extra: dict[str, str]) -> list[tuple[str, bytes]]:
    return list(h.outgoing(correlation, causation, **extra).items())


def login_config(s: Settings) -> LoginConfig:
    url = s.salesforce_login_url or s.crm_base_url
    if not url or not s.crm_client_id:
        raise ValueError(
            "set LEDGERFLOW_SALESFORCE_LOGIN_URL (or LEDGERFLOW_CRM_BASE_URL) and LEDGERFLOW_CRM_CLIENT_ID"
        )
    key = None
    if s.salesforce_jwt_private_key_file is not None:
        key = SecretStr(Path(s.salesforce_jwt_private_key_file).read_text())
    return LoginConfig(
        login_url=url,
        client_id=s.crm_client_id,
        client_secret=s.crm_client_secret,
        jwt_username=s.salesforce_jwt_username if key is not None else None,
        jwt_private_key=key,
        jwt_audience=s.salesforce_jwt_audience,
        timeout_s=s.crm_timeout_s,
    )


class Sessions:
    """One session shared by the channels; `refresh` logs in again (once for concurrent asks)."""

    def __init__(self, config: LoginConfig) -> None:
        self.config = config
        self._session: Session | None = None
        self._lock = asyncio.Lock()
        self.logins = 0

    async def __call__(self, refresh: bool) -> Session:
        stale = self._session
        async with self._lock:
            if self._session is None or (refresh and self._session is stale):
                self._session = await login(self.config)
                self.logins += 1
            return self._session


async def run_subscriber(
    s: Settings,
    stop: asyncio.Event | None = None,
    sessions: Sessions | None = None,
    on_resync: Callable[[ResyncRequired], Awaitable[None]] | None = None,
) -> None:
    """Subscribe every configured channel until `stop` is set (or one fails for good);
    `on_resync` hears of each lost window (it is logged at ERROR and counted either way)."""
    await ensure_topics(s)
    checkpoints = await read_checkpoints(s)
    sessions = sessions or Sessions(login_config(s))
    producers: list[AIOKafkaProducer] = []
    subscribers: list[ChannelSubscriber] = []
    try:
        for channel in s.salesforce_channels:
            producer = AIOKafkaProducer(
                bootstrap_servers=s.bootstrap,
                transactional_id=transactional_id(s, channel),
                enable_idempotence=True,
                acks="all",
                linger_ms=5,
                **kafka_security(s),
            )
            await producer.start()  # fences a zombie with the same transactional id
            producers.append(producer)
            start = checkpoints.get(channel)
            log.info(
                "salesforce channel starts",
                extra={
                    "channel": channel,
                    "replay_id": start.replay_id.hex() if start else None,
                    "preset": "CUSTOM" if start else s.salesforce_pubsub_replay_preset,
                },
            )
            config = SubscriberConfig(
                endpoint=s.salesforce_pubsub_endpoint,
                channel=channel,
                batch_size=s.salesforce_pubsub_batch_size,
                preset=s.salesforce_pubsub_replay_preset,
                tls=not s.salesforce_pubsub_insecure,
                max_retries=s.salesforce_pubsub_max_retries,
            )
            subscribers.append(ChannelSubscriber(config, sessions, KafkaSink(s, producer, on_resync), start))
        tasks = [
            asyncio.create_task(sub.run(), name=f"subscribe {sub.config.channel}") for sub in subscribers
        ]
        waiter = asyncio.create_task((stop or asyncio.Event()).wait())
        done, _ = await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
        for sub in subscribers:
            sub.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        waiter.cancel()
        for task in done:
            if task is not waiter and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for producer in producers:
            await producer.stop()
