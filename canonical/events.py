"""The canonical change event: one source change to one entity, in one envelope."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, model_validator

from canonical.base import NonEmptyStr, TopicModel, UtcDatetime
from canonical.entities import (
    Contract,
    CreditMemo,
    Customer,
    Invoice,
    Payment,
    Refund,
    Subscription,
)


class Source(StrEnum):
    SALESFORCE = "salesforce"
    CLM = "clm"
    STRIPE = "stripe"


class EntityType(StrEnum):
    CUSTOMER = "customer"
    CONTRACT = "contract"
    SUBSCRIPTION = "subscription"
    INVOICE = "invoice"
    PAYMENT = "payment"
    REFUND = "refund"
    CREDIT_MEMO = "credit_memo"


Entity = Annotated[
    Customer | Contract | Subscription | Invoice | Payment | Refund | CreditMemo,
    Field(discriminator="kind"),
]


class ChangeEvent(TopicModel):
    """What stage 1 emits on `ledgerflow.canonical`, keyed by `customer_id`.

    `entity_version` orders one entity's changes and compares as a tuple: Salesforce
    (commit timestamp ms, sequence number), Stripe (lifecycle rank,), CLM (amendment number,).
    """

    event_id: NonEmptyStr
    source: Source
    source_type: NonEmptyStr
    entity_type: EntityType
    entity_id: NonEmptyStr
    entity_version: tuple[int, ...] = Field(min_length=1)
    customer_ref: NonEmptyStr
    customer_id: NonEmptyStr
    occurred_at: UtcDatetime
    correlation_id: NonEmptyStr
    payload: Entity
    changed_fields: tuple[str, ...] | None = None
    """For a partial update (Salesforce CDC UPDATE): the payload fields it carries, nulled
    ones included; merge them into the current state and keep the rest. None: a full snapshot."""
    deleted: bool = False
    """The source deleted the entity (the payload carries its last known identity)."""

    @model_validator(mode="after")
    def _payload_matches_entity_type(self) -> ChangeEvent:
        if self.payload.kind != self.entity_type.value:
            raise ValueError(
                f"entity_type {self.entity_type.value!r} does not match payload {self.payload.kind!r}"
            )
        if self.changed_fields is not None:
            unknown = set(self.changed_fields) - set(type(self.payload).model_fields)
            if unknown:
                raise ValueError(f"changed_fields names fields the payload does not have: {sorted(unknown)}")
        return self
