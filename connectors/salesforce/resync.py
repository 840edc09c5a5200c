"""Re-reading what the event bus lost: Accounts changed since a time, through the REST query API,
as CDC-shaped UPDATE events carrying every field (`ledgerflow resync salesforce`).

The query is `SELECT <fields> FROM Account WHERE SystemModstamp >= <since> ORDER BY
SystemModstamp`, its pages followed through `nextRecordsUrl`. Each record becomes an UPDATE whose
`changedFields` name every field read (and `nulledFields` the empty ones), so the CDC mapping
overwrites what it knows with the record as it is; its `transactionKey` is derived from the
record id and `SystemModstamp`, so a second run is a duplicate the pipeline drops, and a record
changed again after the first run is a new event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from connectors.salesforce.pubsub.auth import Session
from streams.headers import stable_id

DEFAULT_FIELDS = (
    "Id",
    "Name",
    "ParentId",
    "CurrencyIsoCode",
    "BillingCountryCode",
    "Tax_Id__c",
    "LastModifiedDate",
    "SystemModstamp",
)
"""What the CDC mapping reads of an Account (connectors.salesforce.mapping.ACCOUNT_FIELDS)."""
RESYNC_ORIGIN = "ledgerflow-resync"


class ResyncError(Exception):
    """The org refused the query, or answered something that is no query result."""


def soql_datetime(moment: datetime) -> str:
    """A SOQL datetime literal (unquoted, UTC): 2026-01-31T00:00:00Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def changed_since_query(since: datetime, fields: Sequence[str] = DEFAULT_FIELDS) -> str:
    selected = list(dict.fromkeys(["Id", *fields, "SystemModstamp"]))
    return (
        f"SELECT {', '.join(selected)} FROM Account "
        f"WHERE SystemModstamp >= {soql_datetime(since)} ORDER BY SystemModstamp"
    )


def _epoch_ms(value: str) -> int:
    # Salesforce writes 2026-01-31T10:00:00.000+0000; fromisoformat reads it since 3.11
    return int(datetime.fromisoformat(value).timestamp() * 1000)


def resync_event(record: dict[str, Any]) -> dict[str, Any]:
    """One queried Account as a CDC UPDATE message (the CometD envelope)."""
    record_id = record.get("Id")
    modstamp = record.get("SystemModstamp")
    if not isinstance(record_id, str) or not record_id or not isinstance(modstamp, str):
        raise ResyncError("a query record without Id or SystemModstamp")
    fields = {k: v for k, v in record.items() if k not in ("attributes", "Id")}
    header = {
        "entityName": "Account",
        "recordIds": [record_id],
        "changeType": "UPDATE",
        "changeOrigin": RESYNC_ORIGIN,
        "transactionKey": stable_id("salesforce-resync", record_id, modstamp),
        "sequenceNumber": 0,
        "commitTimestamp": _epoch_ms(modstamp),
        "commitNumber": None,
        "commitUser": None,
        "changedFields": sorted(k for k, v in fields.items() if v is not None),
        "nulledFields": sorted(k for k, v in fields.items() if v is None),
        "diffFields": [],
    }
    return {
        "schema": "resync",
        "payload": {"ChangeEventHeader": header, **{k: v for k, v in fields.items() if v is not None}},
        "event": {"replayId": None},
    }


async def changed_accounts(
    session: Session,
    since: datetime,
    api_version: str,
    fields: Sequence[str] = DEFAULT_FIELDS,
    http: httpx.AsyncClient | None = None,
    timeout_s: float = 30.0,
) -> AsyncIterator[dict[str, Any]]:
    """The Accounts changed since `since`, page by page (`nextRecordsUrl`)."""
    client = http or httpx.AsyncClient(timeout=timeout_s)
    headers = {"Authorization": f"Bearer {session.access_token}"}
    url: str | None = f"{session.instance_url}/services/data/{api_version}/query"
    params: dict[str, str] | None = {"q": changed_since_query(since, fields)}
    try:
        while url is not None:
            response = await client.get(url, params=params, headers=headers)
            try:
                body = response.json()
            except ValueError:
                body = None
            if response.status_code != 200 or not isinstance(body, dict):
                code = body[0].get("errorCode") if isinstance(body, list) and body else response.status_code
                raise ResyncError(f"the query answered {response.status_code} ({code})")
            for record in body.get("records") or []:
                yield record
            following = body.get("nextRecordsUrl")
            url = f"{session.instance_url}{following}" if isinstance(following, str) and following else None
            params = None
    except httpx.HTTPError as exc:
        raise ResyncError(f"{type(exc).__name__} calling {session.instance_url}") from None
    finally:
        if http is None:
            await client.aclose()
