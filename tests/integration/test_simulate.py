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
            "crm.changes",
            "clm.changes",
            "erp.commands",
            "ledgerflow.exceptions",
            "ledgerflow.dlq",
        )
    }
    expected_keys = {f"post_invoice-stripe-{i['invoice_id']}" for i in truth["invoices"]}

    def done(found: dict[str, list]) -> bool:  # type: ignore[type-arg]
        return len(found[topics["erp.commands"]]) >= len(expected_keys)

    found = asyncio.run(consume_until(stack.bootstrap, list(topics.values()), done, timeout=240))
    for name, count in truth["messages"]["by_topic"].items():
        assert len(found[topics[name]]) == count, name  # what was produced is what the truth counts

    commands = [orjson.loads(v) for _, v, _ in found[topics["erp.commands"]]]
    keys = [c["idempotency_key"] for c in commands]
    assert set(keys) == expected_keys  # none missing, none extra
    assert len(keys) == len(set(keys))  # and none twice, despite 10% duplicates and 10% reordering
    # Every invoice is booked to the customer of the CRM account its Stripe customer names.
    account_of = {i["external_id"]: i["crm_account_id"] for i in truth["invoices"]}
    assert all(c["customer_id"] == f"cust-crm-{account_of[c['document']['external_id']]}" for c in commands)
    totals = {c["document"]["external_id"]: c["document"]["total"] for c in commands}
    assert totals == {i["external_id"]: i["total"] for i in truth["invoices"]}
    assert found[topics["ledgerflow.exceptions"]] == [] and found[topics["ledgerflow.dlq"]] == []
