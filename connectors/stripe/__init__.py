"""Stripe billing and payments: Event shapes and their mapping to canonical change events."""

from connectors.stripe.mapping import map_stripe_event

__all__ = ["map_stripe_event"]
