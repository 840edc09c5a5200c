"""`OwnerRouter`: the decisions around Faust's forward (same worker, one hop at most, which
headers go along). The forward itself, between two real workers: tests/integration/test_views.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from faust.exceptions import SameNode
from faust.web.exceptions import ServiceUnavailable
from yarl import URL

from streams.app import app
from streams.web.routing import FORWARDED_BY, OwnerRouter, forward_headers, same_worker


def test_worker_urls_compare_by_host_and_port() -> None:
    assert same_worker("http://127.0.0.1:6066", URL("http://127.0.0.1:6066/"))
    assert same_worker("http://worker-0:80", "http://worker-0")
    assert not same_worker("http://127.0.0.1:6066", "http://127.0.0.1:6067")
    assert not same_worker("http://worker-0:6066", "http://worker-1:6066")


def test_a_forward_carries_the_callers_token_and_who_forwarded_it_not_the_first_hops_connection() -> None:
    headers = {
        "Host": "127.0.0.1:6066",
        "Authorization": "Bearer t",
        "Accept": "application/json",
        "Content-Length": "0",
        "Connection": "keep-alive",
    }
    assert forward_headers(headers, "http://127.0.0.1:6066") == {
        "Authorization": "Bearer t",
        "Accept": "application/json",
        FORWARDED_BY: "http://127.0.0.1:6066",
    }


@dataclass
class FakeRequest:
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "GET"
    url: URL = field(default_factory=lambda: URL("http://127.0.0.1:6066/customers/c1"))


async def test_the_owner_answers_itself_and_a_forwarded_request_is_never_forwarded_again() -> None:
    router = OwnerRouter(app)
    me = URL(str(app.conf.canonical_url))
    web: Any = None
    with pytest.raises(SameNode):
        await router._route_req(me, web, FakeRequest())  # type: ignore[arg-type]
    other = me.with_port((me.port or 80) + 1)
    forwarded = FakeRequest(headers={FORWARDED_BY: "http://127.0.0.1:7000", "Authorization": "Bearer t"})
    with pytest.raises(ServiceUnavailable, match="moving"):
        await router._route_req(other, web, forwarded)  # type: ignore[arg-type]
    # Forwarded to the owner itself: answered there.
    with pytest.raises(SameNode):
        await router._route_req(me, web, forwarded)  # type: ignore[arg-type]


def test_the_app_routes_through_owner_router() -> None:
    import streams.web.views  # noqa: F401 - installs the router, as autodiscovery does in a worker

    assert isinstance(app.router, OwnerRouter)
