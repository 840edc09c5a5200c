"""Every hop of one business transaction, read back from the topics.

Nothing is written per message for tracing: every message already carries `x-correlation-id`
and `x-causation-id`, so a trace reads the topics a transaction crosses (the source topics,
`ledgerflow.canonical`, `erp.commands`, `erp.results`, `crm.writeback`,
`ledgerflow.exceptions`, `ledgerflow.dlq`) for the records whose correlation header matches.
Reading is bounded twice: by a time window (`offsets_for_times(since)` up to the end offsets
found at start) and by a budget of records scanned. The ERP call itself is the `erp.results`
record the sink wrote after it (outcome, attempts, ERP ids); the ERP keeps the same
`x-correlation-id` on its side.

A source message produced without ledgerflow's headers (a platform writing to Kafka directly,
not through the webhook ingress) gets its correlation id minted by the stage-1 adapters; such a
record is matched by running the same adapter on it, only for records whose key is a customer
reference the transaction's canonical events name.

Selecting and summarising hops is pure; the Kafka side reuses `streams.operations.replay.KafkaLink`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.partitioner import murmur2

from canonical import Source
from streams import headers as h
from streams.operations.replay import KafkaLink, RawRecord, ReplayError, raw_record
from streams.settings import Settings
from streams.topic_names import (
    BILLING_CHANGES,
    CANONICAL,
    CLM_CHANGES,
    CRM_CHANGES,
    CRM_WRITEBACK,
    DLQ,
    ERP_COMMANDS,
    ERP_RESULTS,
    EXCEPTIONS,
    PAYMENTS_CHANGES,
    SOURCE_TOPICS,
)

DEFAULT_WINDOW = timedelta(hours=24)
DEFAULT_BUDGET = 200_000
"""Records scanned at most by one trace, across every topic."""
MAX_BUDGET = 2_000_000
TRACE_TIMEOUT_S = 30.0

TRACE_TOPICS = (*SOURCE_TOPICS, CANONICAL, ERP_COMMANDS, ERP_RESULTS, CRM_WRITEBACK, EXCEPTIONS, DLQ)
CUSTOMER_KEYED = (CANONICAL, ERP_COMMANDS, ERP_RESULTS, EXCEPTIONS)
"""Topics keyed by canonical customer id: with the customer known, one partition each is read."""

STAGE = {
    **dict.fromkeys(SOURCE_TOPICS, "source"),
    CANONICAL: "ingest",
    ERP_COMMANDS: "core",
    ERP_RESULTS: "sink (ERP call)",
    CRM_WRITEBACK: "core (CRM write-back)",
    EXCEPTIONS: "exception",
    DLQ: "dead letter",
}
_TOPIC_ORDER = {name: i for i, name in enumerate(TRACE_TOPICS)}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str | None, now: datetime) -> datetime:
    """The start of the window: an ISO-8601 instant with its offset, or a duration back from
    `now` (`90s`, `15m`, `6h`, `2d`, or plain seconds). Unset: 24 hours."""
    if text is None or not text.strip():
        return now - DEFAULT_WINDOW
    match = _DURATION.match(text)
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"since={text!r} is neither an ISO-8601 time nor a duration like 6h") from None
    if parsed.tzinfo is None:
        raise ValueError(f"since={text!r} has no UTC offset (write e.g. 2025-01-31T00:00:00Z)")
    return parsed.astimezone(UTC)


def partition_for_key(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as Faust and aiokafka use) gives a key."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


# --- what a hop says ------------------------------------------------------------------------


def _json(value: bytes | None) -> dict[str, Any]:
    if not value:
        return {}
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _pick(data: Mapping[str, Any], *names: str) -> dict[str, Any]:
    return {n: data[n] for n in names if data.get(n) is not None}


def summarize(topic: str, record: RawRecord) -> dict[str, Any]:
    """A few fields that say what a record is about: type, ids, outcome, reason. Never the
    document itself (no names, e-mails or amounts of a person)."""
    data = _json(record.value)
    if topic in (BILLING_CHANGES, PAYMENTS_CHANGES):
        obj = (data.get("data") or {}).get("object") or {}
        out = {"event": data.get("type"), "event_id": data.get("id")}
        if isinstance(obj, dict):
            out.update({"object": obj.get("object"), "object_id": obj.get("id"), "status": obj.get("status")})
        return {k: v for k, v in out.items() if v is not None}
    if topic == CRM_CHANGES:
        payload = (data.get("data") or data).get("payload") or {}
        header = payload.get("ChangeEventHeader") or {} if isinstance(payload, dict) else {}
        return {
            k: v
            for k, v in {
                "change_type": header.get("changeType"),
                "entity": header.get("entityName"),
                "record_ids": list(header.get("recordIds") or [])[:3] or None,
            }.items()
            if v is not None
        }
    if topic == CLM_CHANGES:
        return _pick(data, "event_type", "event_id", "contract_id", "version", "amendment_number")
    if topic == CANONICAL:
        return _pick(data, "source", "source_type", "entity_type", "entity_id", "event_id", "customer_id")
    if topic == ERP_COMMANDS:
        return _pick(data, "command", "idempotency_key", "customer_id", "subsidiary")
    if topic == ERP_RESULTS:
        return _pick(
            data,
            "command",
            "outcome",
            "idempotency_key",
            "erp_internal_id",
            "document_number",
            "attempts",
            "error_code",
        )
    if topic == CRM_WRITEBACK:
        out = _pick(data, "crm_account_id", "idempotency_key")
        fields = data.get("fields")
        if isinstance(fields, dict):
            out["fields"] = sorted(k for k, v in fields.items() if v is not None)
        return out
    if topic == EXCEPTIONS:
        return _pick(data, "exception_id", "reason", "status", "severity", "entity_id", "attempts")
    if topic == DLQ:
        return {
            k: v
            for k, v in {
                "reason": record.header(h.DLQ_REASON),
                "source_topic": record.header(h.SOURCE_TOPIC),
                "source_offset": record.header(h.SOURCE_OFFSET),
            }.items()
            if v is not None
        }
    return {}


@dataclass(frozen=True, slots=True)
class Hop:
    """One record of the transaction."""

    topic: str  # the design name
    stage: str
    partition: int
    offset: int
    timestamp: datetime | None
    key: str | None
    causation_id: str | None
    replay_of: str | None
    matched_by: str  # "header", or "adapter" for a source record produced without headers
    summary: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "stage": self.stage,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.timestamp.isoformat() if self.timestamp else None,
            "key": self.key,
            "causation_id": self.causation_id,
            "replay_of": self.replay_of,
            "matched_by": self.matched_by,
            "summary": self.summary,
        }


def design_name(topic: str, prefix: str) -> str:
    return topic[len(prefix) :] if prefix and topic.startswith(prefix) else topic


def hop_of(topic: str, record: RawRecord, matched_by: str = "header") -> Hop:
    return Hop(
        topic=topic,
        stage=STAGE.get(topic, "?"),
        partition=record.partition,
        offset=record.offset,
        timestamp=record.timestamp,
        key=record.key_text,
        causation_id=record.header(h.CAUSATION_ID),
        replay_of=record.header(h.REPLAY_OF),
        matched_by=matched_by,
        summary=summarize(topic, record),
    )


def _minting_adapters(crm_account_key: str) -> dict[str, Callable[[bytes], list[Any]]]:
    """Stage 1's adapters, each called as stage 1 calls it without an incoming header."""
    from connectors.clm import map_clm_event
    from connectors.salesforce import map_cdc_event
    from connectors.stripe import map_stripe_event

    def resolver(_source: Source, ref: str) -> str:
        return ref  # the customer id does not enter the correlation id

    def stripe(raw: bytes) -> list[Any]:
        return map_stripe_event(raw, resolver, None, crm_account_key=crm_account_key)

    return {
        BILLING_CHANGES: stripe,
        PAYMENTS_CHANGES: stripe,
        CRM_CHANGES: lambda raw: map_cdc_event(raw, resolver, None),
        CLM_CHANGES: lambda raw: map_clm_event(raw, resolver, None),
    }


def minted_correlations(
    topic: str, raw: bytes | None, adapters: Mapping[str, Callable[[bytes], list[Any]]]
) -> set[str]:
    """The correlation ids stage 1 gives the events of a source record that came without one."""
    adapter = adapters.get(topic)
    if adapter is None or not raw:
        return set()
    try:
        return {change.correlation_id for change in adapter(raw)}
    except Exception:  # rejected input mints nothing (stage 1 dead-lettered it)
        return set()


def customer_refs(records: Iterable[tuple[str, RawRecord]]) -> set[str]:
    """The source customer references (the source topics' keys) the canonical events name."""
    refs = (_json(r.value).get("customer_ref") for t, r in records if t == CANONICAL)
    return {ref for ref in refs if isinstance(ref, str) and ref}


def select_hops(
    records: Iterable[tuple[str, RawRecord]],
    correlation_id: str,
    adapters: Mapping[str, Callable[[bytes], list[Any]]] | None = None,
) -> list[Hop]:
    """The hops of one transaction among (design topic, record) pairs, in time order.

    A record matches on its `x-correlation-id` header. A source record without that header
    matches when the adapter stage 1 runs on it mints the same id; only records keyed by a
    customer reference of the transaction's canonical events are tried."""
    matched: list[tuple[str, RawRecord, str]] = []
    headerless: list[tuple[str, RawRecord]] = []
    for topic, record in records:
        value = record.header(h.CORRELATION_ID)
        if value == correlation_id:
            matched.append((topic, record, "header"))
        elif value is None and topic in SOURCE_TOPICS:
            headerless.append((topic, record))
    if headerless and adapters:
        refs = customer_refs((t, r) for t, r, _ in matched)
        for topic, record in headerless:
            if record.key_text in refs and correlation_id in minted_correlations(
                topic, record.value, adapters
            ):
                matched.append((topic, record, "adapter"))
    hops = [hop_of(topic, record, how) for topic, record, how in matched]
    epoch = datetime.min.replace(tzinfo=UTC)
    hops.sort(key=lambda hop: (hop.timestamp or epoch, _TOPIC_ORDER.get(hop.topic, 99), hop.offset))
    return hops


# --- reading the window ---------------------------------------------------------------------

Keep = Callable[[str, RawRecord], bool]


@dataclass
class Window:
    """What was kept of a read: (design topic, record) pairs; how many records were scanned,
    and whether the budget stopped the read before the end offsets."""

    records: list[tuple[str, RawRecord]] = field(default_factory=list)
    scanned: int = 0
    truncated: bool = False
    topics: list[str] = field(default_factory=list)


async def read_window(
    link: KafkaLink,
    topics: Mapping[str, str],
    since: datetime,
    budget: int,
    keep: Keep,
    keys: Mapping[str, Iterable[str]] | None = None,
) -> Window:
    """Scan every committed record written at or after `since`, up to the end offsets present
    now, of `topics` (broker name → design name), at most `budget` of them, and keep those
    `keep` accepts. `keys` (design name → message keys) narrows a topic to the partitions
    those keys hash to."""
    window = Window()
    tps: list[TopicPartition] = []
    for name, design in topics.items():
        found = await link.partitions(name)
        if found:
            window.topics.append(design)
        if found and keys is not None and design in keys:
            found = sorted({found[partition_for_key(k, len(found))] for k in keys[design]})
        tps += found
    if not tps:
        return window
    consumer = link.consumer
    consumer.assign(tps)
    starts = await consumer.offsets_for_times(dict.fromkeys(tps, int(since.timestamp() * 1000)))
    ends = await consumer.end_offsets(tps)
    pending: set[TopicPartition] = set()
    for tp in tps:
        start = starts.get(tp)
        first = start.offset if start is not None else ends[tp]
        if first < ends[tp]:
            consumer.seek(tp, first)
            pending.add(tp)
    consumer.pause(*(set(tps) - pending))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + link.timeout
    while pending:
        if loop.time() > deadline:
            raise ReplayError(f"the trace window was not read within {link.timeout:.0f}s")
        batch = await consumer.getmany(*pending, timeout_ms=200, max_records=5000)
        for tp, messages in batch.items():
            design = topics[tp.topic]
            for message in messages:
                if message.offset >= ends[tp]:
                    break
                window.scanned += 1
                record = raw_record(message)
                if keep(design, record):
                    window.records.append((design, record))
        for tp in list(pending):
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)
                consumer.pause(tp)
        if pending and window.scanned >= budget:
            window.truncated = True
            break
    return window


@dataclass
class Trace:
    correlation_id: str
    since: datetime
    hops: list[Hop]
    scanned: int
    truncated: bool
    topics: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "correlation_id": self.correlation_id,
            "since": self.since.isoformat(),
            "count": len(self.hops),
            "scanned": self.scanned,
            "truncated": self.truncated,
            "topics": self.topics,
            "hops": [hop.to_json() for hop in self.hops],
        }


async def trace(
    s: Settings,
    correlation_id: str,
    since: datetime,
    *,
    budget: int = DEFAULT_BUDGET,
    customer_id: str | None = None,
    timeout: float = TRACE_TIMEOUT_S,
) -> Trace:
    """Read the window of every topic a transaction crosses and keep its hops. With the
    customer known, the topics keyed by customer id are read on its partition only. When no
    source record carried the correlation header, the source topics are read a second time on
    the partitions of the customer references the canonical events name."""
    budget = max(1, min(budget, MAX_BUDGET))
    topics = {s.topic(name): name for name in TRACE_TOPICS}
    keys = {name: [customer_id] for name in CUSTOMER_KEYED} if customer_id else None

    def tagged(_topic: str, record: RawRecord) -> bool:
        return record.header(h.CORRELATION_ID) == correlation_id

    async with KafkaLink(s, timeout) as link:
        window = await read_window(link, topics, since, budget, tagged, keys)
        records, scanned, truncated = window.records, window.scanned, window.truncated
        refs = customer_refs(records)
        if refs and not any(t in SOURCE_TOPICS for t, _ in records) and scanned < budget:

            def untagged(_topic: str, record: RawRecord) -> bool:
                return record.header(h.CORRELATION_ID) is None and record.key_text in refs

            sources = {s.topic(name): name for name in SOURCE_TOPICS}
            more = await read_window(
                link, sources, since, budget - scanned, untagged, dict.fromkeys(SOURCE_TOPICS, refs)
            )
            records, scanned = records + more.records, scanned + more.scanned
            truncated = truncated or more.truncated
    hops = select_hops(records, correlation_id, _minting_adapters(s.crm_account_metadata_key))
    return Trace(correlation_id, since, hops, scanned, truncated, window.topics)
