"""A stateful Stripe stand-in on loopback (tests, `make demo`): seeded with Stripe Events, it
keeps every event (for `/v1/events`, within Stripe's 30 days on an injectable clock) and each
object's latest snapshot (by the order the events were given), and answers Stripe's read API
as strictly as Stripe: a Bearer secret key, the one `Stripe-Version` it was seeded in, `limit`
1-100, `starting_after`/`ending_before` cursors with a real `has_more`, newest first, `created`
filters, unknown parameters (400 `parameter_unknown`) and ids (404 `resource_missing`), a rate
limit per endpoint (429 `rate_limit`), a `Request-Id` on every answer. Long invoices can embed
only their first 10 lines (`lines.has_more`), as Stripe's own snapshots of them do.

Routes: `GET /v1/{customers,subscriptions,invoices,credit_notes,invoice_payments,events}`, each
by id, `/v1/invoices/{id}/lines`, and by id only the other objects seeded (payment intents,
charges, refunds, disputes). `POST /admin/events` seeds more (a JSON list, or
`{"events": [...]}`); `/admin/faults` sets `rate_limit_per_s`, `burst_429`.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click
import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel, ConfigDict, Field

from connectors.sandbox import AppServer, Refused, SandboxState, json_response, sandbox_app

EVENT_RETENTION_S = 30 * 86400
"""Stripe lists and retrieves events of the last 30 days only."""
EMBEDDED_LINES = 10
"""Lines an invoice embeds before `lines.has_more` (the list's default page)."""
DEFAULT_KEY = "sk_test_ledgerflow_sandbox"

PLURAL = {
    "customer": "customers",
    "subscription": "subscriptions",
    "invoice": "invoices",
    "credit_note": "credit_notes",
    "invoice_payment": "invoice_payments",
    "payment_intent": "payment_intents",
    "charge": "charges",
    "refund": "refunds",
    "dispute": "disputes",
}
SINGULAR = {plural: name for name, plural in PLURAL.items()}

PAGING = frozenset({"limit", "starting_after", "ending_before", "expand"})
CREATED = frozenset({"created", "created[gt]", "created[gte]", "created[lt]", "created[lte]"})
LIST_FILTERS: dict[str, frozenset[str]] = {
    "customers": frozenset({"email"}),
    "subscriptions": frozenset({"customer", "status", "price"}),
    "invoices": frozenset({"customer", "status", "subscription", "collection_method"}),
    "credit_notes": frozenset({"customer", "invoice"}),
    "invoice_payments": frozenset({"invoice", "payment[type]", "payment[payment_intent]", "status"}),
    "events": frozenset({"type", "types", "delivery_success"}),
}
SUBSCRIPTION_STATUSES = frozenset(
    {
        "active",
        "all",
        "canceled",
        "ended",
        "incomplete",
        "incomplete_expired",
        "past_due",
        "paused",
        "trialing",
        "unpaid",
    }
)
_INDEXED = re.compile(r"^(?P<name>[a-z_]+)\[(?P<index>\d*)\]$")


class StripeFaults(BaseModel):
    """What the stand-in refuses besides bad requests (`/admin/faults` merges changes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate_limit_per_s: int = Field(default=25, ge=0)
    """Requests per second per endpoint (method and route) before 429 `rate_limit`; 0: none."""
    burst_429: int = Field(default=0, ge=0)
    """The next this many API calls answer 429 whatever the rate."""


def stripe_error(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> web.Response:
    """Stripe's error body: `{"error": {"type": "invalid_request_error", "message": …}}`."""
    error: dict[str, Any] = {"type": "invalid_request_error", "message": message}
    if code is not None:
        error["code"] = code
    if param is not None:
        error["param"] = param
    return json_response({"error": error}, status)


def refuse(status: int, message: str, code: str | None = None, param: str | None = None) -> Refused:
    return Refused(stripe_error(status, message, code, param))


class StripeSandbox(SandboxState[StripeFaults]):
    """The events, the objects' latest snapshots, the keys and version the stand-in accepts."""

    name = "stripe sandbox"

    def __init__(
        self,
        events: Iterable[dict[str, Any]] = (),
        api_keys: Iterable[str] = (DEFAULT_KEY,),
        api_version: str | None = None,
        faults: StripeFaults | None = None,
        paginate_long_invoices: bool = False,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        request_log_size: int = 1000,
    ) -> None:
        super().__init__(api_keys, faults or StripeFaults(), None, request_log_size, monotonic)
        self.api_version = api_version
        """The `Stripe-Version` it speaks: given, or that of the first event seeded."""
        self.paginate_long_invoices = paginate_long_invoices
        self.clock = clock
        self.events: list[dict[str, Any]] = []
        self.failed_deliveries: set[str] = set()
        """Event ids whose webhook deliveries failed (`delivery_success=false`)."""
        self.objects: dict[str, dict[str, dict[str, Any]]] = {plural: {} for plural in SINGULAR}
        """resource → id → latest snapshot, in the order each object first appeared."""
        self._event_index: dict[str, dict[str, Any]] = {}
        self._order: dict[tuple[str, str], int] = {}
        self._calls: dict[str, deque[float]] = {}
        self.seed(events)

    def seed(self, events: Iterable[dict[str, Any]], failed: Iterable[str] = ()) -> int:
        """Keep `events` (in this order: the later snapshot of an object wins) and return how
        many were new; an event id seen before is ignored (Stripe redelivers, it does not
        create twice)."""
        added = 0
        for event in events:
            if event.get("object") != "event" or not isinstance(event.get("id"), str):
                raise ValueError("a seed is a list of Stripe Event objects")
            if event["id"] in self._event_index:
                continue
            if self.api_version is None:
                self.api_version = event.get("api_version")
            self.events.append(event)
            self._event_index[event["id"]] = event
            added += 1
            obj = (event.get("data") or {}).get("object")
            if isinstance(obj, dict):
                self.hold(obj, deleted=event.get("type") == "customer.deleted")
        self.failed_deliveries.update(failed)
        return added

    def hold(self, obj: dict[str, Any], deleted: bool = False) -> None:
        """Keep `obj` as the latest snapshot of its object (one no Event announced, too: the
        invoice payments of a version before `invoice_payment.paid`); unknown kinds are not kept."""
        plural = PLURAL.get(obj.get("object", ""))
        if plural is None:
            return
        snapshot = {**obj, "deleted": True} if deleted else dict(obj)
        self._order.setdefault((plural, obj["id"]), len(self._order))
        self.objects[plural][obj["id"]] = snapshot

    def throttled(self, endpoint: str) -> bool:
        """Whether one more call to `endpoint` passes its per-second limit (counted if not)."""
        limit = self.faults.rate_limit_per_s
        if not limit:
            return False
        now = self._clock()
        calls = self._calls.setdefault(endpoint, deque())
        while calls and calls[0] <= now - 1.0:
            calls.popleft()
        if len(calls) >= limit:
            return True
        calls.append(now)
        return False

    def visible_events(self) -> list[dict[str, Any]]:
        oldest = self.clock() - EVENT_RETENTION_S
        return [e for e in self.events if int(e.get("created", 0)) >= oldest]

    def event(self, event_id: str) -> dict[str, Any] | None:
        event = self._event_index.get(event_id)
        if event is None or int(event.get("created", 0)) < self.clock() - EVENT_RETENTION_S:
            return None
        return self.shown_event(event)

    def shown_event(self, event: dict[str, Any]) -> dict[str, Any]:
        obj = event.get("data", {}).get("object")
        if isinstance(obj, dict) and obj.get("object") == "invoice":
            return {**event, "data": {**event["data"], "object": self.shown(obj)}}
        return event

    def shown(self, obj: dict[str, Any]) -> dict[str, Any]:
        """An object as Stripe answers it: a long invoice embeds its first 10 lines only."""
        lines = obj.get("lines") if obj.get("object") == "invoice" else None
        if not self.paginate_long_invoices or not isinstance(lines, dict):
            return obj
        data = lines.get("data") or []
        if len(data) <= EMBEDDED_LINES:
            return obj
        return {**obj, "lines": {**lines, "data": data[:EMBEDDED_LINES], "has_more": True}}

    def ordered(self, plural: str) -> list[dict[str, Any]]:
        """A resource's objects as Stripe lists them: newest `created` first (ties: the one
        that appeared later first); deleted customers are not listed."""
        objs = [o for o in self.objects[plural].values() if not o.get("deleted")]
        return sorted(
            objs, key=lambda o: (int(o.get("created", 0)), self._order[(plural, o["id"])]), reverse=True
        )


SANDBOX = web.AppKey("stripe_sandbox", StripeSandbox)


def _query(request: web.Request) -> dict[str, list[str]]:
    """The query as name → values, `types[0]`/`types[]` gathered under `types`."""
    out: dict[str, list[str]] = {}
    for name, value in request.query.items():
        match = _INDEXED.match(name)
        key = match["name"] if match and match["name"] in ("types", "expand") else name
        out.setdefault(key, []).append(value)
    return out


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise refuse(400, f"Invalid {name}: pass it once.", "parameter_invalid_string", name)
    return values[0]


def _integer(query: dict[str, list[str]], name: str) -> int | None:
    value = _one(query, name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise refuse(400, f"Invalid integer: {value}", "parameter_invalid_integer", name) from None


def _check_params(query: dict[str, list[str]], allowed: frozenset[str]) -> None:
    for name in query:
        if name not in allowed:
            raise refuse(400, f"Received unknown parameter: {name}", "parameter_unknown", name)


def _created_filter(query: dict[str, list[str]]) -> Callable[[dict[str, Any]], bool]:
    bounds: list[tuple[str, int]] = []
    exact = _integer(query, "created")
    if exact is not None:
        bounds.append(("eq", exact))
    for op in ("gt", "gte", "lt", "lte"):
        value = _integer(query, f"created[{op}]")
        if value is not None:
            bounds.append((op, value))
    tests = {
        "eq": lambda a, b: a == b,
        "gt": lambda a, b: a > b,
        "gte": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "lte": lambda a, b: a <= b,
    }
    return lambda obj: all(tests[op](int(obj.get("created", 0)), v) for op, v in bounds)


def _page(
    items: list[dict[str, Any]], query: dict[str, list[str]], url: str, shown: Callable[[Any], Any]
) -> web.Response:
    """A newest-first list page: `limit` (1-100, default 10) after `starting_after` or before
    `ending_before`, `has_more` whether the list goes on in that direction."""
    limit = _integer(query, "limit")
    if limit is None:
        limit = 10
    if not 1 <= limit <= 100:
        raise refuse(
            400,
            "This value must be greater than or equal to 1 and less than or equal to 100.",
            "parameter_invalid_integer",
            "limit",
        )
    after, before = _one(query, "starting_after"), _one(query, "ending_before")
    if after is not None and before is not None:
        raise refuse(400, "You may only specify one of these parameters: ending_before, starting_after.")
    positions = {obj["id"]: i for i, obj in enumerate(items)}
    cursor = after if after is not None else before
    if cursor is not None and cursor not in positions:
        param = "starting_after" if after is not None else "ending_before"
        raise refuse(400, f"No such object: '{cursor}'", "resource_missing", param)
    if before is not None:
        end = positions[before]
        start = max(0, end - limit)
        data, has_more = items[start:end], start > 0
    else:
        start = positions[after] + 1 if after is not None else 0
        data, has_more = items[start : start + limit], start + limit < len(items)
    return json_response(
        {"object": "list", "data": [shown(o) for o in data], "has_more": has_more, "url": url}
    )


async def list_resource(request: web.Request) -> web.StreamResponse:
    sandbox = request.app[SANDBOX]
    plural = request.match_info["resource"]
    if plural not in LIST_FILTERS:
        raise refuse(404, f"Unrecognized request URL (GET: /v1/{plural}).")
    query = _query(request)
    _check_params(query, PAGING | CREATED | LIST_FILTERS[plural])
    matches = _created_filter(query)
    if plural == "events":
        items = [sandbox.shown_event(e) for e in reversed(sandbox.visible_events()) if matches(e)]
        items = _filter_events(sandbox, items, query)
    else:
        items = [o for o in sandbox.ordered(plural) if matches(o)]
        items = _filter_objects(plural, items, query)
    return _page(items, query, f"/v1/{plural}", sandbox.shown)


def _filter_objects(plural: str, items: list[dict[str, Any]], query: dict[str, list[str]]) -> list[Any]:
    def ref(value: Any) -> Any:
        return value.get("id") if isinstance(value, dict) else value

    for name in ("customer", "invoice", "email", "collection_method"):
        value = _one(query, name)
        if value is not None:
            items = [o for o in items if ref(o.get(name)) == value]
    status = _one(query, "status")
    if plural == "subscriptions":
        if status is not None and status not in SUBSCRIPTION_STATUSES:
            raise refuse(
                400, f"Invalid status: must be one of {sorted(SUBSCRIPTION_STATUSES)}", None, "status"
            )
        if status is None:  # Stripe lists every subscription but the canceled ones by default
            items = [o for o in items if o.get("status") != "canceled"]
        elif status == "ended":
            items = [o for o in items if o.get("status") in ("canceled", "incomplete_expired")]
        elif status != "all":
            items = [o for o in items if o.get("status") == status]
    elif status is not None:
        items = [o for o in items if o.get("status") == status]
    subscription = _one(query, "subscription")
    if subscription is not None:
        items = [
            o
            for o in items
            if ((o.get("parent") or {}).get("subscription_details") or {}).get("subscription") == subscription
        ]
    payment_type = _one(query, "payment[type]")
    payment_intent = _one(query, "payment[payment_intent]")
    if payment_intent is not None and payment_type is None:
        raise refuse(400, "Missing required param: payment[type].", "parameter_missing", "payment[type]")
    if payment_type is not None:
        items = [o for o in items if (o.get("payment") or {}).get("type") == payment_type]
    if payment_intent is not None:
        items = [o for o in items if ref((o.get("payment") or {}).get("payment_intent")) == payment_intent]
    return items


def _filter_events(
    sandbox: StripeSandbox, items: list[dict[str, Any]], query: dict[str, list[str]]
) -> list[dict[str, Any]]:
    one_type, types = _one(query, "type"), query.get("types")
    if one_type is not None and types:
        raise refuse(400, "You may pass either `type` or `types`, but not both.", None, "types")
    if types and len(types) > 20:
        raise refuse(400, "You may pass up to 20 types.", None, "types")
    if one_type is not None:
        pattern = re.compile("^" + ".*".join(map(re.escape, one_type.split("*"))) + "$")
        items = [e for e in items if pattern.match(str(e.get("type")))]
    if types:
        items = [e for e in items if e.get("type") in types]
    delivered = _one(query, "delivery_success")
    if delivered is not None:
        if delivered not in ("true", "false"):
            raise refuse(
                400, "Invalid boolean: " + delivered, "parameter_invalid_boolean", "delivery_success"
            )
        wanted = delivered == "true"
        items = [e for e in items if (e["id"] not in sandbox.failed_deliveries) == wanted]
    return items


async def retrieve_resource(request: web.Request) -> web.StreamResponse:
    sandbox = request.app[SANDBOX]
    plural, object_id = request.match_info["resource"], request.match_info["id"]
    _check_params(_query(request), frozenset({"expand"}))
    if plural == "events":
        event = sandbox.event(object_id)
        if event is None:
            raise refuse(404, f"No such event: '{object_id}'", "resource_missing", "id")
        return json_response(event)
    if plural not in SINGULAR:
        raise refuse(404, f"Unrecognized request URL (GET: /v1/{plural}/{object_id}).")
    obj = sandbox.objects[plural].get(object_id)
    if obj is None:
        name = SINGULAR[plural].replace("_", " ")
        raise refuse(404, f"No such {name}: '{object_id}'", "resource_missing", "id")
    if obj.get("deleted"):  # Stripe answers a deleted customer with a stub
        return json_response({"id": object_id, "object": obj["object"], "deleted": True})
    return json_response(sandbox.shown(obj))


async def invoice_lines(request: web.Request) -> web.StreamResponse:
    sandbox = request.app[SANDBOX]
    invoice_id = request.match_info["id"]
    query = _query(request)
    _check_params(query, PAGING)
    invoice = sandbox.objects["invoices"].get(invoice_id)
    if invoice is None:
        raise refuse(404, f"No such invoice: '{invoice_id}'", "resource_missing", "invoice")
    lines = list((invoice.get("lines") or {}).get("data") or [])
    return _page(lines, query, f"/v1/invoices/{invoice_id}/lines", lambda line: line)


async def seed_events(request: web.Request) -> web.StreamResponse:
    """`POST /admin/events`: a JSON list of events, or `{"events": [...], "failed": [ids]}`."""
    sandbox = request.app[SANDBOX]
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json_response({"error": "body is not JSON"}, 400)
    if isinstance(body, list):
        body = {"events": body}
    elif not isinstance(body, dict):
        return json_response({"error": 'body must be a list of events or {"events": [...]}'}, 400)
    try:
        added = sandbox.seed(body.get("events") or [], body.get("failed") or [])
    except (ValueError, AttributeError, TypeError, KeyError) as exc:
        return json_response({"error": f"not a list of Stripe Events: {exc}"}, 400)
    return json_response({"added": added, "events": len(sandbox.events), "api_version": sandbox.api_version})


async def guard(
    sandbox: StripeSandbox, request: web.Request, handler: Handler, entry: dict[str, Any]
) -> web.StreamResponse:
    """Stripe's checks before an answer: key, version, rate; a `Request-Id` on every answer."""
    response = await _checked(sandbox, request, handler, entry)
    response.headers["Request-Id"] = "req_" + secrets.token_hex(7)
    return response


async def _checked(
    sandbox: StripeSandbox, request: web.Request, handler: Handler, entry: dict[str, Any]
) -> web.StreamResponse:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key:
        entry["fault"] = "unauthenticated"
        return stripe_error(
            401,
            "You did not provide an API key. You need to provide your API key in the Authorization "
            "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
        )
    if not sandbox.authorized(request):
        entry["fault"] = "unauthenticated"
        return stripe_error(
            401, f"Invalid API Key provided: {key[:8]}{'*' * max(0, len(key) - 12)}{key[-4:]}"
        )
    version = request.headers.get("Stripe-Version")
    # Unseeded, it has no version yet: any is taken (the first seed's becomes its own).
    if version is not None and sandbox.api_version is not None and version != sandbox.api_version:
        entry["fault"] = "version"
        return stripe_error(
            400,
            f"Invalid Stripe API version: {version}. This stand-in speaks {sandbox.api_version}.",
            "invalid_api_version",
        )
    # An endpoint is a method and route (`GET /v1/customers/{id}`): one limit for every id.
    route = getattr(request.match_info.route.resource, "canonical", request.path)
    resource = route.replace("{resource}", request.match_info.get("resource", ""))
    if sandbox.take_burst("burst_429") or sandbox.throttled(f"{request.method} {resource}"):
        entry["fault"] = "rate_limit"
        return json_response(
            {
                "error": {
                    "type": "invalid_request_error",
                    "code": "rate_limit",
                    "message": "Request rate limit exceeded. Learn more about rate limits here "
                    "https://stripe.com/docs/rate-limits.",
                }
            },
            429,
        )
    return await handler(request)


def stripe_sandbox_app(sandbox: StripeSandbox) -> web.Application:
    app = sandbox_app(SANDBOX, sandbox, (), guard)
    app.router.add_post("/admin/events", seed_events)
    app.router.add_get("/v1/invoices/{id}/lines", invoice_lines)
    app.router.add_get("/v1/{resource}", list_resource)
    app.router.add_get("/v1/{resource}/{id}", retrieve_resource)
    return app


def stripe_sandbox_server(
    sandbox: StripeSandbox, host: str = "127.0.0.1", port: int = 0
) -> AppServer[StripeSandbox]:
    """The stand-in as a server (`async with`: `url` once started, port 0 picks a free one)."""
    return AppServer(stripe_sandbox_app(sandbox), SANDBOX, host, port)


def load_seed(path: Path) -> list[dict[str, Any]]:
    """Events from a JSON file (a list, or `{"events": [...]}`) or JSON lines."""
    raw = path.read_bytes()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = [orjson.loads(line) for line in raw.splitlines() if line.strip()]
    events = body.get("events") if isinstance(body, dict) else body
    if not isinstance(events, list):
        raise ValueError(f"{path}: not a list of Stripe Events")
    return events


@click.command("stripe-sandbox")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=int, default=12113, show_default=True, help="Port (0 picks a free one).")
@click.option(
    "--seed",
    "seed_path",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Stripe Events to start with (JSON list or JSON lines); more via POST /admin/events.",
)
@click.option(
    "--api-key",
    "api_keys",
    multiple=True,
    help=f"Secret key to accept (repeatable; default {DEFAULT_KEY!r}).",
)
@click.option("--api-version", default=None, help="Stripe-Version it speaks (default: the seed's).")
@click.option(
    "--rate-limit", type=click.IntRange(0), default=25, show_default=True, help="Requests/s per endpoint."
)
@click.option(
    "--paginate-long-invoices/--whole-invoices",
    default=False,
    show_default=True,
    help="Invoices with more than 10 lines embed only the first 10 (lines.has_more).",
)
def stripe_sandbox_command(
    host: str,
    port: int,
    seed_path: Path | None,
    api_keys: tuple[str, ...],
    api_version: str | None,
    rate_limit: int,
    paginate_long_invoices: bool,
) -> None:
    """Run the Stripe stand-in (read API, events, cursors, rate limit) until Ctrl-C."""
    try:
        events = load_seed(seed_path) if seed_path else []
        sandbox = StripeSandbox(
            events,
            api_keys or (DEFAULT_KEY,),
            api_version,
            StripeFaults(rate_limit_per_s=rate_limit),
            paginate_long_invoices,
        )
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with stripe_sandbox_server(sandbox, host, port) as server:
            click.echo(
                f"Stripe sandbox on {server.url}: {len(sandbox.events)} events, "
                f"version {sandbox.api_version}; Ctrl-C stops it"
            )
            await stop.wait()

    asyncio.run(run())
    click.echo("Stripe sandbox stopped")
