"""JSON over HTTP with a bearer token (or a per-request signature): the one call every API
client (ERP, Salesforce) makes."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self, runtime_checkable
from urllib.parse import quote

import httpx
import orjson
from yarl import URL

from connectors.http_transport import Answer, HttpSession, client_timeout
from streams.headers import CORRELATION_ID

if TYPE_CHECKING:
    from connectors.erp.auth import TokenProvider
    from connectors.erp.errors import ErpError


USER_AGENT = "ledgerflow"


def header_value(text: str) -> str:
    """`text` as an HTTP header value: as it is when it is printable ASCII, else percent-encoded.
    A correlation id comes from a Kafka header, which may hold any bytes; an HTTP client refuses
    a non-ASCII or control character in a header (a fuzzed `x-correlation-id` made the sink's
    ERP call raise UnicodeEncodeError)."""
    return text if text.isascii() and text.isprintable() else quote(text, safe="")


class Signature(Protocol):
    def authorization(self, method: str, url: str) -> str:
        """The `Authorization` header value for one request to `url` (its query included)."""
        ...


@runtime_checkable
class RequestSigner(Protocol):
    """A credential that signs every request itself instead of lending a bearer token:
    NetSuite TBA (OAuth 1.0a), whose signature covers method, URL and query and so is made
    per request, over the URL as it will be sent. A `TokenProvider` that is also a
    `RequestSigner` signs each call, and no bearer header is sent.

    Defined here rather than beside the TokenProvider so this module needs no runtime import
    of `connectors.erp` (which imports this module)."""

    async def request_auth(self) -> Signature:
        """What signs each request; raises the platform's auth error when the credentials are
        not configured (refused per call, like a missing token)."""
        ...


class BearerJsonClient(ABC):
    """One API's connection: a bearer token from a `TokenProvider` (refreshed once on a 401),
    or a signature per request from a provider that is also a `RequestSigner`; the
    correlation id as `x-correlation-id`, typed errors, and a log line per call that names
    method, URL and status, never bodies or tokens. Subclasses say how their platform's
    answers and lost answers become typed errors (`_classify`, `_no_answer`)."""

    service: ClassVar[str] = "api"
    """Names the calls in log lines: "erp call failed"."""

    def __init__(
        self,
        token_provider: TokenProvider,
        timeout: float | httpx.Timeout = 10.0,
        http: HttpSession | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._tokens = token_provider
        # Decided once: a protocol isinstance check costs more than the rest of a call's setup.
        self._signer = token_provider if isinstance(token_provider, RequestSigner) else None
        self._timeout = timeout
        self._client_timeout = client_timeout(timeout)
        self._owns_http = http is None
        # aiohttp's connections, httpx's error types (connectors/http_transport.py says why).
        self._http = http or HttpSession()
        # A User-Agent, as httpx sent: some gateways in front of an API refuse a request without one.
        self._headers = {"accept": "application/json", "user-agent": USER_AGENT, **(headers or {})}
        # Each connector logs under its own name (connectors.erp.client, …), not this module's.
        self._log = logging.getLogger(type(self).__module__)
        self.requests = 0
        """HTTP requests sent, 401 retries included (observable for tests and metrics)."""

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @abstractmethod
    def _classify(self, response: Answer) -> ErpError | None:
        """The typed error this platform's answer stands for, or None for a success."""

    @abstractmethod
    def _no_answer(self, exc: httpx.TransportError, request_sent: bool) -> ErpError:
        """The typed error for a call that got no answer (`request_sent`: a write may have landed)."""

    def _encode(self, body: dict[str, Any]) -> bytes:
        """A request body as JSON (NetSuite's client writes its Decimals as exact numbers)."""
        return orjson.dumps(body)

    async def _token(self) -> str:
        return await self._tokens.token()

    async def _call(
        self,
        method: str,
        url: str,
        correlation_id: str | None,
        *,
        body: dict[str, Any] | None = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
        allow_404: bool = False,
        timeout: float | httpx.Timeout | None = None,
    ) -> Answer:
        """Send once, and once more with a fresh token after a 401; raise the typed error of a
        failed answer. `allow_404` returns a 404 answer instead: the caller reads it as "none".
        `timeout`: this call's, instead of the client's (a big batch takes longer)."""
        headers = {**self._headers, **(headers or {})}
        if correlation_id:
            headers[CORRELATION_ID] = header_value(correlation_id)
        content = self._encode(body) if body is not None else None
        if content is not None:
            headers["content-type"] = "application/json"
        # Encoded once: what is signed is what is sent.
        target = URL(url).update_query(params) if params else URL(url)
        wait = self._client_timeout if timeout is None else client_timeout(timeout)
        # The URL names only the record; field values (and the token) are never logged.
        log_extra: dict[str, Any] = {"correlation_id": correlation_id, "method": method, "url": url}
        for attempt in (1, 2):
            if self._signer is not None:
                # A retry after a 401 signs again with a fresh nonce and timestamp.
                signature = await self._signer.request_auth()
                authorization = signature.authorization(method, str(target))
            else:
                authorization = f"Bearer {await self._token()}"
            started = time.perf_counter()
            self.requests += 1
            try:
                response = await self._http.request(
                    method,
                    target,
                    headers={**headers, "authorization": authorization},
                    content=content,
                    timeout=wait,
                )
            except httpx.TransportError as exc:
                lost = self._no_answer(exc, request_sent=method != "GET")
                self._log.warning(
                    f"{self.service} call got no answer", extra={**log_extra, "code": lost.code}
                )
                raise lost from exc
            elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
            self._log.debug(
                f"{self.service} call",
                extra={**log_extra, "status": response.status_code, "elapsed_ms": elapsed_ms},
            )
            if response.status_code == 401 and attempt == 1:
                # The token expired or was revoked before we knew: fetch a new one, try once more.
                self._log.info(f"{self.service} refused the token; refreshing it", extra=log_extra)
                self._tokens.invalidate()
                continue
            if allow_404 and response.status_code == 404:
                return response
            error = self._classify(response)
            if error is not None:
                self._log.warning(
                    f"{self.service} call failed",
                    extra={**log_extra, "status": response.status_code, "code": error.code},
                )
                raise error
            return response
        raise AssertionError("unreachable: the second attempt always returns or raises")
