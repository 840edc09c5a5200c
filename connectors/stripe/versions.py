"""Stripe API versions: which shapes an Event's `api_version` means, and rendering our samples
in an older version's shapes (for the simulator and the tests).

Stripe renders a webhook Event in the API version of its endpoint, and `/v1/events` in the
version each event was created with, so one stream can carry several. Only two shapes matter
to what ledgerflow reads (sources: shared/research/sources.md §B.1):

* **acacia** (2024-09-30 … 2025-02-24): an invoice names its `subscription`, its
  `payment_intent` and its taxes in `total_tax_amounts`; a line has its `price` and
  `tax_amounts`; a PaymentIntent names its `invoice`; a credit note has `tax_amounts`.
* **basil and later** (2025-03-31 …): those fields are gone. The invoice has `parent`
  (`subscription_details.subscription`) and `total_taxes`; a line has `pricing.price_details`
  and `taxes[].tax_rate_details`; a PaymentIntent names no invoice: the link is an
  `invoice_payment` (`invoice_payment.paid` Events since 2025-05-28.basil).

A version ledgerflow does not know is read with the nearest rules it has (a newer one with
the newest, an older one with acacia's) and counted by the caller, never dropped.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from functools import lru_cache
from typing import Any


class Shapes(StrEnum):
    ACACIA = "acacia"
    CURRENT = "current"  # basil, clover, dahlia


KNOWN_VERSIONS: dict[str, Shapes] = {
    **{
        f"{d}.acacia": Shapes.ACACIA
        for d in ("2024-09-30", "2024-10-28", "2024-11-20", "2024-12-18", "2025-01-27", "2025-02-24")
    },
    **{
        f"{d}.basil": Shapes.CURRENT
        for d in ("2025-03-31", "2025-04-30", "2025-05-28", "2025-06-30", "2025-07-30", "2025-08-27")
    },
    **{
        f"{d}.clover": Shapes.CURRENT
        for d in ("2025-09-30", "2025-10-29", "2025-11-17", "2025-12-15", "2026-01-28", "2026-02-25")
    },
    **{
        f"{d}.dahlia": Shapes.CURRENT
        for d in ("2026-03-25", "2026-04-22", "2026-05-27", "2026-06-24", "2026-08-26")
    },
}
CURRENT_VERSION = "2026-08-26.dahlia"
"""The newest version whose changes were read (and what stripe-mock v0.203.0 speaks)."""
OLDEST_VERSION = "2024-09-30.acacia"
BASIL = date(2025, 3, 31)
INVOICE_PAYMENT_EVENTS = date(2025, 5, 28)
"""The first version with `invoice_payment.paid` Events: before it (2025-03-31 and 2025-04-30.basil)
a payment's invoice is only found by asking Stripe (`GET /v1/invoice_payments`)."""
_DATED = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:\.[a-z]+)?$")


@dataclass(frozen=True)
class ApiVersion:
    """What an Event's `api_version` means to the mapping."""

    name: str | None
    shapes: Shapes
    known: bool
    invoice_payment_events: bool
    """Whether Stripe sends `invoice_payment.paid` at this version."""

    @property
    def looks_up_invoice_payments(self) -> bool:
        """2025-03-31 and 2025-04-30.basil: a PaymentIntent names no invoice (as since), and no
        Event announces the invoice payment that links them: it is read from Stripe."""
        return self.shapes is Shapes.CURRENT and not self.invoice_payment_events


@lru_cache(maxsize=64)  # read for every Event; an account's Events carry one or two versions
def api_version(name: str | None) -> ApiVersion:
    """The shapes an Event of this version has: known versions by the table; an unknown one
    by its date (before basil: acacia's; otherwise, or undated, the newest)."""
    m = _DATED.match(name or "")
    try:
        dated = date(int(m[1]), int(m[2]), int(m[3])) if m else None
    except ValueError:
        dated = None
    known = name in KNOWN_VERSIONS
    if known:
        shapes = KNOWN_VERSIONS[name or ""]
    else:
        shapes = Shapes.ACACIA if dated is not None and dated < BASIL else Shapes.CURRENT
    events = shapes is Shapes.CURRENT and (dated is None or dated >= INVOICE_PAYMENT_EVENTS)
    return ApiVersion(name, shapes, known, events)


# --- rendering our (current-shape) sample objects as an older version delivers them ---------


def _tax_amount(tax: dict[str, Any]) -> dict[str, Any]:
    details = tax.get("tax_rate_details") or {}
    return {
        "amount": tax["amount"],
        "inclusive": tax.get("tax_behavior") == "inclusive",
        "tax_rate": details.get("tax_rate"),
        "taxability_reason": tax.get("taxability_reason"),
        "taxable_amount": tax.get("taxable_amount"),
    }


def _acacia_line(line: dict[str, Any]) -> dict[str, Any]:
    pricing = line.pop("pricing", None) or {}
    details = pricing.get("price_details") or {}
    line.pop("parent", None)
    unit = pricing.get("unit_amount_decimal")
    line["price"] = {
        "id": details.get("price"),
        "object": "price",
        "product": details.get("product"),
        "currency": line.get("currency"),
        "unit_amount": int(unit) if unit is not None and str(unit).isdigit() else None,
        "unit_amount_decimal": unit,
    }
    line["tax_amounts"] = [_tax_amount(t) for t in line.pop("taxes", None) or ()]
    line["type"] = "subscription"
    line["proration"] = False
    return line


def render(obj: dict[str, Any], version: str, *, invoice_id: str | None = None) -> dict[str, Any]:
    """A copy of a current-shape object as an Event of `version` carries it. `invoice_id`
    is the invoice an acacia PaymentIntent names (basil removed the field)."""
    out = copy.deepcopy(obj)
    if api_version(version).shapes is Shapes.CURRENT:
        return out
    kind = out.get("object")
    if kind == "invoice":
        parent = out.pop("parent", None) or {}
        out["subscription"] = (parent.get("subscription_details") or {}).get("subscription")
        taxes = out.pop("total_taxes", None) or []
        out["total_tax_amounts"] = [_tax_amount(t) for t in taxes]
        out["tax"] = sum(t["amount"] for t in taxes) if taxes else None
        out["paid"] = out.get("status") == "paid"
        out["payment_intent"] = None
        out.pop("amount_paid_off_stripe", None)
        out["lines"]["data"] = [_acacia_line(line) for line in out["lines"]["data"]]
    elif kind == "credit_note":
        out["tax_amounts"] = [_tax_amount(t) for t in out.pop("total_taxes", None) or ()]
    elif kind == "payment_intent":
        out["invoice"] = invoice_id
    return out
