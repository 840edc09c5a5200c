"""The sink against the sandbox ERP over real HTTP (design §1, issue #5): exactly one document per
idempotency key under injected faults in both API shapes, Retry-After, the circuit breaker, one
failing customer not holding the others back, and a mapping fix replayed into one posting."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from streams.cli.processes import wait_for_log
from streams.mappings import EXAMPLE_MAPPINGS
from tests.support import (
    BUSINESS_CENTRAL_ENV,
    REPO,
    ErpSandbox,
    Stack,
    assert_books_balance,
    assert_erp_holds_exactly,
    consume_until,
    erp_documents_of,
    finish_simulation,
    ledgerflow_names,
    start_simulation,
)

FAULTS = (
    *("--error-rate", "0.1", "--timeout-rate", "0.05", "--rate-limit-rate", "0.05"),
    *("--hang-s", "2", "--retry-after-s", "0.2", "--seed", "5"),
)
"""20% of ERP calls fail: 10% 500s, 5% committed-then-timed-out writes, 5% 429s."""
FAST_RETRIES = {
    "LEDGERFLOW_ERP_TIMEOUT_S": "1",
    "LEDGERFLOW_ERP_RETRY_BASE_S": "0.05",
    "LEDGERFLOW_ERP_RETRY_MAX_S": "20",
    "LEDGERFLOW_ERP_MAX_ATTEMPTS": "20",
    "LEDGERFLOW_ERP_PARK_RETRY_S": "3",
}
NewStack = Callable[..., Stack]


def simulated(
    stack: Stack, truth: Path, customers: int, months: int, seed: int, first: int = 0, *more: str
) -> subprocess.Popen[bytes]:
    args = ("--customers", str(customers), "--months", str(months), "--seed", str(seed))
    args += ("--first-customer", str(first), *more)
    return start_simulation(stack, truth, *args)


def requests_log(erp: ErpSandbox) -> list[dict[str, Any]]:
    body = httpx.get(f"{erp.url}/admin/requests", params={"limit": "100000"}, timeout=30).json()
    return list(body["requests"])


def exceptions_of(stack: Stack, timeout: float = 5.0) -> list[dict[str, Any]]:
    topic = stack.topic("ledgerflow.exceptions")
    found = asyncio.run(consume_until(stack.bootstrap, [topic], lambda f: False, timeout=timeout))
    return [orjson.loads(v) for _, v, _ in found[topic]]


@pytest.mark.parametrize("mode", ["netsuite", "business-central"])
def test_every_document_reaches_the_erp_once_despite_20_percent_faults(
    new_stack: NewStack, tmp_path: Path, mode: str
) -> None:
    env = {**FAST_RETRIES, "LEDGERFLOW_ERP_MODE": mode}
    if mode == "business-central":
        env |= BUSINESS_CENTRAL_ENV
    stack = new_stack(extra_env=env, erp_args=FAULTS)
    stack.start_worker()
    started = time.monotonic()
    simulate = simulated(stack, tmp_path / "truth.json", 30, 4, 7)
    truth = finish_simulation(simulate, tmp_path / "truth.json")
    expected = erp_documents_of(truth)
    assert stack.erp is not None
    if mode == "business-central":
        customer_ids = [("customer", f"cust-crm-{c['crm_account_id']}") for c in truth["customers"]]
        stack.erp.names = ledgerflow_names([*expected, *customer_ids])
    view = stack.erp.wait_for(expected, timeout=300)
    elapsed = time.monotonic() - started
    assert_erp_holds_exactly(view, expected)
    customers = {d["external_id"] for d in view["documents"] if d["record_type"] == "customer"}
    assert customers == {f"cust-crm-{c['crm_account_id']}" for c in truth["customers"]}
    log = requests_log(stack.erp)
    faults = Counter(r["fault"] for r in log if r.get("fault"))
    assert faults["timeout"] > 0 and faults["error"] > 0 and faults["rate_limit"] > 0
    if mode == "business-central":
        # The sink's calls went as operations of shared `$batch` requests, many customers' in one.
        assert all(r["path"].endswith("/$batch") for r in log)
        assert max(r.get("operations", 0) for r in log) > 10
    # In order per customer: a payment or credit memo before its invoice, or an invoice before
    # its customer, would have been refused by the sandbox (INVALID_KEY_OR_REF).
    reasons = Counter(e["reason"] for e in exceptions_of(stack))
    assert reasons["erp_rejected"] == 0, reasons
    # What the ERP confirmed goes back to the CRM accounts (crm.writeback).
    topic = stack.topic("crm.writeback")
    accounts = {c["crm_account_id"] for c in truth["customers"]}
    found = asyncio.run(consume_until(stack.bootstrap, [topic], lambda f: False, timeout=5))
    written = {orjson.loads(v)["crm_account_id"] for _, v, _ in found[topic]}
    assert written == accounts
    print(
        f"\n{mode}: {len(expected)} documents + {len(customers)} customers, each once, in {elapsed:.1f}s "
        f"with ERP faults {dict(faults)}"
    )


def assert_every_payment_applied_once(stack: Stack, truth: dict[str, Any]) -> None:
    """Every document of the history once in the ERP, books balanced, and each payment applied
    to exactly one invoice."""
    expected = erp_documents_of(truth)
    assert stack.erp is not None
    view = stack.erp.wait_for(expected, timeout=180)
    assert_erp_holds_exactly(view, expected)
    assert_books_balance(view)
    payments = [d for d in view["documents"] if d["record_type"] == "customerPayment"]
    assert len(payments) == len(truth["payments"])
    assert all(len(d["books"]["applied_to"]) == 1 for d in payments)


def test_an_acacia_history_applies_every_payment_too(new_stack: NewStack, tmp_path: Path) -> None:
    """The same history in Stripe's 2024-09-30.acacia shapes (the PaymentIntent names its invoice,
    no invoice_payment Events) ends in the ERP as the current version's does: every payment once,
    applied to its invoice."""
    stack = new_stack(extra_env=FAST_RETRIES)
    stack.start_worker()
    version = ("--stripe-api-version", "2024-09-30.acacia")
    truth = finish_simulation(
        simulated(stack, tmp_path / "t.json", 12, 3, 11, 0, *version), tmp_path / "t.json"
    )
    assert truth["stripe_api_version"] == "2024-09-30.acacia" and truth["payments"]
    assert_every_payment_applied_once(stack, truth)


def test_a_2025_04_30_basil_history_links_its_payments_through_the_stripe_api(
    new_stack: NewStack, tmp_path: Path
) -> None:
    """At 2025-03-31/04-30.basil a PaymentIntent names no invoice and no invoice_payment Event
    exists: stage 1 reads each paid invoice's invoice payments from Stripe (the stand-in, over
    HTTP, holding the account's objects), and every payment ends in the ERP once, applied."""
    from connectors.simulation import generate
    from connectors.stripe.sandbox import StripeFaults, StripeSandbox
    from streams.topic_names import STRIPE_TOPICS
    from tests.connectors.stripe.stand_in import KEY, VERSION, serving

    version = "2025-04-30.basil"
    args = (12, 3, 11, 0)  # customers, months, seed, first customer: the simulation below
    scenario = generate(*args[:3], first_customer=args[3], stripe_api_version=version)
    events = [orjson.loads(m.value) for m in scenario.messages if m.topic in STRIPE_TOPICS]
    assert not any(e["type"].startswith("invoice_payment.") for e in events) and scenario.stripe_objects
    # Stripe answers at the version the client pins (the current one), whatever the Events' own.
    sandbox = StripeSandbox(events, api_version=VERSION, faults=StripeFaults(rate_limit_per_s=0))
    for obj in scenario.stripe_objects:
        sandbox.hold(obj)
    with serving(sandbox) as url:
        env = {**FAST_RETRIES, "LEDGERFLOW_STRIPE_API_KEY": KEY, "LEDGERFLOW_STRIPE_API_BASE": url}
        stack = new_stack(extra_env=env)
        stack.start_worker()
        truth = finish_simulation(
            simulated(stack, tmp_path / "t.json", *args, "--stripe-api-version", version), tmp_path / "t.json"
        )
        assert truth["stripe_api_version"] == version and truth["payments"]
        assert_every_payment_applied_once(stack, truth)
    asked = [r for r in sandbox.requests if r["path"] == "/v1/invoice_payments"]
    assert len(asked) >= len(truth["payments"])  # one read per paid invoice (redeliveries read again)


def test_retry_after_breaker_and_one_failing_customer(new_stack: NewStack, tmp_path: Path) -> None:
    env = {**FAST_RETRIES, "LEDGERFLOW_ERP_BREAKER_FAILURES": "3", "LEDGERFLOW_ERP_BREAKER_OPEN_S": "1"}
    env["LEDGERFLOW_ERP_RETRY_MAX_S"] = "4"
    stack = new_stack(extra_env=env)
    erp = stack.start_erp()
    worker = stack.start_worker()

    # Retry-After: the first API call gets 429 with Retry-After: 2; the retry waits that long.
    erp.admin("POST", "faults", burst_429=1, retry_after_s=2)
    truth = finish_simulation(simulated(stack, tmp_path / "t1.json", 1, 1, 1), tmp_path / "t1.json")
    erp.wait_for(erp_documents_of(truth), timeout=60)
    log = requests_log(erp)
    [limited] = [r for r in log if r.get("fault") == "rate_limit"]
    retry = next(r for r in log if r["seq"] > limited["seq"] and r["path"] == limited["path"])
    waited = (datetime.fromisoformat(retry["at"]) - datetime.fromisoformat(limited["at"])).total_seconds()
    assert waited >= 2.0, waited

    # The breaker: the ERP goes down, the sink stops calling it after 3 failures and probes;
    # when it is back, the probe closes the breaker and everything is delivered.
    erp.admin("POST", "faults", maintenance=True, retry_after_s=0)
    offset = worker.log_path.stat().st_size
    simulate = simulated(stack, tmp_path / "t2.json", 4, 1, 2, first=10)
    assert worker.proc is not None
    wait_for_log(worker.log_path, "erp circuit opened", worker.proc, 60, offset)
    calls_before = len(requests_log(erp))
    time.sleep(3)
    calls_while_open = len(requests_log(erp)) - calls_before
    erp.admin("POST", "faults", maintenance=False)
    wait_for_log(worker.log_path, "erp circuit closed", worker.proc, 60, offset)
    truth2 = finish_simulation(simulate, tmp_path / "t2.json")
    expected = erp_documents_of(truth) | erp_documents_of(truth2)  # both runs' documents, once each
    assert_erp_holds_exactly(erp.wait_for(expected, 120), expected)
    assert calls_while_open <= 12, calls_while_open  # a probe per second at most, not a storm

    # One customer's calls all fail: its lane parks; the other customers are not held back.
    sick = "cust-crm-001SIM000000020"
    erp.admin("POST", "reset")
    erp.admin("POST", "faults", error_rate=1.0, scope=sick)
    started = time.monotonic()
    simulate = simulated(stack, tmp_path / "t3.json", 6, 2, 3, first=20)
    truth = finish_simulation(simulate, tmp_path / "t3.json")
    expected = erp_documents_of(truth)
    healthy = {k: v for k, v in expected.items() if _customer_of(truth, k) != sick}
    view = erp.wait_for(healthy, timeout=120)
    others_done = time.monotonic() - started
    held = [d for d in view["documents"] if _customer_of(truth, (d["record_type"], d["external_id"])) == sick]
    assert held == [] and {(d["record_type"], d["external_id"]) for d in view["documents"]} >= set(healthy)
    erp.admin("POST", "faults", error_rate=0.0, scope=None)
    assert_erp_holds_exactly(erp.wait_for(expected, timeout=120), expected)
    recovered = time.monotonic() - started
    print(
        f"\nRetry-After 2 s honoured (waited {waited:.2f}s); breaker open: {calls_while_open} calls in 3 s; "
        f"one failing customer: the other 5 done in {others_done:.1f}s, the failing one drained in "
        f"{recovered:.1f}s once the ERP took it"
    )


def _customer_of(truth: dict[str, Any], key: tuple[str, str]) -> str:
    """The canonical customer a truth document (record type, external id) belongs to."""
    account = {i["external_id"]: i["crm_account_id"] for i in truth["invoices"]}
    invoice_of = {f"stripe-{p['payment_id']}": p["invoice_id"] for p in truth["payments"]}
    invoice_of |= {f"stripe-{m['credit_memo_id']}": m["invoice_id"] for m in truth["credit_memos"]}
    external = key[1] if key[0] == "invoice" else f"stripe-{invoice_of.get(key[1], '')}"
    return f"cust-crm-{account.get(external, '')}"


def test_a_mapping_error_is_held_then_posted_once_after_the_fix_and_a_replay(
    new_stack: NewStack, tmp_path: Path
) -> None:
    broken = tmp_path / "mappings.toml"
    original = EXAMPLE_MAPPINGS.read_text()
    broken.write_text(original.replace('txr_uk_vat20 = "UK-VAT-S"\n', ""))  # UK VAT has no tax code
    stack = new_stack(extra_env={**FAST_RETRIES, "LEDGERFLOW_MAPPINGS": str(broken)})
    worker = stack.start_worker()
    truth = finish_simulation(simulated(stack, tmp_path / "t.json", 4, 1, 4), tmp_path / "t.json")
    expected = erp_documents_of(truth)
    uk = {k for k in expected if k[0] == "invoice" and _currency(truth, k[1]) == "GBP"}
    assert uk, "the scenario has a UK invoice"
    assert stack.erp is not None
    stack.erp.wait_for({k: v for k, v in expected.items() if k[0] == "invoice" and k not in uk}, 120)
    reasons = Counter(e["reason"] for e in exceptions_of(stack))
    assert reasons["missing_tax_code"] >= len(uk)

    # The fix: the tax code is mapped again; the worker restarts on it; the exceptions are replayed.
    broken.write_text(original)
    worker.stop()
    stack.start_worker_again(worker)
    replay = subprocess.run(
        [sys.executable, "-m", "streams", "replay", "exceptions", "--reason", "missing_tax_code"],
        cwd=REPO,
        env=stack.env(0),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert_erp_holds_exactly(stack.erp.wait_for(expected, 120), expected)


def _currency(truth: dict[str, Any], external_id: str) -> str:
    return next(i["currency"] for i in truth["invoices"] if i["external_id"] == external_id)
