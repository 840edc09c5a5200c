"""Checks a NetSuite REST body against ledgerflow's schema of NetSuite's records
(`netsuite_records.json`): field names, types, sublists, read-only fields, amounts' decimals.

One check for two users: the NetSuite stand-in refuses what it flags (as a real account does
with `X-NetSuite-PropertyNameValidation: Error`), and the connector's unit tests assert that
every body ledgerflow builds passes it. A Python float anywhere in a body is flagged: amounts
go as `Decimal`, never through binary floating point.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("netsuite_records.json")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(T[0-9:.+\-Z]+)?$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a body: where (a JSONPath like NetSuite's `o:errorPath`), NetSuite's
    error code, and a detail in NetSuite's words."""

    path: str
    code: str
    detail: str
    kind: str = "value"
    """unknown (no such field), read_only (NetSuite computes it), value (wrong type or
    decimals), required (missing)."""


@dataclass(frozen=True)
class Reference:
    """A reference field in a body: where it is, which record type it names, and the id."""

    path: str
    record_type: str
    id: str | None
    external_id: str | None


@dataclass(frozen=True)
class _Shape:
    fields: dict[str, str]
    read_only: frozenset[str]
    required: tuple[str, ...]
    custom_prefix: str | None


@functools.cache
def _schema() -> tuple[dict[str, _Shape], dict[str, _Shape]]:
    raw = json.loads(SCHEMA_PATH.read_text("utf-8"))

    def shape(spec: dict[str, Any]) -> _Shape:
        return _Shape(
            fields=dict(spec["fields"]),
            read_only=frozenset(spec.get("read_only", ())),
            required=tuple(spec.get("required", ())),
            custom_prefix=spec.get("custom_prefix"),
        )

    return (
        {name: shape(spec) for name, spec in raw["records"].items()},
        {name: shape(spec) for name, spec in raw["sublists"].items()},
    )


def record_types() -> frozenset[str]:
    return frozenset(_schema()[0])


def field_type(record_type: str, name: str) -> str | None:
    shape = _schema()[0].get(record_type)
    return shape.fields.get(name) if shape else None


def check(
    record_type: str,
    body: Any,
    exponent: int | None,
    custom_fields: frozenset[str] | None = frozenset(),
    *,
    partial: bool = False,
) -> list[Problem]:
    """What is wrong with `body` as a write of `record_type`. `exponent` is the decimals of the
    body's currency (None: amounts are not checked for decimals); `custom_fields` are the
    custom field script ids the account has (None: any with the record's prefix); `partial`
    skips the required-field check (an update that sends only what changes)."""
    records, _ = _schema()
    shape = records.get(record_type)
    if shape is None:
        return [Problem("", "INVALID_RCRD_TYPE", f"Record type {record_type!r} does not exist.")]
    if not isinstance(body, dict):
        return [Problem("", "INVALID_CONTENT", "The request body must be a JSON object.")]
    return list(_check_object(shape, body, "", exponent, custom_fields, partial))


def _check_object(
    shape: _Shape,
    body: dict[str, Any],
    at: str,
    exponent: int | None,
    custom_fields: frozenset[str] | None,
    partial: bool,
) -> Iterator[Problem]:
    _, sublists = _schema()
    for name, value in body.items():
        path = f"{at}{name}"
        kind = shape.fields.get(name)
        if kind is None:
            prefix = shape.custom_prefix
            custom = prefix is not None and name.startswith(prefix)
            if custom and (custom_fields is None or name in custom_fields):
                if isinstance(value, float):
                    yield Problem(
                        path, "INVALID_CONTENT", f"Field {name} is a float: amounts go as decimals."
                    )
                continue
            yield Problem(
                path, "INVALID_CONTENT", f"Invalid field name {name}: the field does not exist.", "unknown"
            )
            continue
        if name in shape.read_only:
            yield Problem(
                path, "INVALID_CONTENT", f"Field {name} is read-only: NetSuite computes it.", "read_only"
            )
            continue
        if kind.startswith("sublist:"):
            element = sublists[kind.removeprefix("sublist:")]
            items = value.get("items") if isinstance(value, dict) else None
            if not isinstance(items, list) or set(value) - {"items", "links", "totalResults", "count"}:
                yield Problem(path, "INVALID_CONTENT", f'Sublist {name} must be {{"items": [...]}}.')
                continue
            for i, item in enumerate(items):
                item_at = f"{path}.items[{i}]"
                if not isinstance(item, dict):
                    yield Problem(item_at, "INVALID_CONTENT", "A sublist line must be an object.")
                    continue
                yield from _check_object(element, item, item_at + ".", exponent, custom_fields, False)
            continue
        problem = _check_value(kind, value, exponent)
        if problem is not None:
            yield Problem(path, "INVALID_CONTENT", f"Invalid value for field {name}: {problem}")
    if not partial:
        for name in shape.required:
            if body.get(name) in (None, "", [], {}):
                yield Problem(f"{at}{name}", "USER_ERROR", f"Please enter value(s) for: {name}", "required")


def _check_value(kind: str, value: Any, exponent: int | None) -> str | None:
    if value is None:
        return None  # null clears a field (PATCH semantics); never required here
    if isinstance(value, float):
        return "a float; amounts and numbers go as decimals"
    if kind == "string":
        return None if isinstance(value, str) else "expected a string"
    if kind == "boolean":
        return None if isinstance(value, bool) else "expected true or false"
    if kind == "date":
        return None if is_date(value) else "expected a date YYYY-MM-DD"
    if kind in ("number", "amount"):
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            return "expected a number"
        if kind == "amount" and exponent is not None and _decimals(value) > exponent:
            return f"{value} has more decimals than the currency allows ({exponent})"
        return None
    if kind.startswith("ref:"):
        if not isinstance(value, dict) or not (value.get("id") or value.get("externalId")):
            return 'expected a reference {"id": "<internal id>"}'
        if set(value) - {"id", "externalId", "refName", "links"}:
            return "a reference takes id, externalId, refName and links only"
        if "id" in value and not isinstance(value["id"], str):
            return "a reference's id is a string"
        return None
    if kind in ("status", "links"):
        return None
    raise ValueError(f"unknown field type {kind!r} in {SCHEMA_PATH.name}")


def _decimals(value: int | Decimal) -> int:
    if isinstance(value, int):
        return 0
    exponent = value.normalize().as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def references(record_type: str, body: dict[str, Any]) -> Iterator[Reference]:
    """Every reference field of a (schema-valid) body, sublists included."""
    shape = _schema()[0].get(record_type)
    if shape is None:
        return
    yield from _references(shape, body, "")


def _references(shape: _Shape, body: dict[str, Any], at: str) -> Iterator[Reference]:
    _, sublists = _schema()
    for name, value in body.items():
        kind = shape.fields.get(name, "")
        if kind.startswith("ref:") and isinstance(value, dict):
            ref_id = value.get("id")
            ext = value.get("externalId")
            yield Reference(
                f"{at}{name}",
                kind.removeprefix("ref:"),
                str(ref_id) if ref_id is not None else None,
                str(ext) if ext is not None else None,
            )
        elif kind.startswith("sublist:") and isinstance(value, dict):
            element = sublists[kind.removeprefix("sublist:")]
            for i, item in enumerate(value.get("items") or []):
                if isinstance(item, dict):
                    yield from _references(element, item, f"{at}{name}.items[{i}].")


def is_date(value: Any) -> bool:
    if not isinstance(value, str) or not _DATE.match(value):
        return False
    try:
        (datetime.fromisoformat(value) if "T" in value else date.fromisoformat(value))
    except ValueError:
        return False
    return True
