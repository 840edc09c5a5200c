"""The webhook ingress over real HTTP, against the real broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import stripe

from connectors import signing
from streams import headers as h
from streams.cli.local_kafka import LocalKafka
from streams.web.ingress import MAX_BODY_BYTES
from tests.support import Stack, consume_until, finalized_fixture_invoice, stripe_event, stripe_fixture

SECRET = "whsec_ingress_test"
RELAY = "relay_ingress_test"


@pytest.fixture(scope="module")
def web(stack: Stack) -> str:
    stack.extra_env.update(
        {"LEDGERFLOW_STRIPE_WEBHOOK_SECRET": f"whsec_retired,{SECRET}", "LEDGERFLOW_RELAY_SECRET": RELAY}
    )
    worker = stack.start_worker()
    return worker.url


def _post(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(url, content=body, headers={"Content-Type": "application/json", **headers}, timeout=30)


def test_signed_event_lands_once_and_the_rest_are_refused(web: str, stack: Stack) -> None:
    body = orjson.dumps(
        stripe_event(finalized_fixture_invoice(corrected=True), "invoice.finalized", "evt_http_1")
    )
    header = signing.sign(SECRET, body, int(time.time()))
    # The same header passes Stripe's own verification: the scheme is Stripe's.
    assert stripe.Webhook.construct_event(body.decode(), header, SECRET)["id"] == "evt_http_1"

    ok = _post(f"{web}/webhooks/stripe", body, {"Stripe-Signature": header})
    assert ok.status_code == 200, ok.text
    assert ok.json()["topic"] == "billing.changes"
    customer = orjson.dumps(
        stripe_event(
            {**stripe_fixture("customer"), "name": "Jenny Rosen"}, "customer.created", "evt_http_cus"
        )
    )
    r = _post(
        f"{web}/webhooks/stripe",
        customer,
        {"Stripe-Signature": signing.sign(SECRET, customer, int(time.time()))},
    )
    assert r.status_code == 200, r.text

    refused = {
        "wrong secret": _post(
            f"{web}/webhooks/stripe",
            body,
            {"Stripe-Signature": signing.sign("whsec_x", body, int(time.time()))},
        ),
        "stale": _post(
            f"{web}/webhooks/stripe",
            body,
            {"Stripe-Signature": signing.sign(SECRET, body, int(time.time()) - 3600)},
        ),
        "tampered": _post(
            f"{web}/webhooks/stripe", body.replace(b"1000", b"9000"), {"Stripe-Signature": header}
        ),
        "unsigned": _post(f"{web}/webhooks/stripe", body, {}),
    }
    big = b'{"pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    oversize = _post(
        f"{web}/webhooks/stripe", big, {"Stripe-Signature": signing.sign(SECRET, big, int(time.time()))}
    )
    assert {name: r.status_code for name, r in refused.items()} == dict.fromkeys(refused, 400)
    assert refused["stale"].json()["error"] == "timestamp_outside_tolerance"
    assert refused["tampered"].json()["error"] == "signature_mismatch"
    assert oversize.status_code == 413

    topic = stack.topic("billing.changes")
    found = asyncio.run(consume_until(stack.bootstrap, [topic], lambda f: False, timeout=4))
    assert len(found[topic]) == 2, "only the good requests may be produced"
    key, value, headers = found[topic][0]
    assert key == "cus_QXg1o8vcGmoR32" and value == body
    assert headers["x-causation-id"] == "webhook:stripe:evt_http_1"

    # And it flows on: the ingress is stage 1's front door.
    commands = stack.topic("erp.commands")
    out = asyncio.run(consume_until(stack.bootstrap, [commands], lambda f: len(f[commands]) >= 2, timeout=60))
    keys = [orjson.loads(v)["idempotency_key"] for _, v, _ in out[commands]]
    assert keys[0].startswith("upsert_customer-cust-stripe-cus_QXg1o8vcGmoR32-")
    assert keys[1:] == ["post_invoice-stripe-in_1Pgc6tB7WZ01zgkWu9fdqL6I"]


def test_relays_land_on_their_topics(web: str, stack: Stack) -> None:
    clm = orjson.dumps({"event_type": "signed", "crm_account_id": "001RELAY", "contract_id": "K-9"})
    r = _post(
        f"{web}/webhooks/clm", clm, {"X-Ledgerflow-Signature": signing.sign(RELAY, clm, int(time.time()))}
    )
    assert r.status_code == 200, r.text
    bad = _post(
        f"{web}/webhooks/salesforce",
        clm,
        {"X-Ledgerflow-Signature": signing.sign(SECRET, clm, int(time.time()))},
    )
    assert bad.status_code == 400
    topics = [stack.topic("clm.changes"), stack.topic("crm.changes")]
    found = asyncio.run(consume_until(stack.bootstrap, topics, lambda f: False, timeout=3))
    assert [(k, v) for k, v, _ in found[topics[0]]] == [("001RELAY", clm)]
    assert found[topics[1]] == []


@pytest.fixture(scope="module")
def lone_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    broker = LocalKafka(data_dir=tmp_path_factory.mktemp("lone-kafka")).start()
    try:
        yield broker
    finally:
        broker.stop()


def test_broker_down_answers_503(lone_broker: LocalKafka, tmp_path: Path) -> None:
    stack = Stack(
        bootstrap=lone_broker.bootstrap, root=tmp_path, extra_env={"LEDGERFLOW_STRIPE_WEBHOOK_SECRET": SECRET}
    )
    try:
        worker = stack.start_worker()
        url = f"{worker.url}/webhooks/stripe"
        body = orjson.dumps(
            stripe_event(finalized_fixture_invoice(corrected=True), "invoice.paid", "evt_down")
        )
        assert (
            _post(url, body, {"Stripe-Signature": signing.sign(SECRET, body, int(time.time()))}).status_code
            == 200
        )
        lone_broker.stop()
        started = time.monotonic()
        down = _post(url, body, {"Stripe-Signature": signing.sign(SECRET, body, int(time.time()))})
        assert down.status_code == 503, down.text
        assert down.json()["error"] == "kafka_unavailable"
        assert time.monotonic() - started < 15
    finally:
        for w in stack.workers:
            w.kill()  # a clean stop would wait on the broker we just stopped
        stack.stop()  # and the sandbox ERP the worker started with (it outlived every run)


def test_simulate_via_webhooks_lands_every_message(web: str, stack: Stack, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from tests.support import REPO

    env = {**stack.env(9), "LEDGERFLOW_STRIPE_WEBHOOK_SECRET": SECRET, "LEDGERFLOW_RELAY_SECRET": RELAY}
    truth_path = tmp_path / "truth.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams",
            "simulate",
            "--customers",
            "8",
            "--months",
            "3",
            "--seed",
            "11",
            "--truth",
            str(truth_path),
            "--via-webhooks",
            web,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    by_topic = json.loads(truth_path.read_text())["messages"]["by_topic"]
    topics = {stack.topic(t): n for t, n in by_topic.items()}
    found = asyncio.run(consume_until(stack.bootstrap, list(topics), lambda f: False, timeout=4))
    # Earlier tests in this module put two messages on billing.changes and one on clm.changes.
    earlier = {stack.topic("billing.changes"): 2, stack.topic("clm.changes"): 1}
    # Stage 1's own copies (invoice payments passed on to payments.changes) name their cause.
    invoice_payments = stack.topic("billing.invoice-payments")

    def posted(records: list[tuple[str | None, bytes, dict[str, str]]]) -> int:
        return sum(
            1 for _, _, headers in records if not headers.get(h.CAUSATION_ID, "").startswith(invoice_payments)
        )

    assert {t: posted(v) - earlier.get(t, 0) for t, v in found.items()} == topics
