"""Reads Stripe's API (backfill, catch-up, re-reads) through the official `stripe` package: the
API version pinned, paced per endpoint, backing off on 429, every object a plain JSON dict.

The SDK retries connection errors, 409 and 5xx itself; it does not retry a 429
(`stripe.RateLimitError`), so `StripeApi` does, with bounded exponential backoff and jitter,
and keeps each endpoint under `requests_per_s` (Stripe allows 25/s per endpoint in test mode).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import stripe
from pydantic import SecretStr

log = logging.getLogger(__name__)

PAGE_LIMIT = 100
"""Stripe's largest list page."""

RETRIEVABLE = {
    "customer": "customers",
    "subscription": "subscriptions",
    "invoice": "invoices",
    "credit_note": "credit_notes",
    "invoice_payment": "invoice_payments",
    "payment_intent": "payment_intents",
    "charge": "charges",
    "refund": "refunds",
    "dispute": "disputes",
}
"""An object's `object` name → its resource (`GET /v1/<resource>/{id}`, `client.v1.<resource>`)."""


class StripeApiError(Exception):
    """Stripe refused a request (or never answered it): its HTTP status and error code."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class StripeNotFound(StripeApiError):
    """404 `resource_missing`: no such object (deleted, or past the 30 days of an event)."""


class StripeRateLimited(StripeApiError):
    """Still 429 after every attempt."""


class Pace:
    """At most `per_s` calls a second, spaced evenly: each call waits for its slot."""

    def __init__(
        self,
        per_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._interval = 1.0 / per_s
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self._interval
            if slot > now:
                await self._sleep(slot - now)


def backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """The wait before retry `attempt` (0-based): base·2^attempt capped at max_s, with jitter
    over its upper half, so clients that were throttled together do not return together."""
    ceiling = min(max_s, base_s * 2**attempt)
    return ceiling / 2 + rng.random() * ceiling / 2


def as_dict(obj: Any) -> dict[str, Any]:
    """A StripeObject as plain JSON data (decimal strings stay strings, never floats)."""
    out: dict[str, Any] = obj.to_dict(recursive=True, for_json=True)
    return out


class StripeApi:
    """Stripe's read API for ledgerflow: list with pagination, retrieve, whole invoices, events."""

    def __init__(
        self,
        api_key: SecretStr | str,
        api_version: str,
        api_base: str = "https://api.stripe.com",
        requests_per_s: float = 20.0,
        max_attempts: int = 8,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        seed: int | None = None,
        timeout_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self.api_version = api_version
        self._http = stripe.HTTPXClient(timeout=timeout_s)
        self.client = stripe.StripeClient(
            key,
            stripe_version=api_version,
            base_addresses={"api": api_base.rstrip("/")},
            http_client=self._http,
        )
        self.requests = 0
        """Requests sent (each 429 retry counts)."""
        self.throttled = 0
        """429 answers met (each was waited out and retried)."""
        self._per_s = requests_per_s
        self._paces: dict[str, Pace] = {}
        self._attempts = max_attempts
        self._base_s = backoff_base_s
        self._max_s = backoff_max_s
        self._rng = random.Random(seed)
        self._sleep = sleep

    async def close(self) -> None:
        await self._http.close_async()

    async def __aenter__(self) -> StripeApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, endpoint: str, call: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
        """One request to `endpoint` (a path template: its pace), paced, 429s retried."""
        pace = self._paces.get(endpoint)
        if pace is None:
            pace = self._paces[endpoint] = Pace(self._per_s, sleep=self._sleep)
        for attempt in range(self._attempts):
            await pace.wait()
            self.requests += 1
            try:
                return as_dict(await call())
            except stripe.RateLimitError as exc:
                self.throttled += 1
                if attempt + 1 == self._attempts:
                    raise StripeRateLimited(
                        f"{endpoint}: still rate limited after {self._attempts} attempts",
                        429,
                        exc.code,
                    ) from None
                delay = backoff_s(attempt, self._base_s, self._max_s, self._rng)
                log.info(
                    "stripe rate limited, backing off",
                    extra={"endpoint": endpoint, "attempt": attempt + 1, "delay_s": round(delay, 3)},
                )
                await self._sleep(delay)
            except stripe.InvalidRequestError as exc:
                error = StripeNotFound if exc.http_status == 404 else StripeApiError
                raise error(f"{endpoint}: {exc.user_message or exc}", exc.http_status, exc.code) from None
            except stripe.StripeError as exc:
                raise StripeApiError(
                    f"{endpoint}: {type(exc).__name__}: {exc.user_message or exc}", exc.http_status, exc.code
                ) from None
        raise AssertionError("unreachable: the loop returns or raises")

    def _service(self, resource: str) -> Any:
        return getattr(self.client.v1, resource)

    async def list_page(
        self, resource: str, params: Mapping[str, Any] | None = None, starting_after: str | None = None
    ) -> dict[str, Any]:
        """One page (newest first) of `GET /v1/<resource>`, after the object `starting_after`."""
        query = {**(params or {}), "limit": PAGE_LIMIT}
        if starting_after is not None:
            query["starting_after"] = starting_after
        service = self._service(resource)
        return await self._call(f"/v1/{resource}", lambda: service.list_async(query))

    async def pages(
        self, resource: str, params: Mapping[str, Any] | None = None, starting_after: str | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Every page of a list, from `starting_after` (a cursor kept by a resumable caller)."""
        while True:
            page = await self.list_page(resource, params, starting_after)
            data: list[dict[str, Any]] = page["data"]
            if data:
                yield data
            if not page.get("has_more") or not data:
                return
            starting_after = data[-1]["id"]

    async def list_all(
        self, resource: str, params: Mapping[str, Any] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Every object of a resource (newest first), page after page of 100."""
        async for page in self.pages(resource, params):
            for obj in page:
                yield obj

    async def retrieve(self, resource: str, object_id: str) -> dict[str, Any]:
        """`GET /v1/<resource>/{id}`; StripeNotFound when there is none."""
        service = self._service(resource)
        return await self._call(f"/v1/{resource}/{{id}}", lambda: service.retrieve_async(object_id))

    async def retrieve_object(self, object_type: str, object_id: str) -> dict[str, Any]:
        """An object by its `object` name (`invoice`: the whole invoice); KeyError for a type
        ledgerflow cannot re-read."""
        if object_type == "invoice":
            return await self.invoice_whole(object_id)
        return await self.retrieve(RETRIEVABLE[object_type], object_id)

    async def invoice_lines(self, invoice_id: str, starting_after: str | None = None) -> list[dict[str, Any]]:
        """The invoice's lines after `starting_after` (all of them without it), in order."""
        lines: list[dict[str, Any]] = []
        service = self.client.v1.invoices.line_items
        while True:
            query: dict[str, Any] = {"limit": PAGE_LIMIT}
            if starting_after is not None:
                query["starting_after"] = starting_after

            def call(q: dict[str, Any] = query) -> Awaitable[Any]:
                return service.list_async(invoice_id, q)  # type: ignore[arg-type]

            page = await self._call("/v1/invoices/{id}/lines", call)
            lines.extend(page["data"])
            if not page.get("has_more") or not page["data"]:
                return lines
            starting_after = page["data"][-1]["id"]

    async def whole(self, invoice: dict[str, Any]) -> dict[str, Any]:
        """The invoice with all its lines: when its `lines` has more than it embeds, the rest
        is paged from `/v1/invoices/{id}/lines` and `has_more` becomes false."""
        lines = invoice.get("lines")
        if not isinstance(lines, dict) or not lines.get("has_more"):
            return invoice
        embedded = list(lines.get("data") or [])
        after = embedded[-1]["id"] if embedded else None
        rest = await self.invoice_lines(invoice["id"], after)
        return {**invoice, "lines": {**lines, "data": embedded + rest, "has_more": False}}

    async def invoice_whole(self, invoice_id: str) -> dict[str, Any]:
        """`GET /v1/invoices/{id}` with every line."""
        return await self.whole(await self.retrieve("invoices", invoice_id))

    async def events(
        self,
        created_gte: int,
        created_lt: int | None = None,
        types: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """The events created in [created_gte, created_lt), oldest first (Stripe keeps 30 days)."""
        created: dict[str, int] = {"gte": created_gte}
        if created_lt is not None:
            created["lt"] = created_lt
        params: dict[str, Any] = {"created": created}
        if types:
            params["types"] = types
        newest_first = [e async for e in self.list_all("events", params)]
        return newest_first[::-1]
