"""The Stripe commands' options, and `ledgerflow stripe-sandbox` as a process."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import httpx
import orjson
import pytest

from connectors.stripe.sandbox import DEFAULT_KEY
from streams.cli.stripe import Duration, Since
from tests.connectors.stripe.stand_in import VERSION, customer_events

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("1h", 3600), ("2d", 172800)])
def test_overlap_durations(text: str, seconds: int) -> None:
    assert Duration().convert(text, None, None) == seconds


@pytest.mark.parametrize("text", ["1", "1w", "-1h", "h", ""])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(click.BadParameter):
        Duration().convert(text, None, None)


def test_since_is_a_date_or_an_instant_in_utc() -> None:
    assert Since().convert("2026-01-01", None, None) == 1_767_225_600
    assert Since().convert("2026-01-01T01:00:00+01:00", None, None) == 1_767_225_600
    with pytest.raises(click.BadParameter):
        Since().convert("last tuesday", None, None)


def test_backfill_without_a_key_says_which_variable(tmp_path: Path) -> None:
    env = {"LEDGERFLOW_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "streams", "backfill", "stripe"],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 1 and b"LEDGERFLOW_STRIPE_API_KEY" in done.stderr


def test_the_sandbox_command_serves_its_seed(tmp_path: Path) -> None:
    seed = tmp_path / "seed.json"
    seed.write_bytes(orjson.dumps(customer_events(3)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams", "stripe-sandbox", "--port", "0", "--seed", str(seed)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert "3 events" in line and VERSION in line, line
        found = re.search(r" on (http://[\d.]+:\d+)", line)
        assert found is not None, line
        base = found[1]
        r = httpx.get(f"{base}/v1/customers", headers={"Authorization": f"Bearer {DEFAULT_KEY}"}, timeout=10)
        assert r.status_code == 200 and r.json()["data"][0]["id"] == "cus_T00002"
    finally:
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == 0
