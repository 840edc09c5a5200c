"""The NetSuite stand-in checks NetSuite's own auth, end to end over loopback HTTP: TBA
signatures with oauthlib's server side, M2M assertions with PyJWT and the mapped certificate."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from connectors.erp import ErpAuthError, NetSuiteClient, RecordType
from connectors.erp.netsuite_auth import TOKEN_PATH, NetSuiteM2MToken, TbaToken
from connectors.erp.sandbox import M2MCertificate, SandboxServer, TbaCredential
from tests.connectors.erp.builders import post_invoice, upsert_customer
from tests.connectors.erp.netsuite_keys import ec_keys, rsa_keys
from tests.connectors.erp.support import sandbox_config
from tests.support import ErpSandbox

ACCOUNT = "1234567_SB1"
# NetSuite hands out 64 hex digits for each; oauthlib's server side checks the format too.
TBA = TbaCredential(
    consumer_key="c0" * 32,
    consumer_secret=SecretStr("cs-secret"),
    token_id="70" * 32,
    token_secret=SecretStr("ts-secret"),
)


def tba_token(token_secret: str = "ts-secret") -> TbaToken:
    return TbaToken(ACCOUNT, TBA.consumer_key, "cs-secret", TBA.token_id, token_secret)


async def test_tba_signed_calls_are_accepted_and_a_wrong_secret_is_refused(tmp_path: Path) -> None:
    config = sandbox_config(tmp_path / "erp.sqlite3", account=ACCOUNT, tba=(TBA,), tokens=())
    async with SandboxServer(config) as sandbox:
        async with NetSuiteClient(sandbox.url, tba_token()) as client:
            # PUT with ?replace=item, GET, and a SuiteQL POST with limit/offset: all signed.
            await client.deliver(upsert_customer())
            await client.deliver(post_invoice(), read_back=False)
            numbers = await client.document_numbers(RecordType.INVOICE, ["stripe-in_1"])
            assert numbers["stripe-in_1"].document_number == "INV000001"
        async with NetSuiteClient(sandbox.url, tba_token("not-the-secret")) as wrong:
            with pytest.raises(ErpAuthError) as refused:
                await wrong.get(RecordType.CUSTOMER, "cust-1")
        assert refused.value.status == 401


@pytest.mark.parametrize("keys", [rsa_keys, ec_keys], ids=["PS256", "ES256"])
async def test_m2m_assertions_are_checked_against_the_mapped_certificate(
    tmp_path: Path, keys: object
) -> None:
    pair = keys()  # type: ignore[operator]
    other = (ec_keys if keys is rsa_keys else rsa_keys)()
    certificate = M2MCertificate(
        certificate_id="cert-1", client_id="client-ledgerflow", certificate_pem=pair.certificate_pem.decode()
    )
    config = sandbox_config(tmp_path / "erp.sqlite3", m2m=(certificate,), tokens=())
    async with SandboxServer(config) as sandbox:
        token_url = f"{sandbox.url}{TOKEN_PATH}"
        tokens = NetSuiteM2MToken(token_url, "client-ledgerflow", "cert-1", pair.private_pem)
        async with NetSuiteClient(sandbox.url, tokens) as client:
            receipt = await client.deliver(upsert_customer())
            assert receipt.created and tokens.fetches == 1
        await tokens.aclose()
        # Signed with a key that is not the certificate's: no token, so no API call.
        forged = NetSuiteM2MToken(token_url, "client-ledgerflow", "cert-1", other.private_pem)
        with pytest.raises(ErpAuthError) as refused:
            await forged.token()
        assert refused.value.code == "invalid_client"
        await forged.aclose()


async def test_the_command_line_sandbox_accepts_tba_it_was_given_and_takes_its_limit(tmp_path: Path) -> None:
    """`ledgerflow erp-sandbox --tba … --concurrency-limit N` as a process: the flags reach it."""
    credential = f"{TBA.consumer_key}:cs-secret:{TBA.token_id}:ts-secret"
    args = ("--account", ACCOUNT, "--tba", credential, "--concurrency-limit", "3", "--no-transform-applies")
    sandbox = ErpSandbox(tmp_path, args).start()
    try:
        async with NetSuiteClient(sandbox.url, tba_token()) as client:
            await client.deliver(upsert_customer())
        async with NetSuiteClient(sandbox.url, tba_token("wrong")) as client:
            with pytest.raises(ErpAuthError):
                await client.deliver(upsert_customer())
        faults = httpx.get(f"{sandbox.url}/admin/faults", timeout=5).json()
        assert faults["concurrency_limit"] == 3
    finally:
        sandbox.stop()
