"""Session fixtures: one real Kafka broker per test run (or LEDGERFLOW_KAFKA_BOOTSTRAP)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.cli.local_kafka import LocalKafka
from tests.support import Stack

ARTIFACTS = Path(os.environ.get("LEDGERFLOW_TEST_ARTIFACTS", "test-artifacts"))


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker for the whole run: the one named by LEDGERFLOW_KAFKA_BOOTSTRAP, or a local
    Apache Kafka started here and stopped at the end."""
    external = os.environ.get("LEDGERFLOW_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    broker = LocalKafka(data_dir=tmp_path_factory.mktemp("kafka"))
    started = time.monotonic()
    broker.start()
    print(f"\nlocal Kafka {broker.version} on {broker.bootstrap}, up in {time.monotonic() - started:.1f}s")
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@contextlib.contextmanager
def _isolated_stack(
    kafka_bootstrap: str, root: Path, request: pytest.FixtureRequest, **options: Any
) -> Iterator[Stack]:
    """A ledgerflow deployment of its own (topics, group, data, sandbox ERP) on the shared
    broker; its logs are kept under test-artifacts/ if a test failed meanwhile."""
    s = Stack(bootstrap=kafka_bootstrap, root=root, **options)
    failed_before = request.session.testsfailed
    try:
        yield s
    finally:
        s.stop()
        if request.session.testsfailed > failed_before:
            target = ARTIFACTS / request.node.name
            target.mkdir(parents=True, exist_ok=True)
            for log in root.glob("*.log"):
                (target / log.name).write_bytes(log.read_bytes())
            for db in root.glob("*.sqlite3*"):  # with its -wal file
                (target / db.name).write_bytes(db.read_bytes())


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    """One isolated deployment per test module."""
    with _isolated_stack(kafka_bootstrap, tmp_path_factory.mktemp("stack"), request) as s:
        yield s


@pytest.fixture
def new_stack(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Stack]]:
    """Build isolated deployments inside one test (Stack options: extra_env, erp_args …)."""
    with contextlib.ExitStack() as stacks:

        def make(**options: Any) -> Stack:
            root = tmp_path_factory.mktemp("stack")
            return stacks.enter_context(_isolated_stack(kafka_bootstrap, root, request, **options))

        yield make


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        # Anything that starts a broker or a worker is an integration test.
        if "kafka_bootstrap" in getattr(item, "fixturenames", ()) or "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
