"""The ERP connection the settings describe, for the sink and for reconciliation alike."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from connectors.erp import (
    CallSlots,
    ClientCredentialsToken,
    NetSuiteClient,
    RetryPolicy,
    StaticToken,
    TokenProvider,
    call_with_retries,
)
from connectors.erp.business_central_client import BusinessCentralClient, key_of
from connectors.erp.entra import EntraToken
from connectors.erp.netsuite_auth import NetSuiteM2MToken, TbaToken
from connectors.erp.schemas import RecordType
from streams.mappings import load_mappings
from streams.settings import NetSuiteSecret, Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


def token_provider(s: Settings) -> TokenProvider:
    """The ERP credentials of LEDGERFLOW_NETSUITE_AUTH: NetSuite TBA (each request signed), NetSuite
    M2M (a JWT-assertion grant); in Business Central mode with LEDGERFLOW_ERP_CLIENT_ID, Microsoft
    Entra ID client credentials (a secret or a certificate); or, for `token`, OAuth 2.0 client
    credentials when LEDGERFLOW_ERP_TOKEN_URL is set, else the fixed token.

    Missing credentials do not fail here: the provider refuses each call with an ErpAuthError
    naming the settings, so a misconfigured sink parks its commands with the reason."""
    if s.netsuite_auth == "tba":
        return TbaToken(
            s.netsuite_account,
            _secret(s, "consumer_key"),
            _secret(s, "consumer_secret"),
            _secret(s, "token_id"),
            _secret(s, "token_secret"),
        )
    if s.netsuite_auth == "m2m":
        return NetSuiteM2MToken(
            s.netsuite_token_endpoint,
            s.netsuite_client_id,
            s.netsuite_certificate_id,
            s.netsuite_private_key_file,
            timeout=s.erp_timeout_s,
        )
    if s.erp_mode == "business-central" and s.erp_client_id:
        return EntraToken(
            s.bc_tenant or "",
            s.erp_client_id,
            client_secret=s.erp_client_secret.get_secret_value() if s.erp_client_secret else None,
            certificate_file=s.bc_certificate_file,
            authority=s.entra_authority,
            ca_bundle=s.entra_ca_bundle,
            timeout=s.erp_timeout_s,
        )
    if s.erp_token_url:
        secret = s.erp_client_secret.get_secret_value() if s.erp_client_secret else ""
        return ClientCredentialsToken(s.erp_token_url, s.erp_client_id or "", secret, timeout=s.erp_timeout_s)
    return StaticToken(s.erp_token.get_secret_value() if s.erp_token else "")


def _secret(s: Settings, name: NetSuiteSecret) -> str | None:
    """A TBA credential, or None when unset or its file unreadable (logged: the path and the
    error, never a value); TbaToken then refuses each call naming what is missing."""
    try:
        value = s.netsuite_secret(name)
    except OSError as exc:
        log.error(
            "netsuite credential file unreadable",
            extra={"setting": f"LEDGERFLOW_NETSUITE_{name.upper()}_FILE", "error": exc.strerror},
        )
        return None
    return value.get_secret_value() if value is not None else None


def erp_client(
    s: Settings, tokens: TokenProvider | None = None, slots: CallSlots | None = None
) -> NetSuiteClient | BusinessCentralClient:
    """The client for LEDGERFLOW_ERP_MODE at LEDGERFLOW_ERP_BASE_URL, with the mappings of
    LEDGERFLOW_MAPPINGS. Given the sink's `slots`, a Business Central client gathers the
    concurrent lanes' calls into shared `$batch` requests (LEDGERFLOW_BC_BATCH) and spends the
    slots per request (`BusinessCentralClient.gatherer`)."""
    tokens = tokens or token_provider(s)
    mappings = load_mappings(s.mappings)
    if s.erp_mode == "business-central":
        return BusinessCentralClient(
            s.bc_api_root,
            tokens,
            timeout=s.erp_timeout_s,
            mappings=mappings,
            payment_sign=s.bc_payment_sign,
            batch_slots=slots if s.bc_batch else None,
            batch_linger_s=s.bc_batch_linger_ms / 1000,
            operation_timeout_s=s.bc_operation_timeout_s,
        )
    return NetSuiteClient(s.erp_base_url, tokens, timeout=s.erp_timeout_s, mappings=mappings)


def erp_key(s: Settings) -> Callable[[RecordType, str], str] | None:
    """How the ERP keys ledgerflow's records when it is not by their external id (Business
    Central: `key_of`, a Code field's value); None when it keeps the external id (NetSuite)."""
    return key_of if s.erp_mode == "business-central" else None


def retry_policy(s: Settings) -> RetryPolicy:
    """How ERP calls are retried (LEDGERFLOW_ERP_MAX_ATTEMPTS, _RETRY_BASE_S, _RETRY_MAX_S): the
    sink's commands and the reads of `erp check` and `reconcile` alike."""
    return RetryPolicy(
        max_attempts=s.erp_max_attempts,
        base_delay_s=s.erp_retry_base_s,
        max_delay_s=max(s.erp_retry_base_s, min(30.0, s.erp_retry_max_s)),
        max_elapsed_s=s.erp_retry_max_s,
    )


async def read_with_retries(policy: RetryPolicy, read: Callable[[], Awaitable[T]]) -> T:
    """A read of the ERP (a SuiteQL query, a listing), retried on transient failures (a 5xx, a
    429, no answer) as the sink retries its commands: a read writes nothing, so it is always safe."""

    async def attempt(_uncertain: bool) -> T:
        return await read()

    result, _ = await call_with_retries(attempt, policy)
    return result
