"""The `ledgerflow` command: Faust's own commands (`worker`, …) plus ledgerflow's."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import NoReturn

import click
from faust.cli.faust import cli

from bench.harness import bench_command
from connectors.erp.sandbox import erp_sandbox_command
from connectors.stripe.sandbox import stripe_sandbox_command
from connectors.stripe.versions import CURRENT_VERSION as CURRENT_STRIPE_VERSION
from streams.cli.erp_check import erp_group
from streams.cli.local_kafka import LocalKafka, LocalKafkaError, cache_root
from streams.cli.reconcile import reconcile_command
from streams.cli.replay import replay_command
from streams.cli.salesforce import resync_group, salesforce_sandbox_command, salesforce_subscribe_command
from streams.cli.stripe import backfill_group, catch_up_group


@click.command("kafka")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Broker storage (default: a fresh folder under the cache).",
)
@click.option("--port", type=int, default=9092, show_default=True, help="Broker port on 127.0.0.1.")
def kafka_command(data_dir: Path | None, port: int) -> None:
    """Run the local single-node Apache Kafka (KRaft) in the foreground until Ctrl-C."""
    data_dir = data_dir or cache_root() / "broker-data" / str(port)
    broker = LocalKafka(data_dir=data_dir, port=port)
    try:
        broker.start()
    except LocalKafkaError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"Kafka {broker.version} on {broker.bootstrap} (data {data_dir}); Ctrl-C stops it")
    try:
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while broker.process is not None and broker.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()


@click.command("schemas")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("."),
    show_default=True,
    help="Repository root to write under (canonical/schemas/, connectors/clm/).",
)
def schemas_command(out: Path) -> None:
    """Write the JSON Schemas: every canonical model, and the CLM contract event."""
    from canonical import PUBLISHED_MODELS
    from canonical.codec import export_json_schemas
    from connectors.clm import ClmContractEvent

    written = export_json_schemas(PUBLISHED_MODELS, out / "canonical" / "schemas")
    written += export_json_schemas({"clm-contract-event": ClmContractEvent}, out / "connectors" / "clm")
    for path in written:
        click.echo(str(path))


@click.command("dev")
@click.option(
    "--events", type=int, default=200, show_default=True, help="Stripe invoice events in the demo scenario."
)
@click.option(
    "--keep-running/--no-keep-running",
    default=True,
    show_default=True,
    help="Keep the stack up after the scenario (Ctrl-C stops it).",
)
@click.option(
    "--salesforce-events",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Also run the Salesforce stand-ins and `salesforce-subscribe`: this many CDC events "
    "arrive on crm.changes through the Pub/Sub API (0: off).",
)
def dev_command(events: int, keep_running: bool, salesforce_events: int) -> None:
    """The whole stack on one machine: local Kafka, a worker, a scenario, a summary."""
    from streams.cli.dev import run_dev

    run_dev(events=events, keep_running=keep_running, salesforce_events=salesforce_events)


@click.command("simulate")
@click.option("--customers", type=click.IntRange(1), default=200, show_default=True)
@click.option("--months", type=click.IntRange(1, 60), default=12, show_default=True)
@click.option(
    "--seed", type=int, default=7, show_default=True, help="Same seed, same scenario, byte for byte."
)
@click.option(
    "--duplicate-rate",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="Share of Stripe events delivered twice.",
)
@click.option(
    "--reorder-rate",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="Share of a customer's Stripe events swapped with the next one.",
)
@click.option(
    "--truth",
    "truth_path",
    type=click.Path(path_type=Path),
    default=Path("simulation-truth.json"),
    show_default=True,
    help="Where to write the ground truth (what the ERP should end up holding).",
)
@click.option(
    "--first-customer",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Number the customers from here (several scenarios into one deployment, no shared ids).",
)
@click.option(
    "--via-webhooks",
    metavar="URL",
    default=None,
    help="POST signed requests to a worker's ingress at URL instead of producing to the topics.",
)
@click.option(
    "--stripe-api-version",
    default=CURRENT_STRIPE_VERSION,
    show_default=True,
    help="The Stripe API version the Events are rendered in (2024-09-30.acacia and later; an acacia "
    "one links payments through the PaymentIntent, a later one through invoice_payment.paid).",
)
def simulate_command(
    customers: int,
    months: int,
    seed: int,
    duplicate_rate: float,
    reorder_rate: float,
    truth_path: Path,
    first_customer: int,
    via_webhooks: str | None,
    stripe_api_version: str,
) -> None:
    """Produce a realistic quote-to-cash history (CRM, CLM, Stripe) and write its ground truth."""
    from streams.cli.simulate import run_simulation
    from streams.settings import settings

    run_simulation(
        settings,
        customers,
        months,
        seed,
        duplicate_rate,
        reorder_rate,
        truth_path,
        via_webhooks,
        first_customer,
        stripe_api_version,
    )


for command in (
    kafka_command,
    schemas_command,
    dev_command,
    simulate_command,
    replay_command,
    reconcile_command,
    erp_sandbox_command,
    stripe_sandbox_command,
    backfill_group,
    catch_up_group,
    erp_group,
    bench_command,
    salesforce_subscribe_command,
    resync_group,
    salesforce_sandbox_command,
):
    cli.add_command(command)

cli.help = """ledgerflow keeps CRM, contract, billing and payment platforms in step with the ERP.

\b
Start here:
  ledgerflow dev       the whole stack on this machine (Kafka, a worker, a scenario)
  ledgerflow worker    a Faust worker (the stream agents and the web server);
                       --stages ingest,core,sink runs only those stages
  ledgerflow simulate  a quote-to-cash history into the source topics, with its ground truth
  ledgerflow replay    re-drive DLQ entries or open exceptions after a fix (--dry-run first)
  ledgerflow reconcile compare what was posted with the ERP (exit 1 on differences)
  ledgerflow erp-sandbox  a sandbox ERP (NetSuite REST and Business Central stand-ins, faults)
  ledgerflow backfill stripe  Stripe's customers, subscriptions, invoices … into the topics (resumable)
  ledgerflow catch-up stripe  the Stripe events of the last 30 days the topics lack
  ledgerflow stripe-sandbox   a Stripe stand-in (read API, events, cursors, rate limit)
  ledgerflow erp check check the mappings' NetSuite internal ids against the ERP (exit 1 on problems)
  ledgerflow bench     events/s, latency and RSS next to a bare Faust agent and a Quix Streams peer
  ledgerflow salesforce-subscribe  Salesforce CDC (Pub/Sub API) into crm.changes, exactly once
  ledgerflow resync salesforce --since T  re-read Accounts changed since T into crm.changes
  ledgerflow salesforce-sandbox  Salesforce REST and Pub/Sub API stand-ins (loopback)
  ledgerflow kafka     a local Apache Kafka (KRaft) in the foreground
  ledgerflow schemas   the JSON Schemas of the canonical model

Settings are LEDGERFLOW_* environment variables (see docs/configuration.md).
"""


def main() -> NoReturn:
    from streams.app import app

    app.main()
