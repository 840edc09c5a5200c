"""Health, readiness and Prometheus metrics on every worker's web server (design §5).

`GET /health` answers while the event loop runs. `GET /ready` is 200 only once the worker
has started (Faust's "Worker ready"), holds a partition assignment, and neither rebalances
nor recovers tables; otherwise 503 with the reason. `GET /metrics` serves `streams.metrics`'
registry. None of the three needs the API token.

Besides the pipeline's own metrics (`streams.metrics`), this module feeds:
* Faust's Prometheus sensor (`faust.sensors.prometheus.PrometheusMonitor`), installed when
  the worker initialises. Its `setup_prometheus_sensors` would add a second `/metrics` route
  and names that break Prometheus' conventions (`*_ms` histograms, latencies without a
  unit), so the same sensor is given metrics built here: `ledgerflow_faust_*`, latencies in
  seconds, in the worker's registry. `FaustSensor` serves what it counts per message from
  plain counts at scrape time.
* consumer lag per partition, sampled every LAG_SAMPLE_S seconds;
* open exceptions by reason and the oldest one's age: a reader follows
  `ledgerflow.exceptions` from its start on every worker, without a consumer group, so each
  worker reports the whole picture after a restart or a rebalance (aggregate with `max`, not
  `sum`). A Faust agent in the group would see only the partitions it owns, and only from
  their committed offsets: after a restart the age of a week-old exception would reset to
  nothing. Only open exceptions are kept in memory.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from faust import web
from faust.sensors.monitor import Monitor
from faust.sensors.prometheus import MS_LATENCY_BUCKETS, FaustMetrics, PrometheusMonitor
from faust.types import TP, CollectionT, EventT, Message, StreamT
from faust.types.transports import ProducerT
from faust.types.tuples import PendingMessage, RecordMetadata
from mode import Service
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from streams import metrics, rocksdb
from streams.app import app, release_free_memory
from streams.kafka_io import kafka_security
from streams.settings import settings
from streams.topic_names import EXCEPTIONS

log = logging.getLogger(__name__)

LAG_SAMPLE_S = 5.0
TRIM_EVERY_S = 30.0
"""How often a worker returns free heap pages to the OS (streams.app.release_free_memory)."""
EXCEPTIONS_POLL_MS = 1000
EXCEPTIONS_RETRY_S = 5.0


# Faust's own sensor -----------------------------------------------------------------------


class _CachedLabels:
    """`labels()` remembering its children: Faust's sensor labels a metric by keyword several
    times per message (topic, partition, stream, table), and prometheus-client's `labels` takes
    a lock and rebuilds the key on every call."""

    def labels(self, *values: Any, **by_name: Any) -> Any:
        cache: dict[Any, Any] = self.__dict__.setdefault("_children_by_call", {})
        key = (values, tuple(by_name.items()))
        child = cache.get(key)
        if child is None:
            child = cache[key] = super().labels(*values, **by_name)  # type: ignore[misc]
        return child

    def remove(self, *values: Any) -> None:
        self.__dict__.pop("_children_by_call", None)
        super().remove(*values)  # type: ignore[misc]

    def clear(self) -> None:
        self.__dict__.pop("_children_by_call", None)
        super().clear()  # type: ignore[misc]


class _Counter(_CachedLabels, Counter):
    pass


class _Gauge(_CachedLabels, Gauge):
    pass


class _MillisecondsAsSeconds(Histogram):
    """Faust's monitor observes latencies in milliseconds; Prometheus wants seconds."""

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        super().observe(amount / 1000.0, exemplar)


PER_MESSAGE: dict[str, str] = {
    "messages_received": "Messages received by the consumer.",
    "active_messages": "Messages received and not yet acknowledged.",
    "topic_messages_received": "Messages received.",
    "partition_read_offset": "Offset of the last message read.",
    "event_runtime": "Time a stream spent on one event.",
    "events": "Events taken by streams.",
    "active_events": "Events being processed by streams.",
    "stream_events": "Events taken, per stream.",
    "table_operations": "Table reads and writes.",
    "topic_messages_sent": "Messages sent, per topic.",
    "messages_sent": "Messages the producer sent.",
    "producer_send_latency": "Time from send to broker ack.",
}
"""The metrics of `faust_metrics` that Faust updates per message, with their help text:
`FaustSensor.collect` serves them from plain counts."""


LATENCY_BUCKETS_S = tuple(b / 1000.0 for b in MS_LATENCY_BUCKETS)


def faust_metrics(registry: CollectorRegistry, prefix: str = "ledgerflow_faust") -> FaustMetrics:
    """The metrics Faust's PrometheusMonitor updates, named by Prometheus' conventions. Those it
    would update per message are left out of `registry` (in a registry of their own that nobody
    reads): `FaustSensor` serves them from plain counts."""
    scratch = CollectorRegistry(auto_describe=False)

    def counter(name: str, doc: str = "", labels: Iterable[str] = ()) -> Counter:
        into = scratch if name in PER_MESSAGE else registry
        return _Counter(f"{prefix}_{name}", doc or PER_MESSAGE[name], list(labels), registry=into)

    def gauge(name: str, doc: str = "", labels: Iterable[str] = ()) -> Gauge:
        into = scratch if name in PER_MESSAGE else registry
        return _Gauge(f"{prefix}_{name}", doc or PER_MESSAGE[name], list(labels), registry=into)

    def seconds(name: str, doc: str = "") -> Histogram:
        into = scratch if name in PER_MESSAGE else registry
        return _MillisecondsAsSeconds(
            f"{prefix}_{name}_seconds", doc or PER_MESSAGE[name], buckets=LATENCY_BUCKETS_S, registry=into
        )

    tp = ("topic", "partition")
    return FaustMetrics(
        messages_received=counter("messages_received"),
        active_messages=gauge("active_messages"),
        messages_received_per_topics=counter("topic_messages_received", labels=["topic"]),
        messages_received_per_topics_partition=gauge("partition_read_offset", labels=tp),
        events_runtime_latency=seconds("event_runtime"),
        total_events=counter("events"),
        total_active_events=gauge("active_events"),
        total_events_per_stream=counter("stream_events", labels=["stream"]),
        table_operations=counter("table_operations", labels=["table", "operation"]),
        topic_messages_sent=counter("topic_messages_sent", labels=["topic"]),
        total_sent_messages=counter("messages_sent"),
        producer_send_latency=seconds("producer_send_latency"),
        total_error_messages_sent=counter("producer_send_errors", "Messages the producer failed to send."),
        producer_error_send_latency=seconds("producer_error_latency", "Time from send to send error."),
        assignment_operations=counter("assignments", "Partition assignments, by result.", ["operation"]),
        assign_latency=seconds("assignment_latency", "Time the partition assignor took."),
        total_rebalances=gauge("rebalances_in_progress", "Rebalances started and not yet returned."),
        total_rebalances_recovering=gauge("rebalances_recovering", "Rebalances recovering tables."),
        rebalance_done_consumer_latency=seconds("rebalance_return_latency", "Rebalance until assignment."),
        rebalance_done_latency=seconds("rebalance_latency", "Rebalance until recovery completed."),
        count_metrics_by_name=gauge("counts", "Faust's named counts.", ["metric"]),
        http_status_codes=counter("http_responses", "Web responses, by status code.", ["status_code"]),
        http_latency=seconds("http_latency", "Time to answer a web request."),
        topic_partition_end_offset=gauge("partition_end_offset", "End offset (high watermark).", tp),
        topic_partition_offset_commited=gauge("partition_committed_offset", "Committed offset.", tp),
        consumer_commit_latency=seconds("commit_latency", "Time an offset commit took."),
    )


class _Buckets:
    """A latency histogram as plain counts: Faust observes one per event and per message sent,
    and prometheus-client's `observe` takes a lock and walks its buckets in Python each time."""

    def __init__(self, bounds_s: Sequence[float]) -> None:
        self.bounds = list(bounds_s)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative, buckets = 0, []
        for bound, count in zip([*map(floatToGoString, self.bounds), "+Inf"], self.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.sum)


class FaustSensor(PrometheusMonitor):
    """Faust's Prometheus sensor, with the figures it updates per message kept as the plain
    counts of Faust's own `Monitor` and read when Prometheus scrapes (it is a collector in the
    worker's registry): per message and per event, PrometheusMonitor labelled and locked
    several metrics and normalised the stream's name (~9% of a worker's busy time in a backlog
    profile). The series and their names are the same; what happens once per commit,
    assignment or rebalance still goes to the metrics of `faust_metrics`."""

    def __init__(self, registry: CollectorRegistry, prefix: str = "ledgerflow_faust") -> None:
        # The per-message metrics of FaustMetrics are never updated: this collector stands in.
        super().__init__(metrics=faust_metrics(registry, prefix))
        self._prefix = prefix
        self._event_runtime = _Buckets(LATENCY_BUCKETS_S)
        self._send_latency = _Buckets(LATENCY_BUCKETS_S)
        registry.register(self)

    # Per message and per event: Faust's plain bookkeeping only.
    def on_message_in(self, tp: TP, offset: int, message: Message) -> None:
        Monitor.on_message_in(self, tp, offset, message)

    def on_stream_event_in(
        self, tp: TP, offset: int, stream: StreamT, event: EventT
    ) -> dict[str, Any] | None:
        return Monitor.on_stream_event_in(self, tp, offset, stream, event)

    def on_stream_event_out(
        self, tp: TP, offset: int, stream: StreamT, event: EventT, state: dict[str, Any] | None = None
    ) -> None:
        Monitor.on_stream_event_out(self, tp, offset, stream, event, state)
        if state is not None:
            self._event_runtime.observe(state["time_total"])

    def on_message_out(self, tp: TP, offset: int, message: Message) -> None:
        Monitor.on_message_out(self, tp, offset, message)

    def on_table_get(self, table: CollectionT, key: Any) -> None:
        Monitor.on_table_get(self, table, key)

    def on_table_set(self, table: CollectionT, key: Any, value: Any) -> None:
        Monitor.on_table_set(self, table, key, value)

    def on_table_del(self, table: CollectionT, key: Any) -> None:
        Monitor.on_table_del(self, table, key)

    def on_send_initiated(
        self, producer: ProducerT, topic: str, message: PendingMessage, keysize: int, valsize: int
    ) -> Any:
        return Monitor.on_send_initiated(self, producer, topic, message, keysize, valsize)

    def on_send_completed(self, producer: ProducerT, state: Any, metadata: RecordMetadata) -> None:
        Monitor.on_send_completed(self, producer, state, metadata)
        self._send_latency.observe(self.send_latency[-1])

    def count_sent(self, by_topic: Mapping[str, int]) -> None:
        """Messages published as a batch (`streams.publishing`), which Faust's sensor never sees."""
        for topic, count in by_topic.items():
            self.messages_sent_by_topic[topic] += count
            self.messages_sent += count

    def count_table_writes(self, by_table: Mapping[CollectionT, int]) -> None:
        """Rows written as a batch (`agents.outbox.write_rows`), which Faust's sensor never sees."""
        for table, count in by_table.items():
            self._table_or_create(table).keys_updated += count

    # At scrape time.
    def describe(self) -> list[Metric]:
        return []  # registering must not collect (the monitor may not be running yet)

    def collect(self) -> Iterator[Metric]:
        p = self._prefix
        yield CounterMetricFamily(
            f"{p}_messages_received", PER_MESSAGE["messages_received"], self.messages_received_total
        )
        yield GaugeMetricFamily(f"{p}_active_messages", PER_MESSAGE["active_messages"], self.messages_active)
        by_topic = CounterMetricFamily(
            f"{p}_topic_messages_received", PER_MESSAGE["topic_messages_received"], labels=["topic"]
        )
        for topic, count in list(self.messages_received_by_topic.items()):
            by_topic.add_metric([topic], count)
        yield by_topic
        read = GaugeMetricFamily(
            f"{p}_partition_read_offset", PER_MESSAGE["partition_read_offset"], labels=["topic", "partition"]
        )
        for tp, offset in list(self.tp_read_offsets.items()):
            read.add_metric([tp.topic, str(tp.partition)], offset)
        yield read
        yield CounterMetricFamily(f"{p}_events", PER_MESSAGE["events"], self.events_total)
        yield GaugeMetricFamily(f"{p}_active_events", PER_MESSAGE["active_events"], self.events_active)
        per_stream = CounterMetricFamily(
            f"{p}_stream_events", PER_MESSAGE["stream_events"], labels=["stream"]
        )
        for stream, key in list(self.stream_lookup.items()):
            per_stream.add_metric([f"stream.{self._stream_label(stream)}.events"], self.events_by_stream[key])
        yield per_stream
        yield self._event_runtime.family(f"{p}_event_runtime_seconds", PER_MESSAGE["event_runtime"])
        ops = CounterMetricFamily(
            f"{p}_table_operations", PER_MESSAGE["table_operations"], labels=["table", "operation"]
        )
        for name, state in list(self.tables.items()):
            for operation in (self.KEYS_RETRIEVED, self.KEYS_UPDATED, self.KEYS_DELETED):
                ops.add_metric([f"table.{name}", operation], getattr(state, operation))
        yield ops
        sent = CounterMetricFamily(
            f"{p}_topic_messages_sent", PER_MESSAGE["topic_messages_sent"], labels=["topic"]
        )
        for topic, count in list(self.messages_sent_by_topic.items()):
            sent.add_metric([f"topic.{topic}"], count)
        yield sent
        yield CounterMetricFamily(f"{p}_messages_sent", PER_MESSAGE["messages_sent"], self.messages_sent)
        yield self._send_latency.family(
            f"{p}_producer_send_latency_seconds", PER_MESSAGE["producer_send_latency"]
        )


def install_faust_sensor(*_: Any, **__: Any) -> None:
    """Replace the app's monitor by the Prometheus sensor (before the app starts), and expose
    what RocksDB holds in memory."""
    if not isinstance(app.monitor, FaustSensor):
        app.monitor = FaustSensor(metrics.registry)
        metrics.registry.register(rocksdb.RocksDBMemory(app.tables.values))


# Only in processes that run a worker (app.main), not in every importer of this module.
app.on_worker_init.connect(install_faust_sensor)


# Routes -----------------------------------------------------------------------------------


class _Started:
    """Set by a task Faust starts with the app's timers, just before "Worker ready"."""

    done = False


def readiness_problem(*, started: bool, rebalancing: bool, recovering: bool, assigned: int) -> str | None:
    """Why the worker should not get traffic yet, or None when it is ready."""
    if not started:
        return "starting: tables not recovered yet"
    if rebalancing:
        return "rebalancing"
    if recovering:
        return "recovering tables"
    if assigned == 0:
        return "no partitions assigned"
    return None


def _stream_partitions(changelogs: Collection[str]) -> set[Any]:
    try:
        assignment = app.consumer.assignment()
    except Exception:  # no consumer yet (the worker is still starting)
        return set()
    return {tp for tp in assignment if tp.topic not in changelogs}


def current_readiness() -> str | None:
    tables: Any = app.tables  # `recovery` is TableManager's, missing from TableManagerT
    recovery = tables.recovery
    return readiness_problem(
        started=_Started.done and recovery.completed.is_set(),
        rebalancing=bool(app.rebalancing),
        recovering=bool(recovery.in_recovery),
        assigned=len(_stream_partitions(app.tables.changelog_topics)),
    )


@app.task
async def mark_started() -> None:
    _Started.done = True


@app.page("/health")
class Health(web.View):
    """Liveness: the event loop answers."""

    async def get(self, request: web.Request) -> web.Response:
        return self.json({"status": "ok"})


@app.page("/ready")
class Ready(web.View):
    """Readiness: assigned, recovered, not rebalancing."""

    async def get(self, request: web.Request) -> web.Response:
        problem = current_readiness()
        if problem is not None:
            return self.json({"status": "not_ready", "reason": problem}, status=503)
        return self.json({"status": "ready"})


@app.page("/metrics")
class Metrics(web.View):
    """Prometheus' text exposition of the worker's registry."""

    async def get(self, request: web.Request) -> web.Response:
        body, content_type = metrics.exposition()
        return self.bytes(body, headers={"Content-Type": content_type})


def assignment_view(
    actives: Iterable[Any], standbys: Iterable[Any], changelogs: Collection[str]
) -> dict[str, Any]:
    """This worker's partitions by topic: the stream partitions it consumes, the table
    (changelog) partitions it serves, and those it keeps warm as standbys."""

    def by_topic(tps: Iterable[Any]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for tp in tps:
            out.setdefault(tp.topic, []).append(tp.partition)
        return {topic: sorted(partitions) for topic, partitions in sorted(out.items())}

    held = list(actives)
    return {
        "streams": by_topic(tp for tp in held if tp.topic not in changelogs),
        "tables": by_topic(tp for tp in held if tp.topic in changelogs),
        "standbys": by_topic(standbys),
    }


@app.page("/assignment")
class Assignment(web.View):
    """The partitions the group's last rebalance gave this worker (no token: `/metrics` names
    the same topics and partitions)."""

    async def get(self, request: web.Request) -> web.Response:
        assignor = app.assignor
        body = assignment_view(
            assignor.assigned_actives(), assignor.assigned_standbys(), app.tables.changelog_topics
        )
        body["worker"] = str(app.conf.canonical_url)
        body["rebalancing"] = bool(app.rebalancing)
        body["ready"] = current_readiness() is None
        return self.json(body)


# Sampled gauges ---------------------------------------------------------------------------


def consumer_lag(consumer: Any, changelogs: Collection[str]) -> dict[tuple[str, int], int]:
    """(topic, partition) → high watermark minus committed offset, for the stream partitions
    this worker is assigned and has fetched from (the high watermark is known after a fetch).
    Before the first commit the read position stands in for the committed offset."""
    # Faust keeps these per partition and has no public accessor for them.
    committed: dict[Any, int | None] = getattr(consumer, "_committed_offset", {})
    read: dict[Any, int | None] = getattr(consumer, "_read_offset", {})
    out: dict[tuple[str, int], int] = {}
    for tp in consumer.assignment():
        if tp.topic in changelogs:
            continue
        highwater = consumer.highwater(tp)
        position = committed.get(tp)
        if position is None:
            last_read = read.get(tp)
            position = None if last_read is None else last_read + 1
        if highwater is None or position is None:
            continue
        out[(tp.topic, tp.partition)] = max(0, highwater - position)
    return out


@app.timer(interval=LAG_SAMPLE_S)
async def sample_consumer_lag() -> None:
    """Lag per partition, from what the consumer already knows (no broker request)."""
    metrics.set_consumer_lag(consumer_lag(app.consumer, app.tables.changelog_topics))


@app.timer(interval=TRIM_EVERY_S)
async def trim_heap() -> None:
    """Hand the heap's free pages back to the OS: after a backlog, or a batch that decoded
    many rows, RSS otherwise stays at its peak. In a thread: a trim of a few hundred MB takes
    tens of milliseconds, and ctypes lets the event loop run meanwhile."""
    await asyncio.get_running_loop().run_in_executor(None, release_free_memory)


@app.service
class OpenExceptionsReader(Service):
    """Follows `ledgerflow.exceptions` from the start into `metrics.open_exceptions`."""

    @Service.task
    async def _follow(self) -> None:
        while not self.should_stop:
            try:
                await self._read()
            except (KafkaError, OSError) as exc:
                log.warning("exceptions reader restarts", extra={"error": type(exc).__name__})
                await self.sleep(EXCEPTIONS_RETRY_S)

    async def _read(self) -> None:
        consumer = AIOKafkaConsumer(
            settings.topic(EXCEPTIONS),
            bootstrap_servers=settings.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level="read_committed",
            metadata_max_age_ms=30_000,
            **kafka_security(settings),
        )
        await consumer.start()
        metrics.open_exceptions.clear()  # read again from the start
        try:
            while not self.should_stop:
                batch = await consumer.getmany(timeout_ms=EXCEPTIONS_POLL_MS, max_records=5000)
                for records in batch.values():
                    for record in records:
                        if record.value is not None:
                            metrics.open_exceptions.apply(record.value)
                await asyncio.sleep(0)
        finally:
            await consumer.stop()
