"""The bench's pure parts: input headers, completion, latency per stage, profile summary."""

from __future__ import annotations

import orjson

from bench.harness import (
    Expected,
    Observed,
    format_table,
    percentiles,
    source_records,
    stage_latencies,
    summarize_profile,
    tenths,
)
from connectors.simulation import generate
from streams import headers as h
from streams.metrics import READY_TIMESTAMP


def test_source_records_carry_the_correlation_the_ingress_would_set() -> None:
    scenario = generate(3, months=2, seed=5, duplicate_rate=0.3)
    records = source_records(scenario.messages)
    assert [r.topic for r in records] == [m.topic for m in scenario.messages]
    stripe = [r for r in records if r.topic in ("billing.changes", "payments.changes")]
    for r in stripe:
        event_id = orjson.loads(r.value)["id"]
        assert r.correlation_id == h.stable_id("correlation", "stripe", event_id)
    # A redelivered Stripe event keeps its correlation id; relay messages each have their own.
    assert len({r.correlation_id for r in stripe}) < len(stripe)
    relays = [r for r in records if r.topic in ("crm.changes", "clm.changes")]
    assert len({r.correlation_id for r in relays}) == len(relays)


def test_a_run_is_done_when_every_document_and_customer_is_confirmed() -> None:
    truth = generate(2, months=2, seed=5).truth
    expected = Expected.of(truth)
    assert f"post_invoice-stripe-{truth['invoices'][0]['invoice_id']}" in expected.documents
    seen = Observed()
    for key in expected.documents:
        seen.add_result(10, orjson.dumps({"outcome": "posted", "idempotency_key": key, "command": "x"}))
    assert not expected.met_by(seen)  # no customer confirmed yet
    for n in range(expected.customers):
        result = {"outcome": "posted", "idempotency_key": f"u{n}", "command": "upsert_customer"}
        seen.add_result(10, orjson.dumps({**result, "customer_id": f"c{n}"}))
    seen.add_result(10, orjson.dumps({"outcome": "failed", "idempotency_key": "nope", "command": "x"}))
    assert expected.met_by(seen) and "nope" not in seen.confirmed_at


def test_percentiles_are_nearest_rank() -> None:
    assert percentiles([]) is None
    stats = percentiles(list(range(1, 101)))
    assert stats == {"count": 100, "p50": 50, "p95": 95, "p99": 99, "max": 100}
    assert percentiles([7]) == {"count": 1, "p50": 7, "p95": 7, "p99": 7, "max": 7}


def test_latency_per_stage_follows_correlation_then_idempotency_key() -> None:
    seen = Observed()
    headers = [(h.CORRELATION_ID, b"corr-1")]
    seen.add_command(1_150, orjson.dumps({"idempotency_key": "post_invoice-a"}), headers)
    seen.add_command(1_900, orjson.dumps({"idempotency_key": "post_invoice-a"}), headers)  # re-sent
    seen.add_command(1_200, orjson.dumps({"idempotency_key": "retry-only"}), [])
    posted = {"outcome": "posted", "idempotency_key": "post_invoice-a", "command": "post_invoice"}
    seen.add_result(1_400, orjson.dumps(posted))
    latency = stage_latencies({"corr-1": 1_000}, seen)
    assert latency["source_to_command"] == {"count": 1, "p50": 150, "p95": 150, "p99": 150, "max": 150}
    assert latency["command_to_confirmed"] == {"count": 1, "p50": 250, "p95": 250, "p99": 250, "max": 250}
    assert latency["source_to_confirmed"] == {"count": 1, "p50": 400, "p95": 400, "p99": 400, "max": 400}
    assert (seen.commands, seen.first_command_at, seen.last_command_at) == (3, 1_150, 1_900)
    assert latency["source_to_command_by_tenth"][0]["p50"] == 150


def test_ready_latency_starts_at_the_last_input_a_command_waited_for() -> None:
    seen = Observed()
    early = [(h.CORRELATION_ID, b"corr-early"), (READY_TIMESTAMP, b"1800")]  # released by a later input
    seen.add_command(
        1_900, orjson.dumps({"idempotency_key": "apply_payment-p", "command": "apply_payment"}), early
    )
    prompt = [(h.CORRELATION_ID, b"corr-prompt")]
    seen.add_command(
        1_150, orjson.dumps({"idempotency_key": "post_invoice-i", "command": "post_invoice"}), prompt
    )
    latency = stage_latencies({"corr-early": 1_000, "corr-prompt": 1_000}, seen)
    assert latency["source_to_command_by_command"]["apply_payment"]["p50"] == 900
    assert latency["ready_to_command_by_command"]["apply_payment"]["p50"] == 100
    assert latency["ready_to_command_by_command"]["post_invoice"]["p50"] == 150  # no wait: the same
    assert latency["ready_to_command"]["count"] == 2


def test_latencies_split_into_tenths_of_the_run_by_source_time() -> None:
    samples = [(t, float(t // 100)) for t in range(0, 1000, 10)] + [(1000, 99.0)]
    parts = tenths(samples)
    assert len(parts) == 10 and [min(p) for p in parts] == [float(i) for i in range(10)]
    assert parts[9][-1] == 99.0  # the last instant falls in the last tenth
    assert tenths([]) == []
    assert tenths([(5, 1.0)]) == [[1.0]] + [[]] * 9


def test_profile_summary_ranks_leaf_frames_and_packages_and_sets_the_loops_wait_apart() -> None:
    raw = "\n".join(
        [
            "<module> (streams/__main__.py);_ingest (agents/ingest.py);loads (pydantic/main.py) 60",
            "<module> (streams/__main__.py);run (faust/agents/agent.py) 30",
            "<module> (streams/__main__.py);_run_once (asyncio/base_events.py);EpollSelector.select "
            "(selectors.py) 6",
            "<module> (streams/__main__.py);Worker.execute_from_commandline (mode/worker.py) 3",  # uvloop
            "Thread.run (threading.py);ServiceThread._start_thread (mode/threads.py) 1",  # its thread's
            "Thread.run (threading.py);_worker (concurrent/futures/thread.py) 10",  # an idle pool
            "garbage line",
        ]
    )
    text = summarize_profile(raw, "title")
    assert "110 samples at 100 Hz; 20 (18.2%) waiting, left out" in text
    own, rest = text.split("Own time by package:")
    assert own.index("loads (pydantic/main.py)") < own.index("run (faust/agents/agent.py)")
    assert "66.7%" in own and "select" not in own.split("\n", 2)[2]
    by_package, ours = rest.split("Top")
    assert "pydantic" in by_package and "faust" in by_package
    assert "selectors" not in by_package and "mode" not in by_package and "concurrent" not in by_package
    assert "_ingest (agents/ingest.py)" in ours and "__main__" not in ours
    assert summarize_profile("", "t").endswith("(no samples)\n")


def test_table_shows_each_contender_and_the_ratios() -> None:
    run = {"events": 100, "seconds": 2.0, "peak_rss_mb": 80.0, "cpu_s": 2.0}
    latency = {"source_to_command": {"p50": 5, "p95": 9, "p99": 12, "max": 20, "count": 3}}
    results = {
        "started_at": "2026-01-01T00:00:00+00:00",
        "machine": {"host": "h", "cpus": 2, "kafka": "4.1.1", "python": "3.11"},
        "parameters": {"customers": 3, "months": 2, "partitions": 4},
        "input": {"messages": 100},
        "contenders": {
            "ledgerflow": {
                **run,
                "events_per_s": 50.0,
                "latency_ms": latency,
                "paced": {**run, "target_rate": 500.0, "produced_per_s": 499.0, "latency_ms": latency},
            },
            "quix": {**run, "events_per_s": 400.0},
        },
        "ratios": {"ledgerflow_to_quix": 0.125},
    }
    table = format_table(results)
    assert "ledgerflow" in table and "paced @500/s" in table and "quix" in table
    assert "5/9/12" in table and "ledgerflow/quix 0.12" in table
