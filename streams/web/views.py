"""The table query views, operator actions and trace of design §5, on every worker's web server.

Every route here needs `Authorization: Bearer $LEDGERFLOW_API_TOKEN` (401 without it; 503 when
no token is configured, rather than serving data openly), except the ops page shell at `/`,
which holds no data and asks for the token itself.

* `GET /customers/{customer_id}` — the customer 360, answered by the worker whose partitions
  hold the customer: `app.table_route` forwards it there (`streams.web.routing.OwnerRouter`).
  `/invoices`, `/contracts`, `/ledger` and `/exceptions` below it are the parts it is made of,
  each routed by its own table (they are co-located when every worker runs every stage, and
  fetched from their owner when not).
* `GET /exceptions` — exceptions across every partition: the receiving worker asks every
  worker of the group for its active partitions (`?local=1`), merges, sorts by age, pages.
* `POST /exceptions/{id}/replay`, `POST /exceptions/{id}/resolve` — operator actions.
* `GET /trace/{correlation_id}` — every hop of one transaction (`streams.web.trace`).
* `GET /pipeline` — stages, assigned partitions and lag, gathered like `/exceptions`.

Deciding (auth, filters, paging, merging, masking, the 360's shape) is pure and tested without
a worker; the pages only read tables, call those functions and answer.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from aiokafka.errors import KafkaError
from faust import web
from faust.web.exceptions import ServiceUnavailable
from pydantic import ValidationError

from canonical import BusinessException, ExceptionReason, ExceptionStatus, codec
from streams import headers as h
from streams.app import app
from streams.operations.replay import (
    ExceptionEntry,
    Outcome,
    RawRecord,
    ReplayError,
    ReplayKind,
    ReplayPlan,
    execute_replay,
)
from streams.settings import settings
from streams.topic_names import INVOICE_OWNERS, SOURCE_TOPICS
from streams.topics import (
    CANONICAL,
    CRM_WRITEBACK,
    CUSTOMER_FINGERPRINTS,
    ERP_COMMANDS,
    ERP_RESULTS,
    EXCEPTIONS,
    exceptions_topic,
)
from streams.web import ops_page
from streams.web.routing import (
    FORWARD_TIMEOUT_S,
    FORWARDED_BY,
    OwnerRouter,
    active_partitions,
    gather_json,
    get_json,
    install,
    partition_count,
    peers,
)
from streams.web.trace import DEFAULT_BUDGET, MAX_BUDGET, parse_since, trace
from tables.contracts import CustomerContracts, contract_table
from tables.customers import CustomerMaster, customer_table
from tables.exceptions import UNKEYED, KeptException, KeyExceptions, exception_table
from tables.invoices import CustomerInvoices, invoice_table
from tables.ledger import CustomerLedger, posting_ledger_table
from tables.rows import get_row

log = logging.getLogger(__name__)

router: OwnerRouter = install(app)

MAX_PAGE = 500
MAX_WINDOW = 10_000
"""`offset + limit` at most: deeper pages take a cursor."""
GATHER_TIMEOUT_S = 10.0
REPLAY_TIMEOUT_S = 30.0

# --- auth ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a request is not served, as HTTP."""

    status: int
    error: str
    detail: str

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "detail": self.detail}

    def headers(self) -> dict[str, str]:
        out = {"WWW-Authenticate": 'Bearer realm="ledgerflow"'} if self.status == 401 else {}
        if self.status == 503:
            out["Retry-After"] = "1"
        return out


def check_bearer(configured: str | None, authorization: str | None) -> Denial | None:
    """Whether `Authorization` carries the configured token (compared in constant time)."""
    if not configured:
        return Denial(503, "not_configured", "LEDGERFLOW_API_TOKEN not set")
    if not authorization:
        return Denial(401, "unauthenticated", "send Authorization: Bearer <LEDGERFLOW_API_TOKEN>")
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return Denial(401, "unauthenticated", "the Authorization header must be 'Bearer <token>'")
    if not hmac.compare_digest(credentials.strip().encode(), configured.encode()):
        return Denial(401, "invalid_token", "the bearer token is not valid")
    return None


def serving_denial(rebalancing: bool, in_recovery: bool) -> Denial | None:
    """A worker whose partitions are moving or whose tables are still recovering would answer
    from incomplete state: it says so instead."""
    if rebalancing or in_recovery:
        return Denial(503, "not_ready", "the worker is rebalancing or recovering its tables; retry")
    return None


# --- masking ---------------------------------------------------------------------------------

_EMAIL = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


def mask_email(email: str | None) -> str | None:
    """`jane.doe@example.com` → `j***e@e***.com`: enough to recognise, not to use."""
    if not email:
        return email
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain:
        return "***"
    shown_local = local[0] + "***" + (local[-1] if len(local) > 2 else "")
    name, dot, tld = domain.rpartition(".")
    shown_domain = (name[0] + "***" + dot + tld) if name else "***"
    return f"{shown_local}@{shown_domain}"


def mask_tax_id(tax_id: str) -> str:
    """Never a tax id in full: its last characters only (`GB123456789` → `***6789`)."""
    compact = re.sub(r"\s", "", tax_id)
    shown = 4 if len(compact) >= 8 else 2 if len(compact) >= 5 else 0
    return "***" + compact[len(compact) - shown :] if shown else "***"


def mask_text(text: str) -> str:
    """Free text (exception messages) with every e-mail address masked."""
    return _EMAIL.sub(lambda m: mask_email(m.group(0)) or "***", text)


# --- exceptions: filtering, paging, merging --------------------------------------------------

STATUSES = ("open", "resolved", "replayed", "all")
REASONS = frozenset(r.value for r in ExceptionReason)
SortKey = tuple[str, str]


def sort_key(item: Mapping[str, Any]) -> SortKey:
    """Oldest first (largest age), ties by id: first_seen is an ISO-8601 UTC string."""
    return (str(item["first_seen"]), str(item["exception_id"]))


def encode_cursor(key: SortKey) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).decode().rstrip("=")


def decode_cursor(text: str) -> SortKey:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        first_seen, exception_id = orjson.loads(raw)
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError):
        raise ValueError("cursor is not one this server handed out") from None
    return (str(first_seen), str(exception_id))


def _int_param(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}")
    return value


@dataclass(frozen=True, slots=True)
class ExceptionQuery:
    """`GET /exceptions` parameters: filters, then one page of the matches, oldest first."""

    reason: str | None = None
    customer_id: str | None = None
    status: str = "open"
    min_age_s: float | None = None
    exception_id: str | None = None
    limit: int = 50
    offset: int = 0
    cursor: SortKey | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> ExceptionQuery:
        reason = params.get("reason") or None
        if reason is not None and reason not in REASONS:
            raise ValueError(f"reason must be one of {', '.join(sorted(REASONS))}")
        status = params.get("status") or "open"
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        min_age = params.get("min_age_s") or None
        try:
            min_age_s = float(min_age) if min_age is not None else None
        except ValueError:
            raise ValueError("min_age_s must be a number of seconds") from None
        if min_age_s is not None and min_age_s < 0:
            raise ValueError("min_age_s must not be negative")
        limit = _int_param(params, "limit", 50, 1, MAX_PAGE)
        offset = _int_param(params, "offset", 0, 0, MAX_WINDOW - limit)
        cursor_text = params.get("cursor") or None
        if cursor_text is not None and offset:
            raise ValueError("page with cursor or with offset, not both")
        return cls(
            reason=reason,
            customer_id=params.get("customer_id") or None,
            status=status,
            min_age_s=min_age_s,
            exception_id=params.get("exception_id") or None,
            limit=limit,
            offset=offset,
            cursor=decode_cursor(cursor_text) if cursor_text else None,
        )

    def accepts(self, exc: BusinessException, now: datetime) -> bool:
        if self.status != "all" and exc.status.value != self.status:
            return False
        if self.reason is not None and exc.reason.value != self.reason:
            return False
        if self.customer_id is not None and exc.customer_id != self.customer_id:
            return False
        if self.exception_id is not None and exc.exception_id != self.exception_id:
            return False
        return self.min_age_s is None or age_s(exc.first_seen, now) >= self.min_age_s

    def local_params(self) -> dict[str, str]:
        """What each worker is asked for: every match up to the end of this page."""
        params = {"local": "1", "status": self.status, "limit": str(self.offset + self.limit)}
        for name in ("reason", "customer_id", "exception_id"):
            value = getattr(self, name)
            if value is not None:
                params[name] = value
        if self.min_age_s is not None:
            params["min_age_s"] = str(self.min_age_s)
        if self.cursor is not None:
            params["cursor"] = encode_cursor(self.cursor)
        return params


def age_s(first_seen: datetime, now: datetime) -> float:
    return round(max(0.0, (now - first_seen).total_seconds()), 1)


def exception_item(key: str, kept: KeptException, now: datetime, raw: bool = False) -> dict[str, Any]:
    """One exception as the views show it (messages masked); `raw` adds the record itself, for
    the operator actions that write its next record."""
    exc = kept.exception
    offending = exc.offending
    item: dict[str, Any] = {
        "exception_id": exc.exception_id,
        "reason": exc.reason.value,
        "severity": exc.severity.value,
        "status": exc.status.value,
        "customer_id": exc.customer_id,
        "entity_id": exc.entity_id,
        "message": mask_text(exc.message),
        "fields": [{"field": f.field, "problem": mask_text(f.problem)} for f in exc.fields],
        "correlation_id": exc.correlation_id,
        "first_seen": exc.first_seen.isoformat(),
        "last_seen": exc.last_seen.isoformat(),
        "age_s": age_s(exc.first_seen, now),
        "attempts": exc.attempts,
        "replayable": offending is not None,
        "offending": None
        if offending is None
        else {"topic": offending.topic, "partition": offending.partition, "offset": offending.offset},
        "key": key,
        "recorded_at": kept.recorded_at.isoformat(),
        "position": {"partition": kept.partition, "offset": kept.offset},
    }
    if raw:
        item["record"] = orjson.loads(codec.dumps(exc))
    return item


def _newest(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether `a` is a later record of the same exception than `b`."""
    return (str(a["recorded_at"]), str(a["last_seen"])) > (str(b["recorded_at"]), str(b["last_seen"]))


def latest_per_exception(items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One item per exception id, its latest record (an exception whose key changed has one
    row under each key)."""
    latest: dict[str, Mapping[str, Any]] = {}
    for item in items:
        current = latest.get(item["exception_id"])
        if current is None or _newest(item, current):
            latest[item["exception_id"]] = item
    return [dict(i) for i in latest.values()]


def summarize_reasons(items: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Count and oldest first_seen per reason."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        entry = out.setdefault(item["reason"], {"count": 0, "oldest_first_seen": item["first_seen"]})
        entry["count"] += 1
        entry["oldest_first_seen"] = min(entry["oldest_first_seen"], item["first_seen"])
    return out


def select_local_exceptions(
    rows: Iterable[KeyExceptions], query: ExceptionQuery, now: datetime, raw: bool = False
) -> dict[str, Any]:
    """One worker's answer: the matches of its rows, oldest first, up to the end of the page."""
    rows = list(rows)
    items = latest_per_exception(
        exception_item(row.key, kept, now, raw) for row in rows for kept in row.exceptions.values()
    )
    by_id = {(row.key, k): kept for row in rows for k, kept in row.exceptions.items()}
    matched = [i for i in items if query.accepts(by_id[(i["key"], i["exception_id"])].exception, now)]
    matched.sort(key=sort_key)
    after = [i for i in matched if query.cursor is None or sort_key(i) > query.cursor]
    return {
        "items": after[: query.offset + query.limit],
        "matched": len(matched),
        "remaining": len(after),
        "by_reason": summarize_reasons(matched),
        "dropped": sum(row.dropped for row in rows),
    }


@dataclass
class WorkerAnswer:
    """What one worker said to a gather (`body` None when it did not answer)."""

    worker: str
    status: int
    body: dict[str, Any] | None
    error: str | None = None


def merge_exception_pages(
    answers: list[WorkerAnswer], query: ExceptionQuery, expected: set[int], now: datetime
) -> dict[str, Any]:
    """Every worker's matches → one page, oldest first, ages as of `now`; says which
    partitions no worker answered for."""
    bodies: list[dict[str, Any]] = [a.body for a in answers if a.body is not None]
    items = latest_per_exception(i for body in bodies for i in body["items"])
    for item in items:
        item["age_s"] = age_s(datetime.fromisoformat(item["first_seen"]), now)
    items.sort(key=sort_key)
    page = items[query.offset : query.offset + query.limit]
    matched = sum(int(body["matched"]) for body in bodies)
    by_reason: dict[str, dict[str, Any]] = {}
    for body in bodies:
        for reason, entry in body["by_reason"].items():
            merged = by_reason.setdefault(
                reason, {"count": 0, "oldest_first_seen": entry["oldest_first_seen"]}
            )
            merged["count"] += entry["count"]
            merged["oldest_first_seen"] = min(merged["oldest_first_seen"], entry["oldest_first_seen"])
    for entry in by_reason.values():
        entry["oldest_age_s"] = age_s(datetime.fromisoformat(entry["oldest_first_seen"]), now)
    covered = {p for body in bodies for p in body.get("partitions", ())}
    missing = sorted(expected - covered)
    remaining = sum(int(body.get("remaining", 0)) for body in bodies)
    more = max(remaining, len(items)) > query.offset + query.limit
    return {
        "items": page,
        "matched": matched,
        "by_reason": dict(sorted(by_reason.items())),
        "dropped": sum(int(body.get("dropped", 0)) for body in bodies),
        "limit": query.limit,
        "offset": query.offset,
        "next_cursor": encode_cursor(sort_key(page[-1])) if more and page else None,
        "complete": not missing,
        "missing_partitions": missing,
        "workers": [
            {
                "worker": a.worker,
                "status": a.status,
                "partitions": (a.body or {}).get("partitions"),
                "error": a.error,
            }
            for a in answers
        ],
    }


# --- the customer 360 ------------------------------------------------------------------------


def contracts_part(customer_id: str, row: CustomerContracts | None) -> dict[str, Any]:
    contracts = sorted(
        (row.contracts if row else {}).values(), key=lambda c: (c.effective_date, c.contract_id)
    )
    return {
        "customer_id": customer_id,
        "found": row is not None,
        "contracts": [
            {
                "contract_id": c.contract_id,
                "status": c.status.value,
                "amendment_number": c.amendment_number,
                "effective_date": c.effective_date.isoformat(),
                "end_date": c.end_date.isoformat() if c.end_date else None,
                "currency": c.currency,
                "waiting_amendments": len(c.waiting),
            }
            for c in contracts
        ],
    }


def invoices_part(customer_id: str, row: CustomerInvoices | None) -> dict[str, Any]:
    docs = row or CustomerInvoices(customer_id=customer_id)
    confirmed = docs.confirmed
    return {
        "customer_id": customer_id,
        "found": row is not None,
        "invoices": [
            {
                "invoice_id": i.invoice_id,
                "status": i.status.value,
                "total": i.total,
                "currency": i.currency,
                "erp_status": i.erp_status.value,
                "document_number": i.document_number,
                "erp_internal_id": i.erp_internal_id,
                "subsidiary": i.subsidiary,
                "idempotency_key": i.idempotency_key,
                "exception_ids": list(i.exception_ids),
            }
            for i in sorted(docs.invoices.values(), key=lambda i: i.invoice_id)
        ],
        "payments": [
            {"payment_id": pid, "idempotency_key": key, "erp_internal_id": confirmed.get(key)}
            for pid, key in sorted(docs.payments.items())
        ],
        "credit_memos": [
            {"credit_memo_id": mid, "idempotency_key": key, "erp_internal_id": confirmed.get(key)}
            for mid, key in sorted(docs.credit_memos.items())
        ],
        "waiting": [
            {
                "entity_type": w.change.entity_type.value,
                "entity_id": w.change.entity_id,
                "source": w.change.source.value,
                "customer_ref": w.change.customer_ref,
                "waits_for": w.waits_for,
                "since": w.parked_at.isoformat(),
            }
            for w in docs.waiting
        ],
    }


def ledger_part(customer_id: str, row: CustomerLedger | None) -> dict[str, Any]:
    ledger = row or CustomerLedger(customer_id=customer_id)
    return {
        "customer_id": customer_id,
        "found": row is not None,
        "entries": [
            {
                "idempotency_key": e.idempotency_key,
                "command": e.command,
                "state": e.state.value,
                "attempts": e.attempts,
                "erp_internal_id": e.erp_internal_id,
                "document_number": e.document_number,
                "error_code": e.error_code,
                "updated_at": e.updated_at.isoformat(),
            }
            for e in sorted(ledger.entries.values(), key=lambda e: (e.updated_at, e.idempotency_key))
        ],
        "blocked_on": ledger.blocked_on.idempotency_key if ledger.blocked_on else None,
        "queued": len(ledger.queued),
    }


def customer_exceptions_part(customer_id: str, row: KeyExceptions | None, now: datetime) -> dict[str, Any]:
    """Every exception kept under the customer's key, oldest first (all statuses)."""
    items = sorted(
        (exception_item(customer_id, kept, now) for kept in (row.exceptions.values() if row else ())),
        key=sort_key,
    )
    return {"customer_id": customer_id, "found": row is not None, "exceptions": items}


def stripe_customer_ids(master: CustomerMaster | None, invoices: Mapping[str, Any]) -> list[str]:
    """The billing (Stripe) customers known for this customer: the master record's, and those
    its waiting documents came from."""
    ids = {master.record.billing_customer_id} if master and master.record.billing_customer_id else set()
    ids |= {w["customer_ref"] for w in invoices.get("waiting", ()) if w.get("source") == "stripe"}
    return sorted(i for i in ids if i)


def customer_360(
    customer_id: str,
    master: CustomerMaster | None,
    contracts: dict[str, Any],
    invoices: dict[str, Any],
    ledger: dict[str, Any],
    exceptions: dict[str, Any],
) -> dict[str, Any]:
    """Everything known about one customer, personal data masked."""
    record = master.record if master else None
    found = master is not None or any(p.get("found") for p in (contracts, invoices, ledger, exceptions))
    return {
        "customer_id": customer_id,
        "found": found,
        "identities": {
            "canonical_id": customer_id,
            "crm_account_id": record.crm_account_id if record else None,
            "stripe_customer_ids": stripe_customer_ids(master, invoices),
            "erp_external_id": customer_id if master and master.upserted_digest else None,
            "erp_internal_id": master.erp_internal_id if master else None,
        },
        "master": None
        if record is None or master is None
        else {
            "name": record.name,
            "email": mask_email(record.email),
            "country": record.country,
            "currency": record.currency,
            "tax_ids": [mask_tax_id(t) for t in record.tax_ids],
            "parent_account_id": record.parent_account_id,
            "deleted": record.deleted,
            "subsidiary": master.subsidiary,
            "sent_to_erp": master.upserted_digest is not None,
        },
        "contracts": contracts["contracts"],
        "invoices": invoices["invoices"],
        "payments": invoices["payments"],
        "credit_memos": invoices["credit_memos"],
        "waiting": invoices["waiting"],
        "ledger": {k: ledger[k] for k in ("entries", "blocked_on", "queued")},
        "open_exceptions": [e for e in exceptions["exceptions"] if e["status"] == ExceptionStatus.OPEN.value],
    }


# --- pipeline health -------------------------------------------------------------------------

STAGES: dict[str, tuple[str, ...]] = {
    "ingest": (*SOURCE_TOPICS, INVOICE_OWNERS),
    "core": (CANONICAL, ERP_RESULTS),
    "sink": (ERP_COMMANDS,),
    "crm write-back": (CRM_WRITEBACK,),
    "duplicates": (CUSTOMER_FINGERPRINTS,),
    "exceptions": (EXCEPTIONS,),
}


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    topic: str  # the design name
    partition: int
    end: int | None
    committed: int | None  # the next offset the stage will read

    @property
    def lag(self) -> int | None:
        if self.end == 0:
            return 0  # nothing was ever written (Faust reports a committed 0 as None)
        if self.end is None or self.committed is None:
            return None
        return max(0, self.end - self.committed)


def stage_health(offsets: Iterable[PartitionOffsets]) -> dict[str, dict[str, Any]]:
    """Per stage: the partitions held and their backlog (end offset - committed offset)."""
    by_topic: dict[str, list[PartitionOffsets]] = {}
    for o in offsets:
        by_topic.setdefault(o.topic, []).append(o)
    out: dict[str, dict[str, Any]] = {}
    for stage, topics in STAGES.items():
        held = sorted((o for t in topics for o in by_topic.get(t, ())), key=lambda o: (o.topic, o.partition))
        lags = [o.lag for o in held]
        out[stage] = {
            "topics": list(topics),
            "partitions": [f"{o.topic}:{o.partition}" for o in held],
            "lag": sum(lag for lag in lags if lag is not None),
            "unknown_lag": sum(1 for lag in lags if lag is None),
            "per_partition": [
                {
                    "topic": o.topic,
                    "partition": o.partition,
                    "end": o.end,
                    "committed": o.committed,
                    "lag": o.lag,
                }
                for o in held
            ],
        }
    return out


def merge_pipeline(answers: list[WorkerAnswer], expected: Mapping[str, int]) -> dict[str, Any]:
    """Every worker's stages → per stage: who holds which partitions, total lag, coverage."""
    stages: dict[str, dict[str, Any]] = {}
    for stage, topics in STAGES.items():
        total = sum(expected.get(t, 0) for t in topics)
        stages[stage] = {"topics": list(topics), "expected": total, "assigned": 0, "lag": 0, "unknown_lag": 0}
        stages[stage]["workers"] = {}
    workers = []
    for a in answers:
        body = a.body or {}
        workers.append(
            {
                "worker": a.worker,
                "status": a.status,
                "ready": body.get("ready"),
                "rebalancing": body.get("rebalancing"),
                "in_recovery": body.get("in_recovery"),
                "error": a.error,
            }
        )
        for stage, health in (body.get("stages") or {}).items():
            if stage not in stages:
                continue
            merged = stages[stage]
            merged["assigned"] += len(health["partitions"])
            merged["lag"] += health["lag"]
            merged["unknown_lag"] += health["unknown_lag"]
            merged["workers"][a.worker] = health["partitions"]
    return {"workers": workers, "stages": stages}


# --- HTTP glue -------------------------------------------------------------------------------

Routed = Callable[..., Awaitable[web.Response]]


def _token() -> str | None:
    return settings.api_token.get_secret_value() if settings.api_token else None


def authorize(request: web.Request) -> Denial | None:
    return check_bearer(_token(), request.headers.get("Authorization"))


def _ready() -> Denial | None:
    return serving_denial(bool(app.rebalancing), bool(getattr(app, "in_recovery", False)))


def deny(view: web.View, denial: Denial, html: bool = False) -> web.Response:
    if html:
        return view.html(
            ops_page.render_error(denial.status, denial.detail),
            status=denial.status,
            headers=denial.headers(),
        )
    return view.json(denial.body(), status=denial.status, headers=denial.headers())


def _bad_request(view: web.View, detail: str, html: bool = False) -> web.Response:
    return deny(view, Denial(400, "bad_request", detail), html)


def _internal_headers(request: web.Request) -> dict[str, str]:
    """What a worker sends another on the caller's behalf: the caller's token, and who asks."""
    return {
        "Authorization": request.headers.get("Authorization", ""),
        FORWARDED_BY: str(app.conf.canonical_url),
    }


async def gather(request: web.Request, path: str, params: dict[str, str], table: Any) -> list[WorkerAnswer]:
    """Ask every worker of the group (this one included, over HTTP like the others: one code
    path) for its local answer."""
    try:
        workers = sorted(peers(app, table))
    except KeyError:
        workers = []
    me = str(app.conf.canonical_url)
    if not any(router.is_me(w) for w in workers):
        workers.append(me)
    answers = await gather_json(app, workers, path, params, _internal_headers(request), GATHER_TIMEOUT_S)
    out = []
    for worker, status, body in answers:
        if status == 200 and isinstance(body, dict):
            out.append(WorkerAnswer(worker, status, body))
        else:
            error = body.get("detail") if isinstance(body, dict) else str(body)
            out.append(WorkerAnswer(worker, status, None, error or f"HTTP {status}"))
    return out


async def _part(
    request: web.Request, table: Any, key: str, path: str, local: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """One part of the 360 from the worker that owns `key` in `table`: read here when that is
    this worker (the usual case: every stage runs on every worker, and co-subscribed topics of
    one partition count are assigned together), fetched from the owner when not."""
    try:
        await router.know_partitions(table)
        owner = router.owner(table, key)
    except KeyError:
        raise ServiceUnavailable(
            "no worker holds this customer's partition yet (rebalancing); retry"
        ) from None
    if router.is_me(owner):
        return local()
    status, body = await get_json(app, str(owner), path, {}, _internal_headers(request), FORWARD_TIMEOUT_S)
    if status == 200 and isinstance(body, dict) and "found" in body:
        return body
    raise ServiceUnavailable(f"{path} was not answered by its owner {owner} ({status or body})")


def _contracts_here(customer_id: str) -> dict[str, Any]:
    return contracts_part(customer_id, get_row(contract_table, customer_id, CustomerContracts))


def _invoices_here(customer_id: str) -> dict[str, Any]:
    return invoices_part(customer_id, get_row(invoice_table, customer_id, CustomerInvoices))


def _ledger_here(customer_id: str) -> dict[str, Any]:
    return ledger_part(customer_id, get_row(posting_ledger_table, customer_id, CustomerLedger))


def _exceptions_here(customer_id: str) -> dict[str, Any]:
    row = get_row(exception_table, customer_id, KeyExceptions)
    return customer_exceptions_part(customer_id, row, datetime.now(UTC))


async def _customer_360_here(request: web.Request, customer_id: str) -> dict[str, Any]:
    master = get_row(customer_table, customer_id, CustomerMaster)
    base = f"/customers/{customer_id}"
    contracts = await _part(
        request, contract_table, customer_id, f"{base}/contracts", lambda: _contracts_here(customer_id)
    )
    invoices = await _part(
        request, invoice_table, customer_id, f"{base}/invoices", lambda: _invoices_here(customer_id)
    )
    ledger = await _part(
        request, posting_ledger_table, customer_id, f"{base}/ledger", lambda: _ledger_here(customer_id)
    )
    exceptions = await _part(
        request, exception_table, customer_id, f"{base}/exceptions", lambda: _exceptions_here(customer_id)
    )
    body = customer_360(customer_id, master, contracts, invoices, ledger, exceptions)
    body["served_by"] = str(app.conf.canonical_url)  # the worker holding the customer's partition
    return body


def _answer(view: web.View, body: dict[str, Any]) -> web.Response:
    return view.json(body, status=200 if body.get("found") else 404)


@app.table_route(table=customer_table, match_info="customer_id")
async def _customer_owned(view: web.View, request: web.Request, **kwargs: Any) -> web.Response:
    if denial := _ready():
        return deny(view, denial)
    return _answer(view, await _customer_360_here(request, kwargs["customer_id"]))


@app.table_route(table=customer_table, match_info="customer_id")
async def _customer_page_owned(view: web.View, request: web.Request, **kwargs: Any) -> web.Response:
    if denial := _ready():
        return deny(view, denial, html=True)
    body = await _customer_360_here(request, kwargs["customer_id"])
    return view.html(ops_page.render_customer(body), status=200 if body["found"] else 404)


def _local_part(table: Any, read: Callable[[str], dict[str, Any]]) -> Routed:
    @app.table_route(table=table, match_info="customer_id")
    async def owned(view: web.View, request: web.Request, **kwargs: Any) -> web.Response:
        if denial := _ready():
            return deny(view, denial)
        # 200 with `found` false when the table has no row: whether the customer exists is the
        # 360's question, not one part's.
        return view.json(read(kwargs["customer_id"]))

    return cast(Routed, owned)


async def _authorized(
    view: web.View, request: web.Request, routed: Any, kwargs: Mapping[str, Any], html: bool = False
) -> web.Response:
    if denial := authorize(request):
        return deny(view, denial, html)
    return await cast(Routed, routed)(view, request, **kwargs)


_contracts_owned = _local_part(contract_table, _contracts_here)
_invoices_owned = _local_part(invoice_table, _invoices_here)
_ledger_owned = _local_part(posting_ledger_table, _ledger_here)
_exceptions_owned = _local_part(exception_table, _exceptions_here)


@app.page("/customers/{customer_id}")
class CustomerView(web.View):
    """The customer 360 (design §5)."""

    async def get(self, request: web.Request, **kwargs: Any) -> web.Response:
        return await _authorized(self, request, _customer_owned, kwargs)


@app.page("/customers/{customer_id}/contracts")
class CustomerContractsView(web.View):
    async def get(self, request: web.Request, **kwargs: Any) -> web.Response:
        return await _authorized(self, request, _contracts_owned, kwargs)


@app.page("/customers/{customer_id}/invoices")
class CustomerInvoicesView(web.View):
    async def get(self, request: web.Request, **kwargs: Any) -> web.Response:
        return await _authorized(self, request, _invoices_owned, kwargs)


@app.page("/customers/{customer_id}/ledger")
class CustomerLedgerView(web.View):
    async def get(self, request: web.Request, **kwargs: Any) -> web.Response:
        return await _authorized(self, request, _ledger_owned, kwargs)


@app.page("/customers/{customer_id}/exceptions")
class CustomerExceptionsView(web.View):
    async def get(self, request: web.Request, **kwargs: Any) -> web.Response:
        return await _authorized(self, request, _exceptions_owned, kwargs)


async def _expected_partitions(table: Any) -> set[int]:
    count = await partition_count(app, table.changelog_topic.get_topic_name())
    return set(range(count or settings.partitions))


def _local_exceptions(query: ExceptionQuery, raw: bool) -> dict[str, Any]:
    rows = [codec.loads(KeyExceptions, value) for _, value in exception_table.items()]
    answer = select_local_exceptions(rows, query, datetime.now(UTC), raw)
    answer["partitions"] = active_partitions(app, exception_table)
    answer["worker"] = str(app.conf.canonical_url)
    return answer


async def list_exceptions(request: web.Request, query: ExceptionQuery) -> dict[str, Any]:
    answers = await gather(request, "/exceptions", query.local_params(), exception_table)
    expected = await _expected_partitions(exception_table)
    return merge_exception_pages(answers, query, expected, datetime.now(UTC))


@app.page("/exceptions")
class ExceptionsView(web.View):
    """Exceptions across every partition, oldest first (`?local=1`: this worker's only)."""

    async def get(self, request: web.Request, **kwargs: Any) -> web.Response:
        if denial := authorize(request):
            return deny(self, denial)
        params = dict(request.query)
        try:
            query = ExceptionQuery.from_params(params)
        except ValueError as exc:
            return _bad_request(self, str(exc))
        if params.get("local") == "1":
            if denial := _ready():
                return deny(self, denial)
            return self.json(_local_exceptions(query, raw=params.get("raw") == "1"))
        return self.json(await list_exceptions(request, query))


async def find_exception(request: web.Request, exception_id: str) -> dict[str, Any] | None:
    """The latest record of one exception, wherever it is kept (its record included)."""
    query = ExceptionQuery(status="all", exception_id=exception_id, limit=5)
    params = {**query.local_params(), "raw": "1"}
    answers = await gather(request, "/exceptions", params, exception_table)
    found = latest_per_exception(i for a in answers if a.body for i in a.body["items"])
    if not found and any(a.body is None for a in answers):
        raise ServiceUnavailable("not every worker answered; the exception may be on one that did not")
    return found[0] if found else None


def _exception_of(item: Mapping[str, Any]) -> BusinessException:
    return BusinessException.model_validate_json(orjson.dumps(item["record"]))


async def replay_one(item: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """Re-drive the offending message of one open exception with `streams.operations.replay` (which also
    writes its REPLAYED record)."""
    exc = _exception_of(item)
    if exc.status is not ExceptionStatus.OPEN:
        return 409, {"error": "not_open", "detail": f"the exception is {exc.status.value}"}
    if exc.offending is None:
        return 409, {"error": "not_replayable", "detail": "no offending message (raised by a timer)"}
    key = item["key"]
    position = item["position"]
    record = RawRecord(
        topic=settings.topic(EXCEPTIONS),
        partition=int(position["partition"]),
        offset=int(position["offset"]),
        timestamp=datetime.fromisoformat(item["recorded_at"]),
        key=None if key == UNKEYED else str(key).encode(),
        value=None,
    )
    plan = ReplayPlan(ReplayKind.EXCEPTIONS, scanned=1, exceptions=[ExceptionEntry(exc, record)])
    report = await execute_replay(settings, plan, timeout=REPLAY_TIMEOUT_S)
    [outcome] = report.items
    body = {
        "exception_id": exc.exception_id,
        "correlation_id": exc.correlation_id,
        "outcome": outcome.outcome.value,
        "replay_of": outcome.ref,
        "source_topic": outcome.source_topic,
        "detail": outcome.why,
    }
    log.info(
        "operator replayed an exception",
        extra={
            "correlation_id": exc.correlation_id,
            "exception_id": exc.exception_id,
            "reason": exc.reason.value,
            "outcome": outcome.outcome.value,
        },
    )
    if outcome.outcome is Outcome.REPLAYED:
        return 200, body
    return 410 if outcome.why and "no longer" in outcome.why else 503, {"error": "not_replayed", **body}


async def resolve_one(item: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """Write the exception's RESOLVED record (a person dealt with it)."""
    exc = _exception_of(item)
    if exc.status is ExceptionStatus.RESOLVED:
        return 409, {"error": "already_resolved", "detail": "the exception is resolved"}
    now = datetime.now(UTC)
    resolved = exc.model_copy(update={"status": ExceptionStatus.RESOLVED, "last_seen": now})
    key = item["key"]
    cause = f"operator:resolve:{exc.exception_id}"
    fut = await exceptions_topic.send(
        key=None if key == UNKEYED else key,
        value=resolved,
        headers=h.outgoing(exc.correlation_id, cause),
        force=True,
    )
    await fut
    log.info(
        "operator resolved an exception",
        extra={
            "correlation_id": exc.correlation_id,
            "exception_id": exc.exception_id,
            "reason": exc.reason.value,
        },
    )
    return 200, {"exception_id": exc.exception_id, "correlation_id": exc.correlation_id, "status": "resolved"}


Action = Callable[[Mapping[str, Any]], Awaitable[tuple[int, dict[str, Any]]]]


async def _operator_action(
    view: web.View, request: web.Request, exception_id: str, action: Action
) -> web.Response:
    if denial := authorize(request):
        return deny(view, denial)
    try:
        item = await find_exception(request, exception_id)
        if item is None:
            return view.json({"error": "not_found", "detail": f"no exception {exception_id}"}, status=404)
        status, body = await action(item)
    except (KafkaError, ReplayError, OSError) as exc:
        log.warning(
            "operator action failed", extra={"exception_id": exception_id, "error": type(exc).__name__}
        )
        return deny(
            view, Denial(503, "kafka_unavailable", f"the action did not complete: {type(exc).__name__}")
        )
    except ValidationError:
        return deny(view, Denial(500, "unreadable_exception", "the kept exception record does not decode"))
    return view.json(body, status=status)


@app.page("/exceptions/{exception_id}/replay")
class ReplayExceptionView(web.View):
    async def post(self, request: web.Request, **kwargs: Any) -> web.Response:
        return await _operator_action(self, request, kwargs["exception_id"], replay_one)


@app.page("/exceptions/{exception_id}/resolve")
class ResolveExceptionView(web.View):
    async def post(self, request: web.Request, **kwargs: Any) -> web.Response:
        return await _operator_action(self, request, kwargs["exception_id"], resolve_one)


@app.page("/trace/{correlation_id}")
class TraceView(web.View):
    """Every hop of one business transaction, read back from the topics."""

    async def get(self, request: web.Request, **kwargs: Any) -> web.Response:
        if denial := authorize(request):
            return deny(self, denial)
        correlation_id = kwargs["correlation_id"]
        try:
            since = parse_since(request.query.get("since"), datetime.now(UTC))
            budget = _int_param(request.query, "budget", DEFAULT_BUDGET, 1, MAX_BUDGET)
        except ValueError as exc:
            return _bad_request(self, str(exc))
        customer_id = request.query.get("customer_id") or None
        try:
            found = await trace(settings, correlation_id, since, budget=budget, customer_id=customer_id)
        except (KafkaError, ReplayError, OSError) as exc:
            log.warning("trace failed", extra={"correlation_id": correlation_id, "error": type(exc).__name__})
            return deny(self, Denial(503, "kafka_unavailable", f"the topics could not be read: {exc}"))
        log.info(
            "trace read",
            extra={"correlation_id": correlation_id, "hops": len(found.hops), "scanned": found.scanned},
        )
        return self.json(found.to_json())


def _local_pipeline() -> dict[str, Any]:
    names = {settings.topic(t): t for topics in STAGES.values() for t in topics}
    monitor = app.monitor
    committed_now: Mapping[Any, Any] = getattr(app.consumer, "_committed_offset", {})
    offsets = []
    for tp in app.consumer.assignment():
        if tp.topic not in names:
            continue
        end = monitor.tp_end_offsets.get(tp)
        if end is None:
            end = app.consumer.highwater(tp)
        committed = monitor.tp_committed_offsets.get(tp) or committed_now.get(tp)
        offsets.append(PartitionOffsets(names[tp.topic], tp.partition, end, committed))
    return {
        "worker": str(app.conf.canonical_url),
        "ready": _ready() is None,
        "rebalancing": bool(app.rebalancing),
        "in_recovery": bool(getattr(app, "in_recovery", False)),
        "stages": stage_health(offsets),
    }


async def pipeline(request: web.Request) -> dict[str, Any]:
    answers = await gather(request, "/pipeline", {"local": "1"}, exception_table)
    expected = {t: await partition_count(app, settings.topic(t)) or 0 for ts in STAGES.values() for t in ts}
    return merge_pipeline(answers, expected)


@app.page("/pipeline")
class PipelineView(web.View):
    """Stages, the partitions each worker holds, and the backlog (lag) per stage."""

    async def get(self, request: web.Request, **kwargs: Any) -> web.Response:
        if denial := authorize(request):
            return deny(self, denial)
        if request.query.get("local") == "1":
            return self.json(_local_pipeline())
        return self.json(await pipeline(request))


# --- the ops page ----------------------------------------------------------------------------


@app.page("/")
class OpsPage(web.View):
    """The ops page shell: no data of its own; its script asks for the token, keeps it in
    sessionStorage and loads the server-rendered fragments below with it."""

    async def get(self, request: web.Request, **kwargs: Any) -> web.Response:
        nonce = secrets.token_urlsafe(16)
        return self.html(
            ops_page.render_shell(nonce, str(app.conf.canonical_url)),
            headers=ops_page.security_headers(nonce),
        )


@app.page("/ui/pipeline")
class PipelineFragment(web.View):
    async def get(self, request: web.Request, **kwargs: Any) -> web.Response:
        if denial := authorize(request):
            return deny(self, denial, html=True)
        return self.html(ops_page.render_pipeline(await pipeline(request)))


@app.page("/ui/exceptions")
class ExceptionsFragment(web.View):
    async def get(self, request: web.Request, **kwargs: Any) -> web.Response:
        if denial := authorize(request):
            return deny(self, denial, html=True)
        try:
            query = ExceptionQuery.from_params({"limit": "100", **dict(request.query)})
        except ValueError as exc:
            return _bad_request(self, str(exc), html=True)
        return self.html(ops_page.render_exceptions(await list_exceptions(request, query)))


@app.page("/ui/customers/{customer_id}")
class CustomerFragment(web.View):
    async def get(self, request: web.Request, **kwargs: Any) -> web.Response:
        return await _authorized(self, request, _customer_page_owned, kwargs, html=True)


__all__ = [
    "Denial",
    "ExceptionQuery",
    "PartitionOffsets",
    "WorkerAnswer",
    "check_bearer",
    "customer_360",
    "mask_email",
    "mask_tax_id",
    "mask_text",
    "merge_exception_pages",
    "merge_pipeline",
    "select_local_exceptions",
    "serving_denial",
    "stage_health",
]
