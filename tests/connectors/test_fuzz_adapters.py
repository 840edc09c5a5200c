"""Property tests for the Salesforce and CLM adapters: canonical events or a typed rejection,
never another exception, whatever arrives."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.identity import provisional_customer_id
from canonical import ChangeEvent
from connectors.clm import map_clm_event
from connectors.errors import Rejection
from connectors.salesforce import map_cdc_event
from tests.connectors.clm.test_clm import clm
from tests.connectors.salesforce.test_cdc import ACCOUNT, cdc
from tests.connectors.stripe.test_fuzz import json_values, mangle

ADAPTERS = [map_cdc_event, map_clm_event]


def _check(adapter: Any, raw: bytes) -> None:
    try:
        result = adapter(raw, provisional_customer_id)
    except Rejection as rejection:
        assert rejection.header_value
        return
    assert all(isinstance(c, ChangeEvent) for c in result)


@given(
    st.sampled_from(ADAPTERS),
    st.binary(max_size=256) | st.builds(lambda v: json.dumps(v).encode(), json_values),
)
def test_arbitrary_input(adapter: Any, raw: bytes) -> None:
    _check(adapter, raw)


SEEDS = [
    (map_cdc_event, cdc("Account", "CREATE", ["001A"], ACCOUNT)),
    (
        map_cdc_event,
        cdc("Account", "UPDATE", ["001A", "001B"], {"Name": "x"}, changed=["Name"], nulled=["ParentId"]),
    ),
    (
        map_cdc_event,
        cdc(
            "Opportunity",
            "CREATE",
            ["006"],
            {"AccountId": "001A", "IsWon": True, "CloseDate": "2026-01-01", "CurrencyIsoCode": "USD"},
        ),
    ),
    (map_cdc_event, cdc("Contact", "CREATE", ["003"], {"AccountId": "001A", "Email": "a@b.example"})),
    (map_clm_event, clm()),
]


@settings(max_examples=300)
@given(st.sampled_from(SEEDS), st.data())
def test_mangled_real_shaped_messages(seed: tuple[Any, bytes], data: st.DataObject) -> None:
    adapter, raw = seed
    message = json.loads(raw)
    mangle(message, data)
    _check(adapter, json.dumps(message).encode())
