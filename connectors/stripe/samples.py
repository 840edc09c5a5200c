"""Realistic Stripe Event payloads, for the dev demo, tests and the scenario simulator.

Shapes follow Stripe's current API (basil and later: `pricing.price_details`, `taxes[]`,
`total_taxes`, `parent`, `invoice_payment`); `connectors.stripe.versions.render` gives an older
version's.
"""

from __future__ import annotations

from typing import Any

from connectors.stripe.versions import CURRENT_VERSION

# Country → (currency, tax rate id, tax rate in basis points)
MARKETS: dict[str, tuple[str, str, int]] = {
    "US": ("usd", "txr_us_sales", 0),
    "GB": ("gbp", "txr_uk_vat20", 2000),
    "DE": ("eur", "txr_de_vat19", 1900),
    "JP": ("jpy", "txr_jp_ct10", 1000),
}

# product id → (price id, unit amount in minor units per currency)
CATALOGUE: dict[str, tuple[str, dict[str, int]]] = {
    "prod_platform": ("price_platform_monthly", {"usd": 49900, "gbp": 39900, "eur": 44900, "jpy": 69800}),
    "prod_seats": ("price_seat_monthly", {"usd": 2500, "gbp": 2000, "eur": 2300, "jpy": 3500}),
    "prod_support": ("price_support_monthly", {"usd": 9900, "gbp": 7900, "eur": 8900, "jpy": 13800}),
}


def invoice_object(
    invoice_id: str,
    customer_id: str,
    country: str,
    lines: list[tuple[str, int]],
    *,
    status: str = "open",
    created: int = 1_767_225_600,  # 2026-01-01T00:00:00Z
    number: str | None = None,
    prorations: list[tuple[str, int, int]] = (),  # type: ignore[assignment]
    subscription: str | None = None,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Stripe invoice that adds up: `lines` are (product id, quantity) at catalogue prices,
    `prorations` are (product id, quantity, amount) for mid-period changes."""
    currency, tax_rate, bps = MARKETS[country]
    line_objs = []
    subtotal = tax_total = 0
    priced = [(product, quantity, CATALOGUE[product][1][currency] * quantity) for product, quantity in lines]
    for n, (product, quantity, amount) in enumerate([*priced, *prorations]):
        price_id, unit_amounts = CATALOGUE[product]
        # Tax rounds half up per line, in minor units, as Stripe does for exclusive tax.
        tax = (amount * bps + 5000) // 10000
        subtotal += amount
        tax_total += tax
        line_objs.append(
            {
                "id": f"il_{invoice_id[3:]}_{n}",
                "object": "line_item",
                "amount": amount,
                "subtotal": amount,
                "currency": currency,
                "description": f"{product} x {quantity}",
                "discount_amounts": [],
                "discountable": True,
                "invoice": invoice_id,
                "livemode": False,
                "metadata": {},
                "period": {"start": created, "end": created + 30 * 86400},
                "pricing": {
                    "type": "price_details",
                    "price_details": {"price": price_id, "product": product},
                    "unit_amount_decimal": str(unit_amounts[currency]),
                },
                "quantity": quantity,
                "taxes": [
                    {
                        "amount": tax,
                        "tax_behavior": "exclusive",
                        "type": "tax_rate_details",
                        "tax_rate_details": {"tax_rate": tax_rate},
                        "taxability_reason": "standard_rated",
                        "taxable_amount": amount,
                    }
                ]
                if bps
                else [],
            }
        )
    total = subtotal + tax_total
    paid = status == "paid"
    return {
        "id": invoice_id,
        "object": "invoice",
        "account_country": "US",
        "amount_due": total,
        "amount_paid": total if paid else 0,
        "amount_remaining": 0 if paid else total,
        "amount_shipping": 0,
        "billing_reason": "subscription_cycle",
        "collection_method": "charge_automatically",
        "created": created,
        "currency": currency,
        "customer": customer_id,
        "customer_address": {"country": country},
        "discounts": [],
        "due_date": None,
        "effective_at": created if status != "draft" else None,
        "lines": {
            "object": "list",
            "data": line_objs,
            "has_more": False,
            "url": f"/v1/invoices/{invoice_id}/lines",
        },
        "livemode": False,
        "metadata": dict(metadata or {}),
        "number": number,
        "parent": {"type": "subscription_details", "subscription_details": {"subscription": subscription}}
        if subscription
        else None,
        "status": status,
        "status_transitions": {
            "finalized_at": created + 3600 if status != "draft" else None,
            "paid_at": created + 7200 if paid else None,
            "voided_at": None,
            "marked_uncollectible_at": None,
        },
        "subtotal": subtotal,
        "subtotal_excluding_tax": subtotal,
        "tax": None,
        "total": total,
        "total_discount_amounts": [],
        "total_excluding_tax": subtotal,
        "total_taxes": [
            {"amount": tax_total, "tax_behavior": "exclusive", "tax_rate_details": {"tax_rate": tax_rate}}
        ]
        if bps
        else [],
    }


def event_envelope(
    event_id: str, event_type: str, obj: dict[str, Any], created: int, api_version: str = CURRENT_VERSION
) -> dict[str, Any]:
    """Wrap an object in Stripe's Event envelope."""
    return {
        "id": event_id,
        "object": "event",
        "api_version": api_version,
        "created": created,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


def customer_object(
    customer_id: str, country: str, name: str, email: str, crm_account_id: str | None, created: int
) -> dict[str, Any]:
    currency = MARKETS[country][0]
    return {
        "id": customer_id,
        "object": "customer",
        "address": {
            "country": country,
            "city": None,
            "line1": None,
            "line2": None,
            "postal_code": None,
            "state": None,
        },
        "balance": 0,
        "created": created,
        "currency": currency,
        "delinquent": False,
        "email": email,
        "invoice_prefix": customer_id[-8:].upper(),
        "livemode": False,
        "metadata": {"crm_account_id": crm_account_id} if crm_account_id else {},
        "name": name,
        "preferred_locales": [],
        "tax_exempt": "none",
    }


def subscription_object(
    sub_id: str,
    customer_id: str,
    country: str,
    lines: list[tuple[str, int]],
    status: str,
    period_start: int,
    period_end: int,
    contract_id: str,
) -> dict[str, Any]:
    currency = MARKETS[country][0]
    return {
        "id": sub_id,
        "object": "subscription",
        "customer": customer_id,
        "currency": currency,
        "status": status,
        "created": period_start,
        "start_date": period_start,
        "metadata": {"contract_id": contract_id},
        "items": {
            "object": "list",
            "has_more": False,
            "data": [
                {
                    "id": f"si_{sub_id[4:]}_{i}",
                    "object": "subscription_item",
                    "quantity": quantity,
                    "current_period_start": period_start,
                    "current_period_end": period_end,
                    "price": {
                        "id": CATALOGUE[product][0],
                        "object": "price",
                        "product": product,
                        "currency": currency,
                        "unit_amount": CATALOGUE[product][1][currency],
                    },
                }
                for i, (product, quantity) in enumerate(lines)
            ],
        },
    }


def payment_intent_object(
    pi_id: str, customer_id: str, currency: str, amount: int, succeeded: bool, created: int
) -> dict[str, Any]:
    """A PaymentIntent as the current API has it: it names no invoice (`versions.render`
    adds acacia's `invoice`)."""
    return {
        "id": pi_id,
        "object": "payment_intent",
        "amount": amount,
        "amount_received": amount if succeeded else 0,
        "currency": currency,
        "customer": customer_id,
        "created": created,
        "livemode": False,
        "metadata": {},
        "payment_method_types": ["card"],
        "status": "succeeded" if succeeded else "requires_payment_method",
        "last_payment_error": None if succeeded else {"code": "card_declined", "type": "card_error"},
        "latest_charge": f"ch_{pi_id[3:]}" if succeeded else None,
    }


def invoice_payment_object(
    invoice_id: str, pi_id: str, currency: str, amount: int, created: int, paid_at: int
) -> dict[str, Any]:
    """The `invoice_payment` linking a PaymentIntent to the invoice it paid (basil and later)."""
    return {
        "id": f"inpay_{pi_id[3:]}",
        "object": "invoice_payment",
        "amount_paid": amount,
        "amount_requested": amount,
        "created": created,
        "currency": currency,
        "invoice": invoice_id,
        "is_default": True,
        "livemode": False,
        "payment": {"type": "payment_intent", "payment_intent": pi_id},
        "status": "paid",
        "status_transitions": {"canceled_at": None, "paid_at": paid_at},
    }


def refunded_charge_object(
    charge_id: str,
    customer_id: str,
    currency: str,
    amount: int,
    refund_id: str,
    refund_amount: int,
    pi_id: str,
    created: int,
) -> dict[str, Any]:
    return {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": refund_amount,
        "currency": currency,
        "customer": customer_id,
        "created": created,
        "paid": True,
        "payment_intent": pi_id,
        "refunded": refund_amount == amount,
        "status": "succeeded",
        "refunds": {
            "object": "list",
            "has_more": False,
            "data": [
                {
                    "id": refund_id,
                    "object": "refund",
                    "amount": refund_amount,
                    "charge": charge_id,
                    "currency": currency,
                    "created": created,
                    "payment_intent": pi_id,
                    "reason": "requested_by_customer",
                    "status": "succeeded",
                }
            ],
        },
    }


def credit_note_object(
    cn_id: str,
    customer_id: str,
    invoice_id: str,
    currency: str,
    subtotal: int,
    tax: int,
    tax_rate: str | None,
    created: int,
    number: str,
    status: str = "issued",
) -> dict[str, Any]:
    return {
        "id": cn_id,
        "object": "credit_note",
        "amount": subtotal + tax,
        "created": created,
        "currency": currency,
        "customer": customer_id,
        "effective_at": created,
        "invoice": invoice_id,
        "livemode": False,
        "number": number,
        "reason": "order_change",
        "status": status,
        "subtotal": subtotal,
        "subtotal_excluding_tax": subtotal,
        "total": subtotal + tax,
        "total_excluding_tax": subtotal,
        "total_taxes": [
            {"amount": tax, "tax_behavior": "exclusive", "tax_rate_details": {"tax_rate": tax_rate}}
        ]
        if tax
        else [],
        "type": "post_payment",
    }
