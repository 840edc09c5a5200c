"""The ERP side of the sink: typed errors, command → record mapping, clients, retries, sandbox."""

from connectors.erp.auth import ClientCredentialsToken, StaticToken, TokenProvider
from connectors.erp.client import ErpClient, NetSuiteClient
from connectors.erp.errors import (
    ErpAuthError,
    ErpError,
    ErpPermanentError,
    ErpTransientError,
    ErpUncertainError,
    classify,
)
from connectors.erp.mapping import to_major_units, to_minor_units
from connectors.erp.resilience import (
    BreakerState,
    CallSlots,
    CircuitBreaker,
    RetriesExhausted,
    RetryEvent,
    RetryPolicy,
    call_with_retries,
)
from connectors.erp.schemas import ErpDocument, ErpReceipt, ErpRecord, RecordType

__all__ = [
    "BreakerState",
    "CallSlots",
    "CircuitBreaker",
    "ClientCredentialsToken",
    "ErpAuthError",
    "ErpClient",
    "ErpDocument",
    "ErpError",
    "ErpPermanentError",
    "ErpReceipt",
    "ErpRecord",
    "ErpTransientError",
    "ErpUncertainError",
    "NetSuiteClient",
    "RecordType",
    "RetriesExhausted",
    "RetryEvent",
    "RetryPolicy",
    "StaticToken",
    "TokenProvider",
    "call_with_retries",
    "classify",
    "to_major_units",
    "to_minor_units",
]
