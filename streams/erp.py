"""The ERP connection the settings describe, for the sink and for reconciliation alike."""

from __future__ import annotations

from connectors.erp import (
    ClientCredentialsToken,
    CreateOnlyClient,
    NetSuiteClient,
    StaticToken,
    TokenProvider,
    make_client,
)
from streams.settings import Settings


def token_provider(s: Settings) -> TokenProvider:
    """OAuth 2.0 client credentials when LEDGERFLOW_ERP_TOKEN_URL is set, else the fixed token."""
    if s.erp_token_url:
        secret = s.erp_client_secret.get_secret_value() if s.erp_client_secret else ""
        return ClientCredentialsToken(s.erp_token_url, s.erp_client_id or "", secret, timeout=s.erp_timeout_s)
    return StaticToken(s.erp_token.get_secret_value() if s.erp_token else "")


def erp_client(s: Settings, tokens: TokenProvider | None = None) -> NetSuiteClient | CreateOnlyClient:
    """The client for LEDGERFLOW_ERP_MODE at LEDGERFLOW_ERP_BASE_URL."""
    return make_client(s.erp_mode, s.erp_base_url, tokens or token_provider(s), timeout=s.erp_timeout_s)
