"""Faust tables on RocksDB, one per module; values are pydantic rows stored as JSON bytes."""
