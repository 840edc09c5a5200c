"""CLM contract events → canonical `ChangeEvent`s (pure)."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import ValidationError

from canonical import ChangeEvent, Contract, ContractLine, ContractStatus, EntityType, Source
from connectors.clm.schemas import ClmContractEvent, ClmEventType
from connectors.errors import RejectionReason, rejection_from
from streams.headers import stable_id

CustomerResolver = Callable[[Source, str], str]

STATUS = {
    ClmEventType.SIGNED: ContractStatus.SIGNED,
    ClmEventType.AMENDED: ContractStatus.AMENDED,
    ClmEventType.RENEWED: ContractStatus.RENEWED,
    ClmEventType.TERMINATED: ContractStatus.TERMINATED,
}


def map_clm_event(
    raw: bytes, resolve_customer: CustomerResolver, correlation_id: str | None = None
) -> list[ChangeEvent]:
    """One CLM event → one canonical contract change, ordered by the contract's version."""
    try:
        event = ClmContractEvent.model_validate_json(raw)
    except ValidationError as exc:
        kinds = {e["type"] for e in exc.errors(include_input=False)}
        reason = RejectionReason.NOT_JSON if "json_invalid" in kinds else RejectionReason.SCHEMA_INVALID
        raise rejection_from(exc, reason) from None
    try:
        contract = Contract(
            contract_id=event.contract_id,
            crm_account_id=event.crm_account_id,
            status=STATUS[event.event_type],
            amendment_number=event.amendment_number,
            effective_date=event.effective_date,
            end_date=event.end_date,
            legal_entity=event.legal_entity,
            currency=event.currency,
            lines=tuple(
                ContractLine(
                    product_id=line.product_id,
                    quantity=line.quantity,
                    unit_amount=line.unit_price,
                    currency=line.currency,
                )
                for line in event.lines
            ),
        )
    except ValidationError as exc:
        raise rejection_from(exc, RejectionReason.INVALID_VALUE) from None
    return [
        ChangeEvent(
            event_id=event.event_id,
            source=Source.CLM,
            source_type=f"contract.{event.event_type.value}",
            entity_type=EntityType.CONTRACT,
            entity_id=event.contract_id,
            entity_version=(event.version,),
            customer_ref=event.crm_account_id,
            customer_id=resolve_customer(Source.CLM, event.crm_account_id),
            occurred_at=event.occurred_at,
            correlation_id=correlation_id or stable_id("correlation", "clm", event.event_id),
            payload=contract,
        )
    ]
