"""A worker's whole log after a simulated history, against a faulty ERP: its lines are JSON with
their fields (a failed ERP call names its command, key, status and correlation id), and no
customer's name or e-mail, and no secret, is anywhere in it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from connectors.simulation import generate
from tests.support import Stack, erp_documents_of, finish_simulation, start_simulation

CUSTOMERS, MONTHS, FIRST = 6, 3, 900
WEBHOOK_SECRET = "whsec_logs_test_5ecret"
RELAY_SECRET = "relay-logs-test-5ecret"


def personal_data(value: Any, key: str = "") -> Iterator[str]:
    """Every name, e-mail, phone and street in the platforms' own payloads."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from personal_data(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from personal_data(v, key)
    elif isinstance(value, str) and len(value) >= 4:
        lowered = key.lower()
        if lowered in {"name", "email", "phone", "line1", "street", "billingstreet"} or lowered.endswith(
            ("email", "phone")
        ):
            yield value


def test_a_workers_log_names_its_fields_and_no_personal_data_or_secret(
    new_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = new_stack(
        extra_env={
            "LEDGERFLOW_LOG_FORMAT": "json",
            "LEDGERFLOW_ERP_TIMEOUT_S": "1.5",
            "LEDGERFLOW_ERP_RETRY_BASE_S": "0.05",
            "LEDGERFLOW_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "LEDGERFLOW_RELAY_SECRET": RELAY_SECRET,
        },
        erp_args=("--error-rate", "0.2", "--seed", "3"),
    )
    worker = stack.start_worker()
    truth_path = tmp_path / "truth.json"
    args = ("--customers", str(CUSTOMERS), "--months", str(MONTHS), "--first-customer", str(FIRST))
    truth = finish_simulation(start_simulation(stack, truth_path, *args), truth_path)
    assert stack.erp is not None
    expected = erp_documents_of(truth)
    view = stack.erp.wait_for(expected, timeout=240)
    assert {(d["record_type"], d["external_id"]) for d in view["documents"]} >= set(expected)
    worker.stop()
    log = worker.log_path.read_text(errors="replace")

    pii = set()
    for message in generate(CUSTOMERS, MONTHS, first_customer=FIRST).messages:
        pii |= set(personal_data(orjson.loads(message.value)))
    assert len(pii) >= 2 * CUSTOMERS  # at least a name and an e-mail each
    leaked = sorted(p for p in pii if p in log)
    assert leaked == [], leaked[:10]
    for secret in (stack.erp.token, WEBHOOK_SECRET, RELAY_SECRET):
        assert secret not in log

    lines = []
    for raw in log.splitlines():
        try:
            lines.append(orjson.loads(raw))
        except orjson.JSONDecodeError:
            continue  # Faust's start-up banner is printed, not logged
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    failed = [line for line in lines if line["message"] == "erp call failed"]
    writes = [line for line in failed if not line["url"].endswith("/suiteql")]
    assert writes, "the ERP failed a fifth of the calls: some failure was logged"
    for line in writes:  # a document's call names its command; a batch's number read, its kind
        assert {"command", "idempotency_key", "status", "code", "correlation_id"} <= set(line), line
        assert line["idempotency_key"].startswith(line["command"])
    assert all("command" in line for line in failed)
