"""A sandbox ERP per test, in-process on a free loopback port, and clients pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from connectors.erp import NetSuiteClient, StaticToken
from connectors.erp.sandbox import DEFAULT_TOKEN, SandboxServer
from tests.connectors.erp.support import CLIENT_TIMEOUT_S, sandbox_config


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[SandboxServer]:
    async with SandboxServer(sandbox_config(tmp_path / "erp.sqlite3")) as server:
        yield server


@pytest.fixture
async def admin(sandbox: SandboxServer) -> AsyncIterator[httpx.AsyncClient]:
    """Plain HTTP to the sandbox's admin routes (no auth)."""
    async with httpx.AsyncClient(base_url=sandbox.url, timeout=5.0) as client:
        yield client


@pytest.fixture
async def netsuite(sandbox: SandboxServer) -> AsyncIterator[NetSuiteClient]:
    client = NetSuiteClient(sandbox.url, StaticToken(DEFAULT_TOKEN), timeout=CLIENT_TIMEOUT_S)
    yield client
    await client.aclose()
