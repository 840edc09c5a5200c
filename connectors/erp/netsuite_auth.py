"""NetSuite's own ways to authenticate REST calls, client and server side.

* **TBA** (token-based authentication, OAuth 1.0a): every request carries
  `Authorization: OAuth realm="<ACCOUNT>", oauth_consumer_key, oauth_token, oauth_signature_method=
  "HMAC-SHA256", oauth_timestamp, oauth_nonce, oauth_version="1.0", oauth_signature`. The signature
  covers method, URL and query, so `TbaAuth` makes it per request over the URL as it will be sent;
  `TbaToken` hands it to the client (`connectors.http.RequestSigner`). `TbaAuth` is an `httpx.Auth`
  too, for an httpx client (a script, a test).
* **M2M** (OAuth 2.0 client credentials with a JWT client assertion, RFC 7523): the token request
  carries a PS256/ES256 JWT signed by the integration's private key, whose certificate was mapped
  in NetSuite; no client secret. `NetSuiteM2MToken` is `ClientCredentialsToken` with that grant.

The server side (`TbaVerifier`, `M2MVerifier`) is for the NetSuite stand-in and checks
independently of the client code: oauthlib's *server* endpoint for TBA, PyJWT's decoder with the
public key of the x.509 certificate for M2M. No cryptography of our own on either side.

Secrets (consumer and token secrets, the private key) never reach a log line or a repr.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from oauthlib import oauth1

from connectors.erp.auth import ClientCredentialsToken
from connectors.erp.errors import ErpAuthError

log = logging.getLogger(__name__)

NETSUITE_API_DOMAIN = "suitetalk.api.netsuite.com"
TOKEN_PATH = "/services/rest/auth/oauth2/v1/token"
"""NetSuite's OAuth 2.0 token endpoint, under the account's REST host."""
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
REST_SCOPE = "rest_webservices"
MAX_ASSERTION_LIFETIME_S = 3600
"""NetSuite refuses an assertion whose `exp` is more than 60 minutes after its `iat`."""
ASSERTION_ALGORITHMS = ("PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
"""What NetSuite accepts for the client assertion (not RS256: PKCS#1 v1.5 is refused)."""


# -- account id forms -------------------------------------------------------------------------


def netsuite_realm(account: str) -> str:
    """The account id as TBA's realm: upper case, underscores (`1234567_SB1`)."""
    return account.strip().replace("-", "_").upper()


def netsuite_host(account: str) -> str:
    """The account's REST host: lower case, dashes (`1234567-sb1.suitetalk.api.netsuite.com`)."""
    return f"{account.strip().replace('_', '-').lower()}.{NETSUITE_API_DOMAIN}"


def netsuite_base_url(account: str) -> str:
    return f"https://{netsuite_host(account)}"


def netsuite_token_url(base_url: str) -> str:
    """The M2M token endpoint of the REST API at `base_url` (the account host, or a stand-in)."""
    return f"{base_url.rstrip('/')}{TOKEN_PATH}"


# -- TBA: the client ----------------------------------------------------------------------------


class TbaAuth(httpx.Auth):
    """Signs each request the way NetSuite TBA wants: OAuth 1.0a, HMAC-SHA256, realm = account.

    oauthlib builds the signature base string from method, URL and query (`?replace=item`, a
    SuiteQL `?limit=&offset=`: the caller has merged its params into the URL it signs). The JSON
    body is left out, as RFC 5849 §3.4.1.3 says for anything not form-encoded; so is
    `oauth_body_hash`, which NetSuite does not use."""

    def __init__(
        self, realm: str, consumer_key: str, consumer_secret: str, token_id: str, token_secret: str
    ) -> None:
        self.realm = realm
        self._client = oauth1.Client(
            consumer_key,
            client_secret=consumer_secret,
            resource_owner_key=token_id,
            resource_owner_secret=token_secret,
            signature_method=oauth1.SIGNATURE_HMAC_SHA256,
            signature_type=oauth1.SIGNATURE_TYPE_AUTH_HEADER,
            realm=realm,
        )

    def authorization(self, method: str, url: str) -> str:
        """The header for one request to `url` as sent (query included); a fresh nonce and
        timestamp per call (oauthlib makes them when none is fixed)."""
        _, signed, _ = self._client.sign(url, method)
        return str(signed["Authorization"])

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self.authorization(request.method, str(request.url))
        yield request

    def __repr__(self) -> str:
        return f"TbaAuth(realm={self.realm!r})"


class TbaToken:
    """NetSuite TBA as the clients' `TokenProvider`: it has no bearer token; it is a
    `connectors.http.RequestSigner` whose `TbaAuth` signs every request.

    Missing credentials are refused per call (like `StaticToken`): a worker that runs no sink
    must not need them, and the sink parks the command with the reason."""

    def __init__(
        self,
        account: str | None,
        consumer_key: str | None,
        consumer_secret: str | None,
        token_id: str | None,
        token_secret: str | None,
    ) -> None:
        given = {
            "LEDGERFLOW_NETSUITE_ACCOUNT": account,
            "LEDGERFLOW_NETSUITE_CONSUMER_KEY": consumer_key,
            "LEDGERFLOW_NETSUITE_CONSUMER_SECRET": consumer_secret,
            "LEDGERFLOW_NETSUITE_TOKEN_ID": token_id,
            "LEDGERFLOW_NETSUITE_TOKEN_SECRET": token_secret,
        }
        self._missing = [name for name, value in given.items() if not value]
        self.realm = netsuite_realm(account) if account else None
        self._auth = (
            TbaAuth(self.realm, consumer_key, consumer_secret, token_id, token_secret)
            if self.realm and consumer_key and consumer_secret and token_id and token_secret
            else None
        )

    async def request_auth(self) -> TbaAuth:
        if self._auth is None:
            raise ErpAuthError(
                "NO_TOKEN",
                f"NetSuite TBA is not configured (set {', '.join(self._missing)}, or their _FILE variants)",
            )
        return self._auth

    async def token(self) -> str:
        # Only a client that ignores RequestSigner would ask; say so instead of sending nothing.
        raise ErpAuthError("NO_BEARER_TOKEN", "NetSuite TBA signs each request; it has no bearer token")

    def invalidate(self) -> None:
        # Nothing to renew: the client's one retry after a 401 signs again with a new nonce,
        # and a second 401 becomes an ErpAuthError for an operator.
        return None

    def __repr__(self) -> str:
        return f"TbaToken(realm={self.realm!r})" if self._auth else f"TbaToken(<missing {self._missing}>)"


# -- M2M: the client ----------------------------------------------------------------------------


def _load_private_key(pem: bytes) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        # cryptography's messages name the problem, never the key's bytes.
        raise ErpAuthError(
            "INVALID_PRIVATE_KEY", f"the NetSuite M2M private key is unusable: {exc}"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ErpAuthError("INVALID_PRIVATE_KEY", "the NetSuite M2M private key must be RSA or EC")
    return key


_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


def assertion_algorithm(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    """The JWT `alg` for a key: PS256 for RSA, the ES variant of an EC key's curve (ES256 for P-256)."""
    if isinstance(key, rsa.RSAPrivateKey):
        return "PS256"
    alg = _EC_ALGORITHMS.get(key.curve.name)
    if alg is None:
        raise ErpAuthError("INVALID_PRIVATE_KEY", f"NetSuite accepts no EC curve {key.curve.name}")
    return alg


class NetSuiteM2MToken(ClientCredentialsToken):
    """NetSuite's M2M grant: client credentials with a JWT client assertion, no client secret.

    The assertion (header `typ` JWT, `alg` from the key, `kid` = the certificate id NetSuite
    showed when the certificate was mapped; claims `iss` = client id, `scope` = a list, as
    Oracle's own Python sample sends it, `aud` = the token URL, `iat`, `exp`) is minted afresh
    for every token request. Caching, the refresh margin, `invalidate` after a 401 and the
    token endpoint's refusals are `ClientCredentialsToken`'s; only `_grant` differs.

    `private_key` is PEM bytes, or a `Path` read at each mint, so a rotated key on disk (a
    re-mounted secret) is picked up without a restart; an unreadable or missing key is refused
    per call. `clock` drives the cache (monotonic), `wall_clock` the claims (epoch seconds)."""

    def __init__(
        self,
        token_url: str,
        client_id: str | None,
        certificate_id: str | None,
        private_key: bytes | Path | None,
        http: httpx.AsyncClient | None = None,
        *,
        scope: Sequence[str] = (REST_SCOPE,),
        assertion_lifetime_s: int = 300,
        refresh_margin_s: float = 60.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < assertion_lifetime_s <= MAX_ASSERTION_LIFETIME_S:
            raise ValueError(f"assertion_lifetime_s must be in (0, {MAX_ASSERTION_LIFETIME_S}]")
        # No client secret in M2M: the base class's Basic auth is never used (`_grant` says None).
        super().__init__(
            token_url,
            client_id or "",
            "",
            None,
            http,
            refresh_margin_s=refresh_margin_s,
            timeout=timeout,
            clock=clock,
        )
        self._certificate_id = certificate_id or ""
        self._private_key = private_key
        self._scopes = list(scope)
        self._assertion_lifetime_s = assertion_lifetime_s
        self._wall_clock = wall_clock

    def _grant(self) -> tuple[dict[str, str], tuple[str, str] | None]:
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": self.assertion(),
        }
        return form, None

    def assertion(self) -> str:
        """A newly signed client assertion (public for tests and diagnostics; it is a one-use
        credential for `assertion_lifetime_s` seconds, so it is never logged)."""
        missing = [
            name
            for name, value in (
                ("LEDGERFLOW_NETSUITE_CLIENT_ID", self._client_id),
                ("LEDGERFLOW_NETSUITE_CERTIFICATE_ID", self._certificate_id),
                ("LEDGERFLOW_NETSUITE_PRIVATE_KEY_FILE", self._private_key),
            )
            if not value
        ]
        if missing:
            raise ErpAuthError("NO_TOKEN", f"NetSuite M2M is not configured (set {', '.join(missing)})")
        key = _load_private_key(self._read_key())
        now = int(self._wall_clock())
        claims = {
            "iss": self._client_id,
            "scope": self._scopes,
            "aud": self._token_url,
            "iat": now,
            "exp": now + self._assertion_lifetime_s,
        }
        return jwt.encode(
            claims,
            key,
            algorithm=assertion_algorithm(key),
            headers={"typ": "JWT", "kid": self._certificate_id},
        )

    def _read_key(self) -> bytes:
        if isinstance(self._private_key, Path):
            try:
                return self._private_key.read_bytes()
            except OSError as exc:
                raise ErpAuthError(
                    "INVALID_PRIVATE_KEY",
                    f"cannot read the NetSuite M2M private key {self._private_key}: {exc.strerror}",
                ) from None
        assert self._private_key is not None  # checked by `assertion`
        return self._private_key

    def __repr__(self) -> str:
        return (
            f"NetSuiteM2MToken({self._token_url!r}, client_id={self._client_id!r}, "
            f"certificate_id={self._certificate_id!r})"
        )


# -- TBA: the server side (the stand-in) --------------------------------------------------------


@dataclass(frozen=True)
class TbaVerdict:
    """What `TbaVerifier.verify` decided; true when the request is authentic. `reason` is
    safe to log and to answer with (it names no secret)."""

    ok: bool
    reason: str
    consumer_key: str | None = None
    token_id: str | None = None

    def __bool__(self) -> bool:
        return self.ok


_DUMMY_CONSUMER = "dummyconsumerkey00000000"
_DUMMY_TOKEN = "dummytokenid000000000000"
_DUMMY_SECRET = "dummy-secret-never-matches"


class _TbaValidator(oauth1.RequestValidator):
    """What oauthlib's ResourceEndpoint asks of a server: who the consumers and tokens are,
    which signature methods, realms, timestamps and nonces are acceptable."""

    def __init__(
        self,
        realm: str,
        consumers: Mapping[str, str],
        tokens: Mapping[str, tuple[str, str]],
        timestamp_lifetime_s: int,
        max_nonces: int,
        enforce_ssl: bool,
    ) -> None:
        super().__init__()
        self._realm = realm
        self._consumers = dict(consumers)
        self._tokens = dict(tokens)
        self._lifetime = timestamp_lifetime_s
        self._max_nonces = max_nonces
        self._enforce_ssl = enforce_ssl
        self._seen: OrderedDict[tuple[str, str, str, str | None], int] = OrderedDict()
        """(consumer key, timestamp, nonce, token) of verified requests → their timestamp, oldest
        first: bounded by `max_nonces`, and pruned past the timestamp window (such a request is
        refused for its timestamp anyway)."""

    @property
    def allowed_signature_methods(self) -> tuple[str, ...]:
        return (oauth1.SIGNATURE_HMAC_SHA256,)

    @property
    def enforce_ssl(self) -> bool:
        # The stand-in listens on http://127.0.0.1; real NetSuite is HTTPS only.
        return self._enforce_ssl

    @property
    def timestamp_lifetime(self) -> int:
        return self._lifetime

    # NetSuite's consumer keys and token ids are 64 hex characters (oauthlib's default is
    # 20-30); its nonces are 6 to 64 characters.
    @property
    def client_key_length(self) -> tuple[int, int]:
        return 8, 128

    @property
    def access_token_length(self) -> tuple[int, int]:
        return 8, 128

    @property
    def nonce_length(self) -> tuple[int, int]:
        return 6, 64

    @property
    def dummy_client(self) -> str:
        return _DUMMY_CONSUMER

    @property
    def dummy_access_token(self) -> str:
        return _DUMMY_TOKEN

    def validate_client_key(self, client_key: str, request: Any) -> bool:
        return client_key in self._consumers

    def get_client_secret(self, client_key: str, request: Any) -> str:
        # An unknown consumer (the dummy) still gets a secret, so verification takes the same
        # path and time whether or not the key exists (oauthlib's design).
        return self._consumers.get(client_key, _DUMMY_SECRET)

    def validate_access_token(self, client_key: str, token: str, request: Any) -> bool:
        owner = self._tokens.get(token)
        return owner is not None and hmac.compare_digest(owner[1], client_key)

    def get_access_token_secret(self, client_key: str, token: str, request: Any) -> str:
        owner = self._tokens.get(token)
        if owner is None or not hmac.compare_digest(owner[1], client_key):
            return _DUMMY_SECRET
        return owner[0]

    def validate_realms(
        self, client_key: str, token: str, request: Any, uri: str | None = None, realms: Any = None
    ) -> bool:
        realm = request.realm
        return isinstance(realm, str) and hmac.compare_digest(realm, self._realm)

    def validate_timestamp_and_nonce(
        self,
        client_key: str,
        timestamp: str,
        nonce: str,
        request: Any,
        request_token: str | None = None,
        access_token: str | None = None,
    ) -> bool:
        fresh = (client_key, timestamp, nonce, access_token) not in self._seen
        if not fresh:
            request.validator_log["nonce"] = False
        return fresh

    def remember(self, request: Any) -> None:
        """Note a verified request's nonce: only verified ones, so forged requests cannot fill
        the memory or burn a real client's nonce."""
        key = (request.client_key, request.timestamp, request.nonce, request.resource_owner_key)
        self._seen[key] = int(request.timestamp)
        oldest_allowed = int(time.time()) - self._lifetime
        while self._seen and (
            len(self._seen) > self._max_nonces or next(iter(self._seen.values())) < oldest_allowed
        ):
            self._seen.popitem(last=False)


class TbaVerifier:
    """Checks NetSuite TBA requests as NetSuite does, with oauthlib's server side: HMAC-SHA256
    only, `realm` equal to the account, a timestamp within `timestamp_lifetime_s` of now, a
    nonce never seen before (bounded memory: `max_nonces`), and a signature made with the
    consumer's and the token's secrets (a token belongs to one consumer).

    `consumers`: consumer key → consumer secret; `tokens`: token id → (token secret, consumer
    key). `enforce_ssl` is off for the stand-in on http://127.0.0.1."""

    def __init__(
        self,
        account: str,
        consumers: Mapping[str, str],
        tokens: Mapping[str, tuple[str, str]],
        *,
        timestamp_lifetime_s: int = 300,
        max_nonces: int = 100_000,
        enforce_ssl: bool = False,
    ) -> None:
        self.realm = netsuite_realm(account)
        self._validator = _TbaValidator(
            self.realm, consumers, tokens, timestamp_lifetime_s, max_nonces, enforce_ssl
        )
        self._endpoint = oauth1.ResourceEndpoint(self._validator)

    def verify(self, method: str, url: str, headers: Mapping[str, str], body: str = "") -> TbaVerdict:
        """Whether this request (its full URL as received, query included) is authentic.
        `body` counts only when form-encoded, as in OAuth 1.0a."""
        try:
            ok, request = self._endpoint.validate_protected_resource_request(
                url, http_method=method, body=body, headers=dict(headers)
            )
        except ValueError:
            # oauthlib raises (rather than answers False) for an Authorization header of
            # another scheme, or a query string that is not form-encoded.
            ok, request = False, None
        if ok:
            self._validator.remember(request)
            return TbaVerdict(True, "ok", request.client_key, request.resource_owner_key)
        reason = self._reason(request)
        log.info("netsuite tba request refused", extra={"reason": reason, "method": method})
        return TbaVerdict(
            False,
            reason,
            getattr(request, "client_key", None),
            getattr(request, "resource_owner_key", None),
        )

    def _reason(self, request: Any) -> str:
        """Why oauthlib said no, as far as its answer (and the request) tells."""
        if request is None:
            return "no OAuth 1.0a Authorization header (or its parameters are malformed or repeated)"
        checks = request.validator_log
        if checks.get("nonce") is False:
            return "nonce already used (replayed request)"
        if not checks:
            # Refused before the credentials were looked at: find which mandatory check failed.
            if request.signature_method not in self._validator.allowed_signature_methods:
                return f"signature method {request.signature_method!r} is not allowed (HMAC-SHA256 only)"
            if not request.resource_owner_key:
                return "no oauth_token"
            try:
                skew = abs(time.time() - int(request.timestamp))
            except (TypeError, ValueError):
                return "oauth_timestamp is not an integer"
            if skew > self._validator.timestamp_lifetime:
                return f"oauth_timestamp is {skew:.0f} s off (allowed {self._validator.timestamp_lifetime} s)"
            return "missing or malformed OAuth parameters (version, key, token or nonce format)"
        for check, reason in (
            ("client", "unknown consumer key"),
            ("resource_owner", "unknown token, or not the consumer's"),
            ("realm", f"realm is not the account {self.realm}"),
            ("signature", "signature does not verify"),
        ):
            if not checks.get(check):
                return reason
        return "refused"

    def __repr__(self) -> str:
        return f"TbaVerifier(realm={self.realm!r})"


# -- M2M: the server side (the stand-in) --------------------------------------------------------


PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
MAX_CERTIFICATE_VALIDITY = timedelta(days=731)
"""NetSuite maps certificates valid for at most two years."""
_RSA_ALGORITHMS = ("PS256", "PS384", "PS512")


def load_public_key(pem: bytes | str, check_rules: bool = True) -> PublicKey:
    """The public key of an x.509 certificate (or of a bare public key) in PEM. With
    `check_rules`, what NetSuite demands when a certificate is mapped: RSA of 3072 or 4096 bits
    or EC on P-256/P-384/P-521, valid for at most two years."""
    data = pem.encode() if isinstance(pem, str) else pem
    if b"-----BEGIN CERTIFICATE-----" in data:
        certificate = x509.load_pem_x509_certificate(data)
        key: Any = certificate.public_key()
        validity = certificate.not_valid_after_utc - certificate.not_valid_before_utc
        if check_rules and validity > MAX_CERTIFICATE_VALIDITY:
            raise ValueError(f"certificate valid for {validity.days} days; NetSuite allows two years")
    else:
        key = serialization.load_pem_public_key(data)
    if isinstance(key, rsa.RSAPublicKey):
        if check_rules and key.key_size not in (3072, 4096):
            raise ValueError(f"RSA key of {key.key_size} bits; NetSuite wants 3072 or 4096")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _EC_ALGORITHMS:
            raise ValueError(f"EC curve {key.curve.name}; NetSuite wants P-256, P-384 or P-521")
        return key
    raise ValueError(f"{type(key).__name__} keys are not accepted; RSA or EC only")


def _algorithms_for(key: PublicKey) -> tuple[str, ...]:
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA_ALGORITHMS
    return (_EC_ALGORITHMS[key.curve.name],)


class M2MVerifier:
    """NetSuite's M2M token endpoint for the stand-in: checks a client-credentials request
    with a JWT client assertion and issues a random access token.

    `certificates`: certificate id (the assertion's `kid`) → (client id, PEM of the x.509
    certificate or public key). The assertion must be signed with the certificate's key by an
    accepted algorithm for its type (PS256/384/512 for RSA, the curve's ES for EC), and carry
    `iss` = the mapped client id, `aud` = `token_url`, `scope` holding rest_webservices (a list
    or a comma-separated string), and `iat`/`exp` at most an hour apart and not expired.

    `issue` answers (status, JSON body) the OAuth way: 200 with access_token/expires_in/
    token_type, or 400 with `error` (invalid_request, unsupported_grant_type, invalid_client,
    invalid_grant, invalid_scope) and `error_description`. The stand-in then accepts the token
    for `expires_in` seconds (`SandboxState._accept`)."""

    def __init__(
        self,
        token_url: str,
        certificates: Mapping[str, tuple[str, bytes | str]],
        *,
        token_ttl_s: int = 3600,
        leeway_s: float = 30.0,
        check_certificate_rules: bool = True,
    ) -> None:
        self.token_url = token_url
        self._keys = {
            kid: (client_id, load_public_key(pem, check_certificate_rules))
            for kid, (client_id, pem) in certificates.items()
        }
        self._ttl = token_ttl_s
        self._leeway = leeway_s
        self.issued = 0
        """Access tokens issued (observable for tests)."""

    def issue(self, form: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("grant_type") != "client_credentials":
            return _oauth_error("unsupported_grant_type", "grant_type must be client_credentials")
        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            return _oauth_error("invalid_request", f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}")
        assertion = form.get("client_assertion")
        if not assertion:
            return _oauth_error("invalid_request", "client_assertion is missing")
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.DecodeError:
            return _oauth_error("invalid_request", "client_assertion is not a JWT")
        if header.get("typ") != "JWT":
            return _oauth_error("invalid_request", "the assertion's header must say typ JWT")
        kid = header.get("kid")
        mapped = self._keys.get(kid) if isinstance(kid, str) else None
        if mapped is None:
            return _oauth_error("invalid_client", "no certificate is mapped under the assertion's kid")
        client_id, key = mapped
        alg = header.get("alg")
        if alg not in _algorithms_for(key):
            return _oauth_error("invalid_client", f"alg {alg!r} is not accepted for this certificate")
        try:
            claims = jwt.decode(
                assertion,
                key,
                algorithms=[alg],
                audience=self.token_url,
                issuer=client_id,
                leeway=self._leeway,
                options={"require": ["iss", "aud", "iat", "exp", "scope"]},
            )
        except jwt.InvalidSignatureError:
            return _oauth_error(
                "invalid_client", "the assertion's signature does not verify with the certificate"
            )
        except jwt.InvalidIssuerError:
            return _oauth_error("invalid_client", "iss is not the client id mapped to the certificate")
        except jwt.InvalidAudienceError:
            return _oauth_error("invalid_grant", "aud must be the token endpoint URL")
        except jwt.ExpiredSignatureError:
            return _oauth_error("invalid_grant", "the assertion has expired")
        except jwt.MissingRequiredClaimError as exc:
            return _oauth_error("invalid_request", f"the assertion has no {exc.claim} claim")
        except jwt.InvalidTokenError as exc:
            return _oauth_error("invalid_grant", f"the assertion is invalid: {exc}")
        lifetime = claims["exp"] - claims["iat"]
        if not isinstance(lifetime, int | float) or lifetime > MAX_ASSERTION_LIFETIME_S:
            return _oauth_error("invalid_grant", "exp may be at most 60 minutes after iat")
        if REST_SCOPE not in _scopes(claims["scope"]):
            return _oauth_error("invalid_scope", f"scope must include {REST_SCOPE}")
        self.issued += 1
        log.info("netsuite m2m token issued", extra={"kid": kid, "client_id": client_id})
        token = secrets.token_urlsafe(32)
        return 200, {"access_token": token, "expires_in": self._ttl, "token_type": "Bearer"}

    def __repr__(self) -> str:
        return f"M2MVerifier({self.token_url!r}, certificates={sorted(self._keys)!r})"


def _scopes(claim: Any) -> list[str]:
    if isinstance(claim, str):
        return [part.strip() for part in claim.split(",")]
    if isinstance(claim, list):
        return [str(part) for part in claim]
    return []


def _oauth_error(error: str, description: str) -> tuple[int, dict[str, Any]]:
    log.info("netsuite m2m token refused", extra={"error": error, "reason": description})
    return 400, {"error": error, "error_description": description}
