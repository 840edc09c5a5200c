"""ISO-4217 currencies and their minor-unit exponents; money is always integer minor units."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Strict

# Active ISO-4217 codes by exponent (digits after the decimal point). Everything not named
# in the 0/3/4 groups has two. Funds and precious-metal codes (XAU, XDR …) are left out on
# purpose: nobody invoices in them.
_EXPONENT_0 = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_EXPONENT_3 = "BHD IQD JOD KWD LYD OMR TND"
_EXPONENT_4 = "CLF UYW"
_EXPONENT_2 = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP BYN "
    "BZD CAD CDF CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS "
    "GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR "
    "LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD "
    "PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN "
    "SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD UYU UZS VED VES WST XCD XCG YER ZAR "
    "ZMW ZWG"
)

CURRENCY_EXPONENTS: dict[str, int] = {
    **{code: 2 for code in _EXPONENT_2.split()},
    **{code: 0 for code in _EXPONENT_0.split()},
    **{code: 3 for code in _EXPONENT_3.split()},
    **{code: 4 for code in _EXPONENT_4.split()},
}


class UnknownCurrencyError(ValueError):
    """A currency code that is not an active ISO-4217 code."""


def currency_exponent(code: str) -> int:
    """Digits after the decimal point of `code` (JPY 0, USD 2, KWD 3)."""
    try:
        return CURRENCY_EXPONENTS[code]
    except KeyError:
        raise UnknownCurrencyError(f"unknown ISO-4217 currency {code!r}") from None


def _check_currency(code: str) -> str:
    currency_exponent(code)
    return code


def _upper(value: object) -> object:
    # Stripe and most APIs send lower-case codes; ISO-4217 is upper case.
    return value.upper() if isinstance(value, str) else value


Currency = Annotated[str, Strict(), BeforeValidator(_upper), AfterValidator(_check_currency)]
"""An active ISO-4217 code, normalised to upper case."""

MAX_MINOR_UNITS = 10**15
"""The largest amount taken, either sign: 10 trillion dollars in cents, far past any real
document, and sums of thousands of them still fit the 64-bit integers that JSON encoders
(orjson), ERPs and databases hold. A 40-digit amount from a mangled payload is refused at the
edge instead of failing later where the row is encoded."""


def _within_bounds(amount: int) -> int:
    # A validator, not ge/le: a field's own bound (`Field(ge=0)`) would be overridden by ours.
    if not -MAX_MINOR_UNITS <= amount <= MAX_MINOR_UNITS:
        raise ValueError(f"amount beyond {MAX_MINOR_UNITS} minor units")
    return amount


MinorUnits = Annotated[int, Strict(), AfterValidator(_within_bounds)]
"""An amount in the currency's minor units (cents, pence; yen have none). Never a float; at
most MAX_MINOR_UNITS either way."""


def format_minor(amount: int, currency: str) -> str:
    """Human form for logs and views: 123456 USD -> '1234.56 USD', 1000 JPY -> '1000 JPY'."""
    exponent = currency_exponent(currency)
    if exponent == 0:
        return f"{amount} {currency}"
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**exponent)
    return f"{sign}{whole}.{frac:0{exponent}d} {currency}"
