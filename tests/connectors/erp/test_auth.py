"""Bearer token providers: caching, refreshing before expiry, and refusing clearly."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs

import httpx
import pytest

from connectors.erp import ClientCredentialsToken, ErpAuthError, ErpTransientError, StaticToken, TokenProvider


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TokenEndpoint:
    """An OAuth token endpoint behind httpx.MockTransport that records what it was sent."""

    def __init__(
        self, expires_in: int = 3600, status: int = 200, body: dict[str, object] | None = None
    ) -> None:
        self.expires_in = expires_in
        self.status = status
        self.body = body
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.status != 200:
            return httpx.Response(self.status, json=self.body)
        n = len(self.requests)
        return httpx.Response(
            200, json={"access_token": f"tok-{n}", "token_type": "Bearer", "expires_in": self.expires_in}
        )


def _provider(
    endpoint: TokenEndpoint, clock: Clock, refresh_margin_s: float = 60.0
) -> ClientCredentialsToken:
    http = httpx.AsyncClient(transport=httpx.MockTransport(endpoint))
    return ClientCredentialsToken(
        "https://erp.test/oauth/token",
        "ledgerflow",
        "s3cret",
        scope="rest_webservices",
        http=http,
        clock=clock,
        refresh_margin_s=refresh_margin_s,
    )


async def test_static_token_is_a_provider_and_hides_its_value() -> None:
    provider = StaticToken("abc")
    assert isinstance(provider, TokenProvider)
    assert await provider.token() == "abc"
    provider.invalidate()
    assert await provider.token() == "abc"
    assert "abc" not in repr(provider)


async def test_a_missing_static_token_is_an_auth_error_naming_the_setting() -> None:
    with pytest.raises(ErpAuthError) as raised:
        await StaticToken("").token()
    assert raised.value.code == "NO_TOKEN" and "LEDGERFLOW_ERP_TOKEN" in raised.value.message


async def test_client_credentials_sends_basic_auth_and_the_grant() -> None:
    endpoint = TokenEndpoint()
    provider = _provider(endpoint, Clock())
    assert isinstance(provider, TokenProvider)
    assert await provider.token() == "tok-1"
    [request] = endpoint.requests
    assert request.method == "POST"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"ledgerflow:s3cret").decode()
    assert parse_qs(request.content.decode()) == {
        "grant_type": ["client_credentials"],
        "scope": ["rest_webservices"],
    }
    assert "s3cret" not in repr(provider)


async def test_the_token_is_cached_until_a_margin_before_expiry() -> None:
    endpoint, clock = TokenEndpoint(expires_in=3600), Clock()
    provider = _provider(endpoint, clock, refresh_margin_s=60.0)
    assert await provider.token() == "tok-1"
    clock.now = 3539.0
    assert await provider.token() == "tok-1"
    assert provider.fetches == 1
    clock.now = 3540.0
    assert await provider.token() == "tok-2"
    assert provider.fetches == 2


async def test_a_short_lived_token_is_refreshed_at_half_its_life_not_every_call() -> None:
    endpoint, clock = TokenEndpoint(expires_in=10), Clock()
    provider = _provider(endpoint, clock, refresh_margin_s=60.0)
    await provider.token()
    clock.now = 4.9
    assert await provider.token() == "tok-1"
    clock.now = 5.0
    assert await provider.token() == "tok-2"


async def test_invalidate_forces_a_new_token() -> None:
    endpoint = TokenEndpoint()
    provider = _provider(endpoint, Clock())
    await provider.token()
    provider.invalidate()
    assert await provider.token() == "tok-2"
    assert len(endpoint.requests) == 2


async def test_refused_credentials_are_an_auth_error_with_the_oauth_code() -> None:
    endpoint = TokenEndpoint(status=401, body={"error": "invalid_client", "error_description": "bad secret"})
    with pytest.raises(ErpAuthError) as raised:
        await _provider(endpoint, Clock()).token()
    assert (raised.value.code, raised.value.message, raised.value.status) == (
        "invalid_client",
        "bad secret",
        401,
    )


async def test_a_token_endpoint_outage_is_transient() -> None:
    endpoint = TokenEndpoint(status=503, body={"error": "temporarily_unavailable"})
    with pytest.raises(ErpTransientError) as raised:
        await _provider(endpoint, Clock()).token()
    assert raised.value.code == "temporarily_unavailable"


async def test_an_answer_without_a_token_is_an_auth_error() -> None:
    def no_token(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"token_type": "Bearer"})

    http = httpx.AsyncClient(transport=httpx.MockTransport(no_token))
    provider = ClientCredentialsToken("https://erp.test/oauth/token", "id", "secret", http=http)
    with pytest.raises(ErpAuthError, match="INVALID_TOKEN_RESPONSE"):
        await provider.token()
