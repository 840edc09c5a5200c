"""The ingress decisions (signature, body, routing, Kafka outcome) without HTTP or a broker."""

from __future__ import annotations

import asyncio
import json

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from connectors import signing
from streams.settings import Settings
from streams.web.ingress import WebhookIngress
from tests.support import stripe_event, stripe_fixture

NOW = 1_767_229_200
SETTINGS = Settings(
    stripe_webhook_secret=SecretStr("whsec_new,whsec_old"),
    relay_secret=SecretStr("relay_s"),
    topic_prefix="p.",
)


class Recorder:
    def __init__(self, fail: Exception | None = None) -> None:
        self.sent: list[tuple[str, str | None, bytes, dict[str, bytes]]] = []
        self.fail = fail

    async def __call__(
        self, topic: str, key: str | None, value: bytes, headers: dict[str, bytes]
    ) -> tuple[int, int]:
        if self.fail is not None:
            raise self.fail
        self.sent.append((topic, key, value, headers))
        return 0, len(self.sent) - 1


def _ingress(fail: Exception | None = None) -> tuple[WebhookIngress, Recorder]:
    rec = Recorder(fail)
    return WebhookIngress(SETTINGS, rec, clock=lambda: NOW), rec


async def test_signed_invoice_event_goes_to_billing_keyed_by_customer() -> None:
    ingress, rec = _ingress()
    body = orjson.dumps(stripe_event(stripe_fixture("invoice"), "invoice.finalized", "evt_i"))
    answer = await ingress.stripe(signing.sign("whsec_old", body, NOW), body)
    assert answer.status == 200 and answer.body["topic"] == "billing.changes"
    [(topic, key, value, headers)] = rec.sent
    assert (topic, key, value) == ("p.billing.changes", "cus_QXg1o8vcGmoR32", body)
    assert headers["x-causation-id"] == b"webhook:stripe:evt_i" and headers["x-correlation-id"]


@pytest.mark.parametrize(
    ("fixture", "event_type", "topic", "key"),
    [
        ("customer", "customer.created", "billing.changes", "cus_QXg1o8vcGmoR32"),
        ("payment_intent", "payment_intent.succeeded", "payments.changes", None),
        ("charge", "charge.refunded", "payments.changes", None),
        ("credit_note", "credit_note.created", "billing.changes", "cus_QXg1o8vcGmoR32"),
    ],
)
async def test_routing_by_event_type(fixture: str, event_type: str, topic: str, key: str | None) -> None:
    ingress, rec = _ingress()
    obj = stripe_fixture(fixture)
    body = orjson.dumps(stripe_event(obj, event_type))
    answer = await ingress.stripe(signing.sign("whsec_new", body, NOW), body)
    assert answer.status == 200 and answer.body["topic"] == topic
    assert rec.sent[0][1] == (key if key is not None else obj.get("customer"))


@pytest.mark.parametrize(
    ("make_header", "body", "reason"),
    [
        (lambda b: None, b"{}", "signature_missing"),
        (lambda b: signing.sign("whsec_wrong", b, NOW), b'{"id": "evt", "type": "x"}', "signature_mismatch"),
        (
            lambda b: signing.sign("whsec_new", b, NOW - 600),
            b'{"id": "evt", "type": "x"}',
            "timestamp_outside_tolerance",
        ),
        (
            lambda b: signing.sign("whsec_new", b + b"tampered", NOW),
            b'{"id": "evt", "type": "x"}',
            "signature_mismatch",
        ),
        (lambda b: signing.sign("whsec_new", b, NOW), b"not json", "malformed_body"),
        (lambda b: signing.sign("whsec_new", b, NOW), b"[1]", "malformed_body"),
        (lambda b: signing.sign("whsec_new", b, NOW), b'{"id": 7, "type": "x"}', "malformed_body"),
    ],
)
async def test_refusals_produce_nothing(make_header, body: bytes, reason: str) -> None:  # type: ignore[no-untyped-def]
    ingress, rec = _ingress()
    answer = await ingress.stripe(make_header(body), body)
    assert answer.status == 400 and answer.body["error"] == reason
    assert rec.sent == []


async def test_kafka_unavailable_is_503() -> None:
    ingress, _ = _ingress(fail=KafkaConnectionError("down"))
    body = orjson.dumps(stripe_event(stripe_fixture("invoice"), "invoice.paid"))
    answer = await ingress.stripe(signing.sign("whsec_new", body, NOW), body)
    assert answer.status == 503 and answer.body["error"] == "kafka_unavailable"


async def test_relays_are_keyed_by_crm_account() -> None:
    ingress, rec = _ingress()
    cdc = orjson.dumps(
        {
            "data": {
                "payload": {
                    "ChangeEventHeader": {
                        "entityName": "Account",
                        "recordIds": ["001A"],
                        "changeType": "UPDATE",
                    },
                    "Name": "Acme",
                }
            }
        }
    )
    clm = orjson.dumps({"event_type": "signed", "crm_account_id": "001B", "contract_id": "K-1"})
    assert (await ingress.relay("salesforce", signing.sign("relay_s", cdc, NOW), cdc)).status == 200
    assert (await ingress.relay("clm", signing.sign("relay_s", clm, NOW), clm)).status == 200
    assert [(t, k) for t, k, _, _ in rec.sent] == [("p.crm.changes", "001A"), ("p.clm.changes", "001B")]
    bad = await ingress.relay("clm", signing.sign("whsec_new", clm, NOW), clm)
    assert bad.status == 400 and len(rec.sent) == 2


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=256)
    | st.builds(
        lambda v: json.dumps(v).encode(),
        st.dictionaries(st.text(max_size=6), st.text(max_size=6) | st.integers(), max_size=4),
    ),
    header=st.none() | st.text(max_size=80),
    sign_it=st.booleans(),
    skew=st.integers(-1000, 1000),
)
def test_any_request_gets_a_clear_answer_and_only_2xx_produces(
    body: bytes, header: str | None, sign_it: bool, skew: int
) -> None:
    ingress, rec = _ingress()
    if sign_it:
        header = signing.sign("whsec_new", body, NOW + skew)
    answer = asyncio.run(ingress.stripe(header, body))
    assert answer.status in (200, 400)
    assert ("error" in answer.body) == (answer.status != 200)
    assert len(rec.sent) == (1 if answer.status == 200 else 0)


async def test_an_invoice_payment_naming_no_invoice_is_taken_keyless_for_stage_1_to_dead_letter() -> None:
    ingress, rec = _ingress()
    orphan = {"id": "inpay_1", "object": "invoice_payment", "invoice": None, "status": "paid"}
    body = orjson.dumps(stripe_event(orphan, "invoice_payment.paid", "evt_orphan"))
    answer = await ingress.stripe(signing.sign("whsec_new", body, NOW), body)
    assert answer.status == 200  # Stripe stops retrying; nothing is lost
    [(topic, key, value, _)] = rec.sent
    assert (topic, key, value) == ("p.billing.invoice-payments", None, body)
