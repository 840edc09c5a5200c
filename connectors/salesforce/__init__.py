"""Salesforce Change Data Capture: event shapes and their mapping to canonical change events."""

from connectors.salesforce.mapping import ResyncRequired, map_cdc_event

__all__ = ["ResyncRequired", "map_cdc_event"]
