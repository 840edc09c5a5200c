"""Backoff, the circuit breaker and the retry loop, on a fake clock: no real waiting."""

from __future__ import annotations

import asyncio
import random

import pytest

from connectors.erp import (
    BreakerState,
    CallSlots,
    CircuitBreaker,
    ErpAuthError,
    ErpPermanentError,
    ErpTransientError,
    ErpUncertainError,
    RetriesExhausted,
    RetryEvent,
    RetryPolicy,
    call_with_retries,
)


class FakeClock:
    """A monotonic clock that only moves when told to (or when FakeClock.sleep is awaited)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Always:
    """A stand-in for random.Random whose draw is fixed, to hit the ends of the jitter range."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def _policy(**over: object) -> RetryPolicy:
    fields: dict[str, object] = {
        "max_attempts": 5,
        "base_delay_s": 0.5,
        "max_delay_s": 8.0,
        "max_elapsed_s": 120.0,
        "rng": random.Random(1),
    }
    fields.update(over)
    return RetryPolicy(**fields)  # type: ignore[arg-type]


# -- RetryPolicy ----------------------------------------------------------------------------


def test_backoff_cap_doubles_up_to_the_maximum() -> None:
    policy = _policy()
    assert [policy.backoff_cap(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_full_jitter_stays_within_zero_and_the_cap_and_spreads() -> None:
    policy = _policy(rng=random.Random(42))
    for attempt in range(1, 9):
        delays = [policy.delay(attempt) for _ in range(300)]
        cap = policy.backoff_cap(attempt)
        assert all(0.0 <= d < cap for d in delays)
        # Full jitter spreads over the whole range, not a narrow band near the cap.
        assert min(delays) < cap * 0.1 and max(delays) > cap * 0.9


def test_jitter_extremes_are_zero_and_the_cap() -> None:
    assert _policy(rng=Always(0.0)).delay(4) == 0.0
    assert _policy(rng=Always(0.999999)).delay(4) == pytest.approx(4.0, rel=1e-5)


def test_retry_after_is_a_floor_with_a_little_spread() -> None:
    policy = _policy(rng=random.Random(3))
    delays = [policy.delay(1, retry_after=5.0) for _ in range(200)]
    assert all(5.0 <= d < 5.0 + policy.base_delay_s for d in delays)
    # Even at a late attempt whose own backoff is shorter than Retry-After, the ERP wins.
    assert _policy(rng=Always(0.0)).delay(1, retry_after=30.0) == 30.0


def test_an_absurd_retry_after_is_capped() -> None:
    policy = _policy(rng=Always(0.0), max_retry_after_s=60.0)
    assert policy.delay(1, retry_after=86400.0) == 60.0
    assert policy.delay(1, retry_after=-3.0) == 0.0


def test_a_policy_must_make_sense() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="base_delay_s"):
        RetryPolicy(base_delay_s=5.0, max_delay_s=1.0)


# -- CircuitBreaker ------------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_only() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, open_for_s=10.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # the streak is broken
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert breaker.retry_in() == 10.0
    assert breaker.opened_count == 1


def test_breaker_half_opens_after_the_wait_and_allows_one_probe() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, open_for_s=10.0, clock=clock)
    breaker.record_failure()
    clock.advance(9.9)
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.advance(0.1)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow() is True  # the probe
    assert breaker.allow() is False  # everyone else waits for its outcome
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow() and breaker.allow()
    assert breaker.consecutive_failures == 0


def test_a_failed_probe_opens_the_breaker_again() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, open_for_s=5.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_in() == 5.0
    assert breaker.opened_count == 2


def test_a_probe_that_never_reports_is_given_up_after_the_open_time() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, open_for_s=5.0, clock=clock)
    breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow()
    clock.advance(4.0)
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow()  # a new probe
    breaker.release()
    assert breaker.state is BreakerState.HALF_OPEN and breaker.allow()


async def test_wait_until_allowed_sleeps_out_the_open_time() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, open_for_s=7.0, clock=clock)
    breaker.record_failure()
    clock.advance(2.0)
    waited = await breaker.wait_until_allowed(clock.sleep)
    assert waited == 5.0
    assert clock.sleeps == [5.0]
    assert breaker.state is BreakerState.HALF_OPEN


async def test_waiters_behind_a_probe_poll_and_go_once_it_closes_the_breaker() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, open_for_s=30.0, clock=clock)
    breaker.record_failure()
    clock.advance(30.0)
    assert breaker.allow()  # someone else's probe is in flight

    async def probe_succeeds_meanwhile(seconds: float) -> None:
        await clock.sleep(seconds)
        breaker.record_success()

    waited = await breaker.wait_until_allowed(probe_succeeds_meanwhile, poll_s=0.25)
    assert clock.sleeps == [0.25] and waited == 0.25
    assert breaker.state is BreakerState.CLOSED


# -- call_with_retries ---------------------------------------------------------------------


class Script:
    """An ERP call that fails as scripted, then answers; records the `uncertain` it was given."""

    def __init__(self, *failures: Exception, result: str = "receipt") -> None:
        self.failures = list(failures)
        self.result = result
        self.calls: list[bool] = []

    async def __call__(self, uncertain: bool) -> str:
        self.calls.append(uncertain)
        if self.failures:
            raise self.failures.pop(0)
        return self.result


async def test_transient_failures_are_retried_and_attempts_counted() -> None:
    clock = FakeClock()
    call = Script(ErpTransientError("HTTP_500", "boom"), ErpTransientError("HTTP_502", "bad gateway"))
    events: list[RetryEvent] = []
    result, attempts = await call_with_retries(
        call, _policy(), sleep=clock.sleep, on_retry=events.append, clock=clock
    )
    assert (result, attempts) == ("receipt", 3)
    assert call.calls == [False, False, False]
    assert [e.attempt for e in events] == [1, 2]
    assert [e.error.code for e in events] == ["HTTP_500", "HTTP_502"]
    assert clock.sleeps == [e.delay_s for e in events]


async def test_retry_after_is_honoured_between_attempts() -> None:
    clock = FakeClock()
    call = Script(ErpTransientError("SSS_REQUEST_LIMIT_EXCEEDED", "slow down", retry_after=4.0))
    _, attempts = await call_with_retries(call, _policy(), sleep=clock.sleep, clock=clock)
    assert attempts == 2
    assert len(clock.sleeps) == 1 and 4.0 <= clock.sleeps[0] < 4.5


async def test_after_an_uncertain_failure_every_later_attempt_is_uncertain() -> None:
    clock = FakeClock()
    call = Script(
        ErpTransientError("HTTP_503", "maintenance"),
        ErpUncertainError("NO_RESPONSE", "ReadTimeout"),
        ErpTransientError("CONNECTION_FAILED", "refused"),
    )
    _, attempts = await call_with_retries(call, _policy(), sleep=clock.sleep, clock=clock)
    assert attempts == 4
    assert call.calls == [False, False, True, True]


@pytest.mark.parametrize(
    "error",
    [
        ErpPermanentError("INVALID_KEY_OR_REF", "Invalid customer reference key c.", 400),
        ErpAuthError("X", "no"),
    ],
)
async def test_non_transient_errors_are_raised_at_once(error: Exception) -> None:
    clock = FakeClock()
    call = Script(ErpTransientError("HTTP_500", "boom"), error)
    with pytest.raises(type(error)) as raised:
        await call_with_retries(call, _policy(), sleep=clock.sleep, clock=clock)
    assert raised.value.attempts == 2  # type: ignore[attr-defined]
    assert len(call.calls) == 2 and len(clock.sleeps) == 1


async def test_retries_end_after_max_attempts() -> None:
    clock = FakeClock()
    call = Script(*[ErpUncertainError("NO_RESPONSE", "timeout") for _ in range(10)])
    with pytest.raises(RetriesExhausted) as raised:
        await call_with_retries(call, _policy(max_attempts=4), sleep=clock.sleep, clock=clock)
    assert raised.value.attempts == 4
    assert raised.value.uncertain is True
    assert raised.value.last_error.code == "NO_RESPONSE"
    assert len(call.calls) == 4 and len(clock.sleeps) == 3


async def test_retries_end_when_the_next_wait_would_pass_the_elapsed_bound() -> None:
    clock = FakeClock()
    call = Script(*[ErpTransientError("HTTP_503", "down", retry_after=30.0) for _ in range(10)])
    with pytest.raises(RetriesExhausted) as raised:
        await call_with_retries(
            call, _policy(max_attempts=50, max_elapsed_s=100.0), sleep=clock.sleep, clock=clock
        )
    # Waits of 30 s + jitter: three fit in 100 s, the fourth would not.
    assert raised.value.attempts == 4
    assert sum(clock.sleeps) <= 100.0
    assert raised.value.uncertain is False


async def test_the_breaker_opens_and_the_loop_waits_for_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, open_for_s=20.0, clock=clock)
    call = Script(ErpTransientError("HTTP_500", "a"), ErpTransientError("HTTP_500", "b"))
    policy = _policy(rng=Always(0.0))
    result, attempts = await call_with_retries(call, policy, breaker=breaker, sleep=clock.sleep, clock=clock)
    assert (result, attempts) == ("receipt", 3)
    # Two zero-length backoffs, then the breaker (open after the 2nd failure) holds the 3rd for 20 s.
    assert clock.sleeps == [0.0, 0.0, 20.0]
    assert breaker.state is BreakerState.CLOSED and breaker.opened_count == 1


async def test_a_permanent_error_proves_the_erp_is_up() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, open_for_s=5.0, clock=clock)
    breaker.record_failure()
    clock.advance(5.0)
    with pytest.raises(ErpPermanentError):
        await call_with_retries(
            Script(ErpPermanentError("USER_ERROR", "closed period", 400)),
            _policy(),
            breaker=breaker,
            sleep=clock.sleep,
            clock=clock,
        )
    assert breaker.state is BreakerState.CLOSED


async def test_call_slots_hold_the_limit_and_serve_the_longest_lane_first() -> None:
    slots = CallSlots(2)
    order: list[str] = []
    release = asyncio.Event()

    async def call(name: str, priority: int) -> None:
        async with slots.slot(priority):
            order.append(name)
            assert slots.in_flight <= 2
            await release.wait()

    running = [asyncio.create_task(call(n, 0)) for n in ("a", "b")]
    await asyncio.sleep(0)
    assert (slots.in_flight, order) == (2, ["a", "b"])
    waiting = [asyncio.create_task(call(n, p)) for n, p in (("short", 1), ("long", 9), ("short2", 1))]
    await asyncio.sleep(0)
    assert slots.waiting == 3 and order == ["a", "b"]  # full: nobody jumps in
    release.set()
    await asyncio.gather(*running, *waiting)
    # The freed slots went to the call with the most behind it, then in arrival order.
    assert order == ["a", "b", "long", "short", "short2"]
    assert (slots.in_flight, slots.waiting) == (0, 0)


async def test_a_cancelled_waiter_gives_up_its_place_and_never_leaks_a_slot() -> None:
    slots = CallSlots(1)
    gate = asyncio.Event()

    async def hold() -> None:
        async with slots.slot():
            await gate.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(hold())
    after = asyncio.create_task(hold())
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(holder, after)
    assert cancelled.cancelled()
    assert (slots.in_flight, slots.waiting) == (0, 0)
    async with slots.slot():  # the slot is free again at once
        assert slots.in_flight == 1
