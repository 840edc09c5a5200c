"""Garbage on every topic a worker consumes, then a good customer (issue #8, invariant 5: bad
input never stops a partition). A real worker gets a few hundred random and mangled messages on
each source topic and each internal one (ledgerflow.canonical, erp.commands, erp.results,
ledgerflow.exceptions, crm.writeback, ledgerflow.customer-fingerprints) with random keys and
headers, and random requests on its webhook routes; then a simulated customer's history. The
good documents reach the ERP once with their amounts, the worker is alive with no traceback in
its log, and every message the worker's own rules cannot take is in the DLQ with a typed reason.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer
from pydantic import TypeAdapter, ValidationError

from agents.identity import provisional_customer_id
from canonical import BusinessException, CrmWriteback, ErpCommand
from connectors import signing
from connectors.errors import Rejection, RejectionReason
from connectors.salesforce import ResyncRequired
from streams import headers as h
from streams import metrics
from streams.operations.replay import KafkaLink
from streams.settings import Settings
from tests.fuzz.seeds import SOURCE_TOPICS, adapters, garbage, internal_models, internal_seeds, source_seeds
from tests.support import Stack, document_amount, erp_documents_of, finish_simulation, start_simulation

PER_TOPIC = 200
SECRETS = {"LEDGERFLOW_STRIPE_WEBHOOK_SECRET": "whsec_fuzz", "LEDGERFLOW_RELAY_SECRET": "relay-fuzz"}
TYPED = (
    *(f"{r.value}: " for r in RejectionReason),
    "undecodable ",
    "canonical event without a customer key",
    "misrouted: ",
)
"""What a DLQ reason may start with: never `internal_error` (a bug that reached the catch-all)."""
MODELS = internal_models()
ADAPTERS = adapters()
Produced = tuple[str, int, int, str | None, bytes | None]
"""(design topic, partition, offset, key, value) of one garbage message."""


def _key(rng: random.Random, value: bytes | None) -> bytes | None:
    """None, random text or bytes, or the customer id the value names (so that some garbage
    passes the key checks and reaches deeper)."""
    kind = rng.randrange(5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.randbytes(rng.randrange(1, 12))
    if kind == 2:
        return "".join(rng.choice("abcdefé-_ 0") for _ in range(rng.randrange(1, 20))).encode()
    try:
        named = orjson.loads(value or b"null")
    except orjson.JSONDecodeError:
        named = None
    customer = named.get("customer_id") if isinstance(named, dict) else None
    return customer.encode() if isinstance(customer, str) else b"cust-crm-001FUZZ"


def _headers(rng: random.Random) -> list[tuple[str, bytes]]:
    names = [
        h.CORRELATION_ID,
        h.CAUSATION_ID,
        h.REPLAY_OF,
        metrics.SOURCE_TIMESTAMP,
        metrics.READY_TIMESTAMP,
        "x-dlq-reason",
        "é",
        "",
    ]
    return [(rng.choice(names), rng.randbytes(rng.randrange(24))) for _ in range(rng.randrange(4))]


async def _produce_garbage(stack: Stack, rng: random.Random) -> list[Produced]:
    seeds = {**source_seeds(), **internal_seeds()}
    everything = tuple(v for values in seeds.values() for v in values)
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    sent: list[tuple[str, bytes | None, bytes | None, Any]] = []
    try:
        for topic, topic_seeds in seeds.items():
            for _ in range(PER_TOPIC):
                value = garbage(rng, topic_seeds, everything)
                key = _key(rng, value)
                if key is None and value is None:
                    key = b"tombstone"  # Kafka needs one of the two
                # Any time up to the broker's limit (an hour ahead): the epoch, a decade ago, now.
                stamp = rng.choice([None, 0, 1, int(time.time() * 1000) - 10 * 365 * 86_400_000])
                future = await producer.send(
                    stack.topic(topic), value, key=key, headers=_headers(rng), timestamp_ms=stamp
                )
                sent.append((topic, key, value, future))
        metadata = await asyncio.gather(*(f for *_, f in sent))
    finally:
        await producer.stop()
    return [
        (
            topic,
            meta.partition,
            meta.offset,
            key.decode("utf-8", "replace") if key is not None else None,
            value,
        )
        for (topic, key, value, _), meta in zip(sent, metadata, strict=True)
    ]


_ADAPTERS = {topic: TypeAdapter(model) for topic, model in MODELS.items()}


def _decoded(topic: str, value: bytes | None) -> Any:
    if value is None:
        return None
    try:
        return _ADAPTERS[topic].validate_json(value)
    except ValidationError:
        return None


def must_dead_letter(topic: str, key: str | None, value: bytes | None) -> bool:
    """Whether the worker's own rules send this message to the DLQ (the fingerprint check skips
    what it cannot read: nothing of value is lost there)."""
    if topic in SOURCE_TOPICS:
        if value is None:
            return True
        try:
            ADAPTERS[topic](value, provisional_customer_id, None, None)
        except Rejection:
            return True
        except ResyncRequired:
            return False
        return False
    decoded = _decoded(topic, value)
    if topic in ("ledgerflow.canonical", "erp.results"):
        return key is None or decoded is None or decoded.customer_id != key
    if topic == "erp.commands":
        return not isinstance(decoded, ErpCommand) or decoded.customer_id != key
    if topic == "ledgerflow.exceptions":
        return not isinstance(decoded, BusinessException)
    if topic == "crm.writeback":
        return not isinstance(decoded, CrmWriteback)
    return False


def _fuzz_ingress(
    base: str, rng: random.Random, requests: int = 300
) -> tuple[Counter[int], list[tuple[str, int, int]]]:
    """Random requests on the webhook routes: random bodies, some signed with the right secret,
    random signature and content headers. Returns the status codes answered, and where the
    accepted ones were produced (design topic, partition, offset)."""
    statuses: Counter[int] = Counter()
    accepted: list[tuple[str, int, int]] = []
    seeds = tuple(v for values in source_seeds().values() for v in values)
    with httpx.Client(base_url=base, timeout=30) as client:
        for _ in range(requests):
            route = rng.choice(["stripe", "salesforce", "clm"])
            body = garbage(rng, seeds, seeds) or b""
            name = "Stripe-Signature" if route == "stripe" else "X-Ledgerflow-Signature"
            secret = SECRETS[
                "LEDGERFLOW_STRIPE_WEBHOOK_SECRET" if route == "stripe" else "LEDGERFLOW_RELAY_SECRET"
            ]
            signature = rng.choice(
                [
                    signing.sign(secret, body, int(time.time())),
                    signing.sign(secret, body, int(time.time()) - 3600),
                    signing.sign("wrong", body, int(time.time())),
                    "".join(chr(rng.randrange(33, 127)) for _ in range(rng.randrange(80))),
                    "t=,v1=",
                ]
            )
            headers = {name: signature} if rng.random() < 0.9 else {}
            headers["Content-Type"] = rng.choice(
                ["application/json", "text/plain", "", "application/json; x"]
            )
            response = client.post(f"/webhooks/{route}", content=body, headers=headers)
            statuses[response.status_code] += 1
            if response.status_code == 200:
                answer = response.json()
                accepted.append((answer["topic"], answer["partition"], answer["offset"]))
    return statuses, accepted


def test_garbage_on_every_topic_and_route_stops_nothing(new_stack: Any, tmp_path: Path) -> None:
    stack: Stack = new_stack(extra_env=SECRETS)
    worker = stack.start_worker()
    assert stack.erp is not None and worker.proc is not None
    rng = random.Random(20260601)
    produced = asyncio.run(_produce_garbage(stack, rng))
    base = worker.url
    statuses, accepted = _fuzz_ingress(base, rng)
    assert all(code < 500 for code in statuses), statuses  # a 5xx would have Stripe retry forever

    # A good customer after the garbage: its documents reach the ERP, each once, as the truth says.
    started = time.monotonic()
    truth_path = tmp_path / "truth.json"
    truth = finish_simulation(
        start_simulation(stack, truth_path, "--customers", "2", "--months", "3", "--first-customer", "700"),
        truth_path,
    )
    expected = erp_documents_of(truth)
    view = stack.erp.wait_for(expected, timeout=240)
    good = [d for d in view["documents"] if (d["record_type"], d["external_id"]) in expected]
    amounts = {(d["record_type"], d["external_id"]): document_amount(d) for d in good}
    assert amounts == expected and len(good) == len(expected), "a good document is missing or duplicated"
    good_after = time.monotonic() - started

    # Every message the worker's rules cannot take is in the DLQ, with a typed reason.
    wanted = {(stack.topic(t), p, o) for t, p, o, k, v in produced if must_dead_letter(t, k, v)}
    s = Settings(kafka_bootstrap=stack.bootstrap, topic_prefix=stack.prefix)
    deadline = time.monotonic() + 120
    while True:
        entries = asyncio.run(_read_dlq(s))
        found = {
            (
                e.header(h.SOURCE_TOPIC),
                int(e.header(h.SOURCE_PARTITION) or -1),
                int(e.header(h.SOURCE_OFFSET) or -1),
            ): e
            for e in entries
        }
        if wanted <= set(found) or time.monotonic() > deadline:
            break
        time.sleep(2.0)
    missing = sorted(wanted - set(found))
    assert not missing, f"{len(missing)} undecodable messages not dead-lettered, e.g. {missing[:5]}"
    reasons = Counter((e.header(h.DLQ_REASON) or "").split(":")[0] for e in found.values())
    untyped = [
        e.header(h.DLQ_REASON) for e in found.values() if not (e.header(h.DLQ_REASON) or "").startswith(TYPED)
    ]
    assert untyped == [], untyped[:5]
    ours = {(stack.topic(t), p, o) for t, p, o, *_ in produced} | {
        (stack.topic(t), p, o) for t, p, o in accepted
    }
    foreign = [ref for ref in found if ref not in ours]
    assert foreign == [], [(ref, found[ref].header(h.DLQ_REASON), found[ref].value) for ref in foreign[:3]]

    # Nothing crashed: the worker lives, answers, and logged no traceback.
    assert worker.proc.poll() is None
    assert httpx.get(f"{base}/health", timeout=10).status_code == 200
    log = worker.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "Crashed" not in log, worker.tail(80)
    print(
        f"\n{len(produced)} garbage messages on {len(MODELS) + len(SOURCE_TOPICS)} topics, "
        f"{sum(statuses.values())} random webhook requests (answers {dict(statuses)}); "
        f"{len(wanted)} undecodable → all in the DLQ ({dict(reasons)}); the good customer's "
        f"{len(expected)} documents in the ERP {good_after:.1f}s after its history started"
    )


async def _read_dlq(s: Settings) -> list[Any]:
    async with KafkaLink(s, timeout=60) as link:
        return await link.read_to_end(s.topic("ledgerflow.dlq"))
