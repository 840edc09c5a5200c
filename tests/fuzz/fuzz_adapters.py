"""A coverage-guided fuzz run (atheris, libFuzzer) over what decodes untrusted bytes: the Stripe,
Salesforce CDC and CLM adapters of stage 1 and the canonical decoder of every internal topic.

Not collected by pytest (the name has no `test_`); run it by hand for as long as you like:

    .venv/bin/pip install atheris
    .venv/bin/python tests/fuzz/fuzz_adapters.py -runs=200000            # or -max_total_time=600
    .venv/bin/python tests/fuzz/fuzz_adapters.py corpus/ -max_total_time=3600

Each input picks a target, then either uses its bytes as they are or mangles a real message of
that target (values deleted or replaced in the JSON, bytes cut or spliced in), driven by the
input so that libFuzzer's coverage feedback steers both. The property: an adapter returns
canonical events or raises its typed `Rejection` (or `ResyncRequired` for a Salesforce gap); the
decoder returns the topic's model or an `Undecodable`. Anything else is a crash, and libFuzzer
writes the input to `crash-<sha1>` for `python tests/fuzz/fuzz_adapters.py crash-<sha1>` to replay.

Without atheris installed it runs the same checks on seeded random inputs (`--plain N`), which
is what `tests/fuzz/test_harness.py` does briefly in the normal test run.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

try:
    import atheris
except ImportError:  # the plain mode needs no atheris
    atheris = None


def _imports() -> tuple[Any, ...]:
    from agents.identity import provisional_customer_id
    from canonical import ChangeEvent
    from connectors.errors import Rejection
    from connectors.salesforce import ResyncRequired
    from streams.schemas import PydanticSchema, Undecodable
    from tests.fuzz import seeds

    return provisional_customer_id, ChangeEvent, Rejection, ResyncRequired, PydanticSchema, Undecodable, seeds


if atheris is not None:
    with atheris.instrument_imports(
        include=["connectors", "canonical", "streams.schemas", "agents.identity"]
    ):
        IMPORTED = _imports()
else:
    IMPORTED = _imports()
provisional_customer_id, ChangeEvent, Rejection, ResyncRequired, PydanticSchema, Undecodable, seeds = IMPORTED


@dataclass(frozen=True)
class Target:
    name: str
    seeds: tuple[bytes, ...]
    check: Callable[[bytes | None], None]


def _adapter_check(adapter: Callable[..., list[Any]]) -> Callable[[bytes | None], None]:
    def check(raw: bytes | None) -> None:
        try:
            events = adapter(raw or b"", provisional_customer_id, None, None)
        except Rejection as rejection:
            assert rejection.header_value, "a rejection without a reason"
            return
        except ResyncRequired:
            return
        assert isinstance(events, list) and all(isinstance(e, ChangeEvent) and e.customer_id for e in events)

    return check


@dataclass
class _Message:
    topic: str
    value: bytes | None


def _decoder_check(topic: str, model: Any) -> Callable[[bytes | None], None]:
    schema = PydanticSchema(model)

    def check(raw: bytes | None) -> None:
        decoded = schema.loads_value(None, _Message(topic, raw))
        if isinstance(decoded, Undecodable):
            assert decoded.reason and decoded.raw == raw
        else:
            assert hasattr(decoded, "model_dump"), type(decoded)

    return check


def targets() -> list[Target]:
    adapters = seeds.adapters()
    source = seeds.source_seeds()
    internal = seeds.internal_seeds()
    out = [Target(topic, source[topic], _adapter_check(adapters[topic])) for topic in seeds.SOURCE_TOPICS]
    out += [
        Target(topic, internal[topic], _decoder_check(topic, model))
        for topic, model in seeds.internal_models().items()
    ]
    return out


TARGETS = targets()
EVERYTHING = tuple(v for t in TARGETS for v in t.seeds)


def one_input(data: bytes) -> None:
    """libFuzzer's entry point: the first byte picks the target, the second how to use the rest."""
    if len(data) < 2:
        return
    target = TARGETS[data[0] % len(TARGETS)]
    mode, rest = data[1] % 4, data[2:]
    if mode == 0:
        raw: bytes | None = rest
    else:
        rng = random.Random(rest)
        if mode == 1:
            raw = seeds.mangle_json(rng, rng.choice(target.seeds))
        elif mode == 2:
            raw = seeds.mangle_bytes(rng, rng.choice(target.seeds))
        else:
            raw = seeds.garbage(rng, target.seeds, EVERYTHING)
    target.check(raw)


def plain(runs: int, seed: int = 0) -> int:
    """The same checks on `runs` seeded random inputs, without atheris; returns the runs made."""
    rng = random.Random(seed)
    for _ in range(runs):
        one_input(rng.randbytes(rng.randrange(2, 200)))
    return runs


def main(argv: list[str]) -> None:
    if len(argv) >= 2 and argv[1] == "--plain":
        runs = int(argv[2]) if len(argv) > 2 else 10_000
        print(f"plain fuzz: {plain(runs)} inputs over {len(TARGETS)} targets, no failure")
        return
    if atheris is None:
        raise SystemExit("atheris is not installed: `pip install atheris`, or run with --plain N")
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
