"""Business Central API v2.0 as it is: the sink's client for `LEDGERFLOW_ERP_MODE=business-central`.

Business Central has no upsert, no idempotency key and no unique external document number, so
this client makes each write safe to repeat itself (shared/research/erp-apis.md §B):

* a customer is found by its `number` (ledgerflow's key, `business_central.customer_number`)
  and updated with `PATCH` under `If-Match` (its etag, kept from the last answer; a stale one is
  read again), or created when there is none;
* a sales invoice or credit memo is created as a draft with its lines (deep insert), its
  computed totals are compared with what billing charged (a difference deletes the draft and
  is a permanent error naming it), then `Microsoft.NAV.post` posts it;
* a payment is a customer payment journal line, posted with its journal;
* a void is `Microsoft.NAV.cancel` of the posted invoice, and a no-op on a canceled one.

When an earlier attempt may have written (`uncertain`: a timeout, a crash), the document is
looked up first by the key ledgerflow gave it (`externalDocumentNumber`, a payment's
`documentNumber` in the journal and then in the general ledger): a posted one is the answer, a
draft found is posted (or deleted and made again when it is incomplete), nothing found is
created. Amounts go as exact decimals in major units (`netsuite.dumps`, `netsuite.loads`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import quote, urlencode

import httpx

from canonical.commands import (
    ApplyPayment,
    ErpCommand,
    PostCreditMemo,
    PostInvoice,
    UpsertCustomer,
    VoidInvoice,
)
from connectors.erp import netsuite
from connectors.erp.auth import TokenProvider
from connectors.erp.business_central import (
    CANCELED,
    DRAFT,
    ENTITY_SETS,
    EXTERNAL_DOCUMENT_NUMBER_WIDTH,
    KEY_FIELDS,
    LINES,
    BcRecord,
    BusinessCentralMapper,
    PaymentSign,
    bc_code,
    customer_number,
    totals_agree,
)
from connectors.erp.business_central import DOCUMENT_NUMBER_WIDTH as PAYMENT_NUMBER_WIDTH
from connectors.erp.client import Documents, _HttpErpClient, quoted_literal
from connectors.erp.errors import ErpError, ErpPermanentError, ErpTransientError, classify
from connectors.erp.mapping import to_minor_units
from connectors.erp.odata_batch import BatchGatherer
from connectors.erp.resilience import CallSlots
from connectors.erp.schemas import ErpDocument, ErpReceipt, RecordType
from connectors.http import header_value
from connectors.http_transport import Answer, HttpSession
from streams.headers import CORRELATION_ID
from streams.mappings import BusinessCentralCompany, Mappings, load_mappings

log = logging.getLogger(__name__)

ENTITY_CHANGED = "Request_EntityChanged"
SAME_KEY_EXISTS = "Internal_EntityWithSameKeyExists"
TOTALS_DIFFER = "LEDGERFLOW_TOTALS_DIFFER"
NOTHING_TO_POST = "There is nothing to post"
FILTER_TERMS_MAX = 40
"""Keys in one `$filter` (`… eq 'a' or … eq 'b'`): the URL stays well under any limit."""
WRITE_ATTEMPTS = 3
"""Tries of a PATCH whose etag went stale between the read and the write."""
JournalPost = Literal["bound", "journals"]
Entities = list[dict[str, Any]]
"""Entities as Business Central answers them (an alias: `list` is a method of the client)."""


def key_of(record_type: RecordType, external_id: str) -> str:
    """The value ledgerflow gives a record's key field in Business Central."""
    if record_type is RecordType.CUSTOMER:
        return customer_number(external_id)
    width = (
        PAYMENT_NUMBER_WIDTH if record_type is RecordType.CUSTOMER_PAYMENT else EXTERNAL_DOCUMENT_NUMBER_WIDTH
    )
    return bc_code(external_id, width)


def _equals_any(name: str, values: Sequence[str]) -> str:
    return " or ".join(f"{name} eq {quoted_literal(v)}" for v in values)


class BusinessCentralClient(_HttpErpClient):
    """Business Central API v2.0 under `base_url` (`…/v2.0/{tenant}/{environment}/api/v2.0`)."""

    def __init__(
        self,
        base_url: str,
        token_provider: TokenProvider,
        timeout: float | httpx.Timeout = 10.0,
        http: HttpSession | None = None,
        *,
        page_size: int = 1000,
        mappings: Mappings | None = None,
        payment_sign: PaymentSign = "negative",
        cache_size: int = 200_000,
        batch_slots: CallSlots | None = None,
        batch_linger_s: float = 0.005,
        operation_timeout_s: float = 1.0,
    ) -> None:
        super().__init__(base_url, token_provider, timeout, http, page_size=page_size)
        self.gatherer = (
            BatchGatherer(self._send_batch, batch_slots, batch_linger_s) if batch_slots is not None else None
        )
        """With `batch_slots`, every call this client makes travels as an operation of a `$batch`
        shared with the other lanes' calls of the moment (`connectors.erp.odata_batch`), and the
        ERP's concurrency is spent per request from those slots: the caller takes none."""
        self.operation_timeout_s = operation_timeout_s
        """What each operation of a `$batch` adds to its timeout: Business Central runs them one
        after another, so a full batch takes far longer than one call."""
        self.mapper = BusinessCentralMapper(mappings or load_mappings(None), payment_sign)
        self._entities: OrderedDict[tuple[str, RecordType, str], tuple[str, str]] = OrderedDict()
        """(company id, record type, key) → (id, etag) of what this client wrote or read."""
        self._cache_size = cache_size
        self.journal_post: JournalPost | None = None
        """How this tenant posts a payment journal, once learned (`bound` is tried first)."""
        self.deep_insert = True
        """Whether this tenant takes a document's lines in its create; learned when refused."""
        self.lookups = 0
        """Reads made to find a record's id or key (observable: steady state has few)."""

    def _encode(self, body: dict[str, Any]) -> bytes:
        return netsuite.dumps(body)

    def _company_url(self, company: BusinessCentralCompany) -> str:
        return f"{self.base_url}/companies({company.id})"

    def _journal_url(self, company: BusinessCentralCompany) -> str:
        return f"{self._company_url(company)}/customerPaymentJournals({company.payment_journal})"

    def _set_url(self, company: BusinessCentralCompany, record_type: RecordType) -> str:
        if record_type is RecordType.CUSTOMER_PAYMENT:
            return f"{self._journal_url(company)}/customerPayments"
        return f"{self._company_url(company)}/{ENTITY_SETS[record_type]}"

    def _entity_url(self, company: BusinessCentralCompany, record_type: RecordType, entity_id: str) -> str:
        return f"{self._set_url(company, record_type)}({entity_id})"

    def _entity_path(self, company: BusinessCentralCompany, record_type: RecordType, entity_id: str) -> str:
        """An entity's URL relative to the API root, as a `$batch` operation names it."""
        return self._relative(self._entity_url(company, record_type, entity_id))

    def _remember(
        self, company: BusinessCentralCompany, record_type: RecordType, key: str, entity: dict[str, Any]
    ) -> None:
        cache_key = (company.id, record_type, key)
        self._entities[cache_key] = (str(entity["id"]), str(entity.get("@odata.etag") or "*"))
        self._entities.move_to_end(cache_key)
        while len(self._entities) > self._cache_size:
            self._entities.popitem(last=False)

    def _json(self, response: Answer) -> Any:
        try:
            return netsuite.loads(response.content)
        except ValueError as exc:
            raise ErpTransientError(
                "INVALID_RESPONSE", f"ERP answered {response.status_code} without JSON"
            ) from exc

    async def aclose(self) -> None:
        if self.gatherer is not None:
            await self.gatherer.aclose()
        await super().aclose()

    async def _api(
        self,
        method: str,
        url: str,
        correlation_id: str | None,
        *,
        body: dict[str, Any] | None = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
        allow_404: bool = False,
    ) -> Any:
        """One API call, its answer's body (None for a 204, or an allowed 404): a request of its
        own, or, gathering, one operation of a shared `$batch`. Any other answer without a body
        is a transient INVALID_RESPONSE: read as "nothing found", a lookup would create twice."""
        if self.gatherer is None:
            response = await self._call(
                method, url, correlation_id, body=body, params=params, headers=headers, allow_404=allow_404
            )
            if response.status_code == 204 or (allow_404 and response.status_code == 404):
                return None
            return self._json(response)
        operation: dict[str, Any] = {
            "id": "0",
            "method": method,
            "url": self._relative(url, params),
            "headers": {**(headers or {})},
        }
        if body is not None:
            operation["headers"]["content-type"] = "application/json"
            operation["body"] = body
        (answer,) = await self._batch([operation], correlation_id)
        status = _status(answer)
        if status == 204 or (allow_404 and status == 404):
            return None
        error = _operation_error(answer)
        if error is not None:
            raise error
        if answer.get("body") is None:
            raise ErpTransientError("INVALID_RESPONSE", f"ERP answered {status} without JSON")
        return answer["body"]

    def _relative(self, url: str, params: Mapping[str, str | int] | None = None) -> str:
        """A URL as a `$batch` operation names it: relative to the API root, its query encoded."""
        relative = url.removeprefix(f"{self.base_url}/")
        if params:
            query = urlencode({k: str(v) for k, v in params.items()}, quote_via=quote)
            relative += ("&" if "?" in relative else "?") + query
        return relative

    async def _send_batch(self, operations: Entities, correlation_id: str | None = None) -> Entities:
        """One `POST $batch` with `operations`; their answers, as Business Central gave them."""
        timeout = self._timeout
        if not isinstance(timeout, httpx.Timeout):  # a Timeout object says it all itself
            timeout += len(operations) * self.operation_timeout_s
        response = await self._call(
            "POST",
            f"{self.base_url}/$batch",
            correlation_id,
            body={"requests": operations},
            # OData stops a batch at its first failed operation unless asked not to: one lookup's
            # 404 must not leave every later caller in the request without an answer.
            headers={"prefer": "odata.continue-on-error"},
            timeout=timeout,
        )
        answers: Entities = self._json(response).get("responses") or []
        return answers

    # -- reads ---------------------------------------------------------------------------------

    async def _pages(self, url: str, correlation_id: str | None, params: dict[str, str | int]) -> Entities:
        """Every entity of a query, following `@odata.nextLink`."""
        items: Entities = []
        next_url: str | None = url
        query: dict[str, str | int] | None = {**params, "$top": self.page_size}
        while next_url is not None:
            page = await self._api("GET", next_url, correlation_id, params=query)
            if not isinstance(page, dict):
                raise ErpTransientError("INVALID_RESPONSE", "a query answered without its page")
            items += page.get("value") or []
            next_url, query = page.get("@odata.nextLink"), None  # the link carries the query
        return items

    async def _find(
        self,
        company: BusinessCentralCompany,
        record_type: RecordType,
        keys: Sequence[str],
        correlation_id: str | None,
    ) -> Entities:
        """The entities whose key field is one of `keys` (several per key when duplicated)."""
        url = self._set_url(company, record_type)
        return await self._where(url, KEY_FIELDS[record_type], keys, correlation_id)

    async def _where(
        self, url: str, field: str, values: Sequence[str], correlation_id: str | None
    ) -> Entities:
        """The entities of a set whose `field` is one of `values`, FILTER_TERMS_MAX per query."""
        found: Entities = []
        unique = list(dict.fromkeys(values))
        for start in range(0, len(unique), FILTER_TERMS_MAX):
            self.lookups += 1
            chunk = unique[start : start + FILTER_TERMS_MAX]
            found += await self._pages(url, correlation_id, {"$filter": _equals_any(field, chunk)})
        return found

    async def setup(
        self,
        company: BusinessCentralCompany | None,
        entity_set: str,
        field: str | None = None,
        values: Sequence[str] = (),
        correlation_id: str | None = None,
    ) -> Entities:
        """A setup entity set (`companies`, or a company's `items`, `accounts`, `taxGroups`,
        `currencies`, `customerPaymentJournals`), all of it, or where `field` is one of `values`."""
        url = (
            f"{self._company_url(company)}/{entity_set}"
            if company is not None
            else f"{self.base_url}/{entity_set}"
        )
        if field is None:
            return await self._pages(url, correlation_id, {})
        return await self._where(url, field, values, correlation_id)

    async def _read(
        self,
        company: BusinessCentralCompany,
        record_type: RecordType,
        entity_id: str,
        correlation_id: str | None,
    ) -> dict[str, Any] | None:
        entity: dict[str, Any] | None = await self._api(
            "GET", self._entity_url(company, record_type, entity_id), correlation_id, allow_404=True
        )
        return entity

    async def _posted_payment(
        self, company: BusinessCentralCompany, key: str, correlation_id: str | None
    ) -> bool:
        self.lookups += 1
        return bool(await self._posted_payments(company, correlation_id, key))

    # -- the ErpClient protocol ------------------------------------------------------------------

    async def deliver(
        self, command: ErpCommand, uncertain: bool = False, read_back: bool = True
    ) -> ErpReceipt:
        """Write the command's record (module docstring). `read_back` changes nothing: a posted
        document's number comes back in the `$batch` that posts it."""
        invoice_id = await self._invoice_reference(command)
        record = self.mapper.record(command, invoice_id)
        if record.action == "cancel":
            assert isinstance(command, VoidInvoice)
            return await self._cancel(record, command)
        if record.record_type is RecordType.CUSTOMER:
            return await self._customer(record, command)
        if record.record_type is RecordType.CUSTOMER_PAYMENT:
            return await self._payment(record, command, uncertain)
        return await self._document(record, command, uncertain)

    async def document_numbers(
        self, record_type: RecordType | str, external_ids: Sequence[str], correlation_id: str | None = None
    ) -> dict[str, ErpDocument]:
        """External id → its posted record with its number, for those that exist, read with one
        `$filter` per company (and 40 keys) instead of one read each."""
        record_type = RecordType(record_type)
        by_key = {key_of(record_type, eid): eid for eid in external_ids}
        found: dict[str, ErpDocument] = {}
        for company in self._companies():
            wanted = [k for k in by_key if by_key[k] not in found]
            if not wanted:
                break
            for entity in await self._find(company, record_type, wanted, correlation_id):
                if entity.get("status") == DRAFT:
                    continue
                eid = by_key.get(str(entity.get(KEY_FIELDS[record_type])))
                if eid is not None:
                    found[eid] = self._document_of(record_type, company, entity, eid)
        return found

    async def get(
        self, record_type: RecordType | str, external_id: str, correlation_id: str | None = None
    ) -> ErpDocument | None:
        """The record with this external id, posted before draft, or None."""
        record_type = RecordType(record_type)
        key = key_of(record_type, external_id)
        for company in self._companies():
            if record_type is RecordType.CUSTOMER_PAYMENT:
                posted = await self._posted_payments(company, correlation_id, key)
                if posted:
                    return posted[0].model_copy(update={"external_id": external_id})
            entities = await self._find(company, record_type, [key], correlation_id)
            if entities:
                entities.sort(key=lambda e: e.get("status") == DRAFT)
                return self._document_of(record_type, company, entities[0], external_id)
        return None

    async def list(self, record_type: RecordType | str, correlation_id: str | None = None) -> Documents:
        """Every record of a type in every company ledgerflow books in; external ids are the keys
        ledgerflow wrote (`key_of`). A payment is read as its journal line while unposted."""
        record_type = RecordType(record_type)
        documents: Documents = []
        if record_type is RecordType.SALES_ORDER:
            return documents  # ledgerflow writes none to Business Central
        for company in self._companies():
            if record_type is RecordType.CUSTOMER_PAYMENT:
                documents += await self._posted_payments(company, correlation_id)
            for entity in await self._pages(self._set_url(company, record_type), correlation_id, {}):
                key = entity.get(KEY_FIELDS[record_type])
                document = self._document_of(record_type, company, entity, str(key) if key else None)
                if record_type is RecordType.CUSTOMER_PAYMENT:  # a journal line: entered, not posted
                    document = document.model_copy(update={"status": DRAFT})
                documents.append(document)
        return documents

    async def _posted_payments(
        self, company: BusinessCentralCompany, correlation_id: str | None, key: str | None = None
    ) -> Documents:
        """Posted payments (the one with document number `key`, or all), from the general ledger:
        one document per document number, its amount the entries' debits (in the company's
        currency, as ledger entries are)."""
        debits: dict[str, Decimal] = {}
        wanted = f"documentNumber eq {quoted_literal(key)}" if key else "documentType eq 'Payment'"
        entries = await self._pages(
            f"{self._company_url(company)}/generalLedgerEntries", correlation_id, {"$filter": wanted}
        )
        for entry in entries:
            number = str(entry.get("documentNumber") or "")
            if number:
                debits[number] = debits.get(number, Decimal(0)) + Decimal(entry.get("debitAmount") or 0)
        return [
            ErpDocument(
                record_type=RecordType.CUSTOMER_PAYMENT,
                external_id=number,
                erp_internal_id=number,
                document_number=number,
                status="posted",
                currency=company.currency,
                total=to_minor_units(amount, company.currency),
                body={"documentNumber": number, "amount": amount},
            )
            for number, amount in debits.items()
        ]

    def _companies(self) -> tuple[BusinessCentralCompany, ...]:
        return tuple(dict.fromkeys(self.mapper.ids.companies.values()))

    def _document_of(
        self,
        record_type: RecordType,
        company: BusinessCentralCompany,
        entity: dict[str, Any],
        external_id: str | None,
    ) -> ErpDocument:
        document = self.mapper.document(record_type, company, entity)
        return document.model_copy(update={"external_id": external_id})

    # -- references ------------------------------------------------------------------------------

    async def _invoice_reference(self, command: ErpCommand) -> str | None:
        """The Business Central id of the invoice a payment, credit memo or void names: from the
        command (erp.results), else from this client's cache, else by `externalDocumentNumber`."""
        if isinstance(command, VoidInvoice):
            external_id, known, subsidiary = (
                command.invoice_external_id,
                command.invoice_erp_id,
                command.subsidiary,
            )
        elif isinstance(command, ApplyPayment | PostCreditMemo):
            doc = command.document
            external_id, known, subsidiary = doc.invoice_external_id, doc.invoice_erp_id, doc.subsidiary
        else:
            return None
        if known is not None:
            return known
        company = self.mapper.company(subsidiary)
        key = key_of(RecordType.INVOICE, external_id)
        cached = self._entities.get((company.id, RecordType.INVOICE, key))
        if cached is not None:
            return cached[0]
        posted = [
            e
            for e in await self._find(company, RecordType.INVOICE, [key], command.correlation_id)
            if e.get("status") != DRAFT
        ]
        if not posted:
            raise ErpPermanentError(
                "Internal_RecordNotFound",
                f"no posted invoice with externalDocumentNumber {key!r} in company {company.id} to reference",
                404,
            )
        self._remember(company, RecordType.INVOICE, key, posted[0])
        return str(posted[0]["id"])

    # -- customers -------------------------------------------------------------------------------

    async def _customer(self, record: BcRecord, command: ErpCommand) -> ErpReceipt:
        """PATCH the customer with this number under its etag, or create it. A stale etag (someone
        changed it in Business Central) is read again; a create that finds the number taken (an
        uncertain earlier create) becomes the update."""
        company, key, cid = record.company, record.key, command.correlation_id
        created = False
        for _ in range(WRITE_ATTEMPTS):
            known = self._entities.get((company.id, RecordType.CUSTOMER, key))
            if known is None:
                found = await self._find(company, RecordType.CUSTOMER, [key], cid)
                if found:
                    self._remember(company, RecordType.CUSTOMER, key, found[0])
                    known = self._entities[(company.id, RecordType.CUSTOMER, key)]
            try:
                if known is None:
                    entity = await self._api(
                        "POST", self._set_url(company, RecordType.CUSTOMER), cid, body=record.body
                    )
                    created = True
                else:
                    entity = await self._api(
                        "PATCH",
                        self._entity_url(company, RecordType.CUSTOMER, known[0]),
                        cid,
                        body={k: v for k, v in record.body.items() if k != "number"},
                        headers={"if-match": known[1]},
                    )
            except ErpPermanentError as exc:
                if exc.code not in (ENTITY_CHANGED, SAME_KEY_EXISTS) and exc.status != 404:
                    raise
                # Changed, created or deleted since: read it again.
                self._entities.pop((company.id, RecordType.CUSTOMER, key), None)
                created = False
                continue
            self._remember(company, RecordType.CUSTOMER, key, entity)
            return ErpReceipt(
                record_type=RecordType.CUSTOMER,
                external_id=_external_id(command),
                erp_internal_id=str(entity["id"]),
                document_number=str(entity.get("number") or key),
                created=created,
            )
        raise ErpTransientError(ENTITY_CHANGED, f"customer {key} kept changing while ledgerflow wrote it")

    # -- sales documents ---------------------------------------------------------------------------

    async def _document(self, record: BcRecord, command: ErpCommand, uncertain: bool) -> ErpReceipt:
        company, record_type, cid = record.company, record.record_type, command.correlation_id
        draft: dict[str, Any] | None = None
        if uncertain:
            for entity in await self._find(company, record_type, [record.key], cid):
                if entity.get("status") != DRAFT:
                    self._remember(company, record_type, record.key, entity)
                    return self._receipt(record, command, entity, created=False)
                if draft is None and totals_agree(record, entity) is None and _complete(record, entity):
                    log.info(
                        "posting a draft an earlier attempt left behind",
                        extra={"correlation_id": cid, "key": record.key},
                    )
                    draft = entity
                else:
                    # Incomplete or a duplicate: never posted, so removed, not left to be posted.
                    await self._delete_draft(company, record_type, entity, cid)
        created = draft is None
        if draft is None:
            draft = await self._create_draft(record, cid)
            problem = totals_agree(record, draft)
            if problem is not None:
                await self._delete_draft(company, record_type, draft, cid)
                raise ErpPermanentError(
                    TOTALS_DIFFER,
                    f"Business Central computed other totals for {record.key} than billing charged: "
                    f"{problem}; "
                    "the draft was deleted (check the company's tax setup for the line's tax code)",
                    422,
                )
        entity_path = self._entity_path(company, record_type, str(draft["id"]))
        # The post and the read of the posted document's number in one call: a `$batch` whose
        # read runs only if the post succeeded.
        post, posted = await self._batch(
            [
                {"id": "post", "method": "POST", "url": f"{entity_path}/Microsoft.NAV.post"},
                {"id": "read", "method": "GET", "url": entity_path, "dependsOn": ["post"]},
            ],
            cid,
        )
        failure = _operation_error(post)
        if isinstance(failure, ErpPermanentError):
            # A closed period, a blocked customer: the draft is not left for someone to post.
            await self._delete_draft(company, record_type, draft, cid)
        if failure is not None:
            raise failure
        self._remember(company, record_type, record.key, draft)
        if _operation_error(posted) is not None or not isinstance(posted.get("body"), dict):
            raise ErpTransientError(
                "READ_AFTER_WRITE", f"{record_type.value} {record.key} not read after posting"
            )
        return self._receipt(record, command, posted["body"], created=created)

    async def _batch(self, operations: Entities, correlation_id: str | None) -> Entities:
        """Operations in one `POST $batch` (JSON batch, at most 100), or in a gathered one: each
        answers on its own (`status`, `body`), in the order sent, and names its command's
        correlation id (a gathered request carries many)."""
        if correlation_id:
            for operation in operations:
                operation.setdefault("headers", {})[CORRELATION_ID] = header_value(correlation_id)
        if self.gatherer is not None:
            return await self.gatherer.run(operations)
        answers = {str(a.get("id")): a for a in await self._send_batch(operations, correlation_id)}
        missing = [op["id"] for op in operations if op["id"] not in answers]
        if missing:
            raise ErpTransientError("INVALID_RESPONSE", f"the $batch answer lacks operations {missing}")
        return [answers[op["id"]] for op in operations]

    async def _create_draft(self, record: BcRecord, correlation_id: str) -> dict[str, Any]:
        url = self._set_url(record.company, record.record_type)
        lines_name = LINES[record.record_type]
        if self.deep_insert:
            try:
                draft: dict[str, Any] = await self._api("POST", url, correlation_id, body=record.body)
                return draft
            except ErpPermanentError as exc:
                if exc.code != "BadRequest" or lines_name not in exc.message:
                    raise
                log.info(
                    "erp takes no deep insert: lines go one by one", extra={"correlation_id": correlation_id}
                )
                self.deep_insert = False
        header = {k: v for k, v in record.body.items() if k != lines_name}
        draft = await self._api("POST", url, correlation_id, body=header)
        entity_url = self._entity_url(record.company, record.record_type, str(draft["id"]))
        for line in record.body.get(lines_name) or []:
            await self._api("POST", f"{entity_url}/{lines_name}", correlation_id, body=line)
        again = await self._read(record.company, record.record_type, str(draft["id"]), correlation_id)
        if again is None:
            raise ErpTransientError("READ_AFTER_WRITE", f"draft {record.key} not found after its lines")
        return again

    async def _delete_draft(
        self,
        company: BusinessCentralCompany,
        record_type: RecordType,
        entity: dict[str, Any],
        correlation_id: str,
    ) -> None:
        try:
            await self._api(
                "DELETE",
                self._entity_url(company, record_type, str(entity["id"])),
                correlation_id,
                headers={"if-match": "*"},
                allow_404=True,
            )
        except ErpPermanentError as exc:
            log.warning("erp draft not deleted", extra={"correlation_id": correlation_id, "code": exc.code})

    def _receipt(
        self, record: BcRecord, command: ErpCommand, entity: dict[str, Any], created: bool
    ) -> ErpReceipt:
        number = entity.get("number") if entity.get("status") != DRAFT else None
        return ErpReceipt(
            record_type=record.record_type,
            external_id=_external_id(command),
            erp_internal_id=str(entity["id"]),
            document_number=str(number) if number else None,
            created=created,
        )

    async def _cancel(self, record: BcRecord, command: VoidInvoice) -> ErpReceipt:
        """Cancel the posted invoice (Business Central makes the corrective credit memo); an
        invoice canceled already is the answer, so a repeated void changes nothing."""
        company, cid = record.company, command.correlation_id
        invoice = await self._read(company, RecordType.INVOICE, record.key, cid)
        if invoice is None:
            raise ErpPermanentError(
                "Internal_RecordNotFound", f"no invoice {record.key} in company {company.id} to cancel", 404
            )
        if invoice.get("status") != CANCELED:
            try:
                await self._api(
                    "POST",
                    f"{self._entity_url(company, RecordType.INVOICE, record.key)}/Microsoft.NAV.cancel",
                    cid,
                )
            except ErpPermanentError:
                again = await self._read(company, RecordType.INVOICE, record.key, cid)
                if again is None or again.get("status") != CANCELED:
                    raise
        return ErpReceipt(
            record_type=RecordType.INVOICE,
            external_id=command.invoice_external_id,
            erp_internal_id=record.key,
            document_number=str(invoice.get("number")) if invoice.get("number") else None,
            created=False,
        )

    # -- payments --------------------------------------------------------------------------------

    async def _payment(self, record: BcRecord, command: ErpCommand, uncertain: bool) -> ErpReceipt:
        """A journal line, then its journal posted. Looked up first when uncertain: in the journal
        (entered, not yet posted), then in the general ledger (posted)."""
        company, key, cid = record.company, record.key, command.correlation_id
        line: dict[str, Any] | None = None
        if uncertain:
            # The journal first, then the ledger: a line only ever moves from the one to the other
            # (any lane's journal post takes it), so asked in this order it cannot be missed in
            # both, while the other order can miss a line posted between the two reads.
            lines = await self._find(company, RecordType.CUSTOMER_PAYMENT, [key], cid)
            line = lines[0] if lines else None
            for duplicate in lines[1:]:
                await self._delete_draft(company, RecordType.CUSTOMER_PAYMENT, duplicate, cid)
            if line is None and await self._posted_payment(company, key, cid):
                return self._payment_receipt(record, command, None, created=False)
        created = line is None
        if line is None:
            line, failure = await self._enter_and_post(record, cid)
        else:
            failure = await self._posting_failure(company, cid)
        if failure is None:
            return self._payment_receipt(record, command, line, created=created)
        if not isinstance(failure, ErpPermanentError):
            raise failure
        if NOTHING_TO_POST in failure.message and await self._posted_payment(company, key, cid):
            # Another lane posted the journal, this line with it.
            return self._payment_receipt(record, command, line, created=created)
        if key not in failure.message:
            # Another line of the shared journal was refused: this one is fine, try again.
            raise ErpTransientError(
                failure.code, f"the payment journal did not post: {failure.message}", status=failure.status
            ) from failure
        await self._delete_draft(company, RecordType.CUSTOMER_PAYMENT, line, cid)
        raise failure

    async def _enter_and_post(
        self, record: BcRecord, correlation_id: str
    ) -> tuple[dict[str, Any], ErpError | None]:
        """The journal line and the journal's post in one `$batch` (the post runs only if the
        line was entered): the line entered (its refusal is raised) and the post's failure, if
        any. A tenant whose journals have no `post` action is posted through `journals`."""
        company = record.company
        journal = self._relative(self._journal_url(company))
        operations: list[dict[str, Any]] = [
            {
                "id": "line",
                "method": "POST",
                "url": f"{journal}/customerPayments",
                "headers": {"content-type": "application/json"},
                "body": record.body,
            }
        ]
        if self.journal_post != "journals":
            operations.append(
                {
                    "id": "post",
                    "method": "POST",
                    "url": f"{journal}/Microsoft.NAV.post",
                    "dependsOn": ["line"],
                }
            )
        answers = await self._batch(operations, correlation_id)
        refused = _operation_error(answers[0])
        if refused is not None:
            raise refused
        line: dict[str, Any] = answers[0]["body"]
        failure = _operation_error(answers[1]) if len(answers) > 1 else None
        if len(answers) == 1 or (isinstance(failure, ErpPermanentError) and failure.status in (404, 405)):
            # No bound action here (or not asked): `_post_journal` learns how this tenant posts.
            return line, await self._posting_failure(company, correlation_id)
        if failure is None:
            self.journal_post = "bound"
        return line, failure

    async def _posting_failure(self, company: BusinessCentralCompany, correlation_id: str) -> ErpError | None:
        try:
            await self._post_journal(company, correlation_id)
        except ErpError as exc:
            return exc
        return None

    async def _post_journal(self, company: BusinessCentralCompany, correlation_id: str) -> None:
        """`customerPaymentJournals({id})/Microsoft.NAV.post`, or, where the tenant has no such
        action [UNSURE in Microsoft's reference], `journals({id})/Microsoft.NAV.post`."""
        bound = f"{self._journal_url(company)}/Microsoft.NAV.post"
        general = f"{self._company_url(company)}/journals({company.payment_journal})/Microsoft.NAV.post"
        if self.journal_post != "journals":
            try:
                await self._api("POST", bound, correlation_id)
                self.journal_post = "bound"
                return
            except ErpPermanentError as exc:
                if self.journal_post == "bound" or exc.status not in (404, 405):
                    raise
                log.info(
                    "erp payment journals have no post action: posting through journals",
                    extra={"correlation_id": correlation_id},
                )
                self.journal_post = "journals"
        await self._api("POST", general, correlation_id)

    def _payment_receipt(
        self, record: BcRecord, command: ErpCommand, line: dict[str, Any] | None, created: bool
    ) -> ErpReceipt:
        return ErpReceipt(
            record_type=RecordType.CUSTOMER_PAYMENT,
            external_id=_external_id(command),
            # The journal line is gone once posted: its document number is what stays.
            erp_internal_id=record.key,
            document_number=record.key,
            created=created,
        )


def _status(answer: dict[str, Any]) -> int:
    """One `$batch` operation's status (500 when it has none)."""
    try:
        return int(answer.get("status") or 500)
    except (TypeError, ValueError):
        return 500


def _operation_error(answer: dict[str, Any]) -> ErpError | None:
    """The typed error of one `$batch` operation's answer, as `classify` reads a response."""
    status = _status(answer)
    if status < 400:
        return None
    headers = {str(k): str(v) for k, v in (answer.get("headers") or {}).items()}
    content = netsuite.dumps(answer["body"]) if answer.get("body") is not None else b""
    return classify(Answer(status, headers, content))


def _external_id(command: ErpCommand) -> str:
    if isinstance(command, VoidInvoice):
        return command.invoice_external_id
    if isinstance(command, UpsertCustomer):
        return command.external_id
    if isinstance(command, PostInvoice | ApplyPayment | PostCreditMemo):
        return command.document.external_id
    raise TypeError(f"Business Central has no record for {type(command).__name__}")


def _complete(record: BcRecord, entity: dict[str, Any]) -> bool:
    """Whether a draft found carries as many lines as the record (when they were read)."""
    lines = entity.get(LINES[record.record_type])
    return lines is None or len(lines) == len(record.body.get(LINES[record.record_type]) or [])
