"""StripeApi against the stand-in on loopback: pagination, 429 backoff, whole invoices, events."""

from __future__ import annotations

import time

import pytest

from connectors.stripe.client import Pace, StripeApi, StripeNotFound, StripeRateLimited, backoff_s
from connectors.stripe.sandbox import StripeFaults, StripeSandbox, stripe_sandbox_server
from tests.connectors.stripe.stand_in import KEY, VERSION, customer_events, long_invoice_event

NOW = 1_767_225_600 + 86400


async def test_lists_every_object_page_after_page() -> None:
    sandbox = StripeSandbox(customer_events(250), faults=StripeFaults(rate_limit_per_s=0), clock=lambda: NOW)
    async with stripe_sandbox_server(sandbox) as server, StripeApi(KEY, VERSION, server.url, 1000) as api:
        ids = [c["id"] async for c in api.list_all("customers")]
    assert ids == [f"cus_T{n:05d}" for n in range(249, -1, -1)]
    pages = [e for e in sandbox.requests if e["path"] == "/v1/customers"]
    assert len(pages) == 3  # 100 + 100 + 50


async def test_waits_out_429s_then_succeeds() -> None:
    sandbox = StripeSandbox(customer_events(5), faults=StripeFaults(burst_429=3), clock=lambda: NOW)
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    async with stripe_sandbox_server(sandbox) as server:
        async with StripeApi(KEY, VERSION, server.url, 1000, seed=1, sleep=sleep) as api:
            ids = [c["id"] async for c in api.list_all("customers")]
            assert len(ids) == 5 and api.throttled == 3 and api.requests == 4
        backoffs = [w for w in waits if w >= 0.25]
        assert len(backoffs) == 3 and backoffs[0] < 0.5 + 1e-9 < backoffs[2]  # growing
        sandbox.faults = StripeFaults(burst_429=10)
        async with StripeApi(KEY, VERSION, server.url, 1000, max_attempts=4, sleep=sleep) as api:
            with pytest.raises(StripeRateLimited):
                await api.retrieve("customers", "cus_T00001")
            assert api.requests == 4


def test_backoff_is_bounded_and_jittered() -> None:
    import random

    rng = random.Random(3)
    waits = [backoff_s(n, 0.5, 8.0, rng) for n in range(10)]
    assert all(0.25 <= w <= 8.0 for w in waits)
    assert max(waits[6:]) <= 8.0 and min(waits[6:]) >= 4.0
    assert len({round(w, 6) for w in waits[6:]}) == 4  # jitter: capped waits still differ


async def test_pace_spaces_calls() -> None:
    pace = Pace(20.0)
    started = time.monotonic()
    for _ in range(11):
        await pace.wait()
    assert time.monotonic() - started >= 0.49  # 10 intervals of 50 ms


async def test_client_keeps_under_the_stand_ins_rate_limit() -> None:
    sandbox = StripeSandbox(customer_events(3), faults=StripeFaults(rate_limit_per_s=25), clock=lambda: NOW)
    async with stripe_sandbox_server(sandbox) as server, StripeApi(KEY, VERSION, server.url, 20) as api:
        for _ in range(40):
            await api.retrieve("customers", "cus_T00001")
        assert api.throttled == 0


async def test_whole_invoice_from_paginated_lines() -> None:
    events = [*customer_events(1), long_invoice_event("in_long", 123)]
    sandbox = StripeSandbox(events, paginate_long_invoices=True, clock=lambda: NOW)
    async with stripe_sandbox_server(sandbox) as server, StripeApi(KEY, VERSION, server.url, 1000) as api:
        listed = [i async for i in api.list_all("invoices")]
        assert listed[0]["lines"]["has_more"] and len(listed[0]["lines"]["data"]) == 10
        whole = await api.invoice_whole("in_long")
        same = await api.whole(listed[0])
    assert whole == same
    lines = whole["lines"]["data"]
    assert not whole["lines"]["has_more"] and len(lines) == 123
    assert [line["id"] for line in lines] == [f"il_long_{n}" for n in range(123)]
    assert sum(line["amount"] for line in lines) == whole["subtotal"]
    assert all(isinstance(line["amount"], int) for line in lines)
    assert isinstance(lines[0]["pricing"]["unit_amount_decimal"], str)  # a decimal string, never a float
    pages = [e for e in sandbox.requests if e["path"] == "/v1/invoices/in_long/lines"]
    assert len(pages) == 4  # 113 more lines, 100 a page, for each of the two reads


async def test_events_oldest_first_in_a_window_and_missing_objects() -> None:
    sandbox = StripeSandbox(customer_events(150), clock=lambda: NOW)
    async with stripe_sandbox_server(sandbox) as server, StripeApi(KEY, VERSION, server.url, 1000) as api:
        events = await api.events(1_767_225_600 + 20, 1_767_225_600 + 140)
        assert [e["id"] for e in events] == [f"evt_c{n}" for n in range(20, 140)]
        with pytest.raises(StripeNotFound) as missing:
            await api.retrieve_object("customer", "cus_nope")
        assert missing.value.code == "resource_missing"


async def test_a_client_faster_than_the_limit_is_throttled_and_still_gets_everything() -> None:
    sandbox = StripeSandbox(customer_events(20), faults=StripeFaults(rate_limit_per_s=5), clock=lambda: NOW)
    async with (
        stripe_sandbox_server(sandbox) as server,
        StripeApi(KEY, VERSION, server.url, 100, backoff_base_s=0.2, backoff_max_s=1.0, seed=2) as api,
    ):
        got = [(await api.retrieve("customers", f"cus_T{n:05d}"))["id"] for n in range(12)]
    assert got == [f"cus_T{n:05d}" for n in range(12)]
    assert api.throttled > 0 and api.requests == 12 + api.throttled
    assert sum(1 for e in sandbox.requests if e["status"] == 429) == api.throttled
