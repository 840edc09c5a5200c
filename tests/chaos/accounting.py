"""The chaos run's accounting (design §6, invariant 2): every message on the source topics ends
in exactly one class, read back from the topics and the tables' changelogs after the run.

A source message's *events* are the canonical event ids its adapter maps it to (the same
`agents.ingest` adapters the workers run; one id per message in the simulated scenario). The
classes, checked in this order, the first that applies wins:

* **dead-lettered** — a `ledgerflow.dlq` entry names the message (`x-source-topic`,
  `x-source-partition`, `x-source-offset`).
* **forwarded** — (`billing.invoice-payments` only) stage 1 passed it on to `payments.changes`,
  keyed by its invoice's customer: the copy names it (`x-causation-id`) and is accounted there.
* **ignored** — its adapter maps it to no canonical event (an event type ledgerflow does not
  use).
* **redelivery** — every event of the message was carried by an earlier message (Stripe's
  at-least-once delivery): stage 1 or 2 suppressed it as a duplicate.
* **posted** — an `erp.commands` command caused by one of its events (`x-causation-id`; a
  document released after waiting keeps the event that brought it) has POSTED as the latest
  `erp.results` outcome of its idempotency key: the ERP holds what the event meant.
* **parked** — one of its events still waits at the end: in stage 1's `parked-billing` table
  (customer unknown) or in stage 2's `invoice-state` waiting list (customer, contract or invoice
  not confirmed yet).
* **exception** — an open `ledgerflow.exceptions` record names one of its events (the offending
  message's event id, or the command an ERP exception is about) and nothing of it posted. An
  `erp_unavailable` exception about a command that posted later (its lane parked, then went on)
  is superseded and names nothing.
* **applied** — its canonical event reached `ledgerflow.canonical` and stage 2 took it into the
  tables with no ERP document of its own: draft and already-posted invoice snapshots, stale
  snapshots, subscriptions, contracts, Stripe customers linking an identity, failed payment
  attempts, refunds (booked by nothing yet).
* **unaccounted** — none of the above: a lost message. There must be none.

So: events in = dead-lettered + forwarded + ignored + redelivery + posted + parked + exception +
applied.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import orjson
from pydantic import TypeAdapter, ValidationError

from canonical import BusinessException, ExceptionStatus, PostingOutcome, PostingResult, codec
from canonical.commands import AnyErpCommand, ErpCommand
from streams import headers as h
from streams.operations.replay import RawRecord, latest_exceptions
from tables.identity import ParkedChanges
from tables.invoice_owners import ParkedInvoicePayments
from tables.invoices import CustomerInvoices

INVOICE_PAYMENTS = "billing.invoice-payments"
SOURCE_TOPICS = ("crm.changes", "clm.changes", "billing.changes", "payments.changes", INVOICE_PAYMENTS)
Ref = tuple[str, int, int]
"""(topic, partition, offset) of one message."""
EventIds = Callable[[str, bytes, str | None], tuple[str, ...] | None]
"""(design topic name, raw value, key) → the canonical event ids it maps to; None if rejected."""

_COMMANDS: TypeAdapter[ErpCommand] = TypeAdapter(AnyErpCommand)


class Fate(StrEnum):
    DEAD_LETTERED = "dead-lettered"
    FORWARDED = "forwarded"
    IGNORED = "ignored"
    REDELIVERY = "redelivery"
    POSTED = "posted"
    PARKED = "parked"
    EXCEPTION = "exception"
    APPLIED = "applied"
    UNACCOUNTED = "unaccounted"


MEANING = {
    Fate.DEAD_LETTERED: "a ledgerflow.dlq entry names the message",
    Fate.FORWARDED: "an invoice payment passed on to payments.changes (accounted there)",
    Fate.IGNORED: "maps to no canonical event",
    Fate.REDELIVERY: "all its events came in an earlier message",
    Fate.POSTED: "caused a command whose latest erp.results outcome is POSTED",
    Fate.PARKED: "still waiting at the end (parked-billing, parked-invoice-payments, invoice-state)",
    Fate.EXCEPTION: "named by an open exception, nothing of it posted",
    Fate.APPLIED: "on ledgerflow.canonical, taken into the tables, nothing to post",
    Fate.UNACCOUNTED: "none of the above: lost",
}


def _ordered(records: Iterable[RawRecord]) -> list[RawRecord]:
    return sorted(records, key=lambda r: (r.topic, r.partition, r.offset))


def latest_rows(records: Iterable[RawRecord]) -> dict[bytes, bytes]:
    """A table as its changelog leaves it: the last value per key (a None value deletes)."""
    rows: dict[bytes, bytes] = {}
    for record in _ordered(records):
        if record.key is None:
            continue
        if record.value is None:
            rows.pop(record.key, None)
        else:
            rows[record.key] = record.value
    return rows


@dataclass
class Outcomes:
    """What the pipeline's own topics say happened, at the end of the run."""

    dead_lettered: dict[Ref, str]
    """Source reference → the DLQ reason."""
    canonical_ids: set[str]
    commands: dict[str, ErpCommand]
    """Idempotency key → the command (its latest copy)."""
    caused_by: dict[str, set[str]]
    """Idempotency key → the event ids that caused a copy of the command."""
    command_copies: Counter[str]
    final_results: dict[str, PostingResult]
    """Idempotency key → its latest result (one customer's results share a partition)."""
    result_outcomes: Counter[str]
    """Every result record's outcome, counting the FAILED ones before a later POSTED."""
    exceptions: list[BusinessException]
    """The latest record of every exception id."""
    parked_ids: set[str]
    invoices: dict[str, CustomerInvoices]
    undecodable: int = 0
    parked_invoice_payments: set[str] = field(default_factory=set)
    """The JSON text of every invoice payment still waiting for its invoice's owner."""

    @property
    def posted_keys(self) -> set[str]:
        return {k for k, r in self.final_results.items() if r.outcome is PostingOutcome.POSTED}

    def posted_events(self) -> set[str]:
        return {event for key in self.posted_keys for event in self.caused_by.get(key, ())}

    def open_exceptions(self) -> list[BusinessException]:
        return [e for e in self.exceptions if e.status is ExceptionStatus.OPEN]

    def superseded(self, exc: BusinessException) -> bool:
        """An ERP exception about a command that posted later (the lane parked, then went on)."""
        return exc.entity_id in self.posted_keys

    def exception_events(self) -> set[str]:
        """Events named by an open exception that a later posting has not superseded."""
        out: set[str] = set()
        for exc in self.open_exceptions():
            if self.superseded(exc):
                continue
            if exc.offending is not None and exc.offending.event_id:
                out.add(exc.offending.event_id)
            out |= self.caused_by.get(exc.entity_id or "", set())
        return out


def read_outcomes(
    *,
    dlq: Sequence[RawRecord],
    canonical: Sequence[RawRecord],
    commands: Sequence[RawRecord],
    results: Sequence[RawRecord],
    exceptions: Sequence[RawRecord],
    parked_billing_changelog: Sequence[RawRecord],
    invoice_state_changelog: Sequence[RawRecord],
    parked_invoice_payments_changelog: Sequence[RawRecord] = (),
) -> Outcomes:
    undecodable = 0
    dead: dict[Ref, str] = {}
    for record in dlq:
        topic, partition, offset = (
            record.header(h.SOURCE_TOPIC),
            record.header(h.SOURCE_PARTITION),
            record.header(h.SOURCE_OFFSET),
        )
        if topic is not None and partition is not None and offset is not None:
            dead[(topic, int(partition), int(offset))] = record.header(h.DLQ_REASON) or "?"
    canonical_ids: set[str] = set()
    for record in canonical:
        try:
            canonical_ids.add(str(orjson.loads(record.value or b"{}")["event_id"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            undecodable += 1
    latest_command: dict[str, ErpCommand] = {}
    caused_by: dict[str, set[str]] = {}
    copies: Counter[str] = Counter()
    for record in _ordered(commands):
        try:
            command = codec.loads_any(_COMMANDS, record.value or b"")
        except ValidationError:
            undecodable += 1
            continue
        key = command.idempotency_key
        latest_command[key] = command
        copies[key] += 1
        causation = record.header(h.CAUSATION_ID)
        if causation is not None and not causation.startswith("retry:"):
            caused_by.setdefault(key, set()).add(causation)
    final: dict[str, PostingResult] = {}
    outcomes: Counter[str] = Counter()
    for record in _ordered(results):
        try:
            result = codec.loads(PostingResult, record.value or b"")
        except ValidationError:
            undecodable += 1
            continue
        final[result.idempotency_key] = result
        outcomes[result.outcome.value] += 1
    entries, bad = latest_exceptions(exceptions)
    parked: set[str] = set()
    for raw in latest_rows(parked_billing_changelog).values():
        parked |= {p.change.event_id for p in codec.loads(ParkedChanges, raw).changes}
    invoices: dict[str, CustomerInvoices] = {}
    for raw in latest_rows(invoice_state_changelog).values():
        docs = codec.loads(CustomerInvoices, raw)
        invoices[docs.customer_id] = docs
        parked |= {w.change.event_id for w in docs.waiting}
    return Outcomes(
        dead_lettered=dead,
        canonical_ids=canonical_ids,
        commands=latest_command,
        caused_by=caused_by,
        command_copies=copies,
        final_results=final,
        result_outcomes=outcomes,
        exceptions=[e.exception for e in entries],
        parked_ids=parked,
        invoices=invoices,
        undecodable=undecodable + bad,
        parked_invoice_payments={
            p.value
            for raw in latest_rows(parked_invoice_payments_changelog).values()
            for p in codec.loads(ParkedInvoicePayments, raw).parked
        },
    )


@dataclass
class Accounting:
    """Each source message's fate, counted per design topic."""

    counts: dict[str, Counter[Fate]] = field(default_factory=dict)
    applied_types: Counter[str] = field(default_factory=Counter)
    """Event type → how many messages were applied without a posting of their own."""
    unaccounted: list[Ref] = field(default_factory=list)
    first_seen: dict[str, Ref] = field(default_factory=dict)
    """Event id → the message that first carried it."""

    def total(self, fate: Fate | None = None) -> int:
        return sum(c[fate] if fate else sum(c.values()) for c in self.counts.values())

    def table(self) -> list[str]:
        topics = list(self.counts)
        header = ["class", *topics, "total", "meaning"]
        rows = [
            [
                fate.value,
                *(str(self.counts[t][fate]) for t in topics),
                str(self.total(fate)),
                MEANING[fate],
            ]
            for fate in Fate
        ]
        rows.append(
            ["events in", *(str(sum(self.counts[t].values())) for t in topics), str(self.total()), ""]
        )
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
        numeric = range(1, len(header) - 1)
        return [
            "  ".join(
                c.rjust(widths[i]) if i in numeric else c.ljust(widths[i]) for i, c in enumerate(r)
            ).rstrip()
            for r in (header, *rows)
        ]


def _event_type(value: bytes | None) -> str:
    """What kind of source event a message is, for the breakdown of the applied class."""
    try:
        data = orjson.loads(value or b"{}")
    except orjson.JSONDecodeError:
        return "?"
    if not isinstance(data, dict):
        return "?"
    if "type" in data:
        return str(data["type"])
    if "event_type" in data:
        return f"clm {data['event_type']}"
    header = ((data.get("data") or {}).get("payload") or {}).get("ChangeEventHeader") or {}
    return f"cdc {header.get('entityName')}.{header.get('changeType')}"


def account(
    sources: Mapping[str, Sequence[RawRecord]], outcomes: Outcomes, event_ids: EventIds
) -> Accounting:
    """Classify every source message (`sources`: design topic name → its records)."""
    posted = outcomes.posted_events()
    excepted = outcomes.exception_events()
    forwarded = {r.header(h.CAUSATION_ID) for r in sources.get("payments.changes", ())}
    out = Accounting()
    seen: set[str] = set()
    routed: set[bytes | None] = set()
    for topic, records in sources.items():
        counts = out.counts.setdefault(topic, Counter())
        for record in _ordered(records):
            ref = (record.topic, record.partition, record.offset)
            if topic == INVOICE_PAYMENTS and ref not in outcomes.dead_lettered:
                fate = _invoice_payment_fate(record, forwarded, routed, outcomes.parked_invoice_payments)
                if fate is Fate.UNACCOUNTED:
                    out.unaccounted.append(ref)
                counts[fate] += 1
                continue
            ids = event_ids(topic, record.value or b"", record.key_text)
            fate = Fate.UNACCOUNTED
            if ref in outcomes.dead_lettered:
                fate = Fate.DEAD_LETTERED
            elif ids is None:
                pass  # rejected by its adapter, yet not in the DLQ
            elif not ids:
                fate = Fate.IGNORED
            elif all(i in seen for i in ids):
                fate = Fate.REDELIVERY
            else:
                for i in ids:
                    out.first_seen.setdefault(i, ref)
                seen.update(ids)
                events = set(ids)
                if events & posted:
                    fate = Fate.POSTED
                elif events & outcomes.parked_ids:
                    fate = Fate.PARKED
                elif events & excepted:
                    fate = Fate.EXCEPTION
                elif events <= outcomes.canonical_ids:
                    fate = Fate.APPLIED
                    out.applied_types[_event_type(record.value)] += 1
            if fate is Fate.UNACCOUNTED:
                out.unaccounted.append(ref)
            counts[fate] += 1
    return out


def _invoice_payment_fate(
    record: RawRecord, forwarded: set[str | None], routed: set[bytes | None], parked: set[str]
) -> Fate:
    """An invoice payment is passed on (its copy is accounted on payments.changes), still waits
    for its invoice's owner, or was a redelivery of one that waited (parked once)."""
    first = record.value not in routed
    routed.add(record.value)
    if f"{record.topic}/{record.partition}/{record.offset}" in forwarded:
        return Fate.FORWARDED
    if (record.value or b"").decode("utf-8", "replace") in parked:
        return Fate.PARKED if first else Fate.REDELIVERY
    return Fate.UNACCOUNTED if first else Fate.REDELIVERY
