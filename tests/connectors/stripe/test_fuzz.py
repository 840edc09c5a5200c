"""Property tests: whatever bytes arrive, the Stripe adapter answers with canonical events or a
typed rejection, never another exception (which would dead-letter as an internal error)."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.identity import provisional_customer_id
from canonical import ChangeEvent
from connectors.errors import Rejection
from connectors.stripe import map_stripe_event
from tests.fuzz.seeds import json_paths
from tests.support import stripe_event, stripe_fixture

EVENT_TYPES = [
    ("invoice", "invoice.finalized"),
    ("invoice", "invoice.paid"),
    ("customer", "customer.updated"),
    ("deleted_customer", "customer.deleted"),
    ("subscription", "customer.subscription.created"),
    ("credit_note", "credit_note.voided"),
    ("payment_intent", "payment_intent.payment_failed"),
    ("charge", "charge.refunded"),
    ("refund", "refund.updated"),
    ("dispute", "charge.dispute.closed"),
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _outcome(raw: bytes) -> list[ChangeEvent] | Rejection:
    try:
        return map_stripe_event(raw, provisional_customer_id)
    except Rejection as rejection:
        assert rejection.header_value  # every rejection can be explained in the DLQ header
        return rejection


@given(st.binary(max_size=512))
def test_arbitrary_bytes(raw: bytes) -> None:
    _outcome(raw)


@given(json_values)
def test_arbitrary_json(value: Any) -> None:
    _outcome(json.dumps(value).encode())


def mangle(message: Any, data: st.DataObject) -> None:
    """Delete or replace one to four values anywhere in a JSON document, in place."""
    for _ in range(data.draw(st.integers(1, 4))):
        paths = json_paths(message)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        parent = message
        for step in path[:-1]:
            parent = parent[step]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = data.draw(json_values)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(EVENT_TYPES), st.data())
def test_mangled_real_objects(kind: tuple[str, str], data: st.DataObject) -> None:
    fixture, event_type = kind
    event = stripe_event(stripe_fixture(fixture), event_type, "evt_fuzz")
    event["data"]["object"]["customer"] = data.draw(st.sampled_from(["cus_1", None, 7, {"id": "cus_2"}]))
    mangle(event, data)
    result = _outcome(json.dumps(copy.deepcopy(event)).encode())
    if isinstance(result, list):
        for change in result:
            assert isinstance(change, ChangeEvent) and change.customer_id
