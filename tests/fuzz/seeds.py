"""Valid messages of every topic the workers consume, made by ledgerflow's own pure functions
from a small simulated history: the seeds that fuzzers mangle (`tests/streams/test_fuzz_schemas.py`,
`tests/agents/test_fuzz_ingest.py`, `tests/integration/test_fuzz_topics.py`, and the atheris
harness `tests/fuzz/fuzz_adapters.py`)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from typing import Any

import orjson

from canonical import BusinessException, ChangeEvent, PostingOutcome, PostingResult, UpsertCustomer, codec
from canonical.fingerprints import CustomerFingerprint
from connectors.simulation import generate
from streams.mappings import load_mappings

SOURCE_TOPICS = ("crm.changes", "clm.changes", "billing.changes", "payments.changes")
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def dumps_json(value: Any) -> bytes:
    """JSON of any value, integers past 64 bits included (orjson refuses them)."""
    return json.dumps(value).encode()


def adapters() -> dict[str, Callable[..., list[ChangeEvent]]]:
    """Design source topic → the adapter stage 1 runs on it (`agents.ingest`)."""
    from agents.ingest import clm_adapter, salesforce_adapter, stripe_adapter

    return {
        "crm.changes": salesforce_adapter,
        "clm.changes": clm_adapter,
        "billing.changes": stripe_adapter,
        "payments.changes": stripe_adapter,
    }


@cache
def source_seeds() -> dict[str, tuple[bytes, ...]]:
    """Design source topic → the platform payloads of a 3-customer, 3-month history."""
    out: dict[str, list[bytes]] = {t: [] for t in SOURCE_TOPICS}
    for message in generate(3, 3, seed=5).messages:
        if message.topic in out:  # billing.invoice-payments is routed, not mapped, in stage 1
            out[message.topic].append(message.value)
    return {t: tuple(v) for t, v in out.items()}


@cache
def internal_seeds() -> dict[str, tuple[bytes, ...]]:
    """Design internal topic → values stage 2 and the sink would write for that history: the
    canonical events, the commands, the ERP's results, exceptions, write-backs, fingerprints."""
    from agents.duplicates import fingerprints
    from agents.identity import provisional_customer_id
    from agents.posting import CustomerBook
    from agents.sink import delivery_exception
    from canonical import ExceptionReason, FieldError, Severity
    from tables.contracts import CustomerContracts
    from tables.invoices import CustomerInvoices
    from tables.ledger import DeliveryState, LedgerEntry

    scenario = generate(3, 3, seed=5)
    crm_of = {c["billing_customer_id"]: c["crm_account_id"] for c in scenario.truth["customers"]}
    run = adapters()
    owner = {i["invoice_id"]: i["billing_customer_id"] for i in scenario.truth["invoices"]}
    books: dict[str, CustomerBook] = {}
    canonical: list[ChangeEvent] = []
    for message in scenario.messages:
        # An invoice payment reaches the adapter keyed by its invoice's customer (stage 1's router).
        routed = message.topic == "billing.invoice-payments"
        adapter = run["payments.changes" if routed else message.topic]
        key = owner[message.key] if routed else message.key
        for change in adapter(message.value, provisional_customer_id, None, key):
            # Stage 1 links a Stripe customer to its CRM account: do it from the truth.
            account = crm_of.get(change.customer_ref)
            if account is not None:
                change = change.model_copy(update={"customer_id": f"cust-crm-{account}"})
            canonical.append(change)
    mappings = load_mappings(None)
    results: list[PostingResult] = []
    for change in canonical:
        book = books.setdefault(
            change.customer_id,
            CustomerBook(
                change.customer_id,
                CustomerInvoices(customer_id=change.customer_id),
                dict(CustomerContracts(customer_id=change.customer_id).contracts),
                None,
                mappings,
            ),
        )
        book.apply(change, NOW)
        # The ERP confirms each command at once, which releases what waited for it.
        while len(results) < sum(len(b.commands) for b in books.values()):
            command = [c for b in books.values() for c, _ in b.commands][len(results)]
            result = PostingResult(
                idempotency_key=command.idempotency_key,
                command=command.command,  # type: ignore[attr-defined]
                customer_id=command.customer_id,
                correlation_id=command.correlation_id,
                outcome=PostingOutcome.POSTED,
                erp_internal_id=str(100 + len(results)),
                document_number=f"DOC-{len(results)}",
                posted_at=NOW,
            )
            results.append(result)
            books[command.customer_id].apply_result(result, NOW)
    commands = [c for b in books.values() for c, _ in b.commands]
    writebacks = [w for b in books.values() for w, _ in b.writebacks]
    prints: list[CustomerFingerprint] = []
    for command in commands:
        if isinstance(command, UpsertCustomer):
            prints += fingerprints(command.document, command.customer_id, command.correlation_id)
    failed = LedgerEntry(
        idempotency_key=commands[1].idempotency_key,
        command=commands[1].command,  # type: ignore[attr-defined]
        state=DeliveryState.REJECTED,
        attempts=1,
        error_code="INVALID_KEY_OR_REF",
        error_message="Invalid customer reference key.",
        updated_at=NOW,
    )
    exceptions = [
        delivery_exception(commands[1], failed, NOW, None),
        BusinessException(
            exception_id="exc-seed-1",
            reason=ExceptionReason.MISSING_TAX_CODE,
            severity=Severity.ERROR,
            message="invoice in_1 held: no tax code for txr_1",
            fields=(FieldError(field="lines[0].tax_rate_ids", problem="unmapped"),),
            customer_id=commands[0].customer_id,
            entity_id="in_1",
            correlation_id=commands[0].correlation_id,
            first_seen=NOW,
            last_seen=NOW,
        ),
    ]
    return {
        "ledgerflow.canonical": tuple(codec.dumps(c) for c in canonical),
        "erp.commands": tuple(codec.dumps(c) for c in commands),
        "erp.results": tuple(codec.dumps(r) for r in results),
        "ledgerflow.exceptions": tuple(codec.dumps(e) for e in exceptions),
        "crm.writeback": tuple(codec.dumps(w) for w in writebacks),
        "ledgerflow.customer-fingerprints": tuple(codec.dumps(f) for f in prints),
    }


def internal_models() -> dict[str, Any]:
    """Design internal topic → the model (or union) its schema decodes to (`streams.topics`)."""
    from canonical import AnyErpCommand, CrmWriteback

    return {
        "ledgerflow.canonical": ChangeEvent,
        "erp.commands": AnyErpCommand,
        "erp.results": PostingResult,
        "ledgerflow.exceptions": BusinessException,
        "crm.writeback": CrmWriteback,
        "ledgerflow.customer-fingerprints": CustomerFingerprint,
    }


EDGE_VALUES: tuple[Any, ...] = (
    "",
    "a" * 600,
    "9" * 40,
    "2026-13-45",
    "\u0000",
    "é" * 3,
    0,
    -1,
    2**63,
    -(2**64),
    10**30,
    253_402_300_800,
    1e308,
    -0.0,
    [],
    {},
)
"""Values past the limits real payloads stay within: ids past 512 characters, integers past 64
bits, timestamps past year 9999, empty containers."""


def mangle_drawn(document: Any, data: Any, values: Any) -> None:
    """Delete or replace (with a draw from `values`) one to four values anywhere in a JSON
    document, in place; `data` is hypothesis's `st.data()`."""
    from hypothesis import strategies as st

    for _ in range(data.draw(st.integers(1, 4))):
        paths = json_paths(document)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and data.draw(st.booleans()):
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = data.draw(values)


# --- mangling with a plain random.Random (for harnesses that drive their own randomness) --------


def _json_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, 2**63, -(2**64), 10**30])
    if kind == 3:
        return rng.choice([0.5, -1e308, 1e-9, 3.0])
    if kind == 4:
        return rng.choice(EDGE_VALUES)
    if kind == 5:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(12)))
    if kind == 6:
        return [_json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        rng.choice(["id", "type", "data", "x", ""]): _json_value(rng, depth + 1)
        for _ in range(rng.randrange(4))
    }


def json_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON document (keys, and the first three items of a list)."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += json_paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:3]):
            out += json_paths(v, (*prefix, i))
    return out


def mangle_json(rng: random.Random, raw: bytes) -> bytes:
    """Delete or replace one to four values anywhere in a JSON document."""
    document = orjson.loads(raw)
    for _ in range(rng.randint(1, 4)):
        paths = json_paths(document)
        if not paths:
            break
        path = rng.choice(paths)
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and rng.random() < 0.5:
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = _json_value(rng)
    return dumps_json(document)


def mangle_bytes(rng: random.Random, raw: bytes) -> bytes:
    """Truncate, cut, splice in, or overwrite bytes."""
    data = bytearray(raw)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data) + 1)
        kind = rng.randrange(4)
        if kind == 0:
            del data[at:]
        elif kind == 1:
            del data[at : at + rng.randint(1, 16)]
        elif kind == 2:
            data[at:at] = rng.randbytes(rng.randint(1, 8))
        elif data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
    return bytes(data)


def garbage(rng: random.Random, seeds: tuple[bytes, ...], others: tuple[bytes, ...]) -> bytes | None:
    """One fuzzed value for a topic: a mangled seed, another topic's valid value, random bytes,
    random JSON, a tombstone or nothing at all."""
    kind = rng.randrange(8)
    if kind <= 2:
        return mangle_json(rng, rng.choice(seeds))
    if kind == 3:
        return mangle_bytes(rng, rng.choice(seeds))
    if kind == 4:
        return rng.choice(others)
    if kind == 5:
        return rng.randbytes(rng.randrange(64))
    if kind == 6:
        return dumps_json(_json_value(rng))
    return rng.choice([None, b"", b"null", b"{}", b"[]", b'"x"', b"{" * 300])
