"""The stand-in's Microsoft Entra ID: the v2.0 token endpoint Business Central's apps get their
tokens from (client credentials), as MSAL talks to it, over TLS.

* `GET /{tenant}/v2.0/.well-known/openid-configuration`: where the token endpoint is;
* `POST /{tenant}/oauth2/v2.0/token`: `grant_type=client_credentials`, the scope
  `https://api.businesscentral.dynamics.com/.default`, and either `client_secret` or a
  certificate's JWT assertion (`client_assertion_type=…jwt-bearer`: RS256 or PS256, the
  certificate named by `x5t` or `x5t#S256`, `aud` the token endpoint, `iss` = `sub` = the app).

Refusals are Entra's (`{"error": "invalid_client", "error_description": "AADSTS7000215: …",
"error_codes": [7000215]}`). A token issued is a bearer token the Business Central routes take.
MSAL accepts only an https authority, so the stand-in serves these routes on a TLS port of its
own with a self-signed certificate (`tls_files`), which the client trusts as its CA bundle.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ConfigDict, SecretStr

from connectors.erp.entra import BUSINESS_CENTRAL_SCOPE

if TYPE_CHECKING:
    from connectors.erp.sandbox import Sandbox

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_TTL_S = 3599


class EntraApp(BaseModel):
    """An app registration the stand-in's tenant knows: its secret and/or certificates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_id: str
    client_secret: SecretStr | None = None
    certificates: tuple[str, ...] = ()
    """PEM certificates uploaded to the app registration."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _refusal(status: int, error: str, code: int, text: str) -> web.Response:
    from connectors.erp.sandbox import json_response

    body = {"error": error, "error_description": f"AADSTS{code}: {text}", "error_codes": [code]}
    return json_response(body, status, {"Cache-Control": "no-store"})


def _tenant(request: web.Request, sandbox: Sandbox) -> str | None:
    tenant = request.match_info["tenant"]
    return tenant if tenant == sandbox.config.business_central.tenant else None


async def openid_configuration(request: web.Request) -> web.StreamResponse:
    from connectors.erp.sandbox import SANDBOX, json_response

    sandbox = request.app[SANDBOX]
    tenant = _tenant(request, sandbox)
    if tenant is None:
        return _refusal(400, "invalid_tenant", 90002, f"Tenant '{request.match_info['tenant']}' not found.")
    base = f"{request.scheme}://{request.host}/{tenant}"
    return json_response(
        {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "issuer": f"{base}/v2.0",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
        }
    )


async def token(request: web.Request) -> web.StreamResponse:
    from connectors.erp.sandbox import SANDBOX, json_response

    sandbox = request.app[SANDBOX]
    tenant = _tenant(request, sandbox)
    if tenant is None:
        return _refusal(400, "invalid_tenant", 90002, f"Tenant '{request.match_info['tenant']}' not found.")
    form = {k: str(v) for k, v in (await request.post()).items()}
    if form.get("grant_type") != "client_credentials":
        return _refusal(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
    app = next((a for a in sandbox.config.entra_apps if a.client_id == form.get("client_id")), None)
    if app is None:
        return _refusal(
            400,
            "unauthorized_client",
            700016,
            f"Application with identifier '{form.get('client_id')}' was not found.",
        )
    if BUSINESS_CENTRAL_SCOPE not in form.get("scope", "").split():
        return _refusal(
            400, "invalid_scope", 70011, "The provided value for the input parameter 'scope' is not valid."
        )
    token_url = f"{request.scheme}://{request.host}{request.path}"
    refused = _client_refused(app, form, token_url)
    if refused is not None:
        return refused
    access_token, ttl = sandbox.issue_entra_token(TOKEN_TTL_S)
    body = {"token_type": "Bearer", "expires_in": ttl, "ext_expires_in": ttl, "access_token": access_token}
    return json_response(body, 200, {"Cache-Control": "no-store"})


def _client_refused(app: EntraApp, form: dict[str, str], token_url: str) -> web.Response | None:
    """None when the form authenticates the app, else Entra's refusal."""
    if "client_secret" in form:
        secret = app.client_secret.get_secret_value() if app.client_secret else None
        if secret is None or not secrets.compare_digest(form["client_secret"], secret):
            return _refusal(401, "invalid_client", 7000215, "Invalid client secret provided.")
        return None
    if form.get("client_assertion_type") != JWT_BEARER or not form.get("client_assertion"):
        return _refusal(
            401, "invalid_client", 7000218, "The request body must contain client_assertion or client_secret."
        )
    assertion = form["client_assertion"]
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError:
        return _refusal(401, "invalid_client", 50027, "JWT token is invalid or malformed.")
    for pem in app.certificates:
        certificate = x509.load_pem_x509_certificate(pem.encode())
        thumbprints = {
            ("x5t#S256", _b64url(certificate.fingerprint(hashes.SHA256()))),
            ("x5t", _b64url(certificate.fingerprint(hashes.SHA1()))),
        }
        # base64url, with or without padding (MSAL pads it; RFC 7515 does not).
        if not any(str(header.get(name, "")).rstrip("=") == value for name, value in thumbprints):
            continue
        try:
            claims = jwt.decode(
                assertion,
                certificate.public_key(),  # type: ignore[arg-type]
                algorithms=["PS256", "RS256"],
                audience=token_url,
                issuer=app.client_id,
                options={"require": ["exp", "aud", "iss", "sub"]},
            )
        except jwt.PyJWTError as exc:
            return _refusal(
                401, "invalid_client", 700027, f"Client assertion failed signature validation: {exc}."
            )
        if claims.get("sub") != app.client_id:
            return _refusal(401, "invalid_client", 700023, "The client assertion's subject is not the app.")
        return None
    return _refusal(
        401,
        "invalid_client",
        700027,
        "The certificate with the assertion's thumbprint is not registered for the app.",
    )


def tls_files(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (made once per directory): the TLS
    identity of the stand-in's Entra endpoint, and the CA bundle a client trusts it with."""
    cert_path, key_path = directory / "entra-tls.pem", directory / "entra-tls.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def routes(app: web.Application) -> None:
    app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", openid_configuration)
    app.router.add_post("/{tenant}/oauth2/v2.0/token", token)


def login_paths(tenant: str) -> tuple[str, ...]:
    """Path prefixes of the Entra routes: no bearer token is asked of them."""
    return (f"/{tenant}/v2.0/", f"/{tenant}/oauth2/")
