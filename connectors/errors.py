"""The typed rejection every source adapter raises for input it cannot map."""

from __future__ import annotations

from enum import StrEnum


class RejectionReason(StrEnum):
    NOT_JSON = "not_json"
    SCHEMA_INVALID = "schema_invalid"
    UNSUPPORTED_TYPE = "unsupported_type"
    MISSING_FIELD = "missing_field"
    INVALID_VALUE = "invalid_value"


class Rejection(Exception):
    """Input that cannot become a canonical event: why, and which fields (never their values)."""

    def __init__(self, reason: RejectionReason, detail: str, fields: tuple[str, ...] = ()) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.fields = fields

    @property
    def header_value(self) -> str:
        """The `x-dlq-reason` header: the reason code and the detail, one line, bounded."""
        return f"{self.reason.value}: {self.detail}"[:512]
