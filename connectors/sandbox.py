"""What every sandbox (a fake platform API on loopback, for tests and `ledgerflow dev`) shares:
bearer and client-credentials checks, fault dice and bursts, the request log, the `/admin`
routes for those, refusals raised from request checks, and the server that runs it all."""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ClassVar, Generic, Self, TypeVar
from urllib.parse import unquote

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from pydantic import BaseModel, SecretStr, ValidationError

from streams.headers import CORRELATION_ID

FaultsT = TypeVar("FaultsT", bound=BaseModel)
StateT = TypeVar("StateT", bound="SandboxState[Any]")
Guard = Callable[[StateT, web.Request, Handler, dict[str, Any]], Awaitable[web.StreamResponse]]
"""Answers an API call (or refuses it: auth, faults) given the sandbox and its log entry."""


class Refused(Exception):
    """Ends a handler with `response` (a refusal in the platform's dialect): raised by request
    checks, so a handler reads as its happy path."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(payload, status=status, headers=headers, dumps=_dumps)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def invalid(exc: ValidationError) -> web.Response:
    """400 with what pydantic refused: each error's location and message, not the input."""
    errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors(include_url=False)]
    return json_response({"error": errors}, 400)


async def json_object(request: web.Request, allow_empty: bool = False) -> dict[str, Any]:
    """An admin call's body as a JSON object (no body at all is `{}` if `allow_empty`); else 400."""
    raw = await request.read()
    if not raw and allow_empty:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Refused(json_response({"error": "body is not JSON"}, 400)) from None
    if not isinstance(body, dict):
        raise Refused(json_response({"error": "body must be a JSON object"}, 400))
    return body


def client_authenticated(
    request: web.Request, form: dict[str, str], client_id: str, client_secret: SecretStr
) -> bool:
    """Whether a client-credentials grant comes from this client, by HTTP Basic auth or by
    `client_id` and `client_secret` in the form."""
    credentials = _client_credentials(request, form)
    return credentials is not None and (
        hmac.compare_digest(credentials[0], client_id)
        and hmac.compare_digest(credentials[1], client_secret.get_secret_value())
    )


def _client_credentials(request: web.Request, form: dict[str, str]) -> tuple[str, str] | None:
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        client_id, sep, secret = decoded.partition(":")
        # RFC 6749 §2.3.1: both parts are form-urlencoded before the Basic encoding.
        return (unquote(client_id.replace("+", " ")), unquote(secret.replace("+", " "))) if sep else None
    if "client_id" in form and "client_secret" in form:
        return form["client_id"], form["client_secret"]
    return None


class SandboxState(Generic[FaultsT]):
    """What every sandbox keeps besides its records: the bearer tokens it accepts (fixed ones
    and those its token endpoint issued), its fault settings with their seeded dice, and a
    bounded log of the API calls it answered."""

    name: ClassVar[str] = "sandbox"
    """Names its log lines: "erp sandbox request"."""

    def __init__(
        self,
        tokens: Iterable[str],
        faults: FaultsT,
        seed: int | None,
        request_log_size: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.faults = faults
        self.rng = random.Random(seed)
        self.requests: deque[dict[str, Any]] = deque(maxlen=request_log_size)
        self.log = logging.getLogger(type(self).__module__)
        self._initial = (faults, seed)
        self._tokens = tuple(tokens)
        self._issued: dict[str, float] = {}
        """Issued token → when it expires on `clock`."""
        self._clock = clock
        self._seq = 0

    def authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        if any(hmac.compare_digest(token, known) for known in self._tokens):
            return True
        expires = self._issued.get(token)
        return expires is not None and self._clock() < expires

    def _accept(self, token: str, ttl_s: float | None = None) -> str:
        """Accept an issued token for `ttl_s` seconds (None: until revoked)."""
        now = self._clock()
        # Forget expired tokens so a long-running sandbox does not grow without bound.
        self._issued = {t: exp for t, exp in self._issued.items() if exp > now}
        self._issued[token] = now + ttl_s if ttl_s is not None else math.inf
        return token

    def revoke_tokens(self) -> int:
        count = len(self._issued)
        self._issued.clear()
        return count

    def take_burst(self, name: str) -> bool:
        """Whether the `burst_*` fault `name` hits this call, counting it down if so."""
        remaining = getattr(self.faults, name)
        if remaining <= 0:
            return False
        self.faults = self.faults.model_copy(update={name: remaining - 1})
        return True

    def log_request(self, request: web.Request) -> dict[str, Any]:
        self._seq += 1
        entry: dict[str, Any] = {
            "seq": self._seq,
            "method": request.method,
            "path": request.path,
            **self._request_details(request),
            "correlation_id": request.headers.get(CORRELATION_ID),
            "status": None,
            "fault": None,
        }
        self.requests.append(entry)
        return entry

    def _request_details(self, request: web.Request) -> dict[str, Any]:
        """What this sandbox's request log records of a call besides method, path and status."""
        return {}

    def reset(self) -> None:
        self.requests.clear()
        self.faults, seed = self._initial
        self.rng = random.Random(seed)


LOG_ENTRY = web.RequestKey("sandbox.log_entry", dict)
"""Where a request keeps its request-log entry, for a handler to add what only it knows (the
operations of a Business Central `$batch`)."""


def sandbox_app(
    key: web.AppKey[StateT],
    sandbox: StateT,
    token_path: str | tuple[str, ...],
    guard: Guard[StateT],
) -> web.Application:
    """An application around `sandbox` (stored under `key`) with the shared `/admin` routes:
    every API call outside the token endpoint (under `token_path`) passes `guard` (auth, faults)."""
    app = web.Application(middlewares=[_api_middleware(key, token_path, guard), _answer_refusals])
    app[key] = sandbox
    _add_admin_routes(app, key)
    return app


def _api_middleware(
    key: web.AppKey[StateT],
    token_path: str | tuple[str, ...],
    guard: Guard[StateT],
) -> Middleware:
    """Logs every call outside `/admin`; the token endpoint (under `token_path`) answers as is,
    every other call goes through `guard` (auth, faults), which notes its fault in the entry."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        sandbox = request.app[key]
        if request.path.startswith("/admin"):
            return await handler(request)
        entry = sandbox.log_request(request)
        request[LOG_ENTRY] = entry
        if request.path.startswith(token_path):
            response = await handler(request)
        else:
            response = await guard(sandbox, request, handler, entry)
        # A guard that withheld the answer has noted the status already, or that none was sent.
        if entry["status"] is None and entry["fault"] != "drop":
            entry["status"] = response.status
        sandbox.log.debug(
            f"{sandbox.name} request",
            extra={
                "correlation_id": entry["correlation_id"],
                "method": request.method,
                "path": request.path,
                "status": entry["status"],
                "fault": entry["fault"],
            },
        )
        return response

    return middleware


@web.middleware
async def _answer_refusals(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Inside the API middleware, so a refusal is logged and faulted like any other answer.
    try:
        return await handler(request)
    except Refused as refused:
        return refused.response


def _add_admin_routes(app: web.Application, key: web.AppKey[StateT]) -> None:
    """`/admin/faults` (GET, and POST to merge settings; `seed` re-seeds the dice),
    `/admin/requests` (`?correlation_id=`, `?limit=`), `/admin/reset` and
    `/admin/tokens/revoke`. No auth: a sandbox is a loopback dev tool."""

    async def get_faults(request: web.Request) -> web.StreamResponse:
        return json_response(request.app[key].faults.model_dump())

    async def set_faults(request: web.Request) -> web.StreamResponse:
        sandbox = request.app[key]
        body = await json_object(request)
        seed = body.pop("seed", None)
        try:
            sandbox.faults = type(sandbox.faults).model_validate({**sandbox.faults.model_dump(), **body})
        except ValidationError as exc:
            return invalid(exc)
        if seed is not None:
            sandbox.rng = random.Random(seed)
        sandbox.log.info(f"{sandbox.name} faults set", extra={"faults": sandbox.faults.model_dump()})
        return json_response(sandbox.faults.model_dump())

    async def requests(request: web.Request) -> web.StreamResponse:
        entries = list(request.app[key].requests)
        correlation_id = request.query.get("correlation_id")
        if correlation_id is not None:
            entries = [e for e in entries if e["correlation_id"] == correlation_id]
        limit = request.query.get("limit", "")
        if limit.isdigit():
            entries = entries[-int(limit) :] if int(limit) else []
        return json_response({"requests": entries})

    async def reset(request: web.Request) -> web.StreamResponse:
        request.app[key].reset()
        return json_response({"reset": True})

    async def revoke_tokens(request: web.Request) -> web.StreamResponse:
        """Forget every token the token endpoint issued, as if they had expired."""
        return json_response({"revoked": request.app[key].revoke_tokens()})

    app.router.add_get("/admin/faults", get_faults)
    app.router.add_post("/admin/faults", set_faults)
    app.router.add_get("/admin/requests", requests)
    app.router.add_post("/admin/reset", reset)
    app.router.add_post("/admin/tokens/revoke", revoke_tokens)


class AppServer(Generic[StateT]):
    """A sandbox's application running on `host:port` (port 0 picks a free one); `url` once
    started. `sandbox` is its state, under `key`."""

    def __init__(
        self,
        app: web.Application,
        key: web.AppKey[StateT],
        host: str = "127.0.0.1",
        port: int = 0,
        shutdown_timeout: float = 2.0,
        log_extra: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.url = ""
        self.app = app
        self._key = key
        self._log_extra = log_extra or {}
        self._runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, access_log=None)

    @property
    def sandbox(self) -> StateT:
        return self.app[self._key]

    async def start(self) -> str:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.url = f"http://{self.host}:{self.port}"
        self.sandbox.log.info(f"{self.sandbox.name} listening", extra={"url": self.url, **self._log_extra})
        return self.url

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
