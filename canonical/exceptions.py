"""Business exceptions: typed, aged, replayable records of what needs a person."""

from __future__ import annotations

from enum import StrEnum

from canonical.base import LedgerModel, NonEmptyStr, TopicModel, UtcDatetime


class ExceptionReason(StrEnum):
    """Every reason a document can be held back. One enum, so dashboards can group by it."""

    ARITHMETIC_MISMATCH = "arithmetic_mismatch"
    UNMAPPED_SUBSIDIARY = "unmapped_subsidiary"
    SUBSIDIARY_MISMATCH = "subsidiary_mismatch"
    """The invoice's own country or currency belongs to another subsidiary than its customer's."""
    CURRENCY_NOT_ENABLED = "currency_not_enabled"
    MISSING_GL_MAPPING = "missing_gl_mapping"
    MISSING_TAX_CODE = "missing_tax_code"
    CLOSED_PERIOD = "closed_period"
    CUSTOMER_INCOMPLETE = "customer_incomplete"
    UNKNOWN_CUSTOMER = "unknown_customer"
    UNKNOWN_INVOICE = "unknown_invoice"
    """A Stripe invoice_payment whose invoice (and so whose customer) ledgerflow has not seen."""
    LIKELY_DUPLICATE_CUSTOMER = "likely_duplicate_customer"
    ILLEGAL_TRANSITION = "illegal_transition"
    AMENDMENT_GAP = "amendment_gap"
    CONTRACT_NOT_ACTIVE = "contract_not_active"
    CONTRACT_TERMINATED = "contract_terminated"
    INVOICE_NOT_POSTED = "invoice_not_posted"
    RESYNC_REQUIRED = "resync_required"
    ERP_REJECTED = "erp_rejected"
    ERP_UNAVAILABLE = "erp_unavailable"
    RECONCILIATION_DIFFERENCE = "reconciliation_difference"
    CRM_WRITEBACK_FAILED = "crm_writeback_failed"


class Severity(StrEnum):
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class ExceptionStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"
    REPLAYED = "replayed"


class MessageRef(LedgerModel):
    """Where the offending message lives, so it can be found and replayed."""

    topic: NonEmptyStr
    partition: int
    offset: int
    key: str | None = None
    event_id: str | None = None


class FieldError(LedgerModel):
    """One field at fault: its path in the document, and what is wrong with it."""

    field: NonEmptyStr
    problem: NonEmptyStr


class BusinessException(TopicModel):
    """A document that cannot go on until a person or a later event fixes something."""

    exception_id: NonEmptyStr
    reason: ExceptionReason
    severity: Severity = Severity.ERROR
    message: NonEmptyStr
    fields: tuple[FieldError, ...] = ()
    customer_id: str | None = None
    entity_id: str | None = None
    correlation_id: NonEmptyStr
    first_seen: UtcDatetime
    last_seen: UtcDatetime
    attempts: int = 1
    status: ExceptionStatus = ExceptionStatus.OPEN
    offending: MessageRef | None = None
