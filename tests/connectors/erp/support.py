"""Helpers for the ERP connector tests: sandbox settings, admin calls, a sleep that does not."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from connectors.erp.business_central_sandbox import BusinessCentralSandboxConfig
from connectors.erp.sandbox import SandboxConfig

CLIENT_TIMEOUT_S = 0.4
"""Client timeout in these tests; a sandbox "hang" lasts longer (HANG_S)."""
HANG_S = 0.8


BUILDERS_TAX = {
    "US-SALES": Decimal(8),
    "UK-VAT-S": Decimal(20),
    "DE-VAT-19": Decimal(19),
    "JP-CT-10": Decimal(10),
    "KW-EXEMPT": Decimal(0),
}
"""The builders' invoices carry 8% US sales tax; the Business Central stand-in's tax setup says the
same in these tests (its default, like the Stripe samples, has none)."""


def sandbox_config(db_path: Path, **over: Any) -> SandboxConfig:
    fields: dict[str, Any] = {
        "db_path": db_path,
        "seed": 7,
        "client_secret": "s3cret",
        "business_central": BusinessCentralSandboxConfig(tax_percent=BUILDERS_TAX),
    }
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
