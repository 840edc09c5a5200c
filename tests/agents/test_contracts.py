"""The contract state machine (every transition, legal and illegal), amendment resequencing,
and the contract gate in front of invoice postings."""

from __future__ import annotations

from datetime import date, timedelta
from itertools import product

import pytest

from agents.contracts import (
    CONTRACT_TRANSITIONS,
    ContractOutcome,
    InvoiceGate,
    apply_contract_change,
    decide_contract,
    gate_invoice,
    overdue_gaps,
)
from agents.posting import CustomerBook, Outcome
from canonical import (
    ChangeEvent,
    Contract,
    ContractStatus,
    EntityType,
    ExceptionReason,
    InvoiceStatus,
    Source,
)
from streams.mappings import load_mappings
from tests.factories import T0, invoice, invoice_event

S = ContractStatus
START = date(2026, 1, 15)


def contract_event(
    status: ContractStatus,
    version: int,
    amendment: int = 0,
    start: date = START,
    end: date | None = date(2027, 1, 14),
    event_id: str | None = None,
    source: Source = Source.CLM,
) -> ChangeEvent:
    contract = Contract(
        contract_id="K-1",
        crm_account_id="001A",
        status=status,
        amendment_number=amendment,
        effective_date=start,
        end_date=end,
        currency="GBP",
    )
    return invoice_event().model_copy(
        update={
            "event_id": event_id or f"clm-K-1-v{version}",
            "source": source,
            "source_type": f"contract.{status.value}",
            "entity_type": EntityType.CONTRACT,
            "entity_id": "K-1",
            "entity_version": (version,),
            "customer_id": "cust-crm-001A",
            "payload": contract,
        }
    )


LEGAL = [(a, b) for a, targets in CONTRACT_TRANSITIONS.items() if a is not None for b in targets]
ILLEGAL = [(a, b) for a, b in product(S, S) if b not in CONTRACT_TRANSITIONS[a]]


@pytest.mark.parametrize(("current", "new"), LEGAL)
def test_legal_transitions_apply(current: ContractStatus, new: ContractStatus) -> None:
    row = decide_contract(None, contract_event(S.DRAFT if current is S.DRAFT else S.SIGNED, 1), T0).row
    assert row is not None
    row = row.model_copy(update={"status": current})
    decision = decide_contract(row, contract_event(new, 2, amendment=1 if new is S.AMENDED else 0), T0)
    assert (
        decision.outcome is ContractOutcome.APPLIED
        and decision.row is not None
        and decision.row.status is new
    )


@pytest.mark.parametrize(("current", "new"), ILLEGAL)
def test_illegal_transitions_are_exceptions_and_change_nothing(
    current: ContractStatus, new: ContractStatus
) -> None:
    row = decide_contract(None, contract_event(S.SIGNED, 1), T0).row
    assert row is not None
    row = row.model_copy(update={"status": current})
    decision = decide_contract(row, contract_event(new, 2, amendment=1 if new is S.AMENDED else 0), T0)
    assert decision.outcome is ContractOutcome.ILLEGAL and decision.row == row
    assert [e.reason for e in decision.exceptions] == [ExceptionReason.ILLEGAL_TRANSITION]


def test_a_new_contract_cannot_start_amended_or_terminated() -> None:
    for status in (S.AMENDED, S.RENEWED, S.TERMINATED, S.EXPIRED):
        assert decide_contract(None, contract_event(status, 1), T0).outcome is ContractOutcome.ILLEGAL


def test_duplicates_and_stale_versions() -> None:
    signed = decide_contract(None, contract_event(S.SIGNED, 1), T0).row
    amended = apply_contract_change(signed, contract_event(S.AMENDED, 2, 1), T0).row
    assert decide_contract(amended, contract_event(S.AMENDED, 2, 1), T0).outcome is ContractOutcome.DUPLICATE
    stale = contract_event(S.SIGNED, 1, event_id="clm-K-1-v1-redo")
    assert decide_contract(amended, stale, T0).outcome is ContractOutcome.STALE


def test_amendment_two_before_one_waits_then_both_apply_in_order() -> None:
    signed = decide_contract(None, contract_event(S.SIGNED, 1), T0).row
    early = apply_contract_change(signed, contract_event(S.AMENDED, 3, 2), T0)
    assert early.outcome is ContractOutcome.WAITING and early.row is not None and early.row.version == (1,)
    assert overdue_gaps(early.row, T0 + timedelta(minutes=5), 3600) == []
    [gap] = overdue_gaps(early.row, T0 + timedelta(hours=2), 3600)
    assert gap.reason is ExceptionReason.AMENDMENT_GAP
    caught_up = apply_contract_change(early.row, contract_event(S.AMENDED, 2, 1), T0)
    assert caught_up.row is not None
    assert (caught_up.row.version, caught_up.row.amendment_number, caught_up.row.waiting) == ((3,), 2, ())


def test_salesforce_contract_versions_need_not_be_contiguous() -> None:
    first = decide_contract(
        None, contract_event(S.ACTIVE, 1_700_000_000_000, source=Source.SALESFORCE), T0
    ).row
    later = decide_contract(
        first, contract_event(S.TERMINATED, 1_700_000_900_000, source=Source.SALESFORCE), T0
    )
    assert later.outcome is ContractOutcome.APPLIED


def test_an_amendment_keeps_the_contract_start() -> None:
    signed = decide_contract(None, contract_event(S.SIGNED, 1), T0).row
    amended = decide_contract(signed, contract_event(S.AMENDED, 2, 1, start=date(2026, 6, 1)), T0).row
    assert amended is not None and amended.effective_date == START


def _linked_invoice(day: date):  # type: ignore[no-untyped-def]
    return invoice(contract_id="K-1", issued_at=T0.replace(year=day.year, month=day.month, day=day.day))


@pytest.mark.parametrize(
    ("status", "day", "gate"),
    [
        (S.SIGNED, date(2026, 3, 1), InvoiceGate.OPEN),
        (S.AMENDED, date(2026, 12, 1), InvoiceGate.OPEN),
        (S.DRAFT, date(2026, 3, 1), InvoiceGate.WAIT),
        (S.SIGNED, date(2026, 1, 1), InvoiceGate.NOT_ACTIVE),
        (S.SIGNED, date(2027, 2, 1), InvoiceGate.TERMINATED),
        (S.TERMINATED, date(2026, 3, 1), InvoiceGate.OPEN),  # a late invoice for a period it covered
    ],
)
def test_invoice_gate(status: ContractStatus, day: date, gate: InvoiceGate) -> None:
    row = decide_contract(None, contract_event(S.SIGNED, 1), T0).row
    assert row is not None
    assert gate_invoice(_linked_invoice(day), row.model_copy(update={"status": status})) is gate
    assert gate_invoice(_linked_invoice(day), None) is InvoiceGate.WAIT
    assert gate_invoice(invoice(), None) is InvoiceGate.OPEN  # not linked to a contract


def ready_book() -> CustomerBook:
    """A customer book whose customer already exists in the ERP (its upsert was confirmed)."""
    from tables.invoices import CustomerInvoices
    from tests.agents.test_customers import account_change
    from tests.factories import posted

    book = CustomerBook(
        "cust-crm-001A", CustomerInvoices(customer_id="cust-crm-001A"), {}, None, load_mappings(None)
    )
    book.apply(account_change(), T0)
    [(upsert, _)] = book.commands
    book.apply_result(posted(upsert), T0)
    book.commands.clear()
    return book


def test_book_parks_an_invoice_until_its_contract_then_posts_it() -> None:
    book = ready_book()
    inv = invoice_event(_linked_invoice(date(2026, 3, 1)))
    assert book.apply(inv, T0) == Outcome.WAITING.value and book.commands == []
    assert book.apply(inv, T0) == Outcome.DUPLICATE.value  # a redelivery while it waits
    assert book.apply(contract_event(S.SIGNED, 1), T0) == ContractOutcome.APPLIED.value
    assert [c.idempotency_key for c, _ in book.commands] == ["post_invoice-stripe-in_100"]
    assert book.waiting == []


def test_book_holds_an_invoice_against_a_terminated_contract() -> None:
    book = ready_book()
    book.apply(contract_event(S.SIGNED, 1), T0)
    book.apply(contract_event(S.TERMINATED, 2, end=date(2026, 2, 28)), T0)
    paid = invoice_event(_linked_invoice(date(2026, 4, 1)).model_copy(update={"status": InvoiceStatus.PAID}))
    assert book.apply(paid, T0) == Outcome.HELD.value
    assert [e.reason for e, _ in book.exceptions] == [ExceptionReason.CONTRACT_TERMINATED]


def test_an_invoice_waiting_too_long_for_its_contract_is_raised() -> None:
    from agents.posting import overdue_waiting_invoices
    from tables.invoices import CustomerInvoices, WaitingChange

    inv = invoice_event(_linked_invoice(date(2026, 3, 1)))
    book = CustomerInvoices(
        customer_id="cust-crm-001A",
        waiting=(WaitingChange(change=inv, waits_for="contract:K-1", parked_at=T0),),
    )
    assert overdue_waiting_invoices(book, T0 + timedelta(minutes=10), 3600) == []
    [exc] = overdue_waiting_invoices(book, T0 + timedelta(hours=2), 3600)
    assert exc.reason is ExceptionReason.CONTRACT_NOT_ACTIVE and exc.entity_id == "in_100"
