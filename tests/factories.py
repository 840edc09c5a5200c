"""Builders of canonical objects for tests: valid by default, overridable field by field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from canonical import (
    ChangeEvent,
    EntityType,
    ErpCommand,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    PostingOutcome,
    PostingResult,
    Source,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def invoice_line(**over: Any) -> InvoiceLine:
    fields: dict[str, Any] = {
        "line_id": "il_1",
        "price_id": "price_platform_monthly",
        "product_id": "prod_platform",
        "quantity": 1,
        "subtotal": 10000,
        "discount_amount": 0,
        "amount": 10000,
        "tax_amount": 2000,
        "tax_rate_ids": ("txr_uk_vat20",),
    }
    fields.update(over)
    return InvoiceLine(**fields)


def invoice(**over: Any) -> Invoice:
    lines = over.pop("lines", (invoice_line(),))
    fields: dict[str, Any] = {
        "invoice_id": "in_100",
        "customer_ref": "cus_100",
        "status": InvoiceStatus.OPEN,
        "currency": "GBP",
        "issued_at": T0,
        "lines": lines,
        "subtotal": sum(line.subtotal for line in lines),
        "discount_total": sum(line.discount_amount for line in lines),
        "tax_total": sum(line.tax_amount for line in lines),
        "customer_country": "GB",
    }
    fields.update(over)
    fields.setdefault(
        "total",
        fields["subtotal"] - fields["discount_total"] + fields["tax_total"] + fields.get("shipping_total", 0),
    )
    return Invoice(**fields)


RANK = {"draft": 0, "open": 1, "uncollectible": 2, "paid": 3, "void": 3}


def invoice_event(inv: Invoice | None = None, event_id: str = "evt_1", **over: Any) -> ChangeEvent:
    inv = inv or invoice()
    fields: dict[str, Any] = {
        "event_id": event_id,
        "source": Source.STRIPE,
        "source_type": "invoice.finalized",
        "entity_type": EntityType.INVOICE,
        "entity_id": inv.invoice_id,
        "entity_version": (RANK[inv.status.value],),
        "customer_ref": inv.customer_ref,
        "customer_id": f"cust-stripe-{inv.customer_ref}",
        "occurred_at": T0,
        "correlation_id": f"corr-{event_id}",
        "payload": inv,
    }
    fields.update(over)
    return ChangeEvent(**fields)


def posted(
    command: ErpCommand, erp_internal_id: str = "101", document_number: str | None = None
) -> PostingResult:
    """What the sink reports once the ERP confirmed `command`."""
    return PostingResult(
        idempotency_key=command.idempotency_key,
        command=command.command,  # type: ignore[attr-defined]
        customer_id=command.customer_id,
        correlation_id=command.correlation_id,
        outcome=PostingOutcome.POSTED,
        erp_internal_id=erp_internal_id,
        document_number=document_number,
        posted_at=T0,
    )
