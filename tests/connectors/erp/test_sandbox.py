"""The sandbox ERP itself: OAuth, auth refusals, admin routes and repeatable fault dice."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from connectors.erp import (
    ClientCredentialsToken,
    ErpAuthError,
    ErpTransientError,
    NetSuiteClient,
    RecordType,
    StaticToken,
)
from connectors.erp.sandbox import DEFAULT_TOKEN, SandboxServer, erp_sandbox_command
from connectors.http_transport import HttpSession
from tests.connectors.erp.builders import post_invoice, upsert_customer
from tests.connectors.erp.support import CLIENT_TIMEOUT_S, documents, requests_log, sandbox_config, set_faults


def _oauth(sandbox: SandboxServer, secret: str = "s3cret") -> ClientCredentialsToken:
    return ClientCredentialsToken(f"{sandbox.url}/oauth/token", "ledgerflow", secret)


async def test_client_credentials_tokens_are_accepted_and_refreshed_after_a_401(
    sandbox: SandboxServer, admin: httpx.AsyncClient
) -> None:
    tokens = _oauth(sandbox)
    client = NetSuiteClient(sandbox.url, tokens, timeout=CLIENT_TIMEOUT_S)
    await client.deliver(upsert_customer())
    assert tokens.fetches == 1
    revoked = await admin.post("/admin/tokens/revoke")
    assert revoked.json() == {"revoked": 1}
    receipt = await client.deliver(upsert_customer(correlation_id="corr-after-revoke"))
    await client.aclose()
    await tokens.aclose()
    assert receipt.created is False
    assert tokens.fetches == 2
    log = await requests_log(admin)
    after = [(e["method"], e["path"], e["status"]) for e in log if e["seq"] > 3]
    assert after == [
        ("PUT", "/services/rest/record/v1/customer/eid:cust-1", 401),
        ("POST", "/oauth/token", 200),
        ("PUT", "/services/rest/record/v1/customer/eid:cust-1", 204),
        ("GET", "/services/rest/record/v1/customer/eid:cust-1", 200),
    ]


async def test_a_wrong_client_secret_is_an_auth_error(sandbox: SandboxServer) -> None:
    tokens = _oauth(sandbox, secret="guess")
    with pytest.raises(ErpAuthError) as raised:
        await tokens.token()
    await tokens.aclose()
    assert (raised.value.code, raised.value.status) == ("invalid_client", 401)


async def test_the_token_endpoint_takes_credentials_in_the_form_too(admin: httpx.AsyncClient) -> None:
    form = {"grant_type": "client_credentials", "client_id": "ledgerflow", "client_secret": "s3cret"}
    granted = await admin.post("/oauth/token", data=form)
    assert granted.status_code == 200
    body = granted.json()
    assert (body["token_type"], body["expires_in"]) == ("Bearer", 3600.0)
    assert granted.headers["cache-control"] == "no-store"
    api = await admin.get(
        "/services/rest/record/v1/customer", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert api.status_code == 200 and api.json()["totalResults"] == 0
    wrong_grant = await admin.post("/oauth/token", data={**form, "grant_type": "password"})
    assert (wrong_grant.status_code, wrong_grant.json()) == (400, {"error": "unsupported_grant_type"})


async def test_without_a_token_the_api_answers_401_in_each_dialect(admin: httpx.AsyncClient) -> None:
    netsuite = await admin.get("/services/rest/record/v1/invoice/eid:x")
    assert netsuite.status_code == 401
    assert netsuite.json()["o:errorDetails"][0]["o:errorCode"] == "INVALID_LOGIN"
    bc = await admin.get(
        "/v2.0/ledgerflow-sandbox/sandbox/api/v2.0/companies", headers={"Authorization": "Bearer nope"}
    )
    assert bc.status_code == 401 and bc.json()["error"]["code"] == "Authentication_InvalidCredentials"
    assert (await admin.get("/admin/faults")).status_code == 200  # admin needs no token


async def test_admin_patch_and_delete_alter_what_the_api_reads(
    netsuite: NetSuiteClient, admin: httpx.AsyncClient
) -> None:
    await netsuite.deliver(upsert_customer())
    await netsuite.deliver(post_invoice())
    # NetSuite computes the total from the lines: an edit of the lines changes it.
    patched = await admin.patch(
        "/admin/documents/invoice/stripe-in_1", json={"taxDetails": {"items": []}, "status": "paidInFull"}
    )
    assert patched.status_code == 200 and patched.json()["updated"] == 1
    document = await netsuite.get(RecordType.INVOICE, "stripe-in_1")
    assert document is not None and (document.total, document.status) == (10000, "paidInFull")
    # An edit behind the API's back is not an API write.
    assert (await documents(admin))["by_external_id"]["invoice"]["stripe-in_1"] == {
        "documents": 1,
        "writes": 1,
    }
    deleted = await admin.delete("/admin/documents/invoice/stripe-in_1")
    assert deleted.json() == {"deleted": 1}
    assert await netsuite.get(RecordType.INVOICE, "stripe-in_1") is None
    assert (await admin.delete("/admin/documents/invoice/stripe-in_1")).status_code == 404
    assert (await admin.patch("/admin/documents/invoice/stripe-in_1", json={"total": 1})).status_code == 404


async def test_admin_documents_filters_and_reset_empties(
    netsuite: NetSuiteClient, admin: httpx.AsyncClient
) -> None:
    await netsuite.deliver(upsert_customer("cust-a"))
    await netsuite.deliver(upsert_customer("cust-b"))
    only_b = await documents(admin, record_type="customer", external_id="cust-b")
    assert [d["external_id"] for d in only_b["documents"]] == ["cust-b"]
    assert only_b["documents"][0]["api"] == "netsuite"
    await set_faults(admin, latency_ms=1)
    await admin.post("/admin/periods/close", json={"start": "2026-01-01", "end": "2026-01-31"})
    assert (await admin.post("/admin/reset")).json() == {"reset": True}
    assert (await documents(admin))["documents"] == []
    assert await requests_log(admin) == []
    assert (await admin.get("/admin/faults")).json()["latency_ms"] == 0
    assert (await admin.get("/admin/periods")).json()["closed_periods"] == [
        {"subsidiary": "*", "start": "2020-01-01", "end": "2020-12-31"}
    ]
    # Numbering starts again after a reset.
    assert (await netsuite.deliver(upsert_customer())).document_number == "CUST000001"


async def test_admin_refuses_bad_fault_and_period_settings(admin: httpx.AsyncClient) -> None:
    assert (await admin.post("/admin/faults", json={"error_rate": 2})).status_code == 400
    assert (await admin.post("/admin/faults", json={"no_such_fault": 1})).status_code == 400
    bad_period = await admin.post("/admin/periods/close", json={"start": "2026-02-01", "end": "2026-01-01"})
    assert bad_period.status_code == 400
    unknown = await admin.post(
        "/admin/periods/close", json={"subsidiary": "ZZ", "start": "2026-01-01", "end": "2026-01-31"}
    )
    assert unknown.status_code == 400


async def _statuses(url: str, calls: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"}) as http:
        return [(await http.get("/services/rest/record/v1/customer")).status_code for _ in range(calls)]


async def test_the_same_seed_replays_the_same_faults(tmp_path: Path) -> None:
    runs = []
    for n in range(2):
        config = sandbox_config(tmp_path / f"erp-{n}.sqlite3", seed=1234)
        async with SandboxServer(config) as server, httpx.AsyncClient(base_url=server.url) as admin:
            await set_faults(admin, error_rate=0.3, rate_limit_rate=0.2)
            runs.append(await _statuses(server.url, 40))
    assert runs[0] == runs[1]
    assert {200, 429, 500} <= set(runs[0])
    # Re-seeding through the admin route replays too.
    async with SandboxServer(sandbox_config(tmp_path / "erp-x.sqlite3")) as server:
        async with httpx.AsyncClient(base_url=server.url) as admin:
            await set_faults(admin, error_rate=0.3, rate_limit_rate=0.2, seed=1234)
        assert await _statuses(server.url, 40) == runs[0]


async def test_latency_is_added_to_api_calls(sandbox: SandboxServer, admin: httpx.AsyncClient) -> None:
    await set_faults(admin, latency_ms=80, latency_jitter_ms=10)
    started = time.monotonic()
    await _statuses(sandbox.url, 2)
    assert time.monotonic() - started >= 2 * 0.07


def test_the_command_line_documents_every_fault_option() -> None:
    result = CliRunner().invoke(erp_sandbox_command, ["--help"])
    assert result.exit_code == 0
    for option in (
        "--host",
        "--port",
        "--db",
        "--token",
        "--mappings",
        "--error-rate",
        "--latency-ms",
        "--latency-jitter-ms",
        "--timeout-rate",
        "--rate-limit-rate",
        "--retry-after-s",
        "--maintenance",
    ):
        assert option in result.output
    refused = CliRunner().invoke(erp_sandbox_command, ["--error-rate", "3"])
    assert refused.exit_code != 0 and "--error-rate" in refused.output


async def test_a_static_token_from_the_config_is_accepted(tmp_path: Path) -> None:
    config = sandbox_config(tmp_path / "erp.sqlite3", tokens=("ci-token",))
    async with SandboxServer(config) as server:
        client = NetSuiteClient(server.url, StaticToken("ci-token"))
        receipt = await client.deliver(upsert_customer())
        await client.aclose()
    assert receipt.created


async def test_the_sandbox_refuses_what_netsuite_would(admin: httpx.AsyncClient) -> None:
    auth = {"Authorization": f"Bearer {DEFAULT_TOKEN}", "X-NetSuite-PropertyNameValidation": "Error"}
    url = "/services/rest/record/v1/customer/eid:"
    customer = {"subsidiary": {"id": "1"}, "currency": {"id": "1"}, "companyName": "Acme"}

    async def refused(
        key: str, body: dict[str, Any], headers: dict[str, str] = auth
    ) -> tuple[int, dict[str, Any]]:
        response = await admin.put(url + key, json=body, headers=headers)
        assert response.status_code == 400, response.text
        assert response.headers["content-type"].startswith("application/vnd.oracle.resource+json; type=error")
        detail: dict[str, Any] = response.json()["o:errorDetails"][0]
        return response.status_code, detail

    _, bad_id = await refused("acme.corp", customer)
    assert bad_id["o:errorCode"] == "INVALID_CONTENT" and "external id" in bad_id["detail"]
    _, unknown = await refused("acme", {**customer, "crmAccountId": "001"})
    assert (unknown["o:errorCode"], unknown["o:errorPath"]) == ("INVALID_CONTENT", "crmAccountId")
    _, by_code = await refused("acme", {**customer, "subsidiary": {"id": "US01"}})
    assert by_code["o:errorPath"] == "subsidiary" and "Invalid Field Value US01" in by_code["detail"]
    _, by_iso = await refused("acme", {**customer, "currency": "USD"})
    assert by_iso["o:errorPath"] == "currency"
    _, read_only = await refused("acme", {**customer, "balance": 10})
    assert "read-only" in read_only["detail"]
    by_id = await admin.put("/services/rest/record/v1/customer/17", json=customer, headers=auth)
    assert by_id.status_code == 405
    unknown_type = await admin.get("/services/rest/record/v1/vendorBill/eid:x", headers=auth)
    assert unknown_type.status_code == 404
    assert (await documents(admin))["documents"] == []
    # NetSuite's default (Warning): the unknown field is dropped, said only in a header.
    lenient = {"Authorization": auth["Authorization"]}
    warned = await admin.put(url + "acme", json={**customer, "crmAccountId": "001"}, headers=lenient)
    assert warned.status_code == 204 and "crmAccountId" in warned.headers["X-NetSuite-Warning"]
    [stored] = (await documents(admin))["documents"]
    assert "crmAccountId" not in stored["body"]


async def test_amounts_are_refused_past_the_currencys_decimals(
    netsuite: NetSuiteClient, admin: httpx.AsyncClient
) -> None:
    await netsuite.deliver(upsert_customer())
    customer = await netsuite.get(RecordType.CUSTOMER, "cust-1")
    assert customer is not None
    auth = {"Authorization": f"Bearer {DEFAULT_TOKEN}", "X-NetSuite-PropertyNameValidation": "Error"}
    line = {"item": {"id": "202"}, "quantity": 1, "amount": 10.005}
    invoice = {
        "entity": {"id": customer.erp_internal_id},
        "subsidiary": {"id": "1"},
        "currency": {"id": "1"},
        "tranDate": "2026-03-01",
        "item": {"items": [line]},
    }
    too_fine = await admin.put("/services/rest/record/v1/invoice/eid:inv-x", json=invoice, headers=auth)
    assert too_fine.status_code == 400
    detail = too_fine.json()["o:errorDetails"][0]
    assert detail["o:errorPath"] == "item.items[0].amount" and "more decimals" in detail["detail"]
    fits = {**invoice, "item": {"items": [{**line, "amount": 10.5}]}}
    # The customer is in US01: an invoice in another subsidiary is refused, naming both.
    elsewhere = await admin.put(
        "/services/rest/record/v1/invoice/eid:inv-y", json={**fits, "subsidiary": {"id": "4"}}, headers=auth
    )
    assert elsewhere.status_code == 400 and "belongs to subsidiary 1" in elsewhere.text
    ok = await admin.put("/services/rest/record/v1/invoice/eid:inv-z", json=fits, headers=auth)
    assert ok.status_code == 204


async def test_clients_close_their_own_http_client(sandbox: SandboxServer) -> None:
    async with NetSuiteClient(sandbox.url, StaticToken(DEFAULT_TOKEN)) as client:
        assert await client.get(RecordType.CUSTOMER, "cust-1") is None
    assert client._http.is_closed
    shared = HttpSession()
    async with NetSuiteClient(sandbox.url, StaticToken(DEFAULT_TOKEN), http=shared) as borrower:
        assert await borrower.get(RecordType.CUSTOMER, "cust-1") is None
    assert not shared.is_closed  # a shared session belongs to whoever made it
    await shared.aclose()


async def test_scoped_faults_hit_only_the_matching_customer(
    netsuite: NetSuiteClient, admin: httpx.AsyncClient
) -> None:
    await set_faults(admin, error_rate=1.0, scope="cust-sick")
    await netsuite.deliver(upsert_customer(customer_id="cust-well"))  # outside the scope: no fault
    with pytest.raises(ErpTransientError):
        await netsuite.deliver(upsert_customer(customer_id="cust-sick"))
    assert [d["external_id"] for d in (await documents(admin))["documents"]] == ["cust-well"]


def test_the_sandbox_database_writes_ahead_to_its_log(tmp_path: Path) -> None:
    import sqlite3

    from connectors.erp.sandbox import DocumentStore

    store = DocumentStore(tmp_path / "erp.sqlite3")
    try:
        mode = sqlite3.connect(tmp_path / "erp.sqlite3").execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"  # a rollback-journal commit blocked the event loop 0.7 ms
    finally:
        store.close()
