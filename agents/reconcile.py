"""Scheduled reconciliation: the leader worker runs what `ledgerflow reconcile` runs, every
LEDGERFLOW_RECONCILE_INTERVAL_S, and raises each difference as an exception."""

from __future__ import annotations

import logging

from streams.app import app
from streams.operations.reconcile import ReconcileReport, reconcile
from streams.settings import settings

STAGE = "sink"  # `ledgerflow worker --stages …` runs this module's agents and timers or not

log = logging.getLogger(__name__)


async def reconcile_with_erp() -> ReconcileReport | None:
    """One scheduled run; None when it could not run (it is tried again next interval)."""
    try:
        report = await reconcile(settings, raise_exceptions=True)
    except Exception:
        # Kafka, the ERP or a bug: the worker's stream stages must go on regardless.
        log.exception("scheduled reconciliation failed", extra={"correlation_id": "reconcile:scheduled"})
        return None
    log.info(
        "scheduled reconciliation done",
        extra={
            "correlation_id": f"reconcile:{report.run_id}",
            "differences": len(report.differences),
            "exceptions_raised": report.exceptions_raised,
            "exceptions_resolved": report.exceptions_resolved,
        },
    )
    return report


# 0 or a negative interval registers no timer at all (a zero-interval timer would spin).
if settings.reconcile_interval_s > 0:
    app.timer(interval=settings.reconcile_interval_s, on_leader=True)(reconcile_with_erp)
