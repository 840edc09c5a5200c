"""JSON in and out of the canonical models (orjson out, pydantic's strict JSON parser in)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, TypeAdapter

M = TypeVar("M", bound=BaseModel)


def dumps(model: BaseModel) -> bytes:
    """Serialise a model to compact JSON bytes."""
    return orjson.dumps(model.model_dump(mode="python", exclude_none=False))


def loads(model_type: type[M], data: bytes | str) -> M:
    """Parse and validate JSON into `model_type` (strict: floats for money are refused)."""
    return model_type.model_validate_json(data)


def loads_any(adapter: TypeAdapter[Any], data: bytes | str) -> Any:
    """Parse JSON into a union type (e.g. `AnyErpCommand`) through its adapter."""
    return adapter.validate_json(data)


def json_schema(model_type: Any) -> dict[str, Any]:
    """The JSON Schema of a model or annotated union."""
    if isinstance(model_type, type) and issubclass(model_type, BaseModel):
        return model_type.model_json_schema()
    return TypeAdapter(model_type).json_schema()


def export_json_schemas(models: dict[str, Any], directory: Path) -> list[Path]:
    """Write one `<Name>.schema.json` per model, sorted keys, so diffs stay readable."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model_type in sorted(models.items()):
        path = directory / f"{name}.schema.json"
        schema = json_schema(model_type)
        path.write_bytes(orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
        written.append(path)
    return written
