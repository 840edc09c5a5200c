"""The pure decisions of the web views: auth, masking, exception filters, paging and the merge of
several workers' answers, ages, the 360's shape, pipeline health, and the ops page's escaping.
(The views over HTTP with two real workers: tests/integration/test_views.py.)"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest

from canonical import ContractStatus, Customer, ExceptionReason, ExceptionStatus, InvoiceStatus
from streams.web import ops_page
from streams.web.views import (
    Denial,
    ExceptionQuery,
    PartitionOffsets,
    WorkerAnswer,
    check_bearer,
    contracts_part,
    customer_360,
    customer_exceptions_part,
    decode_cursor,
    encode_cursor,
    exception_item,
    invoices_part,
    ledger_part,
    mask_email,
    mask_tax_id,
    mask_text,
    merge_exception_pages,
    merge_pipeline,
    select_local_exceptions,
    serving_denial,
    stage_health,
)
from tables.contracts import ContractRow, CustomerContracts
from tables.customers import CustomerMaster
from tables.exceptions import KeptException, KeyExceptions
from tables.invoices import CustomerInvoices, InvoiceErpStatus, InvoiceRow
from tests.agents.test_exceptions import CID, exception
from tests.factories import T0

NOW = T0 + timedelta(hours=2)


# --- auth ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("configured", "header", "expected"),
    [
        (None, "Bearer s3cret", (503, "not_configured")),
        ("", "Bearer s3cret", (503, "not_configured")),
        ("s3cret", None, (401, "unauthenticated")),
        ("s3cret", "", (401, "unauthenticated")),
        ("s3cret", "Basic czNjcmV0", (401, "unauthenticated")),
        ("s3cret", "Bearer", (401, "unauthenticated")),
        ("s3cret", "Bearer wrong", (401, "invalid_token")),
        ("s3cret", "Bearer s3cret-and-more", (401, "invalid_token")),
        ("s3cret", "Bearer s3cret", None),
        ("s3cret", "bearer  s3cret ", None),
    ],
)
def test_bearer_token_decisions(configured: str | None, header: str | None, expected: Any) -> None:
    denial = check_bearer(configured, header)
    assert (denial.status, denial.error) == expected if denial else expected is None


def test_a_denial_says_why_and_how_to_authenticate() -> None:
    denial = check_bearer("s3cret", None)
    assert denial is not None and "Bearer" in denial.detail
    assert denial.headers()["WWW-Authenticate"].startswith("Bearer")
    unset = check_bearer(None, "Bearer x")
    assert unset is not None and unset.body() == {
        "error": "not_configured",
        "detail": "LEDGERFLOW_API_TOKEN not set",
    }
    assert unset.headers() == {"Retry-After": "1"}


def test_a_rebalancing_or_recovering_worker_does_not_answer_from_its_tables() -> None:
    assert serving_denial(rebalancing=False, in_recovery=False) is None
    for flags in ((True, False), (False, True)):
        denial = serving_denial(*flags)
        assert denial is not None and denial.status == 503


# --- masking ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("email", "masked"),
    [
        ("jane.doe@example.com", "j***e@e***.com"),
        ("ap@acme.co.uk", "a***@a***.uk"),
        ("x@y.io", "x***@y***.io"),
        ("not-an-email", "***"),
        (None, None),
    ],
)
def test_emails_are_masked(email: str | None, masked: str | None) -> None:
    assert mask_email(email) == masked


def test_tax_ids_are_never_shown_in_full() -> None:
    assert mask_tax_id("GB123456789") == "***6789"
    assert mask_tax_id("DE 811 907 980") == "***7980"
    assert mask_tax_id("12345") == "***45"
    assert mask_tax_id("123") == "***"


def test_emails_inside_free_text_are_masked() -> None:
    text = "customer billing@acme.example rejected; contact ops@ledger.example"
    assert mask_text(text) == "customer b***g@a***.example rejected; contact o***s@l***.example"


# --- exceptions ------------------------------------------------------------------------------


def row(key: str, *records: tuple[Any, int]) -> KeyExceptions:
    """A table row from (BusinessException, offset) pairs."""
    return KeyExceptions(
        key=key,
        exceptions={
            exc.exception_id: KeptException(
                exception=exc, recorded_at=exc.last_seen, partition=0, offset=offset
            )
            for exc, offset in records
        },
    )


def rows_for_two_workers() -> tuple[list[KeyExceptions], list[KeyExceptions]]:
    a = [
        row(
            CID,
            (exception("a-1", first_seen=T0), 1),
            (exception("a-2", first_seen=T0 + timedelta(minutes=30)), 2),
        ),
        row(
            "cust-crm-2",
            (exception("a-3", customer_id="cust-crm-2", reason=ExceptionReason.ERP_REJECTED), 3),
            (exception("a-4", customer_id="cust-crm-2", status=ExceptionStatus.RESOLVED), 4),
        ),
    ]
    b = [
        row(
            "cust-crm-3", (exception("b-1", customer_id="cust-crm-3", first_seen=T0 - timedelta(hours=1)), 5)
        ),
        row("cus_stripe", (exception("b-2", customer_id=None, entity_id="cus_stripe", offending=None), 6)),
    ]
    return a, b


def answers(query: ExceptionQuery, *worker_rows: list[KeyExceptions]) -> list[WorkerAnswer]:
    local = ExceptionQuery.from_params(query.local_params())
    out = []
    for i, rows in enumerate(worker_rows):
        body = select_local_exceptions(rows, local, NOW)
        body["partitions"] = [i * 2, i * 2 + 1]
        out.append(WorkerAnswer(f"http://w{i}", 200, body))
    return out


def test_open_exceptions_of_every_worker_are_merged_oldest_first_with_their_age() -> None:
    query = ExceptionQuery()
    merged = merge_exception_pages(answers(query, *rows_for_two_workers()), query, {0, 1, 2, 3}, NOW)
    assert [i["exception_id"] for i in merged["items"]] == ["b-1", "a-1", "a-3", "b-2", "a-2"]
    assert [i["age_s"] for i in merged["items"]] == [10800.0, 7200.0, 7200.0, 7200.0, 5400.0]
    assert merged["matched"] == 5 and merged["complete"] and merged["next_cursor"] is None
    assert merged["by_reason"] == {
        "erp_rejected": {"count": 1, "oldest_first_seen": T0.isoformat(), "oldest_age_s": 7200.0},
        "missing_tax_code": {
            "count": 4,
            "oldest_first_seen": (T0 - timedelta(hours=1)).isoformat(),
            "oldest_age_s": 10800.0,
        },
    }
    b2 = next(i for i in merged["items"] if i["exception_id"] == "b-2")
    assert b2["replayable"] is False and b2["key"] == "cus_stripe"


@pytest.mark.parametrize(
    ("params", "ids"),
    [
        ({"reason": "erp_rejected"}, ["a-3"]),
        ({"customer_id": "cust-crm-2", "status": "all"}, ["a-3", "a-4"]),
        ({"status": "resolved"}, ["a-4"]),
        ({"min_age_s": "7200"}, ["b-1", "a-1", "a-3", "b-2"]),
        ({"min_age_s": "10000"}, ["b-1"]),
        ({"exception_id": "a-2"}, ["a-2"]),
    ],
)
def test_filters(params: dict[str, str], ids: list[str]) -> None:
    query = ExceptionQuery.from_params(params)
    merged = merge_exception_pages(answers(query, *rows_for_two_workers()), query, {0, 1, 2, 3}, NOW)
    assert [i["exception_id"] for i in merged["items"]] == ids
    assert merged["matched"] == len(ids)


def test_offset_and_cursor_pages_cover_the_list_once_in_order() -> None:
    everything = [i["exception_id"] for i in _merged({})["items"]]
    by_offset = [
        i["exception_id"] for off in (0, 2, 4) for i in _merged({"limit": "2", "offset": str(off)})["items"]
    ]
    walked: list[str] = []
    params: dict[str, str] = {"limit": "2"}
    for _ in range(10):
        page = _merged(params)
        walked += [i["exception_id"] for i in page["items"]]
        if not page["next_cursor"]:
            break
        params = {"limit": "2", "cursor": page["next_cursor"]}
    assert by_offset == walked == everything


def _merged(params: dict[str, str]) -> dict[str, Any]:
    query = ExceptionQuery.from_params(params)
    return merge_exception_pages(answers(query, *rows_for_two_workers()), query, {0, 1, 2, 3}, NOW)


def test_an_exception_whose_key_moved_appears_once_with_its_latest_record() -> None:
    old = row("cus_stripe", (exception("m-1", customer_id=None, entity_id="cus_stripe"), 1))
    later = exception("m-1", status=ExceptionStatus.RESOLVED, last_seen=T0 + timedelta(minutes=1))
    new = KeyExceptions(
        key=CID,
        exceptions={
            "m-1": KeptException(exception=later, recorded_at=later.last_seen, partition=3, offset=9)
        },
    )
    query = ExceptionQuery(status="all")
    merged = merge_exception_pages(answers(query, [old], [new]), query, {0, 1, 2, 3}, NOW)
    assert [(i["exception_id"], i["status"]) for i in merged["items"]] == [("m-1", "resolved")]
    # On one worker, the stale open record does not count as open either.
    local = select_local_exceptions([old, new], ExceptionQuery(), NOW)
    assert local["items"] == [] and local["matched"] == 0


def test_a_worker_that_did_not_answer_leaves_its_partitions_missing() -> None:
    query = ExceptionQuery()
    a, _ = rows_for_two_workers()
    got = [*answers(query, a), WorkerAnswer("http://w1", 0, None, "ClientConnectorError")]
    merged = merge_exception_pages(got, query, {0, 1, 2, 3}, NOW)
    assert merged["complete"] is False and merged["missing_partitions"] == [2, 3]
    assert merged["workers"][1] == {
        "worker": "http://w1",
        "status": 0,
        "partitions": None,
        "error": "ClientConnectorError",
    }


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"reason": "bogus"}, "reason must be one of"),
        ({"status": "closed"}, "status must be one of"),
        ({"limit": "0"}, "limit must be between"),
        ({"limit": "x"}, "limit must be an integer"),
        ({"offset": "-1"}, "offset must be between"),
        ({"offset": "9999", "limit": "10"}, "offset must be between"),
        ({"min_age_s": "soon"}, "min_age_s must be a number"),
        ({"cursor": "!!"}, "cursor is not one"),
        ({"cursor": encode_cursor(("a", "b")), "offset": "2"}, "not both"),
    ],
)
def test_bad_parameters_are_refused_with_the_reason(params: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        ExceptionQuery.from_params(params)


def test_cursors_round_trip() -> None:
    key = (T0.isoformat(), "x-1")
    assert decode_cursor(encode_cursor(key)) == key


def test_exception_messages_are_masked_and_the_record_is_only_given_on_request() -> None:
    exc = exception(message="bounce from jane.doe@example.com")
    kept = KeptException(exception=exc, recorded_at=T0, partition=2, offset=5)
    item = exception_item(CID, kept, NOW)
    assert item["message"] == "bounce from j***e@e***.com" and "record" not in item
    assert item["position"] == {"partition": 2, "offset": 5} and item["age_s"] == 7200.0
    assert exception_item(CID, kept, NOW, raw=True)["record"]["message"] == exc.message


# --- the customer 360 ------------------------------------------------------------------------


def test_the_360_puts_every_system_side_by_side_with_personal_data_masked() -> None:
    master = CustomerMaster(
        customer_id=CID,
        record=Customer(
            source_ref=CID,
            crm_account_id="001EXC000000001",
            billing_customer_id="cus_exc",
            name="Exc Ltd",
            email="ap@exc.example",
            country="GB",
            currency="GBP",
            tax_ids=("GB123456789",),
        ),
        upserted_digest="abc",
        subsidiary="UK01",
        erp_internal_id="301",
    )
    contracts = CustomerContracts(
        customer_id=CID,
        contracts={
            "K-1": ContractRow(
                contract_id="K-1",
                status=ContractStatus.ACTIVE,
                version=(1,),
                effective_date=date(2026, 1, 1),
                currency="GBP",
            )
        },
    )
    invoices = CustomerInvoices(
        customer_id=CID,
        invoices={
            "in_1": InvoiceRow(
                invoice_id="in_1",
                status=InvoiceStatus.PAID,
                version=(3,),
                currency="GBP",
                total=12000,
                erp_status=InvoiceErpStatus.POSTED,
                idempotency_key="post_invoice-stripe-in_1",
                document_number="INV-7",
                erp_internal_id="901",
            )
        },
        payments={"pi_1": "apply_payment-stripe-pi_1"},
        confirmed={"apply_payment-stripe-pi_1": "902"},
    )
    exceptions = row(CID, (exception("x-1"), 1), (exception("x-2", status=ExceptionStatus.RESOLVED), 2))
    body = customer_360(
        CID,
        master,
        contracts_part(CID, contracts),
        invoices_part(CID, invoices),
        ledger_part(CID, None),
        customer_exceptions_part(CID, exceptions, NOW),
    )
    assert body["found"] is True
    assert body["identities"] == {
        "canonical_id": CID,
        "crm_account_id": "001EXC000000001",
        "stripe_customer_ids": ["cus_exc"],
        "erp_external_id": CID,
        "erp_internal_id": "301",
    }
    assert body["master"]["email"] == "a***@e***.example" and body["master"]["tax_ids"] == ["***6789"]
    assert body["invoices"][0]["document_number"] == "INV-7" and body["invoices"][0]["erp_status"] == "posted"
    assert body["payments"] == [
        {"payment_id": "pi_1", "idempotency_key": "apply_payment-stripe-pi_1", "erp_internal_id": "902"}
    ]
    assert [c["contract_id"] for c in body["contracts"]] == ["K-1"]
    assert [x["exception_id"] for x in body["open_exceptions"]] == ["x-1"]
    assert body["ledger"] == {"entries": [], "blocked_on": None, "queued": 0}


def test_a_customer_nothing_is_known_of_is_not_found() -> None:
    body = customer_360(
        CID,
        None,
        contracts_part(CID, None),
        invoices_part(CID, None),
        ledger_part(CID, None),
        customer_exceptions_part(CID, None, NOW),
    )
    assert body["found"] is False and body["master"] is None and body["invoices"] == []


# --- pipeline health -------------------------------------------------------------------------


def test_stage_health_sums_the_backlog_of_the_partitions_held() -> None:
    health = stage_health(
        [
            PartitionOffsets("billing.changes", 0, end=120, committed=100),
            PartitionOffsets("crm.changes", 1, end=10, committed=10),
            PartitionOffsets("erp.commands", 3, end=50, committed=None),
        ]
    )
    assert health["ingest"]["partitions"] == ["billing.changes:0", "crm.changes:1"]
    assert health["ingest"]["lag"] == 20 and health["ingest"]["unknown_lag"] == 0
    assert health["sink"]["lag"] == 0 and health["sink"]["unknown_lag"] == 1
    assert health["core"]["partitions"] == []


def test_merged_pipeline_says_who_holds_what_and_the_total_lag() -> None:
    def worker(name: str, offsets: list[PartitionOffsets]) -> WorkerAnswer:
        body = {"ready": True, "rebalancing": False, "in_recovery": False, "stages": stage_health(offsets)}
        return WorkerAnswer(name, 200, body)

    merged = merge_pipeline(
        [
            worker("http://w0", [PartitionOffsets("erp.commands", 0, 9, 4)]),
            worker("http://w1", [PartitionOffsets("erp.commands", 1, 3, 3)]),
            WorkerAnswer("http://w2", 0, None, "TimeoutError"),
        ],
        {"erp.commands": 2},
    )
    sink = merged["stages"]["sink"]
    assert (sink["assigned"], sink["expected"], sink["lag"]) == (2, 2, 5)
    assert sink["workers"] == {"http://w0": ["erp.commands:0"], "http://w1": ["erp.commands:1"]}
    assert [w["ready"] for w in merged["workers"]] == [True, True, None]


# --- the ops page ----------------------------------------------------------------------------


def test_the_ops_page_escapes_what_it_shows() -> None:
    hostile = "<script>alert(1)</script>"
    html = ops_page.render_exceptions(
        {
            "items": [
                {
                    "exception_id": 'x"><img src=x>',
                    "reason": "erp_rejected",
                    "status": "open",
                    "customer_id": hostile,
                    "entity_id": None,
                    "message": hostile,
                    "first_seen": T0.isoformat(),
                    "age_s": 93784,
                    "replayable": True,
                }
            ],
            "matched": 1,
            "by_reason": {"erp_rejected": {"count": 1, "oldest_age_s": 93784}},
        }
    )
    assert "<script>" not in html and "<img" not in html and "&lt;script&gt;" in html
    assert 'data-action="replay"' in html and "1d 2h" in html


def test_the_shell_runs_only_its_own_script() -> None:
    headers = ops_page.security_headers("n0nce")
    assert "script-src 'nonce-n0nce'" in headers["Content-Security-Policy"]
    shell = ops_page.render_shell("n0nce", "http://127.0.0.1:6066")
    assert '<script nonce="n0nce">' in shell and "sessionStorage" in shell
    assert "http://" not in shell.replace("http://127.0.0.1:6066", "")  # nothing loaded from elsewhere


@pytest.mark.parametrize(
    ("seconds", "text"), [(8.2, "8s"), (754, "12m 34s"), (7322, "2h 2m"), (93784, "1d 2h"), (None, "-")]
)
def test_ages_read_like_ages(seconds: float | None, text: str) -> None:
    assert ops_page.humanize_age(seconds) == text


def test_denial_type_is_what_the_views_answer_with() -> None:
    assert Denial(401, "unauthenticated", "x").headers()["WWW-Authenticate"]
