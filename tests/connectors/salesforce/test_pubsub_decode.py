"""Pub/Sub API decoding (connectors.salesforce.pubsub.decode): bitmaps and Avro both ways, and
the CometD JSON the CDC mapping reads."""

from __future__ import annotations

import io
import random

import fastavro
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from canonical import EntityType
from connectors.salesforce.mapping import ResyncRequired, map_cdc_event
from connectors.salesforce.pubsub import decode
from connectors.salesforce.pubsub_sandbox import (
    ACCOUNT_SCHEMA_ID,
    ACCOUNT_SCHEMA_JSON,
    account_changes,
    event_header,
)

SCHEMA = decode.parse_schema(ACCOUNT_SCHEMA_ID, ACCOUNT_SCHEMA_JSON)
ADDRESS = SCHEMA.fields.index("BillingAddress")

# The docs' worked example against a 31-field schema with the address at index 4 and a second
# compound at 7 (research sources.md A.2): bits [5,6,7,10,24,26,29,30], [4] and [1,2].
_DOC_FIELDS = [
    {"name": "ChangeEventHeader", "type": {"type": "record", "name": "H", "fields": []}},
    *({"name": f"F{i}", "type": ["null", "string"], "default": None} for i in range(1, 4)),
    {"name": "BillingAddress", "type": ["null", {"type": "record", "name": "Address", "fields": [
        {"name": n, "type": ["null", "string"], "default": None}
        for n in ("Street", "City", "State", "PostalCode", "Country")]}], "default": None},
    *({"name": f"F{i}", "type": ["null", "string"], "default": None} for i in (5, 6)),
    {"name": "Name", "type": ["null", {"type": "record", "name": "PersonName", "fields": [
        {"name": n, "type": ["null", "string"], "default": None}
        for n in ("Salutation", "FirstName", "LastName")]}],
     "default": None},
    *({"name": f"F{i}", "type": ["null", "string"], "default": None} for i in range(8, 31)),
]  # fmt: skip
DOC_SCHEMA = decode.parse_schema(
    "doc", orjson.dumps({"type": "record", "name": "E", "fields": _DOC_FIELDS}).decode()
)


def test_the_documented_example_decodes_to_the_documented_bits() -> None:
    names = decode.field_names(["0x650004E0", "4-0x10", "7-0x06"], DOC_SCHEMA)
    top = [DOC_SCHEMA.fields[i] for i in (5, 6, 7, 10, 24, 26, 29, 30)]
    assert names == [*top, "BillingAddress.Country", "Name.FirstName", "Name.LastName"]


def test_literal_names_pass_through_and_a_fully_nulled_compound_is_named_once() -> None:
    assert decode.field_names(["Custom__c", "0x2"], SCHEMA) == ["Custom__c", "Name"]
    every_part = f"{ADDRESS}-0x{(1 << len(SCHEMA.nested[ADDRESS])) - 1:X}"
    assert decode.field_names([every_part], SCHEMA, nulled=True) == ["BillingAddress"]
    assert len(decode.field_names([every_part], SCHEMA)) == len(SCHEMA.nested[ADDRESS])


@pytest.mark.parametrize("element", ["0x80000000000", f"{ADDRESS}-0x1000", "1-0x1", "99-0x1", "0xZZ"])
def test_a_bitmap_that_does_not_fit_the_schema_is_a_typed_error(element: str) -> None:
    with pytest.raises(decode.UndecodableEvent) as raised:
        decode.field_names([element], SCHEMA)
    assert raised.value.reason == "bad_bitmap"


_NAMES = [n for n in SCHEMA.fields[1:] if SCHEMA.fields.index(n) not in SCHEMA.nested] + [
    f"{SCHEMA.fields[i]}.{child}" for i, children in SCHEMA.nested.items() if i for child in children
]


@given(st.lists(st.sampled_from(_NAMES), unique=True, min_size=1))
def test_bitmaps_round_trip(names: list[str]) -> None:
    decoded = decode.field_names(decode.to_bitmaps(names, SCHEMA), SCHEMA)
    assert sorted(decoded) == sorted(names)
    # top-level fields come first, in schema order, as Salesforce's own decoders emit them
    top = [n for n in decoded if "." not in n]
    assert top == sorted(top, key=SCHEMA.fields.index)


def _encode(record: dict[str, object]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, SCHEMA.parsed, record)
    return buffer.getvalue()


def test_avro_round_trip_gives_the_cometd_envelope() -> None:
    record = next(account_changes(1, seed=3))
    record["LastModifiedDate"] = 1_696_444_513_000
    message = decode.decode_event(_encode(record), SCHEMA, (1234).to_bytes(8, "big"))
    payload = message["payload"]
    header = payload["ChangeEventHeader"]
    assert message["schema"] == ACCOUNT_SCHEMA_ID and message["event"] == {"replayId": "00000000000004d2"}
    assert (
        header["changeType"] == "CREATE" and header["recordIds"] == record["ChangeEventHeader"]["recordIds"]
    )
    assert (
        "BillingAddress.City" not in header["changedFields"] and "BillingAddress" in header["changedFields"]
    )
    assert payload["LastModifiedDate"] == "2023-10-04T18:35:13.000Z"  # epoch ms → CometD's UTC string
    assert payload["BillingAddress"]["CountryCode"] in {"DE", "FR", "US", "GB"}
    assert "Latitude" not in payload["BillingAddress"] and "Fax" not in payload  # nulls left out
    assert payload["NumberOfEmployees"] == record["NumberOfEmployees"]


def test_decoded_updates_map_to_canonical_customers() -> None:
    changes = list(account_changes(60, seed=11, records=5))
    address_updates = 0
    for i, record in enumerate(changes):
        message = decode.decode_event(_encode(record), SCHEMA, i.to_bytes(8, "big"))
        events = map_cdc_event(orjson.dumps(message), lambda _s, ref: f"cus-{ref}")
        assert [e.entity_type for e in events] == [EntityType.CUSTOMER]
        header = message["payload"]["ChangeEventHeader"]
        assert events[0].entity_id == header["recordIds"][0] == decode.account_key(message)
        if "BillingAddress.CountryCode" in header["changedFields"]:
            address_updates += 1
            assert events[0].payload.country == record["BillingAddress"]["CountryCode"]  # type: ignore[union-attr, index]
            assert events[0].changed_fields is not None and "country" in events[0].changed_fields
    assert address_updates > 0


def test_nulled_fields_decode_as_names() -> None:
    header = event_header("Account", ["001000000000000AAA"], "UPDATE", 1_700_000_000, 1)
    header["nulledFields"] = decode.to_bitmaps(["Fax", "ShippingAddress"], SCHEMA)
    header["changedFields"] = decode.to_bitmaps(["Fax", "ShippingAddress"], SCHEMA)
    message = decode.decode_event(_encode({"ChangeEventHeader": header}), SCHEMA, b"\x00" * 8)
    assert message["payload"]["ChangeEventHeader"]["nulledFields"] == ["ShippingAddress", "Fax"]


def test_a_gap_event_decodes_and_the_mapping_asks_for_a_resync() -> None:
    header = event_header("Account", ["001000000000000AAA"], "GAP_UPDATE", 1_700_000_000, 1)
    message = decode.decode_event(_encode({"ChangeEventHeader": header}), SCHEMA, b"\x00" * 8)
    with pytest.raises(ResyncRequired):
        map_cdc_event(orjson.dumps(message), lambda _s, ref: ref)


def test_union_wrapped_values_are_unwrapped() -> None:
    record = {"ChangeEventHeader": {"changedFields": [], "nulledFields": [], "diffFields": []},
              "Name": {"string": "SFO"}, "LastModifiedDate": {"long": 1_696_444_513_000}}  # fmt: skip
    message = decode.to_cdc_json(record, SCHEMA, b"\x01")
    assert message["payload"]["Name"] == "SFO"
    assert message["payload"]["LastModifiedDate"] == "2023-10-04T18:35:13.000Z"


@pytest.mark.parametrize("payload", [b"", b"\xff" * 3, bytes(random.Random(5).randbytes(40))])
def test_garbage_is_a_typed_error_not_a_crash(payload: bytes) -> None:
    with pytest.raises(decode.UndecodableEvent) as raised:
        decode.decode_event(payload, SCHEMA, b"\x00")
    assert raised.value.reason in {"undecodable_avro", "bad_bitmap"}


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"type": "string"}',
        '{"type": "record", "name": "X", "fields": [{"name": "a", "type": "int"}]}',
    ],
)
def test_a_schema_that_is_no_change_event_is_refused(text: str) -> None:
    with pytest.raises(decode.UndecodableEvent) as raised:
        decode.parse_schema("bad", text)
    assert raised.value.reason == "unreadable_schema"


def test_merged_records_are_keyed_by_their_first_id_like_the_relay() -> None:
    from streams.web.ingress import _relay_key

    header = event_header("Account", ["001000000000000AAA", "001000000000000BBB"], "UPDATE", 1_700_000_000, 1)
    message = {"payload": {"ChangeEventHeader": header}}
    assert decode.account_key(message) == _relay_key("salesforce", message) == "001000000000000AAA"
    contact = {"payload": {"ChangeEventHeader": {**header, "entityName": "Contact"}, "AccountId": "001C"}}
    assert decode.account_key(contact) == _relay_key("salesforce", contact) == "001C"
