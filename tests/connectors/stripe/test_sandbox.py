"""The Stripe stand-in over real HTTP on loopback: paging, cursors, filters, Stripe's refusals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from connectors.stripe.samples import event_envelope, subscription_object
from connectors.stripe.sandbox import StripeFaults, StripeSandbox, stripe_sandbox_server
from tests.connectors.stripe.stand_in import KEY, VERSION, customer_events, long_invoice_event

NOW = 1_767_225_600 + 86400  # a day after the seeded events


@pytest.fixture
async def stand_in() -> AsyncIterator[tuple[StripeSandbox, httpx.AsyncClient]]:
    events = customer_events(25)
    events += [
        event_envelope(
            f"evt_s{n}",
            "customer.subscription.created",
            subscription_object(f"sub_{n}", f"cus_T{n:05d}", "US", [], status, 1_767_225_700 + n, 0, "K"),
            1_767_225_700 + n,
        )
        for n, status in enumerate(["active", "canceled", "past_due"])
    ]
    events.append(long_invoice_event("in_long", 23, 1_767_225_800))
    sandbox = StripeSandbox(events, faults=StripeFaults(rate_limit_per_s=0), clock=lambda: NOW)
    async with stripe_sandbox_server(sandbox) as server:
        headers = {"Authorization": f"Bearer {KEY}", "Stripe-Version": VERSION}
        async with httpx.AsyncClient(base_url=server.url, headers=headers) as client:
            yield sandbox, client


async def get(client: httpx.AsyncClient, path: str, **params: Any) -> tuple[int, dict[str, Any]]:
    r = await client.get(path, params=params)
    assert r.headers["Request-Id"].startswith("req_")
    return r.status_code, r.json()


async def test_pages_walk_newest_first_with_real_has_more(stand_in: Any) -> None:
    _, client = stand_in
    status, first = await get(client, "/v1/customers", limit=10)
    assert status == 200 and first["has_more"] and first["url"] == "/v1/customers"
    assert [c["id"] for c in first["data"]] == [f"cus_T{n:05d}" for n in range(24, 14, -1)]
    seen = [c["id"] for c in first["data"]]
    page = first
    while page["has_more"]:
        _, page = await get(client, "/v1/customers", limit=10, starting_after=page["data"][-1]["id"])
        seen += [c["id"] for c in page["data"]]
    assert seen == [f"cus_T{n:05d}" for n in range(24, -1, -1)]
    # ending_before: the page just newer than the cursor, still newest first
    _, back = await get(client, "/v1/customers", limit=3, ending_before="cus_T00010")
    assert [c["id"] for c in back["data"]] == ["cus_T00013", "cus_T00012", "cus_T00011"]
    assert back["has_more"]
    _, top = await get(client, "/v1/customers", limit=3, ending_before="cus_T00022")
    assert [c["id"] for c in top["data"]] == ["cus_T00024", "cus_T00023"] and not top["has_more"]


async def test_created_filters_and_subscription_status(stand_in: Any) -> None:
    _, client = stand_in
    _, window = await get(
        client, "/v1/customers", **{"created[gte]": 1_767_225_605, "created[lt]": 1_767_225_608}
    )
    assert [c["id"] for c in window["data"]] == ["cus_T00007", "cus_T00006", "cus_T00005"]
    _, default = await get(client, "/v1/subscriptions")
    assert sorted(s["status"] for s in default["data"]) == ["active", "past_due"]  # no canceled
    _, everything = await get(client, "/v1/subscriptions", status="all")
    assert len(everything["data"]) == 3
    _, canceled = await get(client, "/v1/subscriptions", status="canceled")
    assert [s["id"] for s in canceled["data"]] == ["sub_1"]


async def test_events_filters_and_the_30_day_window(stand_in: Any) -> None:
    sandbox, client = stand_in
    _, subs = await get(client, "/v1/events", type="customer.subscription.*")
    assert [e["id"] for e in subs["data"]] == ["evt_s2", "evt_s1", "evt_s0"]
    r = await client.get("/v1/events", params=[("types[0]", "invoice.finalized"), ("types[1]", "nope")])
    assert [e["id"] for e in r.json()["data"]] == ["evt_in_long_fin"]
    sandbox.failed_deliveries.add("evt_c3")
    _, failed = await get(client, "/v1/events", delivery_success="false")
    assert [e["id"] for e in failed["data"]] == ["evt_c3"]
    assert (await get(client, "/v1/events/evt_c3"))[0] == 200
    sandbox.clock = lambda: NOW + 31 * 86400
    _, gone = await get(client, "/v1/events")
    assert gone["data"] == []
    status, body = await get(client, "/v1/events/evt_c3")
    assert status == 404 and body["error"]["code"] == "resource_missing"


async def test_long_invoice_lines_are_paginated_when_asked(stand_in: Any) -> None:
    sandbox, client = stand_in
    _, whole = await get(client, "/v1/invoices/in_long")
    assert len(whole["lines"]["data"]) == 23 and not whole["lines"]["has_more"]
    sandbox.paginate_long_invoices = True
    _, cut = await get(client, "/v1/invoices/in_long")
    assert len(cut["lines"]["data"]) == 10 and cut["lines"]["has_more"]
    _, rest = await get(
        client, "/v1/invoices/in_long/lines", limit=100, starting_after=cut["lines"]["data"][-1]["id"]
    )
    assert len(rest["data"]) == 13 and not rest["has_more"]
    assert rest["url"] == "/v1/invoices/in_long/lines"


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/v1/customers", {"bogus": "1"}, 400, "parameter_unknown"),
        ("/v1/customers", {"limit": "101"}, 400, "parameter_invalid_integer"),
        ("/v1/customers", {"limit": "0"}, 400, "parameter_invalid_integer"),
        ("/v1/customers", {"starting_after": "cus_nope"}, 400, "resource_missing"),
        ("/v1/customers/cus_nope", {}, 404, "resource_missing"),
        ("/v1/invoice_payments", {"payment[payment_intent]": "pi_1"}, 400, "parameter_missing"),
        ("/v1/events", {"type": "a", "types[0]": "b"}, 400, None),
    ],
)
async def test_refusals_are_stripes(
    stand_in: Any, path: str, params: dict[str, str], status: int, code: str | None
) -> None:
    _, client = stand_in
    got, body = await get(client, path, **params)
    assert got == status
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"].get("code") == code


async def test_key_version_and_rate_are_checked(stand_in: Any) -> None:
    sandbox, client = stand_in
    r = await client.get("/v1/customers", headers={"Authorization": ""})
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
    r = await client.get("/v1/customers", headers={"Authorization": "Bearer sk_test_wrong_key_123"})
    assert r.status_code == 401 and "Invalid API Key" in r.json()["error"]["message"]
    assert "wrong_key" not in r.json()["error"]["message"]  # the key is masked
    r = await client.get("/v1/customers", headers={"Stripe-Version": "2025-03-31.basil"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_api_version"
    sandbox.faults = StripeFaults(rate_limit_per_s=5)
    statuses = [(await client.get("/v1/customers")).status_code for _ in range(8)]
    assert statuses[:5] == [200] * 5 and 429 in statuses[5:]
    limited = await client.get("/v1/customers")
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit"
    # the limit is per endpoint: another route still answers
    assert (await client.get("/v1/invoices")).status_code == 200


async def test_seeding_over_the_admin_route(stand_in: Any) -> None:
    _, client = stand_in
    r = await client.post("/admin/events", json=customer_events(27)[25:])
    assert r.json()["added"] == 2
    r = await client.post("/admin/events", json=customer_events(27)[25:])  # the same ids again
    assert r.json()["added"] == 0
    assert (await client.post("/admin/events", json={"events": [{"id": 1}]})).status_code == 400
    _, page = await get(client, "/v1/customers", limit=1)
    assert page["data"][0]["id"] == "cus_T00026"
