"""Which worker answers for a key, and asking the others: `app.table_route` made dependable.

Faust's router (`app.table_route`, faust-streaming issue #514 reports it failing with three
workers) has three gaps this module closes, without changing how a view is written:

* it hashes the key with the *producer's* metadata of the table's changelog topic; a worker
  that has not yet written to that table has none, and the look-up fails with a TypeError
  (HTTP 500). `OwnerRouter` asks the broker for the partitions first.
* a request is forwarded to whoever this worker's copy of the assignment names; while a
  rebalance is under way two workers can name each other and bounce the request back and forth
  without end. A forwarded request carries `x-ledgerflow-forwarded-by`; a worker that would
  forward it again answers 503 (retry) instead.
* the forward has no timeout of its own (the HTTP client's is minutes): here it has one, and
  an owner that does not answer is a 503, not a hung request.

The fan-out helpers (`peers`, `get_json`) serve the views that gather from every worker.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

import aiohttp
from aiokafka.errors import KafkaError
from faust.app.router import Router
from faust.exceptions import SameNode
from faust.web.exceptions import ServiceUnavailable
from yarl import URL

if TYPE_CHECKING:
    from faust.types import AppT
    from faust.types.tables import CollectionT
    from faust.types.web import Request, Response, Web

log = logging.getLogger(__name__)

FORWARDED_BY = "x-ledgerflow-forwarded-by"
"""Set on a request one worker forwards to another (its canonical URL)."""
FORWARD_TIMEOUT_S = 10.0
_NOT_FORWARDED = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})


def same_worker(a: URL | str, b: URL | str) -> bool:
    """Whether two worker URLs name the same web server (host and port)."""
    ua, ub = URL(str(a)), URL(str(b))
    return (ua.host or "", ua.port or 80) == (ub.host or "", ub.port or 80)


def forward_headers(headers: Any, me: str) -> dict[str, str]:
    """The headers a forwarded request carries: the caller's (the bearer token with them),
    minus those that describe the first hop's connection, plus who forwarded it."""
    out = {k: v for k, v in headers.items() if k.lower() not in _NOT_FORWARDED}
    out[FORWARDED_BY] = me
    return out


class OwnerRouter(Router):
    """`app.router` with known partitions, a one-hop limit and a forward timeout."""

    def __init__(self, app: AppT) -> None:
        super().__init__(app)
        self._known_topics: set[str] = set()

    async def know_partitions(self, table: CollectionT) -> None:
        """Make the producer's metadata hold the table's changelog topic (see module doc)."""
        topic = table.changelog_topic.get_topic_name()
        if topic in self._known_topics:
            return
        if not await partition_count(self.app, topic):
            raise ServiceUnavailable(f"the broker did not say how {topic} is partitioned; retry")
        self._known_topics.add(topic)

    def owner(self, table: CollectionT, key: str) -> URL:
        """The web URL of the worker whose active partitions hold `key` of `table`.
        Raises KeyError while no assignment names one (before the first rebalance ends)."""
        return self.key_store(table.name, key)

    def is_me(self, url: URL | str) -> bool:
        return same_worker(url, self.app.conf.canonical_url)

    async def route_req(self, table_name: str, key: Any, web: Web, request: Request) -> Response:
        await self.know_partitions(self.app.tables[table_name])
        return await super().route_req(table_name, key, web, request)

    async def _route_req(self, dest_url: URL, web: Web, request: Request) -> Response:
        if self.is_me(dest_url):
            raise SameNode()
        if request.headers.get(FORWARDED_BY):
            # Forwarded to us, and our view of the assignment names yet another worker: the
            # partitions are moving. Bouncing it on could loop; the caller retries instead.
            raise ServiceUnavailable("the partition owning this key is moving (rebalance); retry")
        me = str(self.app.conf.canonical_url)
        routed = request.url.with_host(dest_url.host or "").with_port(dest_url.port)
        raw: Any = request  # the aiohttp request under Faust's driver-neutral type
        try:
            async with self.app.http_client.request(
                method=request.method,
                url=routed,
                headers=forward_headers(request.headers, me),
                data=await raw.read() if raw.can_read_body else None,
                timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S),
            ) as response:
                return web.text(
                    await response.text(), content_type=response.content_type, status=response.status
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "owner worker did not answer", extra={"owner": str(dest_url), "error": type(exc).__name__}
            )
            raise ServiceUnavailable(f"the worker owning this key ({dest_url}) did not answer") from exc


_partition_counts: dict[str, int] = {}


async def partition_count(app: AppT, topic: str, timeout: float = 5.0) -> int | None:
    """How many partitions `topic` has, from the producer's metadata (asked of the broker the
    first time; None if it did not say in time or the driver has no such call)."""
    if topic in _partition_counts:
        return _partition_counts[topic]
    ensure = getattr(app.producer, "_ensure_producer", None)  # the aiokafka driver's
    if ensure is None:
        return None
    try:
        partitions = await asyncio.wait_for(ensure().partitions_for(topic), timeout)
    except (KafkaError, TimeoutError):
        return None
    _partition_counts[topic] = len(partitions)
    return len(partitions)


def install(app: AppT) -> OwnerRouter:
    """Make `OwnerRouter` the app's router (`table_route` asks `app.router` at request time)."""
    cast(Any, app.conf).Router = OwnerRouter  # Faust's setting for the router class
    router = app.router
    if not isinstance(router, OwnerRouter):  # built before this ran: replace the cached one
        router = OwnerRouter(app)
        cast(Any, app).router = router
    return router


def peers(app: AppT, table: CollectionT) -> dict[str, list[int]]:
    """Every worker of the group (its canonical URL) → the table's partitions it holds active,
    as the last assignment distributed them."""
    topic = table.changelog_topic.get_topic_name()
    return {
        str(url): sorted(assigned.get(topic, ()))
        for url, assigned in app.router.table_metadata(table.name).items()
    }


def active_partitions(app: AppT, table: CollectionT) -> list[int]:
    """The table's partitions this worker holds active now."""
    topic = table.changelog_topic.get_topic_name()
    return sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic)


async def get_json(
    app: AppT, base: str, path: str, params: dict[str, str], headers: dict[str, str], timeout: float
) -> tuple[int, Any]:
    """GET another worker's view as JSON: (status, body); (0, reason) when it did not answer."""
    url = URL(base).with_path(path).with_query(params)
    try:
        async with app.http_client.get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
            body = await response.json(content_type=None)
            return response.status, body
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return 0, type(exc).__name__


async def gather_json(
    app: AppT,
    bases: list[str],
    path: str,
    params: dict[str, str],
    headers: dict[str, str],
    timeout: float,
) -> list[tuple[str, int, Any]]:
    """The same GET to several workers at once: (base, status, body) each."""
    results = await asyncio.gather(*(get_json(app, b, path, params, headers, timeout) for b in bases))
    return [(base, status, body) for base, (status, body) in zip(bases, results, strict=True)]
