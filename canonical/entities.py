"""The business documents every platform's changes are mapped onto."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from canonical.base import CountryCode, LedgerModel, NonEmptyStr, UtcDatetime
from canonical.money import Currency, MinorUnits


class Customer(LedgerModel):
    """A customer as the sources describe it; identities in each system sit side by side."""

    kind: Literal["customer"] = "customer"
    source_ref: NonEmptyStr
    crm_account_id: str | None = None
    billing_customer_id: str | None = None
    name: str | None = None
    email: str | None = None
    country: CountryCode | None = None
    currency: Currency | None = None
    tax_ids: tuple[str, ...] = ()
    parent_account_id: str | None = None
    deleted: bool = False


class ContractStatus(StrEnum):
    DRAFT = "draft"
    SIGNED = "signed"
    ACTIVE = "active"
    AMENDED = "amended"
    RENEWED = "renewed"
    TERMINATED = "terminated"
    EXPIRED = "expired"


class ContractLine(LedgerModel):
    product_id: NonEmptyStr
    quantity: int = Field(ge=0)
    unit_amount: MinorUnits
    currency: Currency


class Contract(LedgerModel):
    """Agreed terms (CLM/CPQ): the lines, dates and legal entity invoices are checked against."""

    kind: Literal["contract"] = "contract"
    contract_id: NonEmptyStr
    crm_account_id: NonEmptyStr
    status: ContractStatus
    amendment_number: int = Field(default=0, ge=0)
    effective_date: date
    end_date: date | None = None
    legal_entity: str | None = None
    currency: Currency
    lines: tuple[ContractLine, ...] = ()

    @model_validator(mode="after")
    def _dates_in_order(self) -> Contract:
        if self.end_date is not None and self.end_date < self.effective_date:
            raise ValueError("end_date is before effective_date")
        if any(line.currency != self.currency for line in self.lines):
            raise ValueError("every contract line must be in the contract currency")
        return self


class SubscriptionItem(LedgerModel):
    price_id: NonEmptyStr
    product_id: str | None = None
    quantity: int = Field(ge=0)
    unit_amount: MinorUnits | None = None


class Subscription(LedgerModel):
    kind: Literal["subscription"] = "subscription"
    subscription_id: NonEmptyStr
    customer_ref: NonEmptyStr
    status: NonEmptyStr
    currency: Currency
    items: tuple[SubscriptionItem, ...] = ()
    current_period_start: UtcDatetime | None = None
    current_period_end: UtcDatetime | None = None
    contract_id: str | None = None


class InvoiceStatus(StrEnum):
    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    VOID = "void"
    UNCOLLECTIBLE = "uncollectible"


class InvoiceLine(LedgerModel):
    """One line: `subtotal` before discounts, `amount` after them, `tax_amount` on top."""

    line_id: NonEmptyStr
    description: str | None = None
    product_id: str | None = None
    price_id: str | None = None
    quantity: int = Field(default=1, ge=0)
    unit_amount: MinorUnits | None = None
    subtotal: MinorUnits
    discount_amount: MinorUnits = 0
    amount: MinorUnits
    tax_amount: MinorUnits = 0
    tax_rate_ids: tuple[str, ...] = ()
    period_start: UtcDatetime | None = None
    period_end: UtcDatetime | None = None


class Invoice(LedgerModel):
    """A billing invoice; the arithmetic is checked by validation, not here, so a bad one
    can still be carried to an exception that names the fields at fault."""

    kind: Literal["invoice"] = "invoice"
    invoice_id: NonEmptyStr
    number: str | None = None
    customer_ref: NonEmptyStr
    status: InvoiceStatus
    currency: Currency
    issued_at: UtcDatetime
    due_at: UtcDatetime | None = None
    lines: tuple[InvoiceLine, ...]
    subtotal: MinorUnits
    discount_total: MinorUnits = 0
    tax_total: MinorUnits = 0
    shipping_total: MinorUnits = 0
    total: MinorUnits
    amount_paid: MinorUnits = 0
    amount_due: MinorUnits = 0
    subscription_id: str | None = None
    contract_id: str | None = None
    customer_country: CountryCode | None = None


class PaymentStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Payment(LedgerModel):
    kind: Literal["payment"] = "payment"
    payment_id: NonEmptyStr
    customer_ref: NonEmptyStr
    invoice_id: str | None = None
    amount: MinorUnits = Field(ge=0)
    currency: Currency
    status: PaymentStatus
    received_at: UtcDatetime
    method: str | None = None
    failure_reason: str | None = None


class Refund(LedgerModel):
    kind: Literal["refund"] = "refund"
    refund_id: NonEmptyStr
    customer_ref: NonEmptyStr
    payment_id: str | None = None
    charge_id: str | None = None
    amount: MinorUnits = Field(ge=0)
    currency: Currency
    status: NonEmptyStr
    created_at: UtcDatetime
    reason: str | None = None


class CreditMemoStatus(StrEnum):
    ISSUED = "issued"
    VOID = "void"


class CreditMemo(LedgerModel):
    kind: Literal["credit_memo"] = "credit_memo"
    credit_memo_id: NonEmptyStr
    number: str | None = None
    customer_ref: NonEmptyStr
    invoice_id: NonEmptyStr
    status: CreditMemoStatus
    currency: Currency
    issued_at: UtcDatetime
    subtotal: MinorUnits
    tax_total: MinorUnits = 0
    total: MinorUnits
    reason: str | None = None
