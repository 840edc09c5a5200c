"""Many callers' operations in one OData JSON `$batch` request.

Business Central counts requests, not what they carry: a `$batch` holds up to 100 operations
(shared/research/erp-apis.md §B), so the sink's lanes, each delivering one customer's command at
a time, spend far fewer of the tenant's calls when their operations travel together. A
`BatchGatherer` takes a *group* of operations from each caller (a draft's post and the read of
its number, a journal line and its journal's post: ids local to the group, `dependsOn` within
it), waits `linger_s` for the other lanes' groups of the same moment, and sends them in one
request of at most `most` operations, a group never split. Each caller gets its own operations'
answers back, as if it had sent them alone.

Lanes are independent, so different groups in one request never depend on each other; one
customer's lane sends its next group only once its last one was answered, so its order holds.

Up to `slots.limit` requests are in flight at once: the tenant's concurrency, spent per request,
not per caller (a slot taken per caller would cap a request at that many callers). While every
slot is busy the next request's groups gather, so a busy ERP gets fuller requests.

When the request itself fails, every group in it fails alike: a lost answer (a timeout) is an
uncertain write for each, and the sink's retry looks each document up before writing again. A
request refused whole with a 4xx is sent again one group per request, so one caller's bad
operation cannot make the others' permanent failures.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from connectors.erp.errors import ErpPermanentError, ErpTransientError
from connectors.erp.resilience import CallSlots

log = logging.getLogger(__name__)

BATCH_MAX = 100
"""Business Central's most operations in one `$batch`."""

Operation = dict[str, Any]
Send = Callable[[list[Operation]], Awaitable[list[Operation]]]
"""Sends one `$batch` of operations and returns the answers (`id`, `status`, `body`) it got."""


@dataclass
class _Group:
    operations: list[Operation]
    future: asyncio.Future[list[Operation]]
    prefix: str = ""

    def renamed(self) -> list[Operation]:
        """The operations with ids unique in the request (`{prefix}{id}`, `dependsOn` alike)."""
        out = []
        for op in self.operations:
            op = {**op, "id": f"{self.prefix}{op['id']}"}
            if "dependsOn" in op:
                op["dependsOn"] = [f"{self.prefix}{d}" for d in op["dependsOn"]]
            out.append(op)
        return out


@dataclass
class BatchGatherer:
    """Concurrent callers' operation groups gathered into `$batch` requests (module docstring)."""

    send: Send
    slots: CallSlots
    linger_s: float = 0.005
    most: int = BATCH_MAX
    _pending: list[_Group] = field(default_factory=list)
    _drainer: asyncio.Task[None] | None = None
    _sending: set[asyncio.Task[None]] = field(default_factory=set)
    _sequence: int = 0
    requests: int = 0
    """`$batch` requests sent (observable: operations / requests is how full they went)."""
    operations: int = 0

    async def run(self, operations: list[Operation]) -> list[Operation]:
        """The answers to `operations` (one group, in its order, ids as given), sent with
        whatever other groups are waiting."""
        if not 1 <= len(operations) <= self.most:
            raise ValueError(f"a group holds 1..{self.most} operations, not {len(operations)}")
        group = _Group(operations, asyncio.get_running_loop().create_future())
        self._pending.append(group)
        if self._drainer is None:
            # A context of its own: the first caller's log context must not name the others' calls.
            self._drainer = asyncio.create_task(self._drain(), context=contextvars.Context())
        return await group.future

    async def aclose(self) -> None:
        """Stop: requests in flight are cancelled (their callers with them), nothing more is sent."""
        pending, self._pending = self._pending, []
        for task in (self._drainer, *self._sending):
            if task is not None:
                task.cancel()
        for group in pending:
            if not group.future.done():
                group.future.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)

    async def _drain(self) -> None:
        """Linger, then send requests while groups wait, each once a slot is free."""
        try:
            await asyncio.sleep(self.linger_s)
            while self._pending:
                await self.slots.acquire()
                taken = self._take()
                if not taken:
                    self.slots.release()
                    continue
                task = asyncio.create_task(self._send(taken))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
        except Exception:
            log.exception("erp $batch gatherer failed; its waiting groups fail with it")
            _fail(self._pending, ErpTransientError("INTERNAL_ERROR", "the $batch gatherer failed"))
            self._pending = []
            raise
        finally:
            self._drainer = None
            if self._pending:  # groups came in as it stopped: a new drainer takes them
                self._drainer = asyncio.create_task(self._drain(), context=contextvars.Context())

    def _take(self) -> list[_Group]:
        """Waiting groups in arrival order, as many whole groups as fit in one request."""
        taken: list[_Group] = []
        size = 0
        while self._pending and size + len(self._pending[0].operations) <= self.most:
            group = self._pending.pop(0)
            if group.future.done():  # its caller was cancelled: nothing to send
                continue
            self._sequence += 1
            group.prefix = f"{self._sequence}."
            taken.append(group)
            size += len(group.operations)
        return taken

    async def _send(self, groups: list[_Group]) -> None:
        """One request's groups, every one of them answered or failed whatever happens."""
        try:
            await self._answer(groups)
        except Exception as exc:
            log.exception("erp $batch answer could not be read")
            _fail(groups, ErpTransientError("INVALID_RESPONSE", f"the $batch answer was unreadable: {exc!r}"))
        except BaseException:
            _fail(groups, asyncio.CancelledError())
            raise
        finally:
            self.slots.release()

    async def _answer(self, groups: list[_Group]) -> None:
        operations = [op for group in groups for op in group.renamed()]
        self.requests += 1
        self.operations += len(operations)
        try:
            answers = await self.send(operations)
        except ErpPermanentError as exc:
            if len(groups) == 1:
                _fail(groups, exc)
                return
            log.warning(
                "erp refused a gathered $batch whole: its groups go one by one",
                extra={"code": exc.code, "groups": len(groups), "operations": len(operations)},
            )
            for group in groups:
                await self._answer([group])
            return
        except BaseException as exc:
            _fail(groups, exc)
            if not isinstance(exc, Exception):
                raise
            return
        if not isinstance(answers, list) or not all(isinstance(a, dict) for a in answers):
            raise TypeError(f"a $batch answer is a list of operations' answers, not {type(answers).__name__}")
        by_id = {str(a.get("id")): a for a in answers}
        # One missing answer, one error: the breaker counts a request's failure once.
        missing = ErpTransientError("INVALID_RESPONSE", "the $batch answer lacks operations of this group")
        for group in groups:
            mine = [by_id.get(f"{group.prefix}{op['id']}") for op in group.operations]
            if group.future.done():
                continue
            if any(a is None for a in mine):
                group.future.set_exception(missing)
                continue
            group.future.set_result(
                [{**a, "id": op["id"]} for a, op in zip(mine, group.operations, strict=True) if a is not None]
            )


def _fail(groups: list[_Group], exc: BaseException) -> None:
    """Every group not answered yet fails with `exc` (cancelled, for a cancellation)."""
    for group in groups:
        if not group.future.done():
            if isinstance(exc, asyncio.CancelledError):
                group.future.cancel()
            else:
                group.future.set_exception(exc)
