"""`ledgerflow erp check`: the ids the mappings name against the ERP (`streams.operations.erp_check`)."""

from __future__ import annotations

import asyncio

import click
import orjson

from streams.operations.erp_check import erp_check


@click.group("erp")
def erp_group() -> None:
    """The ERP ledgerflow posts to: checks of its configuration."""


@erp_group.command(
    "check",
    epilog="\b\nExit status:\n  0  every id exists and is what the mappings say\n"
    "  1  an id is missing or names another record\n"
    "  2  the check could not run (not in NetSuite mode, the mappings unreadable, the ERP "
    "unreachable or answering an error)",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
def erp_check_command(as_json: bool) -> None:
    """Check that every NetSuite internal id the mappings name (subsidiaries, currencies, items,
    accounts, tax codes, custom fields) exists in the ERP and is what the mappings say it is."""
    from streams.settings import settings

    report = asyncio.run(erp_check(settings))
    if as_json:
        click.echo(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(report.render())
    click.get_current_context().exit(report.exit_status)
