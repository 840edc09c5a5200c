"""What a restarted worker reads back into its RocksDB tables (streams.app, agents.outbox).

After a clean stop the stores are kept and the changelog offset each store persisted is where
recovery starts: nothing is replayed. After `kill -9` rows may be in RocksDB that never reached
their changelog, so the stores are dropped and every changelog is replayed from the start.
Either way the tables hold the same state as before."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.support import (
    Stack,
    Worker,
    erp_documents_of,
    finish_simulation,
    start_simulation,
    without_volatile,
)

TOKEN = "restart-test-token"
HIGHWATER = "Highwater for active changelog partitions"
STARTS_AT = "active offsets at start of reading"
LOG_LINE = re.compile(r"^\d{4}-\d{2}-\d{2}T")  # streams/logs.py's text lines start with their UTC time


def recovery_table(log: str, title: str) -> dict[tuple[str, int], int]:
    """One of the tables Faust's recovery logs: (changelog, partition) → offset (〃 = the topic
    of the row above)."""
    rows: dict[tuple[str, int], int] = {}
    topic = ""
    for line in log[log.index(title) :].splitlines()[1:]:
        if LOG_LINE.match(line):  # the next log line
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1].isdigit():
            topic = topic if cells[0] == "〃" else cells[0]
            rows[topic, int(cells[1])] = int(cells[2])
    return rows


def recovery(worker: Worker) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]]:
    """This start's (highwater, reading starts at) per active changelog partition."""
    log = worker.log_path.read_bytes()[worker.log_offset :].decode(errors="replace")
    return recovery_table(log, HIGHWATER), recovery_table(log, STARTS_AT)


def invoices_of(worker: Worker, customers: list[str]) -> dict[str, Any]:
    base = worker.url
    auth = {"Authorization": f"Bearer {TOKEN}"}
    views = {}
    for customer in customers:
        r = httpx.get(f"{base}/customers/{customer}/invoices", headers=auth, timeout=10)
        assert r.status_code == 200, r.text
        views[customer] = without_volatile(r.json())
    return views


def test_a_clean_restart_replays_nothing_and_a_kill_9_replays_everything(
    new_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = new_stack(extra_env={"LEDGERFLOW_API_TOKEN": TOKEN})
    worker = stack.start_worker()
    truth_path = tmp_path / "truth.json"
    args = ("--customers", "20", "--months", "3", "--seed", "11")
    truth = finish_simulation(start_simulation(stack, truth_path, *args), truth_path)
    assert stack.erp is not None
    stack.erp.wait_for(erp_documents_of(truth), timeout=120)
    customers = [f"cust-crm-{c['crm_account_id']}" for c in truth["customers"]]
    before = invoices_of(worker, customers)
    assert sum(len(v["invoices"]) for v in before.values()) == len(truth["invoices"])

    worker.stop()
    clean = stack.start_worker_again(worker)
    highwater, starts_at = recovery(clean)
    written = {tp: offset for tp, offset in highwater.items() if offset >= 0}
    assert len(written) >= 20, highwater  # the tables had state to keep
    assert starts_at == highwater, "a clean restart replayed changelog records"
    assert invoices_of(clean, customers) == before

    clean.kill()
    killed = stack.start_worker_again(clean)
    highwater, starts_at = recovery(killed)
    assert highwater.keys() == starts_at.keys()
    assert all(highwater[tp] >= offset for tp, offset in written.items()), (written, highwater)
    assert set(starts_at.values()) == {-1}, "after kill -9 every changelog is replayed from the start"
    assert invoices_of(killed, customers) == before
