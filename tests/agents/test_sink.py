"""The sink's lanes against a scripted ERP: order, retries, parking, queueing, the ledger.
(The real HTTP path is tested against the sandbox in tests/integration/test_erp_delivery.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import pytest

from agents.outbox import Outbox
from agents.sink import ErpLink, Lane, run_lanes
from canonical import BusinessException, ErpCommand, ExceptionReason, PostingResult
from connectors.erp import (
    CallSlots,
    CircuitBreaker,
    ErpDocument,
    ErpPermanentError,
    ErpReceipt,
    ErpTransientError,
    ErpUncertainError,
    RecordType,
    RetryPolicy,
)
from tables.ledger import CustomerLedger, DeliveryState
from tests.agents.test_customers import CID, account_change
from tests.factories import T0


@dataclass
class ScriptedErp:
    """Answers each command with the next scripted outcome for its key (default: success).
    Upserts come back without a number, as NetSuite's do; `document_numbers` answers with the
    next scripted outcome of its queue (default: every record asked for)."""

    script: dict[str, list[Exception]] = field(default_factory=dict)
    calls: list[tuple[str, bool]] = field(default_factory=list)
    queries: list[tuple[str, ...]] = field(default_factory=list)
    query_script: list[Exception | dict[str, Any]] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)

    async def deliver(
        self, command: ErpCommand, uncertain: bool = False, read_back: bool = True
    ) -> ErpReceipt:
        key = command.idempotency_key
        self.calls.append((key, uncertain))
        planned = self.script.get(key)
        if planned:
            raise planned.pop(0)
        return ErpReceipt(
            record_type=RecordType.CUSTOMER,
            external_id=key,
            erp_internal_id=f"id-{len(self.calls)}",
            document_number=None if not read_back else f"DOC-{len(self.calls)}",
            created=None,
        )

    async def document_numbers(self, record_type: Any, external_ids: Any, correlation_id: Any = None) -> Any:
        self.queries.append(tuple(external_ids))
        planned = self.query_script.pop(0) if self.query_script else None
        if isinstance(planned, Exception):
            raise planned
        return (
            planned
            if planned is not None
            else {
                e: ErpDocument(
                    record_type=record_type,
                    external_id=e,
                    erp_internal_id="",
                    document_number=f"N-{e}",
                    body={},
                )
                for e in external_ids
            }
        )

    async def get(self, record_type: Any, external_id: str, correlation_id: Any = None) -> ErpDocument:
        self.reads.append(external_id)
        return ErpDocument(
            record_type=record_type,
            external_id=external_id,
            erp_internal_id="erp-get",
            document_number=f"G-{external_id}",
            body={},
        )

    async def list(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []

    async def aclose(self) -> None:
        pass


def commands(n: int) -> list[ErpCommand]:
    """n distinct UpsertCustomer commands of one customer (their order is what is checked)."""
    from agents.customers import decide_customer
    from streams.mappings import load_mappings

    out = []
    for i in range(n):
        decision = decide_customer(
            None, account_change(name=f"Acme {i}", event_id=f"sf-{i}"), load_mappings(None), T0
        )
        assert decision.upsert is not None
        out.append(decision.upsert)
    return out


@pytest.fixture
def sent() -> Iterator[list[Any]]:
    """Everything the lanes send (results and exceptions), instead of a broker."""
    out: list[Any] = []

    async def record(self: Outbox, topic: Any, key: Any, value: Any, headers: Any) -> None:
        out.append(value)

    with mock.patch.object(Outbox, "send", record):
        yield out


def lane(
    erp: ScriptedErp, work: list[ErpCommand], ledger: CustomerLedger | None = None, **policy: Any
) -> Lane:
    link = ErpLink(
        client=erp,
        policy=RetryPolicy(max_attempts=3, base_delay_s=0.0, max_delay_s=0.0),
        breaker=CircuitBreaker(100, 1.0),
        calls=CallSlots(1),
        looks_first=False,
    )
    event = mock.Mock(message=mock.Mock(topic="erp.commands", partition=0, offset=1), key=CID)
    return Lane(CID, ledger or CustomerLedger(customer_id=CID), link, Outbox(), [(c, event) for c in work])


async def drive(*lanes: Lane) -> None:
    """A batch of these lanes, as the agent runs it: lanes, then the numbers, then results."""
    await run_lanes(lanes[0].link, list(lanes), T0)


def results(sent: list[Any]) -> list[tuple[str, str]]:
    return [(r.idempotency_key, r.outcome.value) for r in sent if isinstance(r, PostingResult)]


async def test_commands_go_in_order_and_transient_failures_are_retried(sent: list[Any]) -> None:
    work = commands(3)
    erp = ScriptedErp({work[1].idempotency_key: [ErpTransientError("HTTP_503", "down", retry_after=None)]})
    run = lane(erp, work)
    await drive(run)
    keys = [c.idempotency_key for c in work]
    assert erp.calls == [(keys[0], False), (keys[1], False), (keys[1], True), (keys[2], False)]
    assert results(sent) == [(k, "posted") for k in keys]
    assert all(run.ledger.entries[k].state is DeliveryState.POSTED for k in keys)
    assert run.ledger.entries[keys[1]].attempts == 2


async def test_a_confirmed_command_is_never_sent_again_only_its_result(sent: list[Any]) -> None:
    [cmd] = commands(1)
    erp = ScriptedErp()
    first = lane(erp, [cmd])
    await drive(first)
    again = lane(erp, [cmd], first.ledger)
    await drive(again)
    assert len(erp.calls) == 1
    assert results(sent) == [(cmd.idempotency_key, "posted")] * 2


async def test_a_refusal_is_an_exception_with_the_erps_message_and_the_lane_goes_on(sent: list[Any]) -> None:
    work = commands(2)
    refusal = ErpPermanentError("INVALID_KEY_OR_REF", "Invalid customer reference key cust-x.", 400)
    erp = ScriptedErp({work[0].idempotency_key: [refusal]})
    run = lane(erp, work)
    await drive(run)
    assert results(sent) == [(work[0].idempotency_key, "failed"), (work[1].idempotency_key, "posted")]
    [exc] = [e for e in sent if isinstance(e, BusinessException)]
    assert exc.reason is ExceptionReason.ERP_REJECTED and "Invalid customer reference" in exc.message
    assert run.ledger.entries[work[0].idempotency_key].state is DeliveryState.REJECTED
    assert run.ledger.blocked_on is None


async def test_exhausted_retries_park_the_lane_and_later_commands_queue_in_order(sent: list[Any]) -> None:
    work = commands(3)
    down = [ErpTransientError("HTTP_503", "maintenance", retry_after=None) for _ in range(3)]
    erp = ScriptedErp({work[0].idempotency_key: down})
    parked = lane(erp, work)
    await drive(parked)
    assert parked.ledger.blocked_on == work[0]
    assert [c.idempotency_key for c in parked.ledger.queued] == [c.idempotency_key for c in work[1:]]
    assert [k for k, _ in erp.calls] == [work[0].idempotency_key] * 3  # nothing overtook it
    [exc] = [e for e in sent if isinstance(e, BusinessException)]
    assert exc.reason is ExceptionReason.ERP_UNAVAILABLE

    # The retry timer re-sends the blocked command; now the ERP takes it and the queue drains.
    erp.calls.clear()
    retried = lane(erp, [work[0]], parked.ledger)
    retried.uncertain = {work[0].idempotency_key}
    await drive(retried)
    assert [k for k, _ in erp.calls] == [c.idempotency_key for c in work]
    assert erp.calls[0][1] is True  # it may have been written before: look first
    assert retried.ledger.blocked_on is None and retried.ledger.queued == ()
    assert all(e.state is DeliveryState.POSTED for e in retried.ledger.entries.values())


async def test_an_uncertain_outcome_makes_the_next_attempt_look_first(sent: list[Any]) -> None:
    [cmd] = commands(1)
    erp = ScriptedErp(
        {cmd.idempotency_key: [ErpUncertainError("TIMEOUT", "read timed out", retry_after=None)]}
    )
    await drive(lane(erp, [cmd]))
    assert erp.calls == [(cmd.idempotency_key, False), (cmd.idempotency_key, True)]


async def test_a_result_carries_its_commands_ready_time() -> None:
    from streams import metrics

    [command] = commands(1)
    handed: list[tuple[Any, dict[str, bytes]]] = []

    async def send(self: Outbox, topic: Any, key: Any, value: Any, headers: Any) -> None:
        handed.append((value, dict(headers)))

    run = lane(ScriptedErp(), [command])
    event = mock.Mock(
        message=mock.Mock(topic="erp.commands", partition=0, offset=1),
        key=CID,
        value=command,
        headers={metrics.SOURCE_TIMESTAMP: b"1767229200000", metrics.READY_TIMESTAMP: b"1767229202500"},
    )
    run.work = [(command, event)]
    with mock.patch.object(Outbox, "send", send):
        await drive(run)
    [(result, headers)] = handed
    assert isinstance(result, PostingResult) and result.outcome.value == "posted"
    assert headers[metrics.READY_TIMESTAMP] == b"1767229202500"


async def test_a_batchs_numbers_are_read_in_one_query_before_its_results_go_out(sent: list[Any]) -> None:
    work = commands(3)
    erp = ScriptedErp()
    first, second = lane(erp, work[:2]), lane(erp, work[2:])
    await drive(first, second)
    keys = [c.idempotency_key for c in work]
    assert erp.queries == [tuple(keys)]  # both lanes' upserts, one query
    posted = [r for r in sent if isinstance(r, PostingResult)]
    assert [(r.idempotency_key, r.document_number) for r in posted] == [(k, f"N-{k}") for k in keys]
    assert first.ledger.entries[keys[0]].document_number == f"N-{keys[0]}"
    assert first.ledger.entries[keys[0]].erp_internal_id == "id-1"  # the upsert's, kept


async def test_a_number_the_erp_cannot_give_leaves_its_command_posted_and_never_resent(
    sent: list[Any],
) -> None:
    """The upserts went through: re-sending one later could write it over a newer version."""
    work = commands(2)
    down = ErpTransientError("HTTP_503", "maintenance", retry_after=None)
    erp = ScriptedErp(query_script=[down] * 3)  # the query's retries run out
    run = lane(erp, work)
    await drive(run)
    keys = [c.idempotency_key for c in work]
    assert [k for k, _ in erp.calls] == keys and len(erp.queries) == 3 and erp.reads == []
    posted = [r for r in sent if isinstance(r, PostingResult)]
    assert [(r.idempotency_key, r.outcome.value, r.document_number) for r in posted] == [
        (k, "posted", None) for k in keys
    ]
    assert run.ledger.blocked_on is None and run.ledger.queued == ()
    assert not [e for e in sent if isinstance(e, BusinessException)]


async def test_a_record_missing_from_the_answer_is_read_on_its_own(sent: list[Any]) -> None:
    [cmd] = commands(1)
    erp = ScriptedErp(query_script=[{}])
    run = lane(erp, [cmd])
    await drive(run)
    assert erp.reads == [cmd.idempotency_key]
    assert run.ledger.entries[cmd.idempotency_key].document_number == f"G-{cmd.idempotency_key}"
    [result] = [r for r in sent if isinstance(r, PostingResult)]
    assert result.document_number == f"G-{cmd.idempotency_key}"


async def test_a_bug_in_the_read_does_not_stop_the_batch(sent: list[Any]) -> None:
    [cmd] = commands(1)
    erp = ScriptedErp(query_script=[KeyError("externalid")])
    await drive(lane(erp, [cmd]))
    assert results(sent) == [(cmd.idempotency_key, "posted")]
