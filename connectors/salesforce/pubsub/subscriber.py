"""One Pub/Sub API channel's subscription (grpc.aio): flow control, schemas, retries, replay.

The stream is fed from an `asyncio.Queue` of FetchRequests. The first names the topic and the
start (CUSTOM from the stored replay id, else the configured preset); each asks for
`batch_size` (≤ 100) events, and the next is sent as soon as `pending_num_requested` reaches 0,
so the server's 60 s idle deadline is met while the batch just received is being written. Each
response is handed to the `Sink` (which writes it to Kafka in one transaction) before the next
is read, and its `latest_replay_id` becomes the stored position; an empty keepalive only moves
the position.

When the stream ends (the Java sample's rules, with a bounded exponential backoff; retries
reset after a response):
* `service.auth.error` → a fresh session (token), resubscribe CUSTOM from the stored id;
* `replayid.corrupted` / `replayid.validation.failed` → `ResyncRequired` naming the lost window
  (the stored id and when it was last seen) goes to the sink, then on from EARLIEST;
* anything else, RST_STREAM/UNAVAILABLE and `service.unavailable` included → CUSTOM from the
  stored id. (The Java sample resubscribes LATEST after `service.unavailable`, which skips the
  events published meanwhile; the stored id loses nothing.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import grpc

from connectors.salesforce.pubsub import decode
from connectors.salesforce.pubsub import pubsub_api_pb2 as pb
from connectors.salesforce.pubsub import pubsub_api_pb2_grpc as pb_grpc
from connectors.salesforce.pubsub.auth import Session

log = logging.getLogger(__name__)

MAX_REQUESTED = 100
ERROR_CODE = "error-code"
Preset = Literal["EARLIEST", "LATEST"]


class ResyncRequired(Exception):
    """`resync_required`: the stored replay id is no longer on the bus (past the 72 h window, or
    corrupted); the changes after `last_seen` must be re-read (`ledgerflow resync salesforce`)."""

    reason = "resync_required"

    def __init__(
        self, channel: str, replay_id: bytes | None, last_seen: datetime | None, error_code: str
    ) -> None:
        since = last_seen.isoformat() if last_seen else "unknown"
        super().__init__(
            f"resync_required on {channel}: replay id {replay_id.hex() if replay_id else None} "
            f"(last seen {since}) refused with {error_code}; continuing from EARLIEST"
        )
        self.channel = channel
        self.replay_id = replay_id
        self.last_seen = last_seen
        self.error_code = error_code


class PubSubUnavailable(Exception):
    """The subscription failed `max_retries` times in a row."""


@dataclass(frozen=True)
class Checkpoint:
    replay_id: bytes
    at: datetime


@dataclass(frozen=True)
class Received:
    """One event off the stream: decoded (`message`) or not (`error`)."""

    replay_id: bytes
    schema_id: str
    payload: bytes
    message: dict[str, Any] | None
    error: decode.UndecodableEvent | None


class Sink(Protocol):
    async def deliver(self, channel: str, events: list[Received], latest_replay_id: bytes) -> None:
        """Store the events and the new position together (or raise: nothing stored)."""

    async def resync_required(self, exc: ResyncRequired) -> None:
        """The window `exc` names is lost on the bus."""


SessionProvider = Callable[[bool], Awaitable[Session]]
"""`provider(refresh)`: the current session, or a fresh one when `refresh`."""


def error_code_of(error: grpc.aio.AioRpcError) -> str:
    for key, value in error.trailing_metadata() or ():
        if key == ERROR_CODE:
            return value if isinstance(value, str) else value.decode()
    return error.details() or error.code().name


@dataclass
class SubscriberConfig:
    endpoint: str
    channel: str
    batch_size: int = MAX_REQUESTED
    preset: Preset = "LATEST"
    tls: bool = True
    max_retries: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0


class ChannelSubscriber:
    """Subscribes one channel until `stop()`, handing each batch to `sink`."""

    def __init__(
        self, config: SubscriberConfig, sessions: SessionProvider, sink: Sink, start: Checkpoint | None
    ) -> None:
        if not 1 <= config.batch_size <= MAX_REQUESTED:
            raise ValueError("batch_size must be 1..100")
        self.config = config
        self.sessions = sessions
        self.sink = sink
        self.stored = start
        self.schemas: dict[str, decode.CdcSchema] = {}
        self.subscribes = 0
        self.received = 0
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    def _channel(self) -> grpc.aio.Channel:
        if self.config.tls:
            return grpc.aio.secure_channel(self.config.endpoint, grpc.ssl_channel_credentials())
        return grpc.aio.insecure_channel(self.config.endpoint)

    async def run(self) -> None:
        """Subscribe, and resubscribe as the module docstring says, until stopped."""
        failures = 0
        refresh = False
        preset: str | None = None  # None: CUSTOM from the stored id if there is one
        async with self._channel() as channel:
            stub = pb_grpc.PubSubStub(channel)
            while not self._stopping.is_set():
                session = await self.sessions(refresh)
                refresh = False
                before = self.received
                try:
                    await self._subscribe(stub, session, preset)
                    return  # stopped
                except grpc.aio.AioRpcError as exc:
                    code = error_code_of(exc)
                    if self.received > before:
                        failures = 0
                    failures += 1
                    extra = {"channel": self.config.channel, "error_code": code, "status": exc.code().name}
                    if failures > self.config.max_retries:
                        raise PubSubUnavailable(f"{self.config.channel}: {code}") from exc
                    preset = None
                    if "service.auth.error" in code or exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                        refresh = True
                        log.info("pubsub token refused: new session, resubscribing", extra=extra)
                        continue  # a new token needs no wait
                    if "replayid.corrupted" in code or "replayid.validation.failed" in code:
                        stored = self.stored
                        resync = ResyncRequired(
                            self.config.channel,
                            stored.replay_id if stored else None,
                            stored.at if stored else None,
                            code,
                        )
                        log.error(str(resync), extra={**extra, "reason": ResyncRequired.reason})
                        await self.sink.resync_required(resync)
                        self.stored = None
                        preset = "EARLIEST"
                        continue
                    delay = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** (failures - 1))
                    log.warning("pubsub stream ended: resubscribing", extra={**extra, "retry_in_s": delay})
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), delay)

    async def schema(self, stub: pb_grpc.PubSubStub, schema_id: str, session: Session) -> decode.CdcSchema:
        cached = self.schemas.get(schema_id)
        if cached is None:
            info = await stub.GetSchema(pb.SchemaRequest(schema_id=schema_id), metadata=session.metadata())
            cached = self.schemas[schema_id] = decode.parse_schema(schema_id, info.schema_json)
        return cached

    def _first_request(self, preset: str | None) -> pb.FetchRequest:
        n = self.config.batch_size
        if preset is None and self.stored is not None:
            return pb.FetchRequest(
                topic_name=self.config.channel,
                replay_preset=pb.ReplayPreset.CUSTOM,
                replay_id=self.stored.replay_id,
                num_requested=n,
            )
        name = preset or self.config.preset
        return pb.FetchRequest(
            topic_name=self.config.channel, replay_preset=pb.ReplayPreset.Value(name), num_requested=n
        )

    async def _subscribe(self, stub: pb_grpc.PubSubStub, session: Session, preset: str | None) -> None:
        requests: asyncio.Queue[pb.FetchRequest | None] = asyncio.Queue()
        first = self._first_request(preset)
        await requests.put(first)
        self.subscribes += 1
        log.info(
            "pubsub subscribing",
            extra={
                "channel": self.config.channel,
                "preset": pb.ReplayPreset.Name(first.replay_preset),
                "replay_id": first.replay_id.hex(),
            },
        )

        async def feed() -> AsyncIterator[pb.FetchRequest]:
            while (request := await requests.get()) is not None:
                yield request

        call = stub.Subscribe(feed(), metadata=session.metadata())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while True:
                read = asyncio.ensure_future(call.read())
                done, _ = await asyncio.wait({read, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if stopping in done:
                    read.cancel()
                    return
                response = read.result()
                if response is grpc.aio.EOF:
                    # the server closed the stream cleanly (idle): subscribe again from where we are
                    raise _closed_cleanly()
                if response.pending_num_requested == 0:
                    await requests.put(pb.FetchRequest(num_requested=self.config.batch_size))
                await self._handle(stub, session, response)
        finally:
            stopping.cancel()
            await requests.put(None)
            call.cancel()

    async def _handle(self, stub: pb_grpc.PubSubStub, session: Session, response: pb.FetchResponse) -> None:
        events: list[Received] = []
        for consumer_event in response.events:
            event = consumer_event.event
            try:
                schema = await self.schema(stub, event.schema_id, session)
                message = decode.decode_event(event.payload, schema, consumer_event.replay_id)
                decode.account_key(message)
                events.append(
                    Received(consumer_event.replay_id, event.schema_id, event.payload, message, None)
                )
            except decode.UndecodableEvent as exc:
                events.append(Received(consumer_event.replay_id, event.schema_id, event.payload, None, exc))
        latest = response.latest_replay_id or (events[-1].replay_id if events else b"")
        if not latest:
            return
        await self.sink.deliver(self.config.channel, events, latest)
        self.received += len(events) or 1  # a keepalive counts as progress too
        self.stored = Checkpoint(latest, datetime.now(UTC))


def _closed_cleanly() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "stream closed by the server"
    )
