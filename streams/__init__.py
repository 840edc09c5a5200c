"""Wiring: settings, the Faust app, topics, schemas, the CLI and the local broker."""
