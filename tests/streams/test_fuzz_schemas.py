"""Property tests of the canonical decoder (`streams.schemas`): whatever bytes arrive on an
internal topic, `loads_value` answers with a model of the topic or an `Undecodable` with a
reason, and never raises (Faust would crash the agent on a decoding error)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canonical import ErpCommand
from streams.schemas import ByTopicSchema, PydanticSchema, Undecodable
from tests.connectors.stripe.test_fuzz import json_values
from tests.fuzz.seeds import EDGE_VALUES, dumps_json, internal_models, internal_seeds, mangle_drawn

MODELS = internal_models()
SEEDS = internal_seeds()
SCHEMAS = {topic: PydanticSchema(model) for topic, model in MODELS.items()}
ALL_SEEDS = [raw for values in SEEDS.values() for raw in values]
DECODES_TO = {topic: ErpCommand if topic == "erp.commands" else model for topic, model in MODELS.items()}
"""What a message of each topic decodes to (erp.commands: a member of the command union)."""
CORE = ByTopicSchema(
    {"p.ledgerflow.canonical": MODELS["ledgerflow.canonical"], "p.erp.results": MODELS["erp.results"]}
)
VALUES = json_values | st.sampled_from(EDGE_VALUES)
"""What a mangled field becomes: any small JSON value, or one past the limits real payloads keep."""


@dataclass
class Message:
    """The two fields of a Kafka message the schemas read."""

    topic: str
    value: bytes | None


def _decoded(schema: Any, topic: str, value: bytes | None) -> Any:
    decoded = schema.loads_value(None, Message(topic, value))
    if isinstance(decoded, Undecodable):
        assert decoded.reason and decoded.raw == value
    else:
        assert isinstance(decoded, DECODES_TO[topic]), type(decoded)
    return decoded


def test_every_seed_decodes_to_its_model() -> None:
    for topic, values in SEEDS.items():
        assert values, f"no seed for {topic}"
        for raw in values:
            assert not isinstance(SCHEMAS[topic].loads_value(None, Message(topic, raw)), Undecodable), topic


@settings(max_examples=300)
@given(st.sampled_from(sorted(MODELS)), st.none() | st.binary(max_size=512))
def test_arbitrary_bytes(topic: str, value: bytes | None) -> None:
    _decoded(SCHEMAS[topic], topic, value)


@settings(max_examples=300)
@given(st.sampled_from(sorted(MODELS)), json_values)
def test_arbitrary_json(topic: str, value: Any) -> None:
    _decoded(SCHEMAS[topic], topic, dumps_json(value))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(MODELS)), st.sampled_from(ALL_SEEDS), st.data())
def test_mangled_valid_messages_of_any_topic(topic: str, seed: bytes, data: st.DataObject) -> None:
    """A seed of any topic (another topic's valid message is a plausible mistake), with one to
    four values deleted or replaced anywhere."""
    document = orjson.loads(seed)
    mangle_drawn(document, data, VALUES)
    _decoded(SCHEMAS[topic], topic, dumps_json(document))


@st.composite
def mutated_bytes(draw: st.DrawFn) -> bytes:
    """A seed with bytes cut, inserted, overwritten or the tail truncated (broken UTF-8, JSON)."""
    data = bytearray(draw(st.sampled_from(ALL_SEEDS)))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["truncate", "cut", "insert", "overwrite"]))
        if kind == "truncate":
            del data[at:]
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=300)
@given(st.sampled_from(sorted(MODELS)), mutated_bytes())
def test_byte_level_mutations(topic: str, value: bytes) -> None:
    _decoded(SCHEMAS[topic], topic, value)


@settings(max_examples=200)
@given(
    st.sampled_from(["p.ledgerflow.canonical", "p.erp.results", "p.erp.commands", ""]),
    st.none() | st.sampled_from(ALL_SEEDS) | st.binary(max_size=128),
)
def test_stage_2_channel_decodes_by_the_topic_it_came_from(topic: str, value: bytes | None) -> None:
    decoded = CORE.loads_value(None, Message(topic, value))
    if topic not in ("p.ledgerflow.canonical", "p.erp.results"):
        assert isinstance(decoded, Undecodable) and "no model for topic" in decoded.reason
        return
    model = MODELS["ledgerflow.canonical" if topic.endswith("canonical") else "erp.results"]
    assert isinstance(decoded, Undecodable | model)


def test_deep_nesting_and_huge_numbers_are_undecodable_not_errors() -> None:
    for value in (
        b"[" * 100_000,
        b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
        b"1" * 10_000,
        b"\xff\xfe",
        b"\x00",
    ):
        for topic, schema in SCHEMAS.items():
            assert isinstance(schema.loads_value(None, Message(topic, value)), Undecodable), (
                topic,
                value[:10],
            )
