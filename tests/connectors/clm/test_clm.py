"""CLM contract lifecycle events: the published schema, the mapping, the refusals."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from agents.identity import provisional_customer_id
from canonical import ContractStatus
from connectors.clm import map_clm_event
from connectors.errors import Rejection, RejectionReason


def clm(**over: Any) -> bytes:
    event: dict[str, Any] = {
        "schema_version": 1,
        "event_id": "clm-evt-1",
        "event_type": "signed",
        "contract_id": "K-100",
        "crm_account_id": "001A",
        "version": 1,
        "amendment_number": 0,
        "effective_date": "2026-01-01",
        "end_date": "2026-12-31",
        "legal_entity": "UK01",
        "currency": "GBP",
        "lines": [
            {"product_id": "prod_platform", "quantity": 1, "unit_price": 39900, "currency": "GBP"},
            {"product_id": "prod_seats", "quantity": 25, "unit_price": 2000, "currency": "GBP"},
        ],
        "occurred_at": "2025-12-20T10:00:00Z",
    }
    event.update(over)
    return orjson.dumps(event)


def test_signed_contract_maps_with_lines_and_dates() -> None:
    [change] = map_clm_event(clm(), provisional_customer_id)
    contract = change.payload
    assert change.customer_id == "cust-crm-001A"  # the same customer as the CRM's account
    assert contract.status is ContractStatus.SIGNED and contract.legal_entity == "UK01"
    assert [(line.product_id, line.quantity, line.unit_amount) for line in contract.lines] == [
        ("prod_platform", 1, 39900),
        ("prod_seats", 25, 2000),
    ]
    assert change.entity_version == (1,)


@pytest.mark.parametrize(
    ("event_type", "status"),
    [
        ("amended", ContractStatus.AMENDED),
        ("renewed", ContractStatus.RENEWED),
        ("terminated", ContractStatus.TERMINATED),
    ],
)
def test_lifecycle_events(event_type: str, status: ContractStatus) -> None:
    [change] = map_clm_event(
        clm(event_type=event_type, amendment_number=2, version=3), provisional_customer_id
    )
    assert change.payload.status is status and change.payload.amendment_number == 2
    assert change.entity_version == (3,)


@pytest.mark.parametrize(
    ("raw", "reason", "field"),
    [
        (b"not json", RejectionReason.NOT_JSON, None),
        (clm(event_type="paused"), RejectionReason.SCHEMA_INVALID, "event_type"),
        (clm(amendment_number=0, event_type="amended"), RejectionReason.SCHEMA_INVALID, "<root>"),
        (clm(end_date="2025-01-01"), RejectionReason.SCHEMA_INVALID, "<root>"),
        (clm(occurred_at="2025-12-20T10:00:00"), RejectionReason.SCHEMA_INVALID, "occurred_at"),
        (
            clm(lines=[{"product_id": "p", "quantity": 1, "unit_price": 10.5, "currency": "GBP"}]),
            RejectionReason.SCHEMA_INVALID,
            "lines.0.unit_price",
        ),
        (clm(currency="XXY"), RejectionReason.INVALID_VALUE, "currency"),
        (
            clm(lines=[{"product_id": "p", "quantity": 1, "unit_price": 10, "currency": "EUR"}]),
            RejectionReason.INVALID_VALUE,
            None,
        ),
        (clm(surprise=True), RejectionReason.SCHEMA_INVALID, "surprise"),
    ],
)
def test_refusals_name_the_field(raw: bytes, reason: RejectionReason, field: str | None) -> None:
    with pytest.raises(Rejection) as info:
        map_clm_event(raw, provisional_customer_id)
    assert info.value.reason is reason
    if field is not None:
        assert field in info.value.fields, info.value.fields
