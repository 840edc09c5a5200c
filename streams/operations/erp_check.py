"""`ledgerflow erp check`: every id and code the mappings name, checked against the ERP.

A NetSuite body references configuration records by internal id (`{"id": "4"}`), so an id
that is wrong in the mappings' `[netsuite]` section is not a start-up error: NetSuite refuses
the first document that uses it, or worse, books it against the wrong currency or item. This
command asks the ERP, before anything is posted, whether each id exists and is what the
mappings say it is: one SuiteQL query per record kind, the ids batched (`WHERE id IN (…)`).

What "is what it says" means per kind: a currency's symbol is the ISO code the mappings give
it, an item's itemid is the item code, an account's acctnumber is the GL account number, a tax
code's salestaxitem has the tax code as its itemid, a custom field with the script id exists
(NetSuite stores script ids upper-case, so they compare case-insensitively). A subsidiary only
has to exist: its NetSuite name is shown, not compared, as the mappings' name is descriptive.

In Business Central mode the same is asked of each company the mappings' `[business_central]`
section names: the company and its payment journal exist (by id), and the company has every item
and G/L account (by number), its credit memos' tax group, and the currencies its subsidiary
takes other than the local one (by code): one filtered read per kind and company.
"""

from __future__ import annotations

import logging
import tomllib
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from typing import Any

import click
from pydantic import ValidationError

from connectors.erp import ClientCredentialsToken, ErpError, NetSuiteClient, RetryPolicy
from connectors.erp import client as erp_client_module
from connectors.erp.business_central_client import BusinessCentralClient
from streams.erp import read_with_retries
from streams.mappings import Mappings, NetSuiteIds, load_mappings
from streams.operations.reconcile import EXIT_CLEAN, EXIT_DIFFERENCES, EXIT_FAILED
from streams.settings import Settings

log = logging.getLogger(__name__)


class Status(StrEnum):
    OK = "ok"
    MISSING = "missing"
    """No record of that kind has the id."""
    MISMATCH = "mismatch"
    """The record exists but is not what the mappings say (another currency, item, account…)."""


@dataclass(frozen=True)
class RecordKind:
    """How one kind of configuration record is found and judged in SuiteQL."""

    name: str
    """What the report calls it."""
    table: str
    key: str
    """The column the query selects by (`id`, or `scriptid` for custom fields)."""
    column: str
    """The column shown, and compared with the mappings' code when `compared`."""
    compared: bool = True
    case_insensitive: bool = False


SUBSIDIARY = RecordKind("subsidiary", "subsidiary", "id", "name", compared=False)
CURRENCY = RecordKind("currency", "currency", "id", "symbol")
ITEM = RecordKind("item", "item", "id", "itemid")
ACCOUNT = RecordKind("account", "account", "id", "acctnumber")
TAX_CODE = RecordKind("tax code", "salestaxitem", "id", "itemid")
CUSTOM_FIELD = RecordKind(
    "custom field", "customfield", "scriptid", "scriptid", compared=False, case_insensitive=True
)
KINDS = (SUBSIDIARY, CURRENCY, ITEM, ACCOUNT, TAX_CODE, CUSTOM_FIELD)
BC_COMPANY = RecordKind("company", "companies", "id", "name", compared=False)
BC_JOURNAL = RecordKind("payment journal", "customerPaymentJournals", "id", "code", compared=False)
BC_ITEM = RecordKind("item", "items", "number", "number")
BC_ACCOUNT = RecordKind("account", "accounts", "number", "number")
BC_TAX_GROUP = RecordKind("tax group", "taxGroups", "code", "code")
BC_CURRENCY = RecordKind("currency", "currencies", "code", "code")
BC_KINDS = (BC_ITEM, BC_ACCOUNT, BC_TAX_GROUP, BC_CURRENCY)
"""What each company is asked about by code, after the company and its journal by id."""


@dataclass(frozen=True)
class Wanted:
    """One id the mappings name: `code` (what the rest of the mappings call the record) → `id`."""

    kind: RecordKind
    code: str
    id: str
    company: str | None = None
    """The Business Central company (its subsidiary code) the record must be in."""

    @property
    def key(self) -> str:
        """The id as the ERP stores it (script ids upper-case)."""
        return self.id.upper() if self.kind.case_insensitive else self.id


@dataclass(frozen=True)
class Check:
    """The ERP's verdict on one id."""

    wanted: Wanted
    status: Status
    erp: str | None
    """What the ERP holds in the kind's column (None when missing, or the column is NULL)."""

    @property
    def expected(self) -> str | None:
        return self.wanted.code if self.wanted.kind.compared else None

    def describe(self) -> str:
        kind = self.wanted.kind
        if self.status is Status.MISSING:
            return f"no {kind.table} with {kind.key} {self.wanted.id!r}"
        if self.status is Status.MISMATCH:
            return f"{kind.column} is {self.erp!r}, the mappings say {self.expected!r}"
        return f"{kind.column} {self.erp!r}" if self.erp is not None else ""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.wanted.kind.name,
            "table": self.wanted.kind.table,
            "code": self.wanted.code,
            "internal_id": self.wanted.id,
            "status": self.status.value,
            "column": self.wanted.kind.column,
            "expected": self.expected,
            "erp": self.erp,
        }


@dataclass
class CheckReport:
    """Every id checked, in the order of the mappings' `[netsuite]` section."""

    run_id: str
    erp_base_url: str
    checks: list[Check]

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if c.status is not Status.OK]

    @property
    def clean(self) -> bool:
        return not self.problems

    @property
    def exit_status(self) -> int:
        return EXIT_CLEAN if self.clean else EXIT_DIFFERENCES

    def by_status(self) -> dict[str, int]:
        counts = Counter(c.status.value for c in self.checks)
        return {s.value: counts[s.value] for s in Status}

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "erp_base_url": self.erp_base_url,
            "clean": self.clean,
            "checked": len(self.checks),
            "by_status": self.by_status(),
            "checks": [c.to_json() for c in self.checks],
        }

    def render(self) -> str:
        """One line per id, problems included in place, then a summary line."""
        rows = [
            (
                c.status.value,
                c.wanted.kind.name + (f" ({c.wanted.company})" if c.wanted.company else ""),
                c.wanted.code,
                c.wanted.id,
                c.describe(),
            )
            for c in self.checks
        ]
        header = ("status", "kind", "code", "internal id", "ERP")
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
        lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in (header, *rows)]
        counts = self.by_status()
        verdict = "all ok" if self.clean else f"{len(self.problems)} problem(s)"
        lines += [
            "",
            f"erp check {self.run_id} ({self.erp_base_url}): {len(self.checks)} id(s) checked, {verdict} "
            f"({counts['ok']} ok, {counts['missing']} missing, {counts['mismatch']} mismatch)",
        ]
        return "\n".join(lines)


def wanted_ids(ids: NetSuiteIds) -> list[Wanted]:
    """Every internal id the `[netsuite]` section names. Deposit accounts, the shipping and the
    credit item are checked through `accounts` and `items`, which the mappings' validation
    requires to name them."""
    wanted = [Wanted(SUBSIDIARY, code, i) for code, i in ids.subsidiaries.items()]
    wanted += [Wanted(CURRENCY, str(code), i) for code, i in ids.currencies.items()]
    wanted += [Wanted(ITEM, code, i) for code, i in ids.items.items()]
    wanted += [Wanted(ACCOUNT, number, i) for number, i in ids.accounts.items()]
    wanted += [Wanted(TAX_CODE, code, tax.id) for code, tax in ids.tax_codes.items()]
    wanted += [Wanted(CUSTOM_FIELD, name, str(sid)) for name, sid in ids.fields.model_dump().items()]
    return wanted


def business_central_wanted(mappings: Mappings) -> list[Wanted]:
    """Every company, journal, item, account, tax group and currency the mappings need in
    Business Central, per company."""
    bc = mappings.business_central
    assert bc is not None
    items = sorted(mappings.item_codes)
    accounts = sorted(mappings.gl_accounts | bc.accounts)
    wanted: list[Wanted] = []
    for subsidiary, company in bc.companies.items():
        found = mappings.subsidiary(subsidiary)
        currencies = [str(c) for c in (found.currencies if found else ()) if c != company.currency]
        wanted.append(Wanted(BC_COMPANY, subsidiary, company.id))
        wanted.append(Wanted(BC_JOURNAL, "payment_journal", company.payment_journal, subsidiary))
        wanted += [Wanted(BC_ITEM, n, n, subsidiary) for n in items]
        wanted += [Wanted(BC_ACCOUNT, n, n, subsidiary) for n in accounts]
        if company.credit_tax_code:
            wanted.append(Wanted(BC_TAX_GROUP, company.credit_tax_code, company.credit_tax_code, subsidiary))
        wanted += [Wanted(BC_CURRENCY, c, c, subsidiary) for c in currencies]
    return wanted


async def check_business_central(
    client: BusinessCentralClient,
    wanted: Sequence[Wanted],
    correlation_id: str | None = None,
    policy: RetryPolicy | None = None,
) -> list[Check]:
    """Ask Business Central about every wanted record: the companies in one read, then per
    company its journals and one filtered read per kind, each retried under `policy`."""
    policy = policy or RetryPolicy(max_attempts=1)
    companies = client.mapper.ids.companies
    rows: dict[tuple[str, str | None, str], dict[str, Any]] = {}

    async def read(company: str | None, kind: RecordKind, values: list[str] | None) -> None:
        where = companies[company] if company is not None else None
        field = kind.key if values is not None else None
        read_set = partial(client.setup, where, kind.table, field, values or (), correlation_id)
        for row in await read_with_retries(policy, read_set):
            rows[(kind.table, company, str(row.get(kind.key, "")))] = row

    await read(None, BC_COMPANY, None)
    known = {w.code for w in wanted if w.kind is BC_COMPANY and (BC_COMPANY.table, None, w.id) in rows}
    for subsidiary in dict.fromkeys(w.company for w in wanted if w.company is not None):
        if subsidiary not in known:
            continue  # the company is missing: what is in it cannot be asked
        await read(subsidiary, BC_JOURNAL, None)
        for kind in BC_KINDS:
            values = [w.key for w in wanted if w.kind is kind and w.company == subsidiary]
            if values:
                await read(subsidiary, kind, values)
    # A missing company is the problem reported: what should be in it is not judged.
    return [
        judge(w, rows.get((w.kind.table, w.company, w.key))) for w in wanted if w.company in (None, *known)
    ]


def judge(wanted: Wanted, row: dict[str, Any] | None) -> Check:
    """The verdict on one id, given the ERP's row for it (None: no such row)."""
    if row is None:
        return Check(wanted, Status.MISSING, None)
    # SuiteQL answers every value as a string and leaves NULL columns out of the row.
    value = row.get(wanted.kind.column)
    erp = str(value) if value is not None else None
    if not wanted.kind.compared:
        return Check(wanted, Status.OK, erp)
    same = (
        erp is not None and erp.casefold() == wanted.code.casefold()
        if wanted.kind.case_insensitive
        else erp == wanted.code
    )
    return Check(wanted, Status.OK if same else Status.MISMATCH, erp)


async def check_ids(
    client: NetSuiteClient,
    wanted: Sequence[Wanted],
    correlation_id: str | None = None,
    policy: RetryPolicy | None = None,
) -> list[Check]:
    """Ask the ERP about every wanted id: one SuiteQL query per record kind (per
    SUITEQL_IDS_MAX ids), each retried under `policy` (once without), and judge each id by the
    row answered for it."""
    policy = policy or RetryPolicy(max_attempts=1)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for kind in KINDS:
        keys = list(dict.fromkeys(w.key for w in wanted if w.kind is kind))
        batch = erp_client_module.SUITEQL_IDS_MAX
        columns = ", ".join(dict.fromkeys((kind.key, kind.column)))
        for start in range(0, len(keys), batch):
            listed = ", ".join(_literal(k) for k in keys[start : start + batch])
            query = f"SELECT {columns} FROM {kind.table} WHERE {kind.key} IN ({listed})"
            answer = await read_with_retries(policy, partial(client.suiteql, query, correlation_id))
            for row in answer:
                key = str(row.get(kind.key, ""))
                rows[(kind.table, key.upper() if kind.case_insensitive else key)] = row
    return [judge(w, rows.get((w.kind.table, w.key))) for w in wanted]


class ErpCheckFailed(click.ClickException):
    """The check could not run (no NetSuite, mappings unreadable, the ERP unreachable or
    answering an error): exit status 2, keeping 1 for "problems found", as `ledgerflow reconcile`."""

    exit_code = EXIT_FAILED


async def erp_check(s: Settings, *, now: datetime | None = None) -> CheckReport:
    """Check the internal ids of the mappings at LEDGERFLOW_MAPPINGS against the ERP at
    LEDGERFLOW_ERP_BASE_URL; raises ErpCheckFailed when that cannot be done."""
    mappings = _mappings(s)
    section = "netsuite" if s.erp_mode == "netsuite" else "business_central"
    if getattr(mappings, section) is None:
        raise ErpCheckFailed(f"the mappings ({s.mappings or 'bundled example'}) have no [{section}] section")
    started = (now or datetime.now(UTC)).astimezone(UTC)
    run_id = f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    cause = f"erp-check:{run_id}"
    from streams.erp import erp_client, retry_policy, token_provider

    tokens = token_provider(s)
    client = erp_client(s, tokens)
    try:
        if isinstance(client, NetSuiteClient):
            assert mappings.netsuite is not None
            checks = await check_ids(client, wanted_ids(mappings.netsuite), cause, retry_policy(s))
        else:
            wanted = business_central_wanted(mappings)
            checks = await check_business_central(client, wanted, cause, retry_policy(s))
    except ErpError as exc:
        log.error(
            "erp check stopped",
            extra={"correlation_id": cause, "code": exc.code, "erp_base_url": s.erp_base_url},
        )
        raise ErpCheckFailed(f"erp check stopped: the ERP at {s.erp_base_url} answered {exc}") from exc
    finally:
        await client.aclose()
        if isinstance(tokens, ClientCredentialsToken):
            await tokens.aclose()
    report = CheckReport(run_id=run_id, erp_base_url=s.erp_base_url, checks=checks)
    _log(report, cause)
    return report


def _mappings(s: Settings) -> Mappings:
    try:
        return load_mappings(s.mappings)
    except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ErpCheckFailed(
            f"the mappings {s.mappings or '(bundled example)'} cannot be read: {exc}"
        ) from exc


def _log(report: CheckReport, cause: str) -> None:
    for check in report.problems:
        log.warning(
            "erp check problem",
            extra={
                "correlation_id": cause,
                "status": check.status.value,
                "kind": check.wanted.kind.name,
                "code": check.wanted.code,
                "internal_id": check.wanted.id,
                "expected": check.expected,
                "erp": check.erp,
            },
        )
    log.info(
        "erp check finished",
        extra={"correlation_id": cause, "checked": len(report.checks), "by_status": report.by_status()},
    )


def _literal(value: str) -> str:
    # A SuiteQL string literal doubles its single quotes.
    return "'" + value.replace("'", "''") + "'"
