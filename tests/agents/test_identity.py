"""Identity resolution of billing customers: link, resolve, park, release, raise."""

from __future__ import annotations

from datetime import timedelta

from agents.identity import canonical_customer_id, overdue_parked, resolve_billing_change
from canonical import ChangeEvent, Customer, EntityType, ExceptionReason, Source
from tests.factories import T0, invoice_event


def customer_event(crm: str | None, event_id: str = "evt_c") -> ChangeEvent:
    customer = Customer(source_ref="cus_100", billing_customer_id="cus_100", crm_account_id=crm)
    return invoice_event().model_copy(
        update={
            "event_id": event_id,
            "entity_type": EntityType.CUSTOMER,
            "entity_id": "cus_100",
            "payload": customer,
            "source_type": "customer.created",
            "source": Source.STRIPE,
        }
    )


def test_canonical_id_follows_the_crm_link() -> None:
    assert canonical_customer_id(Customer(source_ref="cus_1", crm_account_id="001A")) == "cust-crm-001A"
    assert canonical_customer_id(Customer(source_ref="cus_1")) == "cust-stripe-cus_1"


def test_an_invoice_before_its_customer_is_parked_then_released_after_the_customer() -> None:
    parked = resolve_billing_change(invoice_event(), None, None, T0, "billing.changes/0/1")
    assert parked.send == [] and parked.parked is not None and len(parked.parked.changes) == 1
    linked = resolve_billing_change(
        customer_event("001A"), None, parked.parked, T0 + timedelta(seconds=5), "b/0/2"
    )
    assert linked.identity is not None and linked.identity.customer_id == "cust-crm-001A"
    assert [c.event_id for c in linked.send] == ["evt_c", "evt_1"]  # the customer first
    assert all(c.customer_id == "cust-crm-001A" for c in linked.send)
    assert linked.parked is not None and linked.parked.changes == ()  # the parking row is cleared


def test_known_customer_resolves_directly() -> None:
    linked = resolve_billing_change(customer_event(None), None, None, T0, "b/0/1")
    assert linked.identity is not None
    again = resolve_billing_change(invoice_event(), linked.identity, None, T0, "b/0/2")
    assert [c.customer_id for c in again.send] == ["cust-stripe-cus_100"] and again.parked is None


def test_relinking_to_another_account_is_an_exception_not_a_silent_merge() -> None:
    first = resolve_billing_change(customer_event(None), None, None, T0, "b/0/1")
    relinked = resolve_billing_change(customer_event("001B", "evt_c2"), first.identity, None, T0, "b/0/2")
    assert relinked.identity is None  # the first link stays
    [exc] = relinked.exceptions
    assert exc.reason is ExceptionReason.LIKELY_DUPLICATE_CUSTOMER
    assert [c.customer_id for c in relinked.send] == ["cust-stripe-cus_100"]


def test_parked_events_become_an_exception_after_the_timeout() -> None:
    parked = resolve_billing_change(invoice_event(), None, None, T0, "b/0/1").parked
    assert parked is not None
    assert overdue_parked(parked, T0 + timedelta(minutes=59), 3600) is None
    exc = overdue_parked(parked, T0 + timedelta(minutes=61), 3600)
    assert exc is not None and exc.reason is ExceptionReason.UNKNOWN_CUSTOMER and exc.entity_id == "cus_100"
