"""`ledgerflow replay`: re-drive DLQ entries or open business exceptions after a fix.

Reading is bounded: a topic is read from its start to the end offsets it had when the replay
began, so a replay never waits on new traffic. Choosing what to re-drive is pure (tested without
a broker); the Kafka side is one consumer and one idempotent acks=all producer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from canonical import codec
from canonical.exceptions import BusinessException, ExceptionStatus
from streams import headers as h
from streams.kafka_io import kafka_security
from streams.settings import Settings

log = logging.getLogger(__name__)

REPLAY_OF = h.REPLAY_OF
"""Header on every re-driven message: `dlq:<partition>:<offset>` or `exception:<exception_id>`."""
READ_TIMEOUT_S = 60.0
"""Longest a replay spends reading one topic up to the end offsets it found at start."""
SEND_CHUNK = 500
"""Re-driven DLQ entries in flight at once."""

Header = tuple[str, bytes]
Tick = Callable[[int], None]


class ReplayKind(StrEnum):
    DLQ = "dlq"
    EXCEPTIONS = "exceptions"


class Outcome(StrEnum):
    REPLAYED = "replayed"
    WOULD_REPLAY = "would_replay"
    SKIPPED = "skipped"


class ReplayError(Exception):
    """The replay could not read what it needs from Kafka."""


def _no_tick(_: int) -> None:
    return None


# --- what was read ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One Kafka record as read, apart from aiokafka's types."""

    topic: str
    partition: int
    offset: int
    timestamp: datetime | None
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...] = ()

    def header(self, name: str) -> str | None:
        return h.header(dict(self.headers), name)

    @property
    def key_text(self) -> str | None:
        return self.key.decode("utf-8", "replace") if self.key is not None else None


def timestamp_of(milliseconds: int | None) -> datetime | None:
    """A Kafka record timestamp as an aware UTC time (None when the record has none)."""
    if milliseconds is None or milliseconds < 0:
        return None
    return datetime.fromtimestamp(milliseconds / 1000, UTC)


def raw_record(message: Any) -> RawRecord:
    """An aiokafka `ConsumerRecord` as a `RawRecord`."""
    return RawRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp=timestamp_of(message.timestamp),
        key=message.key,
        value=message.value,
        headers=tuple((k, bytes(v)) for k, v in (message.headers or ())),
    )


# --- filters ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayCriteria:
    """What to re-drive. Every filter left unset admits everything."""

    customer: str | None = None
    """The message key (DLQ) or the exception's customer_id, exactly."""
    reason: str | None = None
    """A prefix of the DLQ reason or of the exception's reason value."""
    since: datetime | None = None
    """Records written at or after this instant (Kafka record timestamp)."""
    until: datetime | None = None
    """Records written before this instant (Kafka record timestamp)."""
    source_topic: str | None = None
    """The topic the message came from, as a design name (`billing.changes`) or as written."""

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} must be timezone-aware (e.g. 2025-01-31T00:00:00Z)")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("since must be before until")

    def accepts(
        self,
        *,
        customer: str | None,
        reason: str,
        at: datetime | None,
        source_topic: str | None,
        topic_prefix: str = "",
    ) -> bool:
        if self.customer is not None and customer != self.customer:
            return False
        if self.reason is not None and not reason.startswith(self.reason):
            return False
        if self.since is not None and (at is None or at < self.since):
            return False
        if self.until is not None and (at is None or at >= self.until):
            return False
        if self.source_topic is not None:
            wanted = {self.source_topic, f"{topic_prefix}{self.source_topic}"}
            if source_topic not in wanted:
                return False
        return True


# --- what can be re-driven -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DlqEntry:
    """A dead-lettered message with what its headers say about it."""

    record: RawRecord
    reason: str
    source_topic: str | None
    correlation_id: str

    @property
    def ref(self) -> str:
        return f"dlq:{self.record.partition}:{self.record.offset}"


def dlq_entry(record: RawRecord) -> DlqEntry:
    """Read the DLQ headers (agents/outbox.py writes them) off one entry."""
    source_topic = record.header(h.SOURCE_TOPIC)
    source_parts = (source_topic, record.header(h.SOURCE_PARTITION), record.header(h.SOURCE_OFFSET))
    if all(source_parts):
        fallback = tuple(str(p) for p in source_parts)
    else:
        fallback = ("dlq", str(record.partition), str(record.offset))
    return DlqEntry(
        record=record,
        reason=record.header(h.DLQ_REASON) or "unknown",
        source_topic=source_topic or None,
        # The outbox minted the same id when the source message had none.
        correlation_id=h.correlation_of(dict(record.headers), *fallback),
    )


def dlq_replay_headers(entry: DlqEntry) -> list[Header]:
    """The re-driven message's headers: same transaction, caused by the DLQ entry."""
    return [
        (h.CORRELATION_ID, entry.correlation_id.encode()),
        (h.CAUSATION_ID, f"dlq/{entry.record.partition}/{entry.record.offset}".encode()),
        (REPLAY_OF, entry.ref.encode()),
    ]


@dataclass(frozen=True, slots=True)
class ExceptionEntry:
    """The latest record of one business exception."""

    exception: BusinessException
    record: RawRecord

    @property
    def ref(self) -> str:
        return f"exception:{self.exception.exception_id}"


def _is_newer(candidate: ExceptionEntry, current: ExceptionEntry) -> bool:
    a, b = candidate.record, current.record
    if a.partition == b.partition:
        return a.offset > b.offset  # one partition's log order is the truth
    # The key can move (an entity id later gains its customer): compare write times.
    epoch = datetime.min.replace(tzinfo=UTC)
    return (a.timestamp or epoch, candidate.exception.last_seen) > (
        b.timestamp or epoch,
        current.exception.last_seen,
    )


def latest_exceptions(records: Iterable[RawRecord]) -> tuple[list[ExceptionEntry], int]:
    """The latest record per `exception_id`, oldest first, and how many records did not decode."""
    latest: dict[str, ExceptionEntry] = {}
    unreadable = 0
    for record in records:
        if record.value is None:
            unreadable += 1
            continue
        try:
            exc = codec.loads(BusinessException, record.value)
        except ValidationError:
            unreadable += 1
            continue
        entry = ExceptionEntry(exc, record)
        current = latest.get(exc.exception_id)
        if current is None or _is_newer(entry, current):
            latest[exc.exception_id] = entry
    epoch = datetime.min.replace(tzinfo=UTC)
    ordered = sorted(
        latest.values(), key=lambda e: (e.record.timestamp or epoch, e.record.partition, e.record.offset)
    )
    return ordered, unreadable


def exception_replay_headers(original: RawRecord, exc: BusinessException) -> list[Header]:
    """The offending message's own headers, with the replay as cause."""
    ref = f"exception:{exc.exception_id}".encode()
    kept = [(k, v) for k, v in original.headers if k not in (h.CAUSATION_ID, REPLAY_OF)]
    if not any(k == h.CORRELATION_ID for k, _ in kept):
        kept.append((h.CORRELATION_ID, exc.correlation_id.encode()))
    return [*kept, (h.CAUSATION_ID, ref), (REPLAY_OF, ref)]


def replayed_exception(exc: BusinessException, now: datetime) -> BusinessException:
    """The exception's next record once its message has been re-driven."""
    return exc.model_copy(
        update={
            "status": ExceptionStatus.REPLAYED,
            "attempts": exc.attempts + 1,
            "last_seen": now.astimezone(UTC),
        }
    )


# --- plan and report -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayItem:
    """One matched DLQ entry or exception, and what became of it."""

    ref: str
    source_topic: str | None
    reason: str
    customer: str | None
    correlation_id: str
    recorded_at: datetime | None
    outcome: Outcome
    why: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "source_topic": self.source_topic,
            "reason": self.reason,
            "customer": self.customer,
            "correlation_id": self.correlation_id,
            "recorded_at": self.recorded_at.isoformat() if self.recorded_at else None,
            "outcome": self.outcome.value,
            "why": self.why,
        }


def _dlq_item(entry: DlqEntry, outcome: Outcome, why: str | None = None) -> ReplayItem:
    return ReplayItem(
        ref=entry.ref,
        source_topic=entry.source_topic,
        reason=entry.reason,
        customer=entry.record.key_text,
        correlation_id=entry.correlation_id,
        recorded_at=entry.record.timestamp,
        outcome=outcome,
        why=why,
    )


def _exception_item(entry: ExceptionEntry, outcome: Outcome, why: str | None = None) -> ReplayItem:
    exc = entry.exception
    return ReplayItem(
        ref=entry.ref,
        source_topic=exc.offending.topic if exc.offending else None,
        reason=exc.reason.value,
        customer=exc.customer_id,
        correlation_id=exc.correlation_id,
        recorded_at=entry.record.timestamp,
        outcome=outcome,
        why=why,
    )


@dataclass
class ReplayPlan:
    """What matched the criteria: what can be re-driven, and what cannot (decided without I/O)."""

    kind: ReplayKind
    scanned: int
    unreadable: int = 0
    dlq: list[DlqEntry] = field(default_factory=list)
    exceptions: list[ExceptionEntry] = field(default_factory=list)
    skipped: list[ReplayItem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.dlq) + len(self.exceptions)


def plan_dlq(records: Sequence[RawRecord], criteria: ReplayCriteria, topic_prefix: str = "") -> ReplayPlan:
    """The DLQ entries that match, in DLQ order."""
    plan = ReplayPlan(ReplayKind.DLQ, scanned=len(records))
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        entry = dlq_entry(record)
        if not criteria.accepts(
            customer=record.key_text,
            reason=entry.reason,
            at=record.timestamp,
            source_topic=entry.source_topic,
            topic_prefix=topic_prefix,
        ):
            continue
        if entry.source_topic is None:
            plan.skipped.append(_dlq_item(entry, Outcome.SKIPPED, f"no {h.SOURCE_TOPIC} header"))
        else:
            plan.dlq.append(entry)
    return plan


def plan_exceptions(
    records: Sequence[RawRecord], criteria: ReplayCriteria, topic_prefix: str = ""
) -> ReplayPlan:
    """The open exceptions (latest record of each) that match, oldest first."""
    latest, unreadable = latest_exceptions(records)
    plan = ReplayPlan(ReplayKind.EXCEPTIONS, scanned=len(records), unreadable=unreadable)
    for entry in latest:
        exc = entry.exception
        if exc.status is not ExceptionStatus.OPEN:
            continue
        if not criteria.accepts(
            customer=exc.customer_id,
            reason=exc.reason.value,
            at=entry.record.timestamp,
            source_topic=exc.offending.topic if exc.offending else None,
            topic_prefix=topic_prefix,
        ):
            continue
        if exc.offending is None:
            why = "no offending message to re-drive (raised by a timer, not by a message)"
            plan.skipped.append(_exception_item(entry, Outcome.SKIPPED, why))
        else:
            plan.exceptions.append(entry)
    return plan


@dataclass(frozen=True, slots=True)
class GroupCount:
    source_topic: str
    reason: str
    matched: int
    replayed: int
    skipped: int


@dataclass
class ReplayReport:
    """What a replay matched, re-drove (or would have, in a dry run) and skipped, and why."""

    kind: ReplayKind
    dry_run: bool
    scanned: int
    unreadable: int
    items: list[ReplayItem]

    @property
    def matched(self) -> int:
        return len(self.items)

    @property
    def replayed(self) -> int:
        return sum(1 for i in self.items if i.outcome is Outcome.REPLAYED)

    @property
    def would_replay(self) -> int:
        return sum(1 for i in self.items if i.outcome is Outcome.WOULD_REPLAY)

    @property
    def skipped(self) -> list[ReplayItem]:
        return [i for i in self.items if i.outcome is Outcome.SKIPPED]

    def groups(self) -> list[GroupCount]:
        """Counts per (source topic, reason code), sorted. A DLQ reason is `<code>: <detail>`;
        the code groups, the detail stays on each item."""
        counts: dict[tuple[str, str], list[int]] = {}
        for item in self.items:
            code = item.reason.split(":", 1)[0].strip()
            row = counts.setdefault((item.source_topic or "-", code), [0, 0, 0])
            row[0] += 1
            if item.outcome is Outcome.SKIPPED:
                row[2] += 1
            else:
                row[1] += 1
        return [GroupCount(t, r, *row) for (t, r), row in sorted(counts.items())]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "dry_run": self.dry_run,
            "scanned": self.scanned,
            "unreadable": self.unreadable,
            "matched": self.matched,
            "replayed": self.replayed,
            "would_replay": self.would_replay,
            "skipped": len(self.skipped),
            "groups": [
                {
                    "source_topic": g.source_topic,
                    "reason": g.reason,
                    "matched": g.matched,
                    "replayed": g.replayed,
                    "skipped": g.skipped,
                }
                for g in self.groups()
            ],
            "items": [i.to_json() for i in self.items],
        }

    def render(self) -> str:
        """A summary table for people: counts per source topic and reason, then the details."""
        done = "would replay" if self.dry_run else "replayed"
        lines = [
            f"replay {self.kind.value}{' (dry run, nothing produced)' if self.dry_run else ''}: "
            f"{self.scanned} records read, {self.matched} matched, "
            f"{self.would_replay if self.dry_run else self.replayed} {done}, {len(self.skipped)} skipped"
        ]
        if self.unreadable:
            lines.append(f"{self.unreadable} records could not be decoded and were left alone")
        groups = self.groups()
        if groups:
            header = ("source topic", "reason", "matched", done, "skipped")
            rows = [
                (g.source_topic, g.reason, str(g.matched), str(g.replayed), str(g.skipped)) for g in groups
            ]
            widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
            for row in (header, *rows):
                text = [row[i].ljust(widths[i]) for i in (0, 1)] + [
                    row[i].rjust(widths[i]) for i in (2, 3, 4)
                ]
                lines.append("  ".join(text).rstrip())
        if self.dry_run and self.would_replay:
            lines.append("would replay:")
            for i in self.items:
                if i.outcome is Outcome.WOULD_REPLAY:
                    lines.append(
                        f"  {i.ref} -> {i.source_topic} ({i.reason}, correlation {i.correlation_id})"
                    )
        if self.skipped:
            lines.append("skipped:")
            lines.extend(f"  {i.ref} ({i.reason}): {i.why}" for i in self.skipped)
        return "\n".join(lines)


# --- Kafka -----------------------------------------------------------------------------------


class KafkaLink:
    """One bounded reader and one durable (acks=all, idempotent) producer for a replay."""

    def __init__(self, s: Settings, timeout: float = READ_TIMEOUT_S) -> None:
        security = kafka_security(s)
        self.timeout = timeout
        self._partitions: dict[str, list[TopicPartition]] = {}
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            **security,
        )
        self.producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=s.producer_linger_ms,
            **security,
        )

    async def __aenter__(self) -> KafkaLink:
        try:
            await self.consumer.start()
            await self.producer.start()
        except BaseException:
            await self.consumer.stop()
            await self.producer.stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.producer.stop()
        finally:
            await self.consumer.stop()

    async def partitions(self, topic: str) -> list[TopicPartition]:
        """The topic's partitions; none if it does not exist (never creates it)."""
        if topic not in self._partitions:
            found: list[TopicPartition] = []
            if topic in await self.consumer.topics():
                # The producer's metadata wait is aiokafka's public way to learn the partitions
                # (asking for a topic that does not exist could create it: checked above).
                found = [TopicPartition(topic, p) for p in sorted(await self.producer.partitions_for(topic))]
            self._partitions[topic] = found
        return self._partitions[topic]

    async def read_to_end(self, topic: str) -> list[RawRecord]:
        """Every committed record from the start to the end offsets present now."""
        tps = await self.partitions(topic)
        if not tps:
            return []
        self.consumer.assign(tps)
        begins = await self.consumer.beginning_offsets(tps)
        ends = await self.consumer.end_offsets(tps)
        for tp in tps:
            self.consumer.seek(tp, begins[tp])
        pending = {tp for tp in tps if ends[tp] > begins[tp]}
        self.consumer.pause(*(set(tps) - pending))
        out: list[RawRecord] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while pending:
            if loop.time() > deadline:
                raise ReplayError(f"{topic} was not read to its end offsets within {self.timeout:.0f}s")
            batch = await self.consumer.getmany(*pending, timeout_ms=200)
            for tp, messages in batch.items():
                out.extend(raw_record(m) for m in messages if m.offset < ends[tp])
            for tp in list(pending):
                # Positions pass aborted records and transaction markers too.
                if await self.consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
                    self.consumer.pause(tp)
        return out

    async def fetch(self, topic: str, partition: int, offset: int) -> RawRecord | None:
        """The record at exactly topic/partition/offset, or None if it is no longer there."""
        tp = TopicPartition(topic, partition)
        if tp not in await self.partitions(topic):
            return None
        self.consumer.assign([tp])
        begin = (await self.consumer.beginning_offsets([tp]))[tp]
        end = (await self.consumer.end_offsets([tp]))[tp]
        if not begin <= offset < end:
            return None
        self.consumer.seek(tp, offset)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while loop.time() < deadline:
            batch = await self.consumer.getmany(tp, timeout_ms=200, max_records=1)
            for message in batch.get(tp, ()):
                # A later offset means ours was compacted away or aborted.
                return raw_record(message) if message.offset == offset else None
            if await self.consumer.position(tp) >= end:
                return None
        raise ReplayError(f"{topic}/{partition}/{offset} was not read within {self.timeout:.0f}s")

    async def send(self, topic: str, key: bytes | None, value: bytes | None, headers: list[Header]) -> Any:
        """Queue one record; returns the future of its acknowledgement."""
        return await self.producer.send(topic, value, key=key, headers=headers)


def _contract_names() -> tuple[str, str]:
    # streams.topics builds the Faust app on import: only a running replay needs the names.
    from streams.topic_names import DLQ, EXCEPTIONS

    return DLQ, EXCEPTIONS


async def plan_replay(
    s: Settings, kind: ReplayKind, criteria: ReplayCriteria, *, timeout: float = READ_TIMEOUT_S
) -> ReplayPlan:
    """Read the DLQ or the exceptions topic (bounded) and choose what to re-drive."""
    dlq, exceptions = _contract_names()
    async with KafkaLink(s, timeout) as link:
        if kind is ReplayKind.DLQ:
            return plan_dlq(await link.read_to_end(s.topic(dlq)), criteria, s.topic_prefix)
        return plan_exceptions(await link.read_to_end(s.topic(exceptions)), criteria, s.topic_prefix)


async def _settle(pending: list[tuple[DlqEntry, Any]], tick: Tick) -> list[ReplayItem]:
    results = await asyncio.gather(*(future for _, future in pending), return_exceptions=True)
    items = []
    for (entry, _), result in zip(pending, results, strict=True):
        if isinstance(result, BaseException):
            items.append(_dlq_item(entry, Outcome.SKIPPED, f"produce failed: {type(result).__name__}"))
            continue
        log.info(
            "re-drove dead-lettered message",
            extra={"correlation_id": entry.correlation_id, "replay_of": entry.ref, "reason": entry.reason},
        )
        items.append(_dlq_item(entry, Outcome.REPLAYED))
    tick(len(pending))
    return items


async def _redrive_dlq(link: KafkaLink, entries: list[DlqEntry], tick: Tick) -> list[ReplayItem]:
    items: list[ReplayItem] = []
    pending: list[tuple[DlqEntry, Any]] = []
    for entry in entries:
        assert entry.source_topic is not None  # plan_dlq skips entries without one
        try:
            future = await link.send(
                entry.source_topic, entry.record.key, entry.record.value, dlq_replay_headers(entry)
            )
        except KafkaError as exc:
            items.append(_dlq_item(entry, Outcome.SKIPPED, f"produce failed: {type(exc).__name__}"))
            tick(1)
            continue
        pending.append((entry, future))
        if len(pending) >= SEND_CHUNK:
            items += await _settle(pending, tick)
            pending = []
    if pending:
        items += await _settle(pending, tick)
    return items


async def _redrive_exception(
    link: KafkaLink, entry: ExceptionEntry, exceptions_topic: str, dry_run: bool, now: datetime
) -> ReplayItem:
    exc = entry.exception
    ref = exc.offending
    assert ref is not None  # plan_exceptions skips exceptions without one
    original = await link.fetch(ref.topic, ref.partition, ref.offset)
    if original is None:
        why = f"offending message {ref.topic}/{ref.partition}/{ref.offset} is no longer on the topic"
        return _exception_item(entry, Outcome.SKIPPED, why)
    if dry_run:
        return _exception_item(entry, Outcome.WOULD_REPLAY)
    try:
        await (
            await link.send(ref.topic, original.key, original.value, exception_replay_headers(original, exc))
        )
    except KafkaError as error:
        return _exception_item(entry, Outcome.SKIPPED, f"produce failed: {type(error).__name__}")
    log.info(
        "re-drove the message behind an exception",
        extra={"correlation_id": exc.correlation_id, "replay_of": entry.ref, "reason": exc.reason.value},
    )
    key = exc.customer_id or exc.entity_id
    try:
        await (
            await link.send(
                exceptions_topic,
                key.encode() if key is not None else entry.record.key,
                codec.dumps(replayed_exception(exc, now)),
                list(h.outgoing(exc.correlation_id, entry.ref, **{REPLAY_OF: entry.ref}).items()),
            )
        )
    except KafkaError as error:
        why = f"re-driven, but its replayed status was not recorded: {type(error).__name__}"
        return _exception_item(entry, Outcome.REPLAYED, why)
    return _exception_item(entry, Outcome.REPLAYED)


async def execute_replay(
    s: Settings,
    plan: ReplayPlan,
    *,
    dry_run: bool = False,
    tick: Tick = _no_tick,
    now: datetime | None = None,
    timeout: float = READ_TIMEOUT_S,
) -> ReplayReport:
    """Re-drive what the plan chose (a dry run produces nothing, but still checks that each
    exception's offending message can be fetched)."""
    items = list(plan.skipped)
    if plan.kind is ReplayKind.DLQ and dry_run:
        items += [_dlq_item(entry, Outcome.WOULD_REPLAY) for entry in plan.dlq]
        tick(len(plan.dlq))
    elif len(plan):
        _, exceptions = _contract_names()
        async with KafkaLink(s, timeout) as link:
            if plan.kind is ReplayKind.DLQ:
                items += await _redrive_dlq(link, plan.dlq, tick)
            for entry in plan.exceptions:
                when = now or datetime.now(UTC)
                items.append(await _redrive_exception(link, entry, s.topic(exceptions), dry_run, when))
                tick(1)
    return ReplayReport(plan.kind, dry_run, plan.scanned, plan.unreadable, items)


async def replay(
    s: Settings,
    kind: ReplayKind,
    criteria: ReplayCriteria,
    *,
    dry_run: bool = False,
    tick: Tick = _no_tick,
    now: datetime | None = None,
    timeout: float = READ_TIMEOUT_S,
) -> ReplayReport:
    """Plan and execute in one go."""
    plan = await plan_replay(s, kind, criteria, timeout=timeout)
    return await execute_replay(s, plan, dry_run=dry_run, tick=tick, now=now, timeout=timeout)
