"""NetSuite authentication as NetSuite has it: TBA (OAuth 1.0a, HMAC-SHA256, realm = account)
and M2M (client credentials with a PS256/ES256 JWT assertion), each checked by an independent
server side over real HTTP on loopback (oauthlib's resource endpoint; PyJWT with the x.509
certificate's key); and the settings that choose and feed them."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from oauthlib import oauth1
from pydantic import ValidationError

from connectors.erp import ClientCredentialsToken, ErpAuthError, NetSuiteClient, RecordType, StaticToken
from connectors.erp.netsuite_auth import (
    CLIENT_ASSERTION_TYPE,
    TOKEN_PATH,
    M2MVerifier,
    NetSuiteM2MToken,
    TbaAuth,
    TbaToken,
    TbaVerifier,
    load_public_key,
)
from connectors.erp.schemas import netsuite_error_body
from connectors.http import RequestSigner
from streams.erp import erp_client, token_provider
from streams.settings import Settings
from tests.connectors.erp.netsuite_keys import KeyPair, ec_keys, rsa_keys

ACCOUNT = "1234567_SB1"
CONSUMER_KEY = "3f1c0e5a9b7d4c2e8f6a1b3d5c7e9f0a2b4c6d8e0f1a3b5c7d9e1f3a5b7c9d1e"
CONSUMER_SECRET = "c0nsumer-secret-9d81f0c2a4b6"
TOKEN_ID = "7a9c1e3b5d7f9a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c"
TOKEN_SECRET = "t0ken-secret-4e6a8c0b2d4f"
CLIENT_ID = "9b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a4c6e8b0d2f4a6c8e0b2d"
SECRETS = (CONSUMER_SECRET, TOKEN_SECRET)


def tba(token_secret: str = TOKEN_SECRET, consumer_secret: str = CONSUMER_SECRET) -> TbaToken:
    return TbaToken(ACCOUNT, CONSUMER_KEY, consumer_secret, TOKEN_ID, token_secret)


def tba_verifier(account: str = ACCOUNT) -> TbaVerifier:
    return TbaVerifier(account, {CONSUMER_KEY: CONSUMER_SECRET}, {TOKEN_ID: (TOKEN_SECRET, CONSUMER_KEY)})


def oauth_params(authorization: str) -> dict[str, str]:
    scheme, _, params = authorization.partition(" ")
    assert scheme == "OAuth"
    return dict(re.findall(r'(\w+)="([^"]*)"', params))


# -- a NetSuite on loopback -----------------------------------------------------------------------


@dataclass
class FakeNetSuite:
    """REST routes behind TBA or bearer tokens, and the M2M token endpoint: the least a
    NetSuite stand-in does with the verifiers. Records what each call looked like."""

    tba: TbaVerifier | None = None
    m2m: M2MVerifier | None = None
    bearer: set[str] = field(default_factory=set)
    seen: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    url: str = ""

    async def token(self, request: web.Request) -> web.Response:
        assert self.m2m is not None
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.seen.append(
            {"path": request.path, "form": form, "authorization": request.headers.get("Authorization")}
        )
        status, body = self.m2m.issue(form)
        if status == 200:
            self.bearer.add(body["access_token"])
        return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})

    async def api(self, request: web.Request) -> web.Response:
        body = await request.text()
        authorization = request.headers.get("Authorization", "")
        self.seen.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "body": body,
                "authorization": authorization,
            }
        )
        if self.tba is not None:
            verdict = self.tba.verify(request.method, str(request.url), request.headers, body)
            ok, reason = verdict.ok, verdict.reason
        else:
            ok = authorization.startswith("Bearer ") and authorization[7:] in self.bearer
            reason = "unknown bearer token"
        if not ok:
            self.refusals.append(reason)
            return web.json_response(netsuite_error_body(401, "INVALID_LOGIN_ATTEMPT", reason), status=401)
        if request.path.endswith("/suiteql"):
            items = [{"links": [], "id": "7", "externalid": "INV-1", "tranid": "INV007"}]
            return web.json_response({"items": items, "hasMore": False, "count": 1, "offset": 0})
        if request.path.startswith("/services/rest/record/v1/invoice/eid:"):
            external_id = request.path.rsplit("eid:", 1)[1]
            return web.json_response({"id": "7", "externalId": external_id, "tranId": "INV007"})
        return web.json_response({"ok": True, "method": request.method, "query": dict(request.query)})


@pytest.fixture
async def netsuite() -> AsyncIterator[Callable[..., Any]]:
    servers: list[TestServer] = []

    async def start(**kwargs: Any) -> FakeNetSuite:
        fake = FakeNetSuite(**kwargs)
        app = web.Application()
        app.router.add_post(TOKEN_PATH, fake.token)
        app.router.add_route("*", "/services/rest/{tail:.*}", fake.api)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        fake.url = str(server.make_url("")).rstrip("/")
        return fake

    yield start
    for server in servers:
        await server.close()


# -- TBA ------------------------------------------------------------------------------------------


async def test_the_tba_header_has_the_realm_hmac_sha256_and_every_oauth_parameter() -> None:
    captured: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        captured.append(request)
        return httpx.Response(204)

    auth = await tba().request_auth()
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        await client.put(
            "https://1234567-sb1.suitetalk.api.netsuite.com/services/rest/record/v1/invoice/eid:INV-1",
            params={"replace": "item"},
            json={"externalId": "INV-1"},
            auth=auth,
        )
    params = oauth_params(captured[0].headers["authorization"])
    assert set(params) == {
        "realm",
        "oauth_consumer_key",
        "oauth_token",
        "oauth_signature_method",
        "oauth_timestamp",
        "oauth_nonce",
        "oauth_version",
        "oauth_signature",
    }  # no oauth_body_hash: a JSON body is no part of the signature
    assert params["realm"] == "1234567_SB1"
    assert params["oauth_signature_method"] == "HMAC-SHA256" and params["oauth_version"] == "1.0"
    assert (params["oauth_consumer_key"], params["oauth_token"]) == (CONSUMER_KEY, TOKEN_ID)
    assert abs(int(params["oauth_timestamp"]) - time.time()) < 5
    assert "bearer" not in captured[0].headers["authorization"].lower()


SUITEQL_WITH_SPACES = (
    "SELECT id, externalid, tranid FROM transaction WHERE type = 'CustInvc' AND externalid IN ('A 1', 'B,2')"
)


async def test_tba_signatures_verify_with_oauthlibs_server_side_over_real_http_from_httpx(
    netsuite: Callable[..., Any],
) -> None:
    """`TbaAuth` as an httpx auth (a script's client)."""
    fake: FakeNetSuite = await netsuite(tba=tba_verifier())
    auth = await tba().request_auth()
    suiteql = SUITEQL_WITH_SPACES
    async with httpx.AsyncClient(timeout=5.0) as client:
        answers = [
            await client.get(
                f"{fake.url}/services/rest/record/v1/invoice", params={"limit": 1000, "offset": 0}, auth=auth
            ),
            await client.put(
                f"{fake.url}/services/rest/record/v1/invoice/eid:INV-1?replace=item",
                json={"externalId": "INV-1", "item": {"items": []}},
                auth=auth,
            ),
            await client.post(
                f"{fake.url}/services/rest/query/v1/suiteql",
                params={"limit": 1000, "offset": 0},
                json={"q": suiteql},
                headers={"prefer": "transient"},
                auth=auth,
            ),
            await client.get(
                f"{fake.url}/services/rest/record/v1/customer", params={"q": suiteql}, auth=auth
            ),
        ]
    assert [a.status_code for a in answers] == [200, 200, 200, 200], fake.refusals
    assert fake.seen[1]["query"] == {"replace": "item"} and fake.seen[1]["method"] == "PUT"
    assert fake.seen[3]["query"] == {"q": suiteql}


async def test_tba_signatures_verify_with_oauthlibs_server_side_over_the_clients_own_http(
    netsuite: Callable[..., Any],
) -> None:
    """The clients' own call (`BearerJsonClient._call` over aiohttp): the URL it signs is the one
    it sends, params and a query with spaces and quotes included."""
    fake: FakeNetSuite = await netsuite(tba=tba_verifier())
    async with NetSuiteClient(fake.url, tba(), timeout=5.0) as client:
        await client._call("GET", f"{fake.url}/services/rest/record/v1/invoice", None, params={"limit": 1000})
        await client._call(
            "PUT",
            f"{fake.url}/services/rest/record/v1/invoice/eid:INV-1?replace=item",
            None,
            body={"externalId": "INV-1", "item": {"items": []}},
        )
        await client._call(
            "GET", f"{fake.url}/services/rest/record/v1/customer", None, params={"q": SUITEQL_WITH_SPACES}
        )
    assert not fake.refusals and client.requests == 3
    assert fake.seen[0]["query"] == {"limit": "1000"}
    assert fake.seen[1]["query"] == {"replace": "item"} and fake.seen[1]["method"] == "PUT"
    assert fake.seen[2]["query"] == {"q": SUITEQL_WITH_SPACES}


async def test_the_netsuite_client_signs_each_call_and_sends_no_bearer_token(
    netsuite: Callable[..., Any],
) -> None:
    fake: FakeNetSuite = await netsuite(tba=tba_verifier())
    tokens = tba()
    assert isinstance(tokens, RequestSigner)
    async with NetSuiteClient(fake.url, tokens, timeout=5.0) as client:
        numbers = await client.document_numbers(RecordType.INVOICE, ["INV-1"], "corr-1")
        document = await client.get(RecordType.INVOICE, "INV-1", "corr-2")
    assert numbers["INV-1"].document_number == "INV007"
    assert document is not None and document.erp_internal_id == "7"
    assert client.requests == 2 and not fake.refusals
    assert all(seen["authorization"].startswith("OAuth realm=") for seen in fake.seen)
    assert fake.seen[0]["query"] == {"limit": "1000", "offset": "0"}  # signed with the query
    nonces = {oauth_params(seen["authorization"])["oauth_nonce"] for seen in fake.seen}
    assert len(nonces) == 2


@pytest.mark.parametrize(
    ("tokens", "reason"),
    [
        (lambda: tba(token_secret="wrong-token-secret"), "signature does not verify"),
        (lambda: tba(consumer_secret="wrong-consumer-secret"), "signature does not verify"),
        (
            lambda: TbaToken(ACCOUNT, "unknownconsumerkey00000000", CONSUMER_SECRET, TOKEN_ID, TOKEN_SECRET),
            "consumer",
        ),
        (
            lambda: TbaToken(ACCOUNT, CONSUMER_KEY, CONSUMER_SECRET, "unknowntokenid000000000", TOKEN_SECRET),
            "token",
        ),
        (lambda: TbaToken("7654321", CONSUMER_KEY, CONSUMER_SECRET, TOKEN_ID, TOKEN_SECRET), "realm"),
    ],
    ids=["token-secret", "consumer-secret", "consumer-key", "token-id", "realm"],
)
async def test_wrong_tba_credentials_are_a_401_and_an_auth_error(
    netsuite: Callable[..., Any], tokens: Callable[[], TbaToken], reason: str
) -> None:
    fake: FakeNetSuite = await netsuite(tba=tba_verifier())
    async with NetSuiteClient(fake.url, tokens(), timeout=5.0) as client:
        with pytest.raises(ErpAuthError) as raised:
            await client.get(RecordType.INVOICE, "INV-1")
    # One retry after the 401, signed anew; then the refusal is an operator's problem.
    assert raised.value.status == 401 and client.requests == 2
    assert len(fake.refusals) == 2 and reason in fake.refusals[0]


async def test_a_replayed_tba_request_is_refused(netsuite: Callable[..., Any]) -> None:
    fake: FakeNetSuite = await netsuite(tba=tba_verifier())
    url = f"{fake.url}/services/rest/record/v1/invoice?limit=10&offset=0"
    async with httpx.AsyncClient(timeout=5.0) as client:
        first = await client.get(url, auth=await tba().request_auth())
        replay = await client.get(url, headers={"Authorization": fake.seen[0]["authorization"]})
    assert first.status_code == 200
    assert replay.status_code == 401 and fake.refusals == ["nonce already used (replayed request)"]


def test_the_verifier_refuses_hmac_sha1_a_stale_timestamp_and_no_header() -> None:
    verifier = tba_verifier()
    url = "http://127.0.0.1:8089/services/rest/record/v1/invoice"

    def signed(**options: Any) -> dict[str, str]:
        client = oauth1.Client(
            CONSUMER_KEY,
            client_secret=CONSUMER_SECRET,
            resource_owner_key=TOKEN_ID,
            resource_owner_secret=TOKEN_SECRET,
            realm=ACCOUNT,
            **options,
        )
        _, headers, _ = client.sign(url, "GET")
        return dict(headers)

    sha1 = verifier.verify("GET", url, signed(signature_method=oauth1.SIGNATURE_HMAC_SHA1))
    stale = verifier.verify(
        "GET",
        url,
        signed(signature_method=oauth1.SIGNATURE_HMAC_SHA256, timestamp=str(int(time.time()) - 3600)),
    )
    assert not sha1 and "HMAC-SHA256 only" in sha1.reason
    assert not stale and "oauth_timestamp" in stale.reason
    assert not verifier.verify("GET", url, {"Authorization": "Bearer abc"})
    assert verifier.verify("GET", url, signed(signature_method=oauth1.SIGNATURE_HMAC_SHA256))


def test_the_nonce_memory_is_bounded() -> None:
    verifier = TbaVerifier(
        ACCOUNT, {CONSUMER_KEY: CONSUMER_SECRET}, {TOKEN_ID: (TOKEN_SECRET, CONSUMER_KEY)}, max_nonces=3
    )
    url = "http://127.0.0.1:8089/services/rest/record/v1/invoice"
    client = oauth1.Client(
        CONSUMER_KEY,
        client_secret=CONSUMER_SECRET,
        resource_owner_key=TOKEN_ID,
        resource_owner_secret=TOKEN_SECRET,
        signature_method=oauth1.SIGNATURE_HMAC_SHA256,
        realm=ACCOUNT,
    )
    for _ in range(10):
        assert verifier.verify("GET", url, dict(client.sign(url, "GET")[1]))
    assert len(verifier._validator._seen) == 3


async def test_missing_tba_credentials_are_refused_per_call_naming_the_settings() -> None:
    tokens = TbaToken(ACCOUNT, CONSUMER_KEY, None, TOKEN_ID, "")

    async with NetSuiteClient("http://127.0.0.1:9", tokens) as client:  # nothing listens there
        with pytest.raises(ErpAuthError) as raised:
            await client.get(RecordType.INVOICE, "INV-1")
    assert raised.value.code == "NO_TOKEN" and client.requests == 0  # nothing was sent
    assert "LEDGERFLOW_NETSUITE_CONSUMER_SECRET" in raised.value.message
    assert "LEDGERFLOW_NETSUITE_TOKEN_SECRET" in raised.value.message
    with pytest.raises(ErpAuthError, match="NO_BEARER_TOKEN"):
        await tokens.token()


# -- M2M ------------------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def m2m_verifier(token_url: str, *pairs: KeyPair) -> M2MVerifier:
    return M2MVerifier(token_url, {f"cert-{p.algorithm}": (CLIENT_ID, p.certificate_pem) for p in pairs})


def m2m(token_url: str, keys: KeyPair, **kwargs: Any) -> NetSuiteM2MToken:
    return NetSuiteM2MToken(token_url, CLIENT_ID, f"cert-{keys.algorithm}", keys.private_pem, **kwargs)


@pytest.mark.parametrize("keys", [rsa_keys, ec_keys], ids=["rsa", "ec"])
def test_the_assertion_names_the_certificate_the_scope_and_the_token_url(keys: Callable[[], KeyPair]) -> None:
    pair = keys()
    token_url = f"https://1234567-sb1.suitetalk.api.netsuite.com{TOKEN_PATH}"
    provider = m2m(token_url, pair, wall_clock=lambda: 1_800_000_000.0)
    assertion = provider.assertion()
    header = jwt.get_unverified_header(assertion)
    assert header == {"typ": "JWT", "alg": pair.algorithm, "kid": f"cert-{pair.algorithm}"}
    public_key = x509.load_pem_x509_certificate(pair.certificate_pem).public_key()
    assert isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    claims = jwt.decode(
        assertion,
        public_key,
        algorithms=[pair.algorithm],
        audience=token_url,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims == {
        "iss": CLIENT_ID,
        "scope": ["rest_webservices"],
        "aud": token_url,
        "iat": 1_800_000_000,
        "exp": 1_800_000_300,
    }
    assert claims["exp"] - claims["iat"] <= 3600
    assert pair.algorithm == ("PS256" if isinstance(public_key, rsa.RSAPublicKey) else "ES256")
    with pytest.raises(ValueError):
        m2m(token_url, pair, assertion_lifetime_s=3601)


@pytest.mark.parametrize("keys", [rsa_keys, ec_keys], ids=["rsa-ps256", "ec-es256"])
async def test_an_m2m_token_round_trip_over_real_http(
    netsuite: Callable[..., Any], keys: Callable[[], KeyPair]
) -> None:
    fake: FakeNetSuite = await netsuite()
    fake.m2m = m2m_verifier(f"{fake.url}{TOKEN_PATH}", rsa_keys(), ec_keys())
    http = httpx.AsyncClient(timeout=5.0)
    provider = m2m(f"{fake.url}{TOKEN_PATH}", keys(), http=http)
    async with NetSuiteClient(fake.url, provider, timeout=5.0) as client:
        assert (await client.document_numbers(RecordType.INVOICE, ["INV-1"]))["INV-1"].erp_internal_id == "7"
        fake.bearer.clear()  # revoked: the next call's 401 makes the provider fetch again
        assert await client.get(RecordType.INVOICE, "INV-1") is not None
    await http.aclose()
    token_requests = [s for s in fake.seen if s["path"] == TOKEN_PATH]
    assert provider.fetches == 2 and len(token_requests) == 2 and fake.m2m.issued == 2
    form = token_requests[0]["form"]
    assert set(form) == {"grant_type", "client_assertion_type", "client_assertion"}  # no secret
    assert (form["grant_type"], form["client_assertion_type"]) == (
        "client_credentials",
        CLIENT_ASSERTION_TYPE,
    )
    assert token_requests[0]["authorization"] is None  # no Basic auth either
    api_calls = [s for s in fake.seen if s["path"] != TOKEN_PATH]
    assert all(s["authorization"].startswith("Bearer ") for s in api_calls)


async def test_a_key_that_does_not_match_the_certificate_is_refused(netsuite: Callable[..., Any]) -> None:
    fake: FakeNetSuite = await netsuite()
    fake.m2m = m2m_verifier(f"{fake.url}{TOKEN_PATH}", rsa_keys(), ec_keys())
    for other in (rsa_keys("another-rsa-key"), ec_keys("another-ec-key")):
        provider = m2m(f"{fake.url}{TOKEN_PATH}", other)  # kid of the mapped certificate, other key
        with pytest.raises(ErpAuthError) as raised:
            await provider.token()
        await provider.aclose()
        assert (raised.value.code, raised.value.status) == ("invalid_client", 400)
        assert "signature" in raised.value.message
    assert fake.m2m.issued == 0


def _form(assertion: str, **over: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": assertion,
        **over,
    }


def test_the_token_endpoint_refuses_what_netsuite_refuses() -> None:
    token_url = f"https://1234567-sb1.suitetalk.api.netsuite.com{TOKEN_PATH}"
    pair = rsa_keys()
    verifier = m2m_verifier(token_url, pair)
    now = int(time.time())
    good = {"iss": CLIENT_ID, "scope": ["rest_webservices"], "aud": token_url, "iat": now, "exp": now + 300}

    def sign(claims: dict[str, Any], algorithm: str = "PS256", **header: Any) -> str:
        return jwt.encode(
            claims, pair.private_pem, algorithm=algorithm, headers={"kid": "cert-PS256", **header}
        )

    def error(form: dict[str, str]) -> tuple[int, str]:
        status, body = verifier.issue(form)
        return status, body.get("error", "")

    status, body = verifier.issue(_form(sign(good)))
    assert status == 200 and body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert verifier.issue(_form(sign({**good, "scope": "restlets,rest_webservices"})))[0] == 200
    assert error(_form(sign(good), grant_type="password")) == (400, "unsupported_grant_type")
    assert error(_form(sign(good), client_assertion_type="urn:other")) == (400, "invalid_request")
    assert error(_form("not-a-jwt")) == (400, "invalid_request")
    assert error(_form(sign(good, kid="unknown-cert"))) == (400, "invalid_client")
    assert error(_form(sign(good, algorithm="RS256"))) == (400, "invalid_client")
    assert error(_form(sign({**good, "iss": "someone-else"}))) == (400, "invalid_client")
    assert error(_form(sign({**good, "aud": "https://elsewhere.test/token"}))) == (400, "invalid_grant")
    assert error(_form(sign({**good, "iat": now - 7200, "exp": now - 3600}))) == (400, "invalid_grant")
    assert error(_form(sign({**good, "exp": now + 3601}))) == (400, "invalid_grant")
    assert error(_form(sign({**good, "scope": ["restlets"]}))) == (400, "invalid_scope")
    no_scope = {k: v for k, v in good.items() if k != "scope"}
    assert error(_form(sign(no_scope))) == (400, "invalid_request")
    assert verifier.issued == 2


def test_the_verifier_maps_only_certificates_netsuite_accepts() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    from tests.connectors.erp.netsuite_keys import _certificate

    with pytest.raises(ValueError, match="3072 or 4096"):
        M2MVerifier("https://x.test/token", {"weak": (CLIENT_ID, _certificate(weak, "weak"))})
    assert isinstance(load_public_key(rsa_keys().certificate_pem), rsa.RSAPublicKey)


async def test_a_token_is_refetched_with_a_fresh_assertion_before_it_expires() -> None:
    token_url = f"https://1234567-sb1.suitetalk.api.netsuite.com{TOKEN_PATH}"
    verifier = m2m_verifier(token_url, ec_keys())
    assertions: list[str] = []

    def endpoint(request: httpx.Request) -> httpx.Response:
        form = dict(parse_qsl(request.content.decode()))
        assertions.append(form["client_assertion"])
        status, body = verifier.issue(form)
        return httpx.Response(status, json=body)

    # The verifier checks iat and exp against real time: the first token is fetched "an hour ago".
    clock, wall = Clock(), Clock(time.time() - 3540)
    http = httpx.AsyncClient(transport=httpx.MockTransport(endpoint))
    provider = m2m(
        token_url,
        ec_keys(),
        http=http,
        clock=clock,
        wall_clock=wall,
        refresh_margin_s=60.0,
        assertion_lifetime_s=3600,
    )
    first = await provider.token()
    clock.now, wall.now = 3539.0, wall.now + 3539.0
    assert await provider.token() == first and provider.fetches == 1
    clock.now, wall.now = 3540.0, wall.now + 1.0
    second = await provider.token()
    assert second != first and provider.fetches == 2
    iats = [jwt.decode(a, options={"verify_signature": False})["iat"] for a in assertions]
    assert iats[1] - iats[0] == 3540  # a new assertion, minted when the token was refetched
    provider.invalidate()
    assert await provider.token() not in (first, second) and provider.fetches == 3
    await http.aclose()


async def test_an_unreadable_or_missing_private_key_is_refused_per_call(tmp_path: Path) -> None:
    url = f"https://erp.test{TOKEN_PATH}"
    with pytest.raises(ErpAuthError, match="LEDGERFLOW_NETSUITE_PRIVATE_KEY_FILE"):
        await NetSuiteM2MToken(url, CLIENT_ID, "cert", None).token()
    with pytest.raises(ErpAuthError, match="INVALID_PRIVATE_KEY"):
        await NetSuiteM2MToken(url, CLIENT_ID, "cert", tmp_path / "absent.pem").token()
    (tmp_path / "broken.pem").write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ErpAuthError, match="INVALID_PRIVATE_KEY"):
        await NetSuiteM2MToken(url, CLIENT_ID, "cert", tmp_path / "broken.pem").token()


async def test_secrets_never_reach_a_repr_or_a_log_record(
    netsuite: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    fake: FakeNetSuite = await netsuite(tba=tba_verifier())
    pair = rsa_keys()
    tokens = tba()
    async with NetSuiteClient(fake.url, tokens, timeout=5.0) as client:
        await client.get(RecordType.INVOICE, "INV-1")
    async with NetSuiteClient(fake.url, tba(token_secret="wrong"), timeout=5.0) as client:
        with pytest.raises(ErpAuthError):
            await client.get(RecordType.INVOICE, "INV-1")

    m2m_fake: FakeNetSuite = await netsuite()
    m2m_fake.m2m = m2m_verifier(f"{m2m_fake.url}{TOKEN_PATH}", pair)
    provider = m2m(f"{m2m_fake.url}{TOKEN_PATH}", pair)
    access_token = await provider.token()
    assertion = provider.assertion()
    await provider.aclose()

    key_file = tmp_path / "m2m.pem"
    key_file.write_bytes(pair.private_pem)
    for name, value in (("CONSUMER_SECRET", CONSUMER_SECRET), ("TOKEN_SECRET", TOKEN_SECRET)):
        monkeypatch.setenv(f"LEDGERFLOW_NETSUITE_{name}", value)
    monkeypatch.setenv("LEDGERFLOW_NETSUITE_PRIVATE_KEY_FILE", str(key_file))
    settings = Settings()

    key_body = pair.private_pem.decode().splitlines()[5]  # a line of the key's base64
    hidden = [*SECRETS, key_body, access_token, assertion]
    objects: list[object] = [
        tokens,
        await tokens.request_auth(),
        provider,
        fake.tba,
        m2m_fake.m2m,
        pair,
        settings,
        TbaAuth(ACCOUNT, CONSUMER_KEY, CONSUMER_SECRET, TOKEN_ID, TOKEN_SECRET),
    ]
    for obj in objects:
        assert not [s for s in hidden if s in repr(obj)], type(obj).__name__
    # Nor do the TBA key and token id (identifiers, but configured as secrets) show in our reprs.
    assert not [o for o in objects if CONSUMER_KEY in repr(o) or TOKEN_ID in repr(o)]
    assert caplog.records, "the flows above log"
    for record in caplog.records:
        text = f"{record.getMessage()} {record.__dict__}"
        assert not [s for s in hidden if s in text], record.name


# -- settings -------------------------------------------------------------------------------------


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The environment without any LEDGERFLOW_ERP_* or LEDGERFLOW_NETSUITE_* of the test run."""
    import os

    for name in list(os.environ):
        if name.startswith(("LEDGERFLOW_ERP_", "LEDGERFLOW_NETSUITE_")):
            monkeypatch.delenv(name)
    return monkeypatch


def test_the_account_gives_the_host_and_the_realm(env: pytest.MonkeyPatch) -> None:
    env.setenv("LEDGERFLOW_NETSUITE_ACCOUNT", "1234567_SB1")
    s = Settings()
    assert s.erp_base_url == "https://1234567-sb1.suitetalk.api.netsuite.com"
    assert s.netsuite_realm == "1234567_SB1"
    assert s.netsuite_token_endpoint == f"https://1234567-sb1.suitetalk.api.netsuite.com{TOKEN_PATH}"
    env.setenv("LEDGERFLOW_NETSUITE_ACCOUNT", "1234567-sb1")
    assert Settings().netsuite_realm == "1234567_SB1"


def test_the_base_url_override_keeps_the_accounts_realm(env: pytest.MonkeyPatch) -> None:
    env.setenv("LEDGERFLOW_NETSUITE_ACCOUNT", "1234567_SB1")
    env.setenv("LEDGERFLOW_ERP_BASE_URL", "http://127.0.0.1:8089")
    s = Settings()
    assert (s.erp_base_url, s.netsuite_realm) == ("http://127.0.0.1:8089", "1234567_SB1")
    assert s.netsuite_token_endpoint == f"http://127.0.0.1:8089{TOKEN_PATH}"
    assert Settings(erp_base_url="http://127.0.0.1:9000").erp_base_url == "http://127.0.0.1:9000"
    env.setenv("LEDGERFLOW_NETSUITE_TOKEN_URL", "http://127.0.0.1:9999/token")
    assert Settings().netsuite_token_endpoint == "http://127.0.0.1:9999/token"
    env.delenv("LEDGERFLOW_NETSUITE_ACCOUNT")
    env.delenv("LEDGERFLOW_ERP_BASE_URL")
    assert (Settings().erp_base_url, Settings().netsuite_realm) == ("http://127.0.0.1:8089", None)


async def test_tba_from_settings_reads_secrets_from_files_and_signs(
    env: pytest.MonkeyPatch, tmp_path: Path, netsuite: Callable[..., Any]
) -> None:
    fake: FakeNetSuite = await netsuite(tba=tba_verifier())
    for name, value in (
        ("CONSUMER_KEY", CONSUMER_KEY),
        ("CONSUMER_SECRET", CONSUMER_SECRET),
        ("TOKEN_ID", TOKEN_ID),
        ("TOKEN_SECRET", TOKEN_SECRET),
    ):
        path = tmp_path / name.lower()
        path.write_text(f"{value}\n")  # as `echo … > file` or a k8s secret leaves it
        env.setenv(f"LEDGERFLOW_NETSUITE_{name}_FILE", str(path))
    env.setenv("LEDGERFLOW_NETSUITE_AUTH", "tba")
    env.setenv("LEDGERFLOW_NETSUITE_ACCOUNT", "1234567-sb1")
    env.setenv("LEDGERFLOW_ERP_BASE_URL", fake.url)
    s = Settings()
    tokens = token_provider(s)
    assert isinstance(tokens, TbaToken) and tokens.realm == "1234567_SB1"
    client = erp_client(s, tokens)
    assert isinstance(client, NetSuiteClient) and client.base_url == fake.url
    async with client:
        assert await client.get(RecordType.INVOICE, "INV-1") is not None
    assert not fake.refusals


def test_a_secret_and_its_file_together_are_refused(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("LEDGERFLOW_NETSUITE_TOKEN_SECRET", TOKEN_SECRET)
    env.setenv("LEDGERFLOW_NETSUITE_TOKEN_SECRET_FILE", str(tmp_path / "secret"))
    with pytest.raises(ValidationError, match="LEDGERFLOW_NETSUITE_TOKEN_SECRET_FILE"):
        Settings()


async def test_an_unreadable_secret_file_is_logged_and_refused_per_call(
    env: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env.setenv("LEDGERFLOW_NETSUITE_AUTH", "tba")
    env.setenv("LEDGERFLOW_NETSUITE_ACCOUNT", ACCOUNT)
    env.setenv("LEDGERFLOW_NETSUITE_CONSUMER_KEY", CONSUMER_KEY)
    env.setenv("LEDGERFLOW_NETSUITE_CONSUMER_SECRET", CONSUMER_SECRET)
    env.setenv("LEDGERFLOW_NETSUITE_TOKEN_ID", TOKEN_ID)
    env.setenv("LEDGERFLOW_NETSUITE_TOKEN_SECRET_FILE", str(tmp_path / "absent"))
    with caplog.at_level(logging.ERROR, logger="streams.erp"):
        tokens = token_provider(Settings())
    assert [getattr(r, "setting", None) for r in caplog.records] == ["LEDGERFLOW_NETSUITE_TOKEN_SECRET_FILE"]
    assert isinstance(tokens, TbaToken)
    with pytest.raises(ErpAuthError, match="LEDGERFLOW_NETSUITE_TOKEN_SECRET"):
        await tokens.request_auth()


async def test_m2m_from_settings_uses_the_key_file_and_the_derived_token_url(
    env: pytest.MonkeyPatch, tmp_path: Path, netsuite: Callable[..., Any]
) -> None:
    fake: FakeNetSuite = await netsuite()
    fake.m2m = m2m_verifier(f"{fake.url}{TOKEN_PATH}", ec_keys())
    key_file = tmp_path / "m2m.pem"
    key_file.write_bytes(ec_keys().private_pem)
    env.setenv("LEDGERFLOW_NETSUITE_AUTH", "m2m")
    env.setenv("LEDGERFLOW_NETSUITE_ACCOUNT", ACCOUNT)
    env.setenv("LEDGERFLOW_ERP_BASE_URL", fake.url)
    env.setenv("LEDGERFLOW_NETSUITE_CLIENT_ID", CLIENT_ID)
    env.setenv("LEDGERFLOW_NETSUITE_CERTIFICATE_ID", "cert-ES256")
    env.setenv("LEDGERFLOW_NETSUITE_PRIVATE_KEY_FILE", str(key_file))
    s = Settings()
    tokens = token_provider(s)
    assert isinstance(tokens, NetSuiteM2MToken)
    async with erp_client(s, tokens) as client:
        assert await client.get(RecordType.INVOICE, "INV-1") is not None
    await tokens.aclose()
    assert tokens.fetches == 1 and fake.m2m.issued == 1


def test_the_token_mode_keeps_the_bearer_providers(env: pytest.MonkeyPatch) -> None:
    env.setenv("LEDGERFLOW_ERP_TOKEN", "fixed")
    assert isinstance(token_provider(Settings()), StaticToken)
    env.setenv("LEDGERFLOW_ERP_TOKEN_URL", "https://erp.test/oauth/token")
    provider = token_provider(Settings())
    assert type(provider) is ClientCredentialsToken
