"""`ledgerflow backfill stripe` and `ledgerflow catch-up stripe`: load what Stripe held before
ledgerflow listened, and the events it missed while its webhook endpoint was down.

* backfill lists customers, subscriptions, invoices (whole), invoice payments and credit notes
  (customers first, so identities exist), each object a snapshot Event
  (`connectors.stripe.snapshots`) produced where its webhook would have gone. Resumable: after
  each page's records are acknowledged, the page's cursor goes to a checkpoint file under
  LEDGERFLOW_DATA_DIR; a re-run resumes from it, `--restart` starts over.
* catch-up reads the three Stripe source topics (the last 30 days) for the events ledgerflow
  has, lists `/v1/events` from the newest of them less an overlap, and produces exactly the
  ones it has not seen, each object re-read at the pinned version.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

import streams.stripe
from connectors.stripe.client import RETRIEVABLE, StripeApi, StripeApiError, StripeNotFound
from connectors.stripe.routing import route
from connectors.stripe.snapshots import caught_up_event, snapshot_event
from streams.headers import outgoing, stable_id
from streams.kafka_io import kafka_security
from streams.settings import Settings
from streams.topic_names import STRIPE_TOPICS

log = logging.getLogger(__name__)

BACKFILL_ORDER: tuple[tuple[str, dict[str, Any]], ...] = (
    ("customers", {}),
    ("subscriptions", {"status": "all"}),  # Stripe lists only non-canceled ones without it
    ("invoices", {}),
    ("invoice_payments", {}),
    ("credit_notes", {}),
)
"""What a backfill lists, in order: customers first, so every later object's customer exists."""
CHECKPOINT_FILE = "stripe-backfill.json"
EVENT_RETENTION_S = 30 * 86400


def stripe_api(s: Settings) -> StripeApi:
    api = streams.stripe.stripe_api(s)
    if api is None:
        raise click.ClickException("set LEDGERFLOW_STRIPE_API_KEY (a secret or restricted read key)")
    return api


def _producer(s: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=s.bootstrap, acks="all", enable_idempotence=True, linger_ms=10, **kafka_security(s)
    )


async def _send(producer: AIOKafkaProducer, s: Settings, event: dict[str, Any], causation: str) -> Any:
    """Queue one Stripe Event for its topic and key; the future of its acknowledgement."""
    stream, key = route(event)
    headers = outgoing(stable_id("correlation", "stripe", event["id"]), causation)
    return await producer.send(
        s.topic(stream.value),
        orjson.dumps(event),
        key=key.encode() if key is not None else None,  # as the ingress sends a keyless one
        headers=list(headers.items()),
    )


# --- backfill -------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """Where a backfill has got to: per resource, the last listed object whose snapshot is
    acknowledged, and whether the resource is done. Saved atomically (write, then rename)."""

    path: Path
    since: int | None
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, since: int | None, restart: bool) -> Checkpoint:
        if restart or not path.exists():
            return cls(path, since)
        saved = orjson.loads(path.read_bytes())
        if saved.get("since") != since:
            raise click.ClickException(
                f"{path} is a backfill since {saved.get('since')}, not {since}: "
                "re-run with that --since, or --restart"
            )
        return cls(path, since, saved.get("resources") or {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({"since": self.since, "resources": self.resources}))
        tmp.replace(self.path)


@dataclass
class BackfillReport:
    produced: dict[str, int] = field(default_factory=dict)
    """Snapshot Events produced, per resource."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Objects listed but not sent (an invoice payment not paid, a status without an Event)."""
    resumed: list[str] = field(default_factory=list)
    """Resources this run resumed from a checkpoint's cursor."""


async def backfill(
    s: Settings,
    api: StripeApi,
    since: int | None,
    restart: bool = False,
    tick: Callable[[int], None] = lambda n: None,
) -> BackfillReport:
    """List every resource (created ≥ `since`) and produce each object's snapshot Event."""
    checkpoint = Checkpoint.load(s.data_dir / CHECKPOINT_FILE, since, restart)
    report = BackfillReport()
    producer = _producer(s)
    await producer.start()
    try:
        for resource, base_params in BACKFILL_ORDER:
            state = checkpoint.resources.setdefault(resource, {"after": None, "done": False, "produced": 0})
            if state["done"]:
                continue
            if state["after"] is not None:
                report.resumed.append(resource)
            params = {**base_params, **({"created": {"gte": since}} if since is not None else {})}
            async for page in api.pages(resource, params, state["after"]):
                pending = []
                for obj in page:
                    whole = await api.whole(obj) if resource == "invoices" else obj
                    event = snapshot_event(whole, api.api_version)
                    if event is None:
                        report.skipped[resource] = report.skipped.get(resource, 0) + 1
                        continue
                    pending.append(await _send(producer, s, event, f"backfill:stripe:{event['id']}"))
                await asyncio.gather(*pending)  # acknowledged (acks=all) before the cursor moves
                state["after"] = page[-1]["id"]
                state["produced"] += len(pending)
                report.produced[resource] = report.produced.get(resource, 0) + len(pending)
                checkpoint.save()
                tick(len(page))
            state["done"] = True
            checkpoint.save()
    finally:
        await producer.stop()
    return report


class Since(click.ParamType):
    """A date (`2026-01-31`, midnight UTC) or an ISO-8601 instant; naive times are UTC."""

    name = "DATE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a date (2026-01-31) or an ISO-8601 time", param, ctx)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp())


@click.group("backfill")
def backfill_group() -> None:
    """Load what a source held before ledgerflow listened to it."""


@backfill_group.command("stripe")
@click.option("--since", type=Since(), default=None, help="Only objects created since (default: all).")
@click.option("--restart", is_flag=True, help="Ignore the checkpoint of an earlier run and start over.")
def backfill_stripe_command(since: int | None, restart: bool) -> None:
    """Customers, subscriptions, invoices, invoice payments and credit notes from Stripe's API
    into the Stripe source topics, as snapshot Events (a re-run after Ctrl-C resumes)."""
    from streams.settings import settings

    async def run(tick: Callable[[int], None]) -> tuple[BackfillReport, StripeApi]:
        async with stripe_api(settings) as api:
            return await backfill(settings, api, since, restart, tick), api

    started = time.monotonic()
    try:
        # Stripe's lists carry no total: the bar counts objects as they come.
        with click.progressbar(_unknown_length(), label="backfill stripe", show_pos=True) as bar:
            report, api = asyncio.run(run(bar.update))
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: re-run to resume from {settings.data_dir / CHECKPOINT_FILE}", err=True)
        raise SystemExit(130) from None
    except StripeApiError as exc:
        raise click.ClickException(f"Stripe: {exc}") from exc
    took = time.monotonic() - started
    resumed = f" (resumed {', '.join(report.resumed)})" if report.resumed else ""
    click.echo(
        f"produced {sum(report.produced.values())} snapshot events in {took:.1f}s{resumed}: "
        + ", ".join(f"{r} {n}" for r, n in report.produced.items())
        + (f"; skipped {report.skipped}" if report.skipped else "")
        + f"; {api.requests} requests, {api.throttled} rate-limited"
    )


def _unknown_length() -> Any:
    yield from ()


# --- catch-up -------------------------------------------------------------------------------


@dataclass
class SeenEvents:
    ids: set[str] = field(default_factory=set)
    newest: int | None = None
    """The newest `created` among them (unix seconds)."""
    unreadable: int = 0


async def seen_stripe_events(s: Settings, now: float, timeout_s: float = 120.0) -> SeenEvents:
    """The Stripe events on the three source topics since `now` - 30 days (read_committed, up
    to the end offsets at the start): their ids and the newest `created`."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=s.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        **kafka_security(s),
    )
    await consumer.start()
    seen = SeenEvents()
    try:
        tps = await _partitions(s, [s.topic(t) for t in STRIPE_TOPICS])
        if not tps:
            return seen
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.offsets_for_times({tp: int((now - EVENT_RETENTION_S) * 1000) for tp in tps})
        todo = {}
        for tp in tps:
            found = starts.get(tp)
            start = found.offset if found is not None else ends[tp]
            if start < ends[tp]:
                consumer.seek(tp, start)
                todo[tp] = ends[tp]
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise click.ClickException(f"reading the Stripe topics took over {timeout_s:.0f}s")
            batch = await consumer.getmany(*todo, timeout_ms=500)
            for tp, messages in batch.items():
                for m in messages:
                    if m.offset < todo.get(tp, 0):
                        _note(seen, m.value)
            for tp in list(todo):
                if await consumer.position(tp) >= todo[tp]:
                    del todo[tp]
    finally:
        await consumer.stop()
    return seen


async def _partitions(s: Settings, topics: list[str]) -> list[TopicPartition]:
    """Every partition of those of `topics` that exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap, **kafka_security(s))
    await admin.start()
    try:
        # Only topics that exist: a metadata request for others may auto-create them.
        existing = set(await admin.list_topics())
        wanted = [t for t in topics if t in existing]
        described = await admin.describe_topics(wanted) if wanted else []
    finally:
        await admin.close()
    return [
        TopicPartition(t["topic"], p["partition"])
        for t in described
        if t["error_code"] == 0
        for p in sorted(t["partitions"], key=lambda p: p["partition"])
    ]


def _note(seen: SeenEvents, value: bytes | None) -> None:
    try:
        event = orjson.loads(value or b"")
        event_id, created = event["id"], int(event["created"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        seen.unreadable += 1
        return
    seen.ids.add(event_id)
    seen.newest = created if seen.newest is None else max(seen.newest, created)


@dataclass
class CatchUpReport:
    seen: int
    newest: int | None
    listed: int
    produced: list[str]
    kept_own_object: list[str]
    """Missed events whose object could not be re-read (deleted, or a kind not re-read)."""


async def catch_up(
    s: Settings, api: StripeApi, overlap_s: int, now: float | None = None, timeout_s: float = 120.0
) -> CatchUpReport:
    """Produce each Stripe event created since the newest one seen (less `overlap_s`) that the
    source topics do not hold, its object re-read at the pinned version."""
    now = time.time() if now is None else now
    seen = await seen_stripe_events(s, now, timeout_s)
    oldest = int(now) - EVENT_RETENTION_S
    start = max(oldest, seen.newest - overlap_s) if seen.newest is not None else oldest
    events = await api.events(start)
    missed = [e for e in events if e["id"] not in seen.ids]
    produced: list[str] = []
    kept: list[str] = []
    producer = _producer(s)
    await producer.start()
    try:
        pending = []
        for event in missed:
            fresh = await _reread(api, event)
            if fresh is None:
                kept.append(event["id"])
            out = caught_up_event(event, fresh, api.api_version)
            pending.append(await _send(producer, s, out, f"catch-up:stripe:{event['id']}"))
            produced.append(event["id"])
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return CatchUpReport(len(seen.ids), seen.newest, len(events), produced, kept)


async def _reread(api: StripeApi, event: dict[str, Any]) -> dict[str, Any] | None:
    """The event's object as it is now, at the pinned version; None when it is gone (404, or
    a deleted stub) or of a kind ledgerflow does not re-read."""
    obj = (event.get("data") or {}).get("object") or {}
    kind, object_id = obj.get("object"), obj.get("id")
    if kind not in RETRIEVABLE or not isinstance(object_id, str):
        return None
    try:
        fresh = await api.retrieve_object(kind, object_id)
    except StripeNotFound:
        return None
    return None if fresh.get("deleted") else fresh


_DURATION = re.compile(r"^(\d+)([smhd])$")


class Duration(click.ParamType):
    """`90s`, `30m`, `1h`, `2d`."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = _DURATION.match(str(value).strip())
        if match is None:
            self.fail(f"{value!r} is not a duration like 90s, 30m, 1h or 2d", param, ctx)
        return int(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


@click.group("catch-up")
def catch_up_group() -> None:
    """Produce what a source sent while ledgerflow was not listening."""


@catch_up_group.command("stripe")
@click.option(
    "--overlap",
    type=Duration(),
    default="1h",
    show_default=True,
    help="How far before the newest event seen to list from (late and out-of-order deliveries).",
)
def catch_up_stripe_command(overlap: int) -> None:
    """The Stripe events of the last 30 days that the source topics lack, each produced with
    its object re-read at LEDGERFLOW_STRIPE_API_VERSION."""
    from streams.settings import settings

    async def run() -> CatchUpReport:
        async with stripe_api(settings) as api:
            return await catch_up(settings, api, overlap)

    try:
        report = asyncio.run(run())
    except StripeApiError as exc:
        raise click.ClickException(f"Stripe: {exc}") from exc
    newest = datetime.fromtimestamp(report.newest, UTC).isoformat() if report.newest is not None else "none"
    click.echo(
        f"seen {report.seen} Stripe events on the topics (newest {newest}); "
        f"Stripe listed {report.listed} from {overlap}s before it; produced {len(report.produced)} missed"
        + (
            f" ({len(report.kept_own_object)} with their own object: gone or not re-read)"
            if report.kept_own_object
            else ""
        )
    )
    for event_id in report.produced:
        click.echo(f"  {event_id}")
