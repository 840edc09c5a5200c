"""Webhook ingress on every worker's web server: verify, then put the body durably on Kafka.

`POST /webhooks/stripe` checks `Stripe-Signature`; `POST /webhooks/salesforce` and
`POST /webhooks/clm` check the relays' `X-Ledgerflow-Signature` (the same scheme with
LEDGERFLOW_RELAY_SECRET). 2xx only once the message is acknowledged by all in-sync replicas
(acks=all, idempotent producer); 4xx with a reason and nothing produced for bad input; 503
when Kafka cannot take it, so the platform retries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from faust import web
from mode import Service

from connectors import signing
from connectors.stripe.routing import route
from streams import headers as h
from streams.app import app
from streams.kafka_io import kafka_security
from streams.settings import Settings, settings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 512 * 1024
"""Stripe's events are well under this; anything larger is refused before it is read."""
SEND_TIMEOUT_S = 10.0
RELAY_SIGNATURE_HEADER = "X-Ledgerflow-Signature"

Send = Callable[[str, str | None, bytes, dict[str, bytes]], Awaitable[tuple[int, int]]]


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


def _refuse(status: int, reason: str, detail: str) -> Answer:
    return Answer(status, {"error": reason, "detail": detail})


def _json_object(body: bytes) -> dict[str, Any] | Answer:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _refuse(400, "malformed_body", "body is not JSON")
    if not isinstance(data, dict):
        return _refuse(400, "malformed_body", "body must be a JSON object")
    return data


def _relay_key(source: str, data: dict[str, Any]) -> str | None:
    """The CRM account id a relay message is about (design §2 keys)."""
    if source == "clm":
        key = data.get("crm_account_id")
        return key if isinstance(key, str) and key else None
    # Signed is not well-formed: any level may be missing or not an object.
    envelope = data.get("data")
    payload = _object((envelope if isinstance(envelope, dict) and envelope else data).get("payload"))
    account = payload.get("AccountId")
    if isinstance(account, str) and account:
        return account
    header = _object(payload.get("ChangeEventHeader"))
    ids = header.get("recordIds")
    first = ids[0] if isinstance(ids, list) and ids else None
    if header.get("entityName") == "Account" and isinstance(first, str) and first:
        return first
    return None


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class WebhookIngress:
    """The decisions of the ingress routes, apart from HTTP and Kafka (tested on their own)."""

    def __init__(self, s: Settings, send: Send, clock: Callable[[], float] = time.time) -> None:
        self.settings = s
        self.send = send
        self.clock = clock
        self.stripe_secrets = signing.parse_secrets(
            s.stripe_webhook_secret.get_secret_value() if s.stripe_webhook_secret else None
        )
        self.relay_secrets = signing.parse_secrets(
            s.relay_secret.get_secret_value() if s.relay_secret else None
        )

    async def stripe(self, signature: str | None, body: bytes) -> Answer:
        try:
            signing.verify(signature, body, self.stripe_secrets, self.clock())
        except signing.SignatureError as exc:
            return _refuse(400, exc.problem.value, exc.detail)
        data = _json_object(body)
        if isinstance(data, Answer):
            return data
        event_id, event_type = data.get("id"), data.get("type")
        if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str) or not event_type:
            return _refuse(400, "malformed_body", "a Stripe Event needs string id and type")
        stream, key = route(data)
        correlation = h.stable_id("correlation", "stripe", event_id)
        return await self._produce(
            stream.value, key, body, h.outgoing(correlation, f"webhook:stripe:{event_id}")
        )

    async def relay(self, source: str, signature: str | None, body: bytes) -> Answer:
        try:
            timestamp = signing.verify(signature, body, self.relay_secrets, self.clock())
        except signing.SignatureError as exc:
            return _refuse(400, exc.problem.value, exc.detail)
        data = _json_object(body)
        if isinstance(data, Answer):
            return data
        topic = "crm.changes" if source == "salesforce" else "clm.changes"
        causation = f"webhook:{source}:{timestamp}:{signing.compute('id', timestamp, body)[:16]}"
        correlation = h.stable_id("correlation", source, causation)
        return await self._produce(topic, _relay_key(source, data), body, h.outgoing(correlation, causation))

    async def _produce(self, topic: str, key: str | None, body: bytes, headers: dict[str, bytes]) -> Answer:
        try:
            partition, offset = await asyncio.wait_for(
                self.send(self.settings.topic(topic), key, body, headers), SEND_TIMEOUT_S
            )
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("ingress could not reach Kafka", extra={"topic": topic, "error": type(exc).__name__})
            return _refuse(503, "kafka_unavailable", "the event was not stored; retry later")
        return Answer(200, {"received": True, "topic": topic, "partition": partition, "offset": offset})


class DurableProducer:
    """One idempotent acks=all producer for the ingress, started on first use."""

    def __init__(self, s: Settings) -> None:
        self.settings = s
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _get(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.settings.bootstrap,
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=1,
                    request_timeout_ms=int(SEND_TIMEOUT_S * 1000) - 1000,
                    **kafka_security(self.settings),
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def send(
        self, topic: str, key: str | None, value: bytes, headers: dict[str, bytes]
    ) -> tuple[int, int]:
        producer = await self._get()
        meta = await producer.send_and_wait(
            topic, value, key=key.encode() if key else None, headers=list(headers.items())
        )
        return meta.partition, meta.offset

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


producer = DurableProducer(settings)
ingress = WebhookIngress(settings, producer.send)


async def _read_body(request: web.Request) -> bytes | Answer:
    raw: Any = request  # the aiohttp request under Faust's driver-neutral type
    length = raw.content_length
    if length is not None and length > MAX_BODY_BYTES:
        return _refuse(413, "body_too_large", f"limit is {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    while chunk := await raw.content.read(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:  # a chunked body has no length to check up front
            return _refuse(413, "body_too_large", f"limit is {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _respond(view: web.View, answer: Answer) -> web.Response:
    return view.json(answer.body, status=answer.status)


@app.page("/webhooks/stripe")
class StripeWebhook(web.View):
    async def post(self, request: web.Request) -> web.Response:
        body = await _read_body(request)
        if isinstance(body, Answer):
            return _respond(self, body)
        return _respond(self, await ingress.stripe(request.headers.get("Stripe-Signature"), body))


@app.page("/webhooks/salesforce")
class SalesforceWebhook(web.View):
    async def post(self, request: web.Request) -> web.Response:
        body = await _read_body(request)
        if isinstance(body, Answer):
            return _respond(self, body)
        return _respond(
            self, await ingress.relay("salesforce", request.headers.get(RELAY_SIGNATURE_HEADER), body)
        )


@app.page("/webhooks/clm")
class ClmWebhook(web.View):
    async def post(self, request: web.Request) -> web.Response:
        body = await _read_body(request)
        if isinstance(body, Answer):
            return _respond(self, body)
        return _respond(self, await ingress.relay("clm", request.headers.get(RELAY_SIGNATURE_HEADER), body))


@app.service
class IngressProducerLifecycle(Service):
    """Stops the ingress producer with the worker (it starts on the first request)."""

    async def on_stop(self) -> None:
        await producer.stop()
