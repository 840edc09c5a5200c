"""The trace's pure parts: the window, the partition of a key, which records are hops (by header,
or by the adapter for a source record without one), their summaries and order. (Reading real
topics: tests/integration/test_views.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from canonical import codec
from connectors.stripe.samples import event_envelope, invoice_object
from streams import headers as h
from streams.operations.replay import RawRecord
from streams.web.trace import (
    _minting_adapters,
    customer_refs,
    parse_since,
    partition_for_key,
    select_hops,
    summarize,
)
from tests.factories import invoice_event

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
T = 1_767_225_600


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, NOW - timedelta(hours=24)),
        ("", NOW - timedelta(hours=24)),
        ("90s", NOW - timedelta(seconds=90)),
        ("15m", NOW - timedelta(minutes=15)),
        ("6h", NOW - timedelta(hours=6)),
        ("2d", NOW - timedelta(days=2)),
        ("3600", NOW - timedelta(hours=1)),
        ("2026-02-28T00:00:00Z", datetime(2026, 2, 28, tzinfo=UTC)),
        ("2026-02-28T02:00:00+02:00", datetime(2026, 2, 28, tzinfo=UTC)),
    ],
)
def test_the_window_starts_at_an_instant_or_a_duration_back(text: str | None, expected: datetime) -> None:
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-02-28T00:00:00", "-5h"])
def test_a_window_start_that_says_nothing_clear_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_since(text, NOW)


def test_a_key_hashes_to_the_partition_kafkas_default_partitioner_picks() -> None:
    partitioner = DefaultPartitioner()
    for key in ("cust-crm-001SIM000000000", "cus_x", "é-ü", "a" * 300):
        for partitions in (1, 4, 8, 12):
            expected = partitioner(key.encode(), list(range(partitions)), list(range(partitions)))
            assert partition_for_key(key, partitions) == expected


def record(
    topic: str,
    offset: int,
    value: Any,
    at: datetime,
    key: str | None = None,
    correlation: str | None = None,
    causation: str | None = None,
    **headers: str,
) -> tuple[str, RawRecord]:
    hdrs: list[tuple[str, bytes]] = []
    if correlation is not None:
        hdrs.append((h.CORRELATION_ID, correlation.encode()))
    if causation is not None:
        hdrs.append((h.CAUSATION_ID, causation.encode()))
    hdrs += [(k, v.encode()) for k, v in headers.items()]
    raw = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
    return topic, RawRecord(topic, 0, offset, at, key.encode() if key else None, raw, tuple(hdrs))


def stripe_invoice_event(event_id: str) -> bytes:
    inv = invoice_object("in_tr1", "cus_tr", "GB", [("prod_platform", 1)], status="open", created=T)
    return orjson.dumps(event_envelope(event_id, "invoice.finalized", inv, T + 60))


def test_hops_match_on_the_correlation_header_in_time_order_with_their_summaries() -> None:
    corr = "corr-1"
    change = invoice_event(event_id="evt_tr1", correlation_id=corr)
    records = [
        record(
            "erp.results",
            3,
            {
                "command": "post_invoice",
                "outcome": "posted",
                "document_number": "INV-1",
                "idempotency_key": "k1",
                "attempts": 1,
            },
            NOW + timedelta(seconds=3),
            "c1",
            corr,
            "k1",
        ),
        record(
            "billing.changes",
            10,
            stripe_invoice_event("evt_tr1"),
            NOW,
            "cus_tr",
            corr,
            "webhook:stripe:evt_tr1",
        ),
        record(
            "ledgerflow.canonical",
            5,
            orjson.loads(codec.dumps(change)),
            NOW + timedelta(seconds=1),
            "c1",
            corr,
            "evt_tr1",
        ),
        record(
            "erp.commands",
            4,
            {"command": "post_invoice", "idempotency_key": "k1", "customer_id": "c1"},
            NOW + timedelta(seconds=2),
            "c1",
            corr,
            "evt_tr1",
        ),
        record("erp.commands", 9, {"command": "post_invoice"}, NOW, "c2", "another", "x"),
        record(
            "ledgerflow.dlq",
            1,
            b"\xff",
            NOW + timedelta(seconds=4),
            "cus_tr",
            corr,
            "billing.changes/0/11",
            **{h.DLQ_REASON: "not_json: bad", h.SOURCE_TOPIC: "billing.changes"},
        ),
    ]
    hops = select_hops(records, corr)
    assert [(hop.topic, hop.stage) for hop in hops] == [
        ("billing.changes", "source"),
        ("ledgerflow.canonical", "ingest"),
        ("erp.commands", "core"),
        ("erp.results", "sink (ERP call)"),
        ("ledgerflow.dlq", "dead letter"),
    ]
    source, canonical, command, result, dlq = hops
    assert source.summary == {
        "event": "invoice.finalized",
        "event_id": "evt_tr1",
        "object": "invoice",
        "object_id": "in_tr1",
        "status": "open",
    }
    assert canonical.summary["entity_id"] == "in_100" and canonical.causation_id == "evt_tr1"
    assert command.summary == {"command": "post_invoice", "idempotency_key": "k1", "customer_id": "c1"}
    assert result.summary["outcome"] == "posted" and result.summary["document_number"] == "INV-1"
    assert dlq.summary == {"reason": "not_json: bad", "source_topic": "billing.changes"}
    assert all(hop.matched_by == "header" for hop in hops)
    assert hops[0].to_json()["timestamp"] == NOW.isoformat()


def test_a_source_record_without_headers_is_matched_by_the_id_stage_1_mints_for_it() -> None:
    event_id = "evt_noheader"
    corr = h.stable_id("correlation", "stripe", event_id)  # what the Stripe adapter mints without a header
    change = invoice_event(event_id=event_id, correlation_id=corr, customer_ref="cus_tr")
    records = [
        record("billing.changes", 1, stripe_invoice_event(event_id), NOW, "cus_tr"),
        record("billing.changes", 2, stripe_invoice_event("evt_other"), NOW, "cus_tr"),
        record("billing.changes", 3, stripe_invoice_event(event_id), NOW, "cus_elsewhere"),
        record(
            "ledgerflow.canonical",
            7,
            orjson.loads(codec.dumps(change)),
            NOW + timedelta(seconds=1),
            "c1",
            corr,
            event_id,
        ),
    ]
    hops = select_hops(records, corr, _minting_adapters("crm_account_id"))
    assert [(hop.topic, hop.offset, hop.matched_by) for hop in hops] == [
        ("billing.changes", 1, "adapter"),
        ("ledgerflow.canonical", 7, "header"),
    ]
    assert customer_refs(records) == {"cus_tr"}
    # Without the adapters nothing is guessed.
    assert [hop.topic for hop in select_hops(records, corr)] == ["ledgerflow.canonical"]


def test_summaries_never_carry_the_document() -> None:
    _, exc = record(
        "ledgerflow.exceptions",
        1,
        {
            "exception_id": "x",
            "reason": "erp_rejected",
            "status": "open",
            "message": "ap@acme.example said no",
        },
        NOW,
    )
    assert summarize("ledgerflow.exceptions", exc) == {
        "exception_id": "x",
        "reason": "erp_rejected",
        "status": "open",
    }
    _, broken = record("erp.results", 1, b"not json", NOW)
    assert summarize("erp.results", broken) == {}
