"""`ledgerflow replay`: choosing what to re-drive (pure), and re-driving it on a real broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from click.testing import CliRunner

from canonical import codec
from canonical.exceptions import BusinessException, ExceptionReason, ExceptionStatus, MessageRef
from streams import headers as h
from streams.cli.replay import IsoTime, replay_command
from streams.operations.replay import (
    REPLAY_OF,
    KafkaLink,
    Outcome,
    RawRecord,
    ReplayCriteria,
    ReplayItem,
    ReplayKind,
    ReplayReport,
    dlq_entry,
    dlq_replay_headers,
    exception_replay_headers,
    latest_exceptions,
    plan_dlq,
    plan_exceptions,
    replay,
    replayed_exception,
)
from streams.settings import Settings

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DLQ = "ledgerflow.dlq"
EXCEPTIONS = "ledgerflow.exceptions"
BILLING = "billing.changes"
CRM = "crm.changes"


def dlq_record(
    offset: int,
    key: str | None,
    reason: str,
    source_topic: str | None = BILLING,
    at: datetime = T0,
    partition: int = 0,
    correlation: str | None = None,
) -> RawRecord:
    """A DLQ entry with the headers agents/outbox.send_to_dlq writes."""
    headers: list[tuple[str, bytes]] = []
    if correlation:
        headers.append((h.CORRELATION_ID, correlation.encode()))
    headers.append((h.CAUSATION_ID, f"{source_topic}/1/{40 + offset}".encode()))
    headers.append((h.DLQ_REASON, reason.encode()))
    if source_topic:
        headers += [
            (h.SOURCE_TOPIC, source_topic.encode()),
            (h.SOURCE_PARTITION, b"1"),
            (h.SOURCE_OFFSET, str(40 + offset).encode()),
        ]
    return RawRecord(
        topic=DLQ,
        partition=partition,
        offset=offset,
        timestamp=at,
        key=key.encode() if key else None,
        value=f'{{"n": {offset}}}'.encode(),
        headers=tuple(headers),
    )


def business_exception(exception_id: str, **over: Any) -> BusinessException:
    fields: dict[str, Any] = {
        "exception_id": exception_id,
        "reason": ExceptionReason.MISSING_GL_MAPPING,
        "message": "no GL account for price_platform_monthly",
        "customer_id": "cus_1",
        "correlation_id": f"corr-{exception_id}",
        "first_seen": T0,
        "last_seen": T0,
        "offending": MessageRef(topic=BILLING, partition=0, offset=7),
    }
    fields.update(over)
    return BusinessException(**fields)


def exception_record(
    exc: BusinessException | bytes, offset: int, partition: int = 0, at: datetime = T0
) -> RawRecord:
    value = exc if isinstance(exc, bytes) else codec.dumps(exc)
    key = None if isinstance(exc, bytes) else (exc.customer_id or exc.entity_id)
    return RawRecord(
        topic=EXCEPTIONS,
        partition=partition,
        offset=offset,
        timestamp=at,
        key=key.encode() if key else None,
        value=value,
    )


# --- pure: filters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("criteria", "accepted"),
    [
        (ReplayCriteria(), True),
        (ReplayCriteria(customer="cus_1"), True),
        (ReplayCriteria(customer="cus_10"), False),
        (ReplayCriteria(reason="schema_invalid"), True),
        (ReplayCriteria(reason="schema"), True),
        (ReplayCriteria(reason="invalid"), False),  # a prefix, not a substring
        (ReplayCriteria(since=T0), True),  # since is inclusive
        (ReplayCriteria(since=T0 + timedelta(seconds=1)), False),
        (ReplayCriteria(until=T0), False),  # until is exclusive
        (ReplayCriteria(until=T0 + timedelta(seconds=1)), True),
        (ReplayCriteria(source_topic=BILLING), True),  # the design name, under the prefix
        (ReplayCriteria(source_topic=f"p1.{BILLING}"), True),  # the name as written
        (ReplayCriteria(source_topic=CRM), False),
        (ReplayCriteria(customer="cus_1", reason="schema_invalid", source_topic=BILLING), True),
    ],
)
def test_criteria_filter_by_customer_reason_prefix_time_and_source_topic(
    criteria: ReplayCriteria, accepted: bool
) -> None:
    got = criteria.accepts(
        customer="cus_1",
        reason="schema_invalid: data.object.customer: missing",
        at=T0,
        source_topic=f"p1.{BILLING}",
        topic_prefix="p1.",
    )
    assert got is accepted


def test_a_record_without_timestamp_fails_any_time_filter() -> None:
    assert ReplayCriteria().accepts(customer=None, reason="x", at=None, source_topic=None)
    assert not ReplayCriteria(since=T0).accepts(customer=None, reason="x", at=None, source_topic=None)


def test_criteria_refuse_naive_or_inverted_times() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ReplayCriteria(since=datetime(2026, 3, 1))
    with pytest.raises(ValueError, match="before until"):
        ReplayCriteria(since=T0, until=T0)


def test_iso_time_option_needs_an_offset_and_normalises_to_utc() -> None:
    assert IsoTime().convert("2026-03-01T14:00:00+02:00", None, None) == T0
    assert IsoTime().convert("2026-03-01T12:00:00Z", None, None) == T0
    with pytest.raises(click.BadParameter, match="no UTC offset"):
        IsoTime().convert("2026-03-01T12:00:00", None, None)
    with pytest.raises(click.BadParameter, match="not an ISO-8601"):
        IsoTime().convert("yesterday", None, None)


# --- pure: DLQ -------------------------------------------------------------------------------


def test_dlq_entry_reads_the_outbox_headers() -> None:
    entry = dlq_entry(dlq_record(3, "cus_1", "not_json: empty", correlation="corr-9", partition=1))
    assert (entry.reason, entry.source_topic, entry.correlation_id) == ("not_json: empty", BILLING, "corr-9")
    assert entry.ref == "dlq:1:3"


def test_dlq_entry_without_correlation_gets_the_id_the_outbox_minted() -> None:
    entry = dlq_entry(dlq_record(3, "cus_1", "not_json"))
    assert entry.correlation_id == h.correlation_of(None, BILLING, "1", "43")


def test_dlq_replay_headers_keep_the_transaction_and_name_the_entry() -> None:
    entry = dlq_entry(dlq_record(3, "cus_1", "not_json", correlation="corr-9", partition=1))
    assert dlq_replay_headers(entry) == [
        (h.CORRELATION_ID, b"corr-9"),
        (h.CAUSATION_ID, b"dlq/1/3"),
        (REPLAY_OF, b"dlq:1:3"),
    ]


def test_plan_dlq_keeps_matching_entries_in_dlq_order_and_skips_those_without_a_source() -> None:
    records = [
        dlq_record(2, "cus_1", "schema_invalid: a", partition=1),
        dlq_record(0, "cus_1", "schema_invalid: b"),
        dlq_record(1, "cus_2", "schema_invalid: c"),
        dlq_record(3, "cus_1", "not_json: d"),
        dlq_record(4, "cus_1", "schema_invalid: e", source_topic=None),
    ]
    plan = plan_dlq(records, ReplayCriteria(customer="cus_1", reason="schema_invalid"))
    assert plan.scanned == 5
    assert [e.ref for e in plan.dlq] == ["dlq:0:0", "dlq:1:2"]
    assert [(i.ref, i.outcome, i.why) for i in plan.skipped] == [
        ("dlq:0:4", Outcome.SKIPPED, f"no {h.SOURCE_TOPIC} header")
    ]


# --- pure: exceptions ------------------------------------------------------------------------


def test_latest_record_per_exception_wins_by_offset_within_a_partition() -> None:
    opened = business_exception("e1")
    resolved = opened.model_copy(update={"status": ExceptionStatus.RESOLVED})
    # A producer clock may run backwards; the log order of one partition decides.
    latest, unreadable = latest_exceptions(
        [exception_record(opened, 4, at=T0 + timedelta(hours=1)), exception_record(resolved, 9, at=T0)]
    )
    assert unreadable == 0
    assert [(e.exception.status, e.record.offset) for e in latest] == [(ExceptionStatus.RESOLVED, 9)]


def test_latest_record_per_exception_across_partitions_is_the_last_written() -> None:
    # The key moved: first raised under the entity id, later under the customer.
    first = business_exception("e1", customer_id=None, entity_id="in_1")
    later = business_exception("e1", status=ExceptionStatus.RESOLVED, last_seen=T0 + timedelta(hours=2))
    records = [
        exception_record(later, 1, partition=1, at=T0 + timedelta(hours=2)),
        exception_record(first, 5, partition=0, at=T0),
    ]
    latest, _ = latest_exceptions(records)
    assert [e.exception.status for e in latest] == [ExceptionStatus.RESOLVED]
    latest, _ = latest_exceptions(list(reversed(records)))
    assert [e.exception.status for e in latest] == [ExceptionStatus.RESOLVED]


def test_latest_exceptions_count_what_does_not_decode() -> None:
    records = [
        exception_record(b"not json", 0),
        exception_record(b'{"exception_id": "e9"}', 1),
        exception_record(business_exception("e1"), 2),
        exception_record(business_exception("e2"), 3, at=T0 - timedelta(hours=1)),
    ]
    latest, unreadable = latest_exceptions(records)
    assert unreadable == 2
    assert [e.exception.exception_id for e in latest] == ["e2", "e1"]  # oldest first


def test_plan_exceptions_takes_open_ones_and_skips_those_raised_by_a_timer() -> None:
    replayed = business_exception("e2", customer_id="cus_2")
    records = [
        exception_record(business_exception("e1"), 0),
        exception_record(replayed, 1),
        exception_record(replayed.model_copy(update={"status": ExceptionStatus.REPLAYED}), 2),
        exception_record(
            business_exception("e3", offending=None, reason=ExceptionReason.UNKNOWN_CUSTOMER), 3
        ),
        exception_record(business_exception("e4", offending=MessageRef(topic=CRM, partition=0, offset=1)), 4),
    ]
    plan = plan_exceptions(records, ReplayCriteria())
    assert [e.exception.exception_id for e in plan.exceptions] == ["e1", "e4"]
    assert [(i.ref, i.reason) for i in plan.skipped] == [("exception:e3", "unknown_customer")]
    assert "timer" in (plan.skipped[0].why or "")

    by_topic = plan_exceptions(records, ReplayCriteria(source_topic=CRM))
    assert [e.exception.exception_id for e in by_topic.exceptions] == ["e4"]
    assert by_topic.skipped == []  # a timer's exception has no source topic to match
    by_customer = plan_exceptions(records, ReplayCriteria(customer="cus_2"))
    assert len(by_customer) == 0 and by_customer.skipped == []  # e2's latest record is REPLAYED


def test_exception_replay_headers_keep_the_originals_and_name_the_exception() -> None:
    original = RawRecord(
        topic=BILLING,
        partition=0,
        offset=7,
        timestamp=T0,
        key=b"cus_1",
        value=b"{}",
        headers=(
            (h.CORRELATION_ID, b"corr-src"),
            (h.CAUSATION_ID, b"webhook:stripe:evt_1"),
            ("x-other", b"1"),
        ),
    )
    exc = business_exception("e1")
    assert exception_replay_headers(original, exc) == [
        (h.CORRELATION_ID, b"corr-src"),
        ("x-other", b"1"),
        (h.CAUSATION_ID, b"exception:e1"),
        (REPLAY_OF, b"exception:e1"),
    ]
    bare = RawRecord(BILLING, 0, 7, T0, b"cus_1", b"{}")
    assert (h.CORRELATION_ID, b"corr-e1") in exception_replay_headers(bare, exc)


def test_a_replayed_exception_counts_the_attempt() -> None:
    exc = business_exception("e1", attempts=2)
    later = T0 + timedelta(days=1)
    out = replayed_exception(exc, later)
    assert (out.status, out.attempts, out.last_seen, out.first_seen) == (
        ExceptionStatus.REPLAYED,
        3,
        later,
        T0,
    )
    assert codec.loads(BusinessException, codec.dumps(out)) == out


# --- pure: report ----------------------------------------------------------------------------


def _item(ref: str, topic: str | None, reason: str, outcome: Outcome, why: str | None = None) -> ReplayItem:
    return ReplayItem(ref, topic, reason, "cus_1", "corr-1", T0, outcome, why)


def test_report_counts_per_source_topic_and_reason() -> None:
    report = ReplayReport(
        ReplayKind.DLQ,
        dry_run=False,
        scanned=10,
        unreadable=0,
        items=[
            _item("dlq:0:1", BILLING, "schema_invalid", Outcome.REPLAYED),
            _item("dlq:0:2", BILLING, "schema_invalid", Outcome.SKIPPED, "produce failed: KafkaTimeoutError"),
            _item("dlq:1:1", CRM, "not_json", Outcome.REPLAYED),
        ],
    )
    assert (report.matched, report.replayed, len(report.skipped)) == (3, 2, 1)
    data = report.to_json()
    assert data["groups"] == [
        {"source_topic": BILLING, "reason": "schema_invalid", "matched": 2, "replayed": 1, "skipped": 1},
        {"source_topic": CRM, "reason": "not_json", "matched": 1, "replayed": 1, "skipped": 0},
    ]
    assert orjson.loads(orjson.dumps(data)) == data
    text = report.render()
    assert text.splitlines()[0] == "replay dlq: 10 records read, 3 matched, 2 replayed, 1 skipped"
    assert "billing.changes  schema_invalid        2         1        1" in text
    assert "dlq:0:2 (schema_invalid): produce failed: KafkaTimeoutError" in text


def test_dry_run_report_lists_what_would_be_replayed() -> None:
    report = ReplayReport(
        ReplayKind.EXCEPTIONS,
        dry_run=True,
        scanned=4,
        unreadable=1,
        items=[_item("exception:e1", BILLING, "closed_period", Outcome.WOULD_REPLAY)],
    )
    text = report.render()
    assert "(dry run, nothing produced)" in text and "1 would replay" in text
    assert "1 records could not be decoded" in text
    assert "exception:e1 -> billing.changes (closed_period, correlation corr-1)" in text


def test_replay_is_a_ledgerflow_command() -> None:
    from streams.cli.main import cli

    assert cli.commands["replay"] is replay_command


# --- real broker -----------------------------------------------------------------------------


def isolated(bootstrap: str) -> Settings:
    return Settings(kafka_bootstrap=bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:8]}.")


async def create_topics(s: Settings, *names: str, partitions: int = 2) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(s.topic(n), num_partitions=partitions, replication_factor=1) for n in names]
        )
    finally:
        await admin.close()


Outgoing = tuple[str, str | None, bytes, dict[str, str], datetime | None]
"""(topic, key, value, headers, timestamp) to produce."""


async def produce(s: Settings, records: Sequence[Outgoing]) -> list[tuple[int, int]]:
    """Send in order and return each record's (partition, offset)."""
    producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        out = []
        for topic, key, value, headers, at in records:
            meta = await producer.send_and_wait(
                topic,
                value,
                key=key.encode() if key else None,
                headers=[(k, v.encode()) for k, v in headers.items()],
                timestamp_ms=int(at.timestamp() * 1000) if at else None,
            )
            out.append((meta.partition, meta.offset))
        return out
    finally:
        await producer.stop()


async def read_all(s: Settings, name: str) -> list[RawRecord]:
    """Everything on a topic now (bounded: to the end offsets present at the start)."""
    async with KafkaLink(s, timeout=20) as link:
        return await link.read_to_end(s.topic(name))


def dead_letter(
    s: Settings, key: str, value: bytes, reason: str, source: str, at: datetime, correlation: str | None
) -> Outgoing:
    headers = {
        h.CAUSATION_ID: f"{s.topic(source)}/0/12",
        h.DLQ_REASON: reason,
        h.SOURCE_TOPIC: s.topic(source),
        h.SOURCE_PARTITION: "0",
        h.SOURCE_OFFSET: "12",
    }
    if correlation:
        headers[h.CORRELATION_ID] = correlation
    return (s.topic(DLQ), key, value, headers, at)


async def seed_dlq(s: Settings) -> list[tuple[int, int]]:
    await create_topics(s, DLQ, BILLING, CRM)
    no_source = {h.DLQ_REASON: "internal_error: KeyError", h.CORRELATION_ID: "corr-5"}
    return await produce(
        s,
        [
            dead_letter(s, "cus_A", b'{"n": 1}', "schema_invalid: data", BILLING, T0, "corr-1"),
            dead_letter(s, "acc_B", b"not json", "not_json: body", CRM, T0 + timedelta(hours=1), "corr-2"),
            dead_letter(
                s, "cus_A", b'{"n": 3}', "schema_invalid: lines", BILLING, T0 + timedelta(hours=2), "corr-3"
            ),
            dead_letter(
                s, "cus_C", b'{"n": 4}', "schema_invalid: id", BILLING, T0 + timedelta(hours=3), None
            ),
            (s.topic(DLQ), "cus_D", b'{"n": 5}', no_source, T0 + timedelta(hours=1)),
        ],
    )


async def test_dlq_dry_run_lists_matches_and_produces_nothing(kafka_bootstrap: str) -> None:
    s = isolated(kafka_bootstrap)
    await seed_dlq(s)
    ticks: list[int] = []
    report = await replay(s, ReplayKind.DLQ, ReplayCriteria(), dry_run=True, tick=ticks.append, timeout=20)
    assert (report.scanned, report.matched, report.would_replay, report.replayed) == (5, 5, 4, 0)
    assert [(i.customer, i.why) for i in report.skipped] == [("cus_D", f"no {h.SOURCE_TOPIC} header")]
    assert sum(ticks) == 4
    assert await read_all(s, BILLING) == [] and await read_all(s, CRM) == []
    assert len(await read_all(s, DLQ)) == 5


async def test_dlq_replay_redrives_exactly_the_matching_entries(kafka_bootstrap: str) -> None:
    s = isolated(kafka_bootstrap)
    positions = await seed_dlq(s)
    criteria = ReplayCriteria(customer="cus_A", reason="schema_invalid", since=T0 + timedelta(hours=1))
    report = await replay(s, ReplayKind.DLQ, criteria, timeout=20)

    partition, offset = positions[2]  # the second cus_A entry: the first is before --since
    assert [(i.ref, i.outcome) for i in report.items] == [(f"dlq:{partition}:{offset}", Outcome.REPLAYED)]
    billing = await read_all(s, BILLING)
    assert [(r.key, r.value) for r in billing] == [(b"cus_A", b'{"n": 3}')]
    assert dict(billing[0].headers) == {
        h.CORRELATION_ID: b"corr-3",
        h.CAUSATION_ID: f"dlq/{partition}/{offset}".encode(),
        REPLAY_OF: f"dlq:{partition}:{offset}".encode(),
    }
    assert await read_all(s, CRM) == []

    # The design name of a source topic works as a filter; a missing correlation is re-minted
    # exactly as the outbox minted it.
    report = await replay(s, ReplayKind.DLQ, ReplayCriteria(source_topic=CRM), timeout=20)
    assert report.replayed == 1
    assert [(r.key, r.value, r.header(h.CORRELATION_ID)) for r in await read_all(s, CRM)] == [
        (b"acc_B", b"not json", "corr-2")
    ]
    report = await replay(s, ReplayKind.DLQ, ReplayCriteria(customer="cus_C"), timeout=20)
    assert report.replayed == 1
    assert (await read_all(s, BILLING))[-1].header(h.CORRELATION_ID) == h.correlation_of(
        None, s.topic(BILLING), "0", "12"
    )


async def test_replay_of_a_missing_dlq_topic_finds_nothing(kafka_bootstrap: str) -> None:
    s = isolated(kafka_bootstrap)
    report = await replay(s, ReplayKind.DLQ, ReplayCriteria(), timeout=20)
    assert (report.scanned, report.matched) == (0, 0)
    async with KafkaLink(s, timeout=20) as link:
        assert s.topic(DLQ) not in await link.consumer.topics()  # reading never creates it


async def test_exceptions_replay_redrives_the_offending_message_and_marks_it_replayed(
    kafka_bootstrap: str,
) -> None:
    s = isolated(kafka_bootstrap)
    await create_topics(s, EXCEPTIONS, BILLING)
    source_headers = {h.CORRELATION_ID: "corr-src-1", h.CAUSATION_ID: "webhook:stripe:evt_1", "x-kept": "yes"}
    sources = await produce(
        s,
        [
            (s.topic(BILLING), "cus_1", b'{"id": "evt_1"}', source_headers, None),
            (s.topic(BILLING), "cus_2", b'{"id": "evt_2"}', {h.CORRELATION_ID: "corr-src-2"}, None),
            (s.topic(BILLING), "cus_3", b'{"id": "evt_3"}', {h.CORRELATION_ID: "corr-src-3"}, None),
        ],
    )

    def ref(i: int) -> MessageRef:
        return MessageRef(topic=s.topic(BILLING), partition=sources[i][0], offset=sources[i][1])

    e1 = business_exception("e1", customer_id="cus_1", offending=ref(0))
    e2 = business_exception(
        "e2", customer_id="cus_2", reason=ExceptionReason.UNKNOWN_CUSTOMER, offending=None
    )
    e3 = business_exception("e3", customer_id="cus_2", reason=ExceptionReason.CLOSED_PERIOD, offending=ref(1))
    e4 = business_exception("e4", customer_id="cus_3", reason=ExceptionReason.CLOSED_PERIOD, offending=ref(2))
    gone = MessageRef(topic=s.topic(BILLING), partition=0, offset=999)
    e5 = business_exception("e5", customer_id="cus_4", reason=ExceptionReason.ERP_REJECTED, offending=gone)
    resolved = e3.model_copy(update={"status": ExceptionStatus.RESOLVED})
    exceptions = [e1, e2, e3, e4, e5, resolved]
    await produce(
        s,
        [
            *[
                (
                    s.topic(EXCEPTIONS),
                    e.customer_id,
                    codec.dumps(e),
                    {h.CORRELATION_ID: e.correlation_id},
                    None,
                )
                for e in exceptions
            ],
            (s.topic(EXCEPTIONS), "cus_9", b"garbage", {}, None),
        ],
    )

    # Dry run: what would go, what cannot and why; nothing is produced anywhere.
    report = await replay(s, ReplayKind.EXCEPTIONS, ReplayCriteria(), dry_run=True, timeout=20)
    assert (report.scanned, report.unreadable) == (7, 1)
    assert {i.ref: i.outcome for i in report.items} == {
        "exception:e1": Outcome.WOULD_REPLAY,
        "exception:e2": Outcome.SKIPPED,
        "exception:e4": Outcome.WOULD_REPLAY,
        "exception:e5": Outcome.SKIPPED,
    }
    why = {i.ref: i.why or "" for i in report.skipped}
    assert "timer" in why["exception:e2"] and "no longer on the topic" in why["exception:e5"]
    assert len(await read_all(s, BILLING)) == 3 and len(await read_all(s, EXCEPTIONS)) == 7

    # Only missing_gl_mapping: e1's message goes again, as it was, and e1 becomes REPLAYED.
    now = T0 + timedelta(days=2)
    report = await replay(s, ReplayKind.EXCEPTIONS, ReplayCriteria(reason="missing_"), now=now, timeout=20)
    assert [(i.ref, i.outcome) for i in report.items] == [("exception:e1", Outcome.REPLAYED)]
    billing = await read_all(s, BILLING)
    assert len(billing) == 4
    again = next(r for r in billing if r.header(REPLAY_OF))
    assert (again.key, again.value) == (b"cus_1", b'{"id": "evt_1"}')
    assert list(again.headers) == [
        (h.CORRELATION_ID, b"corr-src-1"),
        ("x-kept", b"yes"),
        (h.CAUSATION_ID, b"exception:e1"),
        (REPLAY_OF, b"exception:e1"),
    ]
    written = [r for r in await read_all(s, EXCEPTIONS) if r.header(REPLAY_OF)]
    assert len(written) == 1 and len(await read_all(s, EXCEPTIONS)) == 8
    update = codec.loads(BusinessException, written[0].value or b"")
    assert written[0].key == b"cus_1"
    assert (update.exception_id, update.status, update.attempts, update.last_seen) == (
        "e1",
        ExceptionStatus.REPLAYED,
        2,
        now,
    )

    # Everything open now: e1 is no longer open, so only e4's message goes.
    report = await replay(s, ReplayKind.EXCEPTIONS, ReplayCriteria(), now=now, timeout=20)
    assert sorted((i.ref, i.outcome) for i in report.items) == [
        ("exception:e2", Outcome.SKIPPED),
        ("exception:e4", Outcome.REPLAYED),
        ("exception:e5", Outcome.SKIPPED),
    ]
    replays = [v for r in await read_all(s, BILLING) if (v := r.header(REPLAY_OF))]
    assert sorted(replays) == ["exception:e1", "exception:e4"]


async def test_cli_prints_a_json_report(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> None:
    s = isolated(kafka_bootstrap)
    await seed_dlq(s)
    monkeypatch.setattr("streams.settings.settings", s)
    # The command runs its own event loop: invoke it off this test's running loop.
    result = await asyncio.to_thread(
        CliRunner().invoke, replay_command, ["dlq", "--reason", "schema_invalid", "--dry-run", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = orjson.loads(result.stdout)
    assert (data["dry_run"], data["matched"], data["would_replay"]) == (True, 3, 3)
    assert data["groups"] == [
        {
            "source_topic": s.topic(BILLING),
            "reason": "schema_invalid",
            "matched": 3,
            "replayed": 3,
            "skipped": 0,
        }
    ]
    assert await read_all(s, BILLING) == []
