"""A realistic quote-to-cash history in the platforms' own formats, and its ground truth.

Pure and deterministic: the same seed gives the same bytes. `ledgerflow simulate` produces it
to the source topics (or posts it, signed, to the ingress); tests, reconciliation and the
benchmark compare what the ERP ends up holding with the ground truth written beside it.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson

from connectors.stripe.samples import (
    CATALOGUE,
    MARKETS,
    credit_note_object,
    customer_object,
    event_envelope,
    invoice_object,
    invoice_payment_object,
    payment_intent_object,
    refunded_charge_object,
    subscription_object,
)
from connectors.stripe.versions import CURRENT_VERSION, Shapes, api_version, render
from streams.topic_names import STRIPE_TOPICS

START = datetime(2026, 1, 1, tzinfo=UTC)
SUBSIDIARY = {"US": "US01", "GB": "UK01", "DE": "DE01", "JP": "JP01"}
NAMES = [
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Vandelay",
    "Stark",
    "Wayne",
    "Tyrell",
    "Cyberdyne",
    "Soylent",
    "Wonka",
    "Aperture",
    "Massive",
    "Pied Piper",
    "Gringotts",
]
SUFFIX = {"US": "Inc.", "GB": "Ltd", "DE": "GmbH", "JP": "KK"}


@dataclass
class Message:
    """One message for a source topic: design topic name, key, the platform's own bytes."""

    topic: str
    key: str
    value: bytes
    at: int  # unix seconds at the source; orders the history
    seq: int = 0  # tie-break, keeps the generator's order within one second


@dataclass
class Scenario:
    messages: list[Message] = field(default_factory=list)
    truth: dict[str, Any] = field(default_factory=dict)
    stripe_objects: list[dict[str, Any]] = field(default_factory=list)
    """Objects the Stripe account holds that no Event of the scenario's version carries (the
    invoice payments of 2025-03-31 and 2025-04-30.basil): for a Stripe stand-in to answer."""


def _ts(day: datetime) -> int:
    return int(day.timestamp())


def _cdc(entity: str, change: str, record_id: str, fields: dict[str, Any], tx: str, at: int) -> bytes:
    header = {
        "entityName": entity,
        "recordIds": [record_id],
        "changeType": change,
        "changeOrigin": "com/salesforce/api/soap/61.0;client=SfdcInternalAPI/",
        "transactionKey": tx,
        "sequenceNumber": 1,
        "commitTimestamp": at * 1000,
        "commitNumber": at * 1000 + 7,
        "commitUser": "005SIM",
        "changedFields": sorted(fields) if change == "UPDATE" else [],
        "nulledFields": [],
        "diffFields": [],
    }
    return orjson.dumps(
        {
            "data": {
                "schema": "sim",
                "payload": {"ChangeEventHeader": header, **fields},
                "event": {"replayId": at},
            },
            "channel": "/data/ChangeEvents",
        }
    )


def _clm(
    event_type: str,
    contract_id: str,
    account: str,
    version: int,
    amendment: int,
    start: date,
    end: date | None,
    entity: str,
    currency: str,
    lines: list[tuple[str, int]],
    at: int,
) -> bytes:
    return orjson.dumps(
        {
            "schema_version": 1,
            "event_id": f"clm-{contract_id}-v{version}",
            "event_type": event_type,
            "contract_id": contract_id,
            "crm_account_id": account,
            "version": version,
            "amendment_number": amendment,
            "effective_date": start.isoformat(),
            "end_date": end.isoformat() if end else None,
            "legal_entity": entity,
            "currency": currency.upper(),
            "lines": [
                {
                    "product_id": p,
                    "quantity": q,
                    "unit_price": CATALOGUE[p][1][currency],
                    "currency": currency.upper(),
                }
                for p, q in lines
            ],
            "occurred_at": datetime.fromtimestamp(at, UTC).isoformat(),
        }
    )


class _Customer:
    """One customer's life, appended to the scenario as it happens."""

    def __init__(self, n: int, rng: random.Random, sc: Scenario, months: int, stripe_version: str) -> None:
        self.n, self.rng, self.sc, self.months = n, rng, sc, months
        self.stripe_version = stripe_version
        self.country = ["US", "GB", "DE", "JP"][n % 4]
        self.currency, self.tax_rate, self.bps = MARKETS[self.country]
        self.account = f"001SIM{n:09d}"
        self.cus = f"cus_SIM{n:08d}"
        self.contract = f"K-SIM{n:06d}"
        self.sub = f"sub_SIM{n:08d}"
        self.name = f"{NAMES[n % len(NAMES)]} {n} {SUFFIX[self.country]}"
        self.seats = rng.randint(5, 60)
        self.support = rng.random() < 0.4
        self.onboard = START + timedelta(days=rng.randint(0, 27), hours=rng.randint(8, 17))
        self.version = 0

    def lines(self) -> list[tuple[str, int]]:
        out = [("prod_platform", 1), ("prod_seats", self.seats)]
        return [*out, ("prod_support", 1)] if self.support else out

    def emit(self, topic: str, key: str, value: bytes, at: int) -> None:
        self.sc.messages.append(Message(topic, key, value, at, len(self.sc.messages)))

    def stripe(
        self,
        topic: str,
        event_id: str,
        event_type: str,
        obj: dict[str, Any],
        at: int,
        *,
        key: str | None = None,
        invoice_id: str | None = None,
    ) -> None:
        """One Stripe Event, its object rendered in the scenario's API version."""
        rendered = render(obj, self.stripe_version, invoice_id=invoice_id)
        envelope = event_envelope(event_id, event_type, rendered, at, self.stripe_version)
        self.emit(topic, key or self.cus, orjson.dumps(envelope), at)

    def clm(self, event_type: str, at: int, amendment: int, start: date, end: date | None) -> None:
        self.version += 1
        entity = SUBSIDIARY[self.country]
        raw = _clm(
            event_type,
            self.contract,
            self.account,
            self.version,
            amendment,
            start,
            end,
            entity,
            self.currency,
            self.lines(),
            at,
        )
        self.emit("clm.changes", self.account, raw, at)
        self.sc.truth["contracts"][self.contract] = {
            "contract_id": self.contract,
            "crm_account_id": self.account,
            "status": event_type,
            "version": self.version,
            "amendment_number": amendment,
            "currency": self.currency.upper(),
        }

    def live(self) -> None:
        rng, truth = self.rng, self.sc.truth
        t0 = _ts(self.onboard)
        self.emit(
            "crm.changes",
            self.account,
            _cdc(
                "Account",
                "CREATE",
                self.account,
                {
                    "Name": self.name,
                    "BillingAddress": {"CountryCode": self.country, "City": "Springfield"},
                    "CurrencyIsoCode": self.currency.upper(),
                    "Type": "Customer",
                },
                f"tx-{self.account}-1",
                t0,
            ),
            t0,
        )
        email = f"ap{self.n}@{NAMES[self.n % len(NAMES)].lower().replace(' ', '')}.example"
        self.stripe(
            "billing.changes",
            f"evt_cus_{self.n}",
            "customer.created",
            customer_object(self.cus, self.country, self.name, email, self.account, t0 + 60),
            t0 + 60,
        )
        truth["customers"].append(
            {
                "crm_account_id": self.account,
                "billing_customer_id": self.cus,
                "country": self.country,
                "currency": self.currency.upper(),
                "subsidiary": SUBSIDIARY[self.country],
                "name": self.name,
            }
        )
        start = self.onboard.date()
        term_end = start + timedelta(days=365) - timedelta(days=1)
        self.clm("signed", t0 + 120, 0, start, term_end)
        period = self.onboard
        self.stripe(
            "billing.changes",
            f"evt_sub_{self.n}_0",
            "customer.subscription.created",
            subscription_object(
                self.sub,
                self.cus,
                self.country,
                self.lines(),
                "active",
                t0 + 180,
                _ts(period + timedelta(days=30)),
                self.contract,
            ),
            t0 + 180,
        )
        amendment = 0
        amend_month = rng.randint(1, self.months - 1) if self.months > 1 and rng.random() < 0.3 else None
        terminate_month = rng.randint(1, self.months - 1) if self.months > 2 and rng.random() < 0.1 else None
        prorations: list[tuple[str, int, int]] = []
        for month in range(self.months):
            at = _ts(period)
            if month == terminate_month:
                self.clm("terminated", at - 3600, amendment, start, period.date() - timedelta(days=1))
                self.stripe(
                    "billing.changes",
                    f"evt_sub_{self.n}_end",
                    "customer.subscription.deleted",
                    subscription_object(
                        self.sub,
                        self.cus,
                        self.country,
                        self.lines(),
                        "canceled",
                        at - 3000,
                        at,
                        self.contract,
                    ),
                    at - 3000,
                )
                break
            if month == 12:
                self.clm("renewed", at - 7200, amendment, period.date(), period.date() + timedelta(days=364))
            self.invoice(month, at, prorations)
            prorations = []
            if month == amend_month:
                added = rng.randint(1, 20)
                amendment += 1
                self.seats += added
                mid = at + rng.randint(5, 25) * 86400
                self.clm("amended", mid, amendment, datetime.fromtimestamp(mid, UTC).date(), term_end)
                # Stripe prorates the added seats for the rest of the period: integer minor
                # units, rounded half up, never a float.
                period_s, remaining_s = 30 * 86400, at + 30 * 86400 - mid
                unit = CATALOGUE["prod_seats"][1][self.currency]
                prorations = [("prod_seats", added, (unit * added * remaining_s + period_s // 2) // period_s)]
                self.stripe(
                    "billing.changes",
                    f"evt_sub_{self.n}_a{amendment}",
                    "customer.subscription.updated",
                    subscription_object(
                        self.sub,
                        self.cus,
                        self.country,
                        self.lines(),
                        "active",
                        mid,
                        at + 30 * 86400,
                        self.contract,
                    ),
                    mid,
                )
            period += timedelta(days=30)

    def invoice(self, month: int, at: int, prorations: list[tuple[str, int, int]]) -> None:
        rng, truth = self.rng, self.sc.truth
        inv_id = f"in_SIM{self.n:06d}M{month:02d}"
        number = f"SIM-{self.n:06d}-{month + 1:03d}"
        meta = {"contract_id": self.contract}

        def snapshot(status: str, number: str | None) -> dict[str, Any]:
            return invoice_object(
                inv_id,
                self.cus,
                self.country,
                self.lines(),
                status=status,
                created=at,
                number=number,
                prorations=prorations,
                subscription=self.sub,
                metadata=meta,
            )

        draft = snapshot("draft", None)
        self.stripe("billing.changes", f"evt_{inv_id}_created", "invoice.created", draft, at)
        opened = snapshot("open", number)
        self.stripe("billing.changes", f"evt_{inv_id}_fin", "invoice.finalized", opened, at + 3600)
        total, currency = opened["total"], self.currency
        row = {
            "invoice_id": inv_id,
            "crm_account_id": self.account,
            "billing_customer_id": self.cus,
            "currency": currency.upper(),
            "subtotal": opened["subtotal"],
            "tax": sum(t["amount"] for t in opened["total_taxes"]),
            "total": total,
            "status": "open",
            "subsidiary": SUBSIDIARY[self.country],
            "external_id": f"stripe-{inv_id}",
        }
        truth["invoices"].append(row)
        pi = f"pi_SIM{self.n:06d}M{month:02d}"
        if rng.random() < 0.1:
            self.stripe(
                "payments.changes",
                f"evt_{pi}_failed",
                "payment_intent.payment_failed",
                payment_intent_object(pi, self.cus, currency, total, False, at + 5400),
                at + 5400,
                invoice_id=inv_id,
            )
            truth["failed_payments"].append({"payment_id": pi, "invoice_id": inv_id})
            if rng.random() < 0.3:
                return  # still unpaid at the end of the history
        paid_at = at + 7200 + rng.randint(0, 3) * 86400
        self.stripe(
            "payments.changes",
            f"evt_{pi}_ok",
            "payment_intent.succeeded",
            payment_intent_object(pi, self.cus, currency, total, True, paid_at),
            paid_at,
            invoice_id=inv_id,
        )
        version = api_version(self.stripe_version)
        if version.shapes is Shapes.CURRENT:
            # Since basil the PaymentIntent names no invoice: Stripe links the two with an
            # invoice_payment (keyed by its invoice on billing.invoice-payments), announced by
            # an Event since 2025-05-28, before that only readable from the API.
            link = invoice_payment_object(inv_id, pi, currency, total, at + 3600, paid_at)
            if version.invoice_payment_events:
                self.stripe(
                    "billing.invoice-payments",
                    f"evt_{pi}_inpay",
                    "invoice_payment.paid",
                    link,
                    paid_at,
                    key=inv_id,
                )
            else:
                self.sc.stripe_objects.append(link)
        paid = snapshot("paid", number)
        self.stripe("billing.changes", f"evt_{inv_id}_paid", "invoice.paid", paid, paid_at + 1)
        row["status"] = "paid"
        truth["payments"].append(
            {"payment_id": pi, "invoice_id": inv_id, "amount": total, "currency": currency.upper()}
        )
        if rng.random() < 0.08:
            subtotal = opened["subtotal"] // 10
            tax = (subtotal * self.bps + 5000) // 10000
            cn = f"cn_SIM{self.n:06d}M{month:02d}"
            self.stripe(
                "billing.changes",
                f"evt_{cn}",
                "credit_note.created",
                credit_note_object(
                    cn,
                    self.cus,
                    inv_id,
                    currency,
                    subtotal,
                    tax,
                    self.tax_rate if tax else None,
                    paid_at + 86400,
                    f"CN-{number}",
                ),
                paid_at + 86400,
            )
            truth["credit_memos"].append(
                {
                    "credit_memo_id": cn,
                    "invoice_id": inv_id,
                    "subtotal": subtotal,
                    "tax": tax,
                    "total": subtotal + tax,
                    "currency": currency.upper(),
                }
            )
        elif rng.random() < 0.04:
            amount = max(1, total // 4)
            ch, re = f"ch_SIM{self.n:06d}M{month:02d}", f"re_SIM{self.n:06d}M{month:02d}"
            self.stripe(
                "payments.changes",
                f"evt_{re}",
                "charge.refunded",
                refunded_charge_object(ch, self.cus, currency, total, re, amount, pi, paid_at + 2 * 86400),
                paid_at + 2 * 86400,
            )
            truth["refunds"].append(
                {
                    "refund_id": re,
                    "payment_id": pi,
                    "invoice_id": inv_id,
                    "amount": amount,
                    "currency": currency.upper(),
                }
            )


def generate(
    customers: int,
    months: int = 12,
    seed: int = 7,
    duplicate_rate: float = 0.0,
    reorder_rate: float = 0.0,
    first_customer: int = 0,
    stripe_api_version: str = CURRENT_VERSION,
) -> Scenario:
    """The history of `customers` over `months`, then Stripe's delivery faults on top: some
    events delivered twice, some swapped with the next one of the same customer. CRM and CLM
    streams keep their order (both promise it). Customers are numbered from `first_customer`,
    so several scenarios can share one deployment without sharing ids. Stripe's Events are in
    the shapes of `stripe_api_version` (an acacia one links payments through the
    PaymentIntent's `invoice`; a current one through `invoice_payment.paid`)."""
    rng = random.Random(seed)
    sc = Scenario(
        truth={
            "seed": seed,
            "stripe_api_version": stripe_api_version,
            "customers": [],
            "contracts": {},
            "invoices": [],
            "payments": [],
            "failed_payments": [],
            "credit_memos": [],
            "refunds": [],
        }
    )
    for n in range(first_customer, first_customer + customers):
        _Customer(n, rng, sc, months, stripe_api_version).live()
    sc.messages.sort(key=lambda m: (m.at, m.seq))

    by_key: dict[str, list[int]] = {}
    for i, m in enumerate(sc.messages):
        if m.topic in STRIPE_TOPICS:
            by_key.setdefault(m.key, []).append(i)
    reordered = 0
    for positions in by_key.values():
        for a, b in itertools.pairwise(positions):
            if rng.random() < reorder_rate:
                sc.messages[a], sc.messages[b] = sc.messages[b], sc.messages[a]
                reordered += 1
    out: list[Message] = []
    duplicates = 0
    pending: list[tuple[int, Message]] = []
    for i, m in enumerate(sc.messages):
        out.append(m)
        if m.topic in STRIPE_TOPICS and rng.random() < duplicate_rate:
            pending.append((i + rng.randint(1, 20), m))  # Stripe redelivers a little later
            duplicates += 1
        while pending and pending[0][0] <= i:
            out.append(pending.pop(0)[1])
    out.extend(m for _, m in pending)
    sc.messages = out
    contracts = sc.truth.pop("contracts")
    sc.truth["contracts"] = sorted(contracts.values(), key=lambda c: c["contract_id"])
    by_topic: dict[str, int] = {}
    for m in out:
        by_topic[m.topic] = by_topic.get(m.topic, 0) + 1
    sc.truth["messages"] = {
        "total": len(out),
        "by_topic": by_topic,
        "duplicates": duplicates,
        "reordered": reordered,
    }
    return sc
