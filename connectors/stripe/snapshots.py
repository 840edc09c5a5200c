"""Stripe objects read from the API, as the Events ledgerflow's source topics carry: a backfill's
*snapshot Event* per object (a deterministic id, so a second backfill is a duplicate and a later
webhook for the object a newer snapshot or a stale one in stage 2), and a caught-up Event with
its object re-read at the pinned version. Pure: no I/O."""

from __future__ import annotations

import hashlib
from typing import Any

BACKFILL_ID_PREFIX = "evt_lfbackfill_"

INVOICE_TYPES = {
    "draft": "invoice.created",
    "open": "invoice.finalized",
    "paid": "invoice.paid",
    "void": "invoice.voided",
    "uncollectible": "invoice.marked_uncollectible",
}
CREDIT_NOTE_TYPES = {"issued": "credit_note.created", "void": "credit_note.voided"}


def snapshot_type(obj: dict[str, Any]) -> str | None:
    """The Event type a snapshot of `obj` stands for (by its kind and status); None for an object
    a backfill does not send (an invoice payment not paid, an unknown kind or status)."""
    kind, status = obj.get("object"), obj.get("status")
    if kind == "customer":
        return "customer.deleted" if obj.get("deleted") else "customer.updated"
    if kind == "subscription":
        return "customer.subscription.updated"
    if kind == "invoice":
        return INVOICE_TYPES.get(str(status))
    if kind == "invoice_payment":
        return "invoice_payment.paid" if status == "paid" else None
    if kind == "credit_note":
        return CREDIT_NOTE_TYPES.get(str(status))
    return None


def backfill_event_id(event_type: str, object_id: str, status: str | None) -> str:
    """`evt_lfbackfill_` + a hash of (type, object id, status): the same snapshot, the same id."""
    digest = hashlib.sha256("\x1f".join((event_type, object_id, status or "")).encode()).hexdigest()
    return BACKFILL_ID_PREFIX + digest[:32]


def snapshot_event(obj: dict[str, Any], api_version: str) -> dict[str, Any] | None:
    """The snapshot Event of an object listed by a backfill (None: `snapshot_type` says skip)."""
    event_type = snapshot_type(obj)
    if event_type is None:
        return None
    status = obj.get("status")
    return {
        "id": backfill_event_id(event_type, str(obj["id"]), status if isinstance(status, str) else None),
        "object": "event",
        "type": event_type,
        "api_version": api_version,
        "created": int(obj.get("created") or 0),
        "data": {"object": obj},
        "livemode": bool(obj.get("livemode", False)),
        "pending_webhooks": 0,
        "request": {"id": None, "idempotency_key": None},
    }


def caught_up_event(event: dict[str, Any], fresh: dict[str, Any] | None, api_version: str) -> dict[str, Any]:
    """A missed Event with its own id and type, its object re-read (`fresh`; None: the object is
    gone, keep the Event's own) and the pinned `api_version` that object is rendered in."""
    data = dict(event.get("data") or {})
    if fresh is not None:
        data["object"] = fresh
        data.pop("previous_attributes", None)  # they describe the Event's version of the object
    return {**event, "data": data, "api_version": api_version}
