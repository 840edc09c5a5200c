"""BatchGatherer on its own (a recorded `send`): what goes in one `$batch` request, and what
each caller gets back. The Business Central client's use of it, over real HTTP, is in
test_business_central_client.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from connectors.erp import CallSlots, CircuitBreaker, ErpPermanentError, ErpTransientError
from connectors.erp.odata_batch import BatchGatherer, Operation


class Recorder:
    """A `send` that answers every operation 200 with its own url, and records the requests."""

    def __init__(self, refuse_when: int = 0, fail: BaseException | None = None) -> None:
        self.sent: list[list[Operation]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.refuse_when = refuse_when
        self.fail = fail

    async def __call__(self, operations: list[Operation]) -> list[Operation]:
        self.sent.append(operations)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)
        finally:
            self.in_flight -= 1
        if self.fail is not None:
            raise self.fail
        if self.refuse_when and len(operations) >= self.refuse_when:
            raise ErpPermanentError("BadRequest", "the batch is malformed", 400)
        return [{"id": op["id"], "status": 200, "body": {"url": op["url"]}} for op in operations]


def group(name: str, size: int = 1) -> list[Operation]:
    ops: list[Operation] = [{"id": "a", "method": "POST", "url": f"{name}/a"}]
    ops += [
        {"id": f"b{i}", "method": "GET", "url": f"{name}/b{i}", "dependsOn": ["a"]} for i in range(size - 1)
    ]
    return ops


async def test_concurrent_groups_share_one_request_and_get_their_own_answers() -> None:
    send = Recorder()
    gatherer = BatchGatherer(send, CallSlots(5))
    answers = await asyncio.gather(*(gatherer.run(group(f"c{i}", 2)) for i in range(30)))
    assert len(send.sent) == 1 and len(send.sent[0]) == 60
    for i, (first, second) in enumerate(answers):
        # Ids as the caller gave them; answers its own.
        assert (first["id"], first["body"]["url"]) == ("a", f"c{i}/a")
        assert (second["id"], second["body"]["url"]) == ("b0", f"c{i}/b0")
    # In the request, ids are unique and a group's dependsOn names its own operation.
    sent = send.sent[0]
    assert len({op["id"] for op in sent}) == 60
    assert sent[1]["dependsOn"] == [sent[0]["id"]] and sent[3]["dependsOn"] == [sent[2]["id"]]


async def test_a_request_holds_at_most_100_operations_and_never_splits_a_group() -> None:
    send = Recorder()
    gatherer = BatchGatherer(send, CallSlots(5))
    await asyncio.gather(*(gatherer.run(group(f"c{i}", 3)) for i in range(40)))  # 120 operations
    assert [len(ops) for ops in send.sent] == [99, 21]
    with pytest.raises(ValueError):
        await gatherer.run(group("big", 101))


async def test_requests_in_flight_stay_within_the_slots() -> None:
    send = Recorder()
    gatherer = BatchGatherer(send, CallSlots(2), most=3)
    await asyncio.gather(*(gatherer.run(group(f"c{i}")) for i in range(20)))
    assert send.most_in_flight == 2
    assert sum(len(ops) for ops in send.sent) == 20 and all(len(ops) <= 3 for ops in send.sent)


async def test_a_lost_answer_fails_every_group_with_one_error_the_breaker_counts_once() -> None:
    lost = ErpTransientError("TIMEOUT", "no answer")
    gatherer = BatchGatherer(Recorder(fail=lost), CallSlots(5))
    results = await asyncio.gather(*(gatherer.run(group(f"c{i}")) for i in range(10)), return_exceptions=True)
    assert all(r is lost for r in results)
    breaker = CircuitBreaker(failure_threshold=2)
    for r in results:
        assert isinstance(r, BaseException)
        breaker.record_failure(r)
    assert breaker.consecutive_failures == 1


async def test_a_request_refused_whole_is_sent_again_one_group_each() -> None:
    send = Recorder(refuse_when=3)  # a request of three operations or more is refused
    gatherer = BatchGatherer(send, CallSlots(5))
    results: Any = await asyncio.gather(
        gatherer.run(group("ok1")),
        gatherer.run(group("bad", 3)),
        gatherer.run(group("ok2")),
        return_exceptions=True,
    )
    assert [len(ops) for ops in send.sent] == [5, 1, 3, 1]
    assert results[0][0]["body"]["url"] == "ok1/a" and results[2][0]["body"]["url"] == "ok2/a"
    assert isinstance(results[1], ErpPermanentError)


async def test_a_cancelled_caller_is_not_sent_and_the_others_are() -> None:
    send = Recorder()
    gatherer = BatchGatherer(send, CallSlots(1), linger_s=0.05)
    gone = asyncio.create_task(gatherer.run(group("gone")))
    kept = asyncio.create_task(gatherer.run(group("kept")))
    await asyncio.sleep(0)
    gone.cancel()
    [answer] = await kept
    assert answer["body"]["url"] == "kept/a"
    assert [op["url"] for ops in send.sent for op in ops] == ["kept/a"]
    await gatherer.aclose()


async def test_an_unreadable_answer_fails_every_caller_and_hangs_none() -> None:
    async def garbage(operations: list[Operation]) -> list[Operation]:
        return [None] * len(operations)  # type: ignore[list-item]

    gatherer = BatchGatherer(garbage, CallSlots(5))
    results = await asyncio.wait_for(
        asyncio.gather(*(gatherer.run(group(f"c{i}")) for i in range(3)), return_exceptions=True), 5
    )
    assert all(isinstance(r, ErpTransientError) and r.code == "INVALID_RESPONSE" for r in results)


async def test_groups_without_an_answer_share_one_error() -> None:
    async def first_only(operations: list[Operation]) -> list[Operation]:
        return [{"id": operations[0]["id"], "status": 404, "body": {}}]  # a batch stopped at a failure

    gatherer = BatchGatherer(first_only, CallSlots(5))
    first, *rest = await asyncio.gather(
        *(gatherer.run(group(f"c{i}")) for i in range(4)), return_exceptions=True
    )
    assert first == [{"id": "a", "status": 404, "body": {}}]
    assert len({id(r) for r in rest}) == 1 and isinstance(rest[0], ErpTransientError)


async def test_closing_cancels_what_is_in_flight() -> None:
    started = asyncio.Event()

    async def slow(operations: list[Operation]) -> list[Operation]:
        started.set()
        await asyncio.sleep(60)
        return []

    gatherer = BatchGatherer(slow, CallSlots(5))
    caller = asyncio.create_task(gatherer.run(group("c")))
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.wait_for(gatherer.aclose(), 5)
    with pytest.raises(asyncio.CancelledError):
        await caller
