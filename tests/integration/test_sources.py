"""Salesforce CDC and CLM through the worker on the real broker: canonical events out, a GAP
becomes a resync exception, bad input is dead-lettered with its reason."""

from __future__ import annotations

import asyncio

import orjson

from canonical import BusinessException, ChangeEvent, ExceptionReason, codec
from tests.connectors.clm.test_clm import clm
from tests.connectors.salesforce.test_cdc import ACCOUNT, cdc
from tests.support import Stack, consume_until, produce


def test_crm_and_clm_changes_flow_to_canonical(stack: Stack) -> None:
    stack.start_worker()
    crm = [
        ("001A", cdc("Account", "CREATE", ["001A"], ACCOUNT, seq=1), {}),
        ("001A", cdc("Account", "UPDATE", ["001A"], {"Name": "Acme EU"}, changed=["Name"], seq=2), {}),
        ("001A", cdc("Account", "GAP_UPDATE", ["001A"], {}, seq=3), {}),
        # Another account that looks like the same company: raised, never merged.
        (
            "001B",
            cdc(
                "Account", "CREATE", ["001B"], {**ACCOUNT, "Name": "ACME GmbH.", "Tax_Id__c": None}, tx="tx-b"
            ),
            {},
        ),
        (
            "001A",
            cdc(
                "Account",
                "UPDATE",
                ["001A"],
                {"X__c": 1},
                changed=["X__c"],
                seq=4,
                origin="com/salesforce/api/rest/58.0;client=ledgerflow-writeback",
            ),
            {},
        ),
    ]
    contracts = [
        ("001A", clm(), {"x-correlation-id": "deal-42"}),
        ("001A", orjson.dumps({"event_type": "signed"}), {}),
    ]

    async def run() -> dict[str, list]:  # type: ignore[type-arg]
        await produce(stack.bootstrap, stack.topic("crm.changes"), crm)
        await produce(stack.bootstrap, stack.topic("clm.changes"), contracts)
        topics = [stack.topic(t) for t in ("ledgerflow.canonical", "ledgerflow.exceptions", "ledgerflow.dlq")]
        found = await consume_until(
            stack.bootstrap,
            topics,
            lambda f: len(f[topics[0]]) >= 4 and len(f[topics[1]]) >= 2 and len(f[topics[2]]) >= 1,
            timeout=60,
        )
        return {t.removeprefix(stack.prefix): v for t, v in found.items()}

    out = asyncio.run(run())
    canonical = [codec.loads(ChangeEvent, v) for _, v, _ in out["ledgerflow.canonical"]]
    assert sorted(c.source_type for c in canonical) == [
        "Account.CREATE",
        "Account.CREATE",
        "Account.UPDATE",
        "contract.signed",
    ]
    assert {k for k, _, _ in out["ledgerflow.canonical"]} == {"cust-crm-001A", "cust-crm-001B"}
    contract = next(c for c in canonical if c.source_type == "contract.signed")
    assert contract.correlation_id == "deal-42"

    raised = [codec.loads(BusinessException, v) for _, v, _ in out["ledgerflow.exceptions"]]
    exceptions = {e.reason: e for e in raised}
    assert set(exceptions) == {ExceptionReason.RESYNC_REQUIRED, ExceptionReason.LIKELY_DUPLICATE_CUSTOMER}
    assert exceptions[ExceptionReason.RESYNC_REQUIRED].entity_id == "001A"
    assert exceptions[ExceptionReason.LIKELY_DUPLICATE_CUSTOMER].entity_id == "name:DE:acme"
    [(_, raw, headers)] = out["ledgerflow.dlq"]
    assert raw == orjson.dumps({"event_type": "signed"})
    assert headers["x-dlq-reason"].startswith("schema_invalid") and headers["x-source-topic"].endswith(
        "clm.changes"
    )
