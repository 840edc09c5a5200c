"""`ledgerflow backfill stripe` and `ledgerflow catch-up stripe` against the Stripe stand-in on
loopback and the real broker: every object's snapshot on its topic and key, a second run only
duplicates, a run interrupted and resumed misses nothing; catch-up produces exactly the missed."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from connectors.stripe.client import StripeApi
from connectors.stripe.samples import customer_object, event_envelope, invoice_payment_object
from connectors.stripe.sandbox import StripeSandbox, stripe_sandbox_server
from streams.cli.stripe import CHECKPOINT_FILE, backfill, catch_up
from streams.headers import CAUSATION_ID, CORRELATION_ID, stable_id
from streams.kafka_io import Record, produce, read_topics
from streams.settings import Settings
from streams.topic_names import BILLING_CHANGES, INVOICE_PAYMENTS, STRIPE_TOPICS
from tests.connectors.stripe.stand_in import KEY, VERSION, long_invoice_event, scenario_events


async def _settings(bootstrap: str, data_dir: Path, url: str) -> Settings:
    s = Settings(
        kafka_bootstrap=bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
        data_dir=data_dir,
        stripe_api_key=KEY,
        stripe_api_version=VERSION,
        stripe_api_base=url,
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(s.topic(t), 4, 1) for t in STRIPE_TOPICS])
    finally:
        await admin.close()
    return s


def with_an_open_invoice_payment(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scenario's events (their paid invoice payments included, as Stripe sends them since
    2025-05-28.basil) plus an open one, which a backfill does not book."""
    first = next(e["data"]["object"] for e in events if e["type"] == "invoice.finalized")
    payment = invoice_payment_object(first["id"], "pi_OPEN0001", first["currency"], first["total"], 1, 1)
    payment |= {"status": "open", "amount_paid": None}
    payment["status_transitions"]["paid_at"] = None
    return [*events, event_envelope("evt_inpay_open", "invoice_payment.created", payment, first["created"])]


def expected_snapshots(sandbox: StripeSandbox) -> dict[str, tuple[str, str]]:
    """object id → (design topic, key) of the snapshot a backfill must produce."""
    out: dict[str, tuple[str, str]] = {}
    for plural in ("customers", "subscriptions", "invoices", "credit_notes"):
        for obj in sandbox.objects[plural].values():
            out[obj["id"]] = (BILLING_CHANGES, obj["id"] if plural == "customers" else obj["customer"])
    for obj in sandbox.objects["invoice_payments"].values():
        if obj["status"] == "paid":
            out[obj["id"]] = (INVOICE_PAYMENTS, obj["invoice"])
    return out


async def read_all(s: Settings, count: int) -> list[tuple[str, Record]]:
    topics = [s.topic(t) for t in STRIPE_TOPICS]
    found = await read_topics(s.bootstrap, topics, lambda f: sum(map(len, f.values())) >= count, timeout=60)
    await asyncio.sleep(0.5)  # and nothing more arrives
    found = await read_topics(s.bootstrap, topics, lambda f: False, timeout=3)
    return [(t.removeprefix(s.topic_prefix), r) for t, records in found.items() for r in records]


def decoded(
    records: list[tuple[str, Record]],
) -> list[tuple[str, str | None, dict[str, Any], dict[str, str]]]:
    return [(topic, key, orjson.loads(value or b""), headers) for topic, (key, value, headers) in records]


@pytest.fixture(scope="module")
def account() -> list[dict[str, Any]]:
    return with_an_open_invoice_payment(scenario_events(500, months=3))  # 3: some subscriptions end


async def test_backfill_of_500_customers(kafka_bootstrap: str, tmp_path: Path, account: list[Any]) -> None:
    long_invoices = [
        long_invoice_event(f"in_LONG{n}", 40 + n, 1_767_225_600 + n, "cus_SIM00000001") for n in range(3)
    ]
    sandbox = StripeSandbox([*account, *long_invoices], paginate_long_invoices=True)
    expected = expected_snapshots(sandbox)
    assert len([i for i in expected if i.startswith("cus_")]) == 500
    async with stripe_sandbox_server(sandbox) as server:
        s = await _settings(kafka_bootstrap, tmp_path, server.url)
        started = time.monotonic()
        async with StripeApi(KEY, VERSION, server.url, s.stripe_requests_per_s) as api:
            report = await backfill(s, api, since=None)
            first_took = time.monotonic() - started
            first_requests = api.requests
            assert api.throttled == 0
        records = decoded(await read_all(s, len(expected)))
        assert sum(report.produced.values()) == len(expected) == len(records)
        got = {event["data"]["object"]["id"]: (topic, key) for topic, key, event, _ in records}
        assert got == expected
        for _topic, _key, event, headers in records:
            assert event["id"].startswith("evt_lfbackfill_") and event["api_version"] == VERSION
            assert headers[CAUSATION_ID] == f"backfill:stripe:{event['id']}"
            assert headers[CORRELATION_ID] == stable_id("correlation", "stripe", event["id"])
            obj = event["data"]["object"]
            if obj["object"] == "invoice":
                assert not obj["lines"]["has_more"]
                if obj["id"].startswith("in_LONG"):
                    assert len(obj["lines"]["data"]) == 40 + int(obj["id"][-1])  # whole
        canceled = [e for _, _, e, _ in records if e["data"]["object"].get("status") == "canceled"]
        assert canceled and all(e["type"] == "customer.subscription.updated" for e in canceled)  # status=all
        types = {event["type"] for _, _, event, _ in records}
        assert {"customer.updated", "customer.subscription.updated", "invoice.paid"} <= types
        assert "invoice_payment.paid" in types and report.skipped.get("invoice_payments", 0) > 0
        first_ids = sorted(event["id"] for _, _, event, _ in records)
        # customers went first: each customer's snapshot precedes its billing objects
        # (within a partition, which is all Kafka orders)
        position: dict[str, int] = {}
        for n, (topic, key, event, _) in enumerate(records):
            if (
                topic == BILLING_CHANGES
                and event["type"].startswith("customer.")
                and "subscription" not in event["type"]
            ):
                position[str(key)] = n
        assert all(position[str(k)] <= n for n, (t, k, _, _) in enumerate(records) if t == BILLING_CHANGES)

        # a second run (over): the same ids again, nothing new
        async with StripeApi(KEY, VERSION, server.url, s.stripe_requests_per_s) as api:
            again = await backfill(s, api, since=None, restart=True)
        records = decoded(await read_all(s, 2 * len(expected)))
        assert sum(again.produced.values()) == len(expected)
        all_ids = sorted(event["id"] for _, _, event, _ in records)
        assert all_ids == sorted(first_ids * 2)
        # and a re-run without --restart finds the checkpoint done: nothing at all
        async with StripeApi(KEY, VERSION, server.url, s.stripe_requests_per_s) as api:
            done = await backfill(s, api, since=None)
            assert sum(done.produced.values()) == 0 and api.requests == 0
    print(f"\nbackfill of {len(expected)} snapshots: {first_took:.1f}s, {first_requests} requests")


async def test_backfill_interrupted_then_resumed(
    kafka_bootstrap: str, tmp_path: Path, account: list[Any]
) -> None:
    sandbox = StripeSandbox(account)
    expected = expected_snapshots(sandbox)
    async with stripe_sandbox_server(sandbox) as server:
        s = await _settings(kafka_bootstrap, tmp_path, server.url)
        listed = 0
        interrupted = asyncio.Event()

        def tick(n: int) -> None:
            nonlocal listed
            listed += n
            if listed >= 1300:  # customers, subscriptions, and 300 invoices in
                interrupted.set()

        async with StripeApi(KEY, VERSION, server.url, s.stripe_requests_per_s) as api:
            task = asyncio.create_task(backfill(s, api, since=None, tick=tick))
            await interrupted.wait()
            task.cancel()  # what asyncio.run does to the command on Ctrl-C
            with pytest.raises(asyncio.CancelledError):
                await task
        checkpoint = orjson.loads((tmp_path / CHECKPOINT_FILE).read_bytes())
        assert (
            checkpoint["resources"]["customers"]["done"] and not checkpoint["resources"]["invoices"]["done"]
        )
        cursor = checkpoint["resources"]["invoices"]["after"]
        sandbox.requests.clear()
        async with StripeApi(KEY, VERSION, server.url, s.stripe_requests_per_s) as api:
            report = await backfill(s, api, since=None)
        assert report.resumed == ["invoices"] and "customers" not in report.produced
        invoice_lists = [e for e in sandbox.requests if e["path"] == "/v1/invoices"]
        assert invoice_lists and sandbox.requests[0]["path"] == "/v1/invoices"
        records = decoded(await read_all(s, len(expected)))
        got = {event["data"]["object"]["id"]: (topic, key) for topic, key, event, _ in records}
        assert got == expected  # nothing missing
        # re-sent at most the one page in flight when interrupted (same ids: duplicates)
        assert len(records) - len(expected) <= 100
        assert cursor is not None


async def test_catch_up_produces_exactly_the_missed(kafka_bootstrap: str, tmp_path: Path) -> None:
    now = int(time.time())
    base = now - 3 * 3600
    events: list[dict[str, Any]] = []
    for n in range(30):
        obj = customer_object(
            f"cus_CU{n:04d}", "GB", f"Name {n}", f"c{n}@x.example", f"001CU{n:04d}", base + n * 60
        )
        events.append(event_envelope(f"evt_cu_{n}", "customer.updated", obj, base + n * 60))
    # later changes Stripe holds: a renamed customer (its missed event re-reads the new name),
    # and a deleted one (its missed event keeps its own object)
    renamed = customer_object("cus_CU0011", "GB", "Renamed 11", "c11@x.example", "001CU0011", base + 11 * 60)
    events.append(event_envelope("evt_cu_rename", "customer.updated", renamed, base + 40 * 60))
    deleted = customer_object("cus_CU0013", "GB", "Name 13", "c13@x.example", "001CU0013", base + 13 * 60)
    events.append(event_envelope("evt_cu_gone", "customer.deleted", deleted, base + 41 * 60))
    seen = [e for n, e in enumerate(events[:30]) if n % 2 == 0 or n < 10] + events[30:]
    missed = {e["id"] for e in events} - {e["id"] for e in seen}
    assert len(missed) == 10
    # two more missed: one that names no customer and an invoice payment naming no invoice,
    # both produced without a key, as the ingress does (stage 1 dead-letters the second)
    plan = {"id": "plan_1", "object": "plan", "amount": 100, "currency": "usd", "created": base}
    events.append(event_envelope("evt_plan", "plan.created", plan, base + 42 * 60))
    orphan = {"id": "inpay_orphan", "object": "invoice_payment", "invoice": None, "status": "paid"}
    events.append(
        event_envelope("evt_orphan", "invoice_payment.paid", {**orphan, "created": base}, base + 43 * 60)
    )
    missed |= {"evt_plan", "evt_orphan"}

    sandbox = StripeSandbox(events)
    async with stripe_sandbox_server(sandbox) as server:
        s = await _settings(kafka_bootstrap, tmp_path, server.url)
        await produce(
            s.bootstrap,
            s.topic(BILLING_CHANGES),
            [(e["data"]["object"]["id"], orjson.dumps(e), {}) for e in seen],
        )
        async with StripeApi(KEY, VERSION, server.url, s.stripe_requests_per_s) as api:
            report = await catch_up(s, api, overlap_s=3600)
        assert set(report.produced) == missed and len(report.produced) == len(missed)
        assert report.seen == len(seen) and report.newest == base + 41 * 60
        assert report.listed == len(events)
        records = decoded(await read_all(s, len(seen) + len(missed)))
        caught = {
            event["id"]: (key, event, headers) for _, key, event, headers in records if event["id"] in missed
        }
        assert len(records) == len(seen) + len(missed) and set(caught) == missed
        key, event, headers = caught["evt_cu_11"]
        assert key == "cus_CU0011" and event["data"]["object"]["name"] == "Renamed 11"  # re-read
        assert event["type"] == "customer.updated" and event["api_version"] == VERSION
        assert headers[CAUSATION_ID] == "catch-up:stripe:evt_cu_11"
        assert caught["evt_cu_13"][1]["data"]["object"]["name"] == "Name 13"  # gone: its own object
        assert caught["evt_plan"][0] is None and caught["evt_orphan"][0] is None  # as the ingress
        assert report.kept_own_object == ["evt_cu_13", "evt_plan"]

        # run again: the topics now hold everything, nothing is produced
        async with StripeApi(KEY, VERSION, server.url, s.stripe_requests_per_s) as api:
            again = await catch_up(s, api, overlap_s=3600)
        assert again.produced == []


async def test_ctrl_c_then_a_re_run_resumes(kafka_bootstrap: str, tmp_path: Path, account: list[Any]) -> None:
    """The command itself: SIGINT mid-run exits 130 with the checkpoint kept; the re-run resumes."""
    sandbox = StripeSandbox(account)
    expected = expected_snapshots(sandbox)
    async with stripe_sandbox_server(sandbox) as server:
        s = await _settings(kafka_bootstrap, tmp_path, server.url)
        env = {
            **os.environ,
            "LEDGERFLOW_KAFKA_BOOTSTRAP": s.bootstrap,
            "LEDGERFLOW_TOPIC_PREFIX": s.topic_prefix,
            "LEDGERFLOW_DATA_DIR": str(tmp_path),
            "LEDGERFLOW_STRIPE_API_KEY": KEY,
            "LEDGERFLOW_STRIPE_API_VERSION": VERSION,
            "LEDGERFLOW_STRIPE_API_BASE": server.url,
            "LEDGERFLOW_STRIPE_REQUESTS_PER_S": "4",  # slow enough to be interrupted midway
        }
        command = [sys.executable, "-m", "streams", "backfill", "stripe"]
        first = await asyncio.create_subprocess_exec(
            *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        checkpoint_path = tmp_path / CHECKPOINT_FILE
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if checkpoint_path.exists():
                resources = orjson.loads(checkpoint_path.read_bytes())["resources"]
                if resources.get("subscriptions", {}).get("after"):
                    break
            await asyncio.sleep(0.05)
        first.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(first.communicate(), 30)
        assert first.returncode == 130, err.decode()
        assert b"re-run to resume" in err
        saved = orjson.loads(checkpoint_path.read_bytes())["resources"]
        assert saved["customers"]["done"] and not saved["subscriptions"]["done"]

        env["LEDGERFLOW_STRIPE_REQUESTS_PER_S"] = "20"
        second = await asyncio.create_subprocess_exec(
            *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(second.communicate(), 120)
        assert second.returncode == 0, err.decode()
        assert b"resumed subscriptions" in out
        records = decoded(await read_all(s, len(expected)))
        got = {event["data"]["object"]["id"]: (topic, key) for topic, key, event, _ in records}
        assert got == expected
