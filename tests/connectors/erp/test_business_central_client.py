"""BusinessCentralClient against the Business Central stand-in, over real HTTP: every document
posted once and to the cent, lookups after a committed-then-hung write, etags, cancels, the
stand-in's refusals. Behaviours the sources leave open run both ways (`VARIANTS`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.erp import CallSlots, StaticToken
from connectors.erp.business_central_client import TOTALS_DIFFER, BusinessCentralClient, key_of
from connectors.erp.business_central_sandbox import BusinessCentralSandboxConfig
from connectors.erp.errors import ErpPermanentError, ErpTransientError, ErpUncertainError
from connectors.erp.sandbox import DEFAULT_TOKEN, SandboxServer
from connectors.erp.schemas import RecordType
from tests.connectors.erp.builders import (
    apply_payment,
    post_credit_memo,
    post_invoice,
    upsert_customer,
    void_invoice,
)
from tests.connectors.erp.support import (
    BUILDERS_TAX,
    CLIENT_TIMEOUT_S,
    HANG_S,
    documents,
    requests_log,
    sandbox_config,
    set_faults,
)

VARIANTS = {
    "documented": {"payment_sign": "negative", "journal_post": "bound", "deep_insert": True},
    "other-reading": {"payment_sign": "positive", "journal_post": "journals", "deep_insert": False},
    # As the sink runs it: every call an operation of a gathered `$batch`.
    "gathered": {"payment_sign": "negative", "journal_post": "bound", "deep_insert": True, "gather": True},
}
US01 = "5b1f6f1e-0d3a-4c55-9a51-0c0000000001"


@pytest.fixture(params=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(VARIANTS[request.param])


async def _stand_in(tmp_path: Path, **bc: Any) -> SandboxServer:
    config = sandbox_config(
        tmp_path / "erp.sqlite3",
        business_central=BusinessCentralSandboxConfig(**{"tax_percent": BUILDERS_TAX, **bc}),
        faults={"hang_s": HANG_S},
    )
    return SandboxServer(config)


def api_url(server: SandboxServer) -> str:
    bc = server.config.business_central
    return f"{server.url}/v2.0/{bc.tenant}/{bc.environment}/api/v2.0"


@pytest.fixture
async def bc_sandbox(tmp_path: Path, variant: dict[str, Any]) -> AsyncIterator[SandboxServer]:
    stand_in = {k: v for k, v in variant.items() if k != "gather"}
    async with await _stand_in(tmp_path, **stand_in) as server:
        yield server


@pytest.fixture
async def admin(bc_sandbox: SandboxServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=bc_sandbox.url, timeout=5.0) as client:
        yield client


@pytest.fixture
async def bc(bc_sandbox: SandboxServer, variant: dict[str, Any]) -> AsyncIterator[BusinessCentralClient]:
    client = BusinessCentralClient(
        api_url(bc_sandbox),
        StaticToken(DEFAULT_TOKEN),
        timeout=CLIENT_TIMEOUT_S,
        payment_sign=variant["payment_sign"],
        batch_slots=CallSlots(5) if variant.get("gather") else None,
        operation_timeout_s=0,  # a hang (HANG_S) outlasts every request's timeout, a $batch's too
    )
    yield client
    await client.aclose()


@pytest.fixture
async def api(bc_sandbox: SandboxServer) -> AsyncIterator[httpx.AsyncClient]:
    """Plain HTTP to the stand-in's API, to see what a client would be answered."""
    headers = {"authorization": f"Bearer {DEFAULT_TOKEN}"}
    async with httpx.AsyncClient(base_url=api_url(bc_sandbox), headers=headers, timeout=5.0) as client:
        yield client


async def bc_documents(admin: httpx.AsyncClient, record_type: RecordType) -> list[dict[str, Any]]:
    docs = (await documents(admin, record_type=record_type.value))["documents"]
    return [d for d in docs if d["api"] == "business-central"]


async def test_each_document_posts_once_to_the_cent(
    bc: BusinessCentralClient, admin: httpx.AsyncClient
) -> None:
    customer = await bc.deliver(upsert_customer())
    assert customer.created and customer.document_number == key_of(RecordType.CUSTOMER, "cust-1")
    invoice = await bc.deliver(post_invoice())
    assert invoice.created and invoice.document_number and invoice.document_number.startswith("PS-INV")
    await bc.deliver(apply_payment(amount=5000))
    await bc.deliver(post_credit_memo())

    [stored] = await bc_documents(admin, RecordType.INVOICE)
    assert stored["status"] == "Open"
    assert stored["books"]["amount"] == 10720
    # 107.20 - 50.00 paid - 10.80 credited.
    assert stored["books"]["remaining"] == 10720 - 5000 - 1080
    [payment] = await bc_documents(admin, RecordType.CUSTOMER_PAYMENT)
    assert payment["status"] == "Posted" and payment["books"]["amount"] == 5000
    memos = await bc_documents(admin, RecordType.CREDIT_MEMO)
    assert [m["status"] for m in memos] == ["Paid"]  # fully applied to the invoice


async def test_a_paid_invoice_reads_paid_and_cannot_be_canceled(
    bc: BusinessCentralClient, admin: httpx.AsyncClient
) -> None:
    await bc.deliver(upsert_customer())
    await bc.deliver(post_invoice())
    await bc.deliver(apply_payment())
    [stored] = await bc_documents(admin, RecordType.INVOICE)
    assert stored["status"] == "Paid" and stored["books"]["remaining"] == 0
    with pytest.raises(ErpPermanentError, match="paid"):
        await bc.deliver(void_invoice())


async def test_a_void_cancels_once(bc: BusinessCentralClient, admin: httpx.AsyncClient) -> None:
    await bc.deliver(upsert_customer())
    await bc.deliver(post_invoice())
    first = await bc.deliver(void_invoice())
    again = await bc.deliver(void_invoice())
    assert first.erp_internal_id == again.erp_internal_id
    [stored] = await bc_documents(admin, RecordType.INVOICE)
    assert stored["status"] == "Canceled"
    memos = await bc_documents(admin, RecordType.CREDIT_MEMO)
    assert len(memos) == 1 and memos[0]["books"]["created_from"] == key_of(RecordType.INVOICE, "stripe-in_1")


@pytest.mark.parametrize("what", ["create", "post"])
async def test_a_hung_invoice_write_is_found_not_made_twice(
    bc: BusinessCentralClient, admin: httpx.AsyncClient, what: str
) -> None:
    await bc.deliver(upsert_customer())
    # The create (or the post) commits, and its answer never comes.
    # (The create's path and body, or its operation in a gathered `$batch`.)
    scope = r"/salesInvoices(\{|\",)" if what == "create" else r"Microsoft\.NAV\.post"
    await set_faults(admin, burst_timeout=1, scope=scope)
    with pytest.raises(ErpUncertainError):
        await bc.deliver(post_invoice())
    await set_faults(admin, burst_timeout=0, scope=None)
    receipt = await bc.deliver(post_invoice(), uncertain=True)
    assert receipt.document_number and receipt.document_number.startswith("PS-INV")
    invoices = await bc_documents(admin, RecordType.INVOICE)
    assert [i["status"] for i in invoices] == ["Open"]


async def test_a_hung_payment_is_found_in_the_journal_or_the_ledger(
    bc: BusinessCentralClient, admin: httpx.AsyncClient
) -> None:
    await bc.deliver(upsert_customer())
    await bc.deliver(post_invoice())
    # The $batch that enters the line and posts the journal commits, and its answer never comes.
    await set_faults(admin, burst_timeout=1, scope=r"/customerPayments\"")
    with pytest.raises(ErpUncertainError):
        await bc.deliver(apply_payment())
    await set_faults(admin, burst_timeout=0, scope=None)
    await bc.deliver(apply_payment(), uncertain=True)  # not in the journal: found in the ledger
    # A line entered and never posted (its journal's post lost) is found in the journal.
    company = bc.mapper.company("US01")
    pending = bc.mapper.record(
        apply_payment("stripe-pi_2"), (await bc.get(RecordType.INVOICE, "stripe-in_1")).erp_internal_id
    )  # type: ignore[union-attr]
    await bc._call("POST", bc._set_url(company, RecordType.CUSTOMER_PAYMENT), None, body=pending.body)
    await bc.deliver(apply_payment("stripe-pi_2"), uncertain=True)
    payments = await bc_documents(admin, RecordType.CUSTOMER_PAYMENT)
    assert [p["status"] for p in payments] == ["Posted", "Posted"]


async def test_totals_business_central_computes_otherwise_are_refused_and_the_draft_deleted(
    tmp_path: Path,
) -> None:
    # A company whose tax setup says 7% where billing charged 8%.
    async with await _stand_in(tmp_path, tax_percent={**BUILDERS_TAX, "US-SALES": Decimal(7)}) as server:
        client = BusinessCentralClient(api_url(server), StaticToken(DEFAULT_TOKEN), timeout=CLIENT_TIMEOUT_S)
        try:
            await client.deliver(upsert_customer())
            with pytest.raises(ErpPermanentError) as refused:
                await client.deliver(post_invoice())
            assert refused.value.code == TOTALS_DIFFER
            assert "totalTaxAmount 6.30 USD where the billing platform charged 7.20" in refused.value.message
        finally:
            await client.aclose()
        async with httpx.AsyncClient(base_url=server.url) as admin:
            assert await bc_documents(admin, RecordType.INVOICE) == []


async def test_tax_rounded_per_document_can_differ_by_a_cent(tmp_path: Path) -> None:
    # Two lines of 0.05 at 10%: 0.01 tax each when rounded per line, 0.01 in all per document.
    async with await _stand_in(tmp_path, tax_rounding="document") as server:
        client = BusinessCentralClient(api_url(server), StaticToken(DEFAULT_TOKEN), timeout=CLIENT_TIMEOUT_S)
        try:
            await client.deliver(upsert_customer(customer_id="cust-jp", subsidiary="JP01", currency="JPY"))
            invoice = post_invoice(customer_id="cust-jp", subsidiary="JP01", currency="JPY")
            lines = tuple(
                line.model_copy(update={"amount": 5, "tax_code": "JP-CT-10", "tax_amount": 1})
                for line in invoice.document.lines
            )
            document = invoice.document.model_copy(update={"lines": lines, "tax_total": 2, "total": 12})
            with pytest.raises(ErpPermanentError, match=TOTALS_DIFFER):
                await client.deliver(invoice.model_copy(update={"document": document}))
        finally:
            await client.aclose()


async def test_a_customer_changed_in_business_central_is_read_again_and_updated(
    bc: BusinessCentralClient, admin: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    first = await bc.deliver(upsert_customer(name="Acme"))
    # Someone edits the customer in Business Central: the etag the client holds goes stale.
    url = f"companies({US01})/customers({first.erp_internal_id})"
    current = (await api.get(url)).json()
    edited = await api.patch(
        url, json={"phoneNumber": "555-0100"}, headers={"if-match": current["@odata.etag"]}
    )
    assert edited.status_code == 200, edited.text
    second = await bc.deliver(upsert_customer(name="Acme Holdings"))
    assert second.erp_internal_id == first.erp_internal_id and not second.created
    [stored] = await bc_documents(admin, RecordType.CUSTOMER)
    assert stored["body"]["displayName"] == "Acme Holdings" and stored["body"]["phoneNumber"] == "555-0100"


async def test_document_numbers_come_from_one_query(bc: BusinessCentralClient) -> None:
    await bc.deliver(upsert_customer())
    for n in (1, 2, 3):
        await bc.deliver(post_invoice(external_id=f"stripe-in_{n}"), read_back=False)
    before = bc.lookups
    found = await bc.document_numbers(RecordType.INVOICE, ["stripe-in_1", "stripe-in_2", "stripe-in_3"])
    assert sorted(found) == ["stripe-in_1", "stripe-in_2", "stripe-in_3"]
    assert all(d.document_number and d.document_number.startswith("PS-INV") for d in found.values())
    assert bc.lookups - before == 1  # the first company holds them all


# -- the stand-in's refusals, as a real company would answer ---------------------------------


async def test_the_stand_in_refuses_what_business_central_refuses(
    bc: BusinessCentralClient, api: httpx.AsyncClient, variant: dict[str, Any]
) -> None:
    await bc.deliver(upsert_customer())
    number = key_of(RecordType.CUSTOMER, "cust-1")
    invoices = f"companies({US01})/salesInvoices"
    base = {"customerNumber": number, "postingDate": "2026-03-01"}

    unknown = await api.post(invoices, json={**base, "memo": "x"})
    assert (
        unknown.status_code == 400
        and "memo: the property does not exist" in unknown.json()["error"]["message"]
    )
    local = await api.post(invoices, json={**base, "currencyCode": "USD"})
    assert local.json()["error"]["code"] == "Internal_InvalidTableRelation"  # LCY is written ""
    stranger = await api.post(invoices, json={**base, "customerNumber": "NOBODY"})
    assert stranger.json()["error"]["code"] == "Application_DialogException"
    customers = f"companies({US01})/customers"
    again = await api.post(customers, json={"number": number, "displayName": "Twice"})
    assert again.json()["error"]["code"] == "Internal_EntityWithSameKeyExists"
    [customer] = (await api.get(customers, params={"$filter": f"number eq '{number}'"})).json()["value"]
    no_etag = await api.patch(f"{customers}({customer['id']})", json={"displayName": "X"})
    assert no_etag.status_code == 400 and no_etag.json()["error"]["code"] == "BadRequest_InvalidToken"
    journal = (
        f"companies({US01})/customerPaymentJournals(7c0a9d2e-5f41-4b8e-8a11-0c0000000101)/customerPayments"
    )
    sign = -1 if variant["payment_sign"] == "negative" else 1
    # A JSON number with a tenth of a cent, as a client that rounds nothing would send it.
    body = (
        f'{{"customerNumber": "{number}", "postingDate": "2026-03-01", "amount": {sign * Decimal("10.005")}}}'
    )
    cent_fraction = await api.post(journal, content=body, headers={"content-type": "application/json"})
    assert cent_fraction.status_code == 400 and "decimals" in cent_fraction.text
    wrong_company = await api.get("companies(00000000-0000-0000-0000-000000000000)/customers")
    assert wrong_company.status_code == 404


async def test_a_batch_answers_each_operation_and_skips_what_depends_on_a_failure(
    bc: BusinessCentralClient, api: httpx.AsyncClient
) -> None:
    await bc.deliver(upsert_customer())
    customers = f"companies({US01})/customers"
    batch = {
        "requests": [
            {"id": "1", "method": "GET", "url": f"{customers}?$filter=number eq 'NOBODY'"},
            {"id": "2", "method": "POST", "url": customers, "body": {"displayName": "no number"}},
            {"id": "3", "method": "GET", "url": customers, "dependsOn": ["2"]},
        ]
    }
    answer = await api.post("$batch", json=batch, headers={"prefer": "odata.continue-on-error"})
    assert answer.status_code == 200
    statuses = {r["id"]: r["status"] for r in answer.json()["responses"]}
    assert statuses == {"1": 200, "2": 400, "3": 424}
    # Without `Prefer: odata.continue-on-error` a batch stops at its first failed operation.
    batch["requests"].append({"id": "4", "method": "GET", "url": customers})
    stopped = await api.post("$batch", json=batch)
    assert [r["id"] for r in stopped.json()["responses"]] == ["1", "2"]
    too_many = await api.post(
        "$batch", json={"requests": [{"id": str(i), "method": "GET", "url": customers} for i in range(101)]}
    )
    assert too_many.status_code == 400


@pytest.mark.parametrize("retry_after", [True, False])
async def test_past_the_rate_limit_calls_are_throttled(
    bc: BusinessCentralClient, admin: httpx.AsyncClient, retry_after: bool
) -> None:
    await set_faults(admin, rate_limit=2, rate_window_s=60, retry_after_header=retry_after, retry_after_s=3)
    await bc.deliver(upsert_customer())  # a lookup and a create: the two calls the window allows
    with pytest.raises(ErpTransientError) as throttled:
        await bc.deliver(upsert_customer(name="again"))
    assert throttled.value.status == 429
    assert throttled.value.retry_after == (3.0 if retry_after else None)


async def test_a_payment_the_journal_refuses_leaves_it_and_the_others_post(
    bc: BusinessCentralClient, admin: httpx.AsyncClient
) -> None:
    # The payment journal is the company's, shared by every customer: a line Business Central
    # refuses would stop the whole journal from posting.
    for n in (1, 2):
        await bc.deliver(upsert_customer(customer_id=f"cust-{n}"))
        await bc.deliver(post_invoice(external_id=f"stripe-in_{n}", customer_id=f"cust-{n}"))
    await bc.deliver(void_invoice("stripe-in_1", customer_id="cust-1"))
    late = apply_payment("stripe-pi_1", "stripe-in_1", customer_id="cust-1")
    with pytest.raises(ErpPermanentError, match="Canceled"):
        await bc.deliver(late)
    await bc.deliver(apply_payment("stripe-pi_2", "stripe-in_2", customer_id="cust-2"))
    payments = await bc_documents(admin, RecordType.CUSTOMER_PAYMENT)
    assert [(p["external_id"], p["status"]) for p in payments] == [
        (key_of(RecordType.CUSTOMER_PAYMENT, "stripe-pi_2"), "Posted")
    ]


async def test_a_payment_reads_posted_from_the_ledger_and_unposted_as_a_draft(
    bc: BusinessCentralClient,
) -> None:
    await bc.deliver(upsert_customer())
    invoice = await bc.deliver(post_invoice())
    await bc.deliver(apply_payment())
    posted = await bc.get(RecordType.CUSTOMER_PAYMENT, "stripe-pi_1")
    assert posted is not None and posted.status == "posted" and posted.total == 10720
    # A line entered and never posted is listed as a draft, not as a posted payment.
    company = bc.mapper.company("US01")
    pending = bc.mapper.record(apply_payment("stripe-pi_2"), invoice.erp_internal_id)
    await bc._call("POST", bc._set_url(company, RecordType.CUSTOMER_PAYMENT), None, body=pending.body)
    listed = {d.external_id: d.status for d in await bc.list(RecordType.CUSTOMER_PAYMENT)}
    assert listed == {
        key_of(RecordType.CUSTOMER_PAYMENT, "stripe-pi_1"): "posted",
        key_of(RecordType.CUSTOMER_PAYMENT, "stripe-pi_2"): "Draft",
    }


async def _lane(client: BusinessCentralClient, n: int, uncertain: bool = False) -> None:
    """One customer's documents, in order, as a sink lane delivers them."""
    customer = f"cust-{n}"
    await client.deliver(upsert_customer(customer, name=f"Customer {n}"), uncertain=uncertain)
    await client.deliver(post_invoice(f"stripe-in_{n}", customer), uncertain=uncertain)
    await client.deliver(
        apply_payment(f"stripe-pi_{n}", f"stripe-in_{n}", customer, amount=5000), uncertain=uncertain
    )


@pytest.mark.parametrize("variant", ["gathered"], indirect=True)
async def test_many_customers_documents_share_batch_requests_each_posted_once(
    bc: BusinessCentralClient, admin: httpx.AsyncClient
) -> None:
    await asyncio.gather(*(_lane(bc, n) for n in range(30)))
    assert bc.gatherer is not None
    # A lane's calls: the customer's lookup and create, the invoice's draft and its post-and-read,
    # the payment's line-and-post: 7 operations, in 5 requests a lane would send alone.
    assert bc.gatherer.operations == 30 * 7
    assert bc.gatherer.requests <= 10  # ~5 rounds of 30 lanes each, a few more at the edges
    log = await requests_log(admin, limit="1000")
    assert all(e["path"].endswith("/$batch") for e in log)
    assert sum(e["operations"] for e in log) == 30 * 7 and len(log) == bc.gatherer.requests
    invoices = await bc_documents(admin, RecordType.INVOICE)
    assert len(invoices) == 30 and all(i["books"]["remaining"] == 10720 - 5000 for i in invoices)
    assert len(await bc_documents(admin, RecordType.CUSTOMER_PAYMENT)) == 30


@pytest.mark.parametrize("variant", ["gathered"], indirect=True)
async def test_a_gathered_batch_whose_answer_is_lost_is_looked_up_for_each_document(
    bc: BusinessCentralClient, admin: httpx.AsyncClient
) -> None:
    await asyncio.gather(*(bc.deliver(upsert_customer(f"cust-{n}")) for n in range(10)))
    # The request carrying every lane's invoice draft commits, and its answer never comes.
    await set_faults(admin, burst_timeout=1, scope=r"/salesInvoices\"")
    lost = await asyncio.gather(
        *(bc.deliver(post_invoice(f"stripe-in_{n}", f"cust-{n}")) for n in range(10)), return_exceptions=True
    )
    assert all(isinstance(e, ErpUncertainError) for e in lost)
    assert len({id(e) for e in lost}) == 1  # one lost answer, one error: the breaker counts it once
    await set_faults(admin, burst_timeout=0, scope=None)
    await asyncio.gather(
        *(bc.deliver(post_invoice(f"stripe-in_{n}", f"cust-{n}"), uncertain=True) for n in range(10))
    )
    invoices = await bc_documents(admin, RecordType.INVOICE)
    assert sorted(i["status"] for i in invoices) == ["Open"] * 10


async def test_a_rate_limit_counting_operations_throttles_a_full_batch(tmp_path: Path) -> None:
    async with await _stand_in(tmp_path, batch_rate="operations") as server:
        client = BusinessCentralClient(
            api_url(server), StaticToken(DEFAULT_TOKEN), timeout=CLIENT_TIMEOUT_S, batch_slots=CallSlots(5)
        )
        try:
            async with httpx.AsyncClient(base_url=server.url) as admin:
                await set_faults(admin, rate_limit=5, rate_window_s=60)
                throttled = await asyncio.gather(
                    *(client.deliver(upsert_customer(f"cust-{n}")) for n in range(8)), return_exceptions=True
                )
                # One request of eight lookups is eight calls to a limit of five: 429 for all.
                assert all(isinstance(e, ErpTransientError) and e.status == 429 for e in throttled)
                assert [e["fault"] for e in await requests_log(admin)] == ["rate_limit"]
        finally:
            await client.aclose()


async def test_a_batch_has_time_for_each_of_its_operations(tmp_path: Path) -> None:
    async with await _stand_in(tmp_path) as server:
        # One call's timeout is shorter than the answer takes; a $batch of two operations gets
        # 2 x operation_timeout_s more, and waits for it.
        client = BusinessCentralClient(
            api_url(server), StaticToken(DEFAULT_TOKEN), timeout=CLIENT_TIMEOUT_S, operation_timeout_s=HANG_S
        )
        try:
            await client.deliver(upsert_customer())
            async with httpx.AsyncClient(base_url=server.url) as admin:
                await set_faults(admin, latency_ms=HANG_S * 1000, scope=r"Microsoft\.NAV\.post")
                receipt = await client.deliver(post_invoice())
            assert receipt.document_number and receipt.document_number.startswith("PS-INV")
        finally:
            await client.aclose()
