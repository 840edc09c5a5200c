"""Sending what an agent decided: the DLQ for bad input, exceptions for business failures."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from canonical import BusinessException
from streams import headers as h
from streams.topics import dlq_topic, exceptions_topic

if TYPE_CHECKING:
    from faust.types import EventT

log = logging.getLogger(__name__)


async def send_to_dlq(event: EventT, reason: str) -> None:
    """The message exactly as it came, with why and where it came from."""
    msg = event.message
    correlation = h.correlation_of(event.headers, msg.topic, str(msg.partition), str(msg.offset))
    causation = f"{msg.topic}/{msg.partition}/{msg.offset}"
    log.warning(
        "dead-lettered message",
        extra={"correlation_id": correlation, "source": causation, "reason": reason},
    )
    await dlq_topic.send(
        key=event.key,
        value=msg.value,
        headers=h.outgoing(
            correlation,
            causation,
            **{
                h.DLQ_REASON: reason,
                h.SOURCE_TOPIC: msg.topic,
                h.SOURCE_PARTITION: str(msg.partition),
                h.SOURCE_OFFSET: str(msg.offset),
            },
        ),
    )


async def send_exception(exc: BusinessException, causation_id: str) -> None:
    log.info(
        "business exception raised",
        extra={
            "correlation_id": exc.correlation_id,
            "customer_id": exc.customer_id,
            "reason": exc.reason.value,
            "exception_id": exc.exception_id,
        },
    )
    await exceptions_topic.send(
        key=exc.customer_id or exc.entity_id,
        value=exc,
        headers=h.outgoing(exc.correlation_id, causation_id),
    )
