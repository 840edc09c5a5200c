"""`ledgerflow erp check` against the NetSuite stand-in over real HTTP: every internal id the
mappings name is asked of the ERP by SuiteQL, and a wrong one is reported with its exit status."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import httpx
import orjson
import pytest
from pydantic import SecretStr

from connectors.erp import NetSuiteClient, StaticToken
from connectors.erp.sandbox import DEFAULT_TOKEN, SandboxServer
from streams.mappings import EXAMPLE_MAPPINGS, load_mappings
from streams.operations.erp_check import Status, check_ids, erp_check, wanted_ids
from streams.operations.reconcile import EXIT_CLEAN, EXIT_DIFFERENCES, EXIT_FAILED
from streams.settings import Settings
from tests.connectors.erp.support import requests_log, sandbox_config
from tests.support import REPO

T = TypeVar("T")


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[SandboxServer]:
    """The stand-in plays an account configured as the bundled example mappings say."""
    async with SandboxServer(sandbox_config(tmp_path / "erp.sqlite3")) as server:
        yield server


def settings(sandbox: SandboxServer, mappings: Path | None = None, **over: object) -> Settings:
    fields: dict[str, object] = {
        "erp_base_url": sandbox.url,
        "erp_token": SecretStr(DEFAULT_TOKEN),
        "erp_mode": "netsuite",
        "mappings": mappings,
    }
    fields.update(over)
    return Settings.model_validate(fields)


def wrong_mappings(tmp_path: Path) -> Path:
    """The example with the EUR currency pointing at JPY's id, and an item id nobody has."""
    text = EXAMPLE_MAPPINGS.read_text()
    netsuite = load_mappings(None).netsuite
    assert netsuite is not None
    eur, jpy = netsuite.currencies["EUR"], netsuite.currencies["JPY"]
    text = text.replace(f'EUR = "{eur}"', f'EUR = "{jpy}"', 1)
    text = text.replace(f'SVC-GENERAL = "{netsuite.items["SVC-GENERAL"]}"', 'SVC-GENERAL = "99999"', 1)
    assert text != EXAMPLE_MAPPINGS.read_text()
    path = tmp_path / "mappings.toml"
    path.write_text(text)
    return path


async def test_the_example_mappings_match_the_account_the_stand_in_plays(sandbox: SandboxServer) -> None:
    report = await erp_check(settings(sandbox))
    assert report.clean and report.exit_status == EXIT_CLEAN
    kinds = {c.wanted.kind.name for c in report.checks}
    assert kinds == {"subsidiary", "currency", "item", "account", "tax code", "custom field"}
    assert all(c.status is Status.OK for c in report.checks)
    # The ERP's own value is read back, not assumed: a currency's symbol, a subsidiary's name.
    usd = next(c for c in report.checks if c.wanted.kind.name == "currency" and c.wanted.code == "USD")
    assert usd.erp == "USD"


async def test_a_wrong_currency_and_a_missing_item_are_reported(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    report = await erp_check(settings(sandbox, wrong_mappings(tmp_path)))
    assert report.exit_status == EXIT_DIFFERENCES
    problems = {(c.wanted.kind.name, c.wanted.code): c for c in report.problems}
    assert set(problems) == {("currency", "EUR"), ("item", "SVC-GENERAL")}
    assert problems[("currency", "EUR")].status is Status.MISMATCH
    assert problems[("currency", "EUR")].erp == "JPY"
    [missing] = [c for c in report.problems if c.wanted.kind.name == "item"]
    assert missing.status is Status.MISSING and missing.erp is None
    as_json = report.to_json()
    assert as_json["by_status"] == {"ok": len(report.checks) - 2, "missing": 1, "mismatch": 1}
    assert "2 problem(s)" in report.render()


async def test_ids_are_batched_into_few_suiteql_queries(sandbox: SandboxServer) -> None:
    netsuite = load_mappings(None).netsuite
    assert netsuite is not None
    client = NetSuiteClient(sandbox.url, StaticToken(DEFAULT_TOKEN))
    try:
        checks = await check_ids(client, wanted_ids(netsuite))
    finally:
        await client.aclose()
    assert all(c.status is Status.OK for c in checks)
    async with httpx.AsyncClient(base_url=sandbox.url, timeout=5.0) as admin:
        log = await requests_log(admin)
    assert [e["path"] for e in log] == ["/services/rest/query/v1/suiteql"] * 6  # one per kind


async def test_a_query_the_erp_failed_or_left_unanswered_is_asked_again(sandbox: SandboxServer) -> None:
    # The demo's stand-in drops an answer now and then: a check must not stop on one.
    async with httpx.AsyncClient(base_url=sandbox.url, timeout=5.0) as admin:
        set_faults = {"burst_500": 1, "burst_timeout": 1, "hang_s": 1.0}
        assert (await admin.post("/admin/faults", json=set_faults)).status_code == 200
        report = await erp_check(settings(sandbox, erp_timeout_s=0.5, erp_retry_base_s=0.01))
        log = await requests_log(admin)
    assert report.clean
    queries = [e for e in log if e["path"] == "/services/rest/query/v1/suiteql"]
    assert len(queries) == 6 + 2  # one per kind, and the two that failed asked again


def business_central(sandbox: SandboxServer, mappings: Path | None = None) -> Settings:
    bc = sandbox.config.business_central
    return settings(
        sandbox, mappings, erp_mode="business-central", bc_tenant=bc.tenant, bc_environment=bc.environment
    )


async def test_business_central_companies_and_their_setup_are_checked(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    clean = await erp_check(business_central(sandbox))
    assert clean.clean, clean.render()
    kinds = {c.wanted.kind.name for c in clean.checks}
    assert kinds == {"company", "payment journal", "item", "account", "tax group", "currency"}
    # The UK company takes EUR besides its local GBP: asked; the US company's USD is local: not.
    currencies = {(c.wanted.company, c.wanted.code) for c in clean.checks if c.wanted.kind.name == "currency"}
    assert ("UK01", "EUR") in currencies and ("US01", "USD") not in currencies

    # Mappings that name an item no company has and a company that does not exist.
    text = EXAMPLE_MAPPINGS.read_text().replace('item = "SVC-SUPPORT"', 'item = "SVC-NOPE"', 1)
    text = text.replace('SVC-SUPPORT = "204"', 'SVC-SUPPORT = "204"\nSVC-NOPE = "209"', 1)
    text = text.replace("5b1f6f1e-0d3a-4c55-9a51-0c0000000005", "5b1f6f1e-0d3a-4c55-9a51-0c00000000ff", 1)
    wrong = tmp_path / "mappings.toml"
    wrong.write_text(text)
    report = await erp_check(business_central(sandbox, wrong))
    problems = {(c.status, c.wanted.kind.name, c.wanted.company, c.wanted.code) for c in report.problems}
    assert (Status.MISSING, "company", None, "KW01") in problems
    assert (Status.MISSING, "item", "US01", "SVC-NOPE") in problems
    assert report.exit_status == EXIT_DIFFERENCES
    # What is in the missing company is not asked about: the company is the problem.
    assert all(c.wanted.company != "KW01" for c in report.problems)


async def test_the_command_line_exits_1_on_problems_and_2_when_the_erp_refuses(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    env = {
        "LEDGERFLOW_ERP_BASE_URL": sandbox.url,
        "LEDGERFLOW_ERP_TOKEN": DEFAULT_TOKEN,
        "LEDGERFLOW_ERP_MODE": "netsuite",
        "LEDGERFLOW_MAPPINGS": str(wrong_mappings(tmp_path)),
        "PATH": "/usr/bin:/bin",
    }
    run = [sys.executable, "-m", "streams", "erp", "check", "--json"]

    def cli(**over: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            run, cwd=REPO, env={**env, **over}, capture_output=True, text=True, timeout=60, check=False
        )

    out = await _in_thread(cli)
    assert out.returncode == EXIT_DIFFERENCES, out.stderr[-2000:]
    assert orjson.loads(out.stdout)["by_status"]["mismatch"] == 1, out.stderr[-3000:]
    refused = await _in_thread(lambda: cli(LEDGERFLOW_ERP_TOKEN="not-the-token"))
    assert refused.returncode == EXIT_FAILED, refused.stderr[-2000:]
    assert "erp check stopped" in refused.stderr


async def _in_thread(call: Callable[[], T]) -> T:
    # The sandbox serves on this test's loop: the CLI must run beside it, not block it.
    return await asyncio.to_thread(call)
