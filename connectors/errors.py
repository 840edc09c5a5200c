"""The typed rejection every source adapter raises for input it cannot map."""

from __future__ import annotations

from enum import StrEnum

from pydantic import ValidationError


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


def rejection_from(
    exc: ValidationError, reason: RejectionReason, prefix: str = "", detail: str | None = None
) -> Rejection:
    """A pydantic failure as a rejection: each field's path (under `prefix`), and by default
    what is wrong with each; never the values."""
    errors = exc.errors(include_input=False, include_url=False)
    fields = tuple(
        ".".join(p for p in (prefix, *(str(x) for x in e["loc"])) if p) or "<root>" for e in errors
    )
    text = detail or "; ".join(f"{f}: {e['msg']}" for f, e in zip(fields, errors, strict=True))
    return Rejection(reason, text[:400], fields)
