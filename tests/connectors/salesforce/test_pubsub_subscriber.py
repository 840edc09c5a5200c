"""The Pub/Sub subscriber (streams.salesforce_pubsub) against the gRPC and REST stand-ins on
loopback and the real broker: decoded events in order per record, exactly one copy of each
replay id through resets, token expiry and restarts, keepalive checkpoints, the DLQ, GAP
events, and a lost window that raises `resync_required` and is filled by `resync salesforce`."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
import pytest
from pydantic import SecretStr

from connectors.salesforce import pubsub_sandbox as ps
from connectors.salesforce.pubsub.auth import LoginConfig, PubSubAuthError, login
from connectors.salesforce.pubsub.subscriber import ResyncRequired
from connectors.salesforce.sandbox import CrmSandboxConfig, SandboxServer
from streams import metrics
from streams.cli.salesforce import resync_salesforce
from streams.kafka_io import Record, read_topics
from streams.salesforce_pubsub import Sessions, login_config, parse_checkpoint, run_subscriber
from streams.settings import Settings
from streams.topic_names import CRM_CHANGES, DLQ, SALESFORCE_REPLAY

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now


@dataclass
class Org:
    crm: SandboxServer
    bus: ps.PubSubSandbox
    server: ps.PubSubServer
    clock: Clock


@pytest.fixture
async def org() -> AsyncIterator[Org]:
    clock = Clock()
    async with SandboxServer(CrmSandboxConfig(query_page_size=7)) as crm:
        bus = ps.PubSubSandbox(
            token_valid=crm.sandbox.token_valid,
            revoke_tokens=crm.sandbox.revoke_tokens,
            keepalive_s=0.3,
            clock=clock,
        )
        async with ps.PubSubServer(bus) as server:
            yield Org(crm, bus, server, clock)


def settings_for(org: Org, kafka_bootstrap: str, **extra: object) -> Settings:
    run = uuid.uuid4().hex[:8]
    return Settings(
        kafka_bootstrap=kafka_bootstrap,
        topic_prefix=f"sfps-{run}-",
        app_id=f"sfps-{run}",
        partitions=3,
        salesforce_pubsub_endpoint=org.server.endpoint,
        salesforce_pubsub_insecure=True,
        salesforce_pubsub_replay_preset="EARLIEST",
        salesforce_login_url=org.crm.url,
        crm_client_id="ledgerflow",
        crm_client_secret=SecretStr("sandbox-crm-secret"),
        **extra,  # type: ignore[arg-type]
    )


class Running:
    """A subscriber task in this loop, stopped cleanly by `stop()`."""

    def __init__(self, s: Settings, **kwargs: object) -> None:
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(run_subscriber(s, self.stop_event, **kwargs))  # type: ignore[arg-type]

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, 30)


async def changes(s: Settings, count: int, timeout: float = 60) -> list[Record]:
    found = await read_topics(
        s.bootstrap, [s.topic(CRM_CHANGES)], lambda f: len(f[s.topic(CRM_CHANGES)]) >= count, timeout
    )
    return found[s.topic(CRM_CHANGES)]


async def checkpoints(s: Settings) -> list[bytes]:
    found = await read_topics(s.bootstrap, [s.topic(SALESFORCE_REPLAY)], lambda f: False, 3)
    return [parse_checkpoint(v).replay_id for _, v, _ in found[s.topic(SALESFORCE_REPLAY)] if v]


def assert_exactly_once_in_order(records: list[Record], published: list[dict[str, object]]) -> None:
    replay_ids = [h["sf-replay-id"] for _, _, h in records]
    duplicates = [r for r, n in Counter(replay_ids).items() if n > 1]
    assert not duplicates, f"{len(duplicates)} replay ids twice"
    assert len(replay_ids) == len(published)
    per_record: dict[str, list[int]] = defaultdict(list)
    for key, value, headers in records:
        message = orjson.loads(value or b"")
        header = message["payload"]["ChangeEventHeader"]
        assert key == header["recordIds"][0]
        assert message["event"]["replayId"] == headers["sf-replay-id"]
        per_record[str(key)].append(int(headers["sf-replay-id"], 16))
    for key, replays in per_record.items():
        assert replays == sorted(replays), f"{key} out of order"


async def test_events_land_decoded_keyed_and_in_order(org: Org, kafka_bootstrap: str) -> None:
    s = settings_for(org, kafka_bootstrap)
    published = list(ps.account_changes(250, seed=1, records=20))
    org.bus.publish(published)  # a burst of 250: more than one request may ask for
    running = Running(s)
    records = await changes(s, 250)
    await running.stop()
    assert_exactly_once_in_order(records, published)
    assert max(org.bus.batch_sizes) <= 100  # num_requested is honoured
    by_replay = {h["sf-replay-id"]: (k, orjson.loads(v or b""), h) for k, v, h in records}
    key, message, headers = by_replay[ps.replay_bytes(1001).hex()]
    first = published[0]
    assert key == first["ChangeEventHeader"]["recordIds"][0]  # type: ignore[index]
    assert message["payload"]["Name"] == first["Name"]
    assert message["payload"]["BillingAddress"]["City"] == first["BillingAddress"]["City"]  # type: ignore[index]
    assert headers["sf-schema-id"] == ps.ACCOUNT_SCHEMA_ID and headers["sf-topic"] == ps.ACCOUNT_TOPIC
    assert headers["x-correlation-id"] and headers["x-causation-id"].startswith("salesforce:/data/")
    assert (await checkpoints(s))[-1] == ps.replay_bytes(1250)


async def test_a_restart_resumes_from_the_checkpoint_and_keepalives_move_it(
    org: Org, kafka_bootstrap: str
) -> None:
    s = settings_for(org, kafka_bootstrap)
    published = list(ps.account_changes(120, seed=2, records=10))
    org.bus.publish(published[:60])
    running = Running(s)
    await changes(s, 60)
    org.bus.advance(500)  # other orgs' events: the next keepalive's latest id runs ahead
    for _ in range(100):
        if (await checkpoints(s))[-1:] == [ps.replay_bytes(org.bus.tip(ps.ACCOUNT_TOPIC))]:
            break
    assert (await checkpoints(s))[-1] == ps.replay_bytes(1560)
    await running.stop()
    org.bus.publish(published[60:])
    running = Running(s)
    records = await changes(s, 120)
    await running.stop()
    assert_exactly_once_in_order(records, published)
    assert org.bus.subscribes[-1] == {
        "topic": ps.ACCOUNT_TOPIC,
        "preset": "CUSTOM",
        "replay_id": ps.replay_bytes(1560).hex(),
    }


async def test_a_stream_reset_resubscribes_custom_from_the_stored_id(org: Org, kafka_bootstrap: str) -> None:
    s = settings_for(org, kafka_bootstrap)
    published = list(ps.account_changes(300, seed=3, records=15))
    org.bus.faults.reset_after = 130
    org.bus.publish(published)
    running = Running(s)
    records = await changes(s, 300)
    await running.stop()
    assert_exactly_once_in_order(records, published)
    assert [c["preset"] for c in org.bus.subscribes] == ["EARLIEST", "CUSTOM"]
    assert org.bus.subscribes[1]["replay_id"] == ps.replay_bytes(1130).hex()


async def test_an_expired_token_is_refreshed_and_the_stream_resumes(org: Org, kafka_bootstrap: str) -> None:
    s = settings_for(org, kafka_bootstrap)
    published = list(ps.account_changes(300, seed=4, records=15))
    # After 250: the client asks for the third batch only once the first is written, so its
    # GetSchema is done by then (an expiry during GetSchema is refreshed the same way, only
    # with no stored id yet).
    org.bus.faults.expire_token_after = 250
    org.bus.publish(published)
    sessions = Sessions(login_config(s))
    running = Running(s, sessions=sessions)
    records = await changes(s, 300)
    await running.stop()
    assert_exactly_once_in_order(records, published)
    assert sessions.logins == 2
    assert [c["preset"] for c in org.bus.subscribes] == ["EARLIEST", "CUSTOM"]
    assert org.bus.subscribes[1]["replay_id"] == ps.replay_bytes(1250).hex()


async def test_gap_events_go_on_and_undecodable_ones_go_to_the_dlq(org: Org, kafka_bootstrap: str) -> None:
    s = settings_for(org, kafka_bootstrap)
    before = metrics.salesforce_undecodable("undecodable_avro")._value.get()
    org.bus.publish(list(ps.account_changes(3, seed=5)))
    bad = org.bus.publish_raw(b"\x02\xff\xff\xff")
    gap = org.bus.publish_gap("001GAPGAPGAPGAP000")
    running = Running(s)
    records = await changes(s, 4)
    dlq = await read_topics(s.bootstrap, [s.topic(DLQ)], lambda f: len(f[s.topic(DLQ)]) >= 1, 30)
    await running.stop()
    assert len(records) == 4
    gap_record = next(r for r in records if r[2]["sf-replay-id"] == gap.hex())
    assert orjson.loads(gap_record[1] or b"")["payload"]["ChangeEventHeader"]["changeType"] == "GAP_UPDATE"
    assert gap_record[0] == "001GAPGAPGAPGAP000"
    [(key, value, headers)] = dlq[s.topic(DLQ)]
    assert value == b"\x02\xff\xff\xff" and headers["sf-replay-id"] == bad.hex() and key == ps.ACCOUNT_TOPIC
    assert (
        headers["x-dlq-reason"].startswith("undecodable_avro")
        and headers["x-source-topic"] == ps.ACCOUNT_TOPIC
    )
    assert metrics.salesforce_undecodable("undecodable_avro")._value.get() == before + 1


async def test_a_lost_window_raises_resync_required_and_resync_fills_it(
    org: Org, kafka_bootstrap: str
) -> None:
    s = settings_for(org, kafka_bootstrap)
    org.bus.retention_s = 3600
    seen = list(ps.account_changes(20, seed=6, records=5))
    org.bus.publish(seen)
    running = Running(s)
    await changes(s, 20)
    await running.stop()
    stopped_at = datetime.now(UTC)
    # Offline past the retention window: the events meanwhile are gone from the bus, and the
    # accounts they changed are what the REST API now shows.
    lost = list(ps.account_changes(10, seed=7, records=4))
    org.bus.publish(lost)
    for record in lost:
        record_id = record["ChangeEventHeader"]["recordIds"][0]  # type: ignore[index]
        org.crm.sandbox.write(record_id, "v60.0", {"Name": f"{record['Name'] or 'renamed'}"}, None)
    org.clock.now += 2 * 3600
    after = list(ps.account_changes(5, seed=8, records=5))
    org.bus.publish(after)
    resyncs: list[ResyncRequired] = []

    async def heard(exc: ResyncRequired) -> None:
        resyncs.append(exc)

    running = Running(s, on_resync=heard)
    records = await changes(s, 25)
    await running.stop()
    [resync] = resyncs
    assert resync.replay_id == ps.replay_bytes(1020) and resync.error_code == ps.REPLAY_CORRUPTED
    assert resync.last_seen is not None and resync.last_seen <= stopped_at
    assert [c["preset"] for c in org.bus.subscribes] == ["EARLIEST", "CUSTOM", "EARLIEST"]
    assert len(records) == 25  # the 10 lost ones never came

    assert await resync_salesforce(s, resync.last_seen) == len(
        {r["ChangeEventHeader"]["recordIds"][0] for r in lost}
    )  # type: ignore[index]
    filled = resynced(await changes(s, 25 + 4))
    messages = [orjson.loads(v or b"") for _, v, _ in filled]
    assert {m["payload"]["ChangeEventHeader"]["changeType"] for m in messages} == {"UPDATE"}
    assert {k for k, _, _ in filled} == {r["ChangeEventHeader"]["recordIds"][0] for r in lost}  # type: ignore[index]
    assert all("Name" in m["payload"]["ChangeEventHeader"]["changedFields"] for m in messages)
    for message in messages:
        record_id = message["payload"]["ChangeEventHeader"]["recordIds"][0]
        assert message["payload"]["Name"] == org.crm.sandbox.accounts[record_id].fields["Name"]
    # a second run is the same events: same transactionKeys, dropped downstream as duplicates
    await resync_salesforce(s, resync.last_seen)
    both = resynced(await changes(s, 25 + 8))
    assert Counter(map(transaction_key, both)) == {transaction_key(r): 2 for r in filled}


def resynced(records: list[Record]) -> list[Record]:
    return [r for r in records if orjson.loads(r[1] or b"")["schema"] == "resync"]


def transaction_key(record: Record) -> str:
    return str(orjson.loads(record[1] or b"")["payload"]["ChangeEventHeader"]["transactionKey"])


async def test_login_by_client_credentials_and_jwt_bearer(org: Org) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    async with SandboxServer(CrmSandboxConfig(jwt_public_key=public.decode())) as crm:
        session = await login(LoginConfig(crm.url, "ledgerflow", SecretStr("sandbox-crm-secret")))
        assert session.org_id == ps.ORG_ID and session.instance_url == crm.url
        jwt_config = LoginConfig(
            crm.url,
            "ledgerflow",
            jwt_username="integration@ledgerflow.example",
            jwt_private_key=SecretStr(pem.decode()),
        )
        assert (await login(jwt_config)).org_id == ps.ORG_ID
        with pytest.raises(PubSubAuthError) as refused:
            await login(
                LoginConfig(
                    crm.url,
                    "ledgerflow",
                    jwt_username="someone@else",
                    jwt_private_key=SecretStr(pem.decode()),
                )
            )
        assert refused.value.code == "INVALID_GRANT"
        with pytest.raises(PubSubAuthError) as refused:
            await login(LoginConfig(crm.url, "ledgerflow", SecretStr("wrong")))
        assert refused.value.code == "INVALID_CLIENT"


async def test_a_bad_token_is_refused_with_the_auth_trailer(org: Org) -> None:
    import grpc

    from connectors.salesforce.pubsub import pubsub_api_pb2 as pb
    from connectors.salesforce.pubsub import pubsub_api_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(org.server.endpoint) as channel:
        stub = pb_grpc.PubSubStub(channel)
        metadata = (("accesstoken", "nope"), ("instanceurl", org.crm.url), ("tenantid", ps.ORG_ID))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetTopic(pb.TopicRequest(topic_name=ps.ACCOUNT_TOPIC), metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert ("error-code", ps.AUTH_ERROR) in tuple(refused.value.trailing_metadata() or ())


async def test_refusals_follow_the_java_samples_rules(org: Org, kafka_bootstrap: str) -> None:
    s = settings_for(org, kafka_bootstrap)
    published = list(ps.account_changes(40, seed=9, records=5))
    org.bus.publish(published[:20])
    running = Running(s)
    await changes(s, 20)
    await running.stop()
    org.bus.publish(published[20:])
    org.bus.faults.refuse_subscribes = [
        ("RESOURCE_EXHAUSTED", "sfdc.platform.eventbus.grpc.concurrent.client.limit.exceeded"),
        ("INVALID_ARGUMENT", "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.validation.failed"),
    ]
    resyncs: list[ResyncRequired] = []

    async def heard(exc: ResyncRequired) -> None:
        resyncs.append(exc)

    running = Running(s, on_resync=heard)
    records = await changes(s, 40 + 20)  # EARLIEST replays the retained 20 it had already written
    await running.stop()
    after_restart = org.bus.subscribes[1:]
    assert [c.get("preset") or c["refused"].rsplit(".", 2)[-2] for c in after_restart] == [
        "limit",  # a refusal with no replay meaning: CUSTOM again after a backoff
        "validation",  # the stored id refused: resync_required, then EARLIEST
        "EARLIEST",
    ]
    [resync] = resyncs
    assert resync.replay_id == ps.replay_bytes(1020)
    assert len(records) == 60 and len({h["sf-replay-id"] for _, _, h in records}) == 40


async def test_a_subscription_that_keeps_failing_ends_the_command(org: Org, kafka_bootstrap: str) -> None:
    from connectors.salesforce.pubsub.subscriber import PubSubUnavailable

    s = settings_for(org, kafka_bootstrap, salesforce_pubsub_max_retries=2)
    org.bus.faults.refuse_subscribes = [
        ("UNAVAILABLE", "sfdc.platform.eventbus.grpc.service.unavailable")
    ] * 3
    started = asyncio.get_running_loop().time()
    with pytest.raises(PubSubUnavailable):
        await asyncio.wait_for(run_subscriber(s, asyncio.Event()), 30)
    assert asyncio.get_running_loop().time() - started >= 3  # backoff 1 s, then 2 s
    assert len(org.bus.subscribes) == 3
