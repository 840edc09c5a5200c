"""Fingerprint → the canonical customers that carry it (keyed by fingerprint)."""

from __future__ import annotations

from canonical import LedgerModel
from canonical.base import NonEmptyStr
from streams.app import app
from streams.settings import settings


class FingerprintRow(LedgerModel):
    fingerprint: NonEmptyStr
    customer_ids: tuple[str, ...] = ()


fingerprint_table = app.Table(
    "customer-fingerprints",
    key_type=bytes,
    value_type=bytes,
    partitions=settings.partitions,
    help="Customer fingerprint (tax id, normalised name + country) → canonical customer ids.",
)
