"""The ERP's failures as types the sink can act on: retry, retry carefully, or give up.

`classify` reads an HTTP answer (NetSuite's REST error body, or Business Central's OData
`{"error": …}` body; `classify_answer` any platform's, given how to read its error body) and
`from_transport_error` an httpx failure; the sink then only asks
"transient, uncertain, permanent or auth?" and never parses bodies itself.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson

from connectors.http_transport import HttpAnswer

REQUEST_LIMIT_EXCEEDED = "SSS_REQUEST_LIMIT_EXCEEDED"
"""NetSuite's code when a RESTlet call hits the account's shared concurrency limit."""
CONCURRENCY_LIMIT_EXCEEDED = "CONCURRENCY_LIMIT_EXCEEDED"
"""NetSuite REST's code when more calls are in flight than the account's concurrency limit."""

# Codes that mean "not now" whatever the HTTP status they arrive with: NetSuite answers them
# with 429 or with 400, by service and over the years (research notes, A.9).
TRANSIENT_CODES = frozenset({REQUEST_LIMIT_EXCEEDED, CONCURRENCY_LIMIT_EXCEEDED})

MAX_MESSAGE_CHARS = 1000


class ErpError(Exception):
    """Any failure talking to the ERP: a machine-readable `code` and the ERP's own `message`.

    `attempts` is filled in by `call_with_retries` when the error ends a retried call, so the
    posting result can say how many tries it took."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.attempts: int | None = None


class ErpTransientError(ErpError):
    """Worth retrying: 5xx, 429, request-limit codes, maintenance, a refused connection.
    The request did not take effect. `retry_after` is the ERP's own hint in seconds."""

    def __init__(
        self, code: str, message: str, retry_after: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(code, message)
        self.retry_after = retry_after
        self.status = status


class ErpUncertainError(ErpTransientError):
    """The request was sent and no answer came back (timeout, dropped connection): the write
    may have happened. Retry, but look the document up first where the ERP cannot upsert."""


class ErpPermanentError(ErpError):
    """The ERP refused the document (4xx): retrying the same request cannot help. The ERP's
    message is kept verbatim for the exception an operator will read."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(code, message)
        self.status = status


UNMAPPED = "LEDGERFLOW_UNMAPPED"
"""Code of the error for a command the mappings cannot express in the ERP's terms."""


class ErpMappingError(ErpPermanentError):
    """The mappings cannot express something a command names in the ERP (no internal id, no
    company, no account): retrying cannot help, an operator fixes the mappings."""

    def __init__(self, message: str) -> None:
        super().__init__(UNMAPPED, message, 400)


class ErpAuthError(ErpError):
    """Credentials refused (401/403, or the token endpoint said no)."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(code, message)
        self.status = status


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds from now: either delta-seconds or an HTTP date (RFC 9110)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        # HTTP dates are GMT by definition; parsedate_to_datetime leaves "-0000" naive.
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def error_details(body: Any) -> tuple[str | None, str | None]:
    """(code, message) from a NetSuite REST error body or an OData error body, if it is one."""
    if not isinstance(body, dict):
        return None, None
    details = body.get("o:errorDetails")
    if isinstance(details, list) and details:
        codes = [str(d["o:errorCode"]) for d in details if isinstance(d, dict) and d.get("o:errorCode")]
        # The detail with the JSONPath NetSuite names (`o:errorPath`: item.items[0].item), so
        # the exception an operator reads says which field of the body was refused.
        texts = [
            str(d["detail"]) + (f" (at {d['o:errorPath']})" if d.get("o:errorPath") else "")
            for d in details
            if isinstance(d, dict) and d.get("detail")
        ]
        return (codes[0] if codes else None), ("; ".join(texts) or _str_or_none(body.get("title")))
    odata = body.get("error")
    if isinstance(odata, dict):
        return _str_or_none(odata.get("code")), _str_or_none(odata.get("message"))
    return _str_or_none(body.get("code")), _str_or_none(body.get("title") or body.get("message"))


def _str_or_none(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def classify(response: HttpAnswer, now: datetime | None = None) -> ErpError | None:
    """The typed error an ERP answer stands for, or None when it is a success (1xx-3xx)."""
    return classify_answer(response, error_details, TRANSIENT_CODES, now)


def classify_answer(
    response: HttpAnswer,
    details: Callable[[Any], tuple[str | None, str | None]],
    transient_codes: frozenset[str],
    now: datetime | None = None,
) -> ErpError | None:
    """The typed error an HTTP answer stands for, or None for a success (1xx-3xx), whichever
    platform gave it: `details` reads (code, message) from its error body, and its
    `transient_codes` mean "not now" whatever the status they arrive with."""
    status = response.status_code
    if status < 400:
        return None
    try:
        body = orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        body = None
    code, message = details(body)
    if message is None:
        message = response.text.strip()[:MAX_MESSAGE_CHARS] or response.reason_phrase or f"HTTP {status}"
    code = code or f"HTTP_{status}"
    message = message[:MAX_MESSAGE_CHARS]
    if status == 429 or code in transient_codes or status in (408, 425) or status >= 500:
        retry_after = parse_retry_after(response.headers.get("retry-after"), now)
        return ErpTransientError(code, message, retry_after=retry_after, status=status)
    if status in (401, 403):
        return ErpAuthError(code, message, status=status)
    return ErpPermanentError(code, message, status=status)


def from_transport_error(exc: httpx.TransportError, request_sent: bool) -> ErpTransientError:
    """An httpx failure without an answer. Failing to connect means nothing was sent; a read
    timeout or dropped connection after a write means the write may have happened.

    `request_sent` is False for reads (a lost GET changes nothing) so they stay plain transient."""
    name = type(exc).__name__
    text = str(exc) or name
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return ErpTransientError("CONNECTION_FAILED", f"{name}: {text}")
    if request_sent:
        return ErpUncertainError("NO_RESPONSE", f"{name}: {text}")
    return ErpTransientError("NO_RESPONSE", f"{name}: {text}")
