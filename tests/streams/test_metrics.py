"""The metric helpers agents call, read back from the worker's registry (no broker, no Faust run)."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from unittest import mock

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from canonical import EntityType, ExceptionReason
from connectors.erp import CircuitBreaker, ErpPermanentError, ErpTransientError, ErpUncertainError
from streams import metrics
from streams.settings import Settings

CUSTOMER = "cust-crm-001SIM000000042"


def value(name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def event(topic: str, *, value: Any = None, headers: dict[str, bytes] | None = None, ts: float = 0.0) -> Any:
    return SimpleNamespace(
        message=SimpleNamespace(topic=topic, timestamp=ts), value=value, headers=headers or {}, key=CUSTOMER
    )


def exposition() -> str:
    return metrics.exposition()[0].decode()


@pytest.fixture
def prefixed() -> Iterator[None]:
    with mock.patch.object(metrics, "settings", Settings(topic_prefix="t42.")):
        yield


def test_a_batch_counts_its_events_by_design_topic_and_times_itself(prefixed: None) -> None:
    before = value("ledgerflow_events_received_total", topic="billing.changes")
    batches = value("ledgerflow_batch_size_events_count", agent="ingest_stripe_changes")
    events = [event("t42.billing.changes")] * 3 + [event("t42.payments.changes")]
    agent = metrics.agent_label("agents.ingest.ingest_stripe_changes")
    started = metrics.batch_taken(agent, events)
    metrics.batch_done(agent, started)
    assert value("ledgerflow_events_received_total", topic="billing.changes") == before + 3
    assert value("ledgerflow_batch_size_events_count", agent="ingest_stripe_changes") == batches + 1
    assert value("ledgerflow_batch_duration_seconds_count", agent="ingest_stripe_changes") >= 1
    assert 'topic="t42.' not in exposition()


def test_stage2_counts_duplicates_and_stale_by_entity_type_only() -> None:
    dup = value("ledgerflow_duplicates_suppressed_total", entity_type="invoice")
    stale = value("ledgerflow_stale_versions_ignored_total", entity_type="contract")
    for outcome in ("duplicate", "duplicate", "applied", "commanded"):
        metrics.stage2_outcome(EntityType.INVOICE, outcome)
    metrics.stage2_outcome(EntityType.CONTRACT, "stale")
    assert value("ledgerflow_duplicates_suppressed_total", entity_type="invoice") == dup + 2
    assert value("ledgerflow_stale_versions_ignored_total", entity_type="contract") == stale + 1


@dataclass
class Waiting:
    change: Any
    parked_at: datetime


@dataclass
class Command:
    command: str
    idempotency_key: str = "post_invoice-stripe-in_1"
    extra: list[str] = field(default_factory=list)


def test_commands_emitted_and_their_latency_from_the_source_message() -> None:
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    fresh = event("ledgerflow.canonical", value=SimpleNamespace(event_id="evt_new"))
    fresh.headers = {metrics.SOURCE_TIMESTAMP: str(now_ms - 2500).encode()}
    parked_at = datetime.now(UTC) - timedelta(seconds=40)
    waited = Waiting(SimpleNamespace(event_id="evt_waited"), parked_at)
    stamps = metrics.source_stamps([fresh], [waited])
    assert stamps == {"evt_new": now_ms - 2500, "evt_waited": int(parked_at.timestamp() * 1000)}

    emitted = value("ledgerflow_commands_emitted_total", command="post_invoice")
    timed = value("ledgerflow_end_to_end_latency_seconds_count", to="command_emitted", command="post_invoice")
    total = value("ledgerflow_end_to_end_latency_seconds_sum", to="command_emitted", command="post_invoice")
    held = value("ledgerflow_validation_failures_total", reason="missing_tax_code")
    commands = [(Command("post_invoice"), "evt_new"), (Command("post_invoice"), "evt_waited")]
    commands.append((Command("post_invoice"), "evt_unknown"))  # no stamp: counted, not timed
    exceptions = [(SimpleNamespace(reason=ExceptionReason.MISSING_TAX_CODE), "evt_new")]
    metrics.stage2_emitted(commands, exceptions, stamps)
    assert value("ledgerflow_commands_emitted_total", command="post_invoice") == emitted + 3
    latency = "ledgerflow_end_to_end_latency_seconds"
    assert value(f"{latency}_count", to="command_emitted", command="post_invoice") == timed + 2
    added = value(f"{latency}_sum", to="command_emitted", command="post_invoice") - total
    assert 42.4 < added < 45.0  # 2.5 s + 40 s, plus the test's own time
    assert value("ledgerflow_validation_failures_total", reason="missing_tax_code") == held + 1


def test_the_source_timestamp_is_carried_or_taken_from_the_source_message() -> None:
    source = event("crm.changes", ts=1_767_229_200.123)
    assert metrics.source_ms(source) == 1_767_229_200_123
    assert metrics.stamp(metrics.source_ms(source)) == {metrics.SOURCE_TIMESTAMP: "1767229200123"}
    carried = event("ledgerflow.canonical", headers={metrics.SOURCE_TIMESTAMP: b"1767229100000"}, ts=1.7e9)
    assert metrics.source_ms(carried) == 1_767_229_100_000
    assert metrics.source_ms(event("x", headers={metrics.SOURCE_TIMESTAMP: b"soon"})) is None
    assert metrics.source_ms(mock.Mock()) is None  # the sink's tests hand over mocks
    assert metrics.stamp(None) == {}


def test_a_ready_timestamp_is_carried_only_where_it_is_later_than_the_source() -> None:
    source, ready = 1_767_229_200_000, 1_767_229_202_500
    assert metrics.stamp(source, ready) == {
        metrics.SOURCE_TIMESTAMP: str(source),
        metrics.READY_TIMESTAMP: str(ready),
    }
    assert metrics.stamp(ready, source) == {metrics.SOURCE_TIMESTAMP: str(ready)}  # ready when it came
    assert metrics.stamp(None, ready) == {metrics.READY_TIMESTAMP: str(ready)}  # the sink's results
    both = event("erp.results", headers={k: v.encode() for k, v in metrics.stamp(source, ready).items()})
    assert metrics.ready_ms(both) == ready
    assert metrics.ready_ms(event("ledgerflow.canonical", headers={metrics.SOURCE_TIMESTAMP: b"42"})) == 42
    # An internal message without either header is not timed from its own Kafka timestamp:
    # that would make a document it released look ready only now.
    assert metrics.ready_ms(event("erp.results", ts=1.7e9)) is None


def test_erp_calls_are_timed_by_command_and_outcome_and_failures_classified() -> None:
    cases = [
        (None, "ok", None),
        (ErpTransientError("HTTP_429", "slow down", retry_after=1, status=429), "rate_limited", "4xx"),
        (ErpTransientError("HTTP_503", "down", status=503), "transient", "5xx"),
        (ErpUncertainError("NO_RESPONSE", "ReadTimeout"), "uncertain", "none"),
        (ErpPermanentError("INVALID_KEY_OR_REF", "no such customer", status=400), "rejected", "4xx"),
    ]
    for error, outcome, code_class in cases:
        calls = value("ledgerflow_erp_call_duration_seconds_count", command="apply_payment", outcome=outcome)
        labels = {"command": "apply_payment", "reason": outcome, "code_class": code_class or "2xx"}
        failures = value("ledgerflow_erp_failures_total", **labels)
        expected = pytest.raises(type(error)) if error else contextlib.nullcontext()
        with expected, metrics.erp_call("apply_payment"):
            if error:
                raise error
        after = value("ledgerflow_erp_call_duration_seconds_count", command="apply_payment", outcome=outcome)
        assert after == calls + 1, outcome
        failed = value("ledgerflow_erp_failures_total", **labels) - failures
        assert failed == (0 if error is None else 1), outcome


def test_erp_confirmation_is_timed_only_for_the_command_the_message_carried() -> None:
    name = "ledgerflow_end_to_end_latency_seconds_count"
    before = value(name, to="erp_confirmed", command="post_invoice")
    command = Command("post_invoice")
    stamp = str(int(datetime.now(UTC).timestamp() * 1000) - 1000).encode()
    own = event("erp.commands", value=command, headers={metrics.SOURCE_TIMESTAMP: stamp})
    metrics.erp_confirmed(command, own)
    other = event("erp.commands", value=Command("post_invoice", "other-key"), headers=own.headers)
    metrics.erp_confirmed(command, other)  # a queued command delivered on another's message
    assert value(name, to="erp_confirmed", command="post_invoice") == before + 1


def test_dead_letters_are_counted_by_the_reason_code_before_the_colon() -> None:
    before = value("ledgerflow_dlq_entries_total", reason="not_json")
    internal = value("ledgerflow_dlq_entries_total", reason="internal_error")
    metrics.dead_lettered("not_json: Expecting value at line 1 column 1 for acct 001SIM000000042")
    metrics.dead_lettered("internal_error: KeyError")
    assert value("ledgerflow_dlq_entries_total", reason="not_json") == before + 1
    assert value("ledgerflow_dlq_entries_total", reason="internal_error") == internal + 1
    assert "001SIM" not in exposition()


def test_the_breaker_is_read_at_scrape_time() -> None:
    clock = [100.0]
    breaker = CircuitBreaker(2, 5.0, clock=lambda: clock[0])
    metrics.watch_breaker("erp", breaker)
    assert value("ledgerflow_circuit_breaker_state", target="erp") == 0
    breaker.record_failure()
    breaker.record_failure()
    assert value("ledgerflow_circuit_breaker_state", target="erp") == 2
    assert value("ledgerflow_circuit_breaker_opened_total", target="erp") == 1
    clock[0] += 5.0
    assert value("ledgerflow_circuit_breaker_state", target="erp") == 1  # half-open: one probe
    breaker.record_success()
    assert value("ledgerflow_circuit_breaker_state", target="erp") == 0


def test_consumer_lag_keeps_only_the_partitions_assigned_now(prefixed: None) -> None:
    metrics.set_consumer_lag({("t42.erp.commands", 0): 12, ("t42.erp.commands", 1): 0})
    assert value("ledgerflow_consumer_lag_messages", topic="erp.commands", partition="0") == 12
    metrics.set_consumer_lag({("t42.erp.commands", 1): 3})
    text = exposition()
    assert 'ledgerflow_consumer_lag_messages{partition="0",topic="erp.commands"}' not in text
    assert value("ledgerflow_consumer_lag_messages", topic="erp.commands", partition="1") == 3


def exception_json(exception_id: str, reason: str, first_seen: datetime, status: str = "open") -> bytes:
    return orjson.dumps(
        {
            "exception_id": exception_id,
            "reason": reason,
            "message": "held",
            "customer_id": CUSTOMER,
            "correlation_id": "c-1",
            "first_seen": first_seen.isoformat(),
            "last_seen": first_seen.isoformat(),
            "status": status,
        }
    )


def test_open_exceptions_keep_the_latest_state_of_each_id_and_the_first_time_it_was_open() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    now = [(t0 + timedelta(hours=2)).timestamp()]
    book = metrics.OpenExceptions(clock=lambda: now[0])
    book.apply(exception_json("e1", "missing_tax_code", t0))
    book.apply(exception_json("e2", "missing_tax_code", t0 + timedelta(hours=1)))
    book.apply(exception_json("e3", "erp_unavailable", t0 + timedelta(minutes=90)))
    book.apply(exception_json("e1", "missing_tax_code", t0 + timedelta(hours=2)))  # raised again
    book.apply(exception_json("e3", "erp_unavailable", t0, status="resolved"))
    book.apply(exception_json("e4", "a_reason_from_the_future", t0))
    book.apply(b"not json")
    book.apply(b'{"reason": "no id"}')
    assert book.by_reason() == {"missing_tax_code": (2, 7200.0), "other": (1, 7200.0)}

    registry = CollectorRegistry()
    registry.register(book)
    assert registry.get_sample_value("ledgerflow_exceptions_open", {"reason": "missing_tax_code"}) == 2
    assert registry.get_sample_value("ledgerflow_exceptions_open", {"reason": "erp_unavailable"}) == 0
    age = "ledgerflow_exceptions_oldest_open_age_seconds"
    assert registry.get_sample_value(age, {"reason": "missing_tax_code"}) == 7200
    assert registry.get_sample_value(age, {"reason": "erp_unavailable"}) is None  # none open
    book.apply(exception_json("e1", "missing_tax_code", t0, status="replayed"))
    assert registry.get_sample_value(age, {"reason": "missing_tax_code"}) == 3600
    assert "e1" not in generate_latest(registry).decode()


def test_every_reason_of_the_enum_has_an_open_exceptions_series_from_the_start() -> None:
    reasons = {
        s.labels["reason"]
        for family in text_string_to_metric_families(exposition())
        if family.name == "ledgerflow_exceptions_open"
        for s in family.samples
    }
    assert reasons >= {r.value for r in ExceptionReason}


def test_a_label_never_grows_past_its_cap() -> None:
    family = metrics._Family(
        metrics.Counter("ledgerflow_test_capped", "test", ["reason"], registry=CollectorRegistry()), limit=10
    )
    for n in range(1000):
        family(f"reason-{n}-{'x' * 100}").inc()
    samples = [s for f in family.metric.collect() for s in f.samples if s.name.endswith("_total")]
    assert len(samples) == 11
    assert sum(s.value for s in samples) == 1000
    assert {s.labels["reason"] for s in samples} >= {"other"}
    assert max(len(s.labels["reason"]) for s in samples) <= metrics.LABEL_VALUE_MAX_CHARS


# Label values: code-defined sets only. Partitions and topics are bounded by the deployment.
BOUNDED = {
    "topic": None,
    "partition": re.compile(r"^\d{1,4}$"),
    "entity_type": {e.value for e in EntityType},
    "command": set(metrics.ERP_CALLS),
    "reason": None,
    "stage": set(metrics.PARK_STAGES),
    "outcome": set(metrics.ERP_OUTCOMES),
    "code_class": {"1xx", "2xx", "3xx", "4xx", "5xx", "none"},
    "to": {"command_emitted", "erp_confirmed"},
    "target": {"erp", "crm"},
    "agent": None,
    "le": None,
    "channel": re.compile(r"^/(data|event)/\w{1,80}$"),  # the channels the settings name
    "api_version": re.compile(r"^(\d{4}-\d{2}-\d{2}(\.[a-z]{1,20})?|other)$"),
}


def test_no_label_carries_data() -> None:
    """After the helpers above ran with a customer id in every input, no series names it, and
    every label is one of the bounded ones."""
    for family in text_string_to_metric_families(exposition()):
        if not family.name.startswith("ledgerflow_") or family.name.startswith("ledgerflow_test"):
            continue
        for sample in family.samples:
            for label, text in sample.labels.items():
                assert label in BOUNDED, (family.name, label)
                allowed = BOUNDED[label]
                if isinstance(allowed, set):
                    assert text in allowed, (family.name, label, text)
                elif isinstance(allowed, re.Pattern):
                    assert allowed.match(text), (family.name, label, text)
                assert CUSTOMER not in text and "001SIM" not in text, (family.name, label, text)


def test_faust_sensor_metrics_are_named_by_convention_and_in_seconds() -> None:
    from streams.web.observability import FaustSensor

    registry = CollectorRegistry()
    sensor = FaustSensor(registry)
    sensor._metrics.consumer_commit_latency.observe(1500.0)  # Faust observes milliseconds
    sensor.on_send_completed(None, sensor.time() - 0.25, None)  # type: ignore[arg-type]
    assert registry.get_sample_value("ledgerflow_faust_commit_latency_seconds_sum") == 1.5
    sent = registry.get_sample_value("ledgerflow_faust_producer_send_latency_seconds_sum")
    assert sent is not None and 0.25 <= sent < 0.5
    assert (
        registry.get_sample_value("ledgerflow_faust_producer_send_latency_seconds_bucket", {"le": "0.25"})
        == 0
    )
    assert (
        registry.get_sample_value("ledgerflow_faust_producer_send_latency_seconds_bucket", {"le": "+Inf"})
        == 1
    )
    names = {f.name for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert all(n.startswith("ledgerflow_faust_") for n in names)
    assert not [n for n in names if re.search(r"_(ms|latency)$", n)]


class _Owner:
    pass


class _Stream:
    shortlabel = "Stream: Topic: billing.changes"
    task_owner = _Owner()


def test_faust_sensor_counts_per_message_in_plain_numbers_and_serves_them_at_scrape() -> None:
    """Faust calls the sensor for every message, event, table read and send: those are plain
    counts until Prometheus asks."""
    from faust.types import TP

    from streams.web.observability import FaustSensor

    registry = CollectorRegistry()
    sensor = FaustSensor(registry)
    tp, stream = TP("billing.changes", 3), _Stream()

    class Message:
        time_in: float | None = None

    for offset in range(5):
        message = Message()
        sensor.on_message_in(tp, offset, message)  # type: ignore[arg-type]
        state = sensor.on_stream_event_in(tp, offset, stream, None)  # type: ignore[arg-type]
        sensor.on_stream_event_out(tp, offset, stream, None, state)  # type: ignore[arg-type]
        if offset < 4:
            sensor.on_message_out(tp, offset, message)  # type: ignore[arg-type]
    sensor.on_send_initiated(None, "erp.commands", None, 1, 1)  # type: ignore[arg-type]
    sensor.count_sent({"erp.commands": 2, "erp.results": 1})

    def value(name: str, labels: dict[str, str] | None = None) -> float | None:
        return registry.get_sample_value(f"ledgerflow_faust_{name}", labels or {})

    assert value("messages_received_total") == 5 and value("active_messages") == 1
    assert value("topic_messages_received_total", {"topic": "billing.changes"}) == 5
    assert value("partition_read_offset", {"topic": "billing.changes", "partition": "3"}) == 4
    assert value("events_total") == 5 and value("active_events") == 0
    assert value("stream_events_total", {"stream": "stream.topic_billing.changes.events"}) == 5
    assert value("event_runtime_seconds_count") == 5
    assert value("topic_messages_sent_total", {"topic": "topic.erp.commands"}) == 3
    assert value("messages_sent_total") == 4
    assert not [
        m for m in registry.collect() if m.name == "ledgerflow_faust_messages_received" and len(m.samples) > 1
    ]


def test_faust_sensor_labels_each_series_once_and_counts_every_call() -> None:
    """Faust's sensor labels by keyword several times per call: the child is looked up once."""
    from streams.web.observability import faust_metrics

    registry = CollectorRegistry()
    faust = faust_metrics(registry)
    ends = faust.topic_partition_end_offset
    first = ends.labels(topic="erp.commands", partition=0)
    assert ends.labels(topic="erp.commands", partition=0) is first
    for _ in range(3):
        ends.labels(topic="erp.commands", partition=0).inc()
    ends.labels("erp.results", 1).inc()
    sample = "ledgerflow_faust_partition_end_offset"
    assert registry.get_sample_value(sample, {"topic": "erp.commands", "partition": "0"}) == 3
    assert registry.get_sample_value(sample, {"topic": "erp.results", "partition": "1"}) == 1
    ends.remove("erp.commands", "0")
    assert registry.get_sample_value(sample, {"topic": "erp.commands", "partition": "0"}) is None
    ends.labels(topic="erp.commands", partition=0).inc()  # a fresh child after the removal
    assert registry.get_sample_value(sample, {"topic": "erp.commands", "partition": "0"}) == 1


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (make tools)")
def test_promtool_finds_no_problem_in_the_whole_exposition() -> None:
    from streams.web.observability import FaustSensor

    registry = CollectorRegistry()
    FaustSensor(registry)
    text = exposition() + generate_latest(registry).decode()
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr


def test_readiness_says_why_not() -> None:
    from streams.web.observability import readiness_problem

    def problem(
        started: bool = True, rebalancing: bool = False, recovering: bool = False, assigned: int = 4
    ) -> str | None:
        return readiness_problem(
            started=started, rebalancing=rebalancing, recovering=recovering, assigned=assigned
        )

    assert problem() is None
    assert problem(started=False) == "starting: tables not recovered yet"
    assert problem(rebalancing=True) == "rebalancing"
    assert problem(recovering=True) == "recovering tables"
    assert problem(assigned=0) == "no partitions assigned"


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


class FakeConsumer:
    def __init__(self) -> None:
        self._committed_offset = {TP("erp.commands", 0): 90, TP("erp.commands", 2): None}
        self._read_offset = {TP("erp.commands", 2): 49}
        self.highwaters = {TP("erp.commands", 0): 100, TP("erp.commands", 1): None, TP("erp.commands", 2): 50}
        self.highwaters[TP("lf-invoices-changelog", 0)] = 7

    def assignment(self) -> set[TP]:
        return set(self.highwaters)

    def highwater(self, tp: TP) -> int | None:
        return self.highwaters[tp]


def test_lag_is_highwater_minus_committed_for_stream_partitions() -> None:
    from streams.web.observability import consumer_lag

    lag = consumer_lag(FakeConsumer(), {"lf-invoices-changelog"})
    # partition 1 has not been fetched yet (no high watermark); 2 has read to its end, uncommitted
    assert lag == {("erp.commands", 0): 10, ("erp.commands", 2): 0}
