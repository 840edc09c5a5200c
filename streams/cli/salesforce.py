"""`ledgerflow salesforce-subscribe`, `ledgerflow resync salesforce` and `ledgerflow
salesforce-sandbox`: Change Data Capture the real way, the gap filler, and their stand-ins."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from datetime import datetime

import click
import orjson
from aiokafka import AIOKafkaProducer

from streams.cli.replay import IsoTime
from streams.settings import Settings

log = logging.getLogger(__name__)


def _settings() -> Settings:
    from streams import logs
    from streams.settings import settings

    logs.configure(settings.log_format, settings.log_level)
    return settings


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def stopping(sig: signal.Signals) -> None:
        log.info("stopping", extra={"signal": sig.name})
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping, sig)


@click.command("salesforce-subscribe")
def salesforce_subscribe_command() -> None:
    """Subscribe to Salesforce CDC (Pub/Sub API) and write it to crm.changes, exactly once."""
    from connectors.salesforce.pubsub.auth import PubSubAuthError
    from connectors.salesforce.pubsub.subscriber import PubSubUnavailable
    from streams.salesforce_pubsub import run_subscriber

    s = _settings()

    async def main() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        await run_subscriber(s, stop)
        log.info("salesforce-subscribe stopped")

    try:
        asyncio.run(main())
    except (PubSubAuthError, PubSubUnavailable, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@click.group("resync")
def resync_group() -> None:
    """Re-read a platform's records where its change stream lost events."""


@resync_group.command("salesforce")
@click.option(
    "--since", required=True, type=IsoTime(), help="Re-read Accounts changed at or after this time."
)
@click.option("--dry-run", is_flag=True, help="Count what would be produced; produce nothing.")
def resync_salesforce_command(since: datetime, dry_run: bool) -> None:
    """Accounts changed since --since (REST query) into crm.changes as full CDC UPDATE events."""
    from connectors.salesforce.pubsub.auth import PubSubAuthError
    from connectors.salesforce.resync import ResyncError

    s = _settings()
    try:
        count = asyncio.run(resync_salesforce(s, since, dry_run))
    except (PubSubAuthError, ResyncError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{'would produce' if dry_run else 'produced'} {count} account event(s) to crm.changes")


async def resync_salesforce(s: Settings, since: datetime, dry_run: bool = False) -> int:
    """What `ledgerflow resync salesforce` does; returns how many events it produced."""
    from connectors.salesforce.pubsub.auth import login
    from connectors.salesforce.resync import changed_accounts, resync_event
    from streams import headers as h
    from streams.kafka_io import kafka_security
    from streams.salesforce_pubsub import ensure_topics, login_config
    from streams.topic_names import CRM_CHANGES

    session = await login(login_config(s))
    producer: AIOKafkaProducer | None = None
    if not dry_run:
        await ensure_topics(s)
        producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            **kafka_security(s),
        )
        await producer.start()
    count = 0
    causation = f"salesforce-resync:{since.isoformat()}"
    try:
        futures = []
        async for record in changed_accounts(session, since, s.crm_api_version, timeout_s=s.crm_timeout_s):
            message = resync_event(record)
            count += 1
            if producer is None:
                continue
            header = message["payload"]["ChangeEventHeader"]
            correlation = h.stable_id("correlation", "salesforce", header["transactionKey"])
            futures.append(
                await producer.send(
                    s.topic(CRM_CHANGES),
                    orjson.dumps(message),
                    key=header["recordIds"][0].encode(),
                    headers=list(h.outgoing(correlation, causation).items()),
                )
            )
        await asyncio.gather(*futures)
    finally:
        if producer is not None:
            await producer.stop()
    return count


@click.command("salesforce-sandbox")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8091, show_default=True, help="The REST stand-in (OAuth, query).")
@click.option("--pubsub-port", type=int, default=7443, show_default=True, help="The Pub/Sub API stand-in.")
@click.option(
    "--events", type=click.IntRange(0), default=0, show_default=True, help="Account changes to stream."
)
@click.option(
    "--rate", type=click.FloatRange(0), default=200.0, show_default=True, help="Events/s (0: all at once)."
)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--keepalive-s", type=click.FloatRange(0.1), default=5.0, show_default=True)
def salesforce_sandbox_command(
    host: str, port: int, pubsub_port: int, events: int, rate: float, seed: int, keepalive_s: float
) -> None:
    """Run the Salesforce stand-ins (REST + Pub/Sub API, loopback, plaintext) until Ctrl-C,
    streaming --events realistic account changes on /data/AccountChangeEvent."""
    _settings()
    asyncio.run(run_salesforce_sandbox(host, port, pubsub_port, events, rate, seed, keepalive_s))


async def run_salesforce_sandbox(
    host: str,
    port: int,
    pubsub_port: int,
    events: int,
    rate: float,
    seed: int,
    keepalive_s: float,
    stop: asyncio.Event | None = None,
) -> None:
    from connectors.salesforce.pubsub_sandbox import PubSubSandbox, PubSubServer, account_changes
    from connectors.salesforce.sandbox import SandboxServer

    stop = stop or asyncio.Event()
    _stop_on_signals(stop)
    async with SandboxServer(host=host, port=port) as crm:
        bus = PubSubSandbox(
            token_valid=crm.sandbox.token_valid,
            revoke_tokens=crm.sandbox.revoke_tokens,
            keepalive_s=keepalive_s,
        )
        async with PubSubServer(bus, host, pubsub_port) as server:
            print(
                f"salesforce sandbox: REST {crm.url}, Pub/Sub {server.endpoint}", file=sys.stderr, flush=True
            )
            changes = account_changes(events, seed=seed)
            step = max(1, int(rate / 10)) if rate else events or 1
            while not stop.is_set():
                chunk = [c for _, c in zip(range(step), changes, strict=False)]
                if chunk:
                    bus.publish(chunk)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.1 if chunk and rate else 1.0)
