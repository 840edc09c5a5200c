"""Which canonical customer a source's reference belongs to."""

from __future__ import annotations

from canonical import Source, to_external_id


def provisional_customer_id(source: Source, ref: str) -> str:
    """The canonical id minted from a source's customer reference.

    Deterministic, so every worker and every replay derives the same id, and NetSuite-valid,
    so it doubles as the ERP customer's external id. Salesforce and the CLM both name the CRM
    account, so they share one namespace; linking a billing customer to its CRM account is the
    identity table's job (issue #4).
    """
    namespace = "crm" if source in (Source.SALESFORCE, Source.CLM) else source.value
    return to_external_id("cust", namespace, ref)
