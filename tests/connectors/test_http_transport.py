"""The aiohttp transport under httpx: bodies, headers and statuses through; failures as the
httpx errors the connectors classify (nothing sent, or maybe sent)."""

from __future__ import annotations

import asyncio
import gzip
import socket

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from connectors.erp.errors import ErpUncertainError, from_transport_error
from connectors.http_transport import AiohttpTransport


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
    async with TestServer(app) as server, httpx.AsyncClient(transport=AiohttpTransport()) as client:
        response = await client.put(
            str(server.make_url("/echo")), content=b'{"total": 10720}', headers={"x-correlation-id": "c-1"}
        )
    assert response.status_code == 201 and response.json() == {"total": 10720}  # decoded
    assert response.headers["location"] == "/record/7" and response.headers["x-seen"] == "c-1"


async def test_no_connection_is_a_connect_error_nothing_was_sent() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        with pytest.raises(httpx.ConnectError) as raised:
            await client.put(f"http://127.0.0.1:{port}/x", content=b"{}")
    assert from_transport_error(raised.value, request_sent=True).code == "CONNECTION_FAILED"


async def test_an_answer_that_never_comes_is_a_read_timeout_so_a_write_is_uncertain() -> None:
    app = web.Application()
    app.router.add_put("/hang", hang)
    transport = AiohttpTransport()
    async with TestServer(app) as server, httpx.AsyncClient(transport=transport, timeout=0.2) as client:
        with pytest.raises(httpx.ReadTimeout) as raised:
            await client.put(str(server.make_url("/hang")), content=b"{}")
    assert isinstance(from_transport_error(raised.value, request_sent=True), ErpUncertainError)
