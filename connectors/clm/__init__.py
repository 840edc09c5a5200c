"""CLM / CPQ contract lifecycle events: the published schema and its canonical mapping."""

from connectors.clm.mapping import map_clm_event
from connectors.clm.schemas import ClmContractEvent

__all__ = ["ClmContractEvent", "map_clm_event"]
