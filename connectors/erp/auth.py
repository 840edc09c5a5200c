"""Bearer tokens for the ERP API: a fixed token, or OAuth 2.0 client credentials.

NetSuite's own modes (TBA's signed requests, M2M's JWT client assertion) are in
`connectors.erp.netsuite_auth`; M2M reuses `ClientCredentialsToken`'s caching through `_grant`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import httpx
import orjson

from connectors.erp.errors import ErpAuthError, ErpError, ErpTransientError, classify, from_transport_error

log = logging.getLogger(__name__)


@runtime_checkable
class TokenProvider(Protocol):
    """Where the client gets the bearer token it sends; `invalidate` after the ERP said 401."""

    async def token(self) -> str: ...

    def invalidate(self) -> None: ...


class StaticToken:
    """A long-lived token from configuration (`LEDGERFLOW_ERP_TOKEN`). Nothing to refresh."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def token(self) -> str:
        if not self._token:
            # Refused per call rather than at start-up: a worker running only other stages
            # must not need ERP credentials, and the sink parks the command with this reason.
            raise ErpAuthError("NO_TOKEN", "no ERP token is configured (set LEDGERFLOW_ERP_TOKEN)")
        return self._token

    def invalidate(self) -> None:
        # A fixed token cannot be renewed: the client's one retry sends it again, and a second
        # 401 becomes an ErpAuthError for an operator.
        return None

    def __repr__(self) -> str:
        return "StaticToken(***)" if self._token else "StaticToken(<none>)"


class ClientCredentialsToken:
    """OAuth 2.0 client-credentials grant (RFC 6749 §4.4): fetches a token, caches it, and
    fetches a new one `refresh_margin_s` before `expires_in` runs out, or after `invalidate`.

    Client id and secret go in HTTP Basic auth, as RFC 6749 §2.3.1 prefers. `clock` is
    injectable so tests can move time."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str | None = None,
        http: httpx.AsyncClient | None = None,
        *,
        refresh_margin_s: float = 60.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._scope = scope
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout)
        self._timeout = timeout
        self._margin = refresh_margin_s
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._refresh_at = 0.0
        # One fetch at a time: concurrent callers after expiry wait for the same new token.
        self._lock = asyncio.Lock()
        self.fetches = 0
        """How many tokens were fetched (observable for tests and metrics)."""

    async def token(self) -> str:
        if self._token is not None and self._clock() < self._refresh_at:
            return self._token
        async with self._lock:
            if self._token is not None and self._clock() < self._refresh_at:
                return self._token
            return await self._fetch()

    def invalidate(self) -> None:
        self._token = None
        self._refresh_at = 0.0

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    def _grant(self) -> tuple[dict[str, str], tuple[str, str] | None]:
        """The token request's form and its HTTP Basic credentials (None: no Basic auth).

        The one thing a variant of the grant changes (NetSuite M2M signs a JWT assertion into
        the form instead); caching, refreshing and refusals stay here, in `_fetch`."""
        form = {"grant_type": "client_credentials"}
        if self._scope:
            form["scope"] = self._scope
        return form, (self._client_id, self._client_secret)

    async def _fetch(self) -> str:
        form, basic = self._grant()
        try:
            response = await self._http.post(
                self._token_url,
                data=form,
                auth=basic if basic is not None else httpx.USE_CLIENT_DEFAULT,
                headers={"accept": "application/json"},
                timeout=self._timeout,
            )
        except httpx.TransportError as exc:
            # A token request has no side effect: a lost answer is only transient.
            raise from_transport_error(exc, request_sent=False) from exc
        if response.status_code >= 400:
            raise _token_error(response)
        try:
            payload = orjson.loads(response.content)
            access_token = str(payload["access_token"])
            expires_in = float(payload.get("expires_in", 3600))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ErpAuthError(
                "INVALID_TOKEN_RESPONSE", "the token endpoint answered without a token"
            ) from exc
        now = self._clock()
        # A short-lived token (a few seconds in tests) must not be refreshed on every call:
        # the margin never exceeds half its lifetime.
        self._token = access_token
        self._expires_at = now + expires_in
        self._refresh_at = now + expires_in - min(self._margin, expires_in / 2)
        self.fetches += 1
        log.info("erp token fetched", extra={"expires_in": expires_in, "token_url": self._token_url})
        return access_token

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._token_url!r}, client_id={self._client_id!r})"


def _token_error(response: httpx.Response) -> ErpError:
    # RFC 6749 §5.2 error bodies: {"error": "invalid_client", "error_description": "…"}.
    try:
        payload = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        code = payload["error"]
        message = str(payload.get("error_description") or code)
        if response.status_code >= 500:
            return ErpTransientError(code, message, status=response.status_code)
        return ErpAuthError(code, message, status=response.status_code)
    error = classify(response)
    if isinstance(error, ErpTransientError):
        return error
    return ErpAuthError(
        error.code if error else "TOKEN_REFUSED", error.message if error else "", response.status_code
    )
