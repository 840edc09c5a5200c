"""A worker killed with kill -9 mid-stream and restarted on its data: no document is lost, and
duplicates on erp.commands carry the same idempotency key, and the ERP holds each document once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import orjson

from tests.support import (
    Stack,
    assert_erp_holds_exactly,
    consume_until,
    erp_documents_of,
    finish_simulation,
    start_simulation,
)


def test_kill_9_mid_stream_loses_nothing(stack: Stack, tmp_path: Path) -> None:
    truth_path = tmp_path / "truth.json"
    worker = stack.start_worker()
    simulate = start_simulation(stack, truth_path, "--customers", "200", "--seed", "23")
    commands_topic = stack.topic("erp.commands")
    # Let it get going, then kill it in the middle of the stream.
    asyncio.run(
        consume_until(stack.bootstrap, [commands_topic], lambda f: len(f[commands_topic]) >= 500, timeout=120)
    )
    worker.kill()
    killed_at = time.monotonic()
    truth = finish_simulation(simulate, truth_path)
    restarted = stack.start_worker_again(worker)
    wanted = (
        {f"post_invoice-stripe-{i['invoice_id']}" for i in truth["invoices"]}
        | {f"apply_payment-stripe-{p['payment_id']}" for p in truth["payments"]}
        | {f"post_credit_memo-stripe-{m['credit_memo_id']}" for m in truth["credit_memos"]}
    )

    def done(found: dict[str, list]) -> bool:  # type: ignore[type-arg]
        return wanted <= {orjson.loads(v)["idempotency_key"] for _, v, _ in found[commands_topic]}

    found = asyncio.run(consume_until(stack.bootstrap, [commands_topic], done, timeout=300))
    keys = Counter(orjson.loads(v)["idempotency_key"] for _, v, _ in found[commands_topic])
    documents = {k: n for k, n in keys.items() if not k.startswith("upsert_customer")}
    assert set(documents) == wanted  # none missing, none extra
    duplicates = sum(n - 1 for n in documents.values())
    assert stack.erp is not None
    expected = erp_documents_of(truth)
    assert_erp_holds_exactly(stack.erp.wait_for(expected), expected)  # the sink posted each once
    print(
        f"\nkill -9 after 500 commands; restarted worker ready in {restarted.ready_after:.1f}s; "
        f"recovered in {time.monotonic() - killed_at:.1f}s; {len(documents)} documents, "
        f"{duplicates} duplicate command(s) on erp.commands (same keys)"
    )
