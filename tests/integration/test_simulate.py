"""`ledgerflow simulate` against the real broker, and the worker turning it into exactly the
postings its ground truth implies."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import orjson

from tests.support import REPO, Stack, consume_until


def test_simulated_history_yields_exactly_the_ground_truths_invoices(stack: Stack, tmp_path: Path) -> None:
    truth_path = tmp_path / "truth.json"
    env = {**stack.env(0), "LEDGERFLOW_DATA_DIR": str(tmp_path / "unused")}
    stack.start_worker()  # creates the topics with the stack's partitions
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams",
            "simulate",
            "--customers",
            "200",
            "--seed",
            "7",
            "--truth",
            str(truth_path),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    truth = json.loads(truth_path.read_text())
    assert "messages/s" in out.stdout and f"{len(truth['invoices'])} invoices" in out.stdout

    topics = {
        name: stack.topic(name)
        for name in (
            "billing.changes",
            "payments.changes",
            "billing.invoice-payments",
            "crm.changes",
            "clm.changes",
            "erp.commands",
            "ledgerflow.exceptions",
            "ledgerflow.dlq",
        )
    }
    expected_keys = {f"post_invoice-stripe-{i['invoice_id']}" for i in truth["invoices"]}
    expected_payments = {f"apply_payment-stripe-{p['payment_id']}" for p in truth["payments"]}
    expected_memos = {f"post_credit_memo-stripe-{m['credit_memo_id']}" for m in truth["credit_memos"]}
    documents = len(expected_keys) + len(expected_payments) + len(expected_memos)

    wanted = expected_keys | expected_payments | expected_memos
    assert len(wanted) == documents

    def done(found: dict[str, list]) -> bool:  # type: ignore[type-arg]
        seen = {orjson.loads(v)["idempotency_key"] for _, v, _ in found[topics["erp.commands"]]}
        return wanted <= seen

    found = asyncio.run(consume_until(stack.bootstrap, list(topics.values()), done, timeout=240))
    for name, count in truth["messages"]["by_topic"].items():
        produced = [m for m in found[topics[name]] if "x-causation-id" not in m[2]]
        assert len(produced) == count, name  # what was produced is what the truth counts
    # Stage 1 passed each invoice payment on to payments.changes, keyed by its invoice's customer.
    invoice_payments = stack.topic("billing.invoice-payments")
    forwarded = [m for m in found[topics["payments.changes"]] if "x-causation-id" in m[2]]
    assert {m[2]["x-causation-id"].split("/")[0] for m in forwarded} == {invoice_payments}
    owner = {i["invoice_id"]: i["billing_customer_id"] for i in truth["invoices"]}
    assert all(k == owner[orjson.loads(v)["data"]["object"]["invoice"]] for k, v, _ in forwarded)

    everything = [orjson.loads(v) for _, v, _ in found[topics["erp.commands"]]]
    by_type: dict[str, list] = {}  # type: ignore[type-arg]
    for c in everything:
        by_type.setdefault(c["command"], []).append(c)
    assert {c["idempotency_key"] for c in by_type["apply_payment"]} == expected_payments
    assert {c["idempotency_key"] for c in by_type["post_credit_memo"]} == expected_memos
    # Each customer's last upsert carries what the sources say, merged by ownership.
    last_upsert = {c["customer_id"]: c["document"] for c in by_type["upsert_customer"]}
    assert {cid: (d["name"], d["country"], d["currency"]) for cid, d in last_upsert.items()} == {
        f"cust-crm-{c['crm_account_id']}": (c["name"], c["country"], c["currency"])
        for c in truth["customers"]
    }
    # Every document of a customer comes after that customer's first upsert (same partition, in order).
    first_upsert = {}
    for position, c in enumerate(everything):
        first_upsert.setdefault(c["customer_id"], position)
    assert all(everything[first_upsert[c["customer_id"]]]["command"] == "upsert_customer" for c in everything)
    commands = by_type["post_invoice"]
    keys = [c["idempotency_key"] for c in commands]
    assert set(keys) == expected_keys  # none missing, none extra
    assert len(keys) == len(set(keys))  # and none twice, despite 10% duplicates and 10% reordering
    # Every invoice is booked to the customer of the CRM account its Stripe customer names.
    account_of = {i["external_id"]: i["crm_account_id"] for i in truth["invoices"]}
    assert all(c["customer_id"] == f"cust-crm-{account_of[c['document']['external_id']]}" for c in commands)
    totals = {c["document"]["external_id"]: c["document"]["total"] for c in commands}
    assert totals == {i["external_id"]: i["total"] for i in truth["invoices"]}
    assert found[topics["ledgerflow.exceptions"]] == [] and found[topics["ledgerflow.dlq"]] == []
