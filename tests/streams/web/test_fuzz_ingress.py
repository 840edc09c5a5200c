"""Property tests of the webhook ingress decisions beyond `test_ingress.py`'s: signed bodies of any
shape on all three routes, and signature headers built from real and broken parts. Every
request gets a 200 (produced once, to the route's topic) or a 4xx with a typed reason (nothing
produced), never an exception (which aiohttp would turn into a 500 the platform retries
forever); and no header without a matching signature produces anything."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors import signing
from connectors.signing import SignatureProblem
from tests.connectors.stripe.test_fuzz import json_values
from tests.fuzz.seeds import EDGE_VALUES, dumps_json, mangle_drawn, source_seeds
from tests.streams.web.test_ingress import NOW, _ingress

REFUSALS = {p.value for p in SignatureProblem} | {"malformed_body"}
SECRETS = {"stripe": "whsec_new", "salesforce": "relay_s", "clm": "relay_s"}
TOPICS = {
    "stripe": {"p.billing.changes", "p.payments.changes"},
    "salesforce": {"p.crm.changes"},
    "clm": {"p.clm.changes"},
}
SEEDS = source_seeds()
ROUTE_SEEDS = {
    "stripe": SEEDS["billing.changes"] + SEEDS["payments.changes"],
    "salesforce": SEEDS["crm.changes"],
    "clm": SEEDS["clm.changes"],
}
VALUES = json_values | st.sampled_from(EDGE_VALUES)
"""What a mangled field becomes: any small JSON value, or one past the limits real payloads keep."""


def _post(route: str, header: str | None, body: bytes) -> tuple[Any, list[Any]]:
    ingress, rec = _ingress()
    if route == "stripe":
        answer = asyncio.run(ingress.stripe(header, body))
    else:
        answer = asyncio.run(ingress.relay(route, header, body))
    if answer.status == 200:
        [(topic, key, value, _)] = rec.sent
        assert topic in TOPICS[route] and value == body
        assert key is None or (isinstance(key, str) and key)
    else:
        assert answer.status == 400 and answer.body["error"] in REFUSALS, answer
        assert rec.sent == []
    return answer, rec.sent


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["stripe", "salesforce", "clm"]),
    st.dictionaries(
        st.sampled_from(["id", "type", "data", "object", "payload", "crm_account_id", "event_type"]),
        json_values,
        max_size=5,
    ),
    st.sampled_from([None, "evt_1", "", 7]),
    st.sampled_from([None, "invoice.paid", "charge.refunded", "", "x" * 300, ["a"]]),
)
def test_signed_bodies_of_any_shape(route: str, body: dict[str, Any], event_id: Any, event_type: Any) -> None:
    """Signed, so only the body's shape decides: `data`, `payload` and friends of any JSON type."""
    if event_id is not None:
        body["id"] = event_id
    if event_type is not None:
        body["type"] = event_type
    raw = dumps_json(body)
    _post(route, signing.sign(SECRETS[route], raw, NOW), raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["stripe", "salesforce", "clm"]), st.data())
def test_signed_mangled_platform_payloads(route: str, data: st.DataObject) -> None:
    document = orjson.loads(data.draw(st.sampled_from(ROUTE_SEEDS[route])))
    mangle_drawn(document, data, VALUES)
    raw = dumps_json(document)
    answer, _ = _post(route, signing.sign(SECRETS[route], raw, NOW), raw)
    try:
        orjson.loads(raw)  # Python writes Infinity for an infinite float: not JSON
    except orjson.JSONDecodeError:
        assert answer.body["error"] == "malformed_body"
        return
    if route != "stripe":
        assert answer.status == 200  # a relay's body needs only be a JSON object
    elif isinstance(document.get("id"), str) and isinstance(document.get("type"), str):
        assert answer.status == (200 if document["id"] and document["type"] else 400)


def _v1(secret: str, t: int, body: bytes) -> str:
    return signing.compute(secret, t, body)


@st.composite
def signature_headers(draw: st.DrawFn, secret: str, body: bytes) -> str:
    """A header from parts: good and bad timestamps, right and wrong v1s, other schemes, junk,
    any spacing and separators."""
    t_good = NOW + draw(st.integers(-400, 400))
    part = st.one_of(
        st.builds(lambda t: f"t={t}", st.just(t_good) | st.integers() | st.just(NOW)),
        st.sampled_from(["t=", "t=abc", "t=1.5", "t= 7", "t=١٢٣", "t=" + "9" * 50]),
        st.builds(lambda t: f"v1={_v1(secret, t, body)}", st.just(t_good) | st.just(NOW)),
        st.builds(lambda t: f"v1={_v1('whsec_wrong', t, body)}", st.just(t_good)),
        st.sampled_from(["v1=", "v1=zz", "v0=abc", "=", ",", "v1", " ", "\t", "t=1,", "é=é"]),
        st.text(max_size=10),
    )
    parts = draw(st.lists(part, max_size=6))
    separator = draw(st.sampled_from([",", ", ", " ,", ",,"]))
    return separator.join(parts)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["stripe", "salesforce", "clm"]), st.data())
def test_signature_headers_from_real_and_broken_parts(route: str, data: st.DataObject) -> None:
    raw = orjson.dumps({"id": "evt_h", "type": "invoice.paid", "crm_account_id": "001H", "data": {}})
    header = data.draw(signature_headers(SECRETS[route], raw) | st.none())
    answer, _ = _post(route, header, raw)
    assert (answer.status == 200) == _genuine(SECRETS[route], header, raw), (header, answer.body)


def _genuine(secret: str, header: str | None, body: bytes) -> bool:
    """The one way in: every t= an integer, and some v1= the HMAC of the body under the last t,
    that t within the tolerance."""
    parts = [p.strip().partition("=") for p in (header or "").split(",")]
    v1s = {value for key, sep, value in parts if sep and key == "v1"}
    try:
        stamps = [int(value) for key, sep, value in parts if sep and key == "t"]
    except ValueError:
        return False
    if not stamps or abs(NOW - stamps[-1]) > signing.DEFAULT_TOLERANCE_S:
        return False
    return _v1(secret, stamps[-1], body) in v1s


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("salesforce", {"data": True}),
        ("salesforce", {"payload": 7}),
        ("salesforce", {"data": {"payload": {"ChangeEventHeader": "x"}}}),
        ("salesforce", {"payload": {"ChangeEventHeader": {"entityName": "Account", "recordIds": {"0": 1}}}}),
        ("stripe", {"id": "evt_1", "type": "invoice.paid", "data": 5}),
        ("stripe", {"id": "evt_1", "type": "invoice.paid", "data": ["object"]}),
    ],
)
def test_what_fuzzing_found_is_stored_unkeyed_not_an_error(route: str, body: dict[str, Any]) -> None:
    """Signed bodies whose `data`, `payload` or header was not an object made the ingress raise
    (a 500, retried by the platform for days); now they are stored, unkeyed, for stage 1 to
    dead-letter with its reason."""
    raw = orjson.dumps(body)
    answer, [(_, key, _, _)] = _post(route, signing.sign(SECRETS[route], raw, NOW), raw)
    assert answer.status == 200 and key is None
