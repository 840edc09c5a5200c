"""The `ledgerflow` command as a user runs it."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from streams.cli.local_kafka import LocalKafka, LocalKafkaError, ensure_jars
from tests.support import REPO, env_vars


def _run(
    *args: str, cwd: Path = REPO, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_lists_ledgerflow_commands() -> None:
    out = _run("--help")
    assert out.returncode == 0, out.stderr
    for command in ("worker", "dev", "kafka", "schemas", "simulate", "replay", "erp-sandbox"):
        assert f"  {command} " in out.stdout


def test_worker_help_names_its_options() -> None:
    out = _run("worker", "--help")
    assert out.returncode == 0, out.stderr
    assert "--web-port" in out.stdout and "--web-host" in out.stdout


def test_missing_kafka_version_fails_with_a_message_naming_maven(tmp_path: Path) -> None:
    with (
        env_vars(LEDGERFLOW_CACHE_DIR=str(tmp_path)),
        pytest.raises(LocalKafkaError, match="Maven could not resolve"),
    ):
        ensure_jars("0.0.404")


@pytest.mark.integration
def test_local_broker_stops_cleanly_and_restarts_on_its_data(tmp_path: Path) -> None:
    broker = LocalKafka(data_dir=tmp_path / "k").start()
    port = broker.port
    try:
        broker.restart()
        assert broker.port == port and broker.process is not None and broker.process.poll() is None
    finally:
        broker.stop()
    assert broker.process is None


def test_dev_runs_the_demo_scenario_end_to_end(kafka_bootstrap: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLOW_")}
    env.update(
        {
            "LEDGERFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "LEDGERFLOW_TOPIC_PREFIX": "devtest.",
            "LEDGERFLOW_APP_ID": "lf-devtest",
            "LEDGERFLOW_PARTITIONS": "4",
        }
    )
    out = _run("dev", "--events", "40", "--no-keep-running", cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "post_invoice         40 (40 distinct keys)" in out.stdout
    assert "upsert_customer" in out.stdout
    assert "arithmetic_mismatch  1" in out.stdout and "currency_not_enabled 1" in out.stdout
    assert "not_json             1" in out.stdout
    assert "invoice              40" in out.stdout and "0 duplicates" in out.stdout  # in the sandbox ERP
    # Against the NetSuite stand-in, its ids checked first, every call signed with TBA (the
    # worker has no bearer token), and no signature refused.
    assert "NetSuite stand-in (account 1234567_SB1)" in out.stdout
    assert re.search(r"erp check \S+ \(http://127\.0\.0\.1:\d+\): \d+ id\(s\) checked, all ok", out.stdout)
    assert "refused a TBA signature" not in (tmp_path / ".ledgerflow-dev" / "erp-sandbox.log").read_text()


def test_a_worker_runs_only_the_stages_it_is_given() -> None:
    def agents_with(stages: str) -> subprocess.CompletedProcess[str]:
        code = "from streams.app import app; app.discover(); print(app.conf.id); print(sorted(app.agents))"
        env = {**os.environ, "LEDGERFLOW_STAGES": stages}
        return subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=False
        )

    sink = agents_with("sink")
    assert sink.stdout.strip().splitlines()[-2] == "ledgerflow-sink"  # a consumer group of its own
    assert ast.literal_eval(sink.stdout.strip().splitlines()[-1]) == [
        "agents.sink.deliver_erp_commands",
        "agents.writeback.write_back_to_crm",
    ]
    bad = agents_with("ingest,bogus")
    assert bad.returncode != 0 and "stages" in bad.stderr


@pytest.mark.parametrize(("chosen", "loop_module"), [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_every_ledgerflow_process_runs_the_event_loop_the_settings_name(
    chosen: str, loop_module: str
) -> None:
    code = (
        "from streams.__main__ import use_event_loop\n"
        "from streams.settings import settings\n"
        "use_event_loop(settings.event_loop)\n"
        "from streams.app import app\n"
        "print(type(app.loop).__module__)\n"
    )
    env = {**os.environ, "LEDGERFLOW_EVENT_LOOP": chosen}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().split(".")[0] == loop_module
