"""`ledgerflow bench --quick` against the session broker: every contender handles the whole
input and the JSON says so. Behaviour, not speed: the numbers of a tiny run mean little."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.support import REPO

pytestmark = pytest.mark.bench


def test_quick_bench_measures_every_contender_on_the_whole_input(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    results_dir = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLOW_")}
    env["LEDGERFLOW_KAFKA_BOOTSTRAP"] = kafka_bootstrap
    out = subprocess.run(
        [sys.executable, "-m", "streams", "bench", "--quick", "--results-dir", str(results_dir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    [path] = results_dir.glob("*.json")
    results = orjson.loads(path.read_bytes())
    given = results["input"]
    stripe = given["by_topic"]["billing.changes"] + given["by_topic"]["payments.changes"]
    contenders = results["contenders"]
    assert set(contenders) == {"ledgerflow", "faust", "quix"}
    expected_events = {"ledgerflow": given["messages"], "faust": stripe, "quix": stripe}
    for name, c in contenders.items():
        assert c["events"] == expected_events[name], name
        assert c["events_per_s"] > 0 and c["seconds"] > 0, name
        assert c["peak_rss_mb"] > 0, name
        assert name in out.stdout

    ours = contenders["ledgerflow"]
    assert ours["documents_confirmed"] == given["documents"]
    assert ours["customers_confirmed"] == given["customers"]
    for run in (ours, ours["paced"]):
        for stage in ("source_to_command", "ready_to_command", "command_to_confirmed", "source_to_confirmed"):
            stats = run["latency_ms"][stage]
            assert stats["count"] > 0, stage
            assert 0 <= stats["p50"] <= stats["p95"] <= stats["p99"] <= stats["max"], stage
    assert ours["paced"]["events"] == given["messages"] and ours["paced"]["produced_per_s"] > 0
    assert contenders["faust"]["outputs"] == stripe  # forwarded each message once
    assert contenders["quix"]["outputs"] == given["invoices"]  # one command per invoice

    assert set(results["ratios"]) == {"ledgerflow_to_faust", "ledgerflow_to_quix"}
    assert all(r > 0 for r in results["ratios"].values())
    assert results["machine"]["cpus"] and results["machine"]["python"]
    assert "events/s ratios" in out.stdout
