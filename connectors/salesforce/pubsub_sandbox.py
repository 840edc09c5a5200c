"""A fake Salesforce Pub/Sub API (gRPC, loopback) for the CDC subscriber's tests and `ledgerflow dev`.

It serves `Subscribe`, `GetSchema` and `GetTopic` of the vendored `pubsub_api.proto` for one
topic per entity (`/data/AccountChangeEvent`), with a hand-written `AccountChangeEvent` Avro
schema (`ACCOUNT_CHANGE_EVENT_SCHEMA`: Salesforce publishes none; this one follows the decoded
shape in pozil's README, it is NOT Salesforce's own). Payloads are written with fastavro's
`schemaless_writer`, the header bitmaps from the schema's field indices (`decode.to_bitmaps`).

What it holds to, as Salesforce does: the `accesstoken`/`instanceurl`/`tenantid` metadata (a
bad token ends the call UNAUTHENTICATED with trailer `error-code: …service.auth.error`); replay
ids are 8-byte big-endian counters (opaque to the client); events older than the retention
window (72 h, configurable) are gone and a CUSTOM replay id before it, or one it never issued,
is INVALID_ARGUMENT `…fetch.replayid.corrupted`; `num_requested` is capped at 100 per request
and added to what is still pending; `pending_num_requested` is sent back; an empty keepalive
with the tip's replay id after `keepalive_s` without events; the stream closes when the client
asks for nothing for `idle_timeout_s`.

Faults on request (`PubSubFaults`, or the methods): a stream reset (UNAVAILABLE "RST_STREAM
closed stream") after N events, a token expiry after N events (revokes the CRM sandbox's tokens),
and `publish_gap` for a GAP_* event. A burst larger than one request is just `publish` of >100.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
import string
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fastavro
import grpc
import orjson

from connectors.salesforce.pubsub import decode
from connectors.salesforce.pubsub import pubsub_api_pb2 as pb
from connectors.salesforce.pubsub import pubsub_api_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

ERROR_CODE = "error-code"
AUTH_ERROR = "sfdc.platform.eventbus.grpc.service.auth.error"
REPLAY_CORRUPTED = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
ACCOUNT_TOPIC = "/data/AccountChangeEvent"
ORG_ID = "00DSANDBOX000001"
MAX_REQUESTED = 100

_NULLABLE_STRING = ["null", "string"]
_NUMERIC = ("Latitude", "Longitude")
_ADDRESS = {
    "type": "record",
    "name": "Address",
    "namespace": "com.sforce.eventbus",
    "fields": [
        {"name": n, "type": ["null", "double"] if n in _NUMERIC else _NULLABLE_STRING, "default": None}
        for n in (
            "Street", "City", "State", "PostalCode", "Country", "StateCode", "CountryCode",
            "Latitude", "Longitude", "Xyz", "GeocodeAccuracy",
        )
    ],
}  # fmt: skip
_CHANGE_TYPE = {
    "type": "enum",
    "name": "ChangeType",
    "namespace": "com.sforce.eventbus",
    "symbols": ["CREATE", "UPDATE", "DELETE", "UNDELETE", "GAP_CREATE", "GAP_UPDATE", "GAP_DELETE",
                "GAP_UNDELETE", "GAP_OVERFLOW", "SNAPSHOT"],
}  # fmt: skip
_HEADER = {
    "type": "record",
    "name": "ChangeEventHeader",
    "namespace": "com.sforce.eventbus",
    "fields": [
        {"name": "entityName", "type": "string"},
        {"name": "recordIds", "type": {"type": "array", "items": "string"}},
        {"name": "changeType", "type": _CHANGE_TYPE},
        {"name": "changeOrigin", "type": "string"},
        {"name": "transactionKey", "type": "string"},
        {"name": "sequenceNumber", "type": "int"},
        {"name": "commitTimestamp", "type": "long"},
        {"name": "commitNumber", "type": "long"},
        {"name": "commitUser", "type": "string"},
        {"name": "nulledFields", "type": {"type": "array", "items": "string"}},
        {"name": "diffFields", "type": {"type": "array", "items": "string"}},
        {"name": "changedFields", "type": {"type": "array", "items": "string"}},
    ],
}  # fmt: skip
_ACCOUNT_FIELDS: list[tuple[str, Any]] = [
    ("Name", _NULLABLE_STRING), ("Type", _NULLABLE_STRING), ("ParentId", _NULLABLE_STRING),
    ("BillingAddress", ["null", _ADDRESS]), ("ShippingAddress", ["null", "Address"]),
    ("Phone", _NULLABLE_STRING), ("Fax", _NULLABLE_STRING), ("AccountNumber", _NULLABLE_STRING),
    ("Website", _NULLABLE_STRING), ("Sic", _NULLABLE_STRING), ("Industry", _NULLABLE_STRING),
    ("AnnualRevenue", ["null", "double"]), ("NumberOfEmployees", ["null", "int"]),
    ("Ownership", _NULLABLE_STRING), ("TickerSymbol", _NULLABLE_STRING), ("Description", _NULLABLE_STRING),
    ("Rating", _NULLABLE_STRING), ("Site", _NULLABLE_STRING), ("OwnerId", _NULLABLE_STRING),
    ("CreatedDate", ["null", "long"]), ("CreatedById", _NULLABLE_STRING),
    ("LastModifiedDate", ["null", "long"]), ("LastModifiedById", _NULLABLE_STRING),
    ("CurrencyIsoCode", _NULLABLE_STRING), ("Tax_Id__c", _NULLABLE_STRING),
]  # fmt: skip
ACCOUNT_CHANGE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "AccountChangeEvent",
    "namespace": "com.sforce.eventbus",
    "fields": [
        {"name": "ChangeEventHeader", "type": _HEADER},
        *({"name": name, "type": avro_type, "default": None} for name, avro_type in _ACCOUNT_FIELDS),
    ],
}
"""Hand-written (not Salesforce's): the pozil README's field order, plus CurrencyIsoCode and a
custom Tax_Id__c, which ledgerflow's mapping reads."""
ACCOUNT_SCHEMA_JSON = orjson.dumps(ACCOUNT_CHANGE_EVENT_SCHEMA).decode()
ACCOUNT_SCHEMA_ID = "sandbox-AccountChangeEvent-1"


def replay_bytes(n: int) -> bytes:
    return n.to_bytes(8, "big")


@dataclass(frozen=True)
class StoredEvent:
    replay: int
    schema_id: str
    payload: bytes
    stored_at: float
    record: dict[str, Any]


@dataclass
class PubSubFaults:
    """Faults that fire once each, counted in events sent on the stream that is open then."""

    reset_after: int | None = None
    """End the stream UNAVAILABLE "RST_STREAM closed stream" after this many events."""
    expire_token_after: int | None = None
    """Revoke the tokens and end the stream with service.auth.error after this many events."""
    refuse_subscribes: list[tuple[str, str]] = field(default_factory=list)
    """The next Subscribe calls refused, each with a gRPC status name and an `error-code`
    trailer (`("INVALID_ARGUMENT", "…fetch.replayid.validation.failed")`), one per call."""


@dataclass
class PubSubSandbox:
    """The fake event bus: topics with their events, the schema, token check, faults."""

    token_valid: Callable[[str], bool]
    """Whether an `accesstoken` is good now (the CRM sandbox that issued it decides)."""
    revoke_tokens: Callable[[], object] = lambda: None
    org_id: str = ORG_ID
    retention_s: float = 72 * 3600
    keepalive_s: float = 5.0
    idle_timeout_s: float = 60.0
    max_batch: int = 100
    """Events per FetchResponse at most (Salesforce sends what it has, in batches)."""
    clock: Callable[[], float] = time.time
    faults: PubSubFaults = field(default_factory=PubSubFaults)
    schemas: dict[str, str] = field(default_factory=lambda: {ACCOUNT_SCHEMA_ID: ACCOUNT_SCHEMA_JSON})
    topics: dict[str, str] = field(default_factory=lambda: {ACCOUNT_TOPIC: ACCOUNT_SCHEMA_ID})
    events: dict[str, list[StoredEvent]] = field(default_factory=dict)
    subscribes: list[dict[str, Any]] = field(default_factory=list)
    """Each Subscribe call: topic, preset, replay id (hex), when."""
    sent: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    """Events in each FetchResponse sent (keepalives: 0)."""
    _next_replay: int = 1000
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._parsed = {sid: decode.parse_schema(sid, text) for sid, text in self.schemas.items()}
        for topic in self.topics:
            self.events.setdefault(topic, [])

    def publish(self, records: Iterable[dict[str, Any]], topic: str = ACCOUNT_TOPIC) -> list[bytes]:
        """Store Avro records (`AccountChangeEvent`-shaped dicts, header bitmaps already set)
        and wake the streams; returns their replay ids."""
        schema_id = self.topics[topic]
        parsed = self._parsed[schema_id].parsed
        out = []
        now = self.clock()
        for record in records:
            buffer = io.BytesIO()
            fastavro.schemaless_writer(buffer, parsed, record)
            self._next_replay += 1
            self.events[topic].append(
                StoredEvent(self._next_replay, schema_id, buffer.getvalue(), now, record)
            )
            out.append(replay_bytes(self._next_replay))
        self._changed.set()
        return out

    def publish_raw(self, payload: bytes, topic: str = ACCOUNT_TOPIC) -> bytes:
        """Store a payload as it is (an undecodable one, for the DLQ test)."""
        self._next_replay += 1
        stored = StoredEvent(self._next_replay, self.topics[topic], payload, self.clock(), {})
        self.events[topic].append(stored)
        self._changed.set()
        return replay_bytes(self._next_replay)

    def publish_gap(self, record_id: str, change_type: str = "GAP_UPDATE") -> bytes:
        header = event_header("Account", [record_id], change_type, self.clock(), 1)
        return self.publish([{"ChangeEventHeader": header}])[0]

    def advance(self, n: int) -> None:
        """Move the bus past `n` replay ids of other orgs' events (the keepalive's latest id
        then runs ahead of the last event, as on the shared bus)."""
        self._next_replay += n

    def retained(self, topic: str) -> list[StoredEvent]:
        horizon = self.clock() - self.retention_s
        kept = self.events[topic]
        while kept and kept[0].stored_at < horizon:
            kept.pop(0)  # past retention: gone for good, as on the real bus
        return kept

    def tip(self, topic: str) -> int:
        return self._next_replay

    def authenticate(self, metadata: dict[str, str]) -> bool:
        token = metadata.get("accesstoken", "")
        return (
            bool(token)
            and self.token_valid(token)
            and metadata.get("tenantid") == self.org_id
            and bool(metadata.get("instanceurl"))
        )


def event_header(
    entity: str, record_ids: list[str], change_type: str, now: float, sequence: int, **extra: Any
) -> dict[str, Any]:
    header = {
        "entityName": entity,
        "recordIds": record_ids,
        "changeType": change_type,
        "changeOrigin": "com/salesforce/api/soap/60.0;client=SfdcInternalAPI/",
        "transactionKey": str(uuid.uuid4()),
        "sequenceNumber": sequence,
        "commitTimestamp": int(now * 1000),
        "commitNumber": int(now * 1000) * 1000 + sequence,
        "commitUser": "005SANDBOX0000001",
        "nulledFields": [],
        "diffFields": [],
        "changedFields": [],
    }
    header.update(extra)
    return header


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode, error_code: str, message: str
) -> None:
    context.set_trailing_metadata(((ERROR_CODE, error_code),))
    await context.abort(code, f"{error_code}: {message} rpcId: {uuid.uuid4()}")


class _Servicer(pb_grpc.PubSubServicer):
    def __init__(self, sandbox: PubSubSandbox) -> None:
        self.sandbox = sandbox

    async def _check_auth(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        if not self.sandbox.authenticate(metadata):
            await _abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                AUTH_ERROR,
                "Provide valid authentication via metadata headers",
            )

    async def GetSchema(
        self, request: pb.SchemaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SchemaInfo:
        await self._check_auth(context)
        text = self.sandbox.schemas.get(request.schema_id)
        if text is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no schema {request.schema_id}")
        return pb.SchemaInfo(schema_json=text, schema_id=request.schema_id, rpc_id=str(uuid.uuid4()))

    async def GetTopic(
        self, request: pb.TopicRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.TopicInfo:
        await self._check_auth(context)
        schema_id = self.sandbox.topics.get(request.topic_name)
        if schema_id is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no topic {request.topic_name}")
        return pb.TopicInfo(
            topic_name=request.topic_name, tenant_guid=self.sandbox.org_id, can_publish=False,
            can_subscribe=True, schema_id=schema_id, rpc_id=str(uuid.uuid4()),
        )  # fmt: skip

    async def Subscribe(
        self, request_iterator: AsyncIterator[pb.FetchRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.FetchResponse]:
        sandbox = self.sandbox
        await self._check_auth(context)
        first = await anext(request_iterator, None)
        if first is None:
            return
        topic = first.topic_name
        if topic not in sandbox.topics:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown topic {topic}")
        retained = sandbox.retained(topic)
        if sandbox.faults.refuse_subscribes:
            status, error_code = sandbox.faults.refuse_subscribes.pop(0)
            sandbox.subscribes.append({"topic": topic, "refused": error_code})
            await _abort(context, grpc.StatusCode[status], error_code, "refused on request")
        sandbox.subscribes.append(
            {
                "topic": topic,
                "preset": pb.ReplayPreset.Name(first.replay_preset),
                "replay_id": first.replay_id.hex(),
            }
        )
        if first.replay_preset == pb.ReplayPreset.CUSTOM:
            raw = first.replay_id
            replay = int.from_bytes(raw, "big") if len(raw) == 8 else -1
            oldest = retained[0].replay - 1 if retained else sandbox.tip(topic)
            if replay < oldest or replay > sandbox.tip(topic):
                await _abort(
                    context, grpc.StatusCode.INVALID_ARGUMENT, REPLAY_CORRUPTED, "Replay ID is invalid"
                )
            position = replay
        elif first.replay_preset == pb.ReplayPreset.EARLIEST:
            position = retained[0].replay - 1 if retained else sandbox.tip(topic)
        else:
            position = sandbox.tip(topic)

        pending = min(first.num_requested, MAX_REQUESTED)
        last_request = time.monotonic()
        more = asyncio.Event()

        async def read_requests() -> None:
            nonlocal pending, last_request
            async for request in request_iterator:
                if request.topic_name and request.topic_name != topic:
                    return
                pending += min(request.num_requested, MAX_REQUESTED)
                last_request = time.monotonic()
                more.set()

        reader = asyncio.create_task(read_requests())
        sent_here = 0
        try:
            while True:
                faults = sandbox.faults
                if faults.reset_after is not None and sent_here >= faults.reset_after:
                    faults.reset_after = None
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "RST_STREAM closed stream")
                if faults.expire_token_after is not None and sent_here >= faults.expire_token_after:
                    faults.expire_token_after = None
                    sandbox.revoke_tokens()
                    await _abort(context, grpc.StatusCode.UNAUTHENTICATED, AUTH_ERROR, "token expired")
                events = [e for e in sandbox.retained(topic) if e.replay > position]
                limit = min(pending, sandbox.max_batch)
                for fault_at in (faults.reset_after, faults.expire_token_after):
                    if fault_at is not None:
                        limit = min(limit, fault_at - sent_here)
                if events and limit > 0:
                    batch = events[:limit]
                    pending -= len(batch)
                    position = batch[-1].replay
                    sent_here += len(batch)
                    sandbox.sent += len(batch)
                    sandbox.batch_sizes.append(len(batch))
                    yield pb.FetchResponse(
                        events=[
                            pb.ConsumerEvent(
                                event=pb.ProducerEvent(
                                    id=str(e.replay), schema_id=e.schema_id, payload=e.payload
                                ),
                                replay_id=replay_bytes(e.replay),
                            )
                            for e in batch
                        ],
                        latest_replay_id=replay_bytes(position),
                        rpc_id=str(uuid.uuid4()),
                        pending_num_requested=pending,
                    )
                    continue
                if pending == 0 and time.monotonic() - last_request > sandbox.idle_timeout_s:
                    return  # the client stopped asking: Salesforce closes the stream
                sandbox._changed.clear()
                more.clear()
                waiters = [asyncio.ensure_future(sandbox._changed.wait()), asyncio.ensure_future(more.wait())]
                try:
                    done, _ = await asyncio.wait(
                        waiters, timeout=sandbox.keepalive_s, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    for waiter in waiters:
                        waiter.cancel()
                if reader.done() and not more.is_set():
                    return
                if not done:  # keepalive: nothing new, here is the tip
                    if not [e for e in sandbox.retained(topic) if e.replay > position]:
                        position = sandbox.tip(topic)
                    sandbox.batch_sizes.append(0)
                    yield pb.FetchResponse(
                        latest_replay_id=replay_bytes(position),
                        rpc_id=str(uuid.uuid4()),
                        pending_num_requested=pending,
                    )
        finally:
            reader.cancel()


class PubSubServer:
    """The fake Pub/Sub API on `host:port` (port 0 picks a free one), plaintext (loopback)."""

    def __init__(self, sandbox: PubSubSandbox, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sandbox = sandbox
        self.host = host
        self.port = port
        self._server: grpc.aio.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> str:
        self._server = grpc.aio.server()
        pb_grpc.add_PubSubServicer_to_server(_Servicer(self.sandbox), self._server)
        self.port = self._server.add_insecure_port(f"{self.host}:{self.port}")
        await self._server.start()
        log.info("pubsub sandbox listening", extra={"endpoint": self.endpoint})
        return self.endpoint

    async def stop(self, grace: float = 0.5) -> None:
        if self._server is not None:
            await self._server.stop(grace)

    async def __aenter__(self) -> PubSubServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# -- realistic account change events -------------------------------------------------------------

_CITIES = {
    "DE": [("Berlin", "BE"), ("Hamburg", "HH")],
    "FR": [("Paris", "IDF"), ("Lyon", "ARA")],
    "US": [("Austin", "TX"), ("Boston", "MA")],
    "GB": [("Leeds", "ENG"), ("Glasgow", "SCT")],
}
_CURRENCY = {"DE": "EUR", "FR": "EUR", "US": "USD", "GB": "GBP"}
"""An account bills in its country's currency, so the demo's ERP mappings book it."""


def account_id(rng: random.Random) -> str:
    return "001" + "".join(rng.choices(string.ascii_letters + string.digits, k=15))


def _address(rng: random.Random, country: str) -> dict[str, Any]:
    city, state = rng.choice(_CITIES[country])
    return {
        "Street": f"{rng.randint(1, 200)} Main St", "City": city, "State": state,
        "PostalCode": f"{rng.randint(10000, 99999)}", "Country": None, "StateCode": state,
        "CountryCode": country, "Latitude": None, "Longitude": None, "Xyz": None, "GeocodeAccuracy": None,
    }  # fmt: skip


def _empty_record() -> dict[str, Any]:
    return {name: None for name, _ in _ACCOUNT_FIELDS}


def account_changes(
    n: int, seed: int = 7, records: int | None = None, start_ms: int | None = None
) -> Iterator[dict[str, Any]]:
    """`n` AccountChangeEvent records: each account created first, then updated several times
    (names, phones, address parts, nulled fields), accounts interleaved; bitmaps set."""
    rng = random.Random(seed)
    schema = decode.parse_schema(ACCOUNT_SCHEMA_ID, ACCOUNT_SCHEMA_JSON)
    count = records if records is not None else max(1, n // 5)
    ids = [account_id(rng) for _ in range(count)]
    country_of: dict[str, str] = {}
    moment = start_ms if start_ms is not None else int(time.time() * 1000) - n
    for i in range(n):
        record_id = ids[i % count] if i < count else rng.choice(ids)
        moment += 1
        record = _empty_record()
        record["LastModifiedDate"] = moment
        if record_id not in country_of:
            country = country_of[record_id] = rng.choice(sorted(_CITIES))
            record.update(
                Name=f"Account {record_id[-6:]}", Type="Customer", BillingAddress=_address(rng, country),
                Phone=f"+49 30 {rng.randint(1000000, 9999999)}",
                CurrencyIsoCode=_CURRENCY[country],
                CreatedDate=moment, OwnerId="005SANDBOX0000001", NumberOfEmployees=rng.randint(5, 5000),
            )  # fmt: skip
            header = event_header("Account", [record_id], "CREATE", moment / 1000, 1)
            changed = [name for name, value in record.items() if value is not None]
            header["changedFields"] = decode.to_bitmaps(changed, schema)
        else:
            header = event_header("Account", [record_id], "UPDATE", moment / 1000, 1)
            kind = rng.random()
            changed = ["LastModifiedDate"]
            nulled: list[str] = []
            if kind < 0.4:
                record["Name"] = f"Account {record_id[-6:]} {rng.choice(['GmbH', 'SA', 'Inc', 'Ltd'])} {i}"
                changed.append("Name")
            elif kind < 0.7:
                # a move within the country: the account keeps its subsidiary and currency
                moved = _address(rng, country_of[record_id])
                address: dict[str, Any] = dict.fromkeys(moved)
                parts = ("Street", "City", "PostalCode", "StateCode", "CountryCode")
                address.update({part: moved[part] for part in parts})
                record["BillingAddress"] = address
                changed += [f"BillingAddress.{part}" for part in parts]
            elif kind < 0.85:
                record["Phone"] = f"+33 1 {rng.randint(10000000, 99999999)}"
                changed.append("Phone")
            else:
                nulled = ["Fax", "Website"] if rng.random() < 0.5 else ["ShippingAddress"]
            header["changedFields"] = decode.to_bitmaps(changed + nulled, schema)
            header["nulledFields"] = decode.to_bitmaps(nulled, schema) if nulled else []
        record["ChangeEventHeader"] = header
        yield record
