"""ERP posting commands (stage 2 → sink) and posting results (sink → stage 2)."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, model_validator

from canonical.base import ExternalId, LedgerModel, NonEmptyStr, TopicModel, UtcDatetime
from canonical.entities import Contract, Customer, Payment
from canonical.money import Currency, MinorUnits


class ErpInvoiceLine(LedgerModel):
    """An invoice line as the ERP books it: item and GL account resolved, tax coded."""

    line_no: int = Field(ge=1)
    item: NonEmptyStr
    gl_account: NonEmptyStr
    description: str | None = None
    quantity: int = Field(ge=0)
    amount: MinorUnits
    tax_code: str | None = None
    tax_amount: MinorUnits = 0


class ErpInvoice(LedgerModel):
    external_id: ExternalId
    customer_external_id: ExternalId
    customer_erp_id: str | None = None
    """The ERP's internal id of the customer, when stage 2 knows it (from erp.results)."""
    billing_invoice_id: str | None = None
    """The billing platform's own id of the invoice (memo holds its number)."""
    subsidiary: NonEmptyStr
    currency: Currency
    tran_date: date
    due_date: date | None = None
    memo: str | None = None
    lines: tuple[ErpInvoiceLine, ...] = Field(min_length=1)
    subtotal: MinorUnits
    discount_total: MinorUnits = 0
    tax_total: MinorUnits = 0
    shipping_total: MinorUnits = 0
    total: MinorUnits

    @model_validator(mode="after")
    def _adds_up(self) -> ErpInvoice:
        # A command that does not add up must never exist: validation upstream turns such
        # invoices into exceptions, and this is the last guard.
        lines = sum(line.amount for line in self.lines)
        if lines != self.subtotal - self.discount_total:
            raise ValueError("line amounts do not equal subtotal - discount_total")
        expected = self.subtotal - self.discount_total + self.tax_total + self.shipping_total
        if expected != self.total:
            raise ValueError("subtotal - discounts + tax + shipping != total")
        return self


class ErpPayment(LedgerModel):
    external_id: ExternalId
    customer_external_id: ExternalId
    invoice_external_id: ExternalId
    customer_erp_id: str | None = None
    invoice_erp_id: str | None = None
    """The ERP's internal ids of customer and invoice, when stage 2 knows them."""
    subsidiary: NonEmptyStr
    currency: Currency
    amount: MinorUnits = Field(gt=0)
    applied: MinorUnits | None = None
    """The part of `amount` applied to the invoice, at most what stage 2 knows remains due on
    it; the rest stays on the customer's account unapplied (None: all of it)."""
    tran_date: date
    source: Payment


class ErpCreditMemo(LedgerModel):
    external_id: ExternalId
    customer_external_id: ExternalId
    invoice_external_id: ExternalId
    customer_erp_id: str | None = None
    invoice_erp_id: str | None = None
    """The ERP's internal ids of customer and invoice, when stage 2 knows them."""
    subsidiary: NonEmptyStr
    currency: Currency
    tran_date: date
    subtotal: MinorUnits
    tax_total: MinorUnits = 0
    total: MinorUnits
    applied: MinorUnits | None = None
    """The part of `total` applied to the invoice, at most what stage 2 knows remains due on
    it: a credit note on a paid invoice is a credit on the customer's account (None: all of it)."""


class ErpCommand(TopicModel):
    """What every command carries: who, which transaction, where it books, its key."""

    idempotency_key: ExternalId
    customer_id: NonEmptyStr
    correlation_id: NonEmptyStr
    subsidiary: NonEmptyStr
    issued_at: UtcDatetime


class UpsertCustomer(ErpCommand):
    command: Literal["upsert_customer"] = "upsert_customer"
    external_id: ExternalId
    document: Customer


class UpsertContract(ErpCommand):
    command: Literal["upsert_contract"] = "upsert_contract"
    external_id: ExternalId
    document: Contract


class PostInvoice(ErpCommand):
    command: Literal["post_invoice"] = "post_invoice"
    document: ErpInvoice


class ApplyPayment(ErpCommand):
    command: Literal["apply_payment"] = "apply_payment"
    document: ErpPayment


class PostCreditMemo(ErpCommand):
    command: Literal["post_credit_memo"] = "post_credit_memo"
    document: ErpCreditMemo


class VoidInvoice(ErpCommand):
    command: Literal["void_invoice"] = "void_invoice"
    invoice_external_id: ExternalId
    invoice_erp_id: str | None = None
    """The ERP's internal id of the invoice, when stage 2 knows it."""
    reason: str | None = None


AnyErpCommand = Annotated[
    UpsertCustomer | UpsertContract | PostInvoice | ApplyPayment | PostCreditMemo | VoidInvoice,
    Field(discriminator="command"),
]


class PostingOutcome(StrEnum):
    POSTED = "posted"
    FAILED = "failed"


class PostingResult(TopicModel):
    """What the ERP said about one command; flows back into the tables via `erp.results`."""

    idempotency_key: ExternalId
    command: NonEmptyStr
    customer_id: NonEmptyStr
    correlation_id: NonEmptyStr
    outcome: PostingOutcome
    erp_internal_id: str | None = None
    document_number: str | None = None
    posted_at: UtcDatetime | None = None
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _posted_has_ids(self) -> PostingResult:
        if self.outcome is PostingOutcome.POSTED and (self.erp_internal_id is None or self.posted_at is None):
            raise ValueError("a posted result needs erp_internal_id and posted_at")
        return self
