"""Fixtures of the agents' tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest

from agents.outbox import Outbox


@pytest.fixture
def sent() -> Iterator[list[tuple[str, Any, Any]]]:
    """(topic name, key, value) of everything the agents send, instead of a broker."""
    out: list[tuple[str, Any, Any]] = []

    async def record(self: Outbox, topic: Any, key: Any, value: Any, headers: Any) -> None:
        out.append((topic.get_topic_name(), key, value))

    from agents.ingest import announced_owners

    announced_owners.forget()  # each test's invoices are announced as if first seen
    with mock.patch.object(Outbox, "send", record):
        yield out
