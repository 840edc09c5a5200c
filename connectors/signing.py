"""Webhook signatures: Stripe's `Stripe-Signature` scheme, also used for ledgerflow's relays.

`t=<unix seconds>,v1=<hex>[,v1=<hex>…]` where each v1 is HMAC-SHA256(secret, "{t}.{raw body}").
Several v1 values may be present while a secret is being rolled; any match is enough.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from enum import StrEnum

DEFAULT_TOLERANCE_S = 300


class SignatureProblem(StrEnum):
    MISSING = "signature_missing"
    MALFORMED = "signature_malformed"
    STALE = "timestamp_outside_tolerance"
    MISMATCH = "signature_mismatch"
    NO_SECRET = "no_secret_configured"


class SignatureError(Exception):
    def __init__(self, problem: SignatureProblem, detail: str) -> None:
        super().__init__(f"{problem.value}: {detail}")
        self.problem = problem
        self.detail = detail


def compute(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(secrets: str | Sequence[str], body: bytes, timestamp: int) -> str:
    """A header value for `body` (one v1 per secret): what the platform or a relay sends."""
    keys = [secrets] if isinstance(secrets, str) else list(secrets)
    return ",".join([f"t={timestamp}", *(f"v1={compute(k, timestamp, body)}" for k in keys)])


def parse_secrets(value: str | None) -> list[str]:
    """`whsec_a,whsec_b` → both: the old and the new during a roll."""
    return [s.strip() for s in (value or "").split(",") if s.strip()]


def verify(
    header: str | None,
    body: bytes,
    secrets: Sequence[str],
    now: float,
    tolerance: int = DEFAULT_TOLERANCE_S,
) -> int:
    """Check a signature header; returns its timestamp or raises `SignatureError`."""
    if not secrets:
        raise SignatureError(SignatureProblem.NO_SECRET, "the receiving side has no secret configured")
    if not header:
        raise SignatureError(SignatureProblem.MISSING, "no signature header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError(SignatureProblem.MALFORMED, "t is not an integer") from None
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError(SignatureProblem.MALFORMED, "the header needs t= and at least one v1=")
    if abs(now - timestamp) > tolerance:
        raise SignatureError(SignatureProblem.STALE, f"timestamp is more than {tolerance}s from now")
    for secret in secrets:
        expected = compute(secret, timestamp, body)
        # Constant-time comparison against every candidate; no early exit on a near miss.
        if any(hmac.compare_digest(expected, candidate) for candidate in candidates):
            return timestamp
    raise SignatureError(SignatureProblem.MISMATCH, "no v1 signature matches")
