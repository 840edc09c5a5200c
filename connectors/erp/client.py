"""The ERP client protocol the sink posts through, and NetSuite's client.

`NetSuiteClient` speaks NetSuite's REST record API, where `PUT …/eid:{externalId}` is an
upsert, so a retry can never duplicate. Business Central's, which cannot upsert, is
`connectors.erp.business_central_client`.

Both send `Authorization: Bearer …` (from a `TokenProvider`, refreshed once on a 401) and the
command's correlation id as `x-correlation-id` (`connectors.http`), and raise only
`connectors.erp.errors` types.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import httpx
import orjson

from canonical.base import to_external_id
from canonical.commands import ErpCommand, VoidInvoice
from connectors.erp import netsuite
from connectors.erp.auth import TokenProvider
from connectors.erp.errors import (
    ErpError,
    ErpPermanentError,
    ErpTransientError,
    classify,
    from_transport_error,
)
from connectors.erp.netsuite import NetSuiteMapper, OwnIds
from connectors.erp.schemas import (
    SUITEQL_TABLES,
    VOIDED,
    ErpDocument,
    ErpReceipt,
    ErpRecord,
    RecordType,
)
from connectors.http import BearerJsonClient
from connectors.http_transport import Answer, HttpAnswer, HttpSession
from streams.mappings import Mappings, load_mappings

log = logging.getLogger(__name__)

NETSUITE_RECORD_PATH = "/services/rest/record/v1"
SUITEQL_PATH = "/services/rest/query/v1/suiteql"
SUITEQL_IDS_MAX = 500
"""External ids in one SuiteQL query (its text stays well under NetSuite's limits)."""
SUITEQL_PAGE = 1000
"""Rows per page of a SuiteQL answer (NetSuite's most; the offset moves by whole pages)."""
PROPERTY_NAME_VALIDATION = "x-netsuite-propertynamevalidation"
"""Sent as Error: NetSuite's default (Warning) drops a misnamed field without a word."""
NETSUITE_WARNING = "x-netsuite-warning"
REPLACED_SUBLISTS = ("item", "taxDetails")
"""Sublists a re-sent upsert replaces (`?replace=`): NetSuite appends non-keyed sublist lines."""
DUPLICATE_CODES = frozenset({"DUP_RCRD", "DUP_ENTITY", "DUPLICATE_EXTERNAL_ID"})
"""Codes for "a record with this external id exists" (their exact text is undocumented)."""
# Alias so the `list` methods below do not shadow the builtin in annotations.
Documents = list[ErpDocument]

READ_BACK_RECORD_TYPES = frozenset({RecordType.CUSTOMER, RecordType.INVOICE})
"""Records whose document number NetSuite assigns (entityId, tranId) and the pipeline uses: the
CRM write-back shows the customer's and the last invoice's. Nothing reads a payment's, credit
memo's or sales order's number. A NetSuite upsert answers without it, so it is read back: by
`deliver` itself, or (the sink) for a whole batch at once with `document_numbers`."""


@runtime_checkable
class ErpClient(Protocol):
    """What the sink needs from an ERP, whichever API shape it speaks."""

    async def deliver(
        self, command: ErpCommand, uncertain: bool = False, read_back: bool = True
    ) -> ErpReceipt:
        """Write the command's record; `uncertain` says an earlier attempt may have written.
        `read_back=False`: a receipt may come without the document number (`document_numbers`
        reads it later)."""
        ...

    async def document_numbers(
        self, record_type: RecordType | str, external_ids: Sequence[str], correlation_id: str | None = None
    ) -> dict[str, ErpDocument]:
        """External id → the record with its document number, for those of `external_ids` that exist."""
        ...

    async def get(
        self, record_type: RecordType | str, external_id: str, correlation_id: str | None = None
    ) -> ErpDocument | None: ...

    async def list(self, record_type: RecordType | str, correlation_id: str | None = None) -> Documents: ...

    async def aclose(self) -> None: ...


class _HttpErpClient(BearerJsonClient):
    """What both shapes share: the base URL, the page size, and the ERP's error dialects."""

    service = "erp"

    def __init__(
        self,
        base_url: str,
        token_provider: TokenProvider,
        timeout: float | httpx.Timeout = 10.0,
        http: HttpSession | None = None,
        *,
        page_size: int = 100,
    ) -> None:
        super().__init__(token_provider, timeout, http)
        self.base_url = base_url.rstrip("/")
        self.page_size = page_size

    def _classify(self, response: HttpAnswer) -> ErpError | None:
        return classify(response)

    def _no_answer(self, exc: httpx.TransportError, request_sent: bool) -> ErpError:
        return from_transport_error(exc, request_sent)


def _json(response: Answer) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        # A 2xx with a broken body (a proxy page): the write may or may not have happened.
        raise ErpTransientError(
            "INVALID_RESPONSE", f"ERP answered {response.status_code} without JSON"
        ) from exc


def _receipt(document: ErpDocument, external_id: str, created: bool) -> ErpReceipt:
    return ErpReceipt(
        record_type=document.record_type,
        external_id=document.external_id or external_id,
        erp_internal_id=document.erp_internal_id,
        document_number=document.document_number,
        created=created,
    )


class NetSuiteClient(_HttpErpClient):
    """NetSuite's REST record API as it is: bodies in NetSuite's fields and major units
    (`connectors.erp.netsuite`), references by internal id, upsert by external id with
    `?replace=item` and `X-NetSuite-PropertyNameValidation: Error`, voids as reversing credit
    memos transformed from the invoice.

    The internal ids of ledgerflow's own records come from the command (stage 2 keeps them
    from erp.results), else from what this client wrote or read before (a bounded cache),
    else from one SuiteQL lookup by external id: in steady state a document costs one call."""

    def __init__(
        self,
        base_url: str,
        token_provider: TokenProvider,
        timeout: float | httpx.Timeout = 10.0,
        http: HttpSession | None = None,
        *,
        page_size: int = 100,
        mappings: Mappings | None = None,
        id_cache_size: int = 200_000,
    ) -> None:
        super().__init__(base_url, token_provider, timeout, http, page_size=page_size)
        self._headers[PROPERTY_NAME_VALIDATION] = "Error"
        self.mapper = NetSuiteMapper(mappings or load_mappings(None))
        self._ids: OrderedDict[tuple[RecordType, str], str] = OrderedDict()
        self._id_cache_size = id_cache_size
        self.lookups = 0
        """SuiteQL lookups of an own record's internal id (observable: steady state has none)."""

    def _encode(self, body: dict[str, Any]) -> bytes:
        return netsuite.dumps(body)

    def _url(self, record_type: RecordType | str, key: str | None = None) -> str:
        url = f"{self.base_url}{NETSUITE_RECORD_PATH}/{RecordType(record_type).value}"
        return f"{url}/{key}" if key is not None else url

    # -- internal ids of ledgerflow's own records --------------------------------------------

    def remember(self, record_type: RecordType, external_id: str, internal_id: str) -> None:
        key = (record_type, external_id)
        self._ids[key] = internal_id
        self._ids.move_to_end(key)
        while len(self._ids) > self._id_cache_size:
            self._ids.popitem(last=False)

    async def internal_id(
        self, record_type: RecordType, external_id: str, correlation_id: str | None = None
    ) -> str | None:
        """The internal id of one of ledgerflow's records: from the cache, else by SuiteQL."""
        known = self._ids.get((record_type, external_id))
        if known is not None:
            return known
        self.lookups += 1
        found = await self.document_numbers(record_type, [external_id], correlation_id)
        document = found.get(external_id)
        return document.erp_internal_id if document is not None else None

    async def _own_ids(self, command: ErpCommand) -> OwnIds:
        ids: dict[RecordType, str] = {}
        for record_type, external_id, known in NetSuiteMapper.references(command):
            if known is not None:
                self.remember(record_type, external_id, known)
                ids[record_type] = known
                continue
            internal_id = await self.internal_id(record_type, external_id, command.correlation_id)
            if internal_id is None:
                # What NetSuite itself would answer for a reference to a missing record.
                raise ErpPermanentError(
                    "INVALID_KEY_OR_REF",
                    f"no {record_type.value} with external id {external_id!r} in NetSuite to reference",
                    400,
                )
            ids[record_type] = internal_id
        return OwnIds(customer=ids.get(RecordType.CUSTOMER), invoice=ids.get(RecordType.INVOICE))

    # -- writes ------------------------------------------------------------------------------

    async def deliver(
        self, command: ErpCommand, uncertain: bool = False, read_back: bool = True
    ) -> ErpReceipt:
        """`PUT …/{recordType}/eid:{externalId}?replace=item,taxDetails` (an upsert: a re-send
        replaces the lines instead of appending them); then, for a record whose document number
        the pipeline uses (`READ_BACK_RECORD_TYPES`), `GET` it for that number, unless
        `read_back` is False (the caller reads many at once with `document_numbers`).

        `uncertain` matters only to a void, whose transform is a POST: the reversing credit
        memo is looked up by its own external id first."""
        own = await self._own_ids(command)
        record = self.mapper.record(command, own)
        if record.action == "void":
            assert own.invoice is not None
            return await self._reverse(command, record, own.invoice, uncertain)
        url = self._url(record.record_type, f"eid:{record.external_id}")
        replace = [name for name in REPLACED_SUBLISTS if name in record.body]
        params = {"replace": ",".join(replace)} if replace else None
        response = await self._call("PUT", url, command.correlation_id, body=record.body, params=params)
        _log_warnings(response, command.correlation_id)
        location_id = _id_from_location(response.headers.get("location"))
        if location_id is not None:
            self.remember(record.record_type, record.external_id, location_id)
        if location_id is not None and (not read_back or record.record_type not in READ_BACK_RECORD_TYPES):
            # NetSuite answers 204 with the record's Location only: its internal id is all a
            # payment, credit memo or sales order receipt needs, so the read is skipped.
            return ErpReceipt(
                record_type=record.record_type,
                external_id=record.external_id,
                erp_internal_id=location_id,
                created=None,
            )
        document = await self.get(record.record_type, record.external_id, command.correlation_id)
        if document is None:
            # Written (2xx) but not readable: retrying the upsert is safe and will read again.
            raise ErpTransientError(
                "READ_AFTER_WRITE", f"{record.record_type} {record.external_id} not found"
            )
        if location_id is not None and location_id != document.erp_internal_id:
            log.warning(
                "erp Location and record id differ",
                extra={"correlation_id": command.correlation_id, "location_id": location_id},
            )
        # NetSuite does not say whether an upsert created or updated; a record whose creation
        # is also its last modification was created by this call.
        return _receipt(document, record.external_id, _created_now(document.body))

    async def _reverse(
        self, command: ErpCommand, memo: ErpRecord, invoice_id: str, uncertain: bool
    ) -> ErpReceipt:
        """Void = `POST /invoice/{id}/!transform/creditMemo`, the memo keyed by the void's own
        external id, then applied to the invoice if the transform did not apply it (whether
        it does is not documented for REST: both are handled). The receipt names the invoice."""
        correlation_id = command.correlation_id
        existing = (
            await self.get(RecordType.CREDIT_MEMO, memo.external_id, correlation_id) if uncertain else None
        )
        memo_id = existing.erp_internal_id if existing is not None else None
        if memo_id is None:
            try:
                response = await self._call(
                    "POST",
                    f"{self._url(RecordType.INVOICE, invoice_id)}/!transform/creditMemo",
                    correlation_id,
                    body=memo.body,
                )
                _log_warnings(response, correlation_id)
                memo_id = _id_from_location(response.headers.get("location"))
            except ErpPermanentError as exc:
                # A retry after a lost answer: the memo with this external id exists already.
                if exc.code not in DUPLICATE_CODES:
                    raise
            if memo_id is None:
                found = await self.get(RecordType.CREDIT_MEMO, memo.external_id, correlation_id)
                if found is None:
                    raise ErpTransientError("READ_AFTER_WRITE", f"credit memo {memo.external_id} not found")
                memo_id = found.erp_internal_id
        await self._apply_reversal(memo_id, invoice_id, correlation_id)
        invoice_external_id = (
            command.invoice_external_id if isinstance(command, VoidInvoice) else memo.external_id
        )
        log.info(
            "erp invoice reversed by credit memo",
            extra={"correlation_id": correlation_id, "invoice_id": invoice_id, "credit_memo_id": memo_id},
        )
        return ErpReceipt(
            record_type=RecordType.INVOICE,
            external_id=invoice_external_id,
            erp_internal_id=invoice_id,
            created=False,
        )

    async def _apply_reversal(self, memo_id: str, invoice_id: str, correlation_id: str) -> None:
        url = self._url(RecordType.CREDIT_MEMO, memo_id)
        response = await self._call("GET", url, correlation_id, params={"expandSubResources": "true"})
        lines = ((netsuite.loads(response.content) or {}).get("apply") or {}).get("items") or []
        if any(_ref_id(line.get("doc")) == invoice_id and line.get("apply") is True for line in lines):
            return
        invoice = netsuite.loads(
            (await self._call("GET", self._url(RecordType.INVOICE, invoice_id), correlation_id)).content
        )
        remaining = invoice.get("amountRemaining")
        if not remaining:
            return  # paid in full before the void: the memo stays as an unapplied credit
        body = {"apply": {"items": [{"doc": {"id": invoice_id}, "apply": True, "amount": remaining}]}}
        await self._call("PATCH", url, correlation_id, body=body)

    # -- reads -------------------------------------------------------------------------------

    async def get(
        self, record_type: RecordType | str, external_id: str, correlation_id: str | None = None
    ) -> ErpDocument | None:
        """The record with this external id, or None (404)."""
        document = await self._read(record_type, f"eid:{external_id}", correlation_id)
        if document is not None:
            self.remember(document.record_type, external_id, document.erp_internal_id)
        return document

    async def document_numbers(
        self, record_type: RecordType | str, external_ids: Sequence[str], correlation_id: str | None = None
    ) -> dict[str, ErpDocument]:
        """Internal ids and document numbers of many records in one SuiteQL query per
        SUITEQL_IDS_MAX external ids (`POST /services/rest/query/v1/suiteql`, paged), instead of
        a GET per record: `SELECT id, externalid, tranid FROM transaction WHERE type =
        'CustInvc' AND externalid IN (…)` (entityid from customer)."""
        record_type = RecordType(record_type)
        table, kind, number = SUITEQL_TABLES[record_type]
        found: dict[str, ErpDocument] = {}
        for start in range(0, len(external_ids), SUITEQL_IDS_MAX):
            listed = ", ".join(quoted_literal(e) for e in external_ids[start : start + SUITEQL_IDS_MAX])
            where = (f"type = {quoted_literal(kind)} AND " if kind else "") + f"externalid IN ({listed})"
            query = f"SELECT id, externalid, {number} FROM {table} WHERE {where}"
            for item in await self.suiteql(query, correlation_id):
                external_id = str(item["externalid"])
                self.remember(record_type, external_id, str(item["id"]))
                found[external_id] = ErpDocument(
                    record_type=record_type,
                    external_id=external_id,
                    erp_internal_id=str(item["id"]),
                    document_number=item.get(number),
                    body=item,
                )
        return found

    async def suiteql(self, query: str, correlation_id: str | None = None) -> list[dict[str, Any]]:
        """Every row of a SuiteQL query (`POST /services/rest/query/v1/suiteql`), following its
        pages until `hasMore` is false: a caller never sees a partial answer as the whole one.

        Rows are as SuiteQL answers them, so callers must expect its quirks: every value is a
        string, NULL columns are left out of a row, column names are lower-case (and each row
        carries NetSuite's `links`). `prefer: transient` asks for an answer that is not cached."""
        rows: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = _json(
                await self._call(
                    "POST",
                    f"{self.base_url}{SUITEQL_PATH}",
                    correlation_id,
                    body={"q": query},
                    params={"limit": SUITEQL_PAGE, "offset": offset},
                    headers={"prefer": "transient"},
                )
            )
            items: list[dict[str, Any]] = page.get("items") or []
            rows += items
            if not page.get("hasMore") or not items:
                return rows
            offset += SUITEQL_PAGE

    async def get_by_id(
        self, record_type: RecordType | str, internal_id: str, correlation_id: str | None = None
    ) -> ErpDocument | None:
        """The record with this internal id, or None (404)."""
        return await self._read(record_type, internal_id, correlation_id)

    async def _read(
        self, record_type: RecordType | str, key: str, correlation_id: str | None
    ) -> ErpDocument | None:
        response = await self._call("GET", self._url(record_type, key), correlation_id, allow_404=True)
        if response.status_code == 404:
            return None
        return self.mapper.document(record_type, _netsuite_json(response))

    async def list(self, record_type: RecordType | str, correlation_id: str | None = None) -> Documents:
        """Every record of a type, as reconciliation compares them: a void is a credit memo
        transformed from its invoice (`createdFrom`), so an invoice it reverses reads as
        voided, and the reversing memo is not listed as a credit memo of its own."""
        record_type = RecordType(record_type)
        documents = await self._collection(record_type, correlation_id)
        if record_type is RecordType.INVOICE:
            memos = await self._collection(RecordType.CREDIT_MEMO, correlation_id)
            reversed_ids = {_ref_id(memo.body.get("createdFrom")) for memo in memos if _is_void(memo)} - {
                None
            }
            return [
                d.model_copy(update={"status": VOIDED}) if d.erp_internal_id in reversed_ids else d
                for d in documents
            ]
        if record_type is RecordType.CREDIT_MEMO:
            return [d for d in documents if not _is_void(d)]
        return documents

    async def _collection(self, record_type: RecordType, correlation_id: str | None) -> Documents:
        """Every record of a type, paging `?limit=&offset=` until `hasMore` is false.

        NetSuite's collection items carry only `id` and `links`, so each is read by id."""
        documents: Documents = []
        offset = 0
        while True:
            response = await self._call(
                "GET",
                self._url(record_type),
                correlation_id,
                params={"limit": self.page_size, "offset": offset},
            )
            page = _netsuite_json(response)
            items = page.get("items") or []
            for item in items:
                document = await self.get_by_id(record_type, str(item["id"]), correlation_id)
                if document is not None:  # deleted between the page and the read
                    documents.append(document)
            if not page.get("hasMore") or not items:
                return documents
            offset += len(items)


VOID_PREFIX = to_external_id("void_invoice", "")
"""How a void's key starts (stage 2's `posting_key("void_invoice", invoice)`)."""


def _is_void(memo: ErpDocument) -> bool:
    """A credit memo ledgerflow transformed from an invoice to void it: keyed by the void
    command (`void_invoice-…`). A credit a user made from the invoice in NetSuite's UI is
    transformed from it too, but is a credit memo of its own, not a void."""
    return _ref_id(memo.body.get("createdFrom")) is not None and (memo.external_id or "").startswith(
        VOID_PREFIX
    )


def _netsuite_json(response: Answer) -> Any:
    try:
        return netsuite.loads(response.content)
    except ValueError as exc:
        raise ErpTransientError(
            "INVALID_RESPONSE", f"ERP answered {response.status_code} without JSON"
        ) from exc


def _log_warnings(response: Answer, correlation_id: str | None) -> None:
    # NetSuite says what it ignored or changed in X-NetSuite-Warning headers on a 204.
    warnings = response.headers.getall(NETSUITE_WARNING, [])
    if warnings:
        log.warning("erp warning", extra={"correlation_id": correlation_id, "warnings": warnings})


def _ref_id(value: Any) -> str | None:
    return str(value["id"]) if isinstance(value, dict) and value.get("id") not in (None, "") else None


def _id_from_location(location: str | None) -> str | None:
    # NetSuite answers an upsert with `Location: …/record/v1/invoice/1234`.
    if not location:
        return None
    return location.rstrip("/").rsplit("/", 1)[-1] or None


def _created_now(body: dict[str, Any]) -> bool:
    created = body.get("createdDate")
    return created is not None and created == body.get("lastModifiedDate")


def quoted_literal(value: str) -> str:
    # SuiteQL's string literals double their single quotes (as OData's do).
    return "'" + value.replace("'", "''") + "'"
