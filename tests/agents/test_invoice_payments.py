"""Stage 1's routing of Stripe invoice payments (pure decisions): a payment of a known invoice
goes on keyed by its customer, one of an unknown invoice waits (once, however often Stripe
redelivers it) and goes on when the owner arrives, and one that waited too long is raised."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agents.invoice_payments import PAID, PaymentBody, overdue_invoice_payments, owner_known, payment_arrived
from canonical import ExceptionReason
from canonical.links import InvoiceOwner
from tables.invoice_owners import InvoiceOwnerRow, ParkedInvoicePayments

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
OWNER = InvoiceOwner(invoice_id="in_1", billing_customer_id="cus_1", correlation_id="c-1")
HEADERS = {"x-correlation-id": "c-pay"}


def body(invoice_id: str, event_id: str, event_type: str = PAID, extra: str = "") -> PaymentBody:
    text = f'{{"id":"{event_id}","type":"{event_type}"{extra}}}'
    return PaymentBody(invoice_id, event_id, event_type, text)


def text(event_id: str) -> bytes:
    return body("", event_id).text.encode()


def test_a_payment_of_a_known_invoice_goes_straight_on() -> None:
    row = InvoiceOwnerRow(invoice_id="in_1", billing_customer_id="cus_1")
    routed = payment_arrived(row, None, body("in_1", "evt_1"), HEADERS, NOW, "ip/0/7")
    assert routed.forward == [("cus_1", text("evt_1"), HEADERS, "ip/0/7")]
    assert routed.owner is None and routed.parked is None and not routed.unpark


def test_a_payment_of_an_unknown_invoice_waits_once_then_goes_on_with_its_own_cause() -> None:
    first = payment_arrived(None, None, body("in_1", "evt_1"), HEADERS, NOW, "ip/0/7")
    assert first.forward == [] and first.parked is not None and len(first.parked.parked) == 1
    # A redelivery (Stripe's count of pending webhooks differs: the text does) is not parked twice.
    redelivered = body("in_1", "evt_1", extra=',"pending_webhooks":2')
    again = payment_arrived(None, first.parked, redelivered, HEADERS, NOW, "ip/0/9")
    assert again.parked is None and again.forward == []
    other = payment_arrived(None, first.parked, body("in_1", "evt_2"), {}, NOW, "ip/0/10")
    assert other.parked is not None and len(other.parked.parked) == 2
    released = owner_known(None, other.parked, OWNER)
    assert released.owner == InvoiceOwnerRow(invoice_id="in_1", billing_customer_id="cus_1")
    assert released.unpark
    assert [(c, v, cause) for c, v, _, cause in released.forward] == [
        ("cus_1", text("evt_1"), "ip/0/7"),
        ("cus_1", text("evt_2"), "ip/0/10"),
    ]


def test_the_first_owner_stays_and_gets_what_waited() -> None:
    row = InvoiceOwnerRow(invoice_id="in_1", billing_customer_id="cus_1")
    other = InvoiceOwner(invoice_id="in_1", billing_customer_id="cus_2", correlation_id="c-2")
    assert owner_known(row, None, other).owner is None
    # The owner known, yet something waits (it was parked before this worker learnt the owner):
    # the next owner message releases it, to the first owner.
    parked = payment_arrived(None, None, body("in_1", "evt_1"), HEADERS, NOW, "ip/0/7").parked
    released = owner_known(row, parked, other)
    assert released.owner is None and released.unpark
    assert [(c, cause) for c, _, _, cause in released.forward] == [("cus_1", "ip/0/7")]


def test_only_a_paid_invoice_payment_waits() -> None:
    other = payment_arrived(None, None, body("in_1", "evt_9", "invoice_payment.canceled"), {}, NOW, "ip/0/1")
    assert other.parked is None and other.forward == []  # it books nothing: not parked
    row = InvoiceOwnerRow(invoice_id="in_1", billing_customer_id="cus_1")
    known = payment_arrived(row, None, body("in_1", "evt_9", "invoice_payment.canceled"), {}, NOW, "ip/0/1")
    assert [c for c, _, _, _ in known.forward] == ["cus_1"]  # with its customer known: on, as it came


def test_a_payment_waiting_too_long_is_an_unknown_invoice_exception() -> None:
    parked = payment_arrived(None, None, body("in_1", "evt_1"), HEADERS, NOW, "ip/0/7").parked
    assert parked is not None
    assert overdue_invoice_payments(parked, NOW + timedelta(seconds=599), 600) is None
    exc = overdue_invoice_payments(parked, NOW + timedelta(seconds=600), 600)
    assert exc is not None and exc.reason is ExceptionReason.UNKNOWN_INVOICE
    assert (exc.entity_id, exc.correlation_id, exc.attempts) == ("in_1", "c-pay", 1)


async def test_the_parking_timer_raises_each_overdue_row_once_and_counts_what_waits() -> None:
    from unittest import mock

    from agents.outbox import Outbox, raise_overdue
    from canonical import codec
    from streams import metrics

    old = payment_arrived(None, None, body("in_1", "evt_1"), HEADERS, NOW - timedelta(days=2), "ip/0/7")
    young = payment_arrived(None, None, body("in_2", "evt_2"), HEADERS, datetime.now(UTC), "ip/0/8")
    assert old.parked is not None and young.parked is not None
    table = {b"in_1": codec.dumps(old.parked), b"in_2": codec.dumps(young.parked)}
    sent: list[object] = []

    async def record(self: Outbox, topic: object, key: object, value: object, headers: object) -> None:
        sent.append(value)

    raised: set[str] = set()
    with mock.patch.object(Outbox, "send", record):
        for _ in range(2):
            await raise_overdue(
                table,
                ParkedInvoicePayments,
                lambda row: len(row.parked),
                overdue_invoice_payments,
                raised,
                "timer:test",
                "invoice_payments",
            )
    assert [getattr(e, "entity_id", None) for e in sent] == ["in_1"]  # once, and only the overdue one
    assert metrics.events_parked("invoice_payments")._value.get() == 2
