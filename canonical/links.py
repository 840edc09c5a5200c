"""Links between source objects that travel on ledgerflow's own topics."""

from __future__ import annotations

from canonical.base import NonEmptyStr, TopicModel


class InvoiceOwner(TopicModel):
    """Whose invoice a Stripe invoice is, keyed by the invoice id on its topic, so that the
    `invoice_payment` Events naming the invoice (same key) find their customer locally."""

    invoice_id: NonEmptyStr
    billing_customer_id: NonEmptyStr
    correlation_id: NonEmptyStr
