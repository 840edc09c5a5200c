"""The web views with two workers for real (faust-streaming #514 reports `table_route` trouble
with several): every customer's 360 from either worker, `/exceptions` gathered from both, the
trace of a simulated invoice from webhook to ERP, replay and resolve, the ops page in a headless
Chromium, and the 360's requests/s and p99 measured from a second process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from streams.mappings import EXAMPLE_MAPPINGS
from tests.browser import Chromium, chromium_path
from tests.conftest import ARTIFACTS
from tests.support import (
    REPO,
    Stack,
    Worker,
    erp_documents_of,
    finish_simulation,
    start_simulation,
    without_volatile,
)

TOKEN = "views-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STRIPE_SECRET = "whsec_views_test"
RELAY_SECRET = "relay_views_test"


@dataclass
class Deployment:
    stack: Stack
    workers: list[Worker]
    truth: dict[str, Any]
    uk_invoices: set[str]  # held: their tax code is not mapped

    def url(self, index: int) -> str:
        return self.workers[index].url

    @property
    def customers(self) -> list[str]:
        return [f"cust-crm-{c['crm_account_id']}" for c in self.truth["customers"]]


def get(url: str, path: str, timeout: float = 30.0, **params: str) -> httpx.Response:
    return httpx.get(f"{url}{path}", params=params, headers=AUTH, timeout=timeout)


def get_ok(url: str, path: str, timeout: float = 60.0, **params: str) -> dict[str, Any]:
    """GET until it answers 200 (a rebalance answers 503 for a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        r = get(url, path, **params)
        if r.status_code == 200 or time.monotonic() > deadline:
            assert r.status_code == 200, f"{path}: {r.status_code} {r.text[:500]}"
            body: dict[str, Any] = r.json()
            return body
        time.sleep(0.5)


def wait_until(what: str, check: Any, timeout: float = 120.0, pause: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, AssertionError, KeyError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(pause)
    raise AssertionError(f"{what}: still {last!r} after {timeout}s")


def settled(d: Deployment) -> bool:
    """Both workers hold partitions of every stage, and every partition is held."""
    r = get(d.url(0), "/pipeline")
    if r.status_code != 200:
        return False
    body = r.json()
    ready = [w for w in body["workers"] if w["ready"]]
    stages = body["stages"].values()
    return len(ready) == 2 and all(s["assigned"] == s["expected"] > 0 for s in stages)


def expected_postings(truth: dict[str, Any], held: set[str]) -> dict[tuple[str, str], int]:
    """What the ERP must hold: every document but the held invoices and what hangs on them."""
    invoice_of = {f"stripe-{p['payment_id']}": p["invoice_id"] for p in truth["payments"]}
    invoice_of |= {f"stripe-{m['credit_memo_id']}": m["invoice_id"] for m in truth["credit_memos"]}
    out = {}
    for (record_type, external_id), amount in erp_documents_of(truth).items():
        invoice = external_id.removeprefix("stripe-") if record_type == "invoice" else invoice_of[external_id]
        if invoice not in held:
            out[(record_type, external_id)] = amount
    return out


@pytest.fixture(scope="module")
def deployment(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("views")
    mappings = root / "mappings.toml"
    mappings.write_text(EXAMPLE_MAPPINGS.read_text().replace('txr_uk_vat20 = "UK-VAT-S"\n', ""))
    stack.extra_env.update(
        {
            "LEDGERFLOW_API_TOKEN": TOKEN,
            "LEDGERFLOW_STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
            "LEDGERFLOW_RELAY_SECRET": RELAY_SECRET,
            "LEDGERFLOW_MAPPINGS": str(mappings),
        }
    )
    workers = [stack.start_worker(), stack.start_worker()]
    d = Deployment(stack, workers, {}, set())
    wait_until("both workers hold every stage's partitions", lambda: settled(d), timeout=120)
    truth_path = root / "truth.json"
    args = ("--customers", "10", "--months", "2", "--seed", "11", "--via-webhooks", d.url(0))
    d.truth = finish_simulation(start_simulation(stack, truth_path, *args), truth_path)
    d.uk_invoices = {i["invoice_id"] for i in d.truth["invoices"] if i["currency"] == "GBP"}
    assert d.uk_invoices, "the scenario has UK invoices (their held exceptions are what the tests act on)"
    assert stack.erp is not None
    expected = expected_postings(d.truth, d.uk_invoices)
    view = stack.erp.wait_for(expected, timeout=240)
    assert set(expected) <= {(doc["record_type"], doc["external_id"]) for doc in view["documents"]}
    wait_until(
        "every held UK invoice is an open exception in the table",
        lambda: (
            get(d.url(1), "/exceptions", reason="missing_tax_code").json()["matched"] == len(d.uk_invoices)
        ),
    )
    yield d


def test_data_routes_want_the_token(deployment: Deployment) -> None:
    url = deployment.url(1)
    customer = deployment.customers[0]
    for path in (f"/customers/{customer}", "/exceptions", "/trace/x", "/pipeline", "/ui/exceptions"):
        bare = httpx.get(f"{url}{path}", timeout=30)
        assert bare.status_code == 401, (path, bare.status_code)
        wrong = httpx.get(f"{url}{path}", headers={"Authorization": "Bearer nope"}, timeout=30)
        assert wrong.status_code == 401, (path, wrong.status_code)
        assert bare.headers["WWW-Authenticate"].startswith("Bearer")
    assert httpx.get(f"{url}/customers/{customer}", timeout=30).json()["error"] == "unauthenticated"
    refused = httpx.post(f"{url}/exceptions/x/replay", timeout=30)
    assert refused.status_code == 401 and refused.json()["detail"]
    # Faust's own /table/{name}/{key} would serve rows without the token: it is off.
    assert httpx.get(f"{url}/table/customer-master/{customer}", timeout=30).status_code == 404
    # The ops page shell needs no token and holds no data.
    shell = httpx.get(f"{url}/", timeout=30)
    assert shell.status_code == 200 and "ledgerflow operations" in shell.text
    assert customer not in shell.text and "Content-Security-Policy" in shell.headers


def test_every_customer_360_is_the_same_from_both_workers(deployment: Deployment) -> None:
    truth = deployment.truth
    served_by = set()
    for c in truth["customers"]:
        customer = f"cust-crm-{c['crm_account_id']}"
        answers = [get_ok(deployment.url(i), f"/customers/{customer}") for i in (0, 1)]
        assert without_volatile(answers[0]) == without_volatile(answers[1]), customer
        body = answers[0]
        served_by.add(body["served_by"])
        ids = body["identities"]
        assert ids["crm_account_id"] == c["crm_account_id"]
        assert ids["stripe_customer_ids"] == [c["billing_customer_id"]]
        assert ids["erp_external_id"] == customer and ids["erp_internal_id"]
        assert body["master"]["name"] == c["name"] and body["master"]["country"] == c["country"]
        assert body["master"]["subsidiary"] == c["subsidiary"]
        invoices = {i["invoice_id"]: i for i in body["invoices"]}
        mine = {i["invoice_id"]: i for i in truth["invoices"] if i["crm_account_id"] == c["crm_account_id"]}
        assert set(invoices) == set(mine)
        for invoice_id, row in invoices.items():
            assert (
                row["total"] == mine[invoice_id]["total"] and row["currency"] == mine[invoice_id]["currency"]
            )
            if invoice_id in deployment.uk_invoices:
                assert row["erp_status"] == "held" and row["exception_ids"]
            else:
                assert row["erp_status"] == "posted" and row["document_number"] and row["erp_internal_id"]
        paid = {p["payment_id"] for p in truth["payments"] if p["invoice_id"] in mine}
        assert {p["payment_id"] for p in body["payments"]} <= paid
        contracts = {
            k["contract_id"]: (k["status"], k["amendment_number"])
            for k in truth["contracts"]
            if k["crm_account_id"] == c["crm_account_id"]
        }
        assert {
            k["contract_id"]: (k["status"], k["amendment_number"]) for k in body["contracts"]
        } == contracts
        posted_keys = {e["idempotency_key"] for e in body["ledger"]["entries"] if e["state"] == "posted"}
        assert {i["idempotency_key"] for i in invoices.values() if i["erp_status"] == "posted"} <= posted_keys
        held = {x["entity_id"] for x in body["open_exceptions"] if x["reason"] == "missing_tax_code"}
        assert held == set(mine) & deployment.uk_invoices
        # The parts the 360 is made of, each routed to its own owner.
        for part in ("invoices", "contracts", "ledger", "exceptions"):
            parts = [get_ok(deployment.url(i), f"/customers/{customer}/{part}") for i in (0, 1)]
            assert without_volatile(parts[0]) == without_volatile(parts[1]), (customer, part)
    # Both workers own customers: half the answers above were forwarded.
    assert served_by == {deployment.url(0), deployment.url(1)}, served_by
    unknown = get(deployment.url(1), "/customers/cust-crm-nobody")
    assert unknown.status_code == 404 and unknown.json()["found"] is False


def test_exceptions_are_gathered_from_both_workers_and_paged(deployment: Deployment) -> None:
    held = len(deployment.uk_invoices)
    body = get_ok(deployment.url(0), "/exceptions", reason="missing_tax_code", limit="500")
    assert body["complete"] is True and body["missing_partitions"] == []
    assert body["matched"] == held and len(body["items"]) == held
    assert {i["entity_id"] for i in body["items"]} == deployment.uk_invoices
    ages = [i["age_s"] for i in body["items"]]
    assert ages == sorted(ages, reverse=True) and all(a >= 0 for a in ages)
    assert body["by_reason"]["missing_tax_code"]["count"] == held
    # Each worker answers for its own partitions; together, all of them, each exception once.
    local = [get_ok(deployment.url(i), "/exceptions", local="1", reason="missing_tax_code") for i in (0, 1)]
    partitions = [set(a["partitions"]) for a in local]
    assert partitions[0].isdisjoint(partitions[1]) and partitions[0] | partitions[1] == set(range(4))
    assert sum(a["matched"] for a in local) == held
    assert all(a["partitions"] for a in local), "both workers hold exception partitions"
    # Filters: by customer, by age.
    customer = body["items"][0]["customer_id"]
    only = get_ok(deployment.url(1), "/exceptions", customer_id=customer)
    assert only["items"] and {i["customer_id"] for i in only["items"]} == {customer}
    assert get_ok(deployment.url(1), "/exceptions", min_age_s="86400")["matched"] == 0
    # Paging: a cursor walk and offsets both give the whole list in order.
    walked, cursor = [], None
    while True:
        params = {"reason": "missing_tax_code", "limit": "2", **({"cursor": cursor} if cursor else {})}
        page = get_ok(deployment.url(1), "/exceptions", **params)
        walked += [i["exception_id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert walked == [i["exception_id"] for i in body["items"]]
    second = get_ok(deployment.url(0), "/exceptions", reason="missing_tax_code", limit="2", offset="2")
    assert [i["exception_id"] for i in second["items"]] == walked[2:4]
    bad = get(deployment.url(0), "/exceptions", reason="no_such_reason")
    assert bad.status_code == 400 and "reason must be one of" in bad.json()["detail"]


def _erp_requests(deployment: Deployment, **params: str) -> list[dict[str, Any]]:
    assert deployment.stack.erp is not None
    r = httpx.get(
        f"{deployment.stack.erp.url}/admin/requests", params={"limit": "100000", **params}, timeout=30
    )
    return list(r.json()["requests"])


def test_a_trace_shows_every_hop_of_a_simulated_invoice(deployment: Deployment) -> None:
    invoice = next(i for i in deployment.truth["invoices"] if i["invoice_id"] not in deployment.uk_invoices)
    external_id = invoice["external_id"]
    call = next(r for r in _erp_requests(deployment) if external_id in r["path"] and r.get("correlation_id"))
    correlation = call["correlation_id"]
    body = get_ok(deployment.url(1), f"/trace/{correlation}", since="1h")
    hops = body["hops"]
    assert body["truncated"] is False and body["count"] == len(hops)
    topics = [hop["topic"] for hop in hops]
    # Webhook → source topic → canonical → command → the ERP's answer, in time order.
    assert topics[0] == "billing.changes" and hops[0]["matched_by"] == "header"
    for topic in ("ledgerflow.canonical", "erp.commands", "erp.results"):
        assert topic in topics, (topic, topics)
    assert topics.index("ledgerflow.canonical") < topics.index("erp.commands") < topics.index("erp.results")
    stamps = [hop["timestamp"] for hop in hops]
    assert stamps == sorted(stamps)
    command = next(
        h for h in hops if h["topic"] == "erp.commands" and h["summary"]["command"] == "post_invoice"
    )
    result = next(
        h for h in hops if h["topic"] == "erp.results" and h["summary"]["command"] == "post_invoice"
    )
    assert command["summary"]["idempotency_key"] == result["summary"]["idempotency_key"]
    assert result["summary"]["outcome"] == "posted" and result["summary"]["document_number"]
    assert result["causation_id"] == command["summary"]["idempotency_key"]
    canonical = next(h for h in hops if h["topic"] == "ledgerflow.canonical")
    assert canonical["summary"]["entity_id"] == invoice["invoice_id"]
    assert all(hop["causation_id"] for hop in hops)
    # The ERP call carried the same correlation id.
    assert _erp_requests(deployment, correlation_id=correlation)
    # Narrowed to the customer's partitions, the same hops.
    customer = f"cust-crm-{invoice['crm_account_id']}"
    narrowed = get_ok(deployment.url(0), f"/trace/{correlation}", since="1h", customer_id=customer)
    assert [(h["topic"], h["offset"]) for h in narrowed["hops"]] == [(h["topic"], h["offset"]) for h in hops]
    assert narrowed["scanned"] < body["scanned"]


def _held_exception(deployment: Deployment, index: int) -> dict[str, Any]:
    body = get_ok(deployment.url(0), "/exceptions", reason="missing_tax_code", limit="500")
    items = sorted(body["items"], key=lambda i: i["exception_id"])
    return dict(items[index % len(items)])


def test_replay_redrives_the_offending_message_and_resolve_closes(deployment: Deployment) -> None:
    exc = _held_exception(deployment, 0)
    xid = exc["exception_id"]
    r = httpx.post(f"{deployment.url(1)}/exceptions/{xid}/replay", headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["outcome"] == "replayed" and r.json()["replay_of"] == f"exception:{xid}"

    def redriven() -> bool:
        hops = get_ok(deployment.url(0), f"/trace/{exc['correlation_id']}", since="2h")["hops"]
        again = [h for h in hops if h["replay_of"] == f"exception:{xid}"]
        topics = {h["topic"] for h in again}
        return "ledgerflow.canonical" in topics and "ledgerflow.exceptions" in topics

    wait_until("the replayed message and the REPLAYED record are on the topics", redriven, timeout=60)
    # Stage 2 decided it again: still no tax code, so the exception is raised again (same id).
    later = wait_until(
        "the exception's state moved past the replay",
        lambda: [
            i
            for i in get_ok(deployment.url(1), "/exceptions", exception_id=xid, status="all")["items"]
            if i["last_seen"] > exc["last_seen"]
        ],
        timeout=60,
    )
    assert later[0]["status"] in ("open", "replayed")

    other = _held_exception(deployment, 1)
    oid = other["exception_id"]
    resolved = httpx.post(f"{deployment.url(0)}/exceptions/{oid}/resolve", headers=AUTH, timeout=60)
    assert resolved.status_code == 200 and resolved.json()["status"] == "resolved", resolved.text
    wait_until(
        "the resolved exception leaves the open list",
        lambda: oid not in {i["exception_id"] for i in get_ok(deployment.url(1), "/exceptions")["items"]},
        timeout=60,
    )
    closed = get_ok(deployment.url(1), "/exceptions", exception_id=oid, status="resolved")
    assert [i["exception_id"] for i in closed["items"]] == [oid]
    again = httpx.post(f"{deployment.url(1)}/exceptions/{oid}/replay", headers=AUTH, timeout=60)
    assert again.status_code == 409 and again.json()["error"] == "not_open"
    missing = httpx.post(f"{deployment.url(1)}/exceptions/no-such-id/resolve", headers=AUTH, timeout=60)
    assert missing.status_code == 404


@pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (make tools installs it)")
def test_the_ops_page_in_chromium(deployment: Deployment, tmp_path: Path) -> None:
    posted = next(i for i in deployment.truth["invoices"] if i["invoice_id"] not in deployment.uk_invoices)
    customer, posted_id = f"cust-crm-{posted['crm_account_id']}", posted["invoice_id"]
    screenshot = ARTIFACTS / "ops-page.png"

    async def drive() -> None:
        async with Chromium(tmp_path / "chromium") as page:
            await page.goto(f"{deployment.url(1)}/")
            assert "ledgerflow operations" in await page.evaluate("document.title")
            # Without a token the page asks for one and shows no data.
            assert await page.evaluate("document.getElementById('exceptions').innerHTML") == ""
            await page.evaluate(
                f"document.getElementById('token').value = {js(TOKEN)};"
                "document.getElementById('token-form').requestSubmit()"
            )
            await page.wait_for("document.querySelectorAll('#exceptions tr').length > 1")
            await page.wait_for("document.querySelector('#pipeline table.stages') !== null")
            stages = await page.evaluate("document.querySelector('#pipeline table.stages').innerText")
            assert "ingest" in stages and "sink" in stages
            reasons = await page.evaluate("document.querySelector('#exceptions table.by-reason').innerText")
            assert "missing_tax_code" in reasons
            # Search: the customer's 360, rendered by the worker that owns it.
            await page.evaluate(
                f"document.getElementById('customer-id').value = {js(customer)};"
                "document.getElementById('search-form').requestSubmit()"
            )
            found = js(f'#customer [data-customer="{customer}"][data-found]')
            await page.wait_for(f"document.querySelector({found}) !== null")
            shown = await page.evaluate("document.getElementById('customer').innerText")
            assert customer in shown and posted_id in shown and "posted" in shown
            assert (
                await page.evaluate("document.querySelector('#customer [data-found]').dataset.found") == "yes"
            )
            # Replay: the button of one held exception.
            target = await page.evaluate(
                "document.querySelector('#exceptions button[data-action=replay]').dataset.id"
            )
            button = js(f'#exceptions button[data-action="replay"][data-id="{target}"]')
            await page.evaluate(f"document.querySelector({button}).click()")
            outcome = await page.wait_for(
                "document.getElementById('action-result').dataset.outcome", timeout=60
            )
            assert outcome == "replayed", await page.evaluate(
                "document.getElementById('action-result').innerText"
            )
            await page.wait_for("document.querySelectorAll('#exceptions tr').length > 1")
            await page.screenshot(screenshot)

    asyncio.run(drive())
    assert screenshot.stat().st_size > 10_000
    print(f"\nops page screenshot: {screenshot.resolve()}")


def js(value: str) -> str:
    """A Python string as a JavaScript string literal."""
    return json.dumps(value)


def _load(url: str, ids: list[str], seconds: float = 5.0, concurrency: int = 8) -> dict[str, Any]:
    """The load, from a second process on loopback."""
    args = [sys.executable, "-m", "tests.load_views", "--url", url, "--token", TOKEN]
    args += ["--seconds", str(seconds), "--concurrency", str(concurrency)]
    for customer in ids:
        args += ["--id", customer]
    done = subprocess.run(
        args, cwd=REPO, capture_output=True, text=True, timeout=120, check=False, env=os.environ
    )
    assert done.returncode == 0, done.stderr
    import orjson

    result: dict[str, Any] = orjson.loads(done.stdout)
    assert result["failures"] == {} and result["requests"] > 0, result
    return result


def test_customer_360_throughput_local_forwarded_and_one_worker(deployment: Deployment) -> None:
    owners: dict[str, list[str]] = {}
    for customer in deployment.customers:
        owners.setdefault(get_ok(deployment.url(0), f"/customers/{customer}")["served_by"], []).append(
            customer
        )
    first, second = deployment.url(0), deployment.url(1)
    local = _load(first, owners[first])
    forwarded = _load(first, owners[second])
    # One worker: the second leaves; the first owns every partition, every request is local.
    deployment.workers[1].stop()
    wait_until(
        "the remaining worker holds every partition",
        lambda: all(
            s["assigned"] == s["expected"] and len(s["workers"]) == 1
            for s in get_ok(first, "/pipeline")["stages"].values()
        ),
        timeout=120,
    )
    for customer in deployment.customers:
        get_ok(first, f"/customers/{customer}")
    single = _load(first, deployment.customers)
    print("\ncustomer 360 from a second process on loopback, 8 connections, 5 s each:")
    for name, r in (
        ("two workers, local", local),
        ("two workers, forwarded", forwarded),
        ("one worker", single),
    ):
        print(f"  {name:24} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms")
