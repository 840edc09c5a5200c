"""Business Central's Entra ID client credentials through MSAL, against the stand-in's Entra
tenant over TLS: a secret, a certificate, the token kept and asked for again after a 401, and
Entra's refusals as typed errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from connectors.erp.business_central_client import BusinessCentralClient
from connectors.erp.entra import EntraToken
from connectors.erp.entra_sandbox import EntraApp
from connectors.erp.errors import ErpAuthError
from connectors.erp.sandbox import SandboxServer
from streams.erp import token_provider
from streams.settings import Settings
from tests.connectors.erp.builders import upsert_customer
from tests.connectors.erp.netsuite_keys import rsa_keys
from tests.connectors.erp.support import CLIENT_TIMEOUT_S, sandbox_config

CLIENT_ID = "3f2a6f0e-1b2c-4d5e-8f90-0a1b2c3d4e5f"


def certificate_pem(directory: Path, name: str) -> Path:
    """A key and its self-signed certificate in one PEM file, as one would upload the certificate
    to the app registration and keep both for ledgerflow (`LEDGERFLOW_BC_CERTIFICATE_FILE`)."""
    keys = rsa_keys(f"ledgerflow-entra-{name}")
    path = directory / f"{name}.pem"
    path.write_bytes(keys.private_pem + keys.certificate_pem)
    return path


@pytest.fixture
def registered(tmp_path: Path) -> Path:
    return certificate_pem(tmp_path, "registered")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[SandboxServer]:
    public = rsa_keys("ledgerflow-entra-registered").certificate_pem.decode()
    app = EntraApp(client_id=CLIENT_ID, client_secret=SecretStr("s3cret~value"), certificates=(public,))
    async with SandboxServer(sandbox_config(tmp_path / "erp.sqlite3", entra_apps=(app,))) as running:
        yield running


def api_root(server: SandboxServer) -> str:
    bc = server.config.business_central
    return f"{server.url}/v2.0/{bc.tenant}/{bc.environment}/api/v2.0"


def entra(server: SandboxServer, **credential: object) -> EntraToken:
    assert server.ca_file is not None
    return EntraToken(
        server.config.business_central.tenant,
        CLIENT_ID,
        authority=server.login_url,
        ca_bundle=server.ca_file,
        timeout=5.0,
        **credential,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("how", ["secret", "certificate"])
async def test_the_client_posts_with_an_entra_token_kept_until_refused(
    server: SandboxServer, registered: Path, how: str
) -> None:
    tokens = (
        entra(server, client_secret="s3cret~value")
        if how == "secret"
        else entra(server, certificate_file=registered)
    )
    client = BusinessCentralClient(api_root(server), tokens, timeout=CLIENT_TIMEOUT_S)
    try:
        await client.deliver(upsert_customer())
        await client.deliver(upsert_customer(name="Acme Holdings"))
        assert tokens.fetches == 1  # MSAL's cache kept it
        server.sandbox.revoke_tokens()  # Business Central stops taking it: 401, a new one, the retry
        await client.deliver(upsert_customer(name="Acme Group"))
        assert tokens.fetches == 2
    finally:
        await client.aclose()


async def test_entra_refusals_are_auth_errors_naming_the_reason(
    server: SandboxServer, tmp_path: Path
) -> None:
    with pytest.raises(ErpAuthError, match="AADSTS7000215"):
        await entra(server, client_secret="wrong").token()
    stranger = certificate_pem(tmp_path, "stranger")
    with pytest.raises(ErpAuthError, match="AADSTS700027"):
        await entra(server, certificate_file=stranger).token()
    with pytest.raises(ErpAuthError, match="NO_CREDENTIALS"):
        await entra(server).token()


def test_business_central_mode_with_a_client_id_uses_entra() -> None:
    s = Settings(
        erp_mode="business-central",
        bc_tenant="contoso.onmicrosoft.com",
        erp_client_id=CLIENT_ID,
        erp_client_secret=SecretStr("x"),
    )
    provider = token_provider(s)
    assert isinstance(provider, EntraToken) and "x" not in repr(provider)
    assert s.bc_api_root == (
        "https://api.businesscentral.dynamics.com/v2.0/contoso.onmicrosoft.com/production/api/v2.0"
    )
