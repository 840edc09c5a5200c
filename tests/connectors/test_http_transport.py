"""The clients' HTTP over aiohttp: bodies, headers and statuses through; failures as the httpx
errors the connectors classify (nothing sent, or maybe sent)."""

from __future__ import annotations

import asyncio
import gzip
import socket

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from connectors.erp.errors import ErpUncertainError, classify, from_transport_error
from connectors.http_transport import Answer, HttpSession, client_timeout


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(
        status=201,
        body=gzip.compress(body),
        headers={
            "Content-Encoding": "gzip",
            "Location": "/record/7",
            "X-Seen": request.headers.get("x-correlation-id", ""),
        },
    )


async def hang(request: web.Request) -> web.Response:
    await asyncio.sleep(5)
    return web.Response()


async def test_a_request_and_its_answer_go_through_whole() -> None:
    app = web.Application()
    app.router.add_put("/echo", echo)
    session = HttpSession()
    async with TestServer(app) as server:
        answer = await session.request(
            "PUT",
            URL(str(server.make_url("/echo"))),
            headers={"x-correlation-id": "c-1"},
            content=b'{"total": 10720}',
            timeout=client_timeout(5.0),
        )
    await session.aclose()
    assert session.is_closed
    assert answer.status_code == 201 and answer.json() == {"total": 10720}  # decoded
    assert answer.headers["location"] == "/record/7" and answer.headers["X-Seen"] == "c-1"
    assert answer.reason_phrase == "Created" and answer.text == '{"total": 10720}'


async def test_no_connection_is_a_connect_error_nothing_was_sent() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    session = HttpSession()
    with pytest.raises(httpx.ConnectError) as raised:
        await session.request(
            "PUT", URL(f"http://127.0.0.1:{port}/x"), headers={}, content=b"{}", timeout=client_timeout(5.0)
        )
    await session.aclose()
    assert from_transport_error(raised.value, request_sent=True).code == "CONNECTION_FAILED"


async def test_an_answer_that_never_comes_is_a_read_timeout_so_a_write_is_uncertain() -> None:
    app = web.Application()
    app.router.add_put("/hang", hang)
    session = HttpSession()
    async with TestServer(app) as server:
        with pytest.raises(httpx.ReadTimeout) as raised:
            await session.request(
                "PUT",
                URL(str(server.make_url("/hang"))),
                headers={},
                content=b"{}",
                timeout=client_timeout(0.2),
            )
    await session.aclose()
    assert isinstance(from_transport_error(raised.value, request_sent=True), ErpUncertainError)


def test_an_answer_built_from_plain_headers_reads_like_one_from_the_wire() -> None:
    """`$batch` parts are classified from the headers and body inside the batch's answer."""
    answer = Answer(429, {"Retry-After": "2"}, b'{"error": {"code": "x", "message": "slow down"}}')
    error = classify(answer)
    assert error is not None and error.retry_after == 2.0 and error.message == "slow down"
    assert Answer(599).reason_phrase == "" and Answer(204).text == ""
