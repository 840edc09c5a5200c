"""The correlation headers every message carries, and how they pass from message to message."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

CORRELATION_ID = "x-correlation-id"
CAUSATION_ID = "x-causation-id"
DLQ_REASON = "x-dlq-reason"
SOURCE_TOPIC = "x-source-topic"
SOURCE_PARTITION = "x-source-partition"
SOURCE_OFFSET = "x-source-offset"
REPLAY_OF = "x-replay-of"
"""On a re-driven message: the DLQ entry or exception it replays (stage 2 then re-decides a
document it has seen, instead of dropping it as a duplicate)."""

_NAMESPACE = uuid.UUID("6f1c8a9e-2b0d-4c1e-9a57-5e3f3d0b7a11")


def header(headers: Mapping[str, Any] | None, name: str) -> str | None:
    """A header as text, whatever form Faust handed it over in."""
    if not headers:
        return None
    value = headers.get(name)
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def stable_id(*parts: str) -> str:
    """A deterministic id for the same inputs (a replay mints the same correlation id)."""
    return str(uuid.uuid5(_NAMESPACE, "\x1f".join(parts)))


def correlation_of(headers: Mapping[str, Any] | None, *fallback_parts: str) -> str:
    """The incoming correlation id, or a stable one minted from the source identity."""
    return header(headers, CORRELATION_ID) or stable_id("correlation", *fallback_parts)


def outgoing(correlation_id: str, causation_id: str, **extra: str) -> dict[str, bytes]:
    """Headers for a message caused by another one in the same business transaction."""
    out = {CORRELATION_ID: correlation_id.encode(), CAUSATION_ID: causation_id.encode()}
    out.update({k: v.encode() for k, v in extra.items()})
    return out
