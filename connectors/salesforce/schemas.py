"""Salesforce Change Data Capture shapes: the `ChangeEventHeader` and the message envelopes a
relay may forward (Pub/Sub API decoded to JSON, CometD `data`, or the bare payload)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ChangeEventHeader(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    entityName: str = Field(min_length=1)
    recordIds: list[str] = Field(min_length=1)
    changeType: str = Field(min_length=1)
    changeOrigin: str = ""
    transactionKey: str = Field(min_length=1)
    sequenceNumber: int = Field(ge=0)
    commitTimestamp: int = Field(ge=0)
    commitNumber: int | None = None
    commitUser: str | None = None
    changedFields: list[str] = []
    nulledFields: list[str] = []
    diffFields: list[str] = []


def payload_of(message: dict[str, Any]) -> dict[str, Any] | None:
    """The CDC payload in any of the envelopes relays forward."""
    for candidate in (message.get("data"), message):
        if isinstance(candidate, dict):
            payload = candidate.get("payload")
            if isinstance(payload, dict):
                return payload
    return message if "ChangeEventHeader" in message else None
