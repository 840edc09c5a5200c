"""Money at the ERP's edge: minor and major units convert exactly, and what does not fit the
currency is refused, not rounded."""

from __future__ import annotations

from decimal import Decimal

import pytest

from canonical.money import UnknownCurrencyError
from connectors.erp import to_major_units, to_minor_units


@pytest.mark.parametrize(
    ("minor", "currency", "major"),
    [(123456, "USD", "1234.56"), (-5, "EUR", "-0.05"), (1000, "JPY", "1000"), (1234, "KWD", "1.234")],
)
def test_minor_and_major_units_convert_exactly(minor: int, currency: str, major: str) -> None:
    assert to_major_units(minor, currency) == Decimal(major)
    assert to_minor_units(Decimal(major), currency) == minor
    assert to_minor_units(major, currency) == minor


def test_conversion_refuses_what_the_currency_cannot_hold() -> None:
    with pytest.raises(ValueError, match="more decimals"):
        to_minor_units("0.005", "USD")
    with pytest.raises(ValueError, match="more decimals"):
        to_minor_units("1.5", "JPY")
    with pytest.raises(TypeError, match="never floats"):
        to_minor_units(1.5, "USD")  # type: ignore[arg-type]
    with pytest.raises(UnknownCurrencyError):
        to_major_units(1, "XXX")
