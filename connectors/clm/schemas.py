"""The contract lifecycle event a CLM or CPQ system produces to `clm.changes`.

Its JSON Schema is published at `connectors/clm/clm-contract-event.schema.json` so a CLM team
can produce it without reading this code (`make schemas` regenerates it).
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

Id = Annotated[str, StringConstraints(min_length=1, max_length=128)]
CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]


class ClmEventType(StrEnum):
    SIGNED = "signed"
    AMENDED = "amended"
    RENEWED = "renewed"
    TERMINATED = "terminated"


class ClmContractLine(BaseModel):
    """One priced line of the agreed terms."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    product_id: Id
    quantity: int = Field(ge=0)
    unit_price: int = Field(
        description="Price per unit in the currency's minor units (cents; yen have none)."
    )
    currency: CurrencyCode


class ClmContractEvent(BaseModel):
    """One change in a contract's life: signed, amended (with its number), renewed, terminated."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, title="ledgerflow CLM contract event")

    schema_version: int = Field(default=1, description="1 for this version of the schema.")
    event_id: Id = Field(description="Unique per event; a redelivery repeats it.")
    event_type: ClmEventType
    contract_id: Id
    crm_account_id: Id = Field(description="The Salesforce Account id the contract belongs to.")
    version: int = Field(ge=1, description="Increases by one with every event of this contract.")
    amendment_number: int = Field(
        default=0, ge=0, description="0 for the original terms; n for the n-th amendment."
    )
    effective_date: date
    end_date: date | None = None
    legal_entity: Id | None = Field(default=None, description="The contracting entity (ERP subsidiary).")
    currency: CurrencyCode
    lines: list[ClmContractLine] = []
    occurred_at: AwareDatetime

    @model_validator(mode="after")
    def _consistent(self) -> ClmContractEvent:
        if self.event_type is ClmEventType.AMENDED and self.amendment_number < 1:
            raise ValueError("an amendment needs amendment_number >= 1")
        if self.end_date is not None and self.end_date < self.effective_date:
            raise ValueError("end_date is before effective_date")
        return self
