"""Salesforce REST client for the CRM write-back: `PATCH …/sobjects/Account/{id}`.

Every call carries `Sforce-Call-Options: client=ledgerflow-writeback`. Salesforce copies that
client name into the `changeOrigin` of the Change Data Capture event the update produces,
which is how the CDC adapter (`connectors.salesforce.mapping`) recognises and drops the echo of
our own write; both sides use `mapping.WRITEBACK_CLIENT`.

Errors are the ERP connector's types (`connectors.erp.errors`), which are not ERP-specific, so
`call_with_retries` and the circuit breaker work unchanged: transient (5xx, 429,
`REQUEST_LIMIT_EXCEEDED`, `UNABLE_TO_LOCK_ROW`, no answer), permanent (`INVALID_FIELD`,
`NOT_FOUND`, `ENTITY_IS_DELETED`, …) and auth (`INVALID_SESSION_ID` after one token refresh).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Self

import httpx
import orjson

from canonical import is_crm_account_id
from connectors.erp.auth import TokenProvider
from connectors.erp.errors import (
    MAX_MESSAGE_CHARS,
    ErpAuthError,
    ErpError,
    ErpPermanentError,
    ErpTransientError,
    from_transport_error,
    parse_retry_after,
)
from connectors.salesforce.mapping import WRITEBACK_CLIENT
from streams.headers import CORRELATION_ID

log = logging.getLogger(__name__)

CALL_OPTIONS_HEADER = "Sforce-Call-Options"
DEFAULT_API_VERSION = "v60.0"

TRANSIENT_CODES = frozenset({"REQUEST_LIMIT_EXCEEDED", "UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE"})
"""Codes that mean "not now" whatever their HTTP status: Salesforce answers an exhausted API
limit with 403 and a row locked by another transaction with 400."""


def call_options(client: str = WRITEBACK_CLIENT) -> str:
    """The `Sforce-Call-Options` value that names ledgerflow as the client of a call."""
    return f"client={client}"


def error_details(body: Any) -> tuple[str | None, str | None]:
    """(errorCode, message) from Salesforce's REST error body `[{"message", "errorCode",
    "fields"}]` (the first error names the code; the messages are joined)."""
    errors = body if isinstance(body, list) else [body] if isinstance(body, dict) else []
    codes = [str(e["errorCode"]) for e in errors if isinstance(e, dict) and e.get("errorCode")]
    texts = []
    for error in errors:
        if isinstance(error, dict) and error.get("message"):
            fields = error.get("fields")
            suffix = (
                f" (fields: {', '.join(map(str, fields))})" if isinstance(fields, list) and fields else ""
            )
            texts.append(f"{error['message']}{suffix}")
    return (codes[0] if codes else None), ("; ".join(texts) or None)


def classify(response: httpx.Response) -> ErpError | None:
    """The typed error a Salesforce REST answer stands for, or None for a success."""
    status = response.status_code
    if status < 400:
        return None
    try:
        body = orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        body = None
    code, message = error_details(body)
    if message is None:
        message = response.text.strip()[:MAX_MESSAGE_CHARS] or response.reason_phrase or f"HTTP {status}"
    code = code or f"HTTP_{status}"
    message = message[:MAX_MESSAGE_CHARS]
    if status == 429 or status in (408, 425) or status >= 500 or code in TRANSIENT_CODES:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return ErpTransientError(code, message, retry_after=retry_after, status=status)
    if status in (401, 403):
        return ErpAuthError(code, message, status=status)
    return ErpPermanentError(code, message, status=status)


class SalesforceClient:
    """The CRM write-back's connection to one Salesforce org (`instance_url`)."""

    def __init__(
        self,
        instance_url: str,
        token_provider: TokenProvider,
        api_version: str = DEFAULT_API_VERSION,
        timeout: float | httpx.Timeout = 10.0,
        http: httpx.AsyncClient | None = None,
        *,
        client_name: str = WRITEBACK_CLIENT,
    ) -> None:
        self.instance_url = instance_url.rstrip("/")
        self.api_version = api_version
        self._tokens = token_provider
        self._timeout = timeout
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout)
        self._call_options = call_options(client_name)
        self.requests = 0
        """HTTP requests sent, 401 retries included (observable for tests and metrics)."""

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def account_url(self, account_id: str) -> str:
        if not is_crm_account_id(account_id):
            # Refused before any call: the id goes into the URL path.
            raise ErpPermanentError("MALFORMED_ID", "not a Salesforce Account id", 400)
        return f"{self.instance_url}/services/data/{self.api_version}/sobjects/Account/{account_id}"

    async def update_account(
        self, account_id: str, fields: dict[str, Any], correlation_id: str | None = None
    ) -> None:
        """`PATCH …/sobjects/Account/{id}` with `fields` (Salesforce field API names). A PATCH
        sets values, so repeating it is harmless: an uncertain outcome is simply retried."""
        if not fields:
            raise ValueError("an account update needs at least one field")
        await self._call("PATCH", self.account_url(account_id), correlation_id, body=fields)

    async def get_account(
        self, account_id: str, field_names: Sequence[str] = (), correlation_id: str | None = None
    ) -> dict[str, Any] | None:
        """The account's fields (only `field_names` if given), or None if it does not exist."""
        params = {"fields": ",".join(field_names)} if field_names else None
        response = await self._call(
            "GET", self.account_url(account_id), correlation_id, params=params, none_if_404=True
        )
        if response is None:
            return None
        try:
            record = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise ErpTransientError("INVALID_RESPONSE", "Salesforce answered without JSON") from exc
        return record if isinstance(record, dict) else None

    async def _token(self) -> str:
        try:
            return await self._tokens.token()
        except ErpAuthError as exc:
            if exc.code == "NO_TOKEN":
                raise ErpAuthError(
                    "NO_TOKEN",
                    "no CRM token is configured (set LEDGERFLOW_CRM_TOKEN or LEDGERFLOW_CRM_TOKEN_URL)",
                ) from None
            raise

    async def _call(
        self,
        method: str,
        url: str,
        correlation_id: str | None,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        none_if_404: bool = False,
    ) -> httpx.Response | None:
        headers = {"accept": "application/json", CALL_OPTIONS_HEADER: self._call_options}
        if correlation_id:
            headers[CORRELATION_ID] = correlation_id
        content = orjson.dumps(body) if body is not None else None
        if content is not None:
            headers["content-type"] = "application/json"
        # The path names only the record; field values (and the token) are never logged.
        log_extra: dict[str, Any] = {"correlation_id": correlation_id, "method": method, "url": url}
        for attempt in (1, 2):
            token = await self._token()
            started = time.perf_counter()
            self.requests += 1
            try:
                response = await self._http.request(
                    method,
                    url,
                    content=content,
                    params=params,
                    headers={**headers, "authorization": f"Bearer {token}"},
                    timeout=self._timeout,
                )
            except httpx.TransportError as exc:
                lost = from_transport_error(exc, request_sent=method != "GET")
                log.warning("crm call got no answer", extra={**log_extra, "code": lost.code})
                raise lost from exc
            elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
            log.debug(
                "crm call", extra={**log_extra, "status": response.status_code, "elapsed_ms": elapsed_ms}
            )
            if response.status_code == 401 and attempt == 1:
                # INVALID_SESSION_ID: the session expired or was revoked; fetch a new one, once.
                log.info("crm refused the token; refreshing it", extra=log_extra)
                self._tokens.invalidate()
                continue
            if none_if_404 and response.status_code == 404:
                return None
            error = classify(response)
            if error is not None:
                log.warning(
                    "crm call failed", extra={**log_extra, "status": response.status_code, "code": error.code}
                )
                raise error
            return response
        raise AssertionError("unreachable: the second attempt always returns or raises")
