"""Shared by the Pub/Sub chaos run and the subscriber's throughput measure: the stand-ins in this
test's loop, `ledgerflow salesforce-subscribe` as a child process, and the exactly-once check."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from connectors.salesforce import pubsub_sandbox as ps
from connectors.salesforce.sandbox import SandboxServer
from streams.kafka_io import Record, read_topics
from streams.settings import Settings
from streams.topic_names import CRM_CHANGES
from tests.support import REPO


@dataclass
class StandIns:
    crm: SandboxServer
    bus: ps.PubSubSandbox
    server: ps.PubSubServer


@contextlib.asynccontextmanager
async def stand_ins(keepalive_s: float = 1.0) -> AsyncIterator[StandIns]:
    async with SandboxServer() as crm:
        bus = ps.PubSubSandbox(
            token_valid=crm.sandbox.token_valid,
            revoke_tokens=crm.sandbox.revoke_tokens,
            keepalive_s=keepalive_s,
        )
        async with ps.PubSubServer(bus) as server:
            yield StandIns(crm, bus, server)


def subscriber_env(org: StandIns, kafka_bootstrap: str) -> dict[str, str]:
    run = uuid.uuid4().hex[:8]
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLOW_")},
        "LEDGERFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "LEDGERFLOW_TOPIC_PREFIX": f"sfchaos-{run}-",
        "LEDGERFLOW_APP_ID": f"sfchaos-{run}",
        "LEDGERFLOW_PARTITIONS": "3",
        "LEDGERFLOW_SALESFORCE_PUBSUB_ENDPOINT": org.server.endpoint,
        "LEDGERFLOW_SALESFORCE_PUBSUB_INSECURE": "true",
        "LEDGERFLOW_SALESFORCE_PUBSUB_REPLAY_PRESET": "EARLIEST",
        "LEDGERFLOW_SALESFORCE_LOGIN_URL": org.crm.url,
        "LEDGERFLOW_CRM_CLIENT_ID": "ledgerflow",
        "LEDGERFLOW_CRM_CLIENT_SECRET": "sandbox-crm-secret",
        "LEDGERFLOW_LOG_FORMAT": "text",
    }


def settings_of(env: dict[str, str]) -> Settings:
    return Settings(
        kafka_bootstrap=env["LEDGERFLOW_KAFKA_BOOTSTRAP"],
        topic_prefix=env["LEDGERFLOW_TOPIC_PREFIX"],
        app_id=env["LEDGERFLOW_APP_ID"],
    )


class SubscriberProcess:
    """`ledgerflow salesforce-subscribe` in its own process group, logging to `log_path`."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams", "salesforce-subscribe"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
            )
        self.starts += 1

    def kill(self) -> None:
        """kill -9: no shutdown, an open transaction left behind."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    async def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, waiting without blocking this loop (the stand-ins answer in it)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while proc.poll() is None and loop.time() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        return proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


async def committed_changes(s: Settings, count: int, timeout: float) -> list[Record]:
    topic = s.topic(CRM_CHANGES)
    found = await read_topics(s.bootstrap, [topic], lambda f: len(f[topic]) >= count, timeout)
    return found[topic]


def exactly_once_report(records: list[Record], published: int) -> dict[str, int]:
    """Counts of what the exactly-once check looks at (all zero but `records` when it holds)."""
    replay_ids = Counter(h["sf-replay-id"] for _, _, h in records)
    per_record: dict[str, list[int]] = defaultdict(list)
    mis_keyed = 0
    for key, value, headers in records:
        header = orjson.loads(value or b"")["payload"]["ChangeEventHeader"]
        mis_keyed += key != header["recordIds"][0]
        per_record[str(key)].append(int(headers["sf-replay-id"], 16))
    return {
        "records": len(records),
        "duplicates": sum(n - 1 for n in replay_ids.values() if n > 1),
        "missing": published - len(replay_ids),
        "mis_keyed": mis_keyed,
        "out_of_order_records": sum(1 for r in per_record.values() if r != sorted(r)),
    }


async def wait_for_text(path: Path, text: str, timeout: float, offset: int = 0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if path.exists() and text.encode() in path.read_bytes()[offset:]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path} within {timeout}s")
