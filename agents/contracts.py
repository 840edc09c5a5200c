"""The contract state machine, as data, and what a contract means for an invoice. Pure.

draft → signed → active → amended(n) → renewed → terminated | expired. "Active" is also a
matter of dates: a signed, amended or renewed contract is in force between its effective and
end dates. CLM events carry a contiguous version, so an amendment that arrives before the one
it follows waits for it; Salesforce's carry a commit timestamp, so a newer one simply wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum

from canonical import (
    BusinessException,
    ChangeEvent,
    Contract,
    ContractStatus,
    ExceptionReason,
    FieldError,
    Invoice,
    Source,
)
from streams.headers import stable_id
from tables.contracts import ContractRow, EarlyChange

S = ContractStatus

# Which status may follow which (None: the contract is new). Anything else is an exception.
CONTRACT_TRANSITIONS: dict[ContractStatus | None, frozenset[ContractStatus]] = {
    None: frozenset({S.DRAFT, S.SIGNED, S.ACTIVE}),
    S.DRAFT: frozenset({S.DRAFT, S.SIGNED, S.ACTIVE, S.TERMINATED}),
    S.SIGNED: frozenset({S.SIGNED, S.ACTIVE, S.AMENDED, S.RENEWED, S.TERMINATED, S.EXPIRED}),
    S.ACTIVE: frozenset({S.ACTIVE, S.AMENDED, S.RENEWED, S.TERMINATED, S.EXPIRED}),
    S.AMENDED: frozenset({S.AMENDED, S.RENEWED, S.TERMINATED, S.EXPIRED}),
    S.RENEWED: frozenset({S.AMENDED, S.RENEWED, S.TERMINATED, S.EXPIRED}),
    S.TERMINATED: frozenset(),
    S.EXPIRED: frozenset({S.RENEWED}),
}


def allowed(current: ContractStatus | None, new: ContractStatus) -> bool:
    return new in CONTRACT_TRANSITIONS[current]


class ContractOutcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    WAITING = "waiting"  # an early amendment, parked in the row
    ILLEGAL = "illegal"


@dataclass
class ContractDecision:
    outcome: ContractOutcome
    row: ContractRow | None
    exceptions: list[BusinessException] = field(default_factory=list)


def _exception(
    change: ChangeEvent,
    reason: ExceptionReason,
    message: str,
    fields: tuple[FieldError, ...],
    now: datetime,
    key: str,
) -> BusinessException:
    return BusinessException(
        exception_id=stable_id("exception", reason.value, change.customer_id, change.entity_id, key),
        reason=reason,
        message=message,
        fields=fields,
        customer_id=change.customer_id,
        entity_id=change.entity_id,
        correlation_id=change.correlation_id,
        first_seen=now,
        last_seen=now,
    )


def _applied(row: ContractRow | None, contract: Contract, change: ChangeEvent) -> ContractRow:
    seen = ((row.seen_event_ids if row else ()) + (change.event_id,))[-16:]
    # An amendment changes terms from its own date; the contract has been in force since it
    # was first signed, so the start stays the earliest one seen.
    start = min(row.effective_date, contract.effective_date) if row else contract.effective_date
    return ContractRow(
        contract_id=contract.contract_id,
        status=contract.status,
        version=change.entity_version,
        amendment_number=contract.amendment_number,
        effective_date=start,
        end_date=contract.end_date,
        currency=contract.currency,
        waiting=row.waiting if row else (),
        seen_event_ids=seen,
    )


def decide_contract(row: ContractRow | None, change: ChangeEvent, now: datetime) -> ContractDecision:
    """Apply one contract event: dedup, order (resequencing CLM versions), transitions."""
    contract = change.payload
    assert isinstance(contract, Contract)
    if row is not None and (
        change.event_id in row.seen_event_ids
        or any(w.change.event_id == change.event_id for w in row.waiting)
    ):
        return ContractDecision(ContractOutcome.DUPLICATE, row)
    if row is not None and change.entity_version <= row.version:
        return ContractDecision(ContractOutcome.STALE, row)
    contiguous = (
        change.source is not Source.CLM or row is None or change.entity_version[0] == row.version[0] + 1
    )
    if row is not None and not contiguous:
        waiting = tuple(
            sorted(
                (*row.waiting, EarlyChange(change=change, parked_at=now)),
                key=lambda w: w.change.entity_version,
            )
        )
        return ContractDecision(ContractOutcome.WAITING, row.model_copy(update={"waiting": waiting}))
    current = row.status if row else None
    if not allowed(current, contract.status):
        exc = _exception(
            change,
            ExceptionReason.ILLEGAL_TRANSITION,
            f"contract {contract.contract_id}: {current.value if current else 'new'} → "
            f"{contract.status.value} is not a legal transition",
            (FieldError(field="status", problem=f"{current} cannot become {contract.status.value}"),),
            now,
            f"{current}-{contract.status.value}",
        )
        return ContractDecision(ContractOutcome.ILLEGAL, row, [exc])
    return ContractDecision(ContractOutcome.APPLIED, _applied(row, contract, change))


def apply_contract_change(row: ContractRow | None, change: ChangeEvent, now: datetime) -> ContractDecision:
    """`decide_contract`, then every waiting event whose turn has come, in version order."""
    decision = decide_contract(row, change, now)
    if decision.outcome is not ContractOutcome.APPLIED or decision.row is None:
        return decision
    while decision.row is not None and decision.row.waiting:
        following, *rest = decision.row.waiting
        if following.change.entity_version[0] != decision.row.version[0] + 1:
            break
        cleared = decision.row.model_copy(update={"waiting": tuple(rest)})
        step = decide_contract(cleared, following.change, now)
        decision.exceptions += step.exceptions
        decision.row = step.row if step.row is not None else cleared
    return decision


def overdue_gaps(row: ContractRow, now: datetime, timeout_s: float) -> list[BusinessException]:
    """An exception when an early amendment has waited too long for the one before it."""
    if not row.waiting or (now - row.waiting[0].parked_at).total_seconds() < timeout_s:
        return []
    first = row.waiting[0].change
    missing = list(range(row.version[0] + 1, first.entity_version[0]))
    return [
        _exception(
            first,
            ExceptionReason.AMENDMENT_GAP,
            f"contract {row.contract_id}: version(s) {missing} never arrived; "
            f"{len(row.waiting)} later event(s) wait",
            (
                FieldError(
                    field="version", problem=f"expected {row.version[0] + 1}, have {first.entity_version[0]}"
                ),
            ),
            now,
            "gap",
        )
    ]


def in_force_on(row: ContractRow, day: date) -> bool:
    """Was the contract in force on `day`? A terminated one was, up to its end date."""
    if row.status is S.DRAFT:
        return False
    return row.effective_date <= day and (row.end_date is None or day <= row.end_date)


class InvoiceGate(StrEnum):
    OPEN = "open"  # post it
    WAIT = "wait"  # the contract is not known yet
    TERMINATED = "terminated"
    NOT_ACTIVE = "not_active"


def gate_invoice(invoice: Invoice, contract: ContractRow | None) -> InvoiceGate:
    """May a contract-linked invoice be posted? Only while its contract is in force on the
    invoice date; an invoice against a terminated contract is an exception."""
    if invoice.contract_id is None:
        return InvoiceGate.OPEN
    if contract is None or contract.status is S.DRAFT:
        return InvoiceGate.WAIT  # the contract, or its signature, is still on its way
    day = invoice.issued_at.date()
    if in_force_on(contract, day):
        return InvoiceGate.OPEN
    if contract.end_date is not None and day > contract.end_date:
        return InvoiceGate.TERMINATED
    return InvoiceGate.NOT_ACTIVE
