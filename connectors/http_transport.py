"""The API clients' HTTP: aiohttp's keep-alive pool, a small answer, and failures as the httpx
errors the connectors classify.

httpx's own connection pool (httpcore on anyio) cost ~700 µs of CPU per request on the sink's
2-core machine; httpx's client layer over aiohttp (URL parsing, header models, a cookie jar
read on every answer) still ~270 µs, aiohttp alone ~130 µs (a loopback PUT and its JSON
answer, measured side by side). The sink makes one call per document, so the clients send
through aiohttp directly. Failures keep httpx's exception types, which
`errors.from_transport_error` classifies: a connection that could not be made is a
`ConnectError` or `ConnectTimeout` (nothing was sent); anything after that — a timeout, a
dropped connection — is a read-side error, so a write whose answer was lost stays *uncertain*.
The token endpoints (not on the hot path) still use httpx's client.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Protocol

import aiohttp
import httpx
import orjson
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL


class HttpAnswer(Protocol):
    """What the connectors read of an answer: an `Answer`, or an `httpx.Response` (the token
    endpoints')."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> bytes: ...

    @property
    def text(self) -> str: ...

    @property
    def reason_phrase(self) -> str: ...


class Answer:
    """One HTTP answer, its body whole and decoded (aiohttp undid any content-encoding)."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(
        self, status_code: int, headers: Mapping[str, str] | None = None, content: bytes = b""
    ) -> None:
        self.status_code = status_code
        self.headers: CIMultiDictProxy[str] = (
            headers if isinstance(headers, CIMultiDictProxy) else CIMultiDictProxy(CIMultiDict(headers or {}))
        )
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    @property
    def reason_phrase(self) -> str:
        try:
            return HTTPStatus(self.status_code).phrase
        except ValueError:
            return ""

    def json(self) -> Any:
        return orjson.loads(self.content)

    def __repr__(self) -> str:
        return f"<Answer [{self.status_code}]>"


def client_timeout(timeout: float | httpx.Timeout) -> aiohttp.ClientTimeout:
    """A client's timeout (seconds, or an httpx.Timeout's parts) as aiohttp's: `connect` covers
    the wait for a pooled connection and its making; `read` each wait for the answer's bytes."""
    if isinstance(timeout, httpx.Timeout):
        connect, pool, read = timeout.connect, timeout.pool, timeout.read
    else:
        connect = pool = read = float(timeout)
    return aiohttp.ClientTimeout(
        total=None,
        connect=None if connect is None and pool is None else (connect or 0.0) + (pool or 0.0),
        sock_connect=connect,
        sock_read=read,
    )


class HttpSession:
    """One aiohttp session (keep-alive pool of `limit` connections), opened on first use, shared
    by a client's calls."""

    def __init__(self, limit: int = 100) -> None:
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    @property
    def is_closed(self) -> bool:
        return self._session is None or self._session.closed

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit),
                auto_decompress=True,
                cookie_jar=aiohttp.DummyCookieJar(),  # API calls carry their credentials themselves
                skip_auto_headers=("User-Agent", "Content-Type"),
            )
            # aiohttp would silently resend a PUT or GET whose pooled connection dropped; the
            # connectors count and classify every attempt themselves (a lost write's answer
            # is *uncertain*).
            self._session._retry_connection = False
        return self._session

    async def request(
        self,
        method: str,
        url: URL,
        *,
        headers: Mapping[str, str],
        content: bytes | None,
        timeout: aiohttp.ClientTimeout,
    ) -> Answer:
        """Send once; `url` goes as it is (already encoded: a signature may cover it)."""
        session = self._open()
        try:
            async with session.request(
                method, url, headers=headers, data=content, allow_redirects=False, timeout=timeout
            ) as answer:
                body = await answer.read()
                return Answer(answer.status, answer.headers, body)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # No connection: nothing was sent.
            timed_out = isinstance(exc, aiohttp.ConnectionTimeoutError)
            error: type[httpx.TransportError] = httpx.ConnectTimeout if timed_out else httpx.ConnectError
            raise error(str(exc) or type(exc).__name__) from exc
        except TimeoutError as exc:  # aiohttp's read timeouts are TimeoutErrors too
            raise httpx.ReadTimeout(str(exc) or "read timed out") from exc
        except aiohttp.ClientError as exc:
            # Sent, or maybe sent: the answer never came whole.
            raise httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
