"""Helpers for the ERP connector tests: sandbox settings, admin calls, a sleep that does not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from connectors.erp.sandbox import SandboxConfig

CLIENT_TIMEOUT_S = 0.4
"""Client timeout in these tests; a sandbox "hang" lasts longer (HANG_S)."""
HANG_S = 0.8


def sandbox_config(db_path: Path, **over: Any) -> SandboxConfig:
    fields: dict[str, Any] = {"db_path": db_path, "seed": 7, "client_secret": "s3cret"}
    fields.update(over)
    return SandboxConfig.model_validate(fields)


async def set_faults(admin: httpx.AsyncClient, **faults: Any) -> dict[str, Any]:
    response = await admin.post("/admin/faults", json=faults)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def documents(admin: httpx.AsyncClient, **query: str) -> dict[str, Any]:
    response = await admin.get("/admin/documents", params=query)
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


async def requests_log(admin: httpx.AsyncClient, **query: str) -> list[dict[str, Any]]:
    response = await admin.get("/admin/requests", params=query)
    assert response.status_code == 200
    entries: list[dict[str, Any]] = response.json()["requests"]
    return entries


async def no_sleep(_: float) -> None:
    """Retries in real-HTTP tests need not wait: the sandbox's faults are counted, not timed."""
