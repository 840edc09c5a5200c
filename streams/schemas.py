"""Faust schemas: pydantic models through orjson on internal topics, raw bytes on source topics.

Decoding never raises into a stream: Faust would crash the agent on a `ValueDecodeError`. A
value that cannot be decoded arrives as an `Undecodable`, which the agents route to the DLQ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import faust
from pydantic import BaseModel, TypeAdapter, ValidationError

from canonical import codec

if TYPE_CHECKING:
    from faust.types import AppT
    from faust.types.tuples import Message


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A message value that could not be decoded, kept whole for the DLQ."""

    raw: bytes | None
    reason: str


def describe_validation_error(exc: ValidationError, limit: int = 5) -> str:
    """Short, field-naming reason text; never echoes input values (they may be personal data)."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


class KeySchemaMixin:
    """Keys are ids: UTF-8 strings on the wire."""

    def loads_key(self, app: AppT, message: Message, **_: Any) -> str | None:
        key = message.key
        if key is None:
            return None
        return key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)

    def dumps_key(self, app: AppT, key: Any, *, headers: Any, **_: Any) -> tuple[Any, Any]:
        if key is None or isinstance(key, bytes):
            return key, headers
        return str(key).encode(), headers


class RawSchema(KeySchemaMixin, faust.Schema):
    """Source topics: the platform's own bytes, decoded by the ingest agent (so bad input
    can be sent to the DLQ exactly as it came)."""

    def loads_value(self, app: AppT, message: Message, **_: Any) -> bytes | None:
        value = message.value
        return value if value is None or isinstance(value, bytes) else bytes(value)

    def dumps_value(self, app: AppT, value: Any, *, headers: Any, **_: Any) -> tuple[Any, Any]:
        return value, headers


class PydanticSchema(KeySchemaMixin, faust.Schema):
    """Internal topics: a pydantic model or annotated union, JSON via orjson."""

    def __init__(self, value_model: Any) -> None:
        super().__init__(key_type=str, value_type=bytes)
        self.value_model = value_model
        self._adapter: TypeAdapter[Any] = TypeAdapter(value_model)

    def loads_value(self, app: AppT, message: Message, **_: Any) -> Any:
        raw = message.value
        if raw is None:
            return Undecodable(raw=None, reason="empty value (tombstone) on a data topic")
        try:
            return self._adapter.validate_json(raw)
        except ValidationError as exc:
            return Undecodable(raw=raw, reason=describe_validation_error(exc))

    def dumps_value(self, app: AppT, value: Any, *, headers: Any, **_: Any) -> tuple[Any, Any]:
        if isinstance(value, BaseModel):
            return codec.dumps(value), headers
        return value, headers


class ByTopicSchema(KeySchemaMixin, faust.Schema):
    """A channel over several topics, each with its own model (`bytes`: a source topic's raw
    value): decoded by the topic the message came from (cheaper and stricter than trying a
    union of models)."""

    def __init__(self, models: dict[str, Any]) -> None:
        super().__init__(key_type=str, value_type=bytes)
        self._by_topic: dict[str, faust.Schema] = {
            topic: RawSchema() if model is bytes else PydanticSchema(model) for topic, model in models.items()
        }

    def loads_value(self, app: AppT, message: Message, **kwargs: Any) -> Any:
        schema = self._by_topic.get(message.topic)
        if schema is None:
            return Undecodable(raw=message.value, reason=f"no model for topic {message.topic}")
        return schema.loads_value(app, message, **kwargs)

    def dumps_value(self, app: AppT, value: Any, *, headers: Any, **_: Any) -> tuple[Any, Any]:
        if isinstance(value, BaseModel):
            return codec.dumps(value), headers
        return value, headers
