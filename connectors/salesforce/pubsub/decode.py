"""Pub/Sub API change events → the CometD-shaped CDC JSON that `schemas.payload_of` reads. Pure.

A Pub/Sub payload is schemaless Avro binary written with the schema `GetSchema` returns for the
event's `schema_id` (cached by id: a new field is a new id). Its record carries every field, the
unchanged ones null; dates are epoch milliseconds; the header's `changedFields`, `nulledFields`
and `diffFields` are bitmaps over the schema's field order (research sources.md A.2):

* an element `0x…` is one big-endian integer, bit i (LSB = 0) = top-level field i
  (`ChangeEventHeader` is field 0);
* `P-0x…` is a bitmap over the nested fields of the compound field at top-level index P
  (an address), named `Parent.Child`; for `nulledFields` a compound whose nested fields are all
  set is named once, as its parent;
* anything else is a field name already.

The output is what CometD delivers: `{"schema", "payload": {ChangeEventHeader, fields…},
"event": {"replayId"}}` with null and unchanged fields left out, dates as ISO UTC strings.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import fastavro
import orjson

HEADER_FIELD = "ChangeEventHeader"
BITMAP_FIELDS = ("changedFields", "nulledFields", "diffFields")
DATE_ONLY_FIELDS = frozenset({"CloseDate", "StartDate", "EndDate", "EffectiveDate", "Birthdate"})
"""Date (not datetime) fields of the entities ledgerflow books, rendered `YYYY-MM-DD`."""
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


class UndecodableEvent(ValueError):
    """A payload that its schema cannot read, or that is no change event; `reason` is the
    x-dlq-reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class CdcSchema:
    """One writer schema, parsed once: the reader, the top-level field names in order, and each
    compound field's nested names."""

    schema_id: str
    parsed: Any
    fields: tuple[str, ...]
    nested: dict[int, tuple[str, ...]]
    types: dict[str, Any]
    """Top-level field name → its (union-unwrapped) Avro type, for dates and nested records."""


def _branches(avro_type: Any) -> list[Any]:
    return list(avro_type) if isinstance(avro_type, list) else [avro_type]


def _record_of(avro_type: Any) -> dict[str, Any] | None:
    for branch in _branches(avro_type):
        if isinstance(branch, dict) and branch.get("type") == "record":
            return branch
    return None


def _value_type(avro_type: Any) -> Any:
    """The non-null branch of a nullable union (the first, for a wider one)."""
    rest = [b for b in _branches(avro_type) if b != "null"]
    return rest[0] if rest else "null"


def parse_schema(schema_id: str, schema_json: str) -> CdcSchema:
    """A `GetSchema` answer as a `CdcSchema`; raises `UndecodableEvent` for a schema that is
    not a change event's record."""
    try:
        raw = orjson.loads(schema_json)
        parsed = fastavro.parse_schema(raw)
    except (orjson.JSONDecodeError, fastavro.schema.SchemaParseException, TypeError, KeyError) as exc:
        raise UndecodableEvent("unreadable_schema", f"schema {schema_id}: {exc}") from None
    if not isinstance(raw, dict) or raw.get("type") != "record" or not raw.get("fields"):
        raise UndecodableEvent("unreadable_schema", f"schema {schema_id} is not a record")
    fields = tuple(str(f["name"]) for f in raw["fields"])
    if HEADER_FIELD not in fields:
        raise UndecodableEvent("unreadable_schema", f"schema {schema_id} has no {HEADER_FIELD}")
    nested: dict[int, tuple[str, ...]] = {}
    types: dict[str, Any] = {}
    for index, spec in enumerate(raw["fields"]):
        record = _record_of(spec["type"])
        if record is not None:
            nested[index] = tuple(str(f["name"]) for f in record["fields"])
        types[str(spec["name"])] = _value_type(spec["type"])
    return CdcSchema(schema_id, parsed, fields, nested, types)


def _bits(hex_text: str) -> list[int]:
    value = int(hex_text[2:] or "0", 16)
    return [i for i in range(value.bit_length()) if value >> i & 1]


def field_names(elements: list[str], schema: CdcSchema, *, nulled: bool = False) -> list[str]:
    """A header bitmap list as field names (`Parent.Child` for compound fields' parts)."""
    out: list[str] = []
    for element in elements:
        try:
            if element.startswith("0x"):
                for i in _bits(element):
                    out.append(schema.fields[i])
                continue
            parent, sep, bitmap = element.partition("-")
            if sep and parent.isdigit() and bitmap.startswith("0x"):
                index = int(parent)
                children = schema.nested[index]
                bits = _bits(bitmap)
                if nulled and len(bits) == len(children):
                    out.append(schema.fields[index])
                else:
                    out.extend(f"{schema.fields[index]}.{children[i]}" for i in bits)
                continue
        except (ValueError, IndexError, KeyError):
            raise UndecodableEvent(
                "bad_bitmap", f"{element!r} does not fit schema {schema.schema_id}"
            ) from None
        out.append(element)  # a literal field name
    return out


def to_bitmaps(names: list[str], schema: CdcSchema) -> list[str]:
    """The inverse of `field_names` (the stand-in writes headers with it): top-level names in
    the first element, each compound's parts as `P-0x…`; a nulled compound's parent name sets
    all its parts."""
    top = 0
    parts: dict[int, int] = {}
    for name in names:
        parent, _, child = name.partition(".")
        index = schema.fields.index(parent)
        if child:
            parts[index] = parts.get(index, 0) | 1 << schema.nested[index].index(child)
        else:
            top |= 1 << index
    out = [f"0x{top:X}"] if top or not parts else []
    out.extend(f"{index}-0x{bits:X}" for index, bits in sorted(parts.items()))
    return out


def _iso_millis(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _plain(name: str, value: Any, avro_type: Any) -> Any:
    """One field's value as CometD JSON has it."""
    if isinstance(value, dict) and len(value) == 1 and isinstance(avro_type, list | str):
        # avro-js style {"string": "SFO"}: a union branch spelled out
        ((branch, inner),) = value.items()
        if branch in _PRIMITIVES:
            value = inner
    if isinstance(value, datetime):  # an Avro timestamp-millis logical type
        return _iso_millis(int(value.timestamp() * 1000))
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, int) and not isinstance(value, bool) and avro_type == "long":
        if name in DATE_ONLY_FIELDS:
            return datetime.fromtimestamp(value / 1000, UTC).date().isoformat()
        if name.endswith(("Date", "Modstamp")):
            return _iso_millis(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


def _record_fields(values: dict[str, Any], avro_record: dict[str, Any] | None) -> dict[str, Any]:
    types = {str(f["name"]): _value_type(f["type"]) for f in (avro_record or {}).get("fields", [])}
    out: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        field_type = types.get(name)
        if isinstance(value, dict) and _record_of(field_type) is not None:
            nested = _record_fields(value, _record_of(field_type))
            if nested:
                out[name] = nested
            continue
        out[name] = _plain(name, value, field_type)
    return out


def decode_payload(payload: bytes, schema: CdcSchema) -> dict[str, Any]:
    """The Avro record of one event, as read with its writer schema."""
    try:
        record = fastavro.schemaless_reader(io.BytesIO(payload), schema.parsed, None)
    except (EOFError, ValueError, TypeError, IndexError, KeyError, UnicodeDecodeError, OverflowError) as exc:
        raise UndecodableEvent(
            "undecodable_avro", f"{type(exc).__name__} with schema {schema.schema_id}"
        ) from None
    if not isinstance(record, dict) or not isinstance(record.get(HEADER_FIELD), dict):
        raise UndecodableEvent("undecodable_avro", f"no {HEADER_FIELD} in the record")
    return record


def to_cdc_json(record: dict[str, Any], schema: CdcSchema, replay_id: bytes) -> dict[str, Any]:
    """A decoded record as the CometD envelope: header bitmaps as names, nulls left out."""
    header = dict(record[HEADER_FIELD])
    for name in BITMAP_FIELDS:
        elements = header.get(name) or []
        if not isinstance(elements, list) or not all(isinstance(e, str) for e in elements):
            raise UndecodableEvent("bad_bitmap", f"{name} is not a list of strings")
        header[name] = field_names(elements, schema, nulled=name == "nulledFields")
    if not isinstance(header.get("changeType"), str):
        header["changeType"] = str(header.get("changeType"))  # an Avro enum reads as its symbol
    body: dict[str, Any] = {}
    for name, value in record.items():
        if name == HEADER_FIELD or value is None:
            continue
        field_type = schema.types.get(name)
        nested_record = _record_of(field_type)
        if isinstance(value, dict) and nested_record is not None:
            nested = _record_fields(value, nested_record)
            if nested:
                body[name] = nested
        else:
            body[name] = _plain(name, value, field_type)
    return {
        "schema": schema.schema_id,
        "payload": {HEADER_FIELD: header, **body},
        "event": {"replayId": replay_id.hex()},
    }


def decode_event(payload: bytes, schema: CdcSchema, replay_id: bytes) -> dict[str, Any]:
    """One Pub/Sub CDC event → the CometD CDC JSON (raises `UndecodableEvent`)."""
    return to_cdc_json(decode_payload(payload, schema), schema, replay_id)


def account_key(message: dict[str, Any]) -> str:
    """The Kafka key of a CDC message on crm.changes, as `streams.web.ingress._relay_key` keys a
    relay's: the payload's AccountId, else the first record id (an Account's own id; for a
    Contact update that does not change AccountId, its own id, so one record's changes stay in
    order); a GAP_OVERFLOW naming no record is keyed by its entity."""
    payload = message["payload"]
    account = payload.get("AccountId")
    if isinstance(account, str) and account:
        return account
    header = payload[HEADER_FIELD]
    ids = header.get("recordIds") or []
    if ids and isinstance(ids[0], str) and ids[0]:
        return ids[0]
    return str(header.get("entityName") or "unknown")
