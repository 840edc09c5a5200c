"""Every table store of a worker on one block cache and one memtable budget (real RocksDB)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import rocksdict
from faust.stores.memory import Store as MemoryStore
from faust.stores.rocksdb import Store as FaustRocksDBStore

from streams import rocksdb
from streams.app import app
from tables.customers import customer_table


def open_store(path: Path) -> rocksdict.Rdict:
    options = rocksdb.SharedMemoryOptions(write_buffer_size=1 << 20, use_rocksdict=True)
    return options.open(path)


def table_with(dbs: dict[int, rocksdict.Rdict]) -> Any:
    """A table whose store has these partition databases open."""
    return SimpleNamespace(_data=SimpleNamespace(_dbs=dbs))


def test_two_stores_share_the_process_cache_and_memtable_budget(tmp_path: Path) -> None:
    first, second = open_store(tmp_path / "a"), open_store(tmp_path / "b")
    try:
        budget = rocksdb.write_buffer_manager()
        before = budget.get_usage()
        for i in range(2000):
            first[f"k{i}".encode()] = b"x" * 200
            second[f"k{i}".encode()] = b"y" * 200
        assert budget.get_usage() > before  # both stores' memtables are counted in one budget

        first.flush(True)
        second.flush(True)
        cache = rocksdb.shared_cache()
        cached = cache.get_usage()
        assert first[b"k7"] == b"x" * 200 and second[b"k7"] == b"y" * 200
        assert cache.get_usage() > cached  # reads of either store fill the one cache

        memory = rocksdb.RocksDBMemory(lambda: [table_with({0: first, 1: second})])
        sample = memory.sample()
        assert set(sample) == {"memtables", "block_cache", "block_cache_pinned", "table_readers"}
        assert sample["block_cache"] == cache.get_usage()
        (family,) = memory.collect()
        assert family.name == "ledgerflow_rocksdb_memory_bytes"
        assert {s.labels["kind"] for s in family.samples} == set(sample)
    finally:
        first.close()
        second.close()


def test_a_closed_store_is_left_out_of_the_sample(tmp_path: Path) -> None:
    closed = open_store(tmp_path / "c")
    closed[b"k"] = b"v"
    closed.close()
    memory = rocksdb.RocksDBMemory(lambda: [table_with({0: closed})])
    assert memory.sample()["memtables"] == 0


def test_tables_not_yet_opened_have_no_databases() -> None:
    assert list(rocksdb.open_databases([SimpleNamespace(_data=None), SimpleNamespace()])) == []


def test_the_apps_tables_get_the_shared_store_on_rocksdb_and_faust_s_otherwise(tmp_path: Path) -> None:
    assert app.conf.Table is rocksdb.Table
    table: Any = customer_table
    store = table._new_store_by_url("rocksdb://")
    assert isinstance(store, FaustRocksDBStore)
    assert isinstance(store.rocksdb_options, rocksdb.SharedMemoryOptions)
    assert isinstance(table._new_store_by_url("memory://"), MemoryStore)
