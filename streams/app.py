"""The one Faust app. Agents are found by autodiscovery when a worker starts."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
import logging
import shutil
import signal
import ssl
import sys
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faust
import mode

from streams import kafka_consumer, logs, rocksdb
from streams.settings import Settings, settings

if TYPE_CHECKING:
    from faust.types import TopicT


def _broker_credentials(s: Settings) -> Any:
    """SASL/SSL for a managed cluster; None on a plaintext local broker."""
    protocol = s.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl.create_default_context(cafile=str(s.kafka_ssl_cafile) if s.kafka_ssl_cafile else None)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    password = s.kafka_sasl_password.get_secret_value() if s.kafka_sasl_password else ""
    mechanism = s.kafka_sasl_mechanism or "PLAIN"
    if mechanism == "PLAIN":
        return faust.SASLCredentials(
            username=s.kafka_sasl_username,
            password=password,
            ssl_context=context if protocol == "SASL_SSL" else None,
        )
    return faust.SASLCredentials(
        username=s.kafka_sasl_username,
        password=password,
        mechanism=mechanism,
        ssl_context=context if protocol == "SASL_SSL" else None,
    )


def _await_chain(task: asyncio.Task[Any]) -> list[str]:
    """file:line of every coroutine a task is suspended in, outermost first, and what the
    innermost one waits for."""
    frames: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        frame = frame or getattr(coro, "gi_frame", None)
        if frame is None:
            frames.append(f"waits for {coro!r:.300}")
            break
        frames.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = (
            getattr(coro, "cr_await", None)
            or getattr(coro, "ag_await", None)
            or getattr(coro, "gi_yieldfrom", None)
        )
    return frames


def _producer_state(producer: Any) -> str:
    """What an aiokafka producer holds: batches per partition, batches in flight, the nodes and
    partitions its sender waits on, and whether the sender task still runs."""
    accumulator = producer._message_accumulator
    sender = producer._sender
    task = sender._sender_task
    state = "running" if not task.done() else "cancelled" if task.cancelled() else repr(task.exception())
    return (
        f"batches { ({str(tp): len(b) for tp, b in accumulator._batches.items()}) } "
        f"in flight {len(accumulator._pending_batches)} nodes {sender._in_flight} "
        f"muted {sorted(map(str, sender._muted_partitions))} "
        f"sender {state}"
    )


TRACEMALLOC_TOP = 25


def _log_task_stacks() -> None:
    log = logging.getLogger(__name__)
    for task in asyncio.all_tasks():
        log.warning("task %s\n  %s", task.get_name(), "\n  ".join(_await_chain(task)))
    producer = getattr(app._producer, "_producer", None)
    if producer is not None:
        log.warning("producer %s", _producer_state(producer))
    consumer = app._consumer
    if isinstance(consumer, kafka_consumer.Consumer):
        log.warning("consumer %s", consumer.offsets_state())
    if tracemalloc.is_tracing():  # PYTHONTRACEMALLOC=1 (or more frames) in the worker's env
        top = tracemalloc.take_snapshot().statistics("lineno")[:TRACEMALLOC_TOP]
        log.warning("python heap, largest allocation sites:\n  %s", "\n  ".join(map(str, top)))


class LedgerflowApp(faust.App):
    """The Faust app, plus: every design topic exists before any agent runs.

    Faust creates only the topics its agents consume, and only once a worker has joined the
    group; the first DLQ entry or command would otherwise wait on a missing topic.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.declared_topics: list[TopicT] = []

    async def on_stop(self) -> None:
        await super().on_stop()  # streams drained, tables stopped, producer flushed
        (Path(self.conf.datadir) / RUNNING_MARKER).unlink(missing_ok=True)

    def Table(self, name: str, **kwargs: Any) -> Any:
        """Every table's RocksDB memtables sized by settings (Faust's defaults: three 64 MB
        memtables and a 2 GB block cache per store, one store per table and partition); the
        block cache is the worker's one (streams/rocksdb.py)."""
        options = {
            "write_buffer_size": settings.rocksdb_write_buffer_mb << 20,
            "max_write_buffer_number": 2,
            **(kwargs.pop("options", None) or {}),
        }
        return super().Table(name, options=options, **kwargs)

    def _new_transport(self) -> Any:
        # Faust's consumer with strict offset bookkeeping (streams/kafka_consumer.py).
        return kafka_consumer.Transport(self.conf.broker_consumer, self)

    def discover(self, *extra_modules: str, **kwargs: Any) -> None:
        super().discover(*extra_modules, **kwargs)
        stages = set(settings.stages.split(","))
        dropped = keep_stages(self, stages)
        if dropped:
            logging.getLogger(__name__).info("stages %s: not running %s", sorted(stages), ", ".join(dropped))

    async def on_start(self) -> None:
        forget_tables_after_unclean_stop(Path(self.conf.datadir), Path(self.conf.tabledir))
        tune_garbage_collector()
        tune_malloc()
        await super().on_start()
        # httpx logs every ERP call at INFO; the sink logs what matters with the correlation id.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        # `kill -USR1 <pid>` logs every asyncio task's stack: a stalled worker is otherwise
        # idle in the event loop and says nothing about what it waits for.
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, _log_task_stacks)
        # The tables' changelogs too: Faust creates one when its table starts, just before the
        # consumer subscribes to it, and a broker that does not list it yet leaves it out of the
        # group's assignment until the next metadata refresh (5 minutes): meanwhile the table's
        # writes failed (PartitionsMismatch, 0 partitions) and the scaling test lost documents.
        channels = [*self.declared_topics, *(table.changelog_topic for table in self.tables.values())]
        if not channels:
            return
        # The plain producer, not the transaction manager: no partition is assigned yet.
        producer = self.producer
        await producer.maybe_start()
        for channel in channels:
            for name in channel.topics:
                await producer.create_topic(
                    topic=name,
                    partitions=channel.partitions or self.conf.topic_partitions,
                    replication=channel.replicas or self.conf.topic_replication_factor or 1,
                    config=channel.config,
                    compacting=channel.compacting,
                    deleting=channel.deleting,
                    retention=channel.retention,
                )
        names = [name for channel in channels for name in channel.topics]
        await wait_for_topic_metadata(producer._ensure_producer().client, names)  # type: ignore[attr-defined]


async def wait_for_topic_metadata(client: Any, names: list[str], timeout_s: float = 30.0) -> list[str]:
    """Wait until the broker's metadata lists every topic in `names` with its partitions;
    returns those still missing at the timeout (logged).

    A create is answered "exists" when another worker created the topic a moment before, and
    the broker may not list it yet. A group leader that assigns in that moment leaves the topic
    out until a metadata refresh shows it (up to 5 minutes): an ingest+core worker started
    beside a sink worker (`ledgerflow bench --sink-workers 1`) once confirmed customers but
    never took erp.results, so every invoice waited for its customer's confirmation."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        cluster = await client.fetch_all_metadata()
        missing = [name for name in names if not cluster.partitions_for_topic(name)]
        if not missing or loop.time() >= deadline:
            break
        await asyncio.sleep(0.1)
    if missing:
        logging.getLogger(__name__).warning("topics still unknown to the broker: %s", ", ".join(missing))
    return missing


GC_THRESHOLDS = (50_000, 20, 100)
"""CPython's collector thresholds for a worker (the defaults are 700, 10, 10)."""


def tune_garbage_collector() -> None:
    """Fewer, cheaper collections in a worker.

    With the defaults, a worker of the bench ran ~70 full collections in 28 s, each 100-250 ms
    with the event loop stopped (5 s in all): every event allocates hundreds of short-lived
    objects, so the young generation filled every 700 allocations and its survivors (batches
    in flight, rows being decided) kept pushing the old generation into a full scan of every
    live object — Faust's, pydantic's and the decoded rows'. The work is almost all
    reference-counted garbage, so a larger young generation costs little memory; what the
    worker holds at start (modules, Faust's app, the schemas) is frozen out of the scans."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


MALLOC_ARENAS = 2
"""glibc malloc arenas a worker may use (glibc's default is 8 per core, grown on contention)."""
_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


@functools.cache
def _glibc() -> Any:
    """glibc (None on another C library: musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def tune_malloc() -> None:
    """Cap glibc's malloc arenas before RocksDB starts its threads: every thread that finds the
    main arena locked gets an arena of its own, and freed memory stays in the arena it came
    from. `release_free_memory` hands what is free back to the OS now and then."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def release_free_memory() -> None:
    """glibc's malloc_trim: free pages inside the heap go back to the OS, not only its top."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


RUNNING_MARKER = "worker.running"
"""In the data dir while a worker runs; still there at start means the last one did not stop
cleanly."""


def forget_tables_after_unclean_stop(datadir: Path, tabledir: Path) -> bool:
    """Drop the local table stores if the previous worker on this data dir did not stop cleanly;
    they are then restored from their changelogs. Returns whether they were dropped.

    A row reaches RocksDB at once and its changelog a moment later, buffered: a worker killed in
    between left rows its changelog never got. The events processed again after a restart find
    them written and change nothing, so the next worker to restore that partition from the
    changelog (a rebalance, a new pod) would lack them. Kafka Streams wipes its local state after
    an unclean stop for the same reason (exactly-once mode); here it holds for at-least-once too,
    because agents write only rows that changed.
    """
    marker = datadir / RUNNING_MARKER
    dropped = marker.exists() and tabledir.exists()
    if dropped:
        logging.getLogger(__name__).warning(
            "the last worker on %s did not stop cleanly: dropping its table stores, restoring them "
            "from the changelogs",
            datadir,
        )
        shutil.rmtree(tabledir)
    datadir.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return dropped


def keep_stages(app: faust.App, stages: set[str]) -> list[str]:
    """Drop the agents and timers of modules whose `STAGE` is not in `stages` (modules without
    one, like the web ingress, always run); returns what was dropped."""

    def stage_of(fun: Any) -> str | None:
        return getattr(sys.modules.get(getattr(fun, "__module__", ""), None), "STAGE", None)

    dropped = [name for name, agent in app.agents.items() if stage_of(agent.fun) not in (None, *stages)]
    for name in dropped:
        del app.agents[name]
    tasks = app._app_tasks
    kept = [task for task in tasks if stage_of(task) in (None, *stages)]
    dropped += [getattr(task, "__qualname__", repr(task)) for task in tasks if task not in kept]
    tasks[:] = kept
    return dropped


def create_app(s: Settings) -> LedgerflowApp:
    """Build the app from settings (tests build their own with other settings)."""
    return LedgerflowApp(
        s.group_id,
        broker=[f"kafka://{host}" for host in s.bootstrap.split(",")],
        broker_credentials=_broker_credentials(s),
        autodiscover=["agents", "streams.web.ingress", "streams.web.observability", "streams.web.views"],
        origin="streams",
        store="rocksdb://",
        Table=rocksdb.Table,  # stores share one block cache and memtable budget
        datadir=str(s.data_dir),
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication_factor,
        processing_guarantee=s.processing_guarantee,
        consumer_auto_offset_reset="earliest",
        # Faust's default is one produce request per message; lingering lets the producer
        # put a batch of sends into one request.
        producer_linger_ms=s.producer_linger_ms,
        producer_max_batch_size=1 << 20,
        producer_acks=-1,
        broker_commit_every=s.batch_size,
        broker_session_timeout=s.session_timeout_s,
        broker_heartbeat_interval=max(1.0, s.session_timeout_s / 3),
        broker_commit_interval=1.0,
        stream_buffer_maxsize=max(4096, s.batch_size * 4),
        stream_recovery_delay=0.2,
        web_port=s.web_port,
        web_bind=s.web_bind,
        web_host=s.web_host,
        canonical_url=f"http://{s.web_host}:{s.web_port}",
        table_cleanup_interval=30.0,
        table_standby_replicas=s.standby_replicas,
        worker_redirect_stdouts=False,
        logging_config=logs.logging_config(s.log_format),
        web_application_options={"client_max_size": 1 << 20},
        # An agent that raises out of its batch stops the worker (an orchestrator restarts it)
        # instead of being restarted alone past the batch it did not finish; see
        # agents.batching.withhold_acks.
        agent_supervisor=mode.CrashingSupervisor,
        web_tables_enabled=False,  # Faust's /table/{name}/{key} would serve rows without the token
    )


app = create_app(settings)
