"""Business exceptions as state: the latest record of every exception, per key of the
exceptions topic (the canonical customer id, or the source key of a message that has no
customer yet), so the web views can list what is open without reading the topic."""

from __future__ import annotations

from pydantic import Field

from canonical import BusinessException, LedgerModel, UtcDatetime
from canonical.base import NonEmptyStr
from streams.app import app
from streams.settings import settings

KEPT_PER_KEY = 256
"""Exceptions remembered per key. Past it, closed ones (resolved, replayed) go first, oldest
first; an open one is let go only when a key holds more open exceptions than this, and the row
counts it in `dropped` so a view can say the list is incomplete."""

UNKEYED = "-"
"""The row key of records that came without a key (an exception with neither customer nor
entity id)."""


class KeptException(LedgerModel):
    """The latest record of one exception and where it sits on the exceptions topic."""

    exception: BusinessException
    recorded_at: UtcDatetime  # the Kafka timestamp of that record
    partition: int
    offset: int


class KeyExceptions(LedgerModel):
    key: NonEmptyStr
    exceptions: dict[str, KeptException] = Field(default_factory=dict)
    dropped: int = 0


exception_table = app.Table(
    "exception-state",
    key_type=bytes,
    value_type=bytes,
    partitions=settings.partitions,
    help="Key of ledgerflow.exceptions (customer id or source key) → latest record per exception id.",
)
