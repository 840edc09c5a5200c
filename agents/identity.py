"""Which canonical customer a source's reference belongs to. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from canonical import (
    BusinessException,
    ChangeEvent,
    Customer,
    EntityType,
    ExceptionReason,
    FieldError,
    Severity,
    Source,
    to_external_id,
)
from streams.headers import stable_id
from tables.identity import BillingIdentity, ParkedChange, ParkedChanges


def provisional_customer_id(source: Source, ref: str) -> str:
    """The canonical id minted from a source's customer reference.

    Deterministic, so every worker and every replay derives the same id, and NetSuite-valid,
    so it doubles as the ERP customer's external id. Salesforce and the CLM both name the CRM
    account, so they share one namespace.
    """
    namespace = "crm" if source in (Source.SALESFORCE, Source.CLM) else source.value
    return to_external_id("cust", namespace, ref)


def canonical_customer_id(customer: Customer) -> str:
    """A billing customer linked to a CRM account is that account's customer; one with no
    link (self-serve) is a customer of its own."""
    if customer.crm_account_id:
        return provisional_customer_id(Source.SALESFORCE, customer.crm_account_id)
    return provisional_customer_id(Source.STRIPE, customer.source_ref)


@dataclass
class IdentityDecision:
    """What to do with one billing event: store, release, park, raise."""

    identity: BillingIdentity | None = None  # a new link to store
    send: list[ChangeEvent] = field(default_factory=list)  # resolved events, in order
    parked: ParkedChanges | None = None  # the parked state to store (empty: delete)
    exceptions: list[BusinessException] = field(default_factory=list)


def resolve_billing_change(
    change: ChangeEvent,
    identity: BillingIdentity | None,
    parked: ParkedChanges | None,
    now: datetime,
    source: str,
) -> IdentityDecision:
    """Link, resolve or park one canonical event from Stripe (keyed by its Stripe customer)."""
    ref = change.customer_ref
    decision = IdentityDecision()
    if change.entity_type is EntityType.CUSTOMER and isinstance(change.payload, Customer):
        linked = canonical_customer_id(change.payload)
        if identity is None:
            identity = BillingIdentity(
                billing_customer_id=ref,
                customer_id=linked,
                crm_account_id=change.payload.crm_account_id,
                linked_at=now,
            )
            decision.identity = identity
        elif identity.customer_id != linked:
            # Re-pointing a customer whose documents may already be in the ERP under the old
            # id is a person's decision; keep the first link and say so.
            decision.exceptions.append(
                BusinessException(
                    exception_id=stable_id("exception", "identity", ref, linked),
                    reason=ExceptionReason.LIKELY_DUPLICATE_CUSTOMER,
                    severity=Severity.WARNING,
                    message=f"billing customer {ref} is linked to {identity.customer_id}, now names {linked}",
                    fields=(FieldError(field="crm_account_id", problem="differs from the first link"),),
                    customer_id=identity.customer_id,
                    entity_id=ref,
                    correlation_id=change.correlation_id,
                    first_seen=now,
                    last_seen=now,
                )
            )
    if identity is None:
        waiting = parked.changes if parked else ()
        decision.parked = ParkedChanges(
            billing_customer_id=ref,
            changes=(*waiting, ParkedChange(change=change, parked_at=now, source=source)),
        )
        return decision
    resolved = change.model_copy(update={"customer_id": identity.customer_id})
    released = [
        p.change.model_copy(update={"customer_id": identity.customer_id})
        for p in (parked.changes if parked else ())
    ]
    if released:
        decision.parked = ParkedChanges(billing_customer_id=ref)
    # The customer record goes first, so stage 2 knows the customer before its documents.
    decision.send = [resolved, *released] if decision.identity is not None else [*released, resolved]
    return decision


def overdue_parked(parked: ParkedChanges, now: datetime, timeout_s: float) -> BusinessException | None:
    """An exception for a billing customer whose events have waited longer than allowed."""
    if not parked.changes:
        return None
    oldest = parked.changes[0]
    if (now - oldest.parked_at).total_seconds() < timeout_s:
        return None
    return BusinessException(
        exception_id=stable_id("exception", "unknown_customer", parked.billing_customer_id),
        reason=ExceptionReason.UNKNOWN_CUSTOMER,
        message=(
            f"{len(parked.changes)} event(s) of billing customer {parked.billing_customer_id} wait for its "
            f"customer record (customer.created) since {oldest.parked_at.isoformat()}"
        ),
        fields=(FieldError(field="customer", problem="no customer.* event seen for this billing customer"),),
        entity_id=parked.billing_customer_id,
        correlation_id=oldest.change.correlation_id,
        first_seen=oldest.parked_at,
        last_seen=now,
        attempts=len(parked.changes),
    )
