"""CreateOnlyClient against the sandbox: drafts posted and numbered, duplicates possible and
detectable, and an uncertain retry that finds the document instead of creating another."""

from __future__ import annotations

import httpx
import pytest

from connectors.erp import (
    CreateOnlyClient,
    ErpPermanentError,
    ErpReceipt,
    ErpUncertainError,
    RecordType,
    RetryPolicy,
    StaticToken,
    call_with_retries,
    make_client,
    to_record,
)
from connectors.erp.client import ErpClient, NetSuiteClient
from connectors.erp.sandbox import DEFAULT_TOKEN, SandboxServer
from tests.connectors.erp.builders import (
    apply_payment,
    post_credit_memo,
    post_invoice,
    upsert_customer,
    void_invoice,
)
from tests.connectors.erp.support import (
    CLIENT_TIMEOUT_S,
    HANG_S,
    documents,
    no_sleep,
    requests_log,
    set_faults,
)

AUTH = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}


async def test_an_invoice_is_created_as_a_draft_then_posted_and_numbered(
    create_only: CreateOnlyClient, admin: httpx.AsyncClient
) -> None:
    await create_only.deliver(upsert_customer())
    receipt = await create_only.deliver(post_invoice(correlation_id="corr-inv"))
    assert receipt.created and receipt.document_number == "INV000001"
    log = await requests_log(admin, correlation_id="corr-inv")
    assert [(e["method"], e["path"], e["status"]) for e in log] == [
        ("POST", "/api/v1/invoice", 201),
        ("POST", f"/api/v1/invoice({receipt.erp_internal_id})/Microsoft.NAV.post", 204),
        ("GET", f"/api/v1/invoice({receipt.erp_internal_id})", 200),
    ]
    document = await create_only.get(RecordType.INVOICE, "stripe-in_1")
    assert document is not None
    assert (document.status, document.total, document.currency) == ("open", 10720, "USD")
    assert document.body["externalReference"] == "stripe-in_1"


async def test_create_only_really_creates_twice_when_asked_twice(
    create_only: CreateOnlyClient, admin: httpx.AsyncClient
) -> None:
    await create_only.deliver(upsert_customer())
    first = await create_only.create(post_invoice())
    second = await create_only.create(post_invoice())
    assert first.erp_internal_id != second.erp_internal_id
    state = await documents(admin)
    assert state["by_external_id"]["invoice"]["stripe-in_1"] == {"documents": 2, "writes": 4}
    assert state["duplicates"] == [{"record_type": "invoice", "external_id": "stripe-in_1", "documents": 2}]
    assert len(await create_only.find(RecordType.INVOICE, "stripe-in_1")) == 2


async def test_an_uncertain_create_is_found_on_retry_not_created_again(
    create_only: CreateOnlyClient, admin: httpx.AsyncClient
) -> None:
    await create_only.deliver(upsert_customer())
    await set_faults(admin, burst_timeout=1, hang_s=HANG_S)
    uncertain_flags: list[bool] = []

    async def deliver(uncertain: bool) -> ErpReceipt:
        uncertain_flags.append(uncertain)
        return await create_only.deliver(post_invoice(correlation_id="corr-x"), uncertain)

    receipt, attempts = await call_with_retries(deliver, RetryPolicy(), sleep=no_sleep)
    assert attempts == 2 and uncertain_flags == [False, True]
    # The draft the lost attempt created is found and posted; nothing is created twice.
    assert receipt.created is False and receipt.document_number == "INV000001"
    state = await documents(admin)
    assert state["by_external_id"]["invoice"]["stripe-in_1"]["documents"] == 1
    assert state["duplicates"] == []
    [invoice] = [d for d in state["documents"] if d["record_type"] == "invoice"]
    assert invoice["status"] == "open"
    log = await requests_log(admin, correlation_id="corr-x")
    assert [(e["method"], e["path"].split("/")[-1], e["fault"]) for e in log] == [
        ("POST", "invoice", "timeout"),
        ("GET", "invoice", None),
        ("POST", "Microsoft.NAV.post", None),
        ("GET", f"invoice({invoice['internal_id']})", None),
    ]
    assert log[1]["query"] == "$filter=externalReference eq 'stripe-in_1'&$top=100"


async def test_without_the_uncertain_flag_the_retry_would_duplicate(
    create_only: CreateOnlyClient, admin: httpx.AsyncClient
) -> None:
    await create_only.deliver(upsert_customer())
    await set_faults(admin, burst_timeout=1, timeout_mode="drop")
    with pytest.raises(ErpUncertainError):
        await create_only.deliver(post_invoice())
    await create_only.deliver(post_invoice(), uncertain=False)
    assert (await documents(admin))["by_external_id"]["invoice"]["stripe-in_1"]["documents"] == 2


async def test_a_booked_document_is_returned_as_is_on_an_uncertain_retry(
    create_only: CreateOnlyClient, admin: httpx.AsyncClient
) -> None:
    await create_only.deliver(upsert_customer())
    await create_only.deliver(post_invoice())
    again = await create_only.deliver_once(post_invoice(), looked_up_first=True)
    assert (again.created, again.document_number) == (False, "INV000001")
    assert (await documents(admin))["by_external_id"]["invoice"]["stripe-in_1"] == {
        "documents": 1,
        "writes": 2,
    }


async def test_a_leftover_draft_is_posted_on_an_uncertain_retry(
    create_only: CreateOnlyClient, admin: httpx.AsyncClient
) -> None:
    await create_only.deliver(upsert_customer())
    await create_only.deliver(post_invoice())
    # A credit memo created by an attempt that died before its post action.
    raw = post_credit_memo()
    memo_body = {**to_record(raw).body, "externalReference": "stripe-cn_1"}
    created = await admin.post("/api/v1/creditMemo", json=memo_body, headers=AUTH)
    assert (
        created.status_code == 201
        and created.json()["status"] == "draft"
        and created.json()["number"] is None
    )
    receipt = await create_only.deliver_once(raw, looked_up_first=True)
    assert (receipt.created, receipt.document_number) == (False, "CM000001")
    assert receipt.erp_internal_id == created.json()["id"]
    assert (await documents(admin))["by_external_id"]["creditMemo"]["stripe-cn_1"]["documents"] == 1


async def test_a_changed_customer_is_updated_in_place(
    create_only: CreateOnlyClient, admin: httpx.AsyncClient
) -> None:
    first = await create_only.deliver(upsert_customer(name="Acme"))
    second = await create_only.deliver(upsert_customer(name="Acme Holdings"))
    assert (first.created, second.created) == (True, False)
    assert first.erp_internal_id == second.erp_internal_id
    state = await documents(admin)
    assert state["by_external_id"]["customer"]["cust-1"] == {"documents": 1, "writes": 2}
    assert state["documents"][0]["body"]["companyName"] == "Acme Holdings"


async def test_void_cancels_and_voiding_again_changes_nothing(
    create_only: CreateOnlyClient, admin: httpx.AsyncClient
) -> None:
    await create_only.deliver(upsert_customer())
    posted = await create_only.deliver(post_invoice())
    voided = await create_only.deliver(void_invoice())
    again = await create_only.deliver(void_invoice())
    assert voided.erp_internal_id == again.erp_internal_id == posted.erp_internal_id
    document = await create_only.get(RecordType.INVOICE, "stripe-in_1")
    assert document is not None and document.status == "voided"
    cancels = [e for e in await requests_log(admin) if e["path"].endswith("Microsoft.NAV.cancel")]
    assert len(cancels) == 1
    with pytest.raises(ErpPermanentError) as raised:
        await create_only.deliver(void_invoice("stripe-in_none"))
    assert raised.value.code == "INVALID_KEY_OR_REF"


async def test_validation_in_the_odata_dialect_is_permanent_too(
    create_only: CreateOnlyClient, admin: httpx.AsyncClient
) -> None:
    with pytest.raises(ErpPermanentError) as raised:
        await create_only.deliver(post_invoice())
    assert (raised.value.code, raised.value.status) == ("INVALID_KEY_OR_REF", 400)
    assert raised.value.message == "Invalid customer reference key cust-1."
    await create_only.deliver(upsert_customer())
    with pytest.raises(ErpPermanentError) as raised:
        await create_only.deliver(apply_payment(invoice_external_id="stripe-in_gone"))
    assert "Invalid invoice reference key stripe-in_gone" in raised.value.message
    assert set((await documents(admin))["by_external_id"]) == {"customer"}


async def test_list_follows_the_next_link(sandbox: SandboxServer, admin: httpx.AsyncClient) -> None:
    client = CreateOnlyClient(sandbox.url, StaticToken(DEFAULT_TOKEN), timeout=CLIENT_TIMEOUT_S, page_size=2)
    for n in range(5):
        await client.deliver(upsert_customer(f"cust-{n}"))
    listed = await client.list(RecordType.CUSTOMER, correlation_id="corr-list")
    await client.aclose()
    assert [d.external_id for d in listed] == [f"cust-{n}" for n in range(5)]
    assert len(await requests_log(admin, correlation_id="corr-list")) == 3


async def test_make_client_picks_the_shape_and_both_are_erp_clients(sandbox: SandboxServer) -> None:
    token = StaticToken(DEFAULT_TOKEN)
    netsuite = make_client("netsuite", sandbox.url, token)
    create_only = make_client("create-only", sandbox.url, token)
    assert isinstance(netsuite, NetSuiteClient) and isinstance(create_only, CreateOnlyClient)
    assert isinstance(netsuite, ErpClient) and isinstance(create_only, ErpClient)
    # A customer written through one shape is visible through the other: one ERP, two APIs.
    await netsuite.deliver(upsert_customer())
    seen = await create_only.get(RecordType.CUSTOMER, "cust-1")
    assert seen is not None and seen.document_number == "CUST000001"
    for client in (netsuite, create_only):
        await client.aclose()
    with pytest.raises(ValueError, match="unknown ERP mode"):
        make_client("soap", sandbox.url, token)  # type: ignore[arg-type]
