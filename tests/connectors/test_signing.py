"""Stripe's webhook signature scheme, and proof that Stripe's own library agrees with us."""

from __future__ import annotations

import time

import orjson
import pytest
import stripe

from connectors import signing
from connectors.signing import SignatureError, SignatureProblem

BODY = orjson.dumps({"id": "evt_1", "object": "event", "type": "invoice.paid"})
NOW = 1_767_229_200


def test_round_trip() -> None:
    header = signing.sign("whsec_a", BODY, NOW)
    assert signing.verify(header, BODY, ["whsec_a"], NOW) == NOW


def test_any_of_several_signatures_and_secrets_during_a_roll() -> None:
    both = signing.sign(["whsec_old", "whsec_new"], BODY, NOW)
    assert signing.verify(both, BODY, ["whsec_new"], NOW) == NOW
    old_only = signing.sign("whsec_old", BODY, NOW)
    assert signing.verify(old_only, BODY, ["whsec_new", "whsec_old"], NOW) == NOW
    assert signing.parse_secrets(" whsec_new, whsec_old ,") == ["whsec_new", "whsec_old"]


@pytest.mark.parametrize(
    ("header", "body", "secrets", "now", "problem"),
    [
        (None, BODY, ["whsec_a"], NOW, SignatureProblem.MISSING),
        ("v1=abc", BODY, ["whsec_a"], NOW, SignatureProblem.MALFORMED),
        ("t=soon,v1=abc", BODY, ["whsec_a"], NOW, SignatureProblem.MALFORMED),
        (signing.sign("whsec_a", BODY, NOW), BODY, ["whsec_a"], NOW + 301, SignatureProblem.STALE),
        (signing.sign("whsec_a", BODY, NOW), BODY, ["whsec_a"], NOW - 301, SignatureProblem.STALE),
        (signing.sign("whsec_a", BODY, NOW), BODY + b" ", ["whsec_a"], NOW, SignatureProblem.MISMATCH),
        (signing.sign("whsec_b", BODY, NOW), BODY, ["whsec_a"], NOW, SignatureProblem.MISMATCH),
        (signing.sign("whsec_a", BODY, NOW), BODY, [], NOW, SignatureProblem.NO_SECRET),
    ],
)
def test_refusals_are_typed(header, body, secrets, now, problem) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SignatureError) as info:
        signing.verify(header, body, secrets, now)
    assert info.value.problem is problem


def test_stripe_library_accepts_our_header() -> None:
    now = int(time.time())
    header = signing.sign("whsec_test", BODY, now)
    event = stripe.Webhook.construct_event(BODY.decode(), header, "whsec_test")
    assert event["id"] == "evt_1"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(BODY.decode(), header, "whsec_other")


def test_we_accept_stripe_librarys_signature() -> None:
    now = int(time.time())
    expected = stripe.WebhookSignature._compute_signature(f"{now}.{BODY.decode()}", "whsec_test")
    assert signing.verify(f"t={now},v1={expected},v0=ignored", BODY, ["whsec_test"], now) == now
