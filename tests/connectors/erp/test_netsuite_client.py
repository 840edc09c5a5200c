"""NetSuiteClient against the sandbox over real HTTP: upserts, reads, paging, refusals, faults."""

from __future__ import annotations

import time
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from canonical import ApplyPayment, PostCreditMemo
from connectors.erp import (
    ErpAuthError,
    ErpPermanentError,
    ErpTransientError,
    ErpUncertainError,
    NetSuiteClient,
    RecordType,
    RetryPolicy,
    StaticToken,
    call_with_retries,
)
from connectors.erp.sandbox import DEFAULT_TOKEN, SandboxServer
from tests.connectors.erp.builders import (
    apply_payment,
    post_credit_memo,
    post_invoice,
    upsert_contract,
    upsert_customer,
    void_invoice,
)
from tests.connectors.erp.support import (
    CLIENT_TIMEOUT_S,
    HANG_S,
    documents,
    no_sleep,
    requests_log,
    sandbox_config,
    set_faults,
)

C = TypeVar("C", ApplyPayment, PostCreditMemo)


async def test_upserting_twice_makes_one_document_written_twice(
    netsuite: NetSuiteClient, admin: httpx.AsyncClient
) -> None:
    first = await netsuite.deliver(upsert_customer(name="Acme Corp"))
    second = await netsuite.deliver(upsert_customer(name="Acme Corporation"))
    assert first.created is True and second.created is False
    assert first.erp_internal_id == second.erp_internal_id
    assert first.document_number == second.document_number == "CUST000001"
    state = await documents(admin)
    assert state["by_external_id"]["customer"]["cust-1"] == {"documents": 1, "writes": 2}
    assert state["duplicates"] == []
    [doc] = state["documents"]
    assert doc["body"]["companyName"] == "Acme Corporation"


async def test_an_invoice_is_numbered_and_read_back_in_minor_units(netsuite: NetSuiteClient) -> None:
    await netsuite.deliver(upsert_customer())
    receipt = await netsuite.deliver(post_invoice())
    assert (receipt.record_type, receipt.external_id) == (RecordType.INVOICE, "stripe-in_1")
    assert receipt.document_number == "INV000001" and receipt.created
    document = await netsuite.get(RecordType.INVOICE, "stripe-in_1")
    assert document is not None
    assert (document.erp_internal_id, document.document_number) == (receipt.erp_internal_id, "INV000001")
    assert (document.status, document.currency, document.total) == ("Open", "USD", 10720)
    # NetSuite's own shape: the customer by internal id, the amounts computed in major units.
    customer = await netsuite.get(RecordType.CUSTOMER, "cust-1")
    assert customer is not None and document.body["entity"] == {"id": customer.erp_internal_id}
    assert document.body["total"] == Decimal("107.20") and document.body["amountRemaining"] == Decimal(
        "107.20"
    )
    assert await netsuite.get(RecordType.INVOICE, "stripe-in_404") is None


async def test_every_request_carries_the_commands_correlation_id(
    netsuite: NetSuiteClient, admin: httpx.AsyncClient
) -> None:
    await netsuite.deliver(upsert_customer(correlation_id="corr-cust"))
    await netsuite.deliver(post_invoice(correlation_id="corr-inv"))
    log = await requests_log(admin)
    assert [(e["method"], e["correlation_id"], e["status"]) for e in log] == [
        ("PUT", "corr-cust", 204),
        ("GET", "corr-cust", 200),
        ("PUT", "corr-inv", 204),
        ("GET", "corr-inv", 200),
    ]
    assert log[2]["path"] == "/services/rest/record/v1/invoice/eid:stripe-in_1"
    assert [e["seq"] for e in log] == sorted(e["seq"] for e in log)
    assert len(await requests_log(admin, correlation_id="corr-inv")) == 2


async def test_a_correlation_id_no_http_header_can_hold_goes_percent_encoded(
    netsuite: NetSuiteClient, admin: httpx.AsyncClient
) -> None:
    # Kafka headers may hold any bytes; the fuzz test once sent "ł" on to the ERP call.
    await netsuite.deliver(upsert_customer(correlation_id="corr-ł\n1"))
    log = await requests_log(admin)
    assert [(e["method"], e["correlation_id"], e["status"]) for e in log] == [
        ("PUT", "corr-%C5%82%0A1", 204),
        ("GET", "corr-%C5%82%0A1", 200),
    ]


async def test_payments_credit_memos_and_contracts_are_booked(
    netsuite: NetSuiteClient, admin: httpx.AsyncClient
) -> None:
    await netsuite.deliver(upsert_customer())
    await netsuite.deliver(post_invoice())
    payment = await netsuite.deliver(apply_payment(amount=5000))
    memo = await netsuite.deliver(post_credit_memo())
    invoice = await netsuite.get(RecordType.INVOICE, "stripe-in_1")
    assert invoice is not None and invoice.body["amountRemaining"] == Decimal("46.40")  # 107.20-50-10.80
    # The contract started in 2019, a closed period: a sales order posts nothing, so it is accepted.
    order = await netsuite.deliver(upsert_contract())
    paid = await netsuite.get(RecordType.CUSTOMER_PAYMENT, "stripe-pi_1")
    assert paid is not None and paid.total == 5000
    assert paid.body["apply"]["links"]  # sublists come as links unless expandSubResources
    assert paid.document_number == "PYMT000001"
    state = await documents(admin)
    assert len(state["documents"]) == 5
    numbers = {d["record_type"]: d["document_number"] for d in state["documents"]}
    assert (numbers["creditMemo"], numbers["salesOrder"]) == ("CM000001", "SO000001")
    # Nothing reads their numbers: the receipt takes the internal id from the upsert's Location.
    ids = {d["record_type"]: str(d["internal_id"]) for d in state["documents"]}
    assert (payment.erp_internal_id, memo.erp_internal_id, order.erp_internal_id) == (
        ids["customerPayment"],
        ids["creditMemo"],
        ids["salesOrder"],
    )
    assert (payment.document_number, payment.created) == (None, None)


async def test_a_payment_applies_what_remains_due_and_a_credit_on_a_paid_invoice_stays_unapplied(
    netsuite: NetSuiteClient, admin: httpx.AsyncClient
) -> None:
    await netsuite.deliver(upsert_customer())
    await netsuite.deliver(post_invoice())  # 107.20 due
    # NetSuite refuses to apply more than remains due; the stand-in does too.
    with pytest.raises(ErpPermanentError, match="remains due"):
        await netsuite.deliver(apply_payment(amount=20000))
    overpaid = apply_payment(amount=20000)  # stage 2 applies what remains; the rest is unapplied
    await netsuite.deliver(_with_applied(overpaid, 10720))
    # The invoice is paid: the credit stays on the customer's account.
    await netsuite.deliver(_with_applied(post_credit_memo(), 0))
    views = {d["record_type"]: d["books"] for d in (await documents(admin))["documents"]}
    assert views["invoice"]["remaining"] == 0
    assert views["customerPayment"]["amount"] == 20000
    assert views["customerPayment"]["applied_to"] == {"stripe-in_1": 10720}
    assert (views["creditMemo"]["amount"], views["creditMemo"]["applied_to"]) == (1080, {})


def _with_applied(command: C, applied: int) -> C:
    document = command.document.model_copy(update={"applied": applied})  # type: ignore[attr-defined]
    return command.model_copy(update={"document": document})


async def test_only_customers_and_invoices_are_read_back_after_the_upsert(
    netsuite: NetSuiteClient, admin: httpx.AsyncClient
) -> None:
    """Their numbers reach the CRM write-back; the other records' numbers nothing reads."""
    commands = (
        upsert_customer(),
        post_invoice(),
        apply_payment(amount=9640),
        post_credit_memo(),
        upsert_contract(),
    )
    for command in commands:
        await netsuite.deliver(command)
    log = await requests_log(admin)
    assert [(e["method"], e["path"].split("/")[-2]) for e in log] == [
        ("PUT", "customer"),
        ("GET", "customer"),
        ("PUT", "invoice"),
        ("GET", "invoice"),
        ("PUT", "customerPayment"),
        ("PUT", "creditMemo"),
        ("PUT", "salesOrder"),
    ]


async def test_without_read_back_numbers_come_from_one_suiteql_query_per_record_type(
    netsuite: NetSuiteClient, admin: httpx.AsyncClient
) -> None:
    """The sink's way: upserts without the GET, then the batch's numbers in one query each."""
    invoices = [f"stripe-in_{n}" for n in (1, 2, 3, 4)]
    await netsuite.deliver(upsert_customer(), read_back=False)
    receipts = [await netsuite.deliver(post_invoice(external_id=e), read_back=False) for e in invoices]
    assert {r.document_number for r in receipts} == {None} and all(r.erp_internal_id for r in receipts)
    asked = [*invoices, "stripe-in_never", "o'brien"]  # quoted as SuiteQL wants, found in none
    numbers = await netsuite.document_numbers(RecordType.INVOICE, asked, "corr-q")
    customers = await netsuite.document_numbers(RecordType.CUSTOMER, ["cust-1"])
    assert sorted(numbers) == invoices  # those that do not exist are left out
    for receipt in receipts:
        read = await netsuite.get(RecordType.INVOICE, receipt.external_id)
        assert read is not None
        found = numbers[receipt.external_id]
        assert (found.erp_internal_id, found.document_number) == (
            receipt.erp_internal_id,
            read.document_number,
        )
    assert customers["cust-1"].document_number == "CUST000001"
    log = await requests_log(admin)
    queries = [e for e in log if e["path"].endswith("/suiteql")]
    assert [e["method"] for e in queries] == ["POST", "POST"] and queries[0]["correlation_id"] == "corr-q"
    assert [e["method"] for e in log if "/record/" in e["path"]] == ["PUT"] * 5 + ["GET"] * 4


async def test_document_numbers_chunks_the_ids_and_follows_the_pages(
    netsuite: NetSuiteClient, admin: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connectors.erp import client

    monkeypatch.setattr(client, "SUITEQL_IDS_MAX", 2)
    monkeypatch.setattr(client, "SUITEQL_PAGE", 1)
    await netsuite.deliver(upsert_customer(), read_back=False)
    invoices = [f"stripe-in_{n}" for n in range(3)]
    for external_id in invoices:
        await netsuite.deliver(post_invoice(external_id=external_id), read_back=False)
    numbers = await netsuite.document_numbers(RecordType.INVOICE, invoices)
    assert sorted(numbers) == invoices and len({d.document_number for d in numbers.values()}) == 3
    queries = [e for e in await requests_log(admin) if e["path"].endswith("/suiteql")]
    assert len(queries) == 3  # ids 0-1 in two pages of one row, then id 2


async def test_suiteql_pages_and_refuses_what_the_sandbox_does_not_answer(
    netsuite: NetSuiteClient, sandbox: SandboxServer
) -> None:
    await netsuite.deliver(upsert_customer(), read_back=False)
    for n in range(5):
        await netsuite.deliver(post_invoice(external_id=f"stripe-in_{n}"), read_back=False)
    url, auth = f"{sandbox.url}/services/rest/query/v1/suiteql", {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
    query = "SELECT id, externalid, tranid FROM transaction WHERE type = 'CustInvc' AND externalid IN "
    query += "(" + ", ".join(f"'stripe-in_{n}'" for n in range(5)) + ")"
    async with httpx.AsyncClient(headers=auth, timeout=5.0) as http:
        first = (await http.post(url, params={"limit": 2}, json={"q": query})).json()
        last = (await http.post(url, params={"limit": 2, "offset": 4}, json={"q": query})).json()
        assert (first["count"], first["hasMore"], first["totalResults"]) == (2, True, 5)
        assert (last["count"], last["hasMore"]) == (1, False)
        assert set(first["items"][0]) == {"links", "id", "externalid", "tranid"}
        for bad in ("SELECT * FROM transaction", query.replace("tranid", "amount"), "DELETE FROM customer"):
            refused = await http.post(url, json={"q": bad})
            assert refused.status_code == 400, bad
            assert refused.json()["o:errorDetails"][0]["o:errorCode"] == "INVALID_PARAMETER"


@pytest.mark.parametrize("transform_applies", [True, False], ids=["transform-applies", "client-applies"])
async def test_void_reverses_the_invoice_once_with_a_credit_memo(
    tmp_path: Path, transform_applies: bool
) -> None:
    """NetSuite's REST API has no void: the invoice is transformed into a credit memo keyed by
    the void, applied to it (by the transform or, where it does not, by the client)."""
    config = sandbox_config(tmp_path / "erp.sqlite3", transform_applies=transform_applies)
    async with SandboxServer(config) as sandbox:
        client = NetSuiteClient(sandbox.url, StaticToken(DEFAULT_TOKEN), timeout=CLIENT_TIMEOUT_S)
        async with httpx.AsyncClient(base_url=sandbox.url) as admin:
            await client.deliver(upsert_customer())
            posted = await client.deliver(post_invoice())
            voided = await client.deliver(void_invoice())
            assert voided.erp_internal_id == posted.erp_internal_id and voided.created is False
            again = await client.deliver(void_invoice(), uncertain=True)  # a retry after a lost answer
            assert again.erp_internal_id == posted.erp_internal_id
            invoice = await client.get(RecordType.INVOICE, "stripe-in_1")
            assert invoice is not None and invoice.status == "Paid In Full"
            assert invoice.body["amountRemaining"] == 0
            memo = await client.get(RecordType.CREDIT_MEMO, void_invoice().idempotency_key)
            assert (
                memo is not None
                and memo.total == 10720
                and memo.body["createdFrom"] == {"id": posted.erp_internal_id}
            )
            state = await documents(admin)
            assert state["by_external_id"]["creditMemo"] == {
                void_invoice().idempotency_key: {"documents": 1, "writes": 1 if transform_applies else 2}
            }
            with pytest.raises(ErpPermanentError) as raised:
                await client.deliver(apply_payment())
            assert raised.value.code == "USER_ERROR" and "0.00 remains due" in raised.value.message
        await client.aclose()


async def test_a_users_credit_from_the_invoice_is_a_credit_memo_not_a_void(
    netsuite: NetSuiteClient, sandbox: SandboxServer
) -> None:
    """Reconciliation reads an invoice as voided only when ledgerflow's void reversed it: a
    credit a user made with the invoice's Credit button is transformed from it too."""
    await netsuite.deliver(upsert_customer())
    posted = await netsuite.deliver(post_invoice())
    async with httpx.AsyncClient(
        base_url=sandbox.url, headers={"authorization": f"Bearer {DEFAULT_TOKEN}"}
    ) as ns:
        made = await ns.post(
            f"/services/rest/record/v1/invoice/{posted.erp_internal_id}/!transform/creditMemo",
            json={"externalId": "user-credit-1"},
        )
        assert made.status_code == 204, made.text
    [invoice] = await netsuite.list(RecordType.INVOICE)
    assert invoice.status != "voided"
    memos = await netsuite.list(RecordType.CREDIT_MEMO)
    assert [m.external_id for m in memos] == ["user-credit-1"]
    await netsuite.deliver(void_invoice())
    [invoice] = await netsuite.list(RecordType.INVOICE)
    assert invoice.status == "voided"
    assert [m.external_id for m in await netsuite.list(RecordType.CREDIT_MEMO)] == ["user-credit-1"]


async def test_voiding_an_unknown_invoice_never_creates_one(
    netsuite: NetSuiteClient, admin: httpx.AsyncClient
) -> None:
    await netsuite.deliver(upsert_customer())
    with pytest.raises(ErpPermanentError) as raised:
        await netsuite.deliver(void_invoice("stripe-in_never"))
    assert (raised.value.code, raised.value.status) == ("INVALID_KEY_OR_REF", 400)
    assert "stripe-in_never" in raised.value.message
    assert set((await documents(admin))["by_external_id"]) == {"customer"}


@pytest.mark.parametrize(
    ("command", "code", "words"),
    [
        (
            post_invoice(customer_id="cust-unknown"),
            "INVALID_KEY_OR_REF",
            "no customer with external id 'cust-unknown'",
        ),
        (post_invoice(subsidiary="XX99"), "LEDGERFLOW_UNMAPPED", "subsidiary 'XX99'"),
        (post_invoice(currency="JPY"), "INVALID_KEY_OR_REF", "JPY is not enabled for subsidiary 1"),
        (post_invoice(tran_date=date(2020, 6, 30)), "USER_ERROR", "2020-01-01 to 2020-12-31 is closed"),
        (
            apply_payment(invoice_external_id="stripe-in_missing"),
            "INVALID_KEY_OR_REF",
            "no invoice with external id 'stripe-in_missing'",
        ),
        (
            post_credit_memo(invoice_external_id="stripe-in_missing"),
            "INVALID_KEY_OR_REF",
            "stripe-in_missing",
        ),
    ],
    ids=[
        "unknown-customer",
        "unknown-subsidiary",
        "currency-not-enabled",
        "closed-period",
        "payment",
        "credit-memo",
    ],
)
async def test_validation_errors_are_permanent_with_the_erps_code_and_message(
    netsuite: NetSuiteClient, admin: httpx.AsyncClient, command: object, code: str, words: str
) -> None:
    await netsuite.deliver(upsert_customer())
    with pytest.raises(ErpPermanentError) as raised:
        await netsuite.deliver(command)  # type: ignore[arg-type]
    assert (raised.value.code, raised.value.status) == (code, 400)
    assert words in raised.value.message
    assert set((await documents(admin))["by_external_id"]) == {"customer"}


async def test_a_period_closed_at_runtime_refuses_postings(
    netsuite: NetSuiteClient, admin: httpx.AsyncClient
) -> None:
    await netsuite.deliver(upsert_customer())
    closed = await admin.post(
        "/admin/periods/close", json={"subsidiary": "US01", "start": "2026-02-01", "end": "2026-03-31"}
    )
    assert closed.status_code == 200
    assert {"subsidiary": "US01", "start": "2026-02-01", "end": "2026-03-31"} in closed.json()[
        "closed_periods"
    ]
    with pytest.raises(ErpPermanentError) as raised:
        await netsuite.deliver(post_invoice())
    assert raised.value.code == "USER_ERROR"
    assert "2026-02-01 to 2026-03-31 is closed for subsidiary US01" in raised.value.message
    # Another subsidiary's books are still open.
    await netsuite.deliver(upsert_customer("cust-uk", subsidiary="UK01", currency="GBP"))
    receipt = await netsuite.deliver(
        post_invoice("stripe-in_uk", customer_id="cust-uk", subsidiary="UK01", currency="GBP")
    )
    assert receipt.document_number == "INV000001"


async def test_list_pages_through_the_collection(sandbox: SandboxServer, admin: httpx.AsyncClient) -> None:
    client = NetSuiteClient(sandbox.url, StaticToken(DEFAULT_TOKEN), timeout=CLIENT_TIMEOUT_S)
    client.page_size = 3
    for n in range(7):
        await client.deliver(upsert_customer(f"cust-{n}"))
    listed = await client.list(RecordType.CUSTOMER, correlation_id="corr-list")
    nothing = await client.list(RecordType.INVOICE)
    await client.aclose()
    assert [d.external_id for d in listed] == [f"cust-{n}" for n in range(7)]
    assert [d.document_number for d in listed] == [f"CUST{n:06d}" for n in range(1, 8)]
    assert nothing == []
    calls = [
        (e["path"].rsplit("/", 1)[-1], e["query"])
        for e in await requests_log(admin, correlation_id="corr-list")
    ]
    # A page holds only ids and links, as NetSuite's: each record is then read by its id.
    pages = [query for last, query in calls if last == "customer"]
    assert pages == ["limit=3&offset=0", "limit=3&offset=3", "limit=3&offset=6"]
    assert sorted(last for last, _ in calls if last != "customer") == sorted(
        str(d.erp_internal_id) for d in listed
    )


async def test_a_429_burst_is_transient_with_the_erps_retry_after(
    netsuite: NetSuiteClient, admin: httpx.AsyncClient
) -> None:
    await set_faults(admin, burst_429=2, retry_after_s=2.5)
    with pytest.raises(ErpTransientError) as raised:
        await netsuite.deliver(upsert_customer())
    assert (raised.value.code, raised.value.status, raised.value.retry_after) == (
        "SSS_REQUEST_LIMIT_EXCEEDED",
        429,
        2.5,
    )
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    receipt, attempts = await call_with_retries(
        lambda uncertain: netsuite.deliver(upsert_customer(), uncertain),
        RetryPolicy(max_attempts=4),
        sleep=sleep,
    )
    assert attempts == 2 and receipt.created
    assert len(waits) == 1 and waits[0] >= 2.5
    assert (await set_faults(admin))["burst_429"] == 0


async def test_maintenance_and_server_errors_are_transient_and_write_nothing(
    netsuite: NetSuiteClient, admin: httpx.AsyncClient
) -> None:
    await set_faults(admin, maintenance=True, retry_after_s=30)
    with pytest.raises(ErpTransientError) as raised:
        await netsuite.deliver(upsert_customer())
    assert (raised.value.status, raised.value.retry_after) == (503, 30.0)
    await set_faults(admin, maintenance=False, burst_500=1)
    with pytest.raises(ErpTransientError) as raised:
        await netsuite.deliver(upsert_customer())
    assert (raised.value.code, raised.value.status) == ("UNEXPECTED_ERROR", 500)
    assert (await documents(admin))["documents"] == []
    assert [e["fault"] for e in await requests_log(admin)] == ["maintenance", "error"]


async def test_a_committed_write_whose_answer_is_lost_is_uncertain_and_the_retry_upserts(
    netsuite: NetSuiteClient, admin: httpx.AsyncClient
) -> None:
    await set_faults(admin, burst_timeout=1, hang_s=HANG_S)
    started = time.monotonic()
    with pytest.raises(ErpUncertainError):
        await netsuite.deliver(upsert_customer())
    assert time.monotonic() - started < HANG_S  # the client gave up at its own timeout
    assert (await documents(admin))["by_external_id"]["customer"]["cust-1"] == {"documents": 1, "writes": 1}
    await set_faults(admin, burst_timeout=1, timeout_mode="drop")
    receipt, attempts = await call_with_retries(
        lambda uncertain: netsuite.deliver(upsert_customer(), uncertain), RetryPolicy(), sleep=no_sleep
    )
    assert attempts == 2 and receipt.created is False
    assert (await documents(admin))["by_external_id"]["customer"]["cust-1"] == {"documents": 1, "writes": 3}


async def test_a_wrong_token_is_an_auth_error_after_one_retry(
    sandbox: SandboxServer, admin: httpx.AsyncClient
) -> None:
    client = NetSuiteClient(sandbox.url, StaticToken("wrong"), timeout=CLIENT_TIMEOUT_S)
    with pytest.raises(ErpAuthError) as raised:
        await client.deliver(upsert_customer())
    await client.aclose()
    assert (raised.value.code, raised.value.status) == ("INVALID_LOGIN", 401)
    assert client.requests == 2
    assert [e["status"] for e in await requests_log(admin)] == [401, 401]


async def test_documents_survive_a_restart_on_the_same_file(tmp_path: Path) -> None:
    config = sandbox_config(tmp_path / "erp.sqlite3")
    async with SandboxServer(config) as first:
        client = NetSuiteClient(first.url, StaticToken(DEFAULT_TOKEN))
        await client.deliver(upsert_customer())
        before = await client.deliver(post_invoice())
        await client.aclose()
    async with SandboxServer(config) as second:
        client = NetSuiteClient(second.url, StaticToken(DEFAULT_TOKEN))
        after = await client.get(RecordType.INVOICE, "stripe-in_1")
        again = await client.deliver(post_invoice())
        other = await client.deliver(post_invoice("stripe-in_2"))
        await client.aclose()
    assert after is not None
    assert (after.erp_internal_id, after.document_number, after.total) == (
        before.erp_internal_id,
        "INV000001",
        10720,
    )
    assert again.created is False and again.erp_internal_id == before.erp_internal_id
    assert other.document_number == "INV000002"
