"""A backfill into an empty deployment, then the same objects arriving again as webhooks: the ERP
ends with each document once (issue #17: the backfill's snapshots and the webhooks' Events are
the same documents to stage 2, never two)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson

from connectors.simulation import generate
from connectors.stripe.client import StripeApi
from connectors.stripe.sandbox import StripeFaults, StripeSandbox, stripe_sandbox_server
from streams.cli.stripe import backfill
from streams.kafka_io import produce
from streams.settings import Settings
from streams.topic_names import CANONICAL, ERP_COMMANDS, ERP_RESULTS, STRIPE_TOPICS
from tests.connectors.stripe.stand_in import KEY, VERSION
from tests.support import assert_books_balance, assert_erp_holds_exactly, erp_documents_of, unconsumed


def _produce(stack: Any, messages: list[Any]) -> None:
    by_topic: dict[str, list[tuple[str | None, bytes, dict[str, str]]]] = {}
    for m in messages:
        by_topic.setdefault(m.topic, []).append((m.key, m.value, {}))
    for topic, records in by_topic.items():
        asyncio.run(produce(stack.bootstrap, stack.topic(topic), records))


def _settle(stack: Any, s: Settings, timeout: float = 180.0) -> None:
    """Until the worker took in everything on its inputs (a bounded wait)."""
    topics = [s.topic(t) for t in (*STRIPE_TOPICS, CANONICAL, ERP_COMMANDS, ERP_RESULTS)]
    deadline = time.monotonic() + timeout
    while asyncio.run(unconsumed(stack.bootstrap, s.group_id, topics, stack.partitions)):
        assert time.monotonic() < deadline, "the worker did not take in its inputs"
        time.sleep(1.0)


def test_backfill_then_the_same_objects_as_webhooks_post_each_document_once(
    new_stack: Any, tmp_path: Path
) -> None:
    stack = new_stack()
    stack.start_worker()
    scenario = generate(40, 3, seed=13)
    stripe = [m for m in scenario.messages if m.topic in STRIPE_TOPICS]
    _produce(stack, [m for m in scenario.messages if m.topic not in STRIPE_TOPICS])  # CRM and CLM
    env = stack.env(0)
    s = Settings(
        kafka_bootstrap=stack.bootstrap,
        topic_prefix=stack.prefix,
        app_id=env["LEDGERFLOW_APP_ID"],
        partitions=stack.partitions,
        data_dir=tmp_path / "backfill",
        stripe_api_key=KEY,
        stripe_api_version=VERSION,
    )
    sandbox = StripeSandbox([orjson.loads(m.value) for m in stripe], faults=StripeFaults(rate_limit_per_s=0))

    async def load() -> int:
        async with stripe_sandbox_server(sandbox) as server, StripeApi(KEY, VERSION, server.url, 1000) as api:
            report = await backfill(s.model_copy(update={"stripe_api_base": server.url}), api, since=None)
        return sum(report.produced.values())

    produced = asyncio.run(load())
    truth = scenario.truth
    expected = erp_documents_of(truth)
    assert stack.erp is not None and produced >= len(truth["customers"]) + len(truth["invoices"])
    view = stack.erp.wait_for(expected, timeout=240)
    assert_erp_holds_exactly(view, expected)  # the backfill alone: every document, payments applied
    _produce(stack, stripe)  # now the webhooks of the same history, duplicates and reorders included
    _settle(stack, s)
    view = stack.erp.wait_for(expected, timeout=60)
    assert_erp_holds_exactly(view, expected)  # … and still each once
    assert_books_balance(view)
