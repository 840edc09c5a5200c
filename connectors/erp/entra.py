"""Microsoft Entra ID client credentials for Business Central, through Microsoft's own MSAL.

`POST https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token` with
`scope=https://api.businesscentral.dynamics.com/.default`, authenticated by a client secret or
by a certificate (a JWT assertion MSAL signs with the certificate's key, its SHA-256 thumbprint
in `x5t#S256`). MSAL keeps the token in its cache and asks for a new one before it expires;
it is synchronous (it uses `requests`), so each acquisition runs in a worker thread.

The app registration needs the Dynamics 365 Business Central application permission
`API.ReadWrite.All` with admin consent, and a record on Business Central's "Microsoft Entra
Applications" page with its permission sets (docs/erp.md, "A Business Central environment").
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import msal
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from connectors.erp.errors import ErpAuthError, ErpTransientError

log = logging.getLogger(__name__)

BUSINESS_CENTRAL_SCOPE = "https://api.businesscentral.dynamics.com/.default"
ENTRA_AUTHORITY = "https://login.microsoftonline.com"
TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error"})


class _Session(requests.Session):
    """A requests session whose `verify` holds for every request: requests lets
    REQUESTS_CA_BUNDLE (set on many machines) replace a session's CA bundle otherwise."""

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("verify", self.verify)
        return super().request(method, url, *args, **kwargs)


class EntraToken:
    """A `TokenProvider` for Business Central: an app's token from Microsoft Entra ID.

    `certificate_file` is a PEM file holding the certificate and its (unencrypted) private key,
    the certificate uploaded to the app registration; it is read at each new token, so a
    rotated file is picked up. `ca_bundle` verifies the authority's TLS certificate against
    another CA (a corporate proxy, the stand-in), where `verify` is not left at the default."""

    def __init__(
        self,
        tenant: str,
        client_id: str,
        *,
        client_secret: str | None = None,
        certificate_file: Path | None = None,
        authority: str = ENTRA_AUTHORITY,
        scope: str = BUSINESS_CENTRAL_SCOPE,
        ca_bundle: Path | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._tenant = tenant
        self._client_id = client_id
        self._secret = client_secret
        self._certificate_file = certificate_file
        self._authority = f"{authority.rstrip('/')}/{tenant}"
        self._scope = scope
        self._verify: bool | str = str(ca_bundle) if ca_bundle else True
        self._timeout = timeout
        self._app: msal.ConfidentialClientApplication | None = None
        self._lock = threading.Lock()
        self.fetches = 0
        """Tokens Entra issued (a token MSAL had in its cache does not count)."""

    def __repr__(self) -> str:
        return f"EntraToken(tenant={self._tenant!r}, client_id={self._client_id!r}, ***)"

    async def token(self) -> str:
        return await asyncio.to_thread(self._acquire)

    def invalidate(self) -> None:
        """Business Central refused the token: forget MSAL's cache, so the next call asks anew."""
        with self._lock:
            self._app = None

    def _credential(self) -> str | dict[str, str]:
        if self._certificate_file is not None:
            try:
                pem = self._certificate_file.read_bytes()
            except OSError as exc:
                raise ErpAuthError(
                    "NO_CERTIFICATE", f"cannot read {self._certificate_file}: {exc.strerror}"
                ) from exc
            try:
                key = serialization.load_pem_private_key(pem, password=None)
                certificate = x509.load_pem_x509_certificate(pem)
            except ValueError as exc:
                raise ErpAuthError(
                    "NO_CERTIFICATE",
                    f"{self._certificate_file} needs the certificate and its unencrypted key",
                ) from exc
            private = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            public = certificate.public_bytes(serialization.Encoding.PEM)
            # With the certificate itself, MSAL signs PS256 with its SHA-256 thumbprint.
            return {"private_key": private.decode(), "public_certificate": public.decode()}
        if not self._secret:
            raise ErpAuthError(
                "NO_CREDENTIALS",
                "Business Central needs LEDGERFLOW_ERP_CLIENT_SECRET or LEDGERFLOW_BC_CERTIFICATE_FILE",
            )
        return self._secret

    def _application(self) -> msal.ConfidentialClientApplication:
        if self._app is None:
            self._app = msal.ConfidentialClientApplication(
                self._client_id,
                client_credential=self._credential(),
                authority=self._authority,
                # Only login.microsoftonline.com is known to MSAL: another authority (a national
                # cloud, the stand-in) is used as given, with no discovery call to Microsoft.
                instance_discovery=self._authority.startswith(ENTRA_AUTHORITY),
                validate_authority=self._authority.startswith(ENTRA_AUTHORITY),
                http_client=self._http(),
                timeout=self._timeout,
            )
        return self._app

    def _http(self) -> requests.Session:
        session = _Session()
        session.verify = self._verify
        return session

    def _acquire(self) -> str:
        with self._lock:
            try:
                result: dict[str, Any] = self._application().acquire_token_for_client(scopes=[self._scope])
            except requests.RequestException as exc:
                self._app = None  # the authority's metadata may not have been read: ask again
                raise ErpTransientError("TOKEN_ENDPOINT_UNREACHABLE", f"{type(exc).__name__}: {exc}") from exc
            except ValueError as exc:  # MSAL's word for an authority it could not use
                self._app = None
                raise ErpAuthError("INVALID_AUTHORITY", str(exc)) from exc
            if "access_token" in result:
                if result.get("token_source") == "identity_provider":
                    self.fetches += 1
                    log.info(
                        "erp token fetched",
                        extra={"expires_in": result.get("expires_in"), "tenant": self._tenant},
                    )
                return str(result["access_token"])
            error = str(result.get("error") or "invalid_client")
            description = str(result.get("error_description") or "Entra issued no token")
            if error in TRANSIENT_ERRORS:
                raise ErpTransientError(error, description)
            raise ErpAuthError(error, description)
