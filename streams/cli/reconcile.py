"""`ledgerflow reconcile`: what ledgerflow posted against what the ERP holds
(`streams.operations.reconcile`)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click
import orjson
from aiokafka.errors import KafkaError

from connectors.erp import ErpError
from streams.operations.reconcile import (
    EXIT_CLEAN,
    EXIT_DIFFERENCES,
    EXIT_FAILED,
    ReconcileError,
    ReconcileReport,
    progress_steps,
    reconcile,
)
from streams.settings import Settings


class ReconcileFailed(click.ClickException):
    """The reconciliation could not run; exit status 2 keeps 1 for "differences found"."""

    exit_code = EXIT_FAILED


async def _reconcile_with_progress(s: Settings, raise_exceptions: bool) -> ReconcileReport:
    # Progress goes to stderr so that --json output stays parseable.
    with click.progressbar(
        length=progress_steps(raise_exceptions), label="reconciling", show_pos=True, file=sys.stderr
    ) as bar:
        return await reconcile(s, raise_exceptions=raise_exceptions, tick=bar.update)


@click.command(
    "reconcile",
    epilog="\b\nExit status:\n  0  no differences\n  1  differences found\n"
    "  2  the reconciliation could not run (Kafka, the ERP, or the topics unreachable)",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the report as JSON to FILE.",
)
@click.option(
    "--raise/--no-raise",
    "raise_exceptions",
    default=True,
    show_default=True,
    help="Produce each difference as a reconciliation_difference exception to ledgerflow.exceptions "
    "(and resolve those that are gone).",
)
def reconcile_command(as_json: bool, out: Path | None, raise_exceptions: bool) -> None:
    """Compare what ledgerflow posted (erp.commands + erp.results) with what the ERP holds:
    documents missing, extra or duplicated, amount, status or currency different."""
    from streams.settings import settings

    try:
        report = asyncio.run(_reconcile_with_progress(settings, raise_exceptions))
    except (ReconcileError, KafkaError, ErpError) as exc:
        raise ReconcileFailed(f"reconcile stopped: {exc}") from exc
    data = report.to_json()
    if out is not None:
        out.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    if as_json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(report.render())
    click.get_current_context().exit(EXIT_CLEAN if report.clean else EXIT_DIFFERENCES)
