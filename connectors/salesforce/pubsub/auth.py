"""The Pub/Sub API's session: an OAuth 2.0 access token (client credentials against the My Domain
token URL, or the JWT bearer grant with an RS256 assertion), the instance URL, and the org id
from `/services/oauth2/userinfo` (`organization_id`) — the three `accesstoken`, `instanceurl`,
`tenantid` call metadata of every RPC."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from pydantic import SecretStr

GRANT_JWT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME_S = 300


class PubSubAuthError(Exception):
    """The org refused our credentials, or answered something that is no token (`code`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True)
class Session:
    access_token: str
    instance_url: str
    org_id: str

    def metadata(self) -> tuple[tuple[str, str], ...]:
        # grpc-python wants lowercase keys; Salesforce reads them case-insensitively
        return (
            ("accesstoken", self.access_token),
            ("instanceurl", self.instance_url),
            ("tenantid", self.org_id),
        )


@dataclass(frozen=True)
class LoginConfig:
    login_url: str
    """Client credentials: the My Domain URL (`https://<domain>.my.salesforce.com`); JWT: the
    login host, or the My Domain URL."""
    client_id: str
    client_secret: SecretStr | None = None
    jwt_username: str | None = None
    jwt_private_key: SecretStr | None = None
    """PEM RSA key whose certificate is uploaded to the External Client App (JWT bearer)."""
    jwt_audience: str | None = None
    """`aud` of the assertion (default: the login URL)."""
    timeout_s: float = 10.0


def jwt_assertion(config: LoginConfig, now: float | None = None) -> str:
    """The RS256 assertion of the JWT bearer grant: iss=client id, sub=user, aud, exp=+300 s."""
    if config.jwt_username is None or config.jwt_private_key is None:
        raise PubSubAuthError("NO_CREDENTIALS", "the JWT grant needs a username and a private key")
    issued = int(now if now is not None else time.time())
    claims = {
        "iss": config.client_id,
        "sub": config.jwt_username,
        "aud": (config.jwt_audience or config.login_url).rstrip("/"),
        "exp": issued + ASSERTION_LIFETIME_S,
    }
    return jwt.encode(claims, config.jwt_private_key.get_secret_value(), algorithm="RS256")


def token_form(config: LoginConfig) -> dict[str, str]:
    if config.jwt_username is not None:
        return {"grant_type": GRANT_JWT, "assertion": jwt_assertion(config)}
    if config.client_secret is None:
        raise PubSubAuthError("NO_CREDENTIALS", "set a client secret, or a JWT username and key")
    return {
        "grant_type": "client_credentials",
        "client_id": config.client_id,
        "client_secret": config.client_secret.get_secret_value(),
    }


def _json(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict):
        code = (
            str(body.get("error", response.status_code))
            if isinstance(body, dict)
            else str(response.status_code)
        )
        raise PubSubAuthError(code.upper(), f"{what} answered {response.status_code}")
    return body


async def login(config: LoginConfig, http: httpx.AsyncClient | None = None) -> Session:
    """A fresh session (token, instance URL, org id). Raises `PubSubAuthError`."""
    base = config.login_url.rstrip("/")
    client = http if http is not None else httpx.AsyncClient(timeout=config.timeout_s)
    try:
        answer = _json(await client.post(f"{base}/services/oauth2/token", data=token_form(config)), "token")
        token, instance = answer.get("access_token"), answer.get("instance_url")
        if not isinstance(token, str) or not isinstance(instance, str) or not token or not instance:
            raise PubSubAuthError("INVALID_RESPONSE", "the token answer has no access_token/instance_url")
        info = _json(
            await client.get(
                f"{base}/services/oauth2/userinfo", headers={"Authorization": f"Bearer {token}"}
            ),
            "userinfo",
        )
    except httpx.HTTPError as exc:
        raise PubSubAuthError("UNREACHABLE", f"{type(exc).__name__} calling {base}") from None
    finally:
        if http is None:
            await client.aclose()
    org = info.get("organization_id")
    if not isinstance(org, str) or not org:
        raise PubSubAuthError("INVALID_RESPONSE", "userinfo names no organization_id")
    return Session(token, instance.rstrip("/"), org)
