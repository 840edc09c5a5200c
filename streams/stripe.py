"""The Stripe API client of a process: built from the settings, once, when first needed.

Stage 1 reads Stripe when an Event cannot be trusted as it came (an invoice whose lines are
paginated) and when an invoice payment names an invoice ledgerflow has not seen; the backfill
and catch-up commands read it throughout. Without LEDGERFLOW_STRIPE_API_KEY there is none.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from connectors.stripe.client import StripeApi

if TYPE_CHECKING:
    from streams.settings import Settings

_shared: StripeApi | None = None


def stripe_api(s: Settings) -> StripeApi | None:
    """A new client for `s`, or None without an API key."""
    # The SDK and httpx log every request (its URL, query included) at INFO: our own lines
    # say what was read; theirs only at DEBUG.
    if s.log_level.lower() != "debug":
        for name in ("stripe", "httpx"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if s.stripe_api_key is None:
        return None
    return StripeApi(s.stripe_api_key, s.stripe_api_version, s.stripe_api_base, s.stripe_requests_per_s)


def shared_stripe_api(s: Settings) -> StripeApi | None:
    """The worker's one client (created on first use, inside the running event loop)."""
    global _shared
    if _shared is None:
        _shared = stripe_api(s)
    return _shared
