"""Which canonical customer a source's reference belongs to."""

from __future__ import annotations

from canonical import Source, to_external_id


def provisional_customer_id(source: Source, ref: str) -> str:
    """The canonical id minted from the first source reference seen for a customer.

    Deterministic, so every worker and every replay derives the same id, and NetSuite-valid,
    so it doubles as the ERP customer's external id.
    """
    return to_external_id("cust", source.value, ref)
