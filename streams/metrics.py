"""Every Prometheus metric of a ledgerflow worker, in one registry, and the calls agents make.

Import-light on purpose (prometheus-client, the settings and the canonical enums, no Faust):
agents call one function at the point where a thing happens, once per batch or per customer
group where the pipeline already works that way. `streams.web.observability` serves `registry`
on `GET /metrics` and feeds the sampled gauges (lag, open exceptions, parked events).

Names are `ledgerflow_*` with the unit in the name. Label values come from sets the code
defines (design topic names, entity and command types, one enum of reasons, error classes),
never from data; `_Family` also caps every labelled metric at `SERIES_PER_METRIC_MAX` label
combinations, past which values are counted under "other", so a bug cannot turn customer ids
into time series.

End-to-end latency starts at the Kafka record timestamp of the source message (what the
platform or the webhook ingress stamped when it produced it). Stage 1 copies it into the
`x-source-timestamp` header (milliseconds since the epoch) of the canonical events it sends,
stage 2 into the commands it emits, so the sink can measure to the ERP's confirmation too.
"""

from __future__ import annotations

import re
import time
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Protocol

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from canonical import AnyErpCommand, EntityType, ExceptionReason
from connectors.erp.errors import (
    REQUEST_LIMIT_EXCEEDED,
    ErpAuthError,
    ErpPermanentError,
    ErpTransientError,
    ErpUncertainError,
)
from connectors.errors import RejectionReason
from streams.settings import settings

# `*_created` samples double every counter's and histogram's series for a value nobody here
# graphs; the switch is process-wide, and this module owns the process's metrics.
disable_created_metrics()

SOURCE_TIMESTAMP = "x-source-timestamp"
"""Header: Kafka timestamp (ms since the epoch) of the source message a canonical event or a
command descends from."""
READY_TIMESTAMP = "x-ready-timestamp"
"""Header: Kafka timestamp (ms since the epoch) of the *last* source message a command needed,
where that is later than its own source message: a document that waited for a prerequisite
which arrived after it (an invoice before its customer, a payment before its invoice: Stripe
does not promise order) was ready only then. Stage 2 sets it on commands, the sink copies it
onto the command's result, so a document released by that result inherits it. `source → ready`
is the input's disorder; `ready → command` is ledgerflow's own latency, ERP round trips of the
gates included (the bench reports both)."""
SERIES_PER_METRIC_MAX = 500
LABEL_VALUE_MAX_CHARS = 64
OTHER = "other"

COMMANDS: tuple[str, ...] = tuple(
    cls.model_fields["command"].default for cls in typing.get_args(typing.get_args(AnyErpCommand)[0])
)
READ_NUMBERS = "document_numbers"
"""The `command` label of the sink's batched read of document numbers (one per record type and
batch), beside the commands' own ERP calls."""
ERP_CALLS: tuple[str, ...] = (*COMMANDS, READ_NUMBERS)
"""Every value the ERP call metrics' `command` label takes."""
ENTITY_TYPES: tuple[str, ...] = tuple(e.value for e in EntityType)
EXCEPTION_REASONS: tuple[str, ...] = tuple(r.value for r in ExceptionReason)
PARK_STAGES = ("ingest", "invoice_payments", "core")
"""ingest: billing events waiting for their customer's identity; core: documents waiting for
what must reach the ERP first (customer, contract, invoice)."""
DLQ_REASON_CODES = (*(r.value for r in RejectionReason), "internal_error")
"""Dead-letter reasons every deployment can meet (source adapters' rejections, agent bugs)."""
ERP_OUTCOMES = ("ok", "rate_limited", "transient", "uncertain", "rejected", "auth", "error")

ERP_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
END_TO_END_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)
BATCH_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

registry = CollectorRegistry()
"""The worker's own registry (not prometheus-client's global one): what `/metrics` serves."""
ProcessCollector(namespace="ledgerflow", registry=registry)


def _clean(value: object) -> str:
    text = str(value)
    return text if len(text) <= LABEL_VALUE_MAX_CHARS else text[:LABEL_VALUE_MAX_CHARS]


class _Family:
    """A labelled metric with its children cached (`labels()` takes a lock and sorts kwargs on
    every call) and at most SERIES_PER_METRIC_MAX label combinations."""

    def __init__(self, metric: Any, limit: int = SERIES_PER_METRIC_MAX) -> None:
        self.metric = metric
        self.limit = limit
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            if len(self._children) >= self.limit:
                values = (OTHER,) * len(values)
                child = self._children.get(values)
            if child is None:
                child = self.metric.labels(*(_clean(v) for v in values))
                self._children[values] = child
        return child

    def remove(self, *values: str) -> None:
        if self._children.pop(values, None) is not None:
            self.metric.remove(*(_clean(v) for v in values))

    def labelled(self) -> list[tuple[str, ...]]:
        return list(self._children)


events_received = _Family(
    Counter(
        "ledgerflow_events_received",
        "Messages taken by the agents, by topic (design name, without the deployment's prefix).",
        ["topic"],
        registry=registry,
    )
)
duplicates_suppressed = _Family(
    Counter(
        "ledgerflow_duplicates_suppressed",
        "Events stage 2 had already applied (redeliveries, platform retries), by entity type.",
        ["entity_type"],
        registry=registry,
    )
)
stale_versions_ignored = _Family(
    Counter(
        "ledgerflow_stale_versions_ignored",
        "Events older than the version stage 2 holds (late delivery), by entity type.",
        ["entity_type"],
        registry=registry,
    )
)
events_parked = _Family(
    Gauge(
        "ledgerflow_events_parked",
        "Events waiting for a prerequisite on this worker's partitions: stage=ingest billing events "
        "waiting for their customer, stage=invoice_payments Stripe invoice payments waiting for their "
        "invoice, stage=core documents waiting for what must be in the ERP first.",
        ["stage"],
        registry=registry,
    )
)
validation_failures = _Family(
    Counter(
        "ledgerflow_validation_failures",
        "Documents stage 2 held back by its rules (validation, lifecycle, contract gates), by reason.",
        ["reason"],
        registry=registry,
    )
)
commands_emitted = _Family(
    Counter(
        "ledgerflow_commands_emitted",
        "ERP posting commands stage 2 emitted, by command type.",
        ["command"],
        registry=registry,
    )
)
erp_call_duration = _Family(
    Histogram(
        "ledgerflow_erp_call_duration_seconds",
        "One ERP call (one attempt) by command type and outcome.",
        ["command", "outcome"],
        buckets=ERP_CALL_BUCKETS,
        registry=registry,
    )
)
erp_failures = _Family(
    Counter(
        "ledgerflow_erp_failures",
        "Failed ERP calls (attempts) by command, reason and HTTP status class (none: no answer).",
        ["command", "reason", "code_class"],
        registry=registry,
    )
)
stripe_unknown_api_versions = _Family(
    Counter(
        "ledgerflow_stripe_unknown_api_versions",
        "Stripe Events of an api_version ledgerflow does not know, read with the nearest shapes it "
        "has (a version newer than ledgerflow's: upgrade; label 'other' for an undated value).",
        ["api_version"],
        registry=registry,
    )
)
dlq_entries = _Family(
    Counter(
        "ledgerflow_dlq_entries",
        "Messages dead-lettered, by reason code (the x-dlq-reason header before ':').",
        ["reason"],
        registry=registry,
    )
)
end_to_end_latency = _Family(
    Histogram(
        "ledgerflow_end_to_end_latency_seconds",
        "From the source message's Kafka timestamp to the command emitted (to=command_emitted) "
        "or to the ERP's confirmation (to=erp_confirmed), by command type.",
        ["to", "command"],
        buckets=END_TO_END_BUCKETS,
        registry=registry,
    )
)
consumer_lag = _Family(
    Gauge(
        "ledgerflow_consumer_lag_messages",
        "Messages not yet committed by this worker: high watermark minus committed offset, "
        "per assigned partition (sampled every few seconds).",
        ["topic", "partition"],
        registry=registry,
    )
)
batch_size = _Family(
    Histogram(
        "ledgerflow_batch_size_events",
        "Events per batch an agent takes.",
        ["agent"],
        buckets=BATCH_SIZE_BUCKETS,
        registry=registry,
    )
)
batch_duration = _Family(
    Histogram(
        "ledgerflow_batch_duration_seconds",
        "Time an agent spends on one batch (from taking it to asking for the next).",
        ["agent"],
        buckets=BATCH_SECONDS_BUCKETS,
        registry=registry,
    )
)
salesforce_undecodable = _Family(
    Counter(
        "ledgerflow_salesforce_undecodable_events",
        "Salesforce Pub/Sub events the subscriber could not decode (sent to the DLQ), by reason.",
        ["reason"],
        registry=registry,
    )
)
salesforce_events = _Family(
    Counter(
        "ledgerflow_salesforce_events",
        "Salesforce Pub/Sub events the subscriber wrote to crm.changes, by channel.",
        ["channel"],
        registry=registry,
    )
)
salesforce_resyncs = _Family(
    Counter(
        "ledgerflow_salesforce_resyncs_required",
        "Times a stored replay id was refused (past retention or corrupted): the changes since it "
        "was last seen are lost on the bus and need `ledgerflow resync salesforce`, by channel.",
        ["channel"],
        registry=registry,
    )
)
SALESFORCE_UNDECODABLE_REASONS = ("unreadable_schema", "undecodable_avro", "bad_bitmap")

# Every series of a code-defined label set exists from the start: a rate over a series that
# appears only on the first event misses that event, and alerts on absent series stay silent.
for _entity in ENTITY_TYPES:
    duplicates_suppressed(_entity)
    stale_versions_ignored(_entity)
for _stage in PARK_STAGES:
    events_parked(_stage)
for _command in COMMANDS:
    commands_emitted(_command)
for _reason in EXCEPTION_REASONS:
    validation_failures(_reason)
for _code in DLQ_REASON_CODES:
    dlq_entries(_code)
for _code in SALESFORCE_UNDECODABLE_REASONS:
    salesforce_undecodable(_code)


def design_topic(topic: str) -> str:
    """A broker-side topic name without the deployment's LEDGERFLOW_TOPIC_PREFIX."""
    prefix = settings.topic_prefix
    return topic[len(prefix) :] if prefix and topic.startswith(prefix) else topic


# Pipeline ---------------------------------------------------------------------------------


def agent_label(stream_prefix: str) -> str:
    """An agent's name from its stream's prefix (`agents.ingest.ingest_crm_changes`)."""
    return stream_prefix.rsplit(".", 1)[-1] or "stream"


def batch_taken(agent: str, events: Sequence[Any]) -> float:
    """A batch arrived: count its events by topic; returns the start of its processing."""
    per_topic: dict[str, int] = {}
    for event in events:
        topic = event.message.topic
        per_topic[topic] = per_topic.get(topic, 0) + 1
    for topic, n in per_topic.items():
        events_received(design_topic(topic)).inc(n)
    batch_size(agent).observe(len(events))
    return time.perf_counter()


def batch_done(agent: str, started: float) -> None:
    batch_duration(agent).observe(time.perf_counter() - started)


def stage2_outcome(entity_type: EntityType, outcome: str) -> None:
    """One event's outcome in stage 2: duplicates and stale versions are counted."""
    if outcome == "duplicate":
        duplicates_suppressed(entity_type.value).inc()
    elif outcome == "stale":
        stale_versions_ignored(entity_type.value).inc()


class _Raised(Protocol):
    @property
    def reason(self) -> ExceptionReason: ...


def stage2_emitted(
    commands: Iterable[tuple[Any, str]],
    exceptions: Iterable[tuple[_Raised, str]],
    stamps: Mapping[str, int],
) -> None:
    """One customer group's decisions: commands by type, with their latency from the source
    message (`stamps`: causation event id → source timestamp in ms); held documents by reason."""
    now_ms = time.time() * 1000.0
    for command, causation in commands:
        kind: str = command.command
        commands_emitted(kind).inc()
        source = stamps.get(causation)
        if source is not None:
            end_to_end_latency("command_emitted", kind).observe(max(0.0, now_ms - source) / 1000.0)
    for exc, _ in exceptions:
        validation_failures(exc.reason.value).inc()


def dlq_reason_code(reason: str) -> str:
    """The x-dlq-reason's code (before ':') as a label: `not_json`, `internal_error`,
    `undecodable_canonical_event` …"""
    code = re.sub(r"[^a-z0-9]+", "_", reason.split(":", 1)[0].lower()).strip("_")
    return code or "unknown"


def dead_lettered(reason: str) -> None:
    dlq_entries(dlq_reason_code(reason)).inc()


def stripe_unknown_api_version(version: str) -> None:
    label = version if re.fullmatch(r"\d{4}-\d{2}-\d{2}(\.[a-z]{1,20})?", version) else "other"
    stripe_unknown_api_versions(label).inc()


def set_parked(stage: str, count: int) -> None:
    events_parked(stage).set(count)


# Source timestamps ------------------------------------------------------------------------


def header_ms(headers: Any, name: str = SOURCE_TIMESTAMP) -> int | None:
    """A timestamp header (ms since the epoch) of a message's headers, or None."""
    try:
        value = headers.get(name) if headers else None
    except AttributeError:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return int(value) if isinstance(value, str) and value.isdigit() else None


def source_ms(event: Any) -> int | None:
    """The source timestamp an event carries, or its own Kafka timestamp (a source message)."""
    carried = header_ms(getattr(event, "headers", None))
    if carried is not None:
        return carried
    timestamp = getattr(getattr(event, "message", None), "timestamp", None)  # seconds, from Faust
    return int(timestamp * 1000) if isinstance(timestamp, int | float) and timestamp > 0 else None


def ready_ms(event: Any) -> int | None:
    """When the last source message an internal message (a canonical event, a command, a
    result) depends on arrived: its ready timestamp, else its source timestamp (None without
    either: then nothing downstream is timed from it)."""
    headers = getattr(event, "headers", None)
    carried = header_ms(headers, READY_TIMESTAMP)
    return carried if carried is not None else header_ms(headers)


def stamp(ms: int | None, ready: int | None = None) -> dict[str, str]:
    """Extra headers (for `headers.outgoing`) carrying a source timestamp on, and a ready
    timestamp where it is later."""
    out = {} if ms is None else {SOURCE_TIMESTAMP: str(ms)}
    if ready is not None and (ms is None or ready > ms):
        out[READY_TIMESTAMP] = str(ready)
    return out


class _Waiting(Protocol):
    @property
    def change(self) -> Any: ...
    @property
    def parked_at(self) -> datetime: ...


def source_stamps(events: Iterable[Any], waiting: Iterable[_Waiting]) -> dict[str, int]:
    """Canonical event id → source timestamp (ms) for one customer group. A document that
    waited since an earlier batch lost its message: it counts from when stage 2 parked it."""
    stamps = {w.change.event_id: int(w.parked_at.timestamp() * 1000) for w in waiting}
    for event in events:
        event_id = getattr(event.value, "event_id", None)
        ms = header_ms(event.headers)
        if isinstance(event_id, str) and ms is not None:
            stamps[event_id] = ms
    return stamps


# ERP --------------------------------------------------------------------------------------


def erp_outcome(exc: Exception | None) -> tuple[str, str]:
    """(outcome, HTTP status class) of one ERP call from what it raised."""
    if exc is None:
        return "ok", "2xx"
    status = getattr(exc, "status", None)
    code_class = f"{status // 100}xx" if isinstance(status, int) and 100 <= status < 600 else "none"
    if isinstance(exc, ErpUncertainError):
        return "uncertain", code_class
    if isinstance(exc, ErpTransientError):
        limited = status == 429 or exc.code == REQUEST_LIMIT_EXCEEDED
        return ("rate_limited" if limited else "transient"), code_class
    if isinstance(exc, ErpPermanentError):
        return "rejected", code_class
    if isinstance(exc, ErpAuthError):
        return "auth", code_class
    return "error", code_class


@contextmanager
def erp_call(command: str) -> Iterator[None]:
    """Time one ERP call and count it by outcome (wrap only the call, not the waits)."""
    started = time.perf_counter()
    try:
        yield
    except Exception as exc:  # a cancelled call (shutdown) says nothing about the ERP
        _erp_called(command, started, exc)
        raise
    _erp_called(command, started, None)


def _erp_called(command: str, started: float, failure: Exception | None) -> None:
    outcome, code_class = erp_outcome(failure)
    erp_call_duration(command, outcome).observe(time.perf_counter() - started)
    if failure is not None:
        erp_failures(command, outcome, code_class).inc()


class _Command(Protocol):
    @property
    def idempotency_key(self) -> str: ...


def carried_by(command: _Command, event: Any) -> bool:
    """Whether `event` is the command's own message: a command that queued behind a parked one
    is delivered on another's, whose timestamps are not its own."""
    return bool(getattr(getattr(event, "value", None), "idempotency_key", None) == command.idempotency_key)


def erp_confirmed(command: _Command, event: Any) -> None:
    """The ERP confirmed a command (POSTED): latency from the source message of the command's
    own message (one delivered on another's is not timed)."""
    if not carried_by(command, event):
        return
    ms = header_ms(getattr(event, "headers", None))
    if ms is not None:
        kind: str = getattr(command, "command", OTHER)
        end_to_end_latency("erp_confirmed", kind).observe(max(0.0, time.time() * 1000.0 - ms) / 1000.0)


class _Breaker(Protocol):
    @property
    def state(self) -> Any: ...
    @property
    def opened_count(self) -> int: ...


BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


class BreakerCollector(Collector):
    """Circuit breakers read at scrape time: the hot path pays nothing."""

    def __init__(self) -> None:
        self.breakers: dict[str, _Breaker] = {}

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def _families(self) -> tuple[GaugeMetricFamily, CounterMetricFamily]:
        state = GaugeMetricFamily(
            "ledgerflow_circuit_breaker_state",
            "Circuit breaker of calls to a target system: 0 closed, 1 half-open, 2 open.",
            labels=["target"],
        )
        opened = CounterMetricFamily(
            "ledgerflow_circuit_breaker_opened",
            "Times the circuit breaker opened (since the worker's agent started).",
            labels=["target"],
        )
        return state, opened

    def collect(self) -> Iterable[Metric]:
        state, opened = self._families()
        for target, breaker in sorted(self.breakers.items()):
            state.add_metric([target], BREAKER_STATES.get(str(getattr(breaker.state, "value", "")), 0))
            opened.add_metric([target], breaker.opened_count)
        return [state, opened]


breakers = BreakerCollector()
registry.register(breakers)


def watch_breaker(target: str, breaker: _Breaker) -> None:
    """Expose a breaker (the latest one per target: a restarted agent makes a new one)."""
    breakers.breakers[target] = breaker


# Consumer lag -----------------------------------------------------------------------------


def set_consumer_lag(lag: Mapping[tuple[str, int], int]) -> None:
    """Replace the lag gauges with one sample: partitions no longer assigned disappear."""
    current = {(design_topic(topic), str(partition)): n for (topic, partition), n in lag.items()}
    for labels in consumer_lag.labelled():
        if labels not in current:
            consumer_lag.remove(*labels)
    for (topic, partition), n in current.items():
        consumer_lag(topic, partition).set(n)


# Open exceptions --------------------------------------------------------------------------


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


class OpenExceptions(Collector):
    """The latest state of every exception id this process read from `ledgerflow.exceptions`,
    keeping only the open ones (a re-raise keeps the first time it was seen open), exposed
    at scrape time as counts and the oldest age per reason."""

    def __init__(self, clock: Any = time.time) -> None:
        self._open: dict[str, tuple[str, float]] = {}
        self._clock = clock

    def clear(self) -> None:
        self._open.clear()

    def apply(self, value: bytes) -> None:
        """One message of the exceptions topic (JSON of a BusinessException)."""
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError:
            return
        if not isinstance(data, dict) or not isinstance(data.get("exception_id"), str):
            return
        exception_id: str = data["exception_id"]
        if data.get("status", "open") != "open":
            self._open.pop(exception_id, None)
            return
        reason = data.get("reason")
        label = reason if reason in EXCEPTION_REASONS else OTHER
        first_seen = _epoch(data.get("first_seen")) or self._clock()
        previous = self._open.get(exception_id)
        if previous is not None:
            first_seen = min(first_seen, previous[1])
        self._open[exception_id] = (label, first_seen)

    def by_reason(self) -> dict[str, tuple[int, float]]:
        """reason → (open count, age in seconds of the oldest)."""
        now = self._clock()
        out: dict[str, tuple[int, float]] = {}
        for reason, first_seen in self._open.values():
            count, age = out.get(reason, (0, 0.0))
            out[reason] = (count + 1, max(age, now - first_seen))
        return out

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "ledgerflow_exceptions_open",
                "Open business exceptions by reason, as read from ledgerflow.exceptions.",
                labels=["reason"],
            ),
            GaugeMetricFamily(
                "ledgerflow_exceptions_oldest_open_age_seconds",
                "Age of the oldest open exception of each reason (from its first_seen).",
                labels=["reason"],
            ),
        )

    def collect(self) -> Iterable[Metric]:
        count, age = self._families()
        seen = self.by_reason()
        for reason in (*EXCEPTION_REASONS, OTHER):
            n, oldest = seen.get(reason, (0, 0.0))
            if reason != OTHER or n:
                count.add_metric([reason], n)
            if n:
                age.add_metric([reason], round(oldest, 3))
        return [count, age]


open_exceptions = OpenExceptions()
registry.register(open_exceptions)


def exposition() -> tuple[bytes, str]:
    """The registry in Prometheus' text format, and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
