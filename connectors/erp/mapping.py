"""Money at the ERP's edge: exact conversion between ledgerflow's integer minor units and the
major units an ERP API takes (NetSuite, Business Central), with canonical/money.py's exponent
table (JPY 0, USD 2, KWD 3); and `present`, a body without the fields it leaves unchanged.
Pure: no I/O, no clock. The bodies themselves are `connectors.erp.netsuite`'s and
`connectors.erp.business_central`'s.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from canonical.money import currency_exponent


def to_major_units(amount: int, currency: str) -> Decimal:
    """Minor units → the exact decimal a major-unit API expects: 123456 USD → Decimal('1234.56')."""
    return Decimal(amount).scaleb(-currency_exponent(currency))


def present(body: dict[str, Any]) -> dict[str, Any]:
    """A body without its None fields: an absent field stays as it is in the ERP, where a null
    would clear it on an update."""
    return {k: v for k, v in body.items() if v is not None}


def to_minor_units(value: Decimal | str | int, currency: str) -> int:
    """A major-unit amount from the ERP → minor units; refuses what does not fit the currency
    (0.005 USD) instead of rounding, so a mismatch shows up as an error, not a lost cent."""
    if isinstance(value, float):
        raise TypeError("amounts are never floats; pass a Decimal or a string")
    minor = Decimal(value).scaleb(currency_exponent(currency))
    if minor != minor.to_integral_value():
        raise ValueError(f"{value} {currency} has more decimals than the currency allows")
    return int(minor)
