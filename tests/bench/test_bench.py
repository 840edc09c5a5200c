"""`ledgerflow bench --quick` against the session broker: every contender handles the whole
input and the JSON says so. Behaviour, not speed: the numbers of a tiny run mean little."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.topic_names import STRIPE_TOPICS
from tests.support import REPO

pytestmark = pytest.mark.bench


def run_bench(
    kafka_bootstrap: str, tmp_path: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`ledgerflow bench ARGS` on the session's broker, and the JSON it wrote."""
    results_dir = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLOW_")}
    env["LEDGERFLOW_KAFKA_BOOTSTRAP"] = kafka_bootstrap
    out = subprocess.run(
        [sys.executable, "-m", "streams", "bench", *args, "--results-dir", str(results_dir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    [path] = results_dir.glob("*.json")
    results: dict[str, Any] = orjson.loads(path.read_bytes())
    return out, results


def test_quick_bench_measures_every_contender_on_the_whole_input(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    out, results = run_bench(kafka_bootstrap, tmp_path, "--quick")
    given = results["input"]
    stripe = sum(given["by_topic"].get(t, 0) for t in STRIPE_TOPICS)
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


def test_quick_erp_bound_bench_measures_each_concurrency_limit(kafka_bootstrap: str, tmp_path: Path) -> None:
    out, results = run_bench(kafka_bootstrap, tmp_path, "--erp-bound", "--quick")
    assert results["contenders"] == {}  # this mode only
    erp_bound = results["erp_bound"]
    assert set(erp_bound["runs"]) == {"5", "10"}
    expected = results["input"]["documents"] + results["input"]["customers"]
    assert erp_bound["documents_expected"] == expected
    for n, run in erp_bound["runs"].items():
        assert run["concurrency_limit"] == run["erp_concurrency"] == int(n)
        # Every document the scenario implies was confirmed, none refused by the ERP.
        assert run["expected_confirmed"] == expected, (n, run["refused_codes"])
        assert run["documents_refused"] == 0, (n, run["refused_by_command"], run["refused_codes"])
        assert run["documents"] >= expected and run["seconds"] > 0
        assert math.isfinite(run["calls_per_document"]) and run["calls_per_document"] >= 1
        assert 0 < run["share_of_bound"] < 1.5
        assert run["bound_per_s"] == int(n) / (erp_bound["erp_latency_ms"] / 1000)
        # The sandbox's log was followed to the end: every call counted, by kind.
        assert run["log_missed"] == 0 and run["log_uncounted"] == 0
        assert sum(run["calls_by_kind"].values()) == run["calls"]
        assert run["calls_by_kind"]["PUT record"] >= run["documents_confirmed"]
        assert run["refused"] == sum(run["refused_by_kind"].values())
    assert "ERP-bound" in out.stdout and "calls/doc" in out.stdout
