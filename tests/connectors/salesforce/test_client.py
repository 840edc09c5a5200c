"""The Salesforce write-back client over real HTTP against the in-process fake Salesforce:
what is stored and sent, how errors are typed, retries, token refresh, and the CDC echo."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from agents.identity import provisional_customer_id
from canonical import CrmAccountFields
from connectors.erp import (
    ClientCredentialsToken,
    ErpAuthError,
    ErpPermanentError,
    ErpTransientError,
    RetryPolicy,
    StaticToken,
    call_with_retries,
)
from connectors.salesforce import map_cdc_event
from connectors.salesforce.client import SalesforceClient, classify
from connectors.salesforce.mapping import WRITEBACK_CLIENT
from connectors.salesforce.sandbox import DEFAULT_TOKEN, CrmSandboxConfig, SandboxServer
from connectors.salesforce.writeback import ACCOUNT_WRITEBACK_FIELDS, account_fields
from tests.connectors.erp.support import no_sleep
from tests.factories import T0

ACCOUNT = "001SIM000000042"
FIELDS = {"Ledgerflow_ERP_Customer_Id__c": "4711", "Ledgerflow_ERP_Customer_Number__c": "CUST000007"}


@pytest.fixture
async def fake() -> AsyncIterator[SandboxServer]:
    async with SandboxServer(CrmSandboxConfig(seed=3)) as server:
        yield server


@pytest.fixture
async def crm(fake: SandboxServer) -> AsyncIterator[SalesforceClient]:
    async with SalesforceClient(fake.url, StaticToken(DEFAULT_TOKEN), timeout=2.0) as client:
        yield client


async def admin(fake: SandboxServer, method: str, path: str, **body: Any) -> Any:
    async with httpx.AsyncClient(base_url=fake.url, timeout=5.0) as http:
        response = await http.request(method, f"/admin/{path}", json=body or None)
    assert response.status_code == 200, response.text
    return response.json()


async def test_patch_stores_the_fields_with_our_client_name_and_correlation_id(
    fake: SandboxServer, crm: SalesforceClient
) -> None:
    await crm.update_account(ACCOUNT, FIELDS, correlation_id="corr-42")
    accounts = await admin(fake, "GET", "accounts")
    assert accounts["writes"] == 1
    stored = accounts["accounts"][ACCOUNT]
    assert stored["fields"] == FIELDS and stored["last_client"] == WRITEBACK_CLIENT
    [request] = (await admin(fake, "GET", "requests"))["requests"]
    assert request == {
        "seq": 1,
        "method": "PATCH",
        "path": f"/services/data/v60.0/sobjects/Account/{ACCOUNT}",
        "call_options": "client=ledgerflow-writeback",
        "correlation_id": "corr-42",
        "status": 204,
        "fault": None,
    }
    record = await crm.get_account(ACCOUNT, ["Ledgerflow_ERP_Customer_Id__c"])
    assert record is not None
    assert (record["Id"], record["Ledgerflow_ERP_Customer_Id__c"]) == (ACCOUNT, "4711")
    assert record["attributes"]["type"] == "Account"
    assert await crm.get_account("001SIM000000099") is None


def test_canonical_fields_map_to_the_account_custom_fields() -> None:
    fields = CrmAccountFields(
        last_invoice_number="INV000012", last_invoice_status="posted", updated_at=T0.replace(microsecond=7000)
    )
    assert account_fields(fields) == {
        "Ledgerflow_Last_Invoice_Number__c": "INV000012",
        "Ledgerflow_Last_Invoice_Status__c": "posted",
        "Ledgerflow_ERP_Synced_At__c": "2026-03-01T12:00:00.007Z",
    }
    assert set(ACCOUNT_WRITEBACK_FIELDS) == set(CrmAccountFields.model_fields)


async def test_an_unknown_field_is_a_permanent_error_with_salesforces_message(
    fake: SandboxServer, crm: SalesforceClient
) -> None:
    with pytest.raises(ErpPermanentError) as caught:
        await crm.update_account(ACCOUNT, {"Ledgerflow_Typo__c": "x"})
    assert (caught.value.code, caught.value.status) == ("INVALID_FIELD", 400)
    assert "No such column 'Ledgerflow_Typo__c' on sobject of type Account" in caught.value.message
    assert (await admin(fake, "GET", "accounts"))["writes"] == 0


async def test_a_deleted_or_missing_account_is_a_permanent_404(
    fake: SandboxServer, crm: SalesforceClient
) -> None:
    await admin(fake, "DELETE", f"accounts/{ACCOUNT}")
    with pytest.raises(ErpPermanentError) as caught:
        await crm.update_account(ACCOUNT, FIELDS)
    assert (caught.value.code, caught.value.status) == ("ENTITY_IS_DELETED", 404)

    async with (
        SandboxServer(CrmSandboxConfig(create_on_patch=False)) as strict,
        SalesforceClient(strict.url, StaticToken(DEFAULT_TOKEN)) as client,
    ):
        with pytest.raises(ErpPermanentError) as missing:
            await client.update_account(ACCOUNT, FIELDS)
        assert (missing.value.code, missing.value.status) == ("NOT_FOUND", 404)


async def test_a_malformed_account_id_is_refused_before_any_call(crm: SalesforceClient) -> None:
    with pytest.raises(ErpPermanentError) as caught:
        await crm.update_account("001SIM/../../x", FIELDS)
    assert caught.value.code == "MALFORMED_ID" and crm.requests == 0


async def test_a_refused_token_is_refreshed_once_then_an_auth_error(fake: SandboxServer) -> None:
    async with SalesforceClient(fake.url, StaticToken("expired")) as client:
        with pytest.raises(ErpAuthError) as caught:
            await client.update_account(ACCOUNT, FIELDS)
    assert (caught.value.code, caught.value.status) == ("INVALID_SESSION_ID", 401)
    assert client.requests == 2  # the first 401 invalidates the token and tries once more

    async with SalesforceClient(fake.url, StaticToken("")) as unconfigured:
        with pytest.raises(ErpAuthError, match="LEDGERFLOW_CRM_TOKEN") as none:
            await unconfigured.update_account(ACCOUNT, FIELDS)
    assert none.value.code == "NO_TOKEN" and unconfigured.requests == 0


async def test_client_credentials_tokens_are_fetched_and_renewed_after_a_revoke(fake: SandboxServer) -> None:
    tokens = ClientCredentialsToken(f"{fake.url}/services/oauth2/token", "ledgerflow", "sandbox-crm-secret")
    try:
        async with SalesforceClient(fake.url, tokens) as client:
            await client.update_account(ACCOUNT, FIELDS)
            await admin(fake, "POST", "tokens/revoke")
            await client.update_account(ACCOUNT, {"Ledgerflow_Last_Payment_Status__c": "paid"})
        assert tokens.fetches == 2 and client.requests == 3
    finally:
        await tokens.aclose()
    assert (await admin(fake, "GET", "accounts"))["writes"] == 2


async def test_503s_are_retried_until_the_patch_lands_once(
    fake: SandboxServer, crm: SalesforceClient
) -> None:
    await admin(fake, "POST", "faults", burst_503=2)
    policy = RetryPolicy(max_attempts=5, base_delay_s=0.01, max_delay_s=0.01)

    async def attempt(_uncertain: bool) -> None:
        await crm.update_account(ACCOUNT, FIELDS, "corr-r")

    _, attempts = await call_with_retries(attempt, policy, sleep=no_sleep)
    assert attempts == 3
    statuses = [r["status"] for r in (await admin(fake, "GET", "requests"))["requests"]]
    assert statuses == [503, 503, 204]
    assert (await admin(fake, "GET", "accounts"))["writes"] == 1


@pytest.mark.parametrize(
    ("fault", "code", "status"),
    [
        ("burst_503", "SERVER_UNAVAILABLE", 503),
        ("burst_request_limit", "REQUEST_LIMIT_EXCEEDED", 403),
        ("burst_row_lock", "UNABLE_TO_LOCK_ROW", 400),
    ],
)
async def test_not_now_answers_are_transient_whatever_their_status(
    fake: SandboxServer, crm: SalesforceClient, fault: str, code: str, status: int
) -> None:
    await admin(fake, "POST", "faults", **{fault: 1})
    with pytest.raises(ErpTransientError) as caught:
        await crm.update_account(ACCOUNT, FIELDS)
    assert (caught.value.code, caught.value.status) == (code, status)
    await crm.update_account(ACCOUNT, FIELDS)  # the fault was a burst of one


def test_classify_reads_salesforce_error_bodies() -> None:
    def answer(status: int, body: Any, **headers: str) -> httpx.Response:
        content = orjson.dumps(body) if not isinstance(body, bytes) else body
        return httpx.Response(status, content=content, headers=headers)

    assert classify(httpx.Response(204)) is None
    limited = classify(answer(429, [{"message": "slow down", "errorCode": "X"}], **{"retry-after": "7"}))
    assert isinstance(limited, ErpTransientError) and limited.retry_after == 7.0
    gateway = classify(answer(502, b"<html>Bad Gateway</html>"))
    assert isinstance(gateway, ErpTransientError) and gateway.code == "HTTP_502"
    invalid = classify(
        answer(400, [{"message": "bad value", "errorCode": "STRING_TOO_LONG", "fields": ["Name"]}])
    )
    assert isinstance(invalid, ErpPermanentError)
    assert (invalid.code, invalid.message) == ("STRING_TOO_LONG", "bad value (fields: Name)")
    forbidden = classify(answer(403, [{"message": "no access", "errorCode": "INSUFFICIENT_ACCESS"}]))
    assert isinstance(forbidden, ErpAuthError)


async def test_no_answer_is_transient() -> None:
    async with SandboxServer() as gone:
        url = gone.url
    async with SalesforceClient(url, StaticToken(DEFAULT_TOKEN), timeout=1.0) as client:
        with pytest.raises(ErpTransientError) as caught:
            await client.update_account(ACCOUNT, FIELDS)
    assert caught.value.code == "CONNECTION_FAILED"


async def test_the_cdc_echo_of_our_own_write_yields_no_canonical_event(
    fake: SandboxServer, crm: SalesforceClient
) -> None:
    await crm.update_account(ACCOUNT, FIELDS)
    [echo] = (await admin(fake, "GET", "changes"))["changes"]
    header = echo["data"]["payload"]["ChangeEventHeader"]
    assert header["changeOrigin"] == f"com/salesforce/api/rest/60.0;client={WRITEBACK_CLIENT}"
    assert header["recordIds"] == [ACCOUNT] and "Ledgerflow_ERP_Customer_Id__c" in header["changedFields"]
    assert map_cdc_event(orjson.dumps(echo), provisional_customer_id) == []

    # The same change made by someone else (another client, or a user in the UI) is not dropped.
    header["changeOrigin"] = "com/salesforce/api/rest/60.0;client=SfdcInternalAPI/"
    [change] = map_cdc_event(orjson.dumps(echo), provisional_customer_id)
    assert change.entity_id == ACCOUNT
