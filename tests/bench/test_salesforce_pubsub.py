"""The Pub/Sub subscriber's rate on this machine: `ledgerflow salesforce-subscribe` (a child
process) drains 20,000 account changes the stand-in already holds — decode, and transactional
produce of each batch with its checkpoint. Printed, not asserted: from the subscription's first
request (its log line) to the last checkpoint's commit time, both the subscriber's clock."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest

from connectors.salesforce import pubsub_sandbox as ps
from streams.kafka_io import read_topics
from streams.salesforce_pubsub import parse_checkpoint
from streams.topic_names import SALESFORCE_REPLAY
from tests.connectors.salesforce.pubsub_support import (
    SubscriberProcess,
    committed_changes,
    exactly_once_report,
    settings_of,
    stand_ins,
    subscriber_env,
    wait_for_text,
)

pytestmark = pytest.mark.bench

EVENTS = 20_000


async def test_subscriber_events_per_second(kafka_bootstrap: str, tmp_path: Path) -> None:
    log_path = tmp_path / "subscriber.log"
    async with stand_ins() as org:
        org.bus.publish(ps.account_changes(EVENTS, seed=23, records=1_000))
        env = subscriber_env(org, kafka_bootstrap)
        s = settings_of(env)
        subscriber = SubscriberProcess(env, log_path)
        subscriber.start()
        try:
            await wait_for_text(log_path, "pubsub subscribing", 60)
            records = await committed_changes(s, EVENTS, timeout=300)
            topic = s.topic(SALESFORCE_REPLAY)
            found = await read_topics(s.bootstrap, [topic], lambda f: False, 3)
        finally:
            assert await subscriber.stop() == 0
    assert exactly_once_report(records, EVENTS)["duplicates"] == 0 and len(records) == EVENTS
    last = parse_checkpoint(found[topic][-1][1] or b"")
    assert last.replay_id == ps.replay_bytes(1000 + EVENTS)
    line = next(x for x in log_path.read_text().splitlines() if "pubsub subscribing" in x)
    match = re.match(r"^(\S+Z) ", line)
    assert match is not None
    first = datetime.fromisoformat(match[1])
    seconds = (last.at - first).total_seconds()
    print(
        f"\nsalesforce-subscribe: {EVENTS} events in {seconds:.2f}s = {EVENTS / seconds:,.0f} events/s "
        f"({len(found[topic])} transactions, {len(org.bus.batch_sizes)} fetch responses)"
    )
