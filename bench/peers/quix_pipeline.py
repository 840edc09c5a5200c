"""The peer: ledgerflow's Stripe → posting-command pipeline written with Quix Streams.

The same logical steps as ledgerflow's stages 1 and 2, with Quix Streams' defaults:
decode each Stripe Event and map it to canonical change events with ledgerflow's own pure
`map_stripe_event` (so the per-event work is identical), re-key by canonical customer id with
`group_by` (a repartition topic, as ledgerflow's `ledgerflow.canonical`), then a stateful step
on RocksDB that drops duplicate event ids, keeps each invoice's lifecycle status and version,
ignores stale snapshots, and emits one PostInvoice-like command when an invoice becomes
postable. Run by `ledgerflow bench` as `python bench/peers/quix_pipeline.py`, configured by
the BENCH_* variables (see `_common.PeerConfig`).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from _common import PeerConfig, Progress
from pydantic import TypeAdapter
from quixstreams import Application, State
from quixstreams.models.serializers import Deserializer, Serializer

from canonical import ChangeEvent, Invoice, InvoiceStatus, Source, to_external_id
from connectors.errors import Rejection
from connectors.stripe import map_stripe_event

POSTABLE = frozenset({InvoiceStatus.OPEN, InvoiceStatus.PAID, InvoiceStatus.UNCOLLECTIBLE})
CHANGES = TypeAdapter(list[ChangeEvent])


def provisional_customer(source: Source, ref: str) -> str:
    """ledgerflow's canonical id for a source's customer reference (the peer has no identity
    table, so a Stripe customer is its own customer)."""
    return to_external_id("cust", source.value, ref)


def to_canonical(raw: bytes) -> list[ChangeEvent]:
    try:
        return map_stripe_event(raw, provisional_customer)
    except Rejection:
        return []  # ledgerflow dead-letters it; the bench's input holds none


def customer_of(changes: list[ChangeEvent]) -> str:
    return changes[0].customer_id if changes else "unmapped"


class ChangesSerializer(Serializer):
    """Canonical events onto the repartition topic as ledgerflow writes them (orjson)."""

    def __call__(self, value: list[ChangeEvent], ctx: Any) -> bytes:
        return orjson.dumps([change.model_dump(mode="python") for change in value])


class ChangesDeserializer(Deserializer):
    """…and back, through pydantic's strict JSON validation, as ledgerflow's stage 2 reads them."""

    def __call__(self, value: bytes, ctx: Any) -> list[ChangeEvent]:
        return CHANGES.validate_json(value)


def post_invoice_command(change: ChangeEvent, invoice: Invoice) -> bytes:
    external_id = to_external_id("stripe", invoice.invoice_id)
    return orjson.dumps(
        {
            "schema_version": 1,
            "command": "post_invoice",
            "idempotency_key": to_external_id("post_invoice", external_id),
            "customer_id": change.customer_id,
            "correlation_id": change.correlation_id,
            "document": {
                "external_id": external_id,
                "customer_external_id": change.customer_id,
                "currency": invoice.currency,
                "tran_date": invoice.issued_at.date(),
                "due_date": invoice.due_at.date() if invoice.due_at else None,
                "memo": invoice.number,
                "lines": [
                    {
                        "line_no": n,
                        "description": line.description,
                        "quantity": line.quantity,
                        "amount": line.amount,
                        "tax_amount": line.tax_amount,
                    }
                    for n, line in enumerate(invoice.lines, start=1)
                ],
                "subtotal": invoice.subtotal,
                "discount_total": invoice.discount_total,
                "tax_total": invoice.tax_total,
                "total": invoice.total,
            },
        }
    )


def build(config: PeerConfig, progress: Progress) -> Application:
    app = Application(
        broker_address=config.bootstrap,
        consumer_group=config.group,
        auto_offset_reset="earliest",
        state_dir=str(config.data_dir / "state"),
        loglevel="WARNING",
    )

    def book(changes: list[ChangeEvent], state: State) -> list[bytes]:
        """Dedup by event id, keep invoice status and version, command postable invoices."""
        commands = []
        for change in changes:
            seen = f"seen:{change.event_id}"
            if state.get(seen):
                continue
            state.set(seen, 1)
            invoice = change.payload
            if not isinstance(invoice, Invoice):
                continue
            row_key = f"invoice:{invoice.invoice_id}"
            row = state.get(row_key) or {"version": [], "status": None, "commanded": False}
            version = list(change.entity_version)
            if version <= row["version"]:
                continue  # stale: an older snapshot arriving late
            row = {**row, "version": version, "status": invoice.status.value}
            if invoice.status in POSTABLE and not row["commanded"]:
                commands.append(post_invoice_command(change, invoice))
                row["commanded"] = True
            state.set(row_key, row)
        if progress.handled(1, len(commands)):
            app.stop()
        return commands

    streams = [
        app.dataframe(app.topic(name, key_deserializer="bytes", value_deserializer="bytes"))
        for name in config.inputs
    ]
    sdf = streams[0]
    for other in streams[1:]:
        sdf = sdf.concat(other)

    def decode(raw: bytes) -> list[ChangeEvent]:
        progress.began()
        return to_canonical(raw)

    sdf = sdf.apply(decode)
    sdf = sdf.group_by(
        customer_of,
        name="customer",
        key_serializer="string",
        key_deserializer="string",
        value_serializer=ChangesSerializer(),
        value_deserializer=ChangesDeserializer(),
    )
    sdf = sdf.apply(book, stateful=True, expand=True)
    sdf.to_topic(app.topic(config.output, key_serializer="string", value_serializer="bytes"))
    return app


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    config = PeerConfig.from_env()
    progress = Progress(config)
    build(config, progress).run()


if __name__ == "__main__":
    main()
