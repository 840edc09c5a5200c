"""The ERP-bound mode's pure parts: counting the sandbox's request log as it is followed, the
figures of one run, the table. No broker, no processes (`test_bench.py` runs the mode itself)."""

from __future__ import annotations

from typing import Any

import orjson

from bench.harness import ErpCalls, Expected, Observed, call_kind, erp_bound_measures, erp_bound_table
from connectors.simulation import generate

RECORD = "/services/rest/record/v1"


def entry(seq: int, method: str = "PUT", path: str = f"{RECORD}/invoice/eid:x", **kw: Any) -> dict[str, Any]:
    return {"seq": seq, "method": method, "path": path, "status": 204, "fault": None, **kw}


def test_calls_are_told_apart_by_what_they_were_for() -> None:
    assert call_kind("PUT", f"{RECORD}/invoice/eid:stripe-in_1") == ("PUT record", "PUT invoice")
    assert call_kind("GET", f"{RECORD}/customer/eid:c") == ("GET record", "GET customer")
    assert call_kind("POST", "/services/rest/query/v1/suiteql") == ("POST suiteql", "POST suiteql")
    assert call_kind("POST", f"{RECORD}/invoice/12/!transform/creditMemo") == (
        "POST transform",
        "POST invoice",
    )
    assert call_kind("POST", "/oauth/token") == ("POST /oauth/token", "POST /oauth/token")
    bc = "/v2.0/t/sandbox/api/v2.0/companies(5b1f6f1e-0d3a-4c55-9a51-0c0000000001)"
    assert call_kind("POST", f"{bc}/salesInvoices") == ("POST salesInvoices", "POST salesInvoices")
    assert call_kind("POST", f"{bc}/customerPaymentJournals(7c0a)/Microsoft.NAV.post") == (
        "POST customerPaymentJournals/Microsoft.NAV.post",
        "POST customerPaymentJournals/Microsoft.NAV.post",
    )
    assert call_kind("POST", "/v2.0/t/sandbox/api/v2.0/$batch") == ("POST $batch", "POST $batch")


def test_the_log_is_counted_in_order_up_to_the_first_call_in_flight() -> None:
    calls = ErpCalls()
    calls.add([entry(2), entry(1), entry(3, status=None), entry(4, status=429, fault="concurrency_limit")])
    assert (calls.calls, calls.counted) == (4, 2)  # 3 is in flight: it and 4 wait for the next read
    calls.add(
        [
            entry(3),
            entry(4, status=429, fault="concurrency_limit"),
            entry(5, "GET", status=None, fault="drop"),
        ]
    )
    assert (calls.calls, calls.counted, calls.missed) == (5, 5, 0)  # a dropped call never gets a status
    summary = calls.summary()
    assert summary["refused"] == 1 and summary["refused_by_kind"] == {"PUT record": 1}
    assert summary["calls_by_kind"] == {"PUT record": 4, "GET record": 1}
    assert summary["statuses"] == {"204": 3, "429": 1, "None": 1}
    assert summary["log_uncounted"] == 0


def test_entries_that_left_the_log_before_they_were_read_are_missed_not_guessed() -> None:
    calls = ErpCalls()
    calls.add([entry(1)])
    calls.add([entry(5), entry(6)])  # 2..4 fell out of the sandbox's 2,000-entry log
    assert (calls.calls, calls.counted, calls.missed) == (6, 6, 3)
    assert sum(calls.by_kind.values()) == 3


def results(keys: list[tuple[str, str, str, int]]) -> Observed:
    """(key, command, outcome, at) → what `watch` would have seen."""
    seen = Observed()
    for key, command, outcome, at in keys:
        body = {"idempotency_key": key, "command": command}
        seen.add_command(at - 100, orjson.dumps(body), [])
        result = {**body, "outcome": outcome, "customer_id": "c0", "error_code": "USER_ERROR"}
        seen.add_result(at, orjson.dumps(result))
    return seen


def test_a_run_is_settled_when_every_document_is_answered_posted_or_refused() -> None:
    truth = generate(1, months=2, seed=5).truth
    expected = Expected.of(truth)
    keys = sorted(expected.documents)
    seen = results([("u0", "upsert_customer", "posted", 1_000)])
    for key in keys[:-1]:
        seen.add_result(2_000, orjson.dumps({"outcome": "posted", "idempotency_key": key, "command": "x"}))
    assert not expected.settled_by(seen)
    refusal = {"outcome": "failed", "idempotency_key": keys[-1], "command": "x", "error_code": "USER_ERROR"}
    seen.add_result(3_000, orjson.dumps(refusal))
    assert expected.settled_by(seen) and not expected.met_by(seen)
    assert seen.not_posted == {keys[-1]: "USER_ERROR"}


def test_one_runs_figures_against_the_bound() -> None:
    # 10 documents answered over 1.1 s (first command at 900 ms, last answer at 2,000) at 250 ms
    # and a limit of 5 (bound 20/s); 11 calls, one of them refused by the limit.
    answered = [(f"d{i}", "post_invoice", "posted", 1_000 + i * 100) for i in range(9)]
    seen = results([*answered, ("m", "post_credit_memo", "failed", 2_000)])
    calls = ErpCalls()
    calls.add([entry(i) for i in range(1, 11)] + [entry(11, status=429, fault="concurrency_limit")])
    expected = Expected(frozenset({"d0", "d1", "m"}), 0)
    r = erp_bound_measures(seen, calls, 5, 250.0, expected)
    assert (r["documents"], r["documents_confirmed"], r["documents_refused"]) == (10, 9, 1)
    assert r["refused_by_command"] == {"post_credit_memo": 1} and r["refused_codes"] == {"USER_ERROR": 1}
    assert r["expected_confirmed"] == 2 and r["documents_expected"] == 3
    assert r["seconds"] == 1.1 and r["documents_per_s"] == 9.09
    assert r["bound_per_s"] == 20.0 and r["share_of_bound"] == 0.455
    assert r["calls_per_document"] == 1.1 and r["refused"] == 1
    assert r["concurrency_used"] == round(10 * 0.25 / (5 * 1.1), 3)

    table = "\n".join(
        erp_bound_table({"erp_latency_ms": 250.0, "documents_expected": 3, "runs": {"5": r}, "targets": {}})
    )
    assert "N / 0.25 s" in table and "0.455" in table and "1.100" in table
    assert "PUT record 11" in table and "USER_ERROR 1" in table


def test_a_batch_counts_one_call_and_its_operations() -> None:
    bc = "/v2.0/t/sandbox/api/v2.0"
    calls = ErpCalls()
    batch = {**entry(1, "POST", status=200), "path": f"{bc}/$batch", "operations": 40}
    throttled = {**entry(2, "POST", status=429, fault="rate_limit"), "path": f"{bc}/$batch", "operations": 60}
    calls.add([batch, throttled, {**entry(3, "GET", status=200), "path": f"{bc}/companies"}])
    summary = calls.summary()
    assert (summary["calls"], summary["operations"], summary["throttled"]) == (3, 101, 1)
    seen = results([(f"d{i}", "post_invoice", "posted", 1_000 + i) for i in range(50)])
    r = erp_bound_measures(seen, calls, 5, 100.0, Expected(frozenset(), 0))
    assert (r["calls_per_document"], r["operations_per_document"]) == (0.06, 2.02)
