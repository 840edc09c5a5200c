"""Likely duplicate customers: fingerprints, and the check keyed by them."""

from __future__ import annotations

from agents.duplicates import fingerprints, normalise_name, record_fingerprint
from canonical import Customer, ExceptionReason
from tests.factories import T0


def test_names_normalise_across_case_accents_punctuation_and_legal_forms() -> None:
    assert normalise_name("ACME Ltd.") == normalise_name("Acme Limited") == "acme"
    assert normalise_name("Müller GmbH") == "muller"
    assert normalise_name("Acme Europe") != normalise_name("Acme")


def test_fingerprints_of_a_customer() -> None:
    fps = fingerprints(
        Customer(source_ref="x", name="Acme Ltd", country="GB", tax_ids=("gb 123-456",)), "c1", "k"
    )
    assert [f.fingerprint for f in fps] == ["tax:GB123456", "name:GB:acme"]
    assert fingerprints(Customer(source_ref="x", name="Acme"), "c1", "k") == []  # no country: no name print


def test_a_second_customer_on_a_fingerprint_is_raised_once_per_set() -> None:
    a, b = (
        fingerprints(Customer(source_ref=x, name="Acme Ltd", country="GB"), x, "k")[0] for x in ("c1", "c2")
    )
    row, exc = record_fingerprint(None, a, T0)
    assert exc is None
    row, again = record_fingerprint(row, a, T0)
    assert again is None and row.customer_ids == ("c1",)
    row, exc = record_fingerprint(row, b, T0)
    assert exc is not None and exc.reason is ExceptionReason.LIKELY_DUPLICATE_CUSTOMER
    assert row.customer_ids == ("c1", "c2")
