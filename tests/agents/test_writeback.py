"""The CRM write-back agent against the in-process fake Salesforce: one coalesced PATCH per
account per batch, exceptions for what the CRM refuses, the DLQ for undecodable values, and
the agent loop itself with Faust's test_context."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from pydantic import SecretStr

from agents import writeback
from agents.outbox import Outbox
from agents.writeback import CrmLink, crm_link, write_back_batch
from canonical import (
    BusinessException,
    CrmWriteback,
    ExceptionReason,
    PostingOutcome,
    PostingResult,
    Severity,
    writeback_for,
)
from connectors.erp import RetryPolicy
from connectors.salesforce.sandbox import DEFAULT_TOKEN, CrmSandboxConfig, SandboxServer
from streams.schemas import Undecodable
from streams.settings import Settings
from tests.factories import T0

ACCOUNT_A = "001SIM000000001"
ACCOUNT_B = "001SIM000000002"


def confirmed(command: str, account: str, minutes: int, **over: Any) -> CrmWriteback:
    """The write-back stage 2 sends when the ERP confirms `command` for `account`'s customer."""
    fields: dict[str, Any] = {
        "idempotency_key": f"{command}-{account}-{minutes}",
        "command": command,
        "customer_id": f"cust-crm-{account}",
        "correlation_id": f"corr-{account}-{minutes}",
        "outcome": PostingOutcome.POSTED,
        "erp_internal_id": f"ns-{minutes}",
        "document_number": f"DOC{minutes:06d}",
        "posted_at": T0 + timedelta(minutes=minutes),
    }
    fields.update(over)
    wb = writeback_for(PostingResult(**fields), account)
    assert wb is not None
    return wb


def event(value: Any, offset: int, key: str | None = None) -> Any:
    crm_account = value.crm_account_id if isinstance(value, CrmWriteback) else key
    message = mock.Mock(topic="crm.writeback", partition=0, offset=offset, value=b"raw")
    return mock.Mock(value=value, key=crm_account, message=message, headers={})


@pytest.fixture
def sent() -> Iterator[list[tuple[str, Any, dict[str, bytes]]]]:
    """Everything a batch sends (exceptions, DLQ entries), instead of a broker."""
    out: list[tuple[str, Any, dict[str, bytes]]] = []

    async def record(self: Outbox, topic: Any, key: Any, value: Any, headers: dict[str, bytes]) -> None:
        out.append((str(topic.get_topic_name()), value, headers))

    with mock.patch.object(Outbox, "send", record):
        yield out


@pytest.fixture
async def fake() -> AsyncIterator[SandboxServer]:
    async with SandboxServer(CrmSandboxConfig(seed=5)) as server:
        yield server


def settings_for(fake: SandboxServer, **over: Any) -> Settings:
    fields: dict[str, Any] = {
        "crm_base_url": fake.url,
        "crm_token": SecretStr(DEFAULT_TOKEN),
        "crm_timeout_s": 2.0,
        "crm_max_attempts": 3,
        "crm_retry_max_s": 1.0,
    }
    fields.update(over)
    return Settings(**fields)


@pytest.fixture
async def link(fake: SandboxServer) -> AsyncIterator[CrmLink]:
    made = crm_link(settings_for(fake))
    assert made is not None
    # Retries in these tests need not wait: the fake's faults are counted, not timed.
    made.policy = RetryPolicy(max_attempts=3, base_delay_s=0.0, max_delay_s=0.0)
    yield made
    await made.aclose()


async def test_one_patch_per_account_per_batch_with_the_newest_value_of_each_field(
    fake: SandboxServer, link: CrmLink, sent: list[Any]
) -> None:
    batch = [
        event(confirmed("upsert_customer", ACCOUNT_A, 1, document_number="CUST000001"), 1),
        event(confirmed("post_invoice", ACCOUNT_B, 2), 2),
        event(confirmed("post_invoice", ACCOUNT_A, 3), 3),
        event(confirmed("apply_payment", ACCOUNT_A, 4), 4),
        event(confirmed("void_invoice", ACCOUNT_B, 5), 5),
        event(confirmed("post_invoice", ACCOUNT_A, 2), 6),  # an older confirmation, late
    ]
    outbox = await write_back_batch(link, batch, T0)
    await outbox.commit()

    accounts = fake.sandbox.accounts
    assert fake.sandbox.writes == 2
    assert (accounts[ACCOUNT_A].writes, accounts[ACCOUNT_B].writes) == (1, 1)
    assert accounts[ACCOUNT_A].fields == {
        "Ledgerflow_ERP_Customer_Id__c": "ns-1",
        "Ledgerflow_ERP_Customer_Number__c": "CUST000001",
        "Ledgerflow_Last_Invoice_Number__c": "DOC000003",  # the late DOC000002 did not win
        "Ledgerflow_Last_Invoice_Status__c": "posted",
        "Ledgerflow_Last_Payment_Status__c": "paid",
        "Ledgerflow_ERP_Synced_At__c": "2026-03-01T12:04:00.000Z",
    }
    assert accounts[ACCOUNT_B].fields["Ledgerflow_Last_Invoice_Status__c"] == "voided"
    assert accounts[ACCOUNT_B].fields["Ledgerflow_Last_Invoice_Number__c"] == "DOC000005"
    calls = {r["path"].rsplit("/", 1)[-1]: r for r in fake.sandbox.requests}
    assert calls[ACCOUNT_A]["correlation_id"] == f"corr-{ACCOUNT_A}-4"  # the newest write-back's
    assert {r["call_options"] for r in fake.sandbox.requests} == {"client=ledgerflow-writeback"}
    assert sent == []


async def test_a_refused_update_is_an_exception_per_writeback_and_other_accounts_go_on(
    fake: SandboxServer, link: CrmLink, sent: list[Any]
) -> None:
    fake.sandbox.deleted.add(ACCOUNT_A)  # merged away in the CRM meanwhile
    batch = [
        event(confirmed("post_invoice", ACCOUNT_A, 1), 10),
        event(confirmed("apply_payment", ACCOUNT_A, 2), 11),
        event(confirmed("post_invoice", ACCOUNT_B, 3), 12),
    ]
    await write_back_batch(link, batch, T0)
    assert fake.sandbox.writes == 1 and ACCOUNT_B in fake.sandbox.accounts
    exceptions = [value for _, value, _ in sent if isinstance(value, BusinessException)]
    assert [e.offending.offset for e in exceptions if e.offending] == [10, 11]
    for exc, wb in zip(exceptions, [batch[0].value, batch[1].value], strict=True):
        assert exc.reason is ExceptionReason.CRM_WRITEBACK_FAILED
        assert exc.severity is Severity.WARNING  # the account is gone: a look, not an alarm
        assert exc.customer_id == wb.customer_id and exc.entity_id == ACCOUNT_A
        assert "refused: ENTITY_IS_DELETED" in exc.message
    assert len({e.exception_id for e in exceptions}) == 2


async def test_retries_ride_out_a_503_and_give_up_as_an_exception_when_it_lasts(
    fake: SandboxServer, link: CrmLink, sent: list[Any]
) -> None:
    fake.sandbox.faults = fake.sandbox.faults.model_copy(update={"burst_503": 2})
    await write_back_batch(link, [event(confirmed("post_invoice", ACCOUNT_A, 1), 1)], T0)
    assert fake.sandbox.writes == 1 and sent == []

    fake.sandbox.faults = fake.sandbox.faults.model_copy(update={"burst_503": 3})
    await write_back_batch(link, [event(confirmed("apply_payment", ACCOUNT_A, 2), 2)], T0)
    [(topic, exc, _)] = sent
    assert topic.endswith("ledgerflow.exceptions") and isinstance(exc, BusinessException)
    assert exc.severity is Severity.ERROR and exc.attempts == 3
    assert "failed after 3 attempt(s): SERVER_UNAVAILABLE" in exc.message
    assert fake.sandbox.writes == 1


async def test_refused_credentials_are_a_critical_exception(fake: SandboxServer, sent: list[Any]) -> None:
    wrong = crm_link(settings_for(fake, crm_token=SecretStr("revoked")))
    assert wrong is not None
    try:
        await write_back_batch(wrong, [event(confirmed("post_invoice", ACCOUNT_A, 1), 1)], T0)
    finally:
        await wrong.aclose()
    [(_, exc, _)] = sent
    assert isinstance(exc, BusinessException) and exc.severity is Severity.CRITICAL
    assert "refused our credentials: INVALID_SESSION_ID" in exc.message
    assert fake.sandbox.writes == 0


async def test_undecodable_values_go_to_the_dlq_and_an_unset_crm_drops_the_rest(
    fake: SandboxServer, sent: list[Any]
) -> None:
    batch = [
        event(Undecodable(raw=b"{}", reason="fields: Field required"), 1, key=ACCOUNT_A),
        event(confirmed("post_invoice", ACCOUNT_A, 1), 2),
    ]
    assert crm_link(Settings(crm_base_url=None)) is None
    await write_back_batch(None, batch, T0)
    [(topic, raw, headers)] = sent
    assert topic.endswith("ledgerflow.dlq") and raw == b"raw"
    assert headers["x-dlq-reason"] == b"undecodable CRM write-back: fields: Field required"
    assert list(fake.sandbox.requests) == []


async def test_agent_coalesces_a_batch_into_one_patch_per_account(fake: SandboxServer) -> None:
    """The agent loop with Faust's test_context: no broker, the fake Salesforce over HTTP."""
    dead: list[str] = []

    async def fake_dlq(outbox: object, event: object, reason: str) -> None:
        dead.append(reason)

    values = [
        confirmed("upsert_customer", ACCOUNT_A, 1),
        confirmed("upsert_customer", ACCOUNT_B, 1),
        confirmed("post_invoice", ACCOUNT_A, 2),
        confirmed("apply_payment", ACCOUNT_A, 3),
        confirmed("post_invoice", ACCOUNT_B, 4),
    ]
    window = Settings(batch_window_ms=300)  # every put below lands in one batch
    with (
        mock.patch.object(writeback, "settings", settings_for(fake)),
        mock.patch("agents.batching.settings", window),
        mock.patch.object(writeback, "send_to_dlq", side_effect=fake_dlq),
    ):
        async with writeback.write_back_to_crm.test_context() as agent:
            for value in values:
                await agent.put(value, key=value.crm_account_id, wait=False)
            await agent.put(Undecodable(raw=b"[]", reason="<root>: not an object"), key=ACCOUNT_A, wait=False)
            for _ in range(300):
                if fake.sandbox.writes >= 2 and dead:
                    break
                await asyncio.sleep(0.01)
    assert fake.sandbox.writes == 2
    a, b = fake.sandbox.accounts[ACCOUNT_A], fake.sandbox.accounts[ACCOUNT_B]
    assert (a.writes, b.writes) == (1, 1)
    assert a.fields["Ledgerflow_Last_Payment_Status__c"] == "paid"
    assert a.fields["Ledgerflow_ERP_Customer_Id__c"] == "ns-1"
    assert b.fields["Ledgerflow_Last_Invoice_Number__c"] == "DOC000004"
    assert dead == ["undecodable CRM write-back: <root>: not an object"]
