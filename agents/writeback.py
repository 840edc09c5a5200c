"""The CRM write-back: `crm.writeback` → the Salesforce Account (ERP ids, invoice and payment
status), so finance sees in the CRM what the ERP confirmed.

A batch's write-backs are grouped by account and coalesced (`merge_writebacks`: the newest
value of each field wins), so an account gets one PATCH per batch however many postings it
had; accounts go in parallel, at most LEDGERFLOW_CRM_CONCURRENCY calls at a time. Transient
failures are retried (backoff with jitter, a circuit breaker when Salesforce is down). A
refusal, or retries that run out, becomes a `crm_writeback_failed` exception per write-back,
which `ledgerflow replay` re-drives. Undecodable values go to the DLQ.

The PATCH is marked `client=ledgerflow-writeback`, so its Change Data Capture echo on
`crm.changes` is dropped by the CDC adapter instead of coming back as a customer change.
With LEDGERFLOW_CRM_BASE_URL unset the write-back is off: the agent still consumes the topic
(so its offsets move on) and drops what it reads.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agents.batching import batches
from agents.outbox import Outbox, send_exception, send_to_dlq
from canonical import (
    BusinessException,
    CrmWriteback,
    ExceptionReason,
    FieldError,
    MessageRef,
    Severity,
    merge_writebacks,
)
from connectors.erp import (
    CircuitBreaker,
    ClientCredentialsToken,
    ErpAuthError,
    ErpError,
    ErpPermanentError,
    RetriesExhausted,
    RetryPolicy,
    StaticToken,
    TokenProvider,
    call_with_retries,
)
from connectors.salesforce.client import SalesforceClient
from connectors.salesforce.writeback import account_fields
from streams import headers as h
from streams.app import app
from streams.schemas import Undecodable
from streams.settings import Settings, settings
from streams.topics import crm_writeback_topic

STAGE = "sink"  # `ledgerflow worker --stages …` runs this module's agents and timers or not

if TYPE_CHECKING:
    from faust.types import EventT, StreamT

log = logging.getLogger(__name__)

GONE = frozenset({"NOT_FOUND", "ENTITY_IS_DELETED"})
"""The account no longer exists in the CRM: worth a look, not an alarm."""


@dataclass
class CrmLink:
    """The worker's connection to the CRM, shared by every account of every batch."""

    client: SalesforceClient
    tokens: TokenProvider
    policy: RetryPolicy
    breaker: CircuitBreaker
    calls: asyncio.Semaphore

    async def aclose(self) -> None:
        await self.client.aclose()
        if isinstance(self.tokens, ClientCredentialsToken):
            await self.tokens.aclose()


def crm_token_provider(s: Settings) -> TokenProvider:
    if s.crm_token_url:
        secret = s.crm_client_secret.get_secret_value() if s.crm_client_secret else ""
        return ClientCredentialsToken(s.crm_token_url, s.crm_client_id or "", secret, timeout=s.crm_timeout_s)
    return StaticToken(s.crm_token.get_secret_value() if s.crm_token else "")


def crm_link(s: Settings) -> CrmLink | None:
    """The CRM connection the settings describe; None when the write-back is off."""
    if not s.crm_base_url:
        return None
    tokens = crm_token_provider(s)
    return CrmLink(
        client=SalesforceClient(s.crm_base_url, tokens, s.crm_api_version, timeout=s.crm_timeout_s),
        tokens=tokens,
        policy=RetryPolicy(
            max_attempts=s.crm_max_attempts,
            base_delay_s=min(0.5, s.crm_retry_max_s),
            max_delay_s=max(0.5, min(30.0, s.crm_retry_max_s)),
            max_elapsed_s=s.crm_retry_max_s,
        ),
        breaker=CircuitBreaker(s.crm_breaker_failures, s.crm_breaker_open_s),
        calls=asyncio.Semaphore(s.crm_concurrency),
    )


def writeback_exception(
    writeback: CrmWriteback, error: ErpError, now: datetime, offending: MessageRef | None
) -> BusinessException:
    """A write-back the CRM refused, or could not take within the retry bound."""
    reason = ExceptionReason.CRM_WRITEBACK_FAILED
    severity, detail = Severity.ERROR, error.message
    if isinstance(error, RetriesExhausted):
        what, detail = f"failed after {error.attempts} attempt(s)", error.last_error.message
    elif isinstance(error, ErpAuthError):
        # Every write-back fails until the credentials are fixed.
        what, severity = "refused our credentials", Severity.CRITICAL
    else:
        what = "refused" if isinstance(error, ErpPermanentError) else "failed"
        severity = Severity.WARNING if error.code in GONE else Severity.ERROR
    return BusinessException(
        exception_id=h.stable_id("exception", reason.value, writeback.idempotency_key),
        reason=reason,
        severity=severity,
        message=f"CRM account {writeback.crm_account_id}: write-back {writeback.idempotency_key} {what}: "
        f"{error.code}: {detail}",
        fields=(FieldError(field="crm_account_id", problem=error.code),),
        customer_id=writeback.customer_id,
        entity_id=writeback.crm_account_id,
        correlation_id=writeback.correlation_id,
        first_seen=now,
        last_seen=now,
        attempts=max(1, error.attempts or 1),
        offending=offending,
    )


def _ref(event: EventT) -> MessageRef:
    msg = event.message
    key = event.key if isinstance(event.key, str) else None
    return MessageRef(topic=msg.topic, partition=msg.partition, offset=msg.offset, key=key)


async def update_account(
    link: CrmLink, work: list[tuple[CrmWriteback, EventT]], outbox: Outbox, now: datetime
) -> None:
    """One account's write-backs of a batch as one PATCH, retried; exceptions if it fails."""
    merged = merge_writebacks([writeback for writeback, _ in work])
    body = account_fields(merged.fields)

    async def attempt(_uncertain: bool) -> None:
        # A PATCH sets values: after an unanswered attempt, sending it again is the check.
        async with link.calls:
            await link.client.update_account(merged.crm_account_id, body, merged.correlation_id)

    extra = {
        "correlation_id": merged.correlation_id,
        "customer_id": merged.customer_id,
        "crm_account_id": merged.crm_account_id,
        "writebacks": len(work),
    }
    try:
        _, attempts = await call_with_retries(attempt, link.policy, link.breaker)
    except ErpError as exc:
        log.warning("crm write-back failed", extra={**extra, "error_code": exc.code})
        for writeback, event in work:
            await send_exception(
                outbox, writeback_exception(writeback, exc, now, _ref(event)), writeback.idempotency_key
            )
        return
    log.info("crm account updated", extra={**extra, "attempts": attempts, "fields": sorted(body)})


async def write_back_batch(link: CrmLink | None, events: list[EventT], now: datetime) -> Outbox:
    """A batch of write-backs: one PATCH per account, accounts in parallel."""
    outbox = Outbox()
    by_account: dict[str, list[tuple[CrmWriteback, EventT]]] = {}
    for event in events:
        value = event.value
        if isinstance(value, CrmWriteback):
            by_account.setdefault(value.crm_account_id, []).append((value, event))
        else:
            reason = value.reason if isinstance(value, Undecodable) else type(value).__name__
            await send_to_dlq(outbox, event, f"undecodable CRM write-back: {reason}")
    if link is None:
        if by_account:
            log.debug(
                "crm write-back is off (LEDGERFLOW_CRM_BASE_URL unset): dropped",
                extra={"writebacks": sum(map(len, by_account.values()))},
            )
        return outbox
    works = list(by_account.values())
    results = await asyncio.gather(
        *(update_account(link, work, outbox, now) for work in works), return_exceptions=True
    )
    for work, result in zip(works, results, strict=True):
        if isinstance(result, BaseException):
            # A bug must not stop the partition: the account's write-backs go to the DLQ.
            log.error("crm write-back crashed", exc_info=result, extra={"writebacks": len(work)})
            for _, event in work:
                await send_to_dlq(outbox, event, f"internal_error: {type(result).__name__}")
    return outbox


@app.agent(crm_writeback_topic)
async def write_back_to_crm(stream: StreamT[Any]) -> None:
    """`crm.writeback` → the CRM account (and exceptions for what the CRM refuses)."""
    link = crm_link(settings)
    if link is None:
        log.info("crm write-back is off: LEDGERFLOW_CRM_BASE_URL is unset")
    try:
        async for events in batches(stream):
            outbox = await write_back_batch(link, events, datetime.now(UTC))
            await outbox.commit()
    finally:
        if link is not None:
            await link.aclose()
