"""The sandbox ERP (`ledgerflow erp-sandbox`): both API shapes the connector speaks, on SQLite.

* NetSuite REST record shape under `/services/rest/record/v1/{recordType}`: `PUT …/eid:{id}`
  upserts (204 + `Location`), `PATCH …/{eid:id|id}` updates, `GET` reads one record or a page
  (`?limit=&offset=`, full records in `items` — a sandbox convenience; NetSuite sends links).
* NetSuite SuiteQL, `POST /services/rest/query/v1/suiteql` (`{"q": …}`, `?limit=&offset=`),
  for the one query shape the connector sends: ids and document numbers by external id
  (`SELECT id, externalid, tranid FROM transaction WHERE type = 'CustInvc' AND externalid IN
  ('…', …)`, or `entityid FROM customer`); any other query is refused with a 400.
* Create-only OData shape under `/api/v1/{recordType}`: `POST` always creates (duplicates are
  allowed on purpose: that is how tests catch a double post), `GET ?$filter=externalReference
  eq '…'`, `PATCH ({id})`, bound actions `({id})/Microsoft.NAV.post` and `…/Microsoft.NAV.cancel`.
* `POST /oauth/token` (client credentials), bearer auth on both API shapes.
* Validation like an ERP's (unknown customer, invoice or subsidiary, currency not enabled,
  closed period, float amounts) from the mappings TOML plus periods closed at runtime.
* Fault injection (errors, latency, committed-then-timeout, 429 bursts, maintenance) from
  flags or `POST /admin/faults`, drawn from a seedable `random.Random`.
* `/admin/…` (no auth; a loopback dev tool): documents with their write and create counts,
  edits for reconciliation tests, period closing, reset, and a log of API requests.

Amounts are integer minor units throughout (see `connectors.erp.mapping`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import click
import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from connectors.erp.schemas import (
    DRAFT,
    DRAFT_RECORD_TYPES,
    POSTING_RECORD_TYPES,
    SUITEQL_TABLES,
    VOIDED,
    RecordType,
    netsuite_error_body,
    odata_error_body,
)
from connectors.sandbox import (
    AppServer,
    Handler,
    Refused,
    SandboxState,
    client_authenticated,
    invalid,
    json_response,
    sandbox_app,
)
from streams.mappings import ClosedPeriod, Mappings, load_mappings

NETSUITE_PREFIX = "/services/rest/record/v1"
SUITEQL_PATH = "/services/rest/query/v1/suiteql"
ODATA_PREFIX = "/api/v1"
DEFAULT_TOKEN = "sandbox-token"
DEFAULT_DB = Path(".ledgerflow-data") / "erp-sandbox.sqlite3"

NUMBER_PREFIXES: dict[RecordType, str] = {
    RecordType.CUSTOMER: "CUST",
    RecordType.SALES_ORDER: "SO",
    RecordType.INVOICE: "INV",
    RecordType.CUSTOMER_PAYMENT: "PYMT",
    RecordType.CREDIT_MEMO: "CM",
}
DEFAULT_STATUS: dict[RecordType, str] = {
    RecordType.CUSTOMER: "active",
    RecordType.SALES_ORDER: "pendingFulfillment",
    RecordType.INVOICE: "open",
    RecordType.CUSTOMER_PAYMENT: "deposited",
    RecordType.CREDIT_MEMO: "open",
}
AMOUNT_FIELDS = ("total", "amount", "subtotal", "taxTotal", "discountTotal", "shippingCost")
LINE_AMOUNT_FIELDS = ("amount", "taxAmount", "rate")
Api = Literal["netsuite", "create-only"]
_EXTERNAL_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")


class FaultSettings(BaseModel):
    """What goes wrong, and how often. `burst_*` count down: the next N API calls fail."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    error_rate: float = Field(default=0.0, ge=0, le=1)
    """Share of API calls answered 500 before anything is written."""
    latency_ms: float = Field(default=0.0, ge=0)
    """Mean added latency of every API call."""
    latency_jitter_ms: float = Field(default=0.0, ge=0)
    """Latency varies uniformly by ± this much."""
    timeout_rate: float = Field(default=0.0, ge=0, le=1)
    """Share of API calls whose effect IS committed and whose answer then never arrives."""
    timeout_mode: Literal["hang", "drop"] = "hang"
    """`hang` holds the answer for `hang_s` (longer than a client's timeout); `drop` closes
    the connection without answering."""
    hang_s: float = Field(default=30.0, ge=0)
    rate_limit_rate: float = Field(default=0.0, ge=0, le=1)
    """Share of API calls answered 429 SSS_REQUEST_LIMIT_EXCEEDED."""
    retry_after_s: float = Field(default=1.0, ge=0)
    """`Retry-After` sent with 429 and 503 answers."""
    burst_429: int = Field(default=0, ge=0)
    burst_500: int = Field(default=0, ge=0)
    burst_timeout: int = Field(default=0, ge=0)
    maintenance: bool = False
    """Every API call answers 503 with `Retry-After` until turned off."""
    scope: str | None = None
    """A regex: faults hit only API calls whose path or body matches it (one customer's
    external id, say, to show that one failing customer does not hold the others back)."""


class SandboxConfig(BaseModel):
    """How a sandbox starts: where it stores, what it accepts, what it validates against."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    db_path: Path = DEFAULT_DB
    tokens: tuple[str, ...] = (DEFAULT_TOKEN,)
    """Static bearer tokens always accepted (`LEDGERFLOW_ERP_TOKEN` on the sink's side)."""
    client_id: str = "ledgerflow"
    client_secret: SecretStr = SecretStr("sandbox-secret")
    token_ttl_s: float = Field(default=3600.0, gt=0)
    """Lifetime of tokens issued by `POST /oauth/token`."""
    mappings_path: Path | None = None
    """Subsidiaries, currencies and closed periods; None is the bundled example."""
    faults: FaultSettings = FaultSettings()
    seed: int | None = None
    """Seed of the fault dice, so a test run is repeatable."""
    request_log_size: int = Field(default=2000, ge=1)


@dataclass(frozen=True)
class StoredDocument:
    internal_id: int
    record_type: RecordType
    api: Api
    external_id: str | None
    document_number: str | None
    status: str
    body: dict[str, Any]
    writes: int
    created_at: str
    updated_at: str

    def admin_view(self) -> dict[str, Any]:
        return {
            "record_type": self.record_type.value,
            "internal_id": str(self.internal_id),
            "external_id": self.external_id,
            "document_number": self.document_number,
            "status": self.status,
            "api": self.api,
            "writes": self.writes,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "body": self.body,
        }


_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    internal_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    record_type     TEXT NOT NULL,
    api             TEXT NOT NULL,
    external_id     TEXT,
    document_number TEXT,
    status          TEXT NOT NULL,
    body            TEXT NOT NULL,
    writes          INTEGER NOT NULL DEFAULT 1,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
-- NetSuite's upsert keys on the external id; the create-only API has no such constraint.
CREATE UNIQUE INDEX IF NOT EXISTS documents_netsuite_external_id
    ON documents (record_type, external_id) WHERE api = 'netsuite';
CREATE INDEX IF NOT EXISTS documents_external_id ON documents (record_type, external_id);
CREATE TABLE IF NOT EXISTS sequences (record_type TEXT PRIMARY KEY, last INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS closed_periods (
    id INTEGER PRIMARY KEY AUTOINCREMENT, subsidiary TEXT NOT NULL, start TEXT NOT NULL, "end" TEXT NOT NULL
);
"""


class DocumentStore:
    """The sandbox's SQLite file. Calls are synchronous and short: the event loop runs one
    handler's read-modify-write without a pause, so no two requests interleave inside it."""

    def __init__(self, path: Path, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._now = now
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        # Write-ahead log with NORMAL sync: a commit survives the sandbox being killed, only not
        # the machine losing power. The rollback journal made every commit create, sync and
        # delete a journal file (0.7 ms here, against 0.02 ms), with the event loop blocked.
        # A copy of the database takes its -wal file along (or is made after a clean stop).
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @staticmethod
    def _row(row: sqlite3.Row) -> StoredDocument:
        return StoredDocument(
            internal_id=int(row["internal_id"]),
            record_type=RecordType(row["record_type"]),
            api=row["api"],
            external_id=row["external_id"],
            document_number=row["document_number"],
            status=row["status"],
            body=orjson.loads(row["body"]),
            writes=int(row["writes"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def _stamp(self) -> str:
        return self._now().isoformat(timespec="microseconds")

    def find(self, record_type: RecordType, external_id: str) -> list[StoredDocument]:
        rows = self._db.execute(
            "SELECT * FROM documents WHERE record_type = ? AND external_id = ? ORDER BY internal_id",
            (record_type.value, external_id),
        )
        return [self._row(r) for r in rows]

    def by_id(self, record_type: RecordType, internal_id: int) -> StoredDocument | None:
        row = self._db.execute(
            "SELECT * FROM documents WHERE record_type = ? AND internal_id = ?",
            (record_type.value, internal_id),
        ).fetchone()
        return self._row(row) if row else None

    def page(
        self, record_type: RecordType, offset: int, limit: int, external_id: str | None = None
    ) -> tuple[list[StoredDocument], int]:
        where, args = "record_type = ?", [record_type.value]
        if external_id is not None:
            where, args = where + " AND external_id = ?", [*args, external_id]
        total = self._db.execute(f"SELECT COUNT(*) FROM documents WHERE {where}", args).fetchone()[0]
        rows = self._db.execute(
            f"SELECT * FROM documents WHERE {where} ORDER BY internal_id LIMIT ? OFFSET ?",
            [*args, limit, offset],
        )
        return [self._row(r) for r in rows], int(total)

    def all(self, record_type: str | None = None, external_id: str | None = None) -> list[StoredDocument]:
        where, args = "1 = 1", list[str]()
        if record_type is not None:
            where, args = where + " AND record_type = ?", [*args, record_type]
        if external_id is not None:
            where, args = where + " AND external_id = ?", [*args, external_id]
        rows = self._db.execute(f"SELECT * FROM documents WHERE {where} ORDER BY internal_id", args)
        return [self._row(r) for r in rows]

    def insert(
        self,
        record_type: RecordType,
        api: Api,
        external_id: str | None,
        status: str,
        body: dict[str, Any],
        numbered: bool,
    ) -> StoredDocument:
        stamp = self._stamp()
        with self._transaction() as db:
            number = self._next_number(db, record_type) if numbered else None
            cursor = db.execute(
                "INSERT INTO documents (record_type, api, external_id, document_number, status, body,"
                " writes, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?)",
                (
                    record_type.value,
                    api,
                    external_id,
                    number,
                    status,
                    orjson.dumps(body).decode(),
                    stamp,
                    stamp,
                ),
            )
            internal_id = int(cursor.lastrowid or 0)
        stored = self.by_id(record_type, internal_id)
        assert stored is not None
        return stored

    def update(
        self,
        doc: StoredDocument,
        body: dict[str, Any],
        status: str,
        *,
        number: bool = False,
        count_write: bool = True,
    ) -> StoredDocument:
        with self._transaction() as db:
            document_number = doc.document_number
            if number and document_number is None:
                document_number = self._next_number(db, doc.record_type)
            db.execute(
                "UPDATE documents SET body = ?, status = ?, document_number = ?, writes = writes + ?,"
                " updated_at = ? WHERE internal_id = ?",
                (
                    orjson.dumps(body).decode(),
                    status,
                    document_number,
                    1 if count_write else 0,
                    self._stamp(),
                    doc.internal_id,
                ),
            )
        stored = self.by_id(doc.record_type, doc.internal_id)
        assert stored is not None
        return stored

    def delete(self, record_type: str, external_id: str) -> int:
        with self._transaction() as db:
            cursor = db.execute(
                "DELETE FROM documents WHERE record_type = ? AND external_id = ?", (record_type, external_id)
            )
            return int(cursor.rowcount)

    @staticmethod
    def _next_number(db: sqlite3.Connection, record_type: RecordType) -> str:
        db.execute(
            "INSERT INTO sequences (record_type, last) VALUES (?, 1)"
            " ON CONFLICT (record_type) DO UPDATE SET last = last + 1",
            (record_type.value,),
        )
        last = db.execute(
            "SELECT last FROM sequences WHERE record_type = ?", (record_type.value,)
        ).fetchone()[0]
        return f"{NUMBER_PREFIXES[record_type]}{int(last):06d}"

    def close_period(self, period: ClosedPeriod) -> None:
        with self._transaction() as db:
            db.execute(
                'INSERT INTO closed_periods (subsidiary, start, "end") VALUES (?, ?, ?)',
                (period.subsidiary, period.start.isoformat(), period.end.isoformat()),
            )

    def closed_periods(self) -> list[ClosedPeriod]:
        rows = self._db.execute('SELECT subsidiary, start, "end" FROM closed_periods ORDER BY id')
        return [
            ClosedPeriod(subsidiary=r[0], start=date.fromisoformat(r[1]), end=date.fromisoformat(r[2]))
            for r in rows
        ]

    def reset(self) -> None:
        with self._transaction() as db:
            for table in ("documents", "sequences", "closed_periods"):
                db.execute(f"DELETE FROM {table}")


@dataclass(frozen=True)
class Refusal:
    """Why the sandbox refuses a write, as the ERP would say it."""

    status: int
    code: str
    message: str


class Sandbox(SandboxState[FaultSettings]):
    """The sandbox's state behind the routes: store, mappings, faults, tokens, request log."""

    name = "erp sandbox"

    def __init__(
        self,
        config: SandboxConfig,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(config.tokens, config.faults, config.seed, config.request_log_size, clock)
        self.config = config
        self.store = DocumentStore(config.db_path)
        self.mappings: Mappings = load_mappings(config.mappings_path)
        self._sleep = sleep

    def issue_token(self) -> tuple[str, float]:
        return self._accept(secrets.token_urlsafe(32), self.config.token_ttl_s), self.config.token_ttl_s

    # -- validation -----------------------------------------------------------------------

    def closed_periods(self) -> list[ClosedPeriod]:
        return [*self.mappings.closed_periods, *self.store.closed_periods()]

    def validate(self, record_type: RecordType, body: dict[str, Any]) -> Refusal | None:
        """The ERP's checks on a record about to be stored (the merged body on an update)."""
        subsidiary_id = _ref(body.get("subsidiary"), "id")
        if subsidiary_id is None:
            return Refusal(400, "USER_ERROR", "Please enter value(s) for: Subsidiary")
        subsidiary = self.mappings.subsidiary(subsidiary_id)
        if subsidiary is None:
            return Refusal(400, "INVALID_KEY_OR_REF", f"Invalid subsidiary reference key {subsidiary_id}.")
        currency = body.get("currency")
        if currency is None and record_type is not RecordType.CUSTOMER:
            return Refusal(400, "USER_ERROR", "Please enter value(s) for: Currency")
        if currency is not None and currency not in subsidiary.currencies:
            return Refusal(
                400,
                "INVALID_KEY_OR_REF",
                f"Invalid currency reference key {currency}: currency {currency} is not enabled for "
                f"subsidiary {subsidiary_id} ({', '.join(subsidiary.currencies)}).",
            )
        bad_amount = _non_minor_amount(body)
        if bad_amount is not None:
            return Refusal(
                400,
                "INVALID_FLD_VALUE",
                f"Invalid value {bad_amount[1]!r} for field {bad_amount[0]}: "
                "amounts are integer minor units.",
            )
        if record_type is RecordType.CUSTOMER:
            return None
        customer = _ref(body.get("customer"), "externalId")
        if customer is None:
            return Refusal(400, "USER_ERROR", "Please enter value(s) for: Customer")
        if not self.store.find(RecordType.CUSTOMER, customer):
            return Refusal(400, "INVALID_KEY_OR_REF", f"Invalid customer reference key {customer}.")
        try:
            tran_date = date.fromisoformat(str(body.get("tranDate")))
        except ValueError:
            return Refusal(
                400, "INVALID_FLD_VALUE", f"Invalid date {body.get('tranDate')!r} for field tranDate."
            )
        if record_type in (RecordType.CUSTOMER_PAYMENT, RecordType.CREDIT_MEMO):
            invoice = _ref(body.get("invoice"), "externalId")
            if invoice is None:
                return Refusal(400, "USER_ERROR", "Please enter value(s) for: Invoice")
            invoices = self.store.find(RecordType.INVOICE, invoice)
            if not invoices:
                return Refusal(400, "INVALID_KEY_OR_REF", f"Invalid invoice reference key {invoice}.")
            if all(doc.status == VOIDED for doc in invoices):
                return Refusal(
                    400, "USER_ERROR", f"Invoice {invoice} is voided: nothing can be applied to it."
                )
        if record_type in POSTING_RECORD_TYPES:
            for period in self.closed_periods():
                if period.start <= tran_date <= period.end and period.subsidiary in ("*", subsidiary_id):
                    return Refusal(
                        400,
                        "USER_ERROR",
                        f"The accounting period {period.start.isoformat()} to {period.end.isoformat()} is "
                        f"closed for subsidiary {subsidiary_id}: a transaction dated {tran_date.isoformat()} "
                        "cannot be posted to it.",
                    )
        return None

    # -- faults and the request log -------------------------------------------------------

    def _request_details(self, request: web.Request) -> dict[str, Any]:
        return {"at": datetime.now(UTC).isoformat(timespec="microseconds"), "query": request.query_string}

    async def sleep(self, seconds: float) -> None:
        await self._sleep(seconds)

    def reset(self) -> None:
        super().reset()
        self.store.reset()


SANDBOX = web.AppKey("sandbox", Sandbox)


def _ref(value: Any, key: str) -> str | None:
    if isinstance(value, dict) and value.get(key) not in (None, ""):
        return str(value[key])
    return None


def _non_minor_amount(body: dict[str, Any]) -> tuple[str, Any] | None:
    def bad(value: Any) -> bool:
        return value is not None and (not isinstance(value, int) or isinstance(value, bool))

    for name in AMOUNT_FIELDS:
        if bad(body.get(name)):
            return name, body[name]
    for i, line in enumerate(body.get("lines") or []):
        if isinstance(line, dict):
            for name in LINE_AMOUNT_FIELDS:
                if bad(line.get(name)):
                    return f"lines[{i}].{name}", line[name]
    return None


def _refuse(
    request: web.Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    # Each API shape answers errors in its own dialect; the client's classify() reads both.
    if request.path.startswith(ODATA_PREFIX):
        return json_response(odata_error_body(code, message), status, headers)
    return json_response(netsuite_error_body(status, code, message), status, headers)


def _record_type(request: web.Request, name: str) -> RecordType:
    try:
        return RecordType(name)
    except ValueError:
        raise Refused(
            _refuse(request, 404, "INVALID_RCRD_TYPE", f"Record type {name!r} does not exist.")
        ) from None


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        payload = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise Refused(
            _refuse(request, 400, "INVALID_CONTENT", "The request body is not valid JSON.")
        ) from None
    if not isinstance(payload, dict):
        raise Refused(_refuse(request, 400, "INVALID_CONTENT", "The request body must be a JSON object."))
    return payload


def _check(request: web.Request, sandbox: Sandbox, record_type: RecordType, body: dict[str, Any]) -> None:
    """Refuse a record the ERP's checks refuse (`Sandbox.validate`)."""
    refusal = sandbox.validate(record_type, body)
    if refusal is not None:
        raise Refused(_refuse(request, refusal.status, refusal.code, refusal.message))


def _page(request: web.Request, names: tuple[str, str], default_size: int, code: str) -> tuple[int, int]:
    """(size, offset) from the query parameters `names` (`limit`/`offset`, `$top`/`$skip`)."""
    size_name, offset_name = names
    try:
        size = int(request.query.get(size_name, str(default_size)))
        offset = int(request.query.get(offset_name, "0"))
    except ValueError:
        message = f"{size_name} and {offset_name} must be integers."
        raise Refused(_refuse(request, 400, code, message)) from None
    if not 1 <= size <= 1000 or offset < 0:
        raise Refused(_refuse(request, 400, code, f"{size_name} must be 1..1000 and {offset_name} >= 0."))
    return size, offset


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


# -- maintenance, auth, faults ------------------------------------------------------------------


async def _faulty(
    sandbox: Sandbox, request: web.Request, handler: Handler, entry: dict[str, Any]
) -> web.StreamResponse:
    faults = sandbox.faults
    # Every call draws the same four numbers whatever the settings, so one seed replays one run.
    rate_limit_draw, error_draw, timeout_draw, latency_draw = (sandbox.rng.random() for _ in range(4))
    in_scope = faults.scope is None or (
        re.search(faults.scope, request.path + (await request.text() if request.can_read_body else ""))
        is not None
    )
    if not in_scope:
        faults = FaultSettings()  # this call is outside the faults' scope: no dice count
    retry_after = {"Retry-After": f"{faults.retry_after_s:g}"}
    if faults.maintenance:
        entry["fault"] = "maintenance"
        return _refuse(
            request, 503, "SERVICE_UNAVAILABLE", "The ERP is down for scheduled maintenance.", retry_after
        )
    if not sandbox.authorized(request):
        return _refuse(
            request,
            401,
            "INVALID_LOGIN",
            "Invalid login attempt. For more details, see the Login Audit Trail in the NetSuite UI.",
            {"WWW-Authenticate": 'Bearer realm="erp-sandbox"'},
        )
    if (in_scope and sandbox.take_burst("burst_429")) or rate_limit_draw < faults.rate_limit_rate:
        entry["fault"] = "rate_limit"
        return _refuse(
            request,
            429,
            "SSS_REQUEST_LIMIT_EXCEEDED",
            "Request blocked by the concurrency limit of this account; retry after the indicated time.",
            retry_after,
        )
    latency_ms = faults.latency_ms + (latency_draw * 2 - 1) * faults.latency_jitter_ms
    if latency_ms > 0:
        await sandbox.sleep(latency_ms / 1000)
    if (in_scope and sandbox.take_burst("burst_500")) or error_draw < faults.error_rate:
        entry["fault"] = "error"
        return _refuse(
            request,
            500,
            "UNEXPECTED_ERROR",
            f"An unexpected error occurred. Error ID: {sandbox.rng.getrandbits(48):012x}",
        )
    response = await handler(request)
    if (in_scope and sandbox.take_burst("burst_timeout")) or timeout_draw < faults.timeout_rate:
        # The effect is committed; only the answer is lost, as when a gateway times out.
        entry["status"] = response.status
        if faults.timeout_mode == "drop":
            entry["fault"] = "drop"
            if request.transport is not None:
                request.transport.close()
        else:
            entry["fault"] = "timeout"
            await sandbox.sleep(faults.hang_s)
    return response


# -- NetSuite REST record shape -------------------------------------------------------------


def _netsuite_view(request: web.Request, doc: StoredDocument) -> dict[str, Any]:
    number_field = "entityId" if doc.record_type is RecordType.CUSTOMER else "tranId"
    href = f"{_origin(request)}{NETSUITE_PREFIX}/{doc.record_type.value}/{doc.internal_id}"
    return {
        **doc.body,
        "links": [{"rel": "self", "href": href}],
        "id": str(doc.internal_id),
        "externalId": doc.external_id,
        number_field: doc.document_number,
        "status": doc.status,
        "createdDate": doc.created_at,
        "lastModifiedDate": doc.updated_at,
    }


def _netsuite_record(request: web.Request, sandbox: Sandbox, record_type: RecordType) -> StoredDocument:
    """The record `{key}` names (`eid:{externalId}` or an internal id), or a 404."""
    key = request.match_info["key"]
    if key.startswith("eid:"):
        found = sandbox.store.find(record_type, key[4:])
        doc = found[0] if found else None
    else:
        doc = sandbox.store.by_id(record_type, int(key)) if key.isdigit() else None
    if doc is None:
        message = "The record instance does not exist. Provide a valid record instance ID."
        raise Refused(_refuse(request, 404, "NONEXISTENT_ID", message))
    return doc


async def _netsuite_collection(request: web.Request) -> web.StreamResponse:
    sandbox = request.app[SANDBOX]
    record_type = _record_type(request, request.match_info["record_type"])
    limit, offset = _page(request, ("limit", "offset"), 1000, "INVALID_PARAMETER")
    docs, total = sandbox.store.page(record_type, offset, limit)
    base = f"{_origin(request)}{NETSUITE_PREFIX}/{record_type.value}"
    links = [{"rel": "self", "href": f"{base}?limit={limit}&offset={offset}"}]
    has_more = offset + len(docs) < total
    if has_more:
        links.append({"rel": "next", "href": f"{base}?limit={limit}&offset={offset + len(docs)}"})
    return json_response(
        {
            "links": links,
            "count": len(docs),
            "hasMore": has_more,
            # Full records, not NetSuite's {"id", "links"} stubs: saves a GET per record.
            "items": [_netsuite_view(request, d) for d in docs],
            "offset": offset,
            "totalResults": total,
        }
    )


async def _netsuite_get(request: web.Request) -> web.StreamResponse:
    sandbox = request.app[SANDBOX]
    record_type = _record_type(request, request.match_info["record_type"])
    return json_response(_netsuite_view(request, _netsuite_record(request, sandbox, record_type)))


def _no_content_at(request: web.Request, doc: StoredDocument) -> web.Response:
    location = f"{_origin(request)}{NETSUITE_PREFIX}/{doc.record_type.value}/{doc.internal_id}"
    return web.Response(status=204, headers={"Location": location})


async def _netsuite_put(request: web.Request) -> web.StreamResponse:
    """Upsert by external id: create with a document number, or merge into the existing one."""
    sandbox = request.app[SANDBOX]
    record_type = _record_type(request, request.match_info["record_type"])
    key = request.match_info["key"]
    if not key.startswith("eid:") or not key[4:]:
        return _refuse(
            request, 405, "METHOD_NOT_ALLOWED", "Upsert (PUT) needs an external id: eid:{externalId}."
        )
    external_id = key[4:]
    if not _EXTERNAL_ID.fullmatch(external_id):
        return _refuse(
            request,
            400,
            "INVALID_FLD_VALUE",
            f"Invalid external id {external_id!r}: use letters, digits, '_' and '-' only.",
        )
    body = await _json_body(request)
    if body.get("externalId") not in (None, external_id):
        return _refuse(request, 400, "INVALID_FLD_VALUE", "externalId in the body differs from the URL.")
    found = sandbox.store.find(record_type, external_id)
    existing = found[0] if found else None
    merged = {**(existing.body if existing else {}), **body, "externalId": external_id}
    status = str(body.get("status") or (existing.status if existing else DEFAULT_STATUS[record_type]))
    _check(request, sandbox, record_type, merged)
    if existing is None:
        doc = sandbox.store.insert(record_type, "netsuite", external_id, status, merged, numbered=True)
    else:
        doc = sandbox.store.update(existing, merged, status, number=True)
    return _no_content_at(request, doc)


async def _netsuite_patch(request: web.Request) -> web.StreamResponse:
    """Update an existing record; never creates (a void of a missing invoice is a 404)."""
    sandbox = request.app[SANDBOX]
    record_type = _record_type(request, request.match_info["record_type"])
    existing = _netsuite_record(request, sandbox, record_type)
    body = await _json_body(request)
    merged = {**existing.body, **body}
    status = str(body.get("status") or existing.status)
    _check(request, sandbox, record_type, merged)
    return _no_content_at(request, sandbox.store.update(existing, merged, status))


_SUITEQL = re.compile(
    r"^\s*SELECT\s+(?P<columns>\w+(?:\s*,\s*\w+)*)\s+FROM\s+(?P<table>\w+)\s+WHERE\s+"
    r"(?:type\s*=\s*'(?P<type>\w+)'\s+AND\s+)?externalid\s+IN\s*\((?P<ids>[^)]*)\)\s*$",
    re.IGNORECASE,
)
_SUITEQL_LITERAL = re.compile(r"\s*'((?:[^']|'')*)'\s*(?:,|$)")
_SUITEQL_RECORDS = {
    (where.table, where.type.lower() if where.type else None): rt for rt, where in SUITEQL_TABLES.items()
}


def _suiteql_row(doc: StoredDocument) -> dict[str, Any]:
    """The columns of a record the sandbox's SuiteQL answers, by SuiteQL's (lowercase) names."""
    return {
        "id": str(doc.internal_id),
        "externalid": doc.external_id,
        SUITEQL_TABLES[doc.record_type].number: doc.document_number,
    }


def _suiteql_ids(request: web.Request, text: str) -> list[str]:
    ids, at = [], 0
    while at < len(text):
        literal = _SUITEQL_LITERAL.match(text, at)
        if literal is None:
            raise Refused(_refuse(request, 400, "INVALID_PARAMETER", "externalid IN takes quoted strings."))
        ids.append(literal.group(1).replace("''", "'"))
        at = literal.end()
    return ids


async def _netsuite_suiteql(request: web.Request) -> web.StreamResponse:
    """The sandbox's SuiteQL: ids and document numbers of the records with these external ids,
    paged like NetSuite (`hasMore`, `offset`, `totalResults`); columns by lowercase name."""
    sandbox = request.app[SANDBOX]
    body = await _json_body(request)
    query = _SUITEQL.match(str(body.get("q") or ""))
    if query is None:
        message = (
            "The sandbox answers SELECT … FROM customer|transaction WHERE [type = '…' AND] externalid IN (…)."
        )
        return _refuse(request, 400, "INVALID_PARAMETER", message)
    table, kind = query["table"].lower(), (query["type"] or "").lower() or None
    record_type = _SUITEQL_RECORDS.get((table, kind))
    if record_type is None:
        return _refuse(request, 400, "INVALID_PARAMETER", f"Unknown table or type: {table} {kind or ''}.")
    columns = [c.strip().lower() for c in query["columns"].split(",")]
    unknown = [c for c in columns if c not in {"id", "externalid", SUITEQL_TABLES[record_type].number}]
    if unknown:
        return _refuse(
            request, 400, "INVALID_PARAMETER", f"Unknown column(s) of {table}: {', '.join(unknown)}."
        )
    external_ids = dict.fromkeys(_suiteql_ids(request, query["ids"]))
    rows = [_suiteql_row(d) for eid in external_ids for d in sandbox.store.find(record_type, eid)]
    limit, offset = _page(request, ("limit", "offset"), 1000, "INVALID_PARAMETER")
    page = rows[offset : offset + limit]
    return json_response(
        {
            "links": [],
            "count": len(page),
            "hasMore": offset + len(page) < len(rows),
            "items": [{"links": [], **{c: row[c] for c in columns}} for row in page],
            "offset": offset,
            "totalResults": len(rows),
        }
    )


# -- create-only OData shape ----------------------------------------------------------------

_TARGET = re.compile(r"^(?P<record_type>[A-Za-z]+)(?:\((?P<id>\d+)\))?$")
_FILTER = re.compile(r"^\s*externalReference\s+eq\s+'(?P<ref>(?:[^']|'')*)'\s*$")


def _odata_view(doc: StoredDocument) -> dict[str, Any]:
    body = {k: v for k, v in doc.body.items() if k != "externalId"}
    return {
        **body,
        "id": str(doc.internal_id),
        "externalReference": doc.external_id,
        "number": doc.document_number,
        "status": doc.status,
        "createdDateTime": doc.created_at,
        "lastModifiedDateTime": doc.updated_at,
    }


def _odata_target(request: web.Request) -> tuple[RecordType, int | None]:
    match = _TARGET.match(request.match_info["target"])
    if match is None:
        raise Refused(_refuse(request, 404, "BadRequest_NotFound", f"No resource at {request.path}."))
    return _record_type(request, match["record_type"]), int(match["id"]) if match["id"] else None


def _odata_entity(
    request: web.Request, sandbox: Sandbox, record_type: RecordType, internal_id: int | None
) -> StoredDocument:
    """The entity `({id})` names, or a 404."""
    doc = sandbox.store.by_id(record_type, internal_id) if internal_id is not None else None
    if doc is None:
        raise Refused(_refuse(request, 404, "BadRequest_NotFound", "The entity does not exist."))
    return doc


async def _odata_get(request: web.Request) -> web.StreamResponse:
    sandbox = request.app[SANDBOX]
    record_type, internal_id = _odata_target(request)
    if internal_id is not None:
        return json_response(_odata_view(_odata_entity(request, sandbox, record_type, internal_id)))
    reference: str | None = None
    if "$filter" in request.query:
        match = _FILTER.match(request.query["$filter"])
        if match is None:
            return _refuse(
                request,
                400,
                "BadRequest",
                "Only $filter=externalReference eq '…' is supported by the sandbox.",
            )
        reference = match["ref"].replace("''", "'")
    top, skip = _page(request, ("$top", "$skip"), 100, "BadRequest")
    docs, total = sandbox.store.page(record_type, skip, top, reference)
    payload: dict[str, Any] = {
        "@odata.context": f"{_origin(request)}{ODATA_PREFIX}/$metadata#{record_type.value}",
        "value": [_odata_view(d) for d in docs],
    }
    if skip + len(docs) < total:
        next_url = request.url.with_query({**request.query, "$top": str(top), "$skip": str(skip + len(docs))})
        payload["@odata.nextLink"] = str(next_url)
    return json_response(payload)


async def _odata_post(request: web.Request) -> web.StreamResponse:
    """Create, always: there is no unique key, so a repeated POST is a duplicate document."""
    sandbox = request.app[SANDBOX]
    record_type, internal_id = _odata_target(request)
    if internal_id is not None:
        return _refuse(
            request, 405, "BadRequest_MethodNotAllowed", "POST creates in an entity set, not an entity."
        )
    body = await _json_body(request)
    reference = body.get("externalReference")
    if reference is not None and not isinstance(reference, str):
        return _refuse(request, 400, "BadRequest", "externalReference must be a string.")
    _check(request, sandbox, record_type, body)
    draft = record_type in DRAFT_RECORD_TYPES
    status = DRAFT if draft else DEFAULT_STATUS[record_type]
    doc = sandbox.store.insert(record_type, "create-only", reference, status, body, numbered=not draft)
    location = f"{_origin(request)}{ODATA_PREFIX}/{record_type.value}({doc.internal_id})"
    return json_response(_odata_view(doc), 201, {"Location": location})


async def _odata_patch(request: web.Request) -> web.StreamResponse:
    sandbox = request.app[SANDBOX]
    record_type, internal_id = _odata_target(request)
    existing = _odata_entity(request, sandbox, record_type, internal_id)
    body = await _json_body(request)
    merged = {**existing.body, **body}
    _check(request, sandbox, record_type, merged)
    return json_response(_odata_view(sandbox.store.update(existing, merged, existing.status)))


async def _odata_action(request: web.Request) -> web.StreamResponse:
    """`Microsoft.NAV.post` books a draft and numbers it; `Microsoft.NAV.cancel` voids."""
    sandbox = request.app[SANDBOX]
    record_type, internal_id = _odata_target(request)
    action = request.match_info["action"]
    if action not in ("Microsoft.NAV.post", "Microsoft.NAV.cancel"):
        return _refuse(request, 404, "BadRequest_NotFound", f"Unknown bound action {action}.")
    existing = _odata_entity(request, sandbox, record_type, internal_id)
    if action == "Microsoft.NAV.post":
        if record_type not in DRAFT_RECORD_TYPES or existing.status != DRAFT:
            return _refuse(
                request,
                400,
                "Application_DocumentNotDraft",
                f"{record_type.value} {internal_id} is not a draft.",
            )
        _check(request, sandbox, record_type, existing.body)
        sandbox.store.update(existing, existing.body, DEFAULT_STATUS[record_type], number=True)
        return web.Response(status=204)
    if existing.status != VOIDED:
        _check(request, sandbox, record_type, existing.body)
        sandbox.store.update(existing, existing.body, VOIDED)
    return web.Response(status=204)


# -- OAuth 2.0 client credentials -----------------------------------------------------------


async def _oauth_token(request: web.Request) -> web.StreamResponse:
    sandbox = request.app[SANDBOX]
    form = {k: str(v) for k, v in (await request.post()).items()}
    no_store = {"Cache-Control": "no-store"}
    if form.get("grant_type") != "client_credentials":
        return json_response({"error": "unsupported_grant_type"}, 400, no_store)
    if not client_authenticated(request, form, sandbox.config.client_id, sandbox.config.client_secret):
        return json_response(
            {"error": "invalid_client", "error_description": "client authentication failed"},
            401,
            {**no_store, "WWW-Authenticate": 'Basic realm="erp-sandbox"'},
        )
    token, expires_in = sandbox.issue_token()
    payload: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "expires_in": expires_in}
    if form.get("scope"):
        payload["scope"] = form["scope"]
    return json_response(payload, 200, no_store)


# -- admin ------------------------------------------------------------------------------------


async def _admin_documents(request: web.Request) -> web.StreamResponse:
    """Every document, and per external id how many documents and writes it has."""
    sandbox = request.app[SANDBOX]
    docs = sandbox.store.all(request.query.get("record_type"), request.query.get("external_id"))
    by_external_id: dict[str, dict[str, dict[str, int]]] = {}
    for doc in docs:
        if doc.external_id is None:
            continue
        counts = by_external_id.setdefault(doc.record_type.value, {}).setdefault(
            doc.external_id, {"documents": 0, "writes": 0}
        )
        counts["documents"] += 1
        counts["writes"] += doc.writes
    duplicates = [
        {"record_type": rt, "external_id": ext, "documents": c["documents"]}
        for rt, per_type in by_external_id.items()
        for ext, c in per_type.items()
        if c["documents"] > 1
    ]
    return json_response(
        {
            "documents": [d.admin_view() for d in docs],
            "by_external_id": by_external_id,
            "duplicates": duplicates,
        }
    )


async def _admin_delete_document(request: web.Request) -> web.StreamResponse:
    sandbox = request.app[SANDBOX]
    deleted = sandbox.store.delete(request.match_info["record_type"], request.match_info["external_id"])
    if deleted == 0:
        return json_response({"deleted": 0, "error": "no such document"}, 404)
    return json_response({"deleted": deleted})


async def _admin_patch_document(request: web.Request) -> web.StreamResponse:
    """Alter stored fields behind the API's back (as a user in the ERP's UI would), for
    reconciliation tests: the JSON object is merged into the body; `status` also sets the
    status. Not counted as a write."""
    sandbox = request.app[SANDBOX]
    record_type = _record_type(request, request.match_info["record_type"])
    changes = await _json_body(request)
    docs = sandbox.store.find(record_type, request.match_info["external_id"])
    if not docs:
        return json_response({"updated": 0, "error": "no such document"}, 404)
    updated = [
        sandbox.store.update(
            doc, {**doc.body, **changes}, str(changes.get("status") or doc.status), count_write=False
        )
        for doc in docs
    ]
    return json_response({"updated": len(updated), "documents": [d.admin_view() for d in updated]})


def _periods_view(sandbox: Sandbox) -> dict[str, Any]:
    return {"closed_periods": [p.model_dump(mode="json") for p in sandbox.closed_periods()]}


async def _admin_close_period(request: web.Request) -> web.StreamResponse:
    sandbox = request.app[SANDBOX]
    body = await _json_body(request)
    try:
        period = ClosedPeriod.model_validate(body)
    except ValidationError as exc:
        return invalid(exc)
    if period.subsidiary != "*" and sandbox.mappings.subsidiary(period.subsidiary) is None:
        return json_response({"error": f"unknown subsidiary {period.subsidiary!r}"}, 400)
    sandbox.store.close_period(period)
    return json_response(_periods_view(sandbox))


async def _admin_periods(request: web.Request) -> web.StreamResponse:
    return json_response(_periods_view(request.app[SANDBOX]))


def build_app(config: SandboxConfig) -> web.Application:
    """The sandbox as an aiohttp application (its SQLite file is closed on cleanup)."""
    sandbox = Sandbox(config)
    app = sandbox_app(SANDBOX, sandbox, "/oauth/", _faulty)

    async def close_store(_: web.Application) -> None:
        sandbox.store.close()

    app.on_cleanup.append(close_store)
    record = NETSUITE_PREFIX + "/{record_type}"
    app.router.add_get(record, _netsuite_collection)
    app.router.add_get(record + "/{key}", _netsuite_get)
    app.router.add_put(record + "/{key}", _netsuite_put)
    app.router.add_patch(record + "/{key}", _netsuite_patch)
    app.router.add_post(SUITEQL_PATH, _netsuite_suiteql)
    entity = ODATA_PREFIX + "/{target}"
    app.router.add_get(entity, _odata_get)
    app.router.add_post(entity, _odata_post)
    app.router.add_patch(entity, _odata_patch)
    app.router.add_post(entity + "/{action}", _odata_action)
    app.router.add_post("/oauth/token", _oauth_token)
    app.router.add_get("/admin/documents", _admin_documents)
    app.router.add_delete("/admin/documents/{record_type}/{external_id}", _admin_delete_document)
    app.router.add_patch("/admin/documents/{record_type}/{external_id}", _admin_patch_document)
    app.router.add_get("/admin/periods", _admin_periods)
    app.router.add_post("/admin/periods/close", _admin_close_period)
    return app


class SandboxServer(AppServer[Sandbox]):
    """A running sandbox on `host:port` (port 0 picks a free one); `url` once started."""

    def __init__(
        self, config: SandboxConfig, host: str = "127.0.0.1", port: int = 0, shutdown_timeout: float = 2.0
    ) -> None:
        self.config = config
        super().__init__(
            build_app(config), SANDBOX, host, port, shutdown_timeout, {"db": str(config.db_path)}
        )


async def serve(
    host: str,
    port: int,
    config: SandboxConfig,
    ready: Callable[[str], None] | None = None,
    handle_signals: bool = False,
) -> None:
    """Run the sandbox until cancelled (or SIGINT/SIGTERM with `handle_signals`); `ready` is
    called with its URL once it listens."""
    stop = asyncio.Event()
    if handle_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    async with SandboxServer(config, host, port) as server:
        if ready is not None:
            ready(server.url)
        await stop.wait()


@click.command("erp-sandbox")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=int, default=8089, show_default=True, help="Port (0 picks a free one).")
@click.option(
    "--db",
    "db_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_DB,
    show_default=True,
    help="SQLite file; documents survive a restart on the same file.",
)
@click.option(
    "--token",
    "tokens",
    multiple=True,
    envvar="LEDGERFLOW_ERP_TOKEN",
    help=f"Bearer token to accept (repeatable; default {DEFAULT_TOKEN!r}).",
)
@click.option(
    "--client-id", default="ledgerflow", show_default=True, help="OAuth client id for /oauth/token."
)
@click.option(
    "--client-secret",
    default="sandbox-secret",
    envvar="LEDGERFLOW_ERP_CLIENT_SECRET",
    help="OAuth client secret for /oauth/token.",
)
@click.option(
    "--token-ttl-s", type=float, default=3600.0, show_default=True, help="Lifetime of OAuth tokens."
)
@click.option(
    "--mappings",
    "mappings_path",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    envvar="LEDGERFLOW_MAPPINGS",
    default=None,
    help="Mappings TOML (subsidiaries, currencies, closed periods); default the bundled example.",
)
@click.option(
    "--error-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="Share of 500s."
)
@click.option(
    "--latency-ms", type=click.FloatRange(0), default=0.0, show_default=True, help="Mean added latency."
)
@click.option(
    "--latency-jitter-ms", type=click.FloatRange(0), default=0.0, show_default=True, help="± jitter."
)
@click.option(
    "--timeout-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of calls committed and then never answered.",
)
@click.option("--timeout-mode", type=click.Choice(["hang", "drop"]), default="hang", show_default=True)
@click.option(
    "--hang-s", type=click.FloatRange(0), default=30.0, show_default=True, help="How long a hang lasts."
)
@click.option(
    "--rate-limit-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="Share of 429s."
)
@click.option(
    "--retry-after-s",
    type=click.FloatRange(0),
    default=1.0,
    show_default=True,
    help="Retry-After of 429/503.",
)
@click.option("--maintenance/--no-maintenance", default=False, help="Answer every API call 503.")
@click.option("--seed", type=int, default=None, help="Seed of the fault dice (repeatable runs).")
def erp_sandbox_command(
    host: str,
    port: int,
    db_path: Path,
    tokens: tuple[str, ...],
    client_id: str,
    client_secret: str,
    token_ttl_s: float,
    mappings_path: Path | None,
    error_rate: float,
    latency_ms: float,
    latency_jitter_ms: float,
    timeout_rate: float,
    timeout_mode: Literal["hang", "drop"],
    hang_s: float,
    rate_limit_rate: float,
    retry_after_s: float,
    maintenance: bool,
    seed: int | None,
) -> None:
    """Run the sandbox ERP (NetSuite REST and create-only OData shapes) until Ctrl-C."""
    try:
        config = SandboxConfig(
            db_path=db_path,
            tokens=tokens or (DEFAULT_TOKEN,),
            client_id=client_id,
            client_secret=SecretStr(client_secret),
            token_ttl_s=token_ttl_s,
            mappings_path=mappings_path,
            faults=FaultSettings(
                error_rate=error_rate,
                latency_ms=latency_ms,
                latency_jitter_ms=latency_jitter_ms,
                timeout_rate=timeout_rate,
                timeout_mode=timeout_mode,
                hang_s=hang_s,
                rate_limit_rate=rate_limit_rate,
                retry_after_s=retry_after_s,
                maintenance=maintenance,
            ),
            seed=seed,
        )
    except ValidationError as exc:
        raise click.ClickException(str(exc)) from exc

    def ready(url: str) -> None:
        click.echo(f"ERP sandbox on {url} (db {db_path}); admin at {url}/admin/documents; Ctrl-C stops it")

    # SIGTERM too (not only Ctrl-C), so `ledgerflow dev` and CI can stop it cleanly.
    asyncio.run(serve(host, port, config, ready, handle_signals=True))
    click.echo("ERP sandbox stopped")
