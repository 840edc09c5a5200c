"""Customer fingerprints: what two records of one real customer share (tax id, name + country)."""

from __future__ import annotations

from enum import StrEnum

from canonical.base import NonEmptyStr, TopicModel


class FingerprintKind(StrEnum):
    TAX_ID = "tax_id"
    NAME_COUNTRY = "name_country"


class CustomerFingerprint(TopicModel):
    """One fingerprint of one canonical customer, keyed by the fingerprint on its topic so that
    every customer sharing it meets in one partition."""

    fingerprint: NonEmptyStr
    kind: FingerprintKind
    customer_id: NonEmptyStr
    correlation_id: NonEmptyStr
