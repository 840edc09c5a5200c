"""Property tests of stage 1's per-message path (`agents.ingest.ingest_event`), tables as dicts:
whatever a source topic carries (any bytes, tombstones, mangled or misrouted platform payloads,
any key and headers), it never raises, and each message ends as canonical events, a parked
event, a typed exception, or one DLQ entry holding the message exactly as it came with a typed
reason, never a mix."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents import ingest
from agents.outbox import Outbox
from canonical import BusinessException, ChangeEvent, ExceptionReason, codec
from canonical.links import InvoiceOwner
from connectors.errors import RejectionReason
from streams import headers as h
from tables.identity import ParkedChanges
from tests.connectors.stripe.test_fuzz import json_values
from tests.fuzz.seeds import EDGE_VALUES, SOURCE_TOPICS, adapters, dumps_json, mangle_drawn, source_seeds

SEEDS = source_seeds()
ALL_SEEDS = [raw for values in SEEDS.values() for raw in values]
ADAPTERS = adapters()
REASONS = tuple(f"{r.value}: " for r in RejectionReason)
VALUES = json_values | st.sampled_from(EDGE_VALUES)
"""What a mangled field becomes: any small JSON value, or one past the limits real payloads keep."""


@dataclass
class Message:
    topic: str
    value: bytes | None
    partition: int = 3
    offset: int = 1234
    timestamp: float = 1_767_225_600.0


@dataclass(eq=False)  # Faust keeps a weak reference to the current event
class Event:
    key: str | None
    value: bytes | None
    headers: dict[str, bytes]
    message: Message


@dataclass
class Tables:
    identity: dict[bytes, bytes] = field(default_factory=dict)
    parked: dict[bytes, bytes] = field(default_factory=dict)
    sent: list[tuple[str, Any, Any, dict[str, bytes]]] = field(default_factory=list)


@pytest.fixture(scope="module")
def patched() -> Iterator[Tables]:
    tables = Tables()

    async def record(self: Outbox, topic: Any, key: Any, value: Any, headers: Any) -> None:
        tables.sent.append((topic.get_topic_name(), key, value, headers))

    with (
        mock.patch.object(Outbox, "send", record),
        mock.patch.object(ingest, "billing_identity_table", tables.identity),
        mock.patch.object(ingest, "parked_billing_table", tables.parked),
    ):
        yield tables


def _ingest(
    tables: Tables, topic: str, key: str | None, value: bytes | None, headers: dict[str, bytes]
) -> None:
    tables.sent.clear()
    tables.identity.clear()
    tables.parked.clear()
    event = Event(key, value, headers, Message(f"p.{topic}", value))

    async def run() -> int:
        outbox = Outbox()
        sent = await ingest.ingest_event(
            outbox, event, ADAPTERS[topic], link_billing=topic.endswith("s.changes")
        )
        await outbox.commit()
        return sent

    canonical = asyncio.run(run())
    kinds = {name.rsplit(".", 1)[-1] if "." in name else name for name, *_ in tables.sent}
    dead = [s for s in tables.sent if s[0].endswith("ledgerflow.dlq")]
    if dead:
        # One DLQ entry, nothing else: the message as it came, where it came from, and why.
        [(_, dlq_key, dlq_value, dlq_headers)] = tables.sent
        assert (dlq_key, dlq_value) == (key, value) and canonical == 0
        reason = dlq_headers[h.DLQ_REASON].decode()
        assert reason.startswith(REASONS), reason
        assert dlq_headers[h.SOURCE_TOPIC] == f"p.{topic}".encode()
        assert (dlq_headers[h.SOURCE_PARTITION], dlq_headers[h.SOURCE_OFFSET]) == (b"3", b"1234")
        assert not tables.parked
        return
    for name, _, sent_value, _ in tables.sent:
        if name.endswith("ledgerflow.canonical"):
            assert isinstance(sent_value, ChangeEvent) and sent_value.customer_id
        elif name.endswith("ledgerflow.invoice-owners"):
            assert isinstance(sent_value, InvoiceOwner) and sent_value.billing_customer_id
        else:
            assert name.endswith("ledgerflow.exceptions"), kinds
            assert isinstance(sent_value, BusinessException)
            assert sent_value.reason in ExceptionReason
    assert canonical == sum(1 for name, *_ in tables.sent if name.endswith("ledgerflow.canonical"))
    if not tables.sent:
        # Nothing sent: parked until its customer is known, or a type nothing is mapped from.
        parked = sum(len(codec.loads(ParkedChanges, raw).changes) for raw in tables.parked.values())
        assert parked or ADAPTERS[topic](value or b"", ingest.provisional_customer_id, None, key) == []


headers = st.dictionaries(
    st.sampled_from(
        [h.CORRELATION_ID, h.CAUSATION_ID, h.REPLAY_OF, "x-source-timestamp", "x-ready-timestamp"]
    )
    | st.text(max_size=12),
    st.binary(max_size=24) | st.sampled_from([b"", b"123", b"\xff\xfe", "²".encode()]),
    max_size=4,
)
keys = st.none() | st.text(max_size=16)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SOURCE_TOPICS), keys, st.none() | st.binary(max_size=256), headers)
def test_arbitrary_bytes(
    patched: Tables, topic: str, key: str | None, value: bytes | None, hdrs: Any
) -> None:
    _ingest(patched, topic, key, value, hdrs)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(SOURCE_TOPICS), keys, json_values, headers)
def test_arbitrary_json(patched: Tables, topic: str, key: str | None, value: Any, hdrs: Any) -> None:
    _ingest(patched, topic, key, dumps_json(value), hdrs)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SOURCE_TOPICS), st.sampled_from(ALL_SEEDS), keys, headers, st.data())
def test_mangled_platform_payloads_on_any_source_topic(
    patched: Tables, topic: str, seed: bytes, key: str | None, hdrs: Any, data: st.DataObject
) -> None:
    """A real payload of any platform (on its own topic or misrouted), one to four values deleted
    or replaced."""
    document = orjson.loads(seed)
    if data.draw(st.booleans()):
        mangle_drawn(document, data, VALUES)
    _ingest(patched, topic, key, dumps_json(document), hdrs)


def test_every_seed_maps_on_its_own_topic(patched: Tables) -> None:
    for topic, values in SEEDS.items():
        for raw in values:
            _ingest(patched, topic, "k", raw, {})
            assert not any(name.endswith("ledgerflow.dlq") for name, *_ in patched.sent), (topic, raw[:80])


def _edit(topic: str, index: int, change: Any) -> bytes:
    document = orjson.loads(SEEDS[topic][index])
    change(document)
    return orjson.dumps(document)


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def change(document: Any) -> None:
        for step in path[:-1]:
            document = document[step]
        document[path[-1]] = value

    return change


CDC_HEADER = ("data", "payload", "ChangeEventHeader")
FOUND = {
    "stripe created past year 9999": ("billing.changes", _set(("created",), 253_402_300_800)),
    "stripe created past time_t": ("billing.changes", _set(("created",), 2**62)),
    "stripe event id past 512 characters": ("billing.changes", _set(("id",), "evt_" + "a" * 600)),
    "cdc commitTimestamp past year 9999": ("crm.changes", _set((*CDC_HEADER, "commitTimestamp"), 2**62)),
    "cdc transactionKey past 512 characters": (
        "crm.changes",
        _set((*CDC_HEADER, "transactionKey"), "t" * 600),
    ),
}


@pytest.mark.parametrize("found", sorted(FOUND))
def test_what_fuzzing_found_is_dead_lettered_with_a_reason(patched: Tables, found: str) -> None:
    """Each raised a plain error from its adapter, which would have stopped stage 1's agent."""
    topic, change = FOUND[found]
    _ingest(patched, topic, "k", _edit(topic, 0, change), {})
    [(name, *_, dlq_headers)] = patched.sent
    assert name.endswith("ledgerflow.dlq")
    assert dlq_headers[h.DLQ_REASON].decode().startswith(("invalid_value: ", "schema_invalid: "))
