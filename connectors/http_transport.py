"""An httpx transport that sends through aiohttp: the clients keep httpx's API and errors.

httpx's own connection pool (httpcore on anyio) cost ~700 µs of CPU per request on the sink's
2-core machine, aiohttp's ~110 µs: the sink's ERP calls were a third of a worker's busy time.
Failures are raised as the httpx exceptions the connectors classify (`errors.from_transport_error`):
a connection that could not be made is a `ConnectError` or `ConnectTimeout` (nothing was sent);
anything after that — a timeout, a dropped connection — is a read-side error, so a write whose
answer was lost stays *uncertain*.
"""

from __future__ import annotations

import aiohttp
import httpx


def _timeout(request: httpx.Request) -> aiohttp.ClientTimeout:
    # httpx puts the client's (or the call's) timeout on every request.
    timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
    connect = timeouts.get("connect")
    pool = timeouts.get("pool")
    return aiohttp.ClientTimeout(
        total=None,
        connect=None if connect is None and pool is None else (connect or 0.0) + (pool or 0.0),
        sock_connect=connect,
        sock_read=timeouts.get("read"),
    )


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp session (keep-alive pool of `limit` connections), opened on first use."""

    def __init__(self, limit: int = 100) -> None:
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit),
                auto_decompress=True,
                # Cookies, redirects and the body's encoding are httpx's business, as before.
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Content-Type"),
            )
            # aiohttp would silently resend a PUT or GET whose pooled connection dropped; the
            # connectors count and classify every attempt themselves (a lost write's answer
            # is *uncertain*), as they did over httpx's own pool.
            self._session._retry_connection = False
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._open()
        # aiohttp asks for and decodes the encodings it supports; httpx's list may name others.
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request.headers.raw
            if k.lower() not in _NOT_FORWARDED
        ]
        try:
            async with session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=request.content or None,
                allow_redirects=False,
                timeout=_timeout(request),
            ) as answer:
                content = await answer.read()
                status = answer.status
                raw_headers = answer.raw_headers
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # No connection: nothing was sent.
            timed_out = isinstance(exc, aiohttp.ConnectionTimeoutError)
            error: type[httpx.TransportError] = httpx.ConnectTimeout if timed_out else httpx.ConnectError
            raise error(str(exc) or type(exc).__name__, request=request) from exc
        except TimeoutError as exc:  # aiohttp's read timeouts are TimeoutErrors too
            raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
        except aiohttp.ClientError as exc:
            # Sent, or maybe sent: the answer never came whole.
            raise httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}", request=request) from exc
        # The body is whole and already decoded: the headers that described the wire form go.
        kept = [(k, v) for k, v in raw_headers if k.lower() not in _WIRE_HEADERS]
        return httpx.Response(status, headers=kept, content=content, request=request)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


_NOT_FORWARDED = frozenset({b"accept-encoding", b"content-length", b"host"})
_WIRE_HEADERS = frozenset({b"content-encoding", b"transfer-encoding", b"content-length"})
