"""`ledgerflow replay`: re-drive DLQ entries or open business exceptions (`streams.operations.replay`)."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from typing import Any

import click
import orjson
from aiokafka.errors import KafkaError

from streams.operations.replay import (
    ReplayCriteria,
    ReplayError,
    ReplayKind,
    ReplayReport,
    execute_replay,
    plan_replay,
)
from streams.settings import Settings


class IsoTime(click.ParamType):
    """An ISO-8601 instant with its UTC offset (`Z` or `+02:00`); naive times are refused."""

    name = "ISO-8601"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            parsed = value
        else:
            try:
                parsed = datetime.fromisoformat(str(value))
            except ValueError:
                self.fail(f"{value!r} is not an ISO-8601 time", param, ctx)
        if parsed.tzinfo is None:
            self.fail(f"{value!r} has no UTC offset (write e.g. 2025-01-31T00:00:00Z)", param, ctx)
        return parsed.astimezone(UTC)


async def _replay_with_progress(
    s: Settings, kind: ReplayKind, criteria: ReplayCriteria, dry_run: bool
) -> ReplayReport:
    plan = await plan_replay(s, kind, criteria)
    what = "DLQ entries" if kind is ReplayKind.DLQ else "exceptions"
    label = f"{'checking' if dry_run else 'replaying'} {len(plan)} {what}"
    # Progress goes to stderr so that --json output stays parseable.
    with click.progressbar(length=len(plan), label=label, show_pos=True, file=sys.stderr) as bar:
        return await execute_replay(s, plan, dry_run=dry_run, tick=bar.update)


@click.command("replay")
@click.argument("kind", type=click.Choice([k.value for k in ReplayKind]))
@click.option("--customer", metavar="ID", help="Only this message key (DLQ) or customer_id (exceptions).")
@click.option(
    "--reason",
    metavar="R",
    help="Only reasons starting with R (a DLQ reason, or an exception reason such as missing_gl_mapping).",
)
@click.option(
    "--since", type=IsoTime(), help="Only records written at or after this time (e.g. 2025-01-31T00:00Z)."
)
@click.option("--until", type=IsoTime(), help="Only records written before this time.")
@click.option(
    "--source-topic", metavar="TOPIC", help="Only messages from TOPIC (design name, e.g. billing.changes)."
)
@click.option("--dry-run", is_flag=True, help="List what would be re-driven; produce nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def replay_command(
    kind: str,
    customer: str | None,
    reason: str | None,
    since: datetime | None,
    until: datetime | None,
    source_topic: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Re-drive DLQ entries or open business exceptions after a fix (KIND: dlq or exceptions)."""
    from streams.settings import settings

    try:
        criteria = ReplayCriteria(customer, reason, since, until, source_topic)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    try:
        report = asyncio.run(_replay_with_progress(settings, ReplayKind(kind), criteria, dry_run))
    except (ReplayError, KafkaError) as exc:
        raise click.ClickException(f"replay stopped: {exc}") from exc
    if as_json:
        click.echo(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(report.render())
