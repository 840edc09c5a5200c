"""A worker killed with kill -9 mid-stream and restarted on its data: no document is lost, and
duplicates on erp.commands carry the same idempotency key (the sink posts each key once)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson

from tests.support import REPO, Stack, consume_until


def test_kill_9_mid_stream_loses_nothing(stack: Stack, tmp_path: Path) -> None:
    truth_path = tmp_path / "truth.json"
    worker = stack.start_worker()
    simulate = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streams",
            "simulate",
            "--customers",
            "200",
            "--seed",
            "23",
            "--truth",
            str(truth_path),
        ],
        cwd=REPO,
        env=stack.env(0),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    commands_topic = stack.topic("erp.commands")
    # Let it get going, then kill it in the middle of the stream.
    asyncio.run(
        consume_until(stack.bootstrap, [commands_topic], lambda f: len(f[commands_topic]) >= 500, timeout=120)
    )
    worker.kill()
    killed_at = time.monotonic()
    assert simulate.wait(300) == 0, simulate.stderr.read() if simulate.stderr else ""
    restarted = stack.start_worker_again(worker)
    truth = json.loads(truth_path.read_text())
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
    print(
        f"\nkill -9 after 500 commands; restarted worker ready in {restarted.ready_after:.1f}s; "
        f"recovered in {time.monotonic() - killed_at:.1f}s; {len(documents)} documents, "
        f"{duplicates} duplicate command(s) on erp.commands (same keys)"
    )
