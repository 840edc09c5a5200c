"""The app's start-up: every design topic is known to the broker before any group assigns."""

from __future__ import annotations

from typing import Any

from streams.app import wait_for_topic_metadata


class Cluster:
    def __init__(self, known: dict[str, set[int]]) -> None:
        self.known = known

    def partitions_for_topic(self, name: str) -> set[int] | None:
        return self.known.get(name)


class Client:
    """An aiokafka client whose broker lists a just-created topic only from the third fetch."""

    def __init__(self) -> None:
        self.fetches = 0

    async def fetch_all_metadata(self) -> Any:
        self.fetches += 1
        known = {"ledgerflow.canonical": {0, 1}}
        if self.fetches >= 3:
            known["erp.results"] = {0, 1}
        return Cluster(known)


async def test_the_worker_waits_until_the_broker_lists_every_topic() -> None:
    client = Client()
    assert await wait_for_topic_metadata(client, ["ledgerflow.canonical", "erp.results"]) == []
    assert client.fetches == 3


async def test_a_topic_that_never_appears_is_reported_after_the_timeout() -> None:
    client = Client()
    assert await wait_for_topic_metadata(client, ["erp.missing"], timeout_s=0.25) == ["erp.missing"]
    assert client.fetches >= 2


def test_every_table_store_is_sized_by_the_settings() -> None:
    """Faust's RocksDB defaults (three 64 MB memtables, a 2 GB block cache per store) kept a
    worker's whole state in memory; LedgerflowApp.Table sizes every table's memtables, and
    every table's store shares the worker's one cache (tests/streams/test_rocksdb.py)."""
    from streams import rocksdb
    from streams.app import app
    from streams.settings import settings

    app.discover()  # every tables module
    assert app.tables, "no tables registered"
    for table in app.tables.values():
        options = table.options or {}
        assert options["write_buffer_size"] == settings.rocksdb_write_buffer_mb << 20, table.name
        assert options["max_write_buffer_number"] == 2, table.name
        assert "block_cache_size" not in options, table.name  # the shared cache, not one per store
        assert isinstance(table, rocksdb.Table), table.name


def test_a_worker_collects_less_often_and_never_rescans_what_it_started_with() -> None:
    import gc

    from streams.app import GC_THRESHOLDS, tune_garbage_collector

    before = gc.get_threshold()
    try:
        tune_garbage_collector()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_a_worker_caps_mallocs_arenas_and_hands_free_heap_back() -> None:
    """glibc here: both calls reach it (a worker on musl or macOS skips them)."""
    from streams.app import _glibc, release_free_memory, tune_malloc

    assert _glibc() is not None
    tune_malloc()
    freed = [bytes(4096) for _ in range(10_000)]
    del freed
    release_free_memory()
