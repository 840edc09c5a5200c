"""Salesforce Change Data Capture: each header case with real-shaped payloads."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from agents.identity import provisional_customer_id
from canonical import ContractStatus, Customer, EntityType
from canonical.merge import merge_partial
from connectors.errors import Rejection, RejectionReason
from connectors.salesforce import ResyncRequired, map_cdc_event

TX = "0002343d-9d90-e395-ed20-cf416ba652ad"


def cdc(
    entity: str,
    change: str,
    record_ids: list[str],
    fields: dict[str, Any],
    *,
    seq: int = 1,
    changed: list[str] | None = None,
    nulled: list[str] | None = None,
    origin: str = "com/salesforce/api/soap/58.0;client=SfdcInternalAPI/",
    tx: str = TX,
    ts: int = 1_700_000_000_000,
) -> bytes:
    """A CDC message as the Pub/Sub API delivers it (decoded to JSON), in CometD's envelope."""
    header = {
        "entityName": entity,
        "recordIds": record_ids,
        "changeType": change,
        "changeOrigin": origin,
        "transactionKey": tx,
        "sequenceNumber": seq,
        "commitTimestamp": ts,
        "commitNumber": 10714113000170,
        "commitUser": "005RM000001vI54YAE",
        "nulledFields": nulled or [],
        "diffFields": [],
        "changedFields": changed or [],
    }
    return orjson.dumps(
        {
            "data": {
                "schema": "IeRuaY6cbI_HsV8Rv1Mc5g",
                "payload": {"ChangeEventHeader": header, **fields},
                "event": {"replayId": 37343},
            },
            "channel": "/data/ChangeEvents",
        }
    )


def _map(raw: bytes) -> list:  # type: ignore[type-arg]
    return map_cdc_event(raw, provisional_customer_id)


ACCOUNT = {
    "Name": "Acme GmbH",
    "BillingAddress": {"City": "Berlin", "CountryCode": "DE"},
    "CurrencyIsoCode": "EUR",
    "ParentId": "001PARENT",
    "Tax_Id__c": "DE123456789",
    "LastModifiedDate": "2023-11-14T22:13:20.000Z",
}


def test_account_create_is_a_full_customer_snapshot() -> None:
    [change] = _map(cdc("Account", "CREATE", ["001A"], ACCOUNT))
    customer = change.payload
    assert isinstance(customer, Customer) and change.changed_fields is None
    assert (
        customer.name,
        customer.country,
        customer.currency,
        customer.parent_account_id,
        customer.tax_ids,
    ) == ("Acme GmbH", "DE", "EUR", "001PARENT", ("DE123456789",))
    assert change.customer_id == "cust-crm-001A" and change.entity_type is EntityType.CUSTOMER
    assert change.entity_version == (1_700_000_000_000, 1)


def test_update_carries_only_changed_and_nulled_fields_and_merges() -> None:
    [created] = _map(cdc("Account", "CREATE", ["001A"], ACCOUNT))
    update = cdc(
        "Account",
        "UPDATE",
        ["001A"],
        {"Name": "Acme Europe GmbH", "LastModifiedDate": "x"},
        changed=["Name", "LastModifiedDate"],
        nulled=["ParentId"],
        seq=2,
        ts=1_700_000_100_000,
    )
    [change] = _map(update)
    assert change.changed_fields == ("name", "parent_account_id")
    merged = merge_partial(created.payload, change.payload, change.changed_fields)
    assert isinstance(merged, Customer)
    assert (merged.name, merged.parent_account_id, merged.country, merged.tax_ids) == (
        "Acme Europe GmbH",
        None,
        "DE",
        ("DE123456789",),
    )  # the rest is kept


def test_compound_address_field_update() -> None:
    raw = cdc(
        "Account",
        "UPDATE",
        ["001A"],
        {"BillingAddress": {"CountryCode": "AT"}},
        changed=["BillingAddress.CountryCode"],
    )
    [change] = _map(raw)
    assert change.changed_fields == ("country",) and change.payload.country == "AT"


def test_several_record_ids_fan_out() -> None:
    raw = cdc(
        "Account", "UPDATE", ["001A", "001B", "001C"], {"CurrencyIsoCode": "GBP"}, changed=["CurrencyIsoCode"]
    )
    changes = _map(raw)
    assert [c.entity_id for c in changes] == ["001A", "001B", "001C"]
    assert len({c.event_id for c in changes}) == 3 and all(c.payload.currency == "GBP" for c in changes)
    assert [c.customer_id for c in changes] == ["cust-crm-001A", "cust-crm-001B", "cust-crm-001C"]


def test_order_inside_a_transaction_is_the_sequence_number_not_commit_number() -> None:
    first = _map(cdc("Account", "UPDATE", ["001A"], {"Name": "a"}, changed=["Name"], seq=1))[0]
    second = _map(cdc("Account", "UPDATE", ["001A"], {"Name": "b"}, changed=["Name"], seq=2))[0]
    assert first.entity_version < second.entity_version
    assert first.correlation_id == second.correlation_id  # one transaction, one business change


@pytest.mark.parametrize("gap", ["GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE", "GAP_OVERFLOW"])
def test_gap_events_require_a_resync(gap: str) -> None:
    with pytest.raises(ResyncRequired) as info:
        _map(cdc("Account", gap, ["001A", "001B"], {}))
    assert info.value.header.recordIds == ["001A", "001B"]


def test_echo_of_our_own_write_back_is_dropped() -> None:
    echo = cdc(
        "Account",
        "UPDATE",
        ["001A"],
        {"ERP_Id__c": "123"},
        changed=["ERP_Id__c"],
        origin="com/salesforce/api/rest/58.0;client=ledgerflow-writeback",
    )
    assert _map(echo) == []
    other = cdc(
        "Account",
        "UPDATE",
        ["001A"],
        {"Name": "x"},
        changed=["Name"],
        origin="com/salesforce/api/rest/58.0;client=ledgerflow-writeback-test",
    )
    assert len(_map(other)) == 1


def test_delete_marks_the_customer_deleted() -> None:
    [change] = _map(cdc("Account", "DELETE", ["001A"], {}))
    assert change.deleted and change.payload.crm_account_id == "001A"


def test_contact_updates_the_account_email_or_is_rejected_without_account() -> None:
    [change] = _map(
        cdc(
            "Contact",
            "CREATE",
            ["003C"],
            {"AccountId": "001A", "Email": "ap@acme.example", "LastName": "Payable"},
        )
    )
    assert change.customer_id == "cust-crm-001A" and change.changed_fields == ("email",)
    with pytest.raises(Rejection) as info:
        _map(cdc("Contact", "UPDATE", ["003C"], {"Email": "new@acme.example"}, changed=["Email"]))
    assert info.value.reason is RejectionReason.MISSING_FIELD and "AccountId" in info.value.fields


def test_closed_won_opportunity_becomes_a_signed_contract() -> None:
    won = {
        "AccountId": "001A",
        "StageName": "Closed Won",
        "IsWon": True,
        "CloseDate": "2026-02-01",
        "CurrencyIsoCode": "USD",
        "Amount": 120000,
    }
    [change] = _map(cdc("Opportunity", "CREATE", ["006O"], won))
    assert change.entity_type is EntityType.CONTRACT and change.payload.status is ContractStatus.SIGNED
    assert change.customer_id == "cust-crm-001A"
    open_opp = {**won, "StageName": "Negotiation", "IsWon": False}
    assert _map(cdc("Opportunity", "CREATE", ["006P"], open_opp)) == []


def test_activated_contract_and_order() -> None:
    contract = {
        "AccountId": "001A",
        "Status": "Activated",
        "StartDate": "2026-01-01",
        "EndDate": "2026-12-31",
        "CurrencyIsoCode": "EUR",
    }
    [c] = _map(cdc("Contract", "CREATE", ["800K"], contract))
    assert c.payload.status is ContractStatus.ACTIVE and str(c.payload.end_date) == "2026-12-31"
    order = {"AccountId": "001A", "Status": "Draft", "EffectiveDate": "2026-01-01", "CurrencyIsoCode": "EUR"}
    [o] = _map(cdc("Order", "CREATE", ["801O"], order))
    assert o.payload.status is ContractStatus.DRAFT


def test_partial_contract_update_is_not_guessed() -> None:
    with pytest.raises(Rejection) as info:
        _map(cdc("Contract", "UPDATE", ["800K"], {"Status": "Activated"}, changed=["Status"]))
    assert info.value.reason is RejectionReason.MISSING_FIELD


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{", RejectionReason.NOT_JSON),
        (b'{"data": {"payload": {"Name": "x"}}}', RejectionReason.SCHEMA_INVALID),
        (
            orjson.dumps({"payload": {"ChangeEventHeader": {"entityName": "Account"}}}),
            RejectionReason.SCHEMA_INVALID,
        ),
        (cdc("Account", "MERGE", ["001A"], {}), RejectionReason.INVALID_VALUE),
        (cdc("Account", "CREATE", ["001A"], {"CurrencyIsoCode": "ZZZ"}), RejectionReason.INVALID_VALUE),
    ],
)
def test_bad_messages_are_typed_rejections(raw: bytes, reason: RejectionReason) -> None:
    with pytest.raises(Rejection) as info:
        _map(raw)
    assert info.value.reason is reason
