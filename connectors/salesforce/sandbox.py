"""A fake Salesforce for the CRM write-back's tests and `ledgerflow dev`: in memory, loopback.

* `PATCH /services/data/{version}/sobjects/Account/{id}` — bearer auth, 204 No Content; the
  fields are merged into the account and each write is counted. Unknown field names are
  refused as Salesforce does (`400 [{"message": "No such column …", "errorCode":
  "INVALID_FIELD"}]`), and so are ids that are not Salesforce ids and deleted accounts.
* `GET` of the same (`?fields=A,B` to select), as Salesforce answers it (`attributes`, `Id`).
* `POST /services/oauth2/token` — the client-credentials grant (no `expires_in`, like
  Salesforce's own answer), and the JWT bearer grant (an RS256 assertion checked against
  `jwt_public_key`: iss = client id, sub = a known user, aud, exp).
* `GET /services/oauth2/userinfo` — bearer auth; `organization_id` (the Pub/Sub `tenantid`).
* `GET /services/data/{version}/query?q=SELECT … FROM Account WHERE SystemModstamp >= …` —
  the accounts changed since then, `SystemModstamp` order, `nextRecordsUrl` pages of
  `query_page_size`.
* Every write also records the Change Data Capture event Salesforce would publish for it, with
  the `changeOrigin` built from the call's `Sforce-Call-Options` (`GET /admin/changes`), so a
  test can feed our own write's echo back to the CDC adapter.
* Faults for retry tests (503 `SERVER_UNAVAILABLE`, 403 `REQUEST_LIMIT_EXCEEDED`, 400
  `UNABLE_TO_LOCK_ROW`), from a rate or a countdown, set in the config or `POST /admin/faults`.
* `/admin/…` (no auth; a loopback dev tool): accounts with their write counts, seeding and
  deleting accounts, the CDC events, the request log, faults, reset.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from canonical import is_crm_account_id
from connectors.salesforce.writeback import ACCOUNT_WRITEBACK_FIELDS
from connectors.sandbox import (
    AppServer,
    Handler,
    Refused,
    SandboxState,
    client_authenticated,
    json_object,
    json_response,
    sandbox_app,
)

DEFAULT_TOKEN = "sandbox-crm-token"
ORG_ID = "00DSANDBOX000001"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
API_PREFIX = "/services/data"
ACCOUNT_ROUTE = API_PREFIX + "/{version}/sobjects/Account/{account_id}"
STANDARD_ACCOUNT_FIELDS = frozenset(
    {"Name", "BillingCountryCode", "CurrencyIsoCode", "ParentId", "Phone", "Website", "Tax_Id__c"}
)
"""Account fields the fake knows besides ledgerflow's write-back fields."""
READ_ONLY_FIELDS = frozenset({"Id", "LastModifiedDate", "SystemModstamp", "CreatedDate"})


class CrmFaults(BaseModel):
    """What goes wrong, and how often. `burst_*` count down: the next N API calls fail."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    error_rate: float = Field(default=0.0, ge=0, le=1)
    """Share of API calls answered 503 SERVER_UNAVAILABLE before anything is written."""
    burst_503: int = Field(default=0, ge=0)
    burst_request_limit: int = Field(default=0, ge=0)
    """Calls answered 403 REQUEST_LIMIT_EXCEEDED (the org's API limit)."""
    burst_row_lock: int = Field(default=0, ge=0)
    """Calls answered 400 UNABLE_TO_LOCK_ROW (another transaction holds the record)."""
    retry_after_s: float | None = Field(default=None, ge=0)
    """`Retry-After` sent with 503 answers (Salesforce sends none; None here too)."""


class CrmSandboxConfig(BaseModel):
    """How the fake starts: which tokens and fields it accepts, and what goes wrong."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tokens: tuple[str, ...] = (DEFAULT_TOKEN,)
    """Static bearer tokens always accepted (LEDGERFLOW_CRM_TOKEN on the agent's side)."""
    client_id: str = "ledgerflow"
    client_secret: SecretStr = SecretStr("sandbox-crm-secret")
    fields: frozenset[str] = frozenset(ACCOUNT_WRITEBACK_FIELDS.values()) | STANDARD_ACCOUNT_FIELDS
    """Account fields that exist in this org; a write naming any other is refused."""
    create_on_patch: bool = True
    """A PATCH of an unknown (well-formed) id creates the account, so `ledgerflow dev` needs no
    seeding; False answers 404 NOT_FOUND as Salesforce does."""
    faults: CrmFaults = CrmFaults()
    seed: int | None = None
    """Seed of the fault dice, so a test run is repeatable."""
    request_log_size: int = Field(default=2000, ge=1)
    jwt_public_key: str | None = None
    """PEM public key of the External Client App's certificate (None: no JWT grant)."""
    jwt_users: tuple[str, ...] = ("integration@ledgerflow.example",)
    """Pre-authorised users the JWT grant may name as `sub`."""
    jwt_audiences: tuple[str, ...] = ("https://login.salesforce.com", "https://test.salesforce.com")
    """Accepted `aud` values besides the stand-in's own URL."""
    token_ttl_s: float | None = None
    """Lifetime of issued tokens (None: until revoked)."""
    query_page_size: int = Field(default=2000, ge=1)


@dataclass
class StoredAccount:
    account_id: str
    fields: dict[str, Any] = field(default_factory=dict)
    writes: int = 0
    last_modified: str = ""
    last_client: str | None = None

    def admin_view(self) -> dict[str, Any]:
        return {
            "id": self.account_id,
            "fields": self.fields,
            "writes": self.writes,
            "last_modified": self.last_modified,
            "last_client": self.last_client,
        }


def _now_iso() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}+0000"


def client_of(call_options: str | None) -> str | None:
    """The `client=` of a `Sforce-Call-Options` header (`client=x, defaultNamespace=y`)."""
    for part in (call_options or "").split(","):
        name, sep, value = part.strip().partition("=")
        if sep and name.strip() == "client" and value.strip():
            return value.strip()
    return None


class CrmSandbox(SandboxState[CrmFaults]):
    """The fake's state behind the routes: accounts, CDC events, faults, tokens, request log."""

    name = "crm sandbox"

    def __init__(self, config: CrmSandboxConfig) -> None:
        super().__init__(config.tokens, config.faults, config.seed, config.request_log_size)
        self.config = config
        self.accounts: dict[str, StoredAccount] = {}
        self.deleted: set[str] = set()
        self.changes: list[dict[str, Any]] = []
        self.cursors: dict[str, list[dict[str, Any]]] = {}

    @property
    def writes(self) -> int:
        return sum(a.writes for a in self.accounts.values())

    def issue_token(self) -> str:
        # Salesforce access tokens look like "<org id>!<opaque>", and say nothing of expiry.
        return self._accept(f"{ORG_ID}!{secrets.token_urlsafe(32)}", self.config.token_ttl_s)

    def token_valid(self, token: str) -> bool:
        """Whether a bearer token is good now (the Pub/Sub stand-in asks)."""
        if any(secrets.compare_digest(token, known) for known in self._tokens):
            return True
        expires = self._issued.get(token)
        return expires is not None and self._clock() < expires

    def write(self, account_id: str, version: str, values: dict[str, Any], call_options: str | None) -> None:
        """Merge `values` into the account, count the write, and record its CDC event."""
        account = self.accounts.setdefault(account_id, StoredAccount(account_id))
        changed = sorted(k for k, v in values.items() if k not in account.fields or account.fields[k] != v)
        account.fields.update(values)
        account.writes += 1
        account.last_modified = _now_iso()
        account.last_client = client_of(call_options)
        self.changes.append(self._change_event(account, version, values, changed))

    def _change_event(
        self, account: StoredAccount, version: str, values: dict[str, Any], changed: list[str]
    ) -> dict[str, Any]:
        # What the Pub/Sub API would deliver for this update, in CometD's envelope. Salesforce
        # puts the call's client name into changeOrigin after the API that was called.
        origin = f"com/salesforce/api/rest/{version.removeprefix('v')}"
        if account.last_client is not None:
            origin += f";client={account.last_client}"
        header = {
            "entityName": "Account",
            "recordIds": [account.account_id],
            "changeType": "UPDATE",
            "changeOrigin": origin,
            "transactionKey": str(uuid.uuid4()),
            "sequenceNumber": 1,
            "commitTimestamp": int(time.time() * 1000),
            "commitNumber": len(self.changes) + 1,
            "commitUser": "005SANDBOX0000001",
            "changedFields": [*changed, "LastModifiedDate"],
            "nulledFields": sorted(k for k, v in values.items() if v is None),
            "diffFields": [],
        }
        payload = {
            "ChangeEventHeader": header,
            **{k: values[k] for k in changed},
            "LastModifiedDate": account.last_modified,
        }
        return {
            "data": {"schema": "sandbox", "payload": payload, "event": {"replayId": len(self.changes) + 1}},
            "channel": "/data/AccountChangeEvent",
        }

    def _request_details(self, request: web.Request) -> dict[str, Any]:
        return {"call_options": request.headers.get("Sforce-Call-Options")}

    def reset(self) -> None:
        super().reset()
        self.accounts.clear()
        self.deleted.clear()
        self.changes.clear()


SANDBOX = web.AppKey("crm_sandbox", CrmSandbox)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """Salesforce's REST error body: a list of errors, each with `message` and `errorCode`."""
    return json_response([{"message": message, "errorCode": code}], status, headers)


def _no_such_column(name: str) -> web.Response:
    return _error(400, "INVALID_FIELD", f"No such column '{name}' on sobject of type Account")


# -- auth and faults -------------------------------------------------------------------------


async def _guarded(
    sandbox: CrmSandbox, request: web.Request, handler: Handler, entry: dict[str, Any]
) -> web.StreamResponse:
    if not sandbox.authorized(request):
        return _error(401, "INVALID_SESSION_ID", "Session expired or invalid")
    faults = sandbox.faults
    draw = sandbox.rng.random()  # one draw per call whatever the settings: one seed, one run
    if sandbox.take_burst("burst_503") or draw < faults.error_rate:
        entry["fault"] = "unavailable"
        headers = {"Retry-After": f"{faults.retry_after_s:g}"} if faults.retry_after_s is not None else None
        return _error(503, "SERVER_UNAVAILABLE", "Server temporarily unavailable", headers)
    if sandbox.take_burst("burst_request_limit"):
        entry["fault"] = "request_limit"
        return _error(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
    if sandbox.take_burst("burst_row_lock"):
        entry["fault"] = "row_lock"
        return _error(
            400, "UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record or 1 records"
        )
    return await handler(request)


# -- the REST API ----------------------------------------------------------------------------


def _account_target(request: web.Request) -> tuple[str, str]:
    """(API version, account id) from the path, or Salesforce's 404."""
    version = request.match_info["version"]
    account_id = request.match_info["account_id"]
    if not (version.startswith("v") and version[1:].replace(".", "", 1).isdigit()):
        raise Refused(_error(404, "NOT_FOUND", "The requested resource does not exist"))
    if not is_crm_account_id(account_id):
        message = f"Provided external ID field does not exist or is not accessible: {account_id}"
        raise Refused(_error(404, "NOT_FOUND", message))
    if account_id in request.app[SANDBOX].deleted:
        raise Refused(_error(404, "ENTITY_IS_DELETED", "entity is deleted"))
    return version, account_id


async def _patch_account(request: web.Request) -> web.StreamResponse:
    sandbox = request.app[SANDBOX]
    version, account_id = _account_target(request)
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error(400, "JSON_PARSER_ERROR", "Unexpected character in the request body")
    if not isinstance(body, dict):
        return _error(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of Account from a non-object")
    for name, value in body.items():
        if name in READ_ONLY_FIELDS:
            return _error(400, "INVALID_FIELD_FOR_INSERT_UPDATE", f"Unable to create/update fields: {name}.")
        if name not in sandbox.config.fields:
            return _no_such_column(name)
        if isinstance(value, dict | list):
            kind = type(value).__name__
            return _error(400, "JSON_PARSER_ERROR", f"Cannot deserialize a JSON {kind} into {name}")
    if account_id not in sandbox.accounts and not sandbox.config.create_on_patch:
        return _error(404, "NOT_FOUND", "The requested resource does not exist")
    sandbox.write(account_id, version, body, request.headers.get("Sforce-Call-Options"))
    return web.Response(status=204)


async def _get_account(request: web.Request) -> web.StreamResponse:
    sandbox = request.app[SANDBOX]
    version, account_id = _account_target(request)
    account = sandbox.accounts.get(account_id)
    if account is None:
        return _error(404, "NOT_FOUND", "The requested resource does not exist")
    selected = [f.strip() for f in request.query.get("fields", "").split(",") if f.strip()]
    for name in selected:
        if name not in sandbox.config.fields and name not in READ_ONLY_FIELDS:
            return _no_such_column(name)
    fields = {name: account.fields.get(name) for name in selected} if selected else dict(account.fields)
    return json_response(
        {
            "attributes": {"type": "Account", "url": f"{API_PREFIX}/{version}/sobjects/Account/{account_id}"},
            "Id": account_id,
            **fields,
            "LastModifiedDate": account.last_modified,
        }
    )


def _jwt_user(sandbox: CrmSandbox, assertion: str, origin: str) -> str | None:
    """The `sub` of a valid JWT bearer assertion, or None."""
    import jwt

    key = sandbox.config.jwt_public_key
    if key is None:
        return None
    try:
        claims = jwt.decode(
            assertion,
            key,
            algorithms=["RS256"],
            audience=[origin, *sandbox.config.jwt_audiences],
            issuer=sandbox.config.client_id,
            options={"require": ["exp", "iss", "sub", "aud"]},
        )
    except jwt.PyJWTError:
        return None
    sub = claims.get("sub")
    return sub if isinstance(sub, str) and sub in sandbox.config.jwt_users else None


_QUERY = re.compile(
    r"^SELECT\s+(?P<fields>[\w\s,.]+?)\s+FROM\s+Account\s+WHERE\s+SystemModstamp\s*>=\s*(?P<since>\S+)"
    r"(?:\s+ORDER\s+BY\s+SystemModstamp)?\s*$",
    re.IGNORECASE,
)


def _query_records(sandbox: CrmSandbox, version: str, soql: str) -> list[dict[str, Any]]:
    """The one SOQL shape the fake answers: Accounts changed since a time (resync)."""
    match = _QUERY.match(soql.strip())
    if match is None:
        raise Refused(_error(400, "MALFORMED_QUERY", "only SELECT … FROM Account WHERE SystemModstamp >= …"))
    fields = [f.strip() for f in match["fields"].split(",") if f.strip()]
    for name in fields:
        if name not in sandbox.config.fields and name not in READ_ONLY_FIELDS:
            raise Refused(_error(400, "INVALID_FIELD", f"No such column '{name}' on entity 'Account'."))
    try:
        since = datetime.fromisoformat(match["since"])
    except ValueError:
        raise Refused(_error(400, "MALFORMED_QUERY", "value of filter criterion is not a datetime")) from None
    rows = []
    for account in sorted(sandbox.accounts.values(), key=lambda a: a.last_modified):
        if datetime.fromisoformat(account.last_modified) < since:
            continue
        stamp = account.last_modified
        values = {
            "Id": account.account_id,
            "SystemModstamp": stamp,
            "LastModifiedDate": stamp,
            "CreatedDate": stamp,
        }
        row: dict[str, Any] = {
            "attributes": {
                "type": "Account",
                "url": f"{API_PREFIX}/{version}/sobjects/Account/{account.account_id}",
            }
        }
        for name in fields:
            row[name] = values[name] if name in values else account.fields.get(name)
        rows.append(row)
    return rows


def _query_page(
    sandbox: CrmSandbox, version: str, cursor: str, rows: list[dict[str, Any]], start: int
) -> dict[str, Any]:
    size = sandbox.config.query_page_size
    page = rows[start : start + size]
    done = start + size >= len(rows)
    answer: dict[str, Any] = {"totalSize": len(rows), "done": done, "records": page}
    if not done:
        answer["nextRecordsUrl"] = f"{API_PREFIX}/{version}/query/{cursor}-{start + size}"
    return answer


async def _query(request: web.Request) -> web.StreamResponse:
    sandbox = request.app[SANDBOX]
    version = request.match_info["version"]
    rows = _query_records(sandbox, version, request.query.get("q", ""))
    cursor = f"01gSANDBOX{secrets.token_hex(4)}"
    sandbox.cursors[cursor] = rows
    return json_response(_query_page(sandbox, version, cursor, rows, 0))


async def _query_more(request: web.Request) -> web.StreamResponse:
    sandbox = request.app[SANDBOX]
    cursor, _, start = request.match_info["locator"].rpartition("-")
    rows = sandbox.cursors.get(cursor)
    if rows is None or not start.isdigit():
        return _error(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
    return json_response(_query_page(sandbox, request.match_info["version"], cursor, rows, int(start)))


async def _oauth_token(request: web.Request) -> web.StreamResponse:
    sandbox = request.app[SANDBOX]
    form = {k: str(v) for k, v in (await request.post()).items()}
    origin = f"{request.scheme}://{request.host}"
    grant = form.get("grant_type")
    if grant == JWT_GRANT:
        if _jwt_user(sandbox, form.get("assertion", ""), origin) is None:
            return json_response({"error": "invalid_grant", "error_description": "invalid assertion"}, 400)
    elif grant != "client_credentials":
        return json_response(
            {"error": "unsupported_grant_type", "error_description": "grant type not supported"}, 400
        )
    elif not client_authenticated(request, form, sandbox.config.client_id, sandbox.config.client_secret):
        refusal = {"error": "invalid_client", "error_description": "invalid client credentials"}
        return json_response(refusal, 400)
    return json_response(
        {
            "access_token": sandbox.issue_token(),
            "instance_url": origin,
            "id": f"{origin}/id/{ORG_ID}/005SANDBOX0000001",
            "token_type": "Bearer",
            "issued_at": str(int(time.time() * 1000)),
            "signature": base64.b64encode(secrets.token_bytes(32)).decode(),
        },
        200,
        {"Cache-Control": "no-store"},
    )


async def _userinfo(request: web.Request) -> web.StreamResponse:
    sandbox = request.app[SANDBOX]
    if not sandbox.authorized(request):
        return json_response({"error": "invalid_token"}, 401)
    return json_response(
        {"organization_id": ORG_ID, "user_id": "005SANDBOX0000001", "preferred_username": "integration"}
    )


# -- admin -----------------------------------------------------------------------------------


async def _admin_accounts(request: web.Request) -> web.StreamResponse:
    sandbox = request.app[SANDBOX]
    return json_response(
        {
            "accounts": {k: a.admin_view() for k, a in sorted(sandbox.accounts.items())},
            "deleted": sorted(sandbox.deleted),
            "writes": sandbox.writes,
        }
    )


async def _admin_put_account(request: web.Request) -> web.StreamResponse:
    """Create an account (or replace its fields) as a CRM user would: not counted as a write."""
    sandbox = request.app[SANDBOX]
    account_id = request.match_info["account_id"]
    if not is_crm_account_id(account_id):
        return json_response({"error": "not a Salesforce id"}, 400)
    body = await json_object(request, allow_empty=True)
    sandbox.deleted.discard(account_id)
    sandbox.accounts[account_id] = StoredAccount(account_id, dict(body), 0, _now_iso())
    return json_response(sandbox.accounts[account_id].admin_view())


async def _admin_delete_account(request: web.Request) -> web.StreamResponse:
    """Delete an account: later calls for it answer 404 ENTITY_IS_DELETED."""
    sandbox = request.app[SANDBOX]
    account_id = request.match_info["account_id"]
    existed = sandbox.accounts.pop(account_id, None) is not None
    sandbox.deleted.add(account_id)
    return json_response({"deleted": existed})


async def _admin_changes(request: web.Request) -> web.StreamResponse:
    return json_response({"changes": request.app[SANDBOX].changes})


def build_app(config: CrmSandboxConfig | None = None) -> web.Application:
    """The fake Salesforce as an aiohttp application."""
    app = sandbox_app(SANDBOX, CrmSandbox(config or CrmSandboxConfig()), "/services/oauth2/", _guarded)
    app.router.add_patch(ACCOUNT_ROUTE, _patch_account)
    app.router.add_get(ACCOUNT_ROUTE, _get_account)
    app.router.add_post("/services/oauth2/token", _oauth_token)
    app.router.add_get("/services/oauth2/userinfo", _userinfo)
    app.router.add_get(API_PREFIX + "/{version}/query", _query)
    app.router.add_get(API_PREFIX + "/{version}/query/{locator}", _query_more)
    app.router.add_get("/admin/accounts", _admin_accounts)
    app.router.add_put("/admin/accounts/{account_id}", _admin_put_account)
    app.router.add_delete("/admin/accounts/{account_id}", _admin_delete_account)
    app.router.add_get("/admin/changes", _admin_changes)
    return app


class SandboxServer(AppServer[CrmSandbox]):
    """A running fake Salesforce on `host:port` (port 0 picks a free one); `url` once started."""

    def __init__(
        self,
        config: CrmSandboxConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        shutdown_timeout: float = 2.0,
    ) -> None:
        self.config = config or CrmSandboxConfig()
        super().__init__(build_app(self.config), SANDBOX, host, port, shutdown_timeout)
