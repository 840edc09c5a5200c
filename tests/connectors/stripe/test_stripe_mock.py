"""Our requests as Stripe's OpenAPI spec wants them: StripeApi against stripe-mock (paths, params,
the pinned Stripe-Version under `-strict-version-check`). stripe-mock is stateless (one fixture
object per list), so it checks request shapes only; the stand-in checks behaviour."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.stripe.client import StripeApi, StripeApiError
from streams.cli.local_kafka import cache_root
from streams.settings import Settings

STRIPE_MOCK_VERSION = "v0.203.0"  # the Makefile's STRIPE_MOCK_VERSION


def find_stripe_mock() -> str | None:
    """LEDGERFLOW_STRIPE_MOCK, else what `make stripe-mock` put in the cache, else PATH's."""
    named = os.environ.get("LEDGERFLOW_STRIPE_MOCK")
    if named:
        return named
    cached = cache_root() / f"stripe-mock-{STRIPE_MOCK_VERSION}" / "stripe-mock"
    return str(cached) if cached.exists() else shutil.which("stripe-mock")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def stripe_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """stripe-mock on free loopback ports (HTTP and HTTPS both: it opens both), stopped after."""
    binary = find_stripe_mock()
    if binary is None:
        pytest.skip("stripe-mock is not installed (make stripe-mock)")
    http_port, https_port = _free_port(), _free_port()
    log = Path(tmp_path_factory.mktemp("stripe-mock")) / "stripe-mock.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                "-http-addr",
                f"127.0.0.1:{http_port}",
                "-https-addr",
                f"127.0.0.1:{https_port}",
                "-strict-version-check",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", http_port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"stripe-mock did not start: {log.read_text()[-2000:]}")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{http_port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def api(url: str, version: str | None = None) -> StripeApi:
    return StripeApi("sk_test_123", version or Settings().stripe_api_version, url, 1000)


@pytest.mark.parametrize(
    ("resource", "params"),
    [
        ("customers", {"created": {"gte": 1_700_000_000}}),
        ("subscriptions", {"status": "all", "created": {"gte": 1_700_000_000}}),
        ("invoices", {"created": {"gte": 1_700_000_000}}),
        ("invoice_payments", {"invoice": "in_1"}),
        (
            "invoice_payments",
            {"payment": {"type": "payment_intent", "payment_intent": "pi_1"}, "status": "paid"},
        ),
        ("credit_notes", {"created": {"gte": 1_700_000_000}}),
        ("events", {"created": {"gte": 1_700_000_000}, "types": ["invoice.paid", "customer.updated"]}),
        ("events", {"type": "invoice.*", "delivery_success": False}),
    ],
)
async def test_list_requests_are_accepted(stripe_mock: str, resource: str, params: dict[str, object]) -> None:
    async with api(stripe_mock) as client:
        page = await client.list_page(resource, params, starting_after=None)
        assert page["object"] == "list" and len(page["data"]) == 1


@pytest.mark.parametrize(
    ("kind", "object_id"),
    [
        ("customer", "cus_1"),
        ("subscription", "sub_1"),
        ("invoice", "in_1"),
        ("credit_note", "cn_1"),
        ("invoice_payment", "inpay_1"),
        ("payment_intent", "pi_1"),
        ("charge", "ch_1"),
        ("refund", "re_1"),
        ("dispute", "dp_1"),
    ],
)
async def test_retrieves_are_accepted(stripe_mock: str, kind: str, object_id: str) -> None:
    async with api(stripe_mock) as client:
        obj = await client.retrieve_object(kind, object_id)
        assert obj["object"] == kind and obj["id"] == object_id


async def test_invoice_lines_and_events_helpers(stripe_mock: str) -> None:
    async with api(stripe_mock) as client:
        lines = await client.invoice_lines("in_1", starting_after="il_1")
        assert len(lines) == 1 and lines[0]["object"] == "line_item"
        events = await client.events(1_700_000_000, 1_800_000_000, ["invoice.paid"])
        assert len(events) == 1 and events[0]["object"] == "event"


async def test_a_version_other_than_the_mocks_is_refused(stripe_mock: str) -> None:
    async with api(stripe_mock, "2025-03-31.basil") as client:
        with pytest.raises(StripeApiError) as refused:
            await client.list_page("customers")
        assert refused.value.status == 400
