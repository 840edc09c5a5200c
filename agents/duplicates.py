"""Likely duplicate customers: the same tax id, or the same normalised name in the same
country, under two canonical ids. Raised for a person to decide; never merged silently."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agents.batching import batches
from agents.outbox import Outbox, send_exception
from canonical import BusinessException, Customer, ExceptionReason, FieldError, Severity
from canonical.fingerprints import CustomerFingerprint, FingerprintKind
from streams.app import app
from streams.headers import stable_id
from streams.topics import customer_fingerprints_topic
from tables.fingerprints import FingerprintRow, fingerprint_table

STAGE = "core"  # `ledgerflow worker --stages …` runs this module's agents and timers or not

if TYPE_CHECKING:
    from faust.types import StreamT

LEGAL_SUFFIXES = frozenset(
    {
        "inc",
        "incorporated",
        "llc",
        "ltd",
        "limited",
        "plc",
        "gmbh",
        "ag",
        "kk",
        "co",
        "corp",
        "corporation",
        "sa",
        "sas",
        "bv",
        "nv",
        "pty",
        "company",
    }
)


def normalise_name(name: str) -> str:
    """'ACME Ltd.' and 'Acme Limited' → 'acme': case, accents, punctuation and legal forms go."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().casefold()
    words = re.sub(r"[^a-z0-9]+", " ", folded).split()
    return " ".join(w for w in words if w not in LEGAL_SUFFIXES)


def fingerprints(customer: Customer, customer_id: str, correlation_id: str) -> list[CustomerFingerprint]:
    out = [
        CustomerFingerprint(
            fingerprint=f"tax:{re.sub(r'[^A-Z0-9]', '', t.upper())}",
            kind=FingerprintKind.TAX_ID,
            customer_id=customer_id,
            correlation_id=correlation_id,
        )
        for t in customer.tax_ids
        if t.strip()
    ]
    if customer.name and customer.country and normalise_name(customer.name):
        out.append(
            CustomerFingerprint(
                fingerprint=f"name:{customer.country}:{normalise_name(customer.name)}",
                kind=FingerprintKind.NAME_COUNTRY,
                customer_id=customer_id,
                correlation_id=correlation_id,
            )
        )
    return out


def record_fingerprint(
    row: FingerprintRow | None, fp: CustomerFingerprint, now: datetime
) -> tuple[FingerprintRow, BusinessException | None]:
    """Add a customer to a fingerprint; a second customer on it is a likely duplicate."""
    ids = row.customer_ids if row else ()
    if fp.customer_id in ids:
        return row or FingerprintRow(fingerprint=fp.fingerprint, customer_ids=ids), None
    ids = (*ids, fp.customer_id)
    updated = FingerprintRow(fingerprint=fp.fingerprint, customer_ids=ids)
    if len(ids) < 2:
        return updated, None
    return updated, BusinessException(
        exception_id=stable_id("exception", "duplicate", fp.fingerprint, *sorted(ids)),
        reason=ExceptionReason.LIKELY_DUPLICATE_CUSTOMER,
        severity=Severity.WARNING,
        message=f"customers {', '.join(ids)} share {fp.kind.value.replace('_', ' ')}; "
        "decide whether they are one customer (nothing was merged)",
        fields=(FieldError(field=fp.kind.value, problem=f"shared by {len(ids)} customers"),),
        customer_id=fp.customer_id,
        entity_id=fp.fingerprint,
        correlation_id=fp.correlation_id,
        first_seen=now,
        last_seen=now,
    )


@app.agent(customer_fingerprints_topic)
async def detect_duplicate_customers(stream: StreamT[Any]) -> None:
    """`ledgerflow.customer-fingerprints` (keyed by fingerprint) → likely-duplicate exceptions."""
    async for events in batches(stream):
        now = datetime.now(UTC)
        outbox = Outbox()
        for event in events:
            fp = event.value
            if not isinstance(fp, CustomerFingerprint):
                continue  # an undecodable internal message: nothing to check, nothing to lose
            row, exc = record_fingerprint(
                outbox.get(fingerprint_table, fp.fingerprint, FingerprintRow, event), fp, now
            )
            outbox.put(fingerprint_table, fp.fingerprint, row, event)
            if exc is not None:
                await send_exception(outbox, exc, f"fingerprint:{fp.fingerprint}")
        await outbox.commit()
