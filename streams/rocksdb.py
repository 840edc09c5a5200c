"""RocksDB memory of a worker: one block cache and one memtable budget shared by every store.

Faust opens one RocksDB store per table and partition (8 tables x 4 partitions = 32 on one
worker), and `faust.stores.rocksdb.RocksDBOptions.as_options` gives each its own block cache.
Sized per store, what a worker holds grows with the number of partitions it owns and fills
as its state grows: with 16 MB caches and two 4 MB memtables per store, one worker reached
786 MB VmHWM at 100,000 customers (bench/state_rss.py) while its state was 116 MB on disk.

Here every store of the process shares one `rocksdict.Cache` (LEDGERFLOW_ROCKSDB_BLOCK_CACHE_MB)
that also holds the stores' index and filter blocks (RocksDB keeps them outside the cache by
default, growing with the data), and one `rocksdict.WriteBufferManager`
(LEDGERFLOW_ROCKSDB_MEMTABLES_MB) that flushes the fullest memtables once all of them together
reach it. So RocksDB's memory is bounded by two settings, whatever the partition count.

`RocksDBMemory` reports what the stores hold at scrape time, as
`ledgerflow_rocksdb_memory_bytes{kind}`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import faust
import rocksdict
from faust.stores import rocksdb as faust_rocksdb
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.settings import settings


@functools.cache
def shared_cache() -> rocksdict.Cache:
    """The process's one block cache (data, index and filter blocks of every store)."""
    return rocksdict.Cache(settings.rocksdb_block_cache_mb << 20)


@functools.cache
def write_buffer_manager() -> rocksdict.WriteBufferManager:
    """The process's one memtable budget; writers are not stalled past it (flushes catch up)."""
    return rocksdict.WriteBufferManager(settings.rocksdb_memtables_mb << 20, False)


class SharedMemoryOptions(faust_rocksdb.RocksDBOptions):
    """Faust's options with the block-based table factory on the shared cache and the shared
    write buffer manager. Faust's `as_options` is kept for everything else (it also makes a
    cache of its own, which is never used and costs nothing until filled)."""

    def as_options(self) -> Any:
        options = super().as_options()
        if not self.use_rocksdict:
            return options
        factory = rocksdict.BlockBasedOptions()
        factory.set_bloom_filter(self.bloom_filter_size, True)
        factory.set_block_cache(shared_cache())
        factory.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        factory.set_cache_index_and_filter_blocks(True)
        # Level-0 files are the ones every read checks: their index and filter stay cached.
        factory.set_pin_l0_filter_and_index_blocks_in_cache(True)
        options.set_block_based_table_factory(factory)
        options.set_write_buffer_manager(write_buffer_manager())
        return options


class Table(faust.Table):
    """`app.conf.Table`: Faust's table, its RocksDB store on `SharedMemoryOptions`."""

    def _new_store_by_url(self, url: Any) -> Any:
        store = super()._new_store_by_url(url)
        if isinstance(store, faust_rocksdb.Store):  # not memory:// (unit tests)
            # No database is open yet. Faust's __init__ popped read_only/driver off
            # store.options; what is left are the RocksDBOptions fields the table was given.
            store.rocksdb_options = SharedMemoryOptions(
                **(store.options or {}), use_rocksdict=store.use_rocksdict
            )
        return store


def open_databases(tables: Iterable[Any]) -> Iterable[rocksdict.Rdict]:
    """Every RocksDB database the tables' stores have open (none before a table's first use)."""
    for table in tables:
        store = getattr(table, "_data", None)
        yield from list(getattr(store, "_dbs", {}).values())


class RocksDBMemory(Collector):
    """`ledgerflow_rocksdb_memory_bytes{kind}` at scrape time: memtables (all stores), the
    shared block cache (its pinned part separately) and table readers outside the cache."""

    def __init__(self, tables: Callable[[], Iterable[Any]]) -> None:
        self._tables = tables

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "ledgerflow_rocksdb_memory_bytes",
            "Memory RocksDB holds for this worker's table stores, by kind: memtables, "
            "block_cache (shared, index and filter blocks included), block_cache_pinned, "
            "table_readers (outside the cache).",
            labels=["kind"],
        )

    def sample(self) -> dict[str, int]:
        memtables = readers = 0
        for db in open_databases(self._tables()):
            try:
                memtables += db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0
                readers += db.property_int_value("rocksdb.estimate-table-readers-mem") or 0
            except rocksdict.DbClosedError:  # closed by a rebalance between the list and the read
                continue
        cache = shared_cache()
        return {
            "memtables": memtables,
            "block_cache": cache.get_usage(),
            "block_cache_pinned": cache.get_pinned_usage(),
            "table_readers": readers,
        }

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        for kind, value in self.sample().items():
            family.add_metric([kind], value)
        return [family]
