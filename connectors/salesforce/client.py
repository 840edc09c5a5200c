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

from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from canonical import is_crm_account_id
from connectors.erp.auth import TokenProvider
from connectors.erp.errors import (
    ErpAuthError,
    ErpError,
    ErpPermanentError,
    ErpTransientError,
    classify_answer,
    from_transport_error,
)
from connectors.http import BearerJsonClient
from connectors.http_transport import HttpAnswer, HttpSession
from connectors.salesforce.mapping import WRITEBACK_CLIENT

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


def classify(response: HttpAnswer) -> ErpError | None:
    """The typed error a Salesforce REST answer stands for, or None for a success."""
    return classify_answer(response, error_details, TRANSIENT_CODES)


class SalesforceClient(BearerJsonClient):
    """The CRM write-back's connection to one Salesforce org (`instance_url`)."""

    service = "crm"

    def __init__(
        self,
        instance_url: str,
        token_provider: TokenProvider,
        api_version: str = DEFAULT_API_VERSION,
        timeout: float | httpx.Timeout = 10.0,
        http: HttpSession | None = None,
        *,
        client_name: str = WRITEBACK_CLIENT,
    ) -> None:
        super().__init__(
            token_provider, timeout, http, headers={CALL_OPTIONS_HEADER: call_options(client_name)}
        )
        self.instance_url = instance_url.rstrip("/")
        self.api_version = api_version

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
            "GET", self.account_url(account_id), correlation_id, params=params, allow_404=True
        )
        if response.status_code == 404:
            return None
        try:
            record = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise ErpTransientError("INVALID_RESPONSE", "Salesforce answered without JSON") from exc
        return record if isinstance(record, dict) else None

    def _classify(self, response: HttpAnswer) -> ErpError | None:
        return classify(response)

    def _no_answer(self, exc: httpx.TransportError, request_sent: bool) -> ErpError:
        return from_transport_error(exc, request_sent)

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
