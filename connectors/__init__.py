"""Connectors: each platform's own shapes, and pure mappings to and from the canonical model."""
