"""The sandbox ERP (`ledgerflow erp-sandbox`): both ERPs the connector speaks, on SQLite.

* NetSuite REST record shape under `/services/rest/record/v1/{recordType}`: `PUT …/eid:{id}`
  upserts (204 + `Location`), `PATCH …/{eid:id|id}` updates, `GET` reads one record or a page
  (`?limit=&offset=`, each item only the record's `id` and `links`, as NetSuite answers).
* NetSuite SuiteQL, `POST /services/rest/query/v1/suiteql` (`{"q": …}`, `?limit=&offset=`),
  for the one query shape the connector sends: ids and document numbers by external id
  (`SELECT id, externalid, tranid FROM transaction WHERE type = 'CustInvc' AND externalid IN
  ('…', …)`, or `entityid FROM customer`); any other query is refused with a 400.
* Business Central API v2.0 under `/v2.0/{tenant}/{environment}/api/v2.0/…`
  (`connectors.erp.business_central_sandbox`): companies, customers, sales invoices and credit
  memos as drafts that post, payment journals, `$batch`, etags, its rate limit.
* `POST /oauth/token` (client credentials), bearer auth on both APIs; NetSuite's TBA and M2M.
* Validation like each ERP's (field names, references, currencies, closed periods, amounts
  with more decimals than the currency has) from the mappings TOML plus periods closed at runtime.
* Fault injection (errors, latency, committed-then-timeout, 429 bursts, maintenance) from
  flags or `POST /admin/faults`, drawn from a seedable `random.Random`.
* `/admin/…` (no auth; a loopback dev tool): documents with their write and create counts,
  edits for reconciliation tests, period closing, reset, and a log of API requests.

Amounts are major units as each ERP writes them, stored exactly (`netsuite.dumps`/`loads`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import signal
import sqlite3
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import click
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from canonical.money import currency_exponent
from connectors.erp import entra_sandbox, netsuite, netsuite_schema
from connectors.erp.business_central_sandbox import API as BC_API
from connectors.erp.business_central_sandbox import PATH_PREFIX as BC_PATH_PREFIX
from connectors.erp.business_central_sandbox import ROUTE as BC_ROUTE
from connectors.erp.business_central_sandbox import BusinessCentralBooks, BusinessCentralSandboxConfig
from connectors.erp.business_central_sandbox import route as business_central_route
from connectors.erp.entra_sandbox import EntraApp
from connectors.erp.mapping import to_minor_units
from connectors.erp.netsuite_auth import TOKEN_PATH as M2M_TOKEN_PATH
from connectors.erp.netsuite_auth import M2MVerifier, TbaVerifier
from connectors.erp.schemas import (
    POSTING_RECORD_TYPES,
    SUITEQL_TABLES,
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
    sandbox_app,
)
from streams.mappings import ClosedPeriod, Mappings, load_mappings

NETSUITE_PREFIX = "/services/rest/record/v1"
SUITEQL_PATH = "/services/rest/query/v1/suiteql"
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
Api = Literal["netsuite", "business-central"]


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON with the stored records' Decimals written exactly."""
    return web.Response(
        body=netsuite.dumps(payload), status=status, headers=headers, content_type="application/json"
    )


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
    operation_ms: float = Field(default=0.0, ge=0)
    """Business Central: the added latency of each operation of a `$batch`, which the server
    runs one after another (Microsoft gives no figure [UNSURE]; `ledgerflow bench` says what it
    assumed)."""
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
    concurrency_limit: int = Field(default=0, ge=0)
    """NetSuite's per-account concurrency limit: a call made while this many are in flight is
    refused with CONCURRENCY_LIMIT_EXCEEDED (0: no limit)."""
    concurrency_status: Literal[429, 400] = 429
    """The status of that refusal: sources report 429, and 400 from some services [UNSURE]."""
    rate_limit: int = Field(default=0, ge=0)
    """Business Central's rate limit: calls past this many in `rate_window_s` are answered 429
    (0: none). Microsoft documents 6,000 per 5 minutes per user; tests use far fewer."""
    rate_window_s: float = Field(default=300.0, gt=0)
    retry_after_header: bool = True
    """Whether a 429 or 503 says `Retry-After` (NetSuite does; for Business Central it is not
    documented [UNSURE], so its tests run both)."""


class TbaCredential(BaseModel):
    """An integration's consumer key/secret and a user's token id/secret, as NetSuite's TBA
    setup hands them out; the stand-in accepts requests they sign."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    consumer_key: str
    consumer_secret: SecretStr
    token_id: str
    token_secret: SecretStr


class M2MCertificate(BaseModel):
    """A certificate mapped to an integration for M2M (NetSuite: OAuth 2.0 Client Credentials
    Setup): the assertion's `kid` is its id, `iss` the integration's client id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    certificate_id: str
    client_id: str
    certificate_pem: str


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
    account: str = "1234567_SB1"
    """The NetSuite account the stand-in plays: TBA's realm."""
    tba: tuple[TbaCredential, ...] = ()
    """TBA credentials whose signed requests are accepted (OAuth 1.0a, HMAC-SHA256)."""
    m2m: tuple[M2MCertificate, ...] = ()
    """Certificates whose JWT assertions the M2M token endpoint accepts."""
    transform_applies: bool = True
    """Whether `!transform/creditMemo` applies the new memo to its invoice. NetSuite's UI does;
    for REST it is undocumented [UNSURE], so the tests run both and the client handles both."""
    business_central: BusinessCentralSandboxConfig = BusinessCentralSandboxConfig()
    """The Business Central stand-in's tenant, environment and [UNSURE] behaviours."""
    entra_apps: tuple[EntraApp, ...] = ()
    """App registrations the stand-in's Entra tenant issues Business Central tokens to; with
    any, the server also listens on a TLS port for them (`SandboxServer.login_url`)."""


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
-- NetSuite's upsert keys on the external id; Business Central has no such constraint.
CREATE UNIQUE INDEX IF NOT EXISTS documents_netsuite_external_id
    ON documents (record_type, external_id) WHERE api = 'netsuite';
CREATE INDEX IF NOT EXISTS documents_external_id ON documents (record_type, external_id);
CREATE INDEX IF NOT EXISTS documents_status ON documents (record_type, status);
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
            body=netsuite.loads(row["body"]),
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

    def with_status(self, record_type: RecordType, status: str) -> list[StoredDocument]:
        rows = self._db.execute(
            "SELECT * FROM documents WHERE record_type = ? AND status = ? ORDER BY internal_id",
            (record_type.value, status),
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
                    netsuite.dumps(body).decode(),
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
                    netsuite.dumps(body).decode(),
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
        return DocumentStore._next_in(db, record_type.value, NUMBER_PREFIXES[record_type])

    @staticmethod
    def _next_in(db: sqlite3.Connection, sequence: str, prefix: str) -> str:
        db.execute(
            "INSERT INTO sequences (record_type, last) VALUES (?, 1)"
            " ON CONFLICT (record_type) DO UPDATE SET last = last + 1",
            (sequence,),
        )
        last = db.execute("SELECT last FROM sequences WHERE record_type = ?", (sequence,)).fetchone()[0]
        return f"{prefix}{int(last):06d}"

    def next_number(self, sequence: str, prefix: str) -> str:
        """The next number of a named number series (Business Central's No. Series)."""
        with self._transaction() as db:
            return self._next_in(db, sequence, prefix)

    def remove(self, doc: StoredDocument) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM documents WHERE internal_id = ?", (doc.internal_id,))

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
        self.in_flight = 0
        """API calls being answered now (NetSuite's concurrency limit counts them)."""
        self._netsuite = NetSuiteBooks(self) if self.mappings.netsuite is not None else None
        self._business_central = (
            BusinessCentralBooks(self, config.business_central)
            if self.mappings.business_central is not None
            else None
        )
        self._calls: deque[float] = deque()
        """When recent API calls came (Business Central's rate limit counts them)."""
        self.tba = (
            TbaVerifier(
                config.account,
                {c.consumer_key: c.consumer_secret.get_secret_value() for c in config.tba},
                {c.token_id: (c.token_secret.get_secret_value(), c.consumer_key) for c in config.tba},
            )
            if config.tba
            else None
        )
        self.m2m = (
            M2MVerifier("", {c.certificate_id: (c.client_id, c.certificate_pem) for c in config.m2m})
            if config.m2m
            else None
        )

    def authorized(self, request: web.Request) -> bool:
        """A bearer token this sandbox knows or issued, or a valid TBA signature."""
        if self.tba is not None and request.headers.get("Authorization", "").startswith("OAuth "):
            verdict = self.tba.verify(request.method, str(request.url), request.headers)
            if not verdict:
                self.log.info(f"erp sandbox refused a TBA signature: {verdict.reason}")
            return bool(verdict)
        return super().authorized(request)

    def issue_m2m_token(self, token_url: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if self.m2m is None:
            return 400, {"error": "invalid_client", "error_description": "no M2M integration is set up"}
        # `aud` must name the token endpoint the client addressed: this one, on its port.
        self.m2m.token_url = token_url
        status, body = self.m2m.issue(form)
        if status == 200:
            self._accept(str(body["access_token"]), float(body["expires_in"]))
        return status, body

    @property
    def netsuite(self) -> NetSuiteBooks:
        if self._netsuite is None:
            raise _ns_refusal(
                500, "UNEXPECTED_ERROR", "The sandbox's mappings have no [netsuite] section (internal ids)."
            )
        return self._netsuite

    @property
    def business_central(self) -> BusinessCentralBooks:
        if self._business_central is None:
            raise Refused(
                json_response(
                    odata_error_body(
                        "Internal_ServerError", "The sandbox's mappings have no [business_central] section."
                    ),
                    500,
                )
            )
        return self._business_central

    def throttled(self, weight: int = 1) -> bool:
        """Whether `weight` more calls (one, or a `$batch`'s further operations where they count)
        would pass `rate_limit` calls in the last `rate_window_s`; counted when they do not."""
        limit = self.faults.rate_limit
        if not limit:
            return False
        now = self._clock()
        while self._calls and self._calls[0] <= now - self.faults.rate_window_s:
            self._calls.popleft()
        if len(self._calls) + weight > limit:
            return True
        self._calls.extend([now] * weight)
        return False

    def retry_after(self, seconds: float) -> dict[str, str]:
        """The `Retry-After` header of a 429 or 503, unless the stand-in plays an ERP without it."""
        return {"Retry-After": f"{seconds:g}"} if self.faults.retry_after_header else {}

    def issue_entra_token(self, ttl_s: float) -> tuple[str, float]:
        return self._accept(secrets.token_urlsafe(48), ttl_s), ttl_s

    def issue_token(self) -> tuple[str, float]:
        return self._accept(secrets.token_urlsafe(32), self.config.token_ttl_s), self.config.token_ttl_s

    # -- validation -----------------------------------------------------------------------

    def closed_periods(self) -> list[ClosedPeriod]:
        return [*self.mappings.closed_periods, *self.store.closed_periods()]

    # -- faults and the request log -------------------------------------------------------

    def _request_details(self, request: web.Request) -> dict[str, Any]:
        return {"at": datetime.now(UTC).isoformat(timespec="microseconds"), "query": request.query_string}

    async def sleep(self, seconds: float) -> None:
        await self._sleep(seconds)

    def reset(self) -> None:
        super().reset()
        self.store.reset()
        self._calls.clear()
        if self._netsuite is not None:
            self._netsuite.reindex()


SANDBOX = web.AppKey("sandbox", Sandbox)


def _ref(value: Any, key: str) -> str | None:
    if isinstance(value, dict) and value.get(key) not in (None, ""):
        return str(value[key])
    return None


BC_CODES = {
    "INVALID_LOGIN": ("Authentication_InvalidCredentials", "The server has rejected the client credentials."),
    "SSS_REQUEST_LIMIT_EXCEEDED": ("Application_TooManyRequests", "Too many requests reached."),
    "UNEXPECTED_ERROR": ("Internal_ServerError", "An unexpected error occurred."),
    "SERVICE_UNAVAILABLE": ("Internal_ServiceUnavailable", "The service is temporarily unavailable."),
}
"""The faults' refusals in Business Central's words (its codes for 429 and 5xx are not
documented [UNSURE]: the client reads the status)."""


def _refuse(
    request: web.Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    # Each API shape answers errors in its own dialect; the client's classify() reads both.
    if request.path.startswith(BC_PATH_PREFIX):
        bc_code, bc_message = BC_CODES.get(code, (code, message))
        return json_response(odata_error_body(bc_code, bc_message), status, headers)
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
        payload = netsuite.loads(await request.read())
    except ValueError:
        raise Refused(
            _refuse(request, 400, "INVALID_CONTENT", "The request body is not valid JSON.")
        ) from None
    if not isinstance(payload, dict):
        raise Refused(_refuse(request, 400, "INVALID_CONTENT", "The request body must be a JSON object."))
    return payload


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
    retry_after = sandbox.retry_after(faults.retry_after_s)
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
    if (
        (in_scope and sandbox.take_burst("burst_429"))
        or rate_limit_draw < faults.rate_limit_rate
        or sandbox.throttled()
    ):
        entry["fault"] = "rate_limit"
        return _refuse(
            request,
            429,
            "SSS_REQUEST_LIMIT_EXCEEDED",
            "Request blocked by the concurrency limit of this account; retry after the indicated time.",
            retry_after,
        )
    if sandbox.faults.concurrency_limit and sandbox.in_flight >= sandbox.faults.concurrency_limit:
        # Counted for every call, in scope or not: the limit is the account's, shared by all.
        entry["fault"] = "concurrency_limit"
        return _refuse(
            request,
            sandbox.faults.concurrency_status,
            "CONCURRENCY_LIMIT_EXCEEDED",
            "Concurrent request limit exceeded. Request blocked.",
        )
    sandbox.in_flight += 1
    try:
        return await _answer(
            sandbox, request, handler, entry, faults, error_draw, timeout_draw, latency_draw, in_scope
        )
    finally:
        sandbox.in_flight -= 1


async def _answer(
    sandbox: Sandbox,
    request: web.Request,
    handler: Handler,
    entry: dict[str, Any],
    faults: FaultSettings,
    error_draw: float,
    timeout_draw: float,
    latency_draw: float,
    in_scope: bool,
) -> web.StreamResponse:
    """A call within the concurrency limit: latency, errors, the answer, a lost answer."""
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
#
# As strict as a real account (shared/research/erp-apis.md §A): NetSuite's field names and
# types from netsuite_records.json, references by internal id that must exist (configuration
# records from the mappings' [netsuite] section), amounts in major units with at most the
# currency's decimals, totals computed from the lines, the apply sublist lowering an invoice's
# amountRemaining, upserts that append non-keyed sublist lines unless `?replace=` names them.

ITEM_SUBLISTS = ("item", "taxDetails")
"""Sublists without a key: a write appends its lines unless `?replace=` names the sublist."""
KEYED_SUBLISTS = {"apply": "doc"}
"""Sublists keyed by a field: a line for the same key replaces the stored one."""
COMPUTED = (
    "subtotal",
    "taxTotal",
    "total",
    "amountRemaining",
    "amountPaid",
    "applied",
    "unapplied",
    "status",
)
OPEN = {"id": "A", "refName": "Open"}
PAID_IN_FULL = {"id": "B", "refName": "Paid In Full"}
FULLY_APPLIED = {"id": "B", "refName": "Fully Applied"}
DEPOSITED = {"id": "C", "refName": "Deposited"}
_CONFIG_TYPES = {
    "subsidiary": "subsidiaries",
    "currency": "currencies",
    "item": "items",
    "account": "accounts",
}


def _ns_refusal(status: int, code: str, detail: str, path: str | None = None) -> Refused:
    body = netsuite_error_body(status, code, detail)
    if path:
        body["o:errorDetails"][0]["o:errorPath"] = path
    return Refused(ns_json(body, status))


def ns_json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A NetSuite answer: Decimals written exactly, in NetSuite's media type."""
    if status >= 400:
        kind = "error"
    else:
        kind = "collection" if isinstance(payload, dict) and "items" in payload else "singular"
    response = web.Response(body=netsuite.dumps(payload), status=status, headers=headers)
    response.headers["Content-Type"] = f"application/vnd.oracle.resource+json; type={kind}; charset=UTF-8"
    return response


async def _ns_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        payload = netsuite.loads(raw) if raw else {}
    except ValueError:
        raise _ns_refusal(400, "INVALID_CONTENT", "The request body is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise _ns_refusal(400, "INVALID_CONTENT", "The request body must be a JSON object.")
    return payload


class NetSuiteBooks:
    """The NetSuite stand-in's rules over the sandbox's store: what a write may say, what it
    references, what it computes."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        ids = sandbox.mappings.netsuite
        if ids is None:
            raise ValueError("the NetSuite stand-in needs the mappings' [netsuite] section")
        self.ids = ids
        self.config_ids: dict[str, frozenset[str]] = {
            kind: frozenset(getattr(ids, table).values()) for kind, table in _CONFIG_TYPES.items()
        }
        self.config_ids["salesTaxItem"] = frozenset(t.id for t in ids.tax_codes.values())
        self.custom_fields = frozenset(ids.fields.model_dump().values())
        self.subsidiary_codes = {v: k for k, v in ids.subsidiaries.items()}
        self._applications: dict[str, dict[int, Decimal]] = {}
        """Invoice internal id → {payment or credit memo internal id: amount applied}."""
        self._sources: dict[int, set[str]] = {}
        """Payment or credit memo internal id → the invoices it applies to."""
        self.reindex()

    def reindex(self) -> None:
        """Rebuild the applications index from the store (at start, after a reset or delete)."""
        self._applications, self._sources = {}, {}
        for record_type in (RecordType.CUSTOMER_PAYMENT, RecordType.CREDIT_MEMO):
            for doc in self.sandbox.store.all(record_type.value):
                self.written(doc)

    def written(self, doc: StoredDocument) -> StoredDocument:
        """Note what a stored payment or credit memo applies (its lines replace earlier ones)."""
        for invoice_id in self._sources.pop(doc.internal_id, set()):
            self._applications.get(invoice_id, {}).pop(doc.internal_id, None)
        for line in _applied(doc.body):
            applied_to = _ref(line.get("doc"), "id")
            if applied_to is not None:
                invoice_id = applied_to
                self._sources.setdefault(doc.internal_id, set()).add(invoice_id)
                per_doc = self._applications.setdefault(invoice_id, {})
                per_doc[doc.internal_id] = per_doc.get(doc.internal_id, Decimal(0)) + Decimal(
                    line.get("amount") or 0
                )
        return doc

    # -- checks -------------------------------------------------------------------------------

    def exponent(self, body: dict[str, Any]) -> int | None:
        currency = _ref(body.get("currency"), "id")
        code = self.ids.currency_code(currency) if currency else None
        return currency_exponent(code) if code else None

    def names(
        self, record_type: RecordType, body: dict[str, Any], strict: bool
    ) -> tuple[dict[str, Any], list[str]]:
        """The body with unknown field names dropped (with a warning each) unless `strict`
        (`X-NetSuite-PropertyNameValidation: Error`), where the first one is refused."""
        problems = netsuite_schema.check(record_type.value, body, None, self.custom_fields, partial=True)
        unknown = [p for p in problems if p.kind in ("unknown", "read_only")]
        if unknown and strict:
            raise _ns_refusal(400, unknown[0].code, unknown[0].detail, unknown[0].path)
        warnings = [p.detail for p in unknown]
        for problem in unknown:
            if "." not in problem.path:
                body.pop(problem.path, None)
        return body, warnings

    def check(self, record_type: RecordType, body: dict[str, Any], existing: StoredDocument | None) -> None:
        """Refuse a merged record the way NetSuite would; the first problem wins."""
        problems = [
            p
            for p in netsuite_schema.check(record_type.value, body, self.exponent(body), self.custom_fields)
            if p.kind != "read_only"  # what NetSuite set itself (createdFrom), kept on the record
        ]
        if problems:
            problem = problems[0]
            raise _ns_refusal(400, problem.code, problem.detail, problem.path)
        for reference in netsuite_schema.references(record_type.value, body):
            self._reference_exists(reference, body)
        if record_type is RecordType.CUSTOMER:
            self._currency_enabled(body)
            return
        self._same_subsidiary_as_customer(record_type, body)
        self._currency_enabled(body)
        self._open_period(record_type, body)
        if record_type in (RecordType.INVOICE, RecordType.CREDIT_MEMO, RecordType.SALES_ORDER):
            if not (body.get("item") or {}).get("items"):
                raise _ns_refusal(
                    400, "USER_ERROR", "You must enter at least one line item for this transaction."
                )
            self._tax_details(body)
        if record_type in (RecordType.CUSTOMER_PAYMENT, RecordType.CREDIT_MEMO):
            self._applies(record_type, body, existing)

    def _reference_exists(self, reference: netsuite_schema.Reference, body: dict[str, Any]) -> None:
        if reference.id is None:
            raise _ns_refusal(
                400,
                "INVALID_KEY_OR_REF",
                f"Invalid {reference.record_type} reference: reference it by internal id.",
                reference.path,
            )
        known: bool
        if reference.record_type in self.config_ids:
            known = reference.id in self.config_ids[reference.record_type]
        elif reference.record_type == "customer":
            known = self._by_id(RecordType.CUSTOMER, reference.id) is not None
        elif reference.record_type == "transaction":
            known = self._by_id(RecordType.INVOICE, reference.id) is not None
        elif reference.record_type == "taxDetailsReference":
            lines = (body.get("item") or {}).get("items") or []
            known = any(line.get("taxDetailsReference") == reference.id for line in lines)
        else:
            known = False  # terms, locations, departments …: this account has none
        if not known:
            raise _ns_refusal(
                400,
                "INVALID_CONTENT",
                "Error while accessing resource: You have entered an Invalid Field Value "
                f"{reference.id} for the following field: {reference.path.rsplit('.', 1)[-1]}",
                reference.path,
            )

    def _by_id(self, record_type: RecordType, internal_id: str) -> StoredDocument | None:
        return self.sandbox.store.by_id(record_type, int(internal_id)) if internal_id.isdigit() else None

    def _customer_of(self, body: dict[str, Any]) -> StoredDocument:
        customer_id = _ref(body.get("entity") or body.get("customer"), "id") or ""
        customer = self._by_id(RecordType.CUSTOMER, customer_id)
        assert customer is not None  # the reference check ran first
        return customer

    def _same_subsidiary_as_customer(self, record_type: RecordType, body: dict[str, Any]) -> None:
        customer = self._customer_of(body)
        theirs = _ref(customer.body.get("subsidiary"), "id")
        ours = _ref(body.get("subsidiary"), "id") or theirs
        if ours != theirs:
            raise _ns_refusal(
                400,
                "USER_ERROR",
                f"Invalid subsidiary reference key {ours} for entity {customer.internal_id}: the customer "
                f"belongs to subsidiary {theirs}.",
                "subsidiary",
            )

    def _currency_enabled(self, body: dict[str, Any]) -> None:
        subsidiary_id = _ref(body.get("subsidiary"), "id")
        currency_id = _ref(body.get("currency"), "id")
        code = self.subsidiary_codes.get(subsidiary_id or "")
        subsidiary = self.sandbox.mappings.subsidiary(code) if code else None
        currency = self.ids.currency_code(currency_id) if currency_id else None
        if subsidiary is not None and currency is not None and currency not in subsidiary.currencies:
            raise _ns_refusal(
                400,
                "INVALID_KEY_OR_REF",
                f"Invalid currency reference key {currency_id}: {currency} is not enabled for subsidiary "
                f"{subsidiary_id}.",
                "currency",
            )

    def _open_period(self, record_type: RecordType, body: dict[str, Any]) -> None:
        if record_type not in POSTING_RECORD_TYPES:
            return
        tran_date = date.fromisoformat(str(body["tranDate"])[:10])
        code = self.subsidiary_codes.get(_ref(body.get("subsidiary"), "id") or "", "")
        for period in self.sandbox.closed_periods():
            if period.start <= tran_date <= period.end and period.subsidiary in ("*", code):
                raise _ns_refusal(
                    400,
                    "USER_ERROR",
                    f"The accounting period {period.start.isoformat()} to {period.end.isoformat()} is "
                    f"closed for subsidiary {code}: a transaction dated {tran_date.isoformat()} cannot be "
                    "posted to it.",
                    "tranDate",
                )

    @staticmethod
    def _tax_details(body: dict[str, Any]) -> None:
        taxes = (body.get("taxDetails") or {}).get("items") or []
        if taxes and body.get("taxDetailsOverride") is not True:
            raise _ns_refusal(
                400, "USER_ERROR", "Tax details can only be entered when Tax Details Override is checked."
            )

    def _applies(
        self, record_type: RecordType, body: dict[str, Any], existing: StoredDocument | None
    ) -> None:
        customer = self._customer_of(body)
        own_total = self.totals(record_type, body)["total"]
        applied = Decimal(0)
        for i, line in enumerate((body.get("apply") or {}).get("items") or []):
            if line.get("apply") is not True:
                continue
            path = f"apply.items[{i}]"
            invoice = self._by_id(RecordType.INVOICE, _ref(line.get("doc"), "id") or "")
            assert invoice is not None
            if _ref(invoice.body.get("entity"), "id") != str(customer.internal_id):
                raise _ns_refusal(
                    400, "USER_ERROR", "The transaction to apply to belongs to another customer.", path
                )
            amount = line.get("amount")
            if amount is None or amount <= 0:
                raise _ns_refusal(
                    400, "USER_ERROR", "Please enter a positive amount to apply.", f"{path}.amount"
                )
            remaining = self.remaining(invoice, excluding=existing)
            if amount > remaining:
                raise _ns_refusal(
                    400,
                    "USER_ERROR",
                    f"You cannot apply {amount} to invoice {invoice.internal_id}: {remaining} remains due.",
                    f"{path}.amount",
                )
            applied += amount
        if applied > own_total:
            raise _ns_refusal(
                400,
                "USER_ERROR",
                f"The total applied ({applied}) exceeds the amount of the transaction ({own_total}).",
            )

    # -- what NetSuite computes ---------------------------------------------------------------

    def totals(self, record_type: RecordType, body: dict[str, Any]) -> dict[str, Decimal]:
        if record_type is RecordType.CUSTOMER_PAYMENT:
            payment = Decimal(body.get("payment") or 0)
            applied = sum((Decimal(line.get("amount") or 0) for line in _applied(body)), Decimal(0))
            return {"total": payment, "applied": applied, "unapplied": payment - applied}
        exponent = self.exponent(body) or 0
        subtotal = Decimal(0)
        for line in (body.get("item") or {}).get("items") or []:
            amount = line.get("amount")
            if amount is None:  # NetSuite derives the amount from rate and quantity
                amount = (Decimal(line.get("rate") or 0) * Decimal(line.get("quantity") or 1)).quantize(
                    Decimal(1).scaleb(-exponent)
                )
            subtotal += Decimal(amount)
        tax = Decimal(0)
        if body.get("taxDetailsOverride") is True:
            tax = sum(
                (Decimal(t["taxAmount"]) for t in (body.get("taxDetails") or {}).get("items") or []),
                Decimal(0),
            )
        totals = {"subtotal": subtotal, "taxTotal": tax, "total": subtotal + tax}
        if record_type is RecordType.CREDIT_MEMO:
            applied = sum((Decimal(line.get("amount") or 0) for line in _applied(body)), Decimal(0))
            totals |= {"applied": applied, "unapplied": totals["total"] - applied}
        return totals

    def remaining(self, invoice: StoredDocument, excluding: StoredDocument | None = None) -> Decimal:
        """What is still due on an invoice: its total less every payment and credit applied."""
        total = self.totals(RecordType.INVOICE, invoice.body)["total"]
        for source, amount in self._applications.get(str(invoice.internal_id), {}).items():
            if excluding is None or source != excluding.internal_id:
                total -= amount
        return total

    def summary(self, doc: StoredDocument) -> dict[str, Any]:
        """What tests and operators check of a record, in ledgerflow's terms: its amount and
        what remains due in minor units of its ISO currency, the invoices it is applied to,
        and the invoice it was transformed from (external ids)."""
        currency_id = _ref(doc.body.get("currency"), "id")
        currency = self.ids.currency_code(currency_id) if currency_id else None
        out: dict[str, Any] = {"currency": currency}
        if doc.record_type is RecordType.CUSTOMER or currency is None:
            return out

        def minor(value: Decimal) -> int:
            return to_minor_units(value, currency)

        out["amount"] = minor(self.totals(doc.record_type, doc.body)["total"])
        customer = self._by_id(
            RecordType.CUSTOMER, _ref(doc.body.get("entity") or doc.body.get("customer"), "id") or ""
        )
        out["customer"] = customer.external_id if customer is not None else None
        if doc.record_type is RecordType.INVOICE:
            out["remaining"] = minor(self.remaining(doc))
        out["applied_to"] = {
            self._external_id(_ref(line.get("doc"), "id")): minor(Decimal(line.get("amount") or 0))
            for line in _applied(doc.body)
        }
        created_from = _ref(doc.body.get("createdFrom"), "id")
        if created_from is not None:
            out["created_from"] = self._external_id(created_from)
        return out

    def _external_id(self, invoice_id: str | None) -> str | None:
        invoice = self._by_id(RecordType.INVOICE, invoice_id or "")
        return invoice.external_id if invoice is not None else None

    def view(self, request: web.Request, doc: StoredDocument, expand: bool) -> dict[str, Any]:
        """A record as NetSuite answers a GET: computed fields, references with links,
        sublists as links unless `expandSubResources=true`."""
        href = f"{_origin(request)}{NETSUITE_PREFIX}/{doc.record_type.value}/{doc.internal_id}"
        body: dict[str, Any] = {}
        for name, value in doc.body.items():
            if isinstance(value, dict) and "items" in value:
                body[name] = value if expand else {"links": [{"rel": "self", "href": f"{href}/{name}"}]}
            else:
                body[name] = value
        if doc.record_type is not RecordType.CUSTOMER:
            totals = self.totals(doc.record_type, doc.body)
            body |= totals
            if doc.record_type is RecordType.INVOICE:
                remaining = self.remaining(doc)
                body |= {"amountRemaining": remaining, "amountPaid": totals["total"] - remaining}
                body["status"] = PAID_IN_FULL if remaining <= 0 else OPEN
            elif doc.record_type is RecordType.CREDIT_MEMO:
                body["status"] = FULLY_APPLIED if totals["unapplied"] <= 0 else OPEN
                body["amountRemaining"] = totals["unapplied"]
            elif doc.record_type is RecordType.CUSTOMER_PAYMENT:
                body["status"] = DEPOSITED
            if doc.status != DEFAULT_STATUS[doc.record_type]:  # set through /admin, as in NetSuite's UI
                body["status"] = {"id": doc.status, "refName": doc.status}
        number_field = "entityId" if doc.record_type is RecordType.CUSTOMER else "tranId"
        return {
            **body,
            "links": [{"rel": "self", "href": href}],
            "id": str(doc.internal_id),
            "externalId": doc.external_id,
            number_field: doc.document_number,
            "createdDate": doc.created_at,
            "lastModifiedDate": doc.updated_at,
        }


def _applied(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [line for line in (body.get("apply") or {}).get("items") or [] if line.get("apply") is True]


def _merge(stored: dict[str, Any], body: dict[str, Any], replace: set[str]) -> dict[str, Any]:
    """A write over a stored record as NetSuite merges it: body fields replace, non-keyed
    sublist lines append (unless `replace` names the sublist), keyed ones replace by key."""
    merged = {**stored}
    for name, value in body.items():
        old = stored.get(name)
        if not (isinstance(value, dict) and "items" in value and isinstance(old, dict)) or name in replace:
            merged[name] = value
            continue
        key = KEYED_SUBLISTS.get(name)
        if key is None:
            merged[name] = {"items": [*(old.get("items") or []), *(value.get("items") or [])]}
            continue
        lines = {_ref(line.get(key), "id"): line for line in old.get("items") or []}
        lines |= {_ref(line.get(key), "id"): line for line in value.get("items") or []}
        merged[name] = {"items": list(lines.values())}
    return merged


def _netsuite_record(request: web.Request, sandbox: Sandbox, record_type: RecordType) -> StoredDocument:
    """The record `{key}` names (`eid:{externalId}` or an internal id), or a 404."""
    key = request.match_info["key"]
    if key.startswith("eid:"):
        found = sandbox.store.find(record_type, key[4:])
        doc = found[0] if found else None
    else:
        doc = sandbox.store.by_id(record_type, int(key)) if key.isdigit() else None
    if doc is None:
        raise _ns_refusal(
            404, "NONEXISTENT_ID", "The record instance does not exist. Provide a valid record instance ID."
        )
    return doc


def _ns_record_type(request: web.Request) -> RecordType:
    name = request.match_info["record_type"]
    try:
        return RecordType(name)
    except ValueError:
        raise _ns_refusal(404, "INVALID_RCRD_TYPE", f"Record type {name!r} does not exist.") from None


async def _netsuite_collection(request: web.Request) -> web.StreamResponse:
    sandbox = request.app[SANDBOX]
    record_type = _ns_record_type(request)
    limit, offset = _page(request, ("limit", "offset"), 1000, "INVALID_PARAMETER")
    docs, total = sandbox.store.page(record_type, offset, limit)
    base = f"{_origin(request)}{NETSUITE_PREFIX}/{record_type.value}"
    links = [{"rel": "self", "href": f"{base}?limit={limit}&offset={offset}"}]
    has_more = offset + len(docs) < total
    if has_more:
        links.append({"rel": "next", "href": f"{base}?limit={limit}&offset={offset + len(docs)}"})
    return ns_json(
        {
            "links": links,
            "count": len(docs),
            "hasMore": has_more,
            # As NetSuite: each item is the record's id and a link to it, never the record.
            "items": [
                {"links": [{"rel": "self", "href": f"{base}/{d.internal_id}"}], "id": str(d.internal_id)}
                for d in docs
            ],
            "offset": offset,
            "totalResults": total,
        }
    )


async def _netsuite_get(request: web.Request) -> web.StreamResponse:
    sandbox = request.app[SANDBOX]
    doc = _netsuite_record(request, sandbox, _ns_record_type(request))
    expand = request.query.get("expandSubResources", "").lower() == "true"
    return ns_json(sandbox.netsuite.view(request, doc, expand))


def _no_content_at(request: web.Request, doc: StoredDocument, warnings: list[str]) -> web.Response:
    # NetSuite's Location names the record type in lower case for some types (customerpayment).
    location = f"{_origin(request)}{NETSUITE_PREFIX}/{doc.record_type.value.lower()}/{doc.internal_id}"
    response = web.Response(status=204, headers={"Location": location})
    for warning in warnings:
        response.headers.add("X-NetSuite-Warning", warning)
    return response


def _strict_names(request: web.Request) -> bool:
    # NetSuite's default is Warning: an unknown field is dropped, said only in a header.
    return request.headers.get("X-NetSuite-PropertyNameValidation", "Warning").lower() == "error"


def _replaced(request: web.Request) -> set[str]:
    return {name.strip() for name in request.query.get("replace", "").split(",") if name.strip()}


async def _netsuite_write(
    request: web.Request, existing: StoredDocument | None, external_id: str | None
) -> web.Response:
    sandbox = request.app[SANDBOX]
    record_type = _ns_record_type(request)
    books = sandbox.netsuite
    body, warnings = books.names(record_type, await _ns_body(request), _strict_names(request))
    if body.get("externalId") not in (None, external_id) and external_id is not None:
        raise _ns_refusal(
            400, "INVALID_CONTENT", "externalId in the body differs from the URL.", "externalId"
        )
    merged = _merge(existing.body if existing else {}, body, _replaced(request))
    if external_id is not None:
        merged["externalId"] = external_id
    books.check(record_type, merged, existing)
    if existing is None:
        status = DEFAULT_STATUS[record_type]
        doc = sandbox.store.insert(record_type, "netsuite", external_id, status, merged, numbered=True)
    else:
        doc = sandbox.store.update(existing, merged, existing.status, number=True)
    return _no_content_at(request, books.written(doc), warnings)


async def _netsuite_put(request: web.Request) -> web.StreamResponse:
    """Upsert by external id (`PUT …/eid:{externalId}`): create, or merge into the record."""
    sandbox = request.app[SANDBOX]
    record_type = _ns_record_type(request)
    key = request.match_info["key"]
    if not key.startswith("eid:") or not key[4:]:
        raise _ns_refusal(405, "METHOD_NOT_ALLOWED", "Upsert (PUT) needs an external id: eid:{externalId}.")
    external_id = key[4:]
    if not _EXTERNAL_ID.fullmatch(external_id):
        raise _ns_refusal(
            400,
            "INVALID_CONTENT",
            f"Invalid external id {external_id!r}: use letters, digits, '_' and '-' only.",
        )
    found = sandbox.store.find(record_type, external_id)
    return await _netsuite_write(request, found[0] if found else None, external_id)


async def _netsuite_patch(request: web.Request) -> web.StreamResponse:
    """Update an existing record; never creates."""
    sandbox = request.app[SANDBOX]
    existing = _netsuite_record(request, sandbox, _ns_record_type(request))
    return await _netsuite_write(request, existing, existing.external_id)


async def _netsuite_transform(request: web.Request) -> web.StreamResponse:
    """`POST /invoice/{id}/!transform/creditMemo`: a credit memo from the invoice, its lines
    and tax copied, linked by `createdFrom`; applied to the invoice when the sandbox's
    `transform_applies` says so (undocumented for REST: the tests run both)."""
    sandbox = request.app[SANDBOX]
    books = sandbox.netsuite
    if (
        request.match_info["record_type"] != RecordType.INVOICE.value
        or request.match_info["target"] != "creditMemo"
    ):
        raise _ns_refusal(400, "INVALID_PARAMETER", "The sandbox transforms invoices into credit memos only.")
    if not request.match_info["key"].isdigit():
        raise _ns_refusal(400, "INVALID_PARAMETER", "A transform takes the invoice's internal id.")
    invoice = _netsuite_record(request, sandbox, RecordType.INVOICE)
    body, warnings = books.names(RecordType.CREDIT_MEMO, await _ns_body(request), _strict_names(request))
    external_id = body.get("externalId")
    if external_id is not None and sandbox.store.find(RecordType.CREDIT_MEMO, str(external_id)):
        raise _ns_refusal(
            400, "DUP_RCRD", f"A credit memo with external id {external_id} already exists.", "externalId"
        )
    memo: dict[str, Any] = {
        name: invoice.body[name]
        for name in ("entity", "subsidiary", "currency", "item", "taxDetailsOverride", "taxDetails")
        if name in invoice.body
    }
    memo = _merge(memo, body, _replaced(request) | {"item", "taxDetails"} & set(body))
    memo.setdefault("tranDate", datetime.now(UTC).date().isoformat())
    if sandbox.config.transform_applies:
        remaining = books.remaining(invoice)
        if remaining > 0:
            total = books.totals(RecordType.CREDIT_MEMO, memo)["total"]
            memo["apply"] = {
                "items": [
                    {"doc": {"id": str(invoice.internal_id)}, "apply": True, "amount": min(remaining, total)}
                ]
            }
    books.check(RecordType.CREDIT_MEMO, memo, None)
    memo["createdFrom"] = {"id": str(invoice.internal_id)}
    doc = sandbox.store.insert(
        RecordType.CREDIT_MEMO,
        "netsuite",
        str(external_id) if external_id else None,
        DEFAULT_STATUS[RecordType.CREDIT_MEMO],
        memo,
        numbered=True,
    )
    return _no_content_at(request, books.written(doc), warnings)


_SUITEQL = re.compile(
    r"^\s*SELECT\s+(?P<columns>\w+(?:\s*,\s*\w+)*)\s+FROM\s+(?P<table>\w+)\s+WHERE\s+"
    r"(?:type\s*=\s*'(?P<type>\w+)'\s+AND\s+)?(?P<key>externalid|id|scriptid)\s+IN\s*\((?P<ids>[^)]*)\)\s*$",
    re.IGNORECASE,
)
_SUITEQL_LITERAL = re.compile(r"\s*'((?:[^']|'')*)'\s*(?:,|$)")
_SUITEQL_RECORDS = {
    (where.table, where.type.lower() if where.type else None): rt for rt, where in SUITEQL_TABLES.items()
}
_SUITEQL_CONFIG: dict[str, tuple[str, ...]] = {
    "subsidiary": ("id", "name"),
    "currency": ("id", "symbol"),
    "item": ("id", "itemid"),
    "account": ("id", "acctnumber"),
    "salestaxitem": ("id", "itemid"),
    "customfield": ("scriptid",),
}
"""Configuration tables the sandbox's SuiteQL answers, with their columns; the first is the
key a query selects by (`WHERE id IN (…)`, `WHERE scriptid IN (…)`)."""


def _suiteql_row(doc: StoredDocument) -> dict[str, Any]:
    """The columns of a record the sandbox's SuiteQL answers, by SuiteQL's (lowercase) names."""
    return {
        "id": str(doc.internal_id),
        "externalid": doc.external_id,
        SUITEQL_TABLES[doc.record_type].number: doc.document_number,
    }


def _suiteql_config_rows(sandbox: Sandbox, table: str) -> dict[str, dict[str, Any]]:
    """A configuration table's rows by key: the records the mappings' [netsuite] section names
    are the account's whole configuration, so `ledgerflow erp check` against the sandbox finds
    exactly what the sandbox accepts in a write (and an id the section does not name is missing)."""
    ids = sandbox.netsuite.ids
    rows: list[dict[str, Any]]
    if table == "subsidiary":
        rows = [
            {"id": sid, "name": sub.name if (sub := sandbox.mappings.subsidiary(code)) else None}
            for code, sid in ids.subsidiaries.items()
        ]
    elif table == "currency":
        rows = [{"id": cid, "symbol": code} for code, cid in ids.currencies.items()]
    elif table == "item":
        rows = [{"id": iid, "itemid": code} for code, iid in ids.items.items()]
    elif table == "account":
        rows = [{"id": aid, "acctnumber": number} for number, aid in ids.accounts.items()]
    elif table == "salestaxitem":
        rows = [{"id": tax.id, "itemid": code} for code, tax in ids.tax_codes.items()]
    else:  # customfield: NetSuite keeps script ids upper-case
        rows = [{"scriptid": str(scriptid).upper()} for scriptid in ids.fields.model_dump().values()]
    key = _SUITEQL_CONFIG[table][0]
    by_key: dict[str, dict[str, Any]] = {}
    for row in rows:
        by_key.setdefault(row[key], row)  # two codes naming one record: it is one row
    return by_key


def _suiteql_columns(
    request: web.Request, table: str, columns: list[str], known: tuple[str, ...], key: str
) -> None:
    """Refuse a query by another key than the table's (the first of `known`) or naming a column
    the table does not have, as NetSuite refuses an unknown field."""
    unknown = [c for c in columns if c not in known]
    if key != known[0]:
        message = f"The sandbox selects {table} by {known[0]}, not {key}."
    elif unknown:
        message = f"Unknown column(s) of {table}: {', '.join(unknown)}."
    else:
        return
    raise Refused(_refuse(request, 400, "INVALID_PARAMETER", message))


def _suiteql_ids(request: web.Request, key: str, text: str) -> list[str]:
    ids, at = [], 0
    while at < len(text):
        literal = _SUITEQL_LITERAL.match(text, at)
        if literal is None:
            raise Refused(_refuse(request, 400, "INVALID_PARAMETER", f"{key} IN takes quoted strings."))
        ids.append(literal.group(1).replace("''", "'"))
        at = literal.end()
    return ids


async def _netsuite_suiteql(request: web.Request) -> web.StreamResponse:
    """The sandbox's SuiteQL: ids and document numbers of the records with these external ids,
    or configuration records (subsidiary, currency, item, account, salestaxitem, customfield)
    by key, paged like NetSuite (`hasMore`, `offset`, `totalResults`); columns by lowercase name."""
    sandbox = request.app[SANDBOX]
    body = await _json_body(request)
    query = _SUITEQL.match(str(body.get("q") or ""))
    if query is None:
        message = (
            "The sandbox answers SELECT … FROM customer|transaction WHERE [type = '…' AND] "
            "externalid IN (…), FROM subsidiary|currency|item|account|salestaxitem WHERE id IN (…) "
            "and FROM customfield WHERE scriptid IN (…)."
        )
        return _refuse(request, 400, "INVALID_PARAMETER", message)
    table, kind = query["table"].lower(), (query["type"] or "").lower() or None
    key = query["key"].lower()
    columns = [c.strip().lower() for c in query["columns"].split(",")]
    rows: list[dict[str, Any]]
    if table in _SUITEQL_CONFIG and kind is None:
        _suiteql_columns(request, table, columns, _SUITEQL_CONFIG[table], key)
        config = _suiteql_config_rows(sandbox, table)
        rows = [config[k] for k in dict.fromkeys(_suiteql_ids(request, key, query["ids"])) if k in config]
    else:
        record_type = _SUITEQL_RECORDS.get((table, kind))
        if record_type is None:
            return _refuse(request, 400, "INVALID_PARAMETER", f"Unknown table or type: {table} {kind or ''}.")
        known = ("externalid", "id", SUITEQL_TABLES[record_type].number)
        _suiteql_columns(request, table, columns, known, key)
        external_ids = dict.fromkeys(_suiteql_ids(request, key, query["ids"]))
        rows = [_suiteql_row(d) for eid in external_ids for d in sandbox.store.find(record_type, eid)]
    limit, offset = _page(request, ("limit", "offset"), 1000, "INVALID_PARAMETER")
    page = rows[offset : offset + limit]
    return json_response(
        {
            "links": [],
            "count": len(page),
            "hasMore": offset + len(page) < len(rows),
            # SuiteQL leaves NULL columns out of an item; every value it gives is a string.
            "items": [
                {"links": [], **{c: str(row[c]) for c in columns if row.get(c) is not None}} for row in page
            ],
            "offset": offset,
            "totalResults": len(rows),
        }
    )


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


async def _m2m_token(request: web.Request) -> web.StreamResponse:
    """NetSuite's OAuth 2.0 token endpoint, client credentials with a JWT client assertion."""
    sandbox = request.app[SANDBOX]
    form = {k: str(v) for k, v in (await request.post()).items()}
    status, body = sandbox.issue_m2m_token(f"{_origin(request)}{M2M_TOKEN_PATH}", form)
    return json_response(body, status, {"Cache-Control": "no-store"})


# -- admin ------------------------------------------------------------------------------------


def _admin_view(sandbox: Sandbox, doc: StoredDocument) -> dict[str, Any]:
    """A document with `seq` (the store's creation order) and `books`: what the ERP's own rules
    make of it (amounts, applications), in ledgerflow's terms; `internal_id` is the id the ERP's
    API names it by."""
    view = {**doc.admin_view(), "seq": doc.internal_id}
    if doc.api == "netsuite" and sandbox._netsuite is not None:
        view["books"] = sandbox._netsuite.summary(doc)
    if doc.api == BC_API and sandbox._business_central is not None:
        view["books"] = sandbox._business_central.summary(doc)
        view["internal_id"] = view["books"]["erp_id"]
        view["document_number"] = view["books"]["number"]
    return view


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
            "documents": [_admin_view(sandbox, d) for d in docs],
            "by_external_id": by_external_id,
            "duplicates": duplicates,
        }
    )


async def _admin_delete_document(request: web.Request) -> web.StreamResponse:
    sandbox = request.app[SANDBOX]
    deleted = sandbox.store.delete(request.match_info["record_type"], request.match_info["external_id"])
    if sandbox._netsuite is not None:
        sandbox._netsuite.reindex()
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
    login = entra_sandbox.login_paths(config.business_central.tenant)
    app = sandbox_app(SANDBOX, sandbox, ("/oauth/", M2M_TOKEN_PATH, *login), _faulty)
    entra_sandbox.routes(app)

    async def close_store(_: web.Application) -> None:
        sandbox.store.close()

    app.on_cleanup.append(close_store)
    record = NETSUITE_PREFIX + "/{record_type}"
    app.router.add_get(record, _netsuite_collection)
    app.router.add_get(record + "/{key}", _netsuite_get)
    app.router.add_put(record + "/{key}", _netsuite_put)
    app.router.add_patch(record + "/{key}", _netsuite_patch)
    app.router.add_post(record + "/{key}/!transform/{target}", _netsuite_transform)
    app.router.add_post(SUITEQL_PATH, _netsuite_suiteql)
    app.router.add_route("*", BC_ROUTE, business_central_route)
    app.router.add_post("/oauth/token", _oauth_token)
    app.router.add_post(M2M_TOKEN_PATH, _m2m_token)
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
        self.login_url = ""
        """`https://host:port` of the Entra routes (with `config.entra_apps`), else empty."""
        self.ca_file: Path | None = None
        """The self-signed certificate that TLS port shows: a client's CA bundle for it."""

    async def start(self) -> str:
        url = await super().start()
        if self.config.entra_apps:
            cert, key = entra_sandbox.tls_files(self.config.db_path.parent)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
            site = web.TCPSite(self._runner, self.host, 0, ssl_context=context)
            await site.start()
            port = int(self._runner.addresses[-1][1])
            self.login_url, self.ca_file = f"https://{self.host}:{port}", cert
            self.sandbox.log.info("erp sandbox entra login listening", extra={"url": self.login_url})
        return url


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
        if server.login_url:
            click.echo(f"Entra login on {server.login_url} (its self-signed certificate: {server.ca_file})")
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
@click.option(
    "--concurrency-limit",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="NetSuite's per-account concurrency limit: a call beyond it in flight is refused (0: none).",
)
@click.option(
    "--concurrency-status",
    type=click.Choice(["429", "400"]),
    default="429",
    show_default=True,
    help="How the limit is refused: 429 (REST) or 400 (as some accounts answer).",
)
@click.option("--seed", type=int, default=None, help="Seed of the fault dice (repeatable runs).")
@click.option(
    "--account", default="1234567_SB1", show_default=True, help="The NetSuite account played (TBA realm)."
)
@click.option(
    "--tba",
    "tba_credentials",
    multiple=True,
    metavar="CONSUMER_KEY:CONSUMER_SECRET:TOKEN_ID:TOKEN_SECRET",
    envvar="LEDGERFLOW_SANDBOX_TBA",
    help="A TBA integration and access token to accept (repeatable; env: space-separated).",
)
@click.option(
    "--m2m",
    "m2m_certificates",
    multiple=True,
    metavar="CLIENT_ID:CERTIFICATE_ID:CERTIFICATE_PEM_FILE",
    help="An M2M certificate mapped to an integration (repeatable).",
)
@click.option(
    "--transform-applies/--no-transform-applies",
    default=True,
    show_default=True,
    help="Whether an invoice's transform to a credit memo applies it to the invoice (accounts differ).",
)
@click.option(
    "--rate-limit",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Business Central's rate limit: calls past this many per --rate-window-s answer 429 (0: none).",
)
@click.option("--rate-window-s", type=click.FloatRange(0, min_open=True), default=300.0, show_default=True)
@click.option(
    "--retry-after/--no-retry-after",
    "retry_after_header",
    default=True,
    show_default=True,
    help="Whether 429 and 503 answers say Retry-After (undocumented for Business Central).",
)
@click.option("--bc-tenant", default="ledgerflow-sandbox", show_default=True, help="Business Central tenant.")
@click.option("--bc-environment", default="sandbox", show_default=True, help="Business Central environment.")
@click.option(
    "--bc-payment-sign",
    type=click.Choice(["negative", "positive"]),
    default="negative",
    show_default=True,
    help="The sign Business Central wants of a customer payment's amount (sources differ).",
)
@click.option(
    "--bc-deep-insert/--no-bc-deep-insert",
    default=True,
    show_default=True,
    help="Whether a sales invoice's create takes its lines (undocumented for invoices).",
)
@click.option(
    "--bc-journal-post",
    type=click.Choice(["bound", "journals"]),
    default="bound",
    show_default=True,
    help="Payment journals post by their own action, or only through journals({id}).",
)
@click.option(
    "--bc-tax-rounding",
    type=click.Choice(["line", "document"]),
    default="line",
    show_default=True,
    help="Business Central rounds tax per line or per document.",
)
@click.option(
    "--bc-batch-rate",
    type=click.Choice(["request", "operations"]),
    default="request",
    show_default=True,
    help="The rate limit counts a $batch as one request, or each of its operations.",
)
@click.option(
    "--operation-ms",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Business Central: added latency of each $batch operation.",
)
@click.option(
    "--entra-app",
    "entra_secrets",
    multiple=True,
    metavar="CLIENT_ID:CLIENT_SECRET",
    help="An Entra app registration with a secret that gets Business Central tokens (repeatable).",
)
@click.option(
    "--entra-certificate",
    "entra_certificates",
    multiple=True,
    metavar="CLIENT_ID:CERTIFICATE_PEM_FILE",
    help="A certificate uploaded to an Entra app registration (repeatable).",
)
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
    concurrency_limit: int,
    concurrency_status: str,
    seed: int | None,
    account: str,
    tba_credentials: tuple[str, ...],
    m2m_certificates: tuple[str, ...],
    transform_applies: bool,
    rate_limit: int,
    rate_window_s: float,
    retry_after_header: bool,
    bc_tenant: str,
    bc_environment: str,
    bc_payment_sign: Literal["negative", "positive"],
    bc_deep_insert: bool,
    bc_journal_post: Literal["bound", "journals"],
    bc_tax_rounding: Literal["line", "document"],
    bc_batch_rate: Literal["request", "operations"],
    operation_ms: float,
    entra_secrets: tuple[str, ...],
    entra_certificates: tuple[str, ...],
) -> None:
    """Run the sandbox ERP (NetSuite REST and Business Central API v2.0) until Ctrl-C."""
    try:
        tba = tuple(_tba_option(value) for value in tba_credentials)
        entra_apps = _entra_apps(entra_secrets, entra_certificates)
        m2m = tuple(_m2m_option(value) for value in m2m_certificates)
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
                operation_ms=operation_ms,
                timeout_rate=timeout_rate,
                timeout_mode=timeout_mode,
                hang_s=hang_s,
                rate_limit_rate=rate_limit_rate,
                retry_after_s=retry_after_s,
                maintenance=maintenance,
                concurrency_limit=concurrency_limit,
                concurrency_status=int(concurrency_status),
                rate_limit=rate_limit,
                rate_window_s=rate_window_s,
                retry_after_header=retry_after_header,
            ),
            seed=seed,
            account=account,
            tba=tba,
            m2m=m2m,
            transform_applies=transform_applies,
            entra_apps=entra_apps,
            business_central=BusinessCentralSandboxConfig(
                tenant=bc_tenant,
                environment=bc_environment,
                payment_sign=bc_payment_sign,
                deep_insert=bc_deep_insert,
                journal_post=bc_journal_post,
                tax_rounding=bc_tax_rounding,
                batch_rate=bc_batch_rate,
            ),
        )
    except ValidationError as exc:
        raise click.ClickException(str(exc)) from exc

    def ready(url: str) -> None:
        click.echo(f"ERP sandbox on {url} (db {db_path}); admin at {url}/admin/documents; Ctrl-C stops it")

    # SIGTERM too (not only Ctrl-C), so `ledgerflow dev` and CI can stop it cleanly.
    asyncio.run(serve(host, port, config, ready, handle_signals=True))
    click.echo("ERP sandbox stopped")


def _entra_apps(secrets_given: tuple[str, ...], certificates: tuple[str, ...]) -> tuple[EntraApp, ...]:
    apps: dict[str, dict[str, Any]] = {}
    for value in secrets_given:
        client_id, _, secret = value.partition(":")
        if not client_id or not secret:
            raise click.BadParameter("CLIENT_ID:CLIENT_SECRET", param_hint="--entra-app")
        apps.setdefault(client_id, {"certificates": []})["client_secret"] = SecretStr(secret)
    for value in certificates:
        client_id, _, pem_file = value.partition(":")
        try:
            pem = Path(pem_file).read_text()
        except OSError as exc:
            raise click.BadParameter(
                f"cannot read {pem_file}: {exc}", param_hint="--entra-certificate"
            ) from exc
        apps.setdefault(client_id, {"certificates": []})["certificates"].append(pem)
    return tuple(
        EntraApp(client_id=cid, client_secret=a.get("client_secret"), certificates=tuple(a["certificates"]))
        for cid, a in apps.items()
    )


def _tba_option(value: str) -> TbaCredential:
    parts = value.split(":")
    if len(parts) != 4 or not all(parts):
        raise click.BadParameter("CONSUMER_KEY:CONSUMER_SECRET:TOKEN_ID:TOKEN_SECRET", param_hint="--tba")
    key, secret, token_id, token_secret = parts
    return TbaCredential(
        consumer_key=key,
        consumer_secret=SecretStr(secret),
        token_id=token_id,
        token_secret=SecretStr(token_secret),
    )


def _m2m_option(value: str) -> M2MCertificate:
    parts = value.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise click.BadParameter("CLIENT_ID:CERTIFICATE_ID:CERTIFICATE_PEM_FILE", param_hint="--m2m")
    client_id, certificate_id, pem_file = parts
    try:
        pem = Path(pem_file).read_text()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {pem_file}: {exc}", param_hint="--m2m") from exc
    return M2MCertificate(certificate_id=certificate_id, client_id=client_id, certificate_pem=pem)
