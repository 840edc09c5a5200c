"""Retries and a circuit breaker for ERP calls. Pure: clock, sleep and randomness are injected.

`call_with_retries` is the one loop the sink wraps every delivery in: transient errors are
retried with exponential backoff and full jitter (never sooner than the ERP's `Retry-After`),
an uncertain outcome makes every later attempt look the document up first, permanent errors
end the call at once, and the breaker stops hammering an ERP that keeps failing.
`CallSlots` keeps the calls in flight within the ERP's concurrency limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from connectors.erp.errors import ErpError, ErpTransientError, ErpUncertainError

log = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry one command.

    `max_attempts` counts the first try; `max_elapsed_s` bounds the whole call including
    waits; `max_retry_after_s` caps a `Retry-After` so a wrong header cannot park a partition
    for a day."""

    max_attempts: int = 8
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    max_elapsed_s: float = 300.0
    max_retry_after_s: float = 300.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay_s < 0 or self.max_delay_s < self.base_delay_s:
            raise ValueError("need 0 <= base_delay_s <= max_delay_s")

    def backoff_cap(self, attempt: int) -> float:
        """The largest wait after failed attempt number `attempt` (1-based), before jitter."""
        return min(self.max_delay_s, self.base_delay_s * 2 ** max(0, attempt - 1))

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt `attempt`: full jitter in [0, cap) (AWS's
        "full jitter", which spreads competing workers best). With a `Retry-After` the wait is
        that long (capped) plus a jitter of at most one base delay, so workers told the same
        instant do not all return at once."""
        if retry_after is not None:
            floor = min(max(0.0, retry_after), self.max_retry_after_s)
            return floor + self.rng.random() * min(self.base_delay_s, self.backoff_cap(attempt))
        return self.rng.random() * self.backoff_cap(attempt)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Stops calls to an ERP that keeps failing, then lets one probe through to test it.

    closed → open after `failure_threshold` consecutive transient failures; open → half_open
    once `open_for_s` has passed; in half_open exactly one caller is allowed (the probe):
    its success closes the breaker, its failure opens it again for another `open_for_s`.
    A probe that never reports (its task was cancelled) is given up after `open_for_s`."""

    def __init__(
        self, failure_threshold: int = 5, open_for_s: float = 30.0, clock: Clock = time.monotonic
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.open_for_s = open_for_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._last_cause: BaseException | None = None
        self._opened_at = 0.0
        self._probe_started: float | None = None
        self.opened_count = 0
        """How many times the breaker has opened (observable for metrics and tests)."""

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() >= self._opened_at + self.open_for_s:
            self._state = BreakerState.HALF_OPEN
            self._probe_started = None
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def retry_in(self) -> float:
        """Seconds until a call may be allowed again (0 when one is allowed now)."""
        state = self.state
        now = self._clock()
        if state is BreakerState.OPEN:
            return max(0.0, self._opened_at + self.open_for_s - now)
        if state is BreakerState.HALF_OPEN and self._probe_started is not None:
            return max(0.0, self._probe_started + self.open_for_s - now)
        return 0.0

    def allow(self) -> bool:
        """May a call go out now? In half_open, True for the one probe only."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        now = self._clock()
        if self._probe_started is None or now >= self._probe_started + self.open_for_s:
            self._probe_started = now
            return True
        return False

    def record_success(self) -> None:
        """The ERP answered (a success, or a refusal that proves it is up)."""
        if self._state is not BreakerState.CLOSED:
            log.info("erp circuit closed", extra={"after_failures": self._failures})
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._probe_started = None

    def record_failure(self, cause: BaseException | None = None) -> None:
        """A transient failure: counts towards opening; a failed probe re-opens at once. One
        `cause` counts once however many calls it failed (a shared `$batch` whose answer was
        lost fails every caller in it with the same error)."""
        if cause is not None:
            if cause is self._last_cause:
                return
            self._last_cause = cause
        self._failures += 1
        if self.state is BreakerState.HALF_OPEN or (
            self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold
        ):
            self._open()

    def release(self) -> None:
        """The probe ended without saying anything about the ERP (a bug, a cancellation):
        let the next caller probe instead."""
        self._probe_started = None

    async def wait_until_allowed(self, sleep: Sleep = asyncio.sleep, poll_s: float = 0.05) -> float:
        """Wait until `allow()` says yes; returns the seconds waited (by the injected clock)."""
        started = self._clock()
        while not self.allow():
            # Open: sleep out the rest of the open time. Half-open with a probe in flight: poll,
            # so waiters go as soon as the probe closes the breaker, not a whole open time later.
            open_now = self.state is BreakerState.OPEN
            await sleep(max(self.retry_in(), poll_s) if open_now else poll_s)
        return self._clock() - started

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._probe_started = None
        self.opened_count += 1
        log.warning(
            "erp circuit opened",
            extra={"consecutive_failures": self._failures, "open_for_s": self.open_for_s},
        )


class CallSlots:
    """At most `limit` calls in flight (the ERP's concurrency, shared by every lane of a worker);
    a slot that frees goes to the waiting call with the most work behind it, first come first
    served among equals.

    A batch ends when its longest lane does, and a lane makes one call at a time: with a plain
    semaphore every call of a customer with eleven invoices queues behind the whole batch's
    others, and the batch ends with that lane running alone while the other slots stay empty.
    Served longest-lane-first, the long lanes keep pace and the slots stay full to the end."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a call needs at least one slot")
        self.limit = limit
        self.in_flight = 0
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @contextlib.asynccontextmanager
    async def slot(self, priority: int = 0) -> AsyncIterator[None]:
        """Hold one slot for the block; a higher `priority` (work left behind the call) is served first."""
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot."""
        return sum(1 for *_, future in self._waiting if not future.done())

    async def acquire(self, priority: int = 0) -> None:
        """Take a slot, waiting for one; `release` gives it back (`slot` does both)."""
        # A slot is free only when nobody waits: a release hands its slot to a live waiter first.
        if self.in_flight < self.limit and not self._waiting:
            self.in_flight += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (-priority, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # handed a slot as it was cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiting:
            *_, future = heapq.heappop(self._waiting)
            if not future.done():  # a cancelled waiter is skipped
                future.set_result(None)  # the slot passes on: in_flight stays
                return
        self.in_flight -= 1


@dataclass(frozen=True)
class RetryEvent:
    """One failed attempt about to be retried: what failed and how long the wait is."""

    attempt: int
    error: ErpTransientError
    delay_s: float
    uncertain: bool


class RetriesExhausted(ErpError):
    """The bound (attempts or elapsed time) was reached with only transient failures."""

    def __init__(self, last_error: ErpTransientError, attempts: int, uncertain: bool = False) -> None:
        super().__init__(last_error.code, f"gave up after {attempts} attempts: {last_error.message}")
        self.last_error = last_error
        self.attempts = attempts
        self.uncertain = uncertain
        """True when some attempt may have written: an operator must check the ERP."""


async def call_with_retries(
    fn: Callable[[bool], Awaitable[T]],
    policy: RetryPolicy,
    breaker: CircuitBreaker | None = None,
    sleep: Sleep = asyncio.sleep,
    on_retry: Callable[[RetryEvent], None] | None = None,
    clock: Clock = time.monotonic,
) -> tuple[T, int]:
    """Call `fn(uncertain)` until it succeeds; returns `(result, attempts)`.

    Only `ErpTransientError`s are retried. After an `ErpUncertainError` every later call gets
    `uncertain=True` (the earlier write may have happened, so the client looks first). Any
    other `ErpError` is raised at once with `.attempts` set; after `policy.max_attempts` or
    `policy.max_elapsed_s` a `RetriesExhausted` is raised. Waiting for the breaker counts
    towards the elapsed bound."""
    started = clock()
    uncertain = False
    attempt = 0
    while True:
        if breaker is not None:
            await breaker.wait_until_allowed(sleep)
        attempt += 1
        try:
            result = await fn(uncertain)
        except ErpTransientError as exc:
            if breaker is not None:
                breaker.record_failure(exc)
            uncertain = uncertain or isinstance(exc, ErpUncertainError)
            delay = policy.delay(attempt, exc.retry_after)
            if attempt >= policy.max_attempts or clock() - started + delay > policy.max_elapsed_s:
                raise RetriesExhausted(exc, attempt, uncertain) from exc
            if on_retry is not None:
                on_retry(RetryEvent(attempt, exc, delay, uncertain))
            await sleep(delay)
            continue
        except ErpError as exc:
            # The ERP answered, so it is up; the request itself is what it refused.
            if breaker is not None:
                breaker.record_success()
            exc.attempts = attempt
            raise
        except BaseException:
            if breaker is not None:
                breaker.release()
            raise
        if breaker is not None:
            breaker.record_success()
        return result, attempt
