"""`ledgerflow dev`: the whole stack on one machine, a scenario through it, and a summary."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from connectors.stripe.samples import MARKETS, customer_object, event_envelope, invoice_object
from streams.cli.local_kafka import LocalKafka, free_port
from streams.cli.processes import ProcessFailed, terminate, wait_for_log
from streams.kafka_io import Record, produce, read_topics
from streams.settings import settings
from streams.topic_names import DLQ, ERP_COMMANDS, EXCEPTIONS

DEV_ROOT = Path(".ledgerflow-dev")
OUTPUT_TOPICS = [ERP_COMMANDS, EXCEPTIONS, DLQ]
DEV_ERP_TOKEN = "sandbox-token"
DEV_ACCOUNT = "1234567_SB1"
"""The NetSuite account the demo's stand-in plays; the worker signs its calls with TBA for it."""


@dataclass
class Scenario:
    """Stripe billing events with the faults a real feed has, and what must come of them."""

    records: list[tuple[str | None, bytes, dict[str, str]]] = field(default_factory=list)
    expected_commands: int = 0
    expected_exceptions: int = 0
    expected_dlq: int = 0
    expected_parked: int = 0


def demo_scenario(invoices: int, seed: int = 7) -> Scenario:
    """`invoices` finalized-then-paid invoices across the four markets, plus the awkward ones:
    Stripe redeliveries, a paid snapshot arriving before its open one, invoices arriving before
    their customer, an invoice whose lines do not add up, one in a currency no subsidiary books,
    one whose customer never arrives (parked), and a message that is not JSON."""
    rng = random.Random(seed)
    s = Scenario()
    countries = list(MARKETS)
    t0 = 1_767_225_600
    customers = max(1, invoices // 3)
    announced: set[str] = set()
    for n in range(invoices):
        # A customer is in one market: the ERP keeps it in that market's subsidiary.
        country = countries[(n % customers) % len(countries)]
        customer = f"cus_demo{n % customers:04d}"
        lines = [("prod_platform", 1), ("prod_seats", rng.randint(1, 40))]
        if rng.random() < 0.3:
            lines.append(("prod_support", 1))
        invoice_id = f"in_demo{n:05d}"
        finalized = invoice_object(invoice_id, customer, country, lines, status="open", created=t0 + n * 60)
        paid = invoice_object(invoice_id, customer, country, lines, status="paid", created=t0 + n * 60)
        events = [
            event_envelope(f"evt_{invoice_id}_fin", "invoice.finalized", finalized, t0 + n * 60 + 3600),
            event_envelope(f"evt_{invoice_id}_paid", "invoice.paid", paid, t0 + n * 60 + 7200),
        ]
        if n % 10 == 3:
            events.reverse()  # Stripe does not promise order: paid before finalized
        if n % 10 == 5:
            events.append(events[0])  # redelivery
        for event in events:
            s.records.append((customer, orjson.dumps(event), {}))
        if customer not in announced:
            # The customer record follows its first invoice: the invoice waits for it.
            crm = f"001DEMO{n:08d}" if n % 3 else None  # a third are self-serve, with no CRM account
            obj = customer_object(customer, country, f"Demo {n}", f"ap{n}@demo.example", crm, t0)
            s.records.append(
                (customer, orjson.dumps(event_envelope(f"evt_{customer}", "customer.created", obj, t0)), {})
            )
            announced.add(customer)
        s.expected_commands += 1
    for extra, country in (("cus_demo_x", "DE"), ("cus_demo_y", "US")):
        obj = customer_object(extra, country, f"Demo {extra}", f"{extra}@demo.example", None, t0)
        s.records.append(
            (extra, orjson.dumps(event_envelope(f"evt_{extra}", "customer.created", obj, t0)), {})
        )
    broken = invoice_object("in_demo_broken", "cus_demo_x", "DE", [("prod_platform", 1)], created=t0)
    broken["lines"]["data"][0]["amount"] -= 100  # the line no longer adds up
    s.records.append(
        ("cus_demo_x", orjson.dumps(event_envelope("evt_broken", "invoice.finalized", broken, t0)), {})
    )
    s.expected_exceptions += 1
    brl = invoice_object("in_demo_brl", "cus_demo_y", "US", [("prod_platform", 1)], created=t0)
    brl["currency"] = "brl"
    brl["customer_address"] = {"country": "BR"}
    s.records.append(
        ("cus_demo_y", orjson.dumps(event_envelope("evt_brl", "invoice.finalized", brl, t0)), {})
    )
    s.expected_exceptions += 1
    s.records.append(("cus_demo_z", b'{"id": "evt_truncated", "object": "ev', {}))
    s.expected_dlq += 1
    orphan = invoice_object("in_demo_orphan", "cus_demo_gone", "GB", [("prod_platform", 1)], created=t0)
    s.records.append(
        ("cus_demo_gone", orjson.dumps(event_envelope("evt_orphan", "invoice.finalized", orphan, t0)), {})
    )
    s.expected_parked += 1
    return s


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streams", "worker", "-l", "info"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@dataclass(frozen=True)
class DemoTba:
    """A TBA integration and access token made up for the demo (NetSuite's are 64 hex digits):
    the stand-in accepts calls they sign, the worker signs with them. They travel in the
    processes' environment, never on a command line."""

    consumer_key: str = field(default_factory=lambda: secrets.token_hex(32))
    consumer_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    token_id: str = field(default_factory=lambda: secrets.token_hex(32))
    token_secret: str = field(default_factory=lambda: secrets.token_hex(32))

    def sandbox_env(self) -> dict[str, str]:
        parts = (self.consumer_key, self.consumer_secret, self.token_id, self.token_secret)
        return {"LEDGERFLOW_SANDBOX_TBA": ":".join(parts)}

    def worker_env(self) -> dict[str, str]:
        return {
            "LEDGERFLOW_ERP_MODE": "netsuite",
            "LEDGERFLOW_NETSUITE_ACCOUNT": DEV_ACCOUNT,
            "LEDGERFLOW_NETSUITE_AUTH": "tba",
            "LEDGERFLOW_NETSUITE_CONSUMER_KEY": self.consumer_key,
            "LEDGERFLOW_NETSUITE_CONSUMER_SECRET": self.consumer_secret,
            "LEDGERFLOW_NETSUITE_TOKEN_ID": self.token_id,
            "LEDGERFLOW_NETSUITE_TOKEN_SECRET": self.token_secret,
        }


def _start_erp(port: int, log: Path, tba: DemoTba) -> subprocess.Popen[bytes]:
    """The NetSuite stand-in, with a few faults so the demo shows retries doing their job."""
    args = ["--port", str(port), "--db", str((DEV_ROOT / "erp.sqlite3").resolve()), "--token", DEV_ERP_TOKEN]
    args += ["--account", DEV_ACCOUNT]
    args += ["--latency-ms", "20", "--error-rate", "0.05", "--timeout-rate", "0.02", "--hang-s", "3"]
    return subprocess.Popen(
        [sys.executable, "-m", "streams", "erp-sandbox", *args],
        env={**os.environ, **tba.sandbox_env()},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _erp_check(env: dict[str, str]) -> str:
    """`ledgerflow erp check` against the stand-in: the mappings' internal ids exist there."""
    out = subprocess.run(
        [sys.executable, "-m", "streams", "erp", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(
            f"ledgerflow erp check found problems (exit {out.returncode}):\n{out.stdout}{out.stderr}"
        )
    return out.stdout.strip().splitlines()[-1]


def _erp_view(erp_url: str) -> dict[str, Any]:
    view: dict[str, Any] = httpx.get(f"{erp_url}/admin/documents", timeout=30).json()
    return view


def _erp_summary(view: dict[str, Any]) -> list[str]:
    docs = Counter(d["record_type"] for d in view["documents"])
    writes = sum(d["writes"] for d in view["documents"])
    lines = ["", "Documents in the ERP (sandbox):"]
    lines += [f"  {rt:<20} {n}" for rt, n in sorted(docs.items())] or ["  none"]
    lines.append(
        f"  ({writes} writes for {sum(docs.values())} documents; {len(view['duplicates'])} duplicates)"
    )
    return lines


def _summary(found: dict[str, list[Record]]) -> list[str]:
    parsed = [orjson.loads(v or b"{}") for _, v, _ in found[ERP_COMMANDS]]
    commands = Counter(c.get("command", "?") for c in parsed)
    keys = Counter(c.get("command", "?") for c in {c.get("idempotency_key"): c for c in parsed}.values())
    exceptions = Counter(orjson.loads(v or b"{}").get("reason", "?") for _, v, _ in found[EXCEPTIONS])
    dlq = Counter(h.get("x-dlq-reason", "?").split(":")[0] for _, _, h in found[DLQ])
    lines = ["", "ERP commands (erp.commands):"]
    lines += [
        f"  {name:<20} {count} ({keys[name]} distinct keys)" for name, count in sorted(commands.items())
    ]
    lines.append("Business exceptions (ledgerflow.exceptions):")
    lines += [f"  {reason:<20} {count}" for reason, count in sorted(exceptions.items())] or ["  none"]
    lines.append("Dead letters (ledgerflow.dlq):")
    lines += [f"  {reason:<20} {count}" for reason, count in sorted(dlq.items())] or ["  none"]
    return lines


def _start_salesforce(events: int, bootstrap: str) -> tuple[list[subprocess.Popen[bytes]], dict[str, str]]:
    """The Salesforce REST and Pub/Sub stand-ins streaming `events` account changes, and
    `ledgerflow salesforce-subscribe` reading them into crm.changes (CDC the real way)."""
    rest_port, pubsub_port = free_port(), free_port()
    sandbox_log = (DEV_ROOT / "salesforce-sandbox.log").resolve()
    args = ["--port", str(rest_port), "--pubsub-port", str(pubsub_port), "--events", str(events)]
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "streams", "salesforce-sandbox", *args],
        stdout=sandbox_log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_for_log(sandbox_log, "salesforce sandbox:", sandbox, timeout=30)
    env = {
        **os.environ,
        "LEDGERFLOW_KAFKA_BOOTSTRAP": bootstrap,
        "LEDGERFLOW_SALESFORCE_PUBSUB_ENDPOINT": f"127.0.0.1:{pubsub_port}",
        "LEDGERFLOW_SALESFORCE_PUBSUB_INSECURE": "true",
        "LEDGERFLOW_SALESFORCE_PUBSUB_REPLAY_PRESET": "EARLIEST",
        "LEDGERFLOW_SALESFORCE_LOGIN_URL": f"http://127.0.0.1:{rest_port}",
        "LEDGERFLOW_CRM_CLIENT_ID": "ledgerflow",
        "LEDGERFLOW_CRM_CLIENT_SECRET": "sandbox-crm-secret",
    }
    subscriber_log = (DEV_ROOT / "salesforce-subscribe.log").resolve()
    subscriber = subprocess.Popen(
        [sys.executable, "-m", "streams", "salesforce-subscribe"],
        env=env,
        stdout=subscriber_log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_for_log(subscriber_log, "pubsub subscribing", subscriber, timeout=60)
    print(
        f"Salesforce stand-ins (REST :{rest_port}, Pub/Sub :{pubsub_port}) streaming {events} account "
        f"changes; salesforce-subscribe reads them into crm.changes (log {subscriber_log})"
    )
    return [subscriber, sandbox], env


def run_dev(events: int, keep_running: bool, salesforce_events: int = 0) -> None:
    """Start Kafka (unless LEDGERFLOW_KAFKA_BOOTSTRAP names one) and a worker, run the demo
    scenario, print what happened and where to look, and stop everything on Ctrl-C. With
    `salesforce_events`, the Salesforce stand-ins and the Pub/Sub subscriber run too."""
    if DEV_ROOT.exists():
        shutil.rmtree(DEV_ROOT)
    DEV_ROOT.mkdir(parents=True)
    broker: LocalKafka | None = None
    worker: subprocess.Popen[bytes] | None = None
    erp: subprocess.Popen[bytes] | None = None
    salesforce: list[subprocess.Popen[bytes]] = []
    try:
        if settings.kafka_bootstrap:
            bootstrap = settings.kafka_bootstrap
            print(f"Using Kafka at {bootstrap}")
        else:
            t = time.monotonic()
            broker = LocalKafka(data_dir=(DEV_ROOT / "kafka").resolve()).start()
            bootstrap = broker.bootstrap
            print(f"Started Apache Kafka {broker.version} on {bootstrap} in {time.monotonic() - t:.1f}s")
        erp_port = free_port()
        erp_url = f"http://127.0.0.1:{erp_port}"
        erp_log = (DEV_ROOT / "erp-sandbox.log").resolve()
        tba = DemoTba()
        erp = _start_erp(erp_port, erp_log, tba)
        wait_for_log(erp_log, "ERP sandbox on", erp, timeout=30)
        print(
            f"NetSuite stand-in (account {DEV_ACCOUNT}) on {erp_url} (documents: {erp_url}/admin/documents)"
        )
        web_port = settings.web_port if _port_free(settings.web_port) else free_port()
        env = {
            **os.environ,
            **tba.worker_env(),
            "LEDGERFLOW_ERP_BASE_URL": erp_url,
            "LEDGERFLOW_ERP_TIMEOUT_S": "2",
            "LEDGERFLOW_KAFKA_BOOTSTRAP": bootstrap,
            "LEDGERFLOW_DATA_DIR": str((DEV_ROOT / "worker").resolve()),
            "LEDGERFLOW_WEB_PORT": str(web_port),
            "PYTHONUNBUFFERED": "1",
        }
        print(_erp_check(env))
        log = (DEV_ROOT / "worker.log").resolve()
        worker = _start_worker(env, log)
        ready = wait_for_log(log, "Worker ready", worker, timeout=120)
        print(f"Worker ready in {ready:.1f}s (web http://127.0.0.1:{web_port}/, log {log})")

        if salesforce_events:
            salesforce, _ = _start_salesforce(salesforce_events, bootstrap)

        scenario = demo_scenario(events)
        prefix = settings.topic_prefix
        t = time.monotonic()
        asyncio.run(produce(bootstrap, prefix + "billing.changes", scenario.records))
        print(f"Produced {len(scenario.records)} Stripe events to {prefix}billing.changes")
        topics = [prefix + name for name in OUTPUT_TOPICS]

        def done(found: dict[str, list[Record]]) -> bool:
            posted = sum(1 for _, v, _ in found[topics[0]] if b'"post_invoice"' in (v or b""))
            return (
                posted >= scenario.expected_commands
                and len(found[topics[1]]) >= scenario.expected_exceptions
                and len(found[topics[2]]) >= scenario.expected_dlq
            )

        found = asyncio.run(read_topics(bootstrap, topics, done, timeout=120))
        deadline = time.monotonic() + 120
        while (view := _erp_view(erp_url)) and time.monotonic() < deadline:
            if sum(d["record_type"] == "invoice" for d in view["documents"]) >= scenario.expected_commands:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - t
        by_name = {name: found[prefix + name] for name in OUTPUT_TOPICS}
        print(f"Everything the scenario implies arrived within {elapsed:.1f}s")
        print("\n".join(_summary(by_name) + _erp_summary(view)))
        print(
            f"\nExpected: {scenario.expected_commands} invoice postings (after their customers), "
            f"{scenario.expected_exceptions} exceptions, {scenario.expected_dlq} dead letter(s), "
            f"{scenario.expected_parked} invoice parked until its customer arrives "
            "(raised as unknown_customer after LEDGERFLOW_PARK_TIMEOUT_S)."
        )
        if salesforce_events:
            crm_topic = prefix + "crm.changes"
            crm = asyncio.run(
                read_topics(bootstrap, [crm_topic], lambda f: len(f[crm_topic]) >= salesforce_events, 120)
            )
            print(
                f"{len(crm[crm_topic])} of {salesforce_events} Salesforce CDC events on {crm_topic}, "
                "decoded from the Pub/Sub API (read_committed)"
            )
        print(f"Look at: the worker log {log}; topics on {bootstrap}; state in {DEV_ROOT}/worker.")
        posted = sum(d["record_type"] == "invoice" for d in view["documents"])
        if not done({prefix + k: v for k, v in by_name.items()}) or posted < scenario.expected_commands:
            raise SystemExit(
                "the pipeline did not produce everything the scenario implies; see the worker log"
            )
        if keep_running:
            print("The stack keeps running; Ctrl-C stops everything it started.")
            while worker.poll() is None:
                time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nStopping…")
    except ProcessFailed as exc:
        raise SystemExit(f"the worker did not start: {exc}") from None
    finally:
        for process in salesforce:
            terminate(process)
        terminate(worker)
        terminate(erp)
        if broker is not None:
            broker.stop()


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
