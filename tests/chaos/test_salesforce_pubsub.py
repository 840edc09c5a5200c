"""Exactly once from the Pub/Sub API into Kafka: `ledgerflow salesforce-subscribe` as a child
process while the stand-in streams 20,000 account change events; it is killed with `kill -9`
three times at random points (mid-transaction, as likely as not) and restarted each time.
Afterwards `crm.changes`, read read_committed, holds each replay id exactly once, each keyed by
its record, and every record's changes in replay order. The subscriber's log is kept under
test-artifacts/ when the run fails."""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from pathlib import Path

import pytest

from connectors.salesforce import pubsub_sandbox as ps
from tests.conftest import ARTIFACTS
from tests.connectors.salesforce.pubsub_support import (
    SubscriberProcess,
    committed_changes,
    exactly_once_report,
    settings_of,
    stand_ins,
    subscriber_env,
    wait_for_text,
)

pytestmark = pytest.mark.chaos

EVENTS = 20_000
KILLS = 3


async def test_kill_9_three_times_and_each_replay_id_lands_exactly_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    rng = random.Random(17)
    log_path = tmp_path / "subscriber.log"
    async with stand_ins() as org:
        env = subscriber_env(org, kafka_bootstrap)
        s = settings_of(env)
        subscriber = SubscriberProcess(env, log_path)
        changes = ps.account_changes(EVENTS, seed=17, records=1_000)
        published = 0

        async def stream() -> None:  # ~1,500 events/s for ~13 s, in chunks as a busy org would
            nonlocal published
            while published < EVENTS:
                chunk = [c for _, c in zip(range(75), changes, strict=False)]
                org.bus.publish(chunk)
                published += len(chunk)
                await asyncio.sleep(0.05)

        started = time.monotonic()
        try:
            subscriber.start()
            streaming = asyncio.create_task(stream())
            killed_at: list[int] = []
            for _ in range(KILLS + 1):
                offset = log_path.stat().st_size if log_path.exists() else 0
                await wait_for_text(log_path, "pubsub subscribing", 60, offset)
                if len(killed_at) == KILLS:
                    break  # the last one runs to the end
                await asyncio.sleep(rng.uniform(0.5, 2.5))  # it is writing by now
                assert subscriber.alive(), log_path.read_text()[-3000:]
                subscriber.kill()
                killed_at.append(published)
                subscriber.start()
            await streaming
            records = await committed_changes(s, EVENTS, timeout=180)
            report = exactly_once_report(records, EVENTS)
            elapsed = time.monotonic() - started
            print(
                f"\npubsub chaos: {EVENTS} events, {KILLS} kill -9, {subscriber.starts} starts, "
                f"{len(org.bus.subscribes)} subscribes, killed with {killed_at} published, "
                f"{elapsed:.1f}s; {report}"
            )
            assert report == {
                "records": EVENTS,
                "duplicates": 0,
                "missing": 0,
                "mis_keyed": 0,
                "out_of_order_records": 0,
            }
            # each restart resumed from a committed checkpoint, not from the start
            assert [c["preset"] for c in org.bus.subscribes][:1] == ["EARLIEST"]
            assert all(c["preset"] == "CUSTOM" for c in org.bus.subscribes[1:])
            resumed = [int(c["replay_id"], 16) for c in org.bus.subscribes[1:]]
            assert len(resumed) == KILLS and resumed == sorted(resumed)
            assert await subscriber.stop() == 0  # SIGTERM: a clean stop
        except BaseException:
            target = ARTIFACTS / "salesforce-pubsub-chaos"
            target.mkdir(parents=True, exist_ok=True)
            if log_path.exists():
                shutil.copy(log_path, target / log_path.name)
            raise
        finally:
            await subscriber.stop()
