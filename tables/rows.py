"""Reading and writing pydantic rows in a Faust table (values are JSON bytes, via orjson)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel

from canonical import codec

if TYPE_CHECKING:
    from collections.abc import MutableMapping

R = TypeVar("R", bound=BaseModel)


def get_row(table: MutableMapping[bytes, bytes], key: str, row_type: type[R]) -> R | None:
    raw = table.get(key.encode())
    return None if raw is None else codec.loads(row_type, raw)


def put_row(table: MutableMapping[bytes, bytes], key: str, row: BaseModel) -> None:
    table[key.encode()] = codec.dumps(row)
