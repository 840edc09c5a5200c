"""Stripe's own payload shapes (the parts ledgerflow reads). Lenient to new fields, exact about
the ones it uses: Stripe adds fields often, and a new one must not stop the pipeline."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class StripeModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class StripeEventData(StripeModel):
    object: dict[str, Any]
    previous_attributes: dict[str, Any] | None = None


class StripeEvent(StripeModel):
    """The `Event` envelope of a webhook or `billing.changes` message."""

    id: str = Field(min_length=1)
    object: str
    type: str = Field(min_length=1)
    created: int
    livemode: bool = False
    api_version: str | None = None
    data: StripeEventData


class StripeDiscountAmount(StripeModel):
    amount: int


class StripeTaxRateDetails(StripeModel):
    tax_rate: str | None = None


class StripeLineTax(StripeModel):
    """`taxes[]` (API 2025+) or the legacy `tax_amounts[]`, normalised to one shape."""

    amount: int
    tax_rate: str | None = None
    tax_rate_details: StripeTaxRateDetails | None = None

    @property
    def rate_id(self) -> str | None:
        if self.tax_rate is not None:
            return self.tax_rate
        return self.tax_rate_details.tax_rate if self.tax_rate_details else None


class StripePriceDetails(StripeModel):
    price: str | None = None
    product: str | None = None


class StripePricing(StripeModel):
    type: str | None = None
    price_details: StripePriceDetails | None = None
    unit_amount_decimal: str | None = None


class StripePeriod(StripeModel):
    start: int | None = None
    end: int | None = None


class StripeLineItem(StripeModel):
    id: str = Field(min_length=1)
    amount: int
    subtotal: int | None = None
    currency: str | None = None
    description: str | None = None
    quantity: int | None = None
    discount_amounts: list[StripeDiscountAmount] | None = None
    taxes: list[StripeLineTax] | None = None
    tax_amounts: list[StripeLineTax] | None = None
    pricing: StripePricing | None = None
    price: dict[str, Any] | None = None  # legacy API versions
    period: StripePeriod | None = None


class StripeList(StripeModel):
    data: list[StripeLineItem]
    has_more: bool = False


class StripeAddress(StripeModel):
    country: str | None = None


class StripeStatusTransitions(StripeModel):
    finalized_at: int | None = None
    paid_at: int | None = None
    voided_at: int | None = None
    marked_uncollectible_at: int | None = None


class StripeShippingCost(StripeModel):
    amount_total: int | None = None


class StripeTotalTax(StripeModel):
    amount: int


class StripeSubscriptionDetails(StripeModel):
    subscription: str | None = None


class StripeInvoiceParent(StripeModel):
    subscription_details: StripeSubscriptionDetails | None = None


class StripeInvoice(StripeModel):
    id: str = Field(min_length=1)
    object: str
    customer: str | dict[str, Any] | None
    status: str | None
    currency: str
    created: int
    effective_at: int | None = None
    due_date: int | None = None
    number: str | None = None
    lines: StripeList
    subtotal: int
    total: int
    total_discount_amounts: list[StripeDiscountAmount] | None = None
    total_taxes: list[StripeTotalTax] | None = None  # basil and later
    total_tax_amounts: list[StripeTotalTax] | None = None  # acacia
    tax: int | None = None  # acacia
    amount_shipping: int = 0
    shipping_cost: StripeShippingCost | None = None
    amount_paid: int = 0
    amount_due: int = 0
    customer_address: StripeAddress | None = None
    status_transitions: StripeStatusTransitions | None = None
    subscription: str | None = None  # acacia
    parent: StripeInvoiceParent | None = None  # basil and later
    metadata: dict[str, str] = {}


class StripeCustomer(StripeModel):
    id: str = Field(min_length=1)
    object: str
    deleted: bool = False
    name: str | None = None
    email: str | None = None
    currency: str | None = None
    address: StripeAddress | None = None
    metadata: dict[str, str] = {}


class StripePrice(StripeModel):
    id: str = Field(min_length=1)
    product: str | dict[str, Any] | None = None
    unit_amount: int | None = None


class StripeSubscriptionItem(StripeModel):
    id: str
    price: StripePrice
    quantity: int | None = None
    current_period_start: int | None = None
    current_period_end: int | None = None


class StripeSubscriptionItems(StripeModel):
    data: list[StripeSubscriptionItem]


class StripeSubscription(StripeModel):
    id: str = Field(min_length=1)
    object: str
    customer: str | dict[str, Any] | None
    status: str = Field(min_length=1)
    currency: str
    items: StripeSubscriptionItems
    current_period_start: int | None = None  # legacy API versions
    current_period_end: int | None = None
    metadata: dict[str, str] = {}


class StripeCreditNote(StripeModel):
    id: str = Field(min_length=1)
    object: str
    customer: str | dict[str, Any] | None
    invoice: str | dict[str, Any] | None
    number: str | None = None
    status: str
    currency: str
    created: int
    effective_at: int | None = None
    subtotal: int
    total: int
    total_taxes: list[StripeTotalTax] | None = None
    tax_amounts: list[StripeTotalTax] | None = None  # legacy API versions
    reason: str | None = None


class StripePaymentIntent(StripeModel):
    id: str = Field(min_length=1)
    object: str
    customer: str | dict[str, Any] | None
    amount: int
    amount_received: int = 0
    currency: str
    status: str
    created: int
    invoice: str | dict[str, Any] | None = None  # acacia; since basil an invoice_payment links them
    payment_method_types: list[str] = []
    last_payment_error: dict[str, Any] | None = None
    metadata: dict[str, str] = {}


class StripePaymentRef(StripeModel):
    """`invoice_payment.payment`: what paid (a PaymentIntent, a Charge without one, or an
    out-of-band payment record)."""

    type: str
    payment_intent: str | dict[str, Any] | None = None
    charge: str | dict[str, Any] | None = None
    payment_record: str | dict[str, Any] | None = None


class StripeInvoicePaymentTransitions(StripeModel):
    paid_at: int | None = None
    canceled_at: int | None = None


class StripeInvoicePayment(StripeModel):
    """An `invoice_payment` (API 2025-03-31.basil and later): one payment's part of one
    invoice. It names the invoice, never the customer."""

    id: str = Field(min_length=1)
    object: str
    invoice: str | dict[str, Any]
    amount_paid: int | None = None
    amount_requested: int
    currency: str
    status: str
    created: int
    payment: StripePaymentRef
    status_transitions: StripeInvoicePaymentTransitions | None = None


class StripeRefund(StripeModel):
    id: str = Field(min_length=1)
    amount: int
    currency: str
    status: str | None = None
    created: int
    charge: str | None = None
    payment_intent: str | None = None
    reason: str | None = None


class StripeRefundList(StripeModel):
    data: list[StripeRefund] = []


class StripeCharge(StripeModel):
    id: str = Field(min_length=1)
    object: str
    customer: str | dict[str, Any] | None
    amount_refunded: int
    currency: str
    created: int
    payment_intent: str | None = None
    refunds: StripeRefundList | None = None
