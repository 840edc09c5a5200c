"""The base model every canonical type derives from, and the shared field types."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, ClassVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, StringConstraints

SCHEMA_VERSION = 1
"""Version of the payloads on ledgerflow's internal topics; bump it with a migration note."""


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""A timezone-aware instant, normalised to UTC. Naive datetimes are refused."""

NonEmptyStr = Annotated[str, StringConstraints(min_length=1, max_length=512)]

_EXTERNAL_ID = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
# NetSuite external ids may hold letters, digits, "_" and "-" only.
ExternalId = Annotated[str, StringConstraints(pattern=_EXTERNAL_ID.pattern)]

CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]


def to_external_id(*parts: str) -> str:
    """Join parts into a NetSuite-valid external id; other characters become '_'."""
    raw = "-".join(parts)
    return re.sub(r"[^A-Za-z0-9_-]", "_", raw)[:200]


class LedgerModel(BaseModel):
    """Strict, immutable, closed: what every canonical model is."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")


class TopicModel(LedgerModel):
    """A model that travels on a ledgerflow topic, so it carries its schema version."""

    SCHEMA_VERSION: ClassVar[int] = SCHEMA_VERSION
    schema_version: int = SCHEMA_VERSION
