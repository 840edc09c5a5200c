"""The Business Central stand-in: API v2.0 as Microsoft documents it (shared/research/erp-apis.md
§B), served by `ledgerflow erp-sandbox` beside the NetSuite one, on the same SQLite store.

Paths: `/v2.0/{tenant}/{environment}/api/v2.0/companies({id})/{entitySet}[({id})][/…]` and
`…/api/v2.0/$batch`. Entities: `companies`, `customers`, `salesInvoices` (with
`salesInvoiceLines`), `salesCreditMemos` (with `salesCreditMemoLines`),
`customerPaymentJournals({id})/customerPayments`, `generalLedgerEntries` (read-only).

As strict as a real company: a body is checked against `business_central_entities.json`
(unknown or read-only property, lower-case or over-long code, a value that is not an option);
customers, items, G/L accounts, tax codes and currencies must exist in the company; an amount
with more decimals than the currency allows is refused, not rounded. Business Central computes
tax and totals itself, from its own tax setup (`BusinessCentralSandboxConfig.tax_percent`).

Documents behave as in Business Central: a create answers 201 with the full entity and its
`@odata.etag`; sales documents are drafts until `Microsoft.NAV.post` posts them (a posted
invoice gets a number of its own, the API id stays); `Microsoft.NAV.cancel` cancels a posted,
unpaid invoice with a corrective credit memo; journal lines post when their journal is posted
and leave the journal, leaving general ledger entries with their document number. PATCH and
DELETE need `If-Match` (the etag, or `*`). Nothing is unique but a customer's number: the same
externalDocumentNumber may be created twice, as in Business Central.

Where the sources disagree or are silent [UNSURE], `BusinessCentralSandboxConfig` picks the
behaviour: the sign a payment amount must have, whether invoices take a deep insert of their
lines, whether a customer payment journal has a `post` action or is posted through `journals`,
and whether tax rounds per line or per document.
"""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from canonical.money import currency_exponent
from connectors.erp import netsuite
from connectors.erp.business_central import (
    CANCELED,
    DRAFT,
    ENTITIES,
    ENTITY_SETS,
    KEY_FIELDS,
    LINES,
    check_body,
    iso_currency,
)
from connectors.erp.schemas import RecordType, odata_error_body
from connectors.sandbox import LOG_ENTRY
from streams.mappings import BusinessCentralCompany, BusinessCentralIds

if TYPE_CHECKING:
    from connectors.erp.sandbox import Sandbox, StoredDocument

API: Literal["business-central"] = "business-central"
PATH_PREFIX = "/v2.0/"
ROUTE = "/v2.0/{tenant}/{environment}/api/v2.0/{path:.*}"
BATCH_MAX = 100
"""Operations in one `$batch` request (Business Central's limit)."""
_GUID_BASE = uuid.UUID("0bc00000-0000-4000-8000-000000000000").int
_GUID_MASK = (1 << 48) - 1

OPEN = "Open"
PAID = "Paid"
CORRECTIVE = "Corrective"
UNPOSTED = "Unposted"
POSTED = "Posted"
ACTIVE = "Active"

RECORD_TYPES = {entity_set: record_type for record_type, entity_set in ENTITY_SETS.items()}
"""Each entity set's record type; the stand-in's store keys a document by its KEY_FIELDS value."""
NUMBERS = {
    (RecordType.INVOICE, DRAFT): "S-INV",
    (RecordType.INVOICE, POSTED): "PS-INV",
    (RecordType.CREDIT_MEMO, DRAFT): "S-CR",
    (RecordType.CREDIT_MEMO, POSTED): "PS-CR",
}
FILTERABLE = frozenset(
    {"number", "code", "externalDocumentNumber", "documentNumber", "documentType", "status", "customerNumber"}
)
SETUP_SETS = ("items", "accounts", "taxGroups", "currencies")
"""Read-only setup entities (what `ledgerflow erp check` asks about)."""
_FILTER_TERM = re.compile(r"\s*(?P<name>[A-Za-z]+)\s+eq\s+'(?P<value>(?:[^']|'')*)'\s*")
_SEGMENT = re.compile(r"^(?P<name>[A-Za-z$.]+)(?:\((?P<key>[^)]*)\))?$")


class BusinessCentralSandboxConfig(BaseModel):
    """The Business Central stand-in's tenant and the behaviours the sources leave open."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: str = "ledgerflow-sandbox"
    environment: str = "sandbox"
    payment_sign: Literal["negative", "positive"] = "negative"
    """The sign a customer payment's amount must have [UNSURE: Microsoft's example sends 1500,
    its error table says "The amount should be a negative number."]."""
    deep_insert: bool = True
    """Whether `POST salesInvoices` takes its `salesInvoiceLines` in the same body [UNSURE for
    invoices; documented for sales orders]. Off: lines are posted one by one to the draft."""
    journal_post: Literal["bound", "journals"] = "bound"
    """`bound`: `customerPaymentJournals({id})/Microsoft.NAV.post` exists (third-party sources);
    `journals`: only `journals({id})/Microsoft.NAV.post` does (Microsoft's v2.0 reference)."""
    tax_rounding: Literal["line", "document"] = "line"
    """`line`: each line's tax is rounded (as Stripe does); `document`: tax is computed on the
    document's total per tax code, as a VAT setup may, and can differ by a cent."""
    batch_rate: Literal["request", "operations"] = "request"
    """What the rate limit counts of a `$batch`: the one request, or each of its operations
    [UNSURE: Microsoft's limits page counts "requests" and says to batch to make fewer calls]."""
    tax_percent: dict[str, Decimal] = {
        "US-SALES": Decimal(0),
        "UK-VAT-S": Decimal(20),
        "DE-VAT-19": Decimal(19),
        "JP-CT-10": Decimal(10),
        "KW-EXEMPT": Decimal(0),
    }
    """The company's tax setup: tax code → percent."""


class BcRefusal(Exception):
    """What Business Central answers instead: a status and an OData error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass
class BcCall:
    """One API call, from HTTP or from a `$batch` operation."""

    method: str
    path: str
    """The part after `/api/v2.0/`."""
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any] | None
    origin: str


@dataclass
class BcAnswer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def guid(internal_id: int) -> str:
    return str(uuid.UUID(int=_GUID_BASE | internal_id))


def internal_id(value: str) -> int | None:
    """The store's id behind one of the stand-in's GUIDs, or None when it is not one."""
    try:
        number = uuid.UUID(value.strip("{}")).int
    except ValueError:
        return None
    return number & _GUID_MASK if number & ~_GUID_MASK == _GUID_BASE else None


def etag(doc: StoredDocument) -> str:
    token = base64.b64encode(f"{doc.internal_id};{doc.writes};{doc.updated_at}".encode()).decode()
    return f'W/"{token}"'


def _refused(status: int, code: str, message: str) -> BcRefusal:
    return BcRefusal(status, code, f"{message}  CorrelationId:  {uuid.uuid4()}.")


def not_found(what: str) -> BcRefusal:
    return _refused(
        404, "BadRequest_NotFound", f"No HTTP resource was found that matches the request URI '{what}'."
    )


def dialog(message: str) -> BcRefusal:
    return _refused(400, "Application_DialogException", message)


def no_relation(field_name: str, table: str, value: Any) -> BcRefusal:
    return _refused(
        400,
        "Internal_InvalidTableRelation",
        f"The field {field_name} contains a value ({value}) that cannot be found in the related table "
        f"({table}).",
    )


class BusinessCentralBooks:
    """The stand-in's rules over the sandbox's store, one company per mapped subsidiary."""

    def __init__(self, sandbox: Sandbox, config: BusinessCentralSandboxConfig) -> None:
        ids = sandbox.mappings.business_central
        if ids is None:
            raise ValueError("the Business Central stand-in needs the mappings' [business_central] section")
        self.sandbox = sandbox
        self.config = config
        self.ids: BusinessCentralIds = ids
        self.companies: dict[str, tuple[str, BusinessCentralCompany]] = {
            company.id: (subsidiary, company) for subsidiary, company in ids.companies.items()
        }
        self.items = sandbox.mappings.item_codes
        self.accounts = sandbox.mappings.gl_accounts | ids.accounts

    # -- dispatch ----------------------------------------------------------------------------

    def handle(self, call: BcCall) -> BcAnswer:
        try:
            return self._route(call)
        except BcRefusal as refusal:
            return BcAnswer(refusal.status, odata_error_body(refusal.code, refusal.message))

    def _route(self, call: BcCall) -> BcAnswer:
        segments = [s for s in call.path.split("/") if s]
        parsed = [_SEGMENT.match(unquote(s)) for s in segments]
        if not segments or any(p is None for p in parsed):
            raise not_found(call.path)
        parts = [(p["name"], p["key"]) for p in parsed if p is not None]
        if parts[0] == ("$batch", None):
            raise _refused(400, "BadRequest", "A $batch request cannot be nested in a batch.")
        if parts[0][0] != "companies":
            raise not_found(call.path)
        if len(parts) == 1:
            if call.method != "GET":
                raise _refused(405, "BadRequest_MethodNotAllowed", "'companies' is read-only.")
            return self._companies(call, parts[0][1])
        subsidiary, company = self._company(parts[0][1])
        return self._company_route(call, subsidiary, company, parts[1:])

    def _companies(self, call: BcCall, key: str | None) -> BcAnswer:
        views = [
            {
                "id": c.id,
                "systemVersion": "24.0",
                "name": f"Ledgerflow {s}",
                "displayName": f"Ledgerflow {s}",
                "businessProfileId": "",
            }
            for s, c in self.ids.companies.items()
        ]
        if key is not None:
            found = [v for v in views if v["id"] == key]
            if not found:
                raise _refused(404, "Internal_CompanyNotFound", f"The company '{key}' does not exist.")
            return BcAnswer(200, found[0])
        return BcAnswer(200, {"@odata.context": f"{call.origin}/$metadata#companies", "value": views})

    def _company(self, key: str | None) -> tuple[str, BusinessCentralCompany]:
        found = self.companies.get(key or "")
        if found is None:
            raise _refused(404, "Internal_CompanyNotFound", f"The company '{key}' does not exist.")
        return found

    def _company_route(
        self,
        call: BcCall,
        subsidiary: str,
        company: BusinessCentralCompany,
        parts: list[tuple[str, str | None]],
    ) -> BcAnswer:
        name, key = parts[0]
        rest = parts[1:]
        if name == "generalLedgerEntries" and key is None and not rest and call.method == "GET":
            return self._ledger_entries(call, company)
        if name in SETUP_SETS and key is None and not rest and call.method == "GET":
            return self._page(call, self._setup(subsidiary, company, name), name)
        if name == "customerPaymentJournals":
            return self._journal_route(call, company, key, rest)
        if name == "journals" and key is not None and rest == [("Microsoft.NAV.post", None)]:
            if self.config.journal_post != "journals" or key != company.payment_journal:
                raise not_found(call.path)
            return self._post_journal(call, subsidiary, company)
        record_type = RECORD_TYPES.get(name)
        if record_type is None:
            raise not_found(call.path)
        if key is None:
            if rest:
                raise not_found(call.path)
            if call.method == "GET":
                return self._collection(call, company, record_type)
            if call.method == "POST":
                return self._create(call, subsidiary, company, record_type)
            raise _refused(405, "BadRequest_MethodNotAllowed", f"'{call.method}' on an entity set.")
        doc = self._entity(company, record_type, key)
        if not rest:
            if call.method == "GET":
                return BcAnswer(200, self._expanded(call, doc))
            if call.method == "PATCH":
                return self._patch(call, subsidiary, company, doc)
            if call.method == "DELETE":
                return self._delete(call, doc)
            raise _refused(405, "BadRequest_MethodNotAllowed", f"'{call.method}' on an entity.")
        (sub, sub_key), *deeper = rest
        if deeper or sub_key is not None:
            raise not_found(call.path)
        if sub == LINES.get(record_type):
            if call.method == "GET":
                return BcAnswer(200, {"value": doc.body.get(sub) or []})
            if call.method == "POST":
                return self._add_line(call, subsidiary, company, doc)
        if call.method == "POST" and sub == "Microsoft.NAV.post" and record_type in LINES:
            return self._post_document(subsidiary, company, doc)
        if call.method == "POST" and sub == "Microsoft.NAV.cancel" and record_type is RecordType.INVOICE:
            return self._cancel(company, doc)
        raise not_found(call.path)

    # -- reads -------------------------------------------------------------------------------

    def _setup(self, subsidiary: str, company: BusinessCentralCompany, name: str) -> list[dict[str, Any]]:
        """The company's setup records ledgerflow's mappings name: items, G/L accounts, tax
        groups, and currencies other than the local one (which is not in the Currency table)."""
        if name == "items":
            rows = [{"number": n, "displayName": n, "type": "Service"} for n in sorted(self.items)]
        elif name == "accounts":
            rows = [
                {"number": n, "displayName": f"Account {n}", "category": "Income"}
                for n in sorted(self.accounts)
            ]
        elif name == "taxGroups":
            rows = [{"code": c, "displayName": c} for c in self.config.tax_percent]
        else:
            found = self.sandbox.mappings.subsidiary(subsidiary)
            codes = [c for c in (found.currencies if found else ()) if c != company.currency]
            rows = [{"code": c, "displayName": c} for c in codes]
        return [
            {
                "id": str(
                    uuid.uuid5(uuid.NAMESPACE_URL, f"{company.id}/{name}/{row.get('number') or row['code']}")
                ),
                **row,
            }
            for row in rows
        ]

    def _docs(
        self,
        company: BusinessCentralCompany,
        record_type: RecordType,
        keys: list[str] | None = None,
        status: str | None = None,
    ) -> list[StoredDocument]:
        """The company's documents of a type; with `keys`, those keyed so, with `status`, those in
        it (both read through the store's indexes, so a lookup does not scan every document)."""
        store = self.sandbox.store
        if keys is not None:
            found = [d for key in dict.fromkeys(keys) for d in store.find(record_type, key)]
            found.sort(key=lambda d: d.internal_id)
        elif status is not None:
            found = store.with_status(record_type, status)
        else:
            found = store.all(record_type.value)
        return [
            d
            for d in found
            if d.body.get("@company") == company.id and d.api == API and status in (None, d.status)
        ]

    def _entity(self, company: BusinessCentralCompany, record_type: RecordType, key: str) -> StoredDocument:
        number = internal_id(key)
        doc = self.sandbox.store.by_id(record_type, number) if number is not None else None
        if doc is None or doc.api != API or doc.body.get("@company") != company.id:
            raise _refused(
                404,
                "Internal_RecordNotFound",
                f"The {ENTITIES[record_type]} does not exist. Identification fields and values: Id='{key}'",
            )
        return doc

    def view(self, doc: StoredDocument) -> dict[str, Any]:
        body = {k: v for k, v in doc.body.items() if not k.startswith("@")}
        return {
            "@odata.etag": etag(doc),
            "id": guid(doc.internal_id),
            **body,
            "lastModifiedDateTime": doc.updated_at,
        }

    def _expanded(self, call: BcCall, doc: StoredDocument) -> dict[str, Any]:
        view = self.view(doc)
        lines = LINES.get(doc.record_type)
        # Lines come back only when asked for (`$expand`), as with Business Central.
        if lines and lines not in call.query.get("$expand", ""):
            view.pop(lines, None)
        return view

    def _collection(self, call: BcCall, company: BusinessCentralCompany, record_type: RecordType) -> BcAnswer:
        docs = self._docs(company, record_type, _keys(call, KEY_FIELDS[record_type]))
        return self._page(call, [self._expanded(call, d) for d in docs], ENTITIES[record_type])

    def _page(self, call: BcCall, views: list[dict[str, Any]], entity: str) -> BcAnswer:
        views = [v for v in views if _matches(v, _filter(call.query.get("$filter")))]
        try:
            top = int(call.query.get("$top", "20000"))
            skip = int(call.query.get("$skip", "0"))
        except ValueError:
            raise _refused(400, "BadRequest", "$top and $skip must be integers.") from None
        page = views[skip : skip + top]
        if "$select" in call.query:
            chosen = {s.strip() for s in call.query["$select"].split(",")} | {"@odata.etag"}
            page = [{k: v for k, v in view.items() if k in chosen} for view in page]
        payload: dict[str, Any] = {"@odata.context": f"{call.origin}/$metadata#{entity}", "value": page}
        if skip + len(page) < len(views):
            query = {**call.query, "$top": str(top), "$skip": str(skip + len(page))}
            payload["@odata.nextLink"] = f"{call.origin}/{call.path}?" + "&".join(
                f"{k}={v}" for k, v in query.items()
            )
        return BcAnswer(200, payload)

    # -- writes ------------------------------------------------------------------------------

    def _create(
        self, call: BcCall, subsidiary: str, company: BusinessCentralCompany, record_type: RecordType
    ) -> BcAnswer:
        body = _body(call)
        entity = ENTITIES[record_type]
        lines_name = LINES.get(record_type)
        if (
            lines_name
            and lines_name in body
            and record_type is RecordType.INVOICE
            and not self.config.deep_insert
        ):
            raise _refused(
                400,
                "BadRequest",
                f"The navigation property '{lines_name}' cannot be written in a create of {entity}.",
            )
        _schema(entity, body)
        store = self.sandbox.store
        if record_type is RecordType.CUSTOMER:
            number = body.get("number")
            if not number:
                # The stand-in's customer No. Series takes manual numbers only (ledgerflow's).
                raise _refused(
                    400, "Application_FieldValidationException", "You must specify the customer's number."
                )
            if self._customer(company, number) is not None:
                raise _refused(
                    400,
                    "Internal_EntityWithSameKeyExists",
                    "The record in table Customer already exists. Identification fields and values: "
                    f"No.='{number}'",
                )
            self._customer_fields(company, body)
            stored = {
                "@company": company.id,
                "type": "Company",
                "blocked": " ",
                "currencyCode": "",
                **body,
                "balanceDue": Decimal(0),
            }
            doc = store.insert(record_type, API, number, ACTIVE, stored, numbered=False)
            return BcAnswer(
                201, self.view(doc), {"Location": f"{call.origin}/{call.path}({guid(doc.internal_id)})"}
            )
        assert lines_name is not None
        lines = body.pop(lines_name, [])
        header = self._header(subsidiary, company, record_type, body)
        draft: dict[str, Any] = {
            "@company": company.id,
            **header,
            "number": store.next_number(
                f"bc:{company.id}:{record_type.value}:draft", NUMBERS[record_type, DRAFT]
            ),
            "status": DRAFT,
        }
        draft[lines_name] = [self._line(company, draft, line, i) for i, line in enumerate(lines)]
        key = header.get("externalDocumentNumber") or None
        doc = store.insert(record_type, API, key, DRAFT, self._totals(draft, company), numbered=False)
        return BcAnswer(
            201,
            self._expanded(call, doc),
            {"Location": f"{call.origin}/{call.path}({guid(doc.internal_id)})"},
        )

    def _add_line(
        self, call: BcCall, subsidiary: str, company: BusinessCentralCompany, doc: StoredDocument
    ) -> BcAnswer:
        lines_name = LINES[doc.record_type]
        _draft_only(doc)
        body = _body(call)
        _schema(ENTITIES[doc.record_type] + "Line", body)
        existing = list(doc.body.get(lines_name) or [])
        line = self._line(company, doc.body, body, len(existing))
        self.sandbox.store.update(
            doc, self._totals({**doc.body, lines_name: [*existing, line]}, company), DRAFT
        )
        return BcAnswer(201, line)

    def _patch(
        self, call: BcCall, subsidiary: str, company: BusinessCentralCompany, doc: StoredDocument
    ) -> BcAnswer:
        self._if_match(call, doc)
        body = _body(call)
        _schema(ENTITIES[doc.record_type], body)
        if doc.record_type is RecordType.CUSTOMER:
            if "number" in body and body["number"] != doc.body.get("number"):
                raise dialog("The number of a customer cannot be changed through the API.")
            self._customer_fields(company, body)
            return BcAnswer(200, self.view(self.sandbox.store.update(doc, {**doc.body, **body}, doc.status)))
        if doc.status != DRAFT:
            raise dialog(f"You cannot change a posted {ENTITIES[doc.record_type]}.")
        fields = {k: v for k, v in doc.body.items() if k not in ("number", "status")} | body
        header = self._header(subsidiary, company, doc.record_type, fields)
        merged = self._totals({**doc.body, **body, **header}, company)
        return BcAnswer(200, self.view(self.sandbox.store.update(doc, merged, DRAFT)))

    def _delete(self, call: BcCall, doc: StoredDocument) -> BcAnswer:
        self._if_match(call, doc)
        if doc.record_type is RecordType.CUSTOMER:
            raise dialog("The stand-in does not delete customers.")
        if doc.status not in (DRAFT, UNPOSTED):
            raise dialog(f"You cannot delete a posted {ENTITIES.get(doc.record_type, 'document')}.")
        self.sandbox.store.remove(doc)
        return BcAnswer(204)

    def _if_match(self, call: BcCall, doc: StoredDocument) -> None:
        given = call.headers.get("if-match")
        if not given:
            raise _refused(
                400,
                "BadRequest_InvalidToken",
                "Could not validate the client concurrency token required by the service. Please provide "
                "a valid token in the client request.",
            )
        if given.strip() != "*" and given.strip() != etag(doc):
            # [UNSURE] the status: the sources name the code and its text, not the status.
            raise _refused(409, "Request_EntityChanged", "Another user has already changed the record.")

    # -- what a document must say --------------------------------------------------------------

    def _customer(self, company: BusinessCentralCompany, number: str) -> StoredDocument | None:
        return next(
            (
                d
                for d in self.sandbox.store.find(RecordType.CUSTOMER, number)
                if d.api == API and d.body.get("@company") == company.id
            ),
            None,
        )

    def _currency(self, subsidiary: str, company: BusinessCentralCompany, code: str) -> str:
        """The ISO currency of a currencyCode: empty is the local currency (LCY)."""
        if code == "":
            return company.currency
        found = self.sandbox.mappings.subsidiary(subsidiary)
        if code == company.currency or found is None or code not in found.currencies:
            # The local currency is not in the Currency table: it is written as "".
            raise no_relation("Currency Code", "Currency", code)
        return code

    def _customer_fields(self, company: BusinessCentralCompany, body: dict[str, Any]) -> None:
        subsidiary = self.companies[company.id][0]
        if body.get("currencyCode"):
            self._currency(subsidiary, company, str(body["currencyCode"]))

    def _header(
        self, subsidiary: str, company: BusinessCentralCompany, record_type: RecordType, body: dict[str, Any]
    ) -> dict[str, Any]:
        number = body.get("customerNumber")
        if not number:
            raise dialog("A customerNumber or a customerId must be provided.")
        customer = self._customer(company, str(number))
        if customer is None:
            raise dialog(f"The customer number '{number}' does not exist.")
        if customer.body.get("blocked") == "All":
            raise dialog(
                f"You cannot create this type of document when Customer {number} is blocked with type All"
            )
        currency = str(body.get("currencyCode") or "")
        self._currency(subsidiary, company, currency)
        header = {
            **body,
            "customerId": guid(customer.internal_id),
            "customerName": customer.body.get("displayName"),
        }
        if record_type is RecordType.CREDIT_MEMO and body.get("invoiceId"):
            invoice = self._invoice_by_id(company, str(body["invoiceId"]))
            if invoice.status not in (OPEN, PAID):
                raise dialog(
                    f"Invoice {invoice.body.get('number')} is not posted and open: a credit memo cannot be "
                    "applied to it."
                )
            if invoice.body.get("customerNumber") != number:
                raise dialog("The invoice a credit memo applies to must be the same customer's.")
            header["invoiceNumber"] = invoice.body.get("number")
        return header

    def _invoice_by_id(self, company: BusinessCentralCompany, key: str) -> StoredDocument:
        number = internal_id(key)
        invoice = self.sandbox.store.by_id(RecordType.INVOICE, number) if number is not None else None
        if invoice is None or invoice.api != API or invoice.body.get("@company") != company.id:
            raise no_relation("Applies-to Doc. No.", "Sales Invoice Header", key)
        return invoice

    def _line(
        self, company: BusinessCentralCompany, header: dict[str, Any], line: dict[str, Any], index: int
    ) -> dict[str, Any]:
        currency = self._currency(
            self.companies[company.id][0], company, str(header.get("currencyCode") or "")
        )
        kind, number = line.get("lineType"), line.get("lineObjectNumber")
        if kind == "Item" and number not in self.items:
            raise no_relation("No.", "Item", number)
        if kind == "Account" and number not in self.accounts:
            raise no_relation("No.", "G/L Account", number)
        if kind not in ("Item", "Account", "Comment"):
            raise dialog(f"Line type {kind} is not set up in this company.")
        tax_code = line.get("taxCode")
        if tax_code is not None and tax_code not in self.config.tax_percent:
            raise no_relation("Tax Group Code", "Tax Group", tax_code)
        quantity = Decimal(line.get("quantity", 0))
        price = Decimal(line.get("unitPrice", 0))
        if price != price.quantize(Decimal("0.00001")):
            raise dialog(
                f"The unit price {price} has more decimals than the unit-amount rounding precision (0.00001)."
            )
        amount = _round(quantity * price, currency)
        percent = self.config.tax_percent.get(tax_code or "", Decimal(0))
        tax = _round(amount * percent / 100, currency)
        return {
            **line,
            "id": str(uuid.uuid4()),
            "sequence": 10000 * (index + 1),
            "taxPercent": percent,
            "amountExcludingTax": amount,
            "totalTaxAmount": tax,
            "amountIncludingTax": amount + tax,
        }

    def _totals(self, body: dict[str, Any], company: BusinessCentralCompany) -> dict[str, Any]:
        lines_name = "salesInvoiceLines" if "salesInvoiceLines" in body else "salesCreditMemoLines"
        lines = body.get(lines_name) or []
        currency = iso_currency(body, company)
        net = sum((Decimal(line["amountExcludingTax"]) for line in lines), Decimal(0))
        if self.config.tax_rounding == "line":
            tax = sum((Decimal(line["totalTaxAmount"]) for line in lines), Decimal(0))
        else:
            by_code: dict[Decimal, Decimal] = {}
            for line in lines:
                by_code[Decimal(line["taxPercent"])] = by_code.get(
                    Decimal(line["taxPercent"]), Decimal(0)
                ) + Decimal(line["amountExcludingTax"])
            tax = sum((_round(base * pct / 100, currency) for pct, base in by_code.items()), Decimal(0))
        totals = {
            "totalAmountExcludingTax": net,
            "totalTaxAmount": tax,
            "totalAmountIncludingTax": net + tax,
        }
        if lines_name == "salesInvoiceLines":
            totals["remainingAmount"] = net + tax if body.get("status") != DRAFT else Decimal(0)
        return {**body, **totals}

    # -- posting -------------------------------------------------------------------------------

    def _check_period(self, subsidiary: str, posting_date: Any) -> None:
        try:
            day = date.fromisoformat(str(posting_date))
        except ValueError:
            raise dialog(f"Posting Date {posting_date!r} is not a date.") from None
        for period in self.sandbox.closed_periods():
            if period.start <= day <= period.end and period.subsidiary in ("*", subsidiary):
                raise dialog("Posting Date is not within your range of allowed posting dates.")

    def _post_document(
        self, subsidiary: str, company: BusinessCentralCompany, doc: StoredDocument
    ) -> BcAnswer:
        _draft_only(doc)
        lines = doc.body.get(LINES[doc.record_type]) or []
        if not lines:
            raise dialog("There is nothing to post.")
        self._check_period(subsidiary, doc.body.get("postingDate"))
        self._header(
            subsidiary, company, doc.record_type, {k: v for k, v in doc.body.items() if not k.startswith("@")}
        )
        store = self.sandbox.store
        number = store.next_number(
            f"bc:{company.id}:{doc.record_type.value}:posted", NUMBERS[doc.record_type, POSTED]
        )
        total = Decimal(doc.body["totalAmountIncludingTax"])
        if doc.record_type is RecordType.INVOICE:
            body = {**doc.body, "number": number, "status": OPEN, "remainingAmount": total}
            store.update(doc, body, OPEN)
            return BcAnswer(204)
        body = {**doc.body, "number": number, "status": OPEN}
        if doc.body.get("invoiceId"):
            invoice = self._invoice_by_id(company, str(doc.body["invoiceId"]))
            applied = min(total, Decimal(invoice.body.get("remainingAmount", 0)))
            self._settle(invoice, applied)
            body["status"] = PAID if applied == total else OPEN
            body["@applied"] = {invoice.external_id: applied}
        store.update(doc, body, body["status"])
        return BcAnswer(204)

    def _settle(self, invoice: StoredDocument, amount: Decimal) -> None:
        remaining = Decimal(invoice.body.get("remainingAmount", 0)) - amount
        status = PAID if remaining == 0 else invoice.status
        self.sandbox.store.update(
            invoice, {**invoice.body, "remainingAmount": remaining, "status": status}, status
        )

    def _cancel(self, company: BusinessCentralCompany, invoice: StoredDocument) -> BcAnswer:
        if invoice.status == CANCELED:
            raise dialog(f"The invoice {invoice.body.get('number')} has already been canceled.")
        if invoice.status != OPEN:
            raise dialog(
                f"You cannot cancel the sales invoice {invoice.body.get('number')}: it is not posted."
                if invoice.status == DRAFT
                else "You cannot cancel this posted sales invoice because it is fully or partially paid."
            )
        if Decimal(invoice.body.get("remainingAmount", 0)) != Decimal(
            invoice.body["totalAmountIncludingTax"]
        ):
            raise dialog("You cannot cancel this posted sales invoice because it is fully or partially paid.")
        subsidiary = self.companies[company.id][0]
        self._check_period(subsidiary, invoice.body.get("postingDate"))
        store = self.sandbox.store
        memo: dict[str, Any] = {
            **{
                k: invoice.body[k]
                for k in (
                    "@company",
                    "customerNumber",
                    "customerId",
                    "customerName",
                    "currencyCode",
                    "postingDate",
                    "totalAmountExcludingTax",
                    "totalTaxAmount",
                    "totalAmountIncludingTax",
                )
                if k in invoice.body
            },
            "@corrective": True,
            "@cancels": invoice.external_id,
            "number": store.next_number(
                f"bc:{company.id}:creditMemo:posted", NUMBERS[RecordType.CREDIT_MEMO, POSTED]
            ),
            "creditMemoDate": invoice.body.get("postingDate"),
            "invoiceId": guid(invoice.internal_id),
            "invoiceNumber": invoice.body.get("number"),
            "status": CORRECTIVE,
            "salesCreditMemoLines": [],
        }
        store.insert(RecordType.CREDIT_MEMO, API, None, CORRECTIVE, memo, numbered=False)
        store.update(invoice, {**invoice.body, "status": CANCELED, "remainingAmount": Decimal(0)}, CANCELED)
        return BcAnswer(204)

    # -- payment journals ----------------------------------------------------------------------

    def _journal_route(
        self,
        call: BcCall,
        company: BusinessCentralCompany,
        key: str | None,
        rest: list[tuple[str, str | None]],
    ) -> BcAnswer:
        subsidiary = self.companies[company.id][0]
        journal = {
            "id": company.payment_journal,
            "code": "CASHRCPT",
            "displayName": "Cash receipts",
            "balancingAccountNumber": "",
            "balancingAccountId": "",
        }
        if key is None and not rest and call.method == "GET":
            return BcAnswer(
                200,
                {"@odata.context": f"{call.origin}/$metadata#customerPaymentJournals", "value": [journal]},
            )
        if key != company.payment_journal:
            raise _refused(
                404,
                "Internal_RecordNotFound",
                f"The customerPaymentJournal does not exist. Identification fields and values: Id='{key}'",
            )
        if not rest:
            if call.method == "GET":
                return BcAnswer(200, journal)
            raise _refused(405, "BadRequest_MethodNotAllowed", f"'{call.method}' on a journal.")
        (name, line_key), *deeper = rest
        if deeper:
            raise not_found(call.path)
        if name == "Microsoft.NAV.post" and line_key is None and call.method == "POST":
            if self.config.journal_post != "bound":
                raise not_found(call.path)
            return self._post_journal(call, subsidiary, company)
        if name != "customerPayments":
            raise not_found(call.path)
        lines = self._docs(company, RecordType.CUSTOMER_PAYMENT, status=UNPOSTED)
        if line_key is None:
            if call.method == "GET":
                return self._page(call, [self.view(d) for d in lines], "customerPayments")
            if call.method == "POST":
                return self._add_payment(call, subsidiary, company)
            raise _refused(405, "BadRequest_MethodNotAllowed", f"'{call.method}' on customerPayments.")
        doc = self._entity(company, RecordType.CUSTOMER_PAYMENT, line_key)
        if doc.status != UNPOSTED:
            raise _refused(
                404,
                "Internal_RecordNotFound",
                "The customerPayment does not exist: its journal line was posted.",
            )
        if call.method == "GET":
            return BcAnswer(200, self.view(doc))
        if call.method == "DELETE":
            return self._delete(call, doc)
        raise _refused(405, "BadRequest_MethodNotAllowed", f"'{call.method}' on a customerPayment.")

    def _add_payment(self, call: BcCall, subsidiary: str, company: BusinessCentralCompany) -> BcAnswer:
        body = _body(call)
        _schema("customerPayment", body)
        number = body.get("customerNumber")
        customer = self._customer(company, str(number)) if number else None
        if customer is None:
            raise dialog(
                "A customerNumber or a customerId must be provided."
                if not number
                else f"The customer number '{number}' does not exist."
            )
        amount = Decimal(body.get("amount", 0))
        sign = self.config.payment_sign
        if (sign == "negative" and amount >= 0) or (sign == "positive" and amount <= 0):
            raise dialog(f'The "amount" should be a {sign} number.')
        _exact(amount, company.currency, "amount")
        if body.get("appliesToInvoiceId"):
            invoice = self._invoice_by_id(company, str(body["appliesToInvoiceId"]))
            if invoice.body.get("customerNumber") != number:
                raise dialog("The invoice a payment applies to must be the same customer's.")
            body["appliesToInvoiceNumber"] = invoice.body.get("number")
        lines = self._docs(company, RecordType.CUSTOMER_PAYMENT, status=UNPOSTED)
        stored = {
            "@company": company.id,
            "journalId": company.payment_journal,
            "journalDisplayName": "CASHRCPT",
            "lineNumber": 10000 * (len(lines) + 1),
            "customerId": guid(customer.internal_id),
            **body,
        }
        doc = self.sandbox.store.insert(
            RecordType.CUSTOMER_PAYMENT,
            API,
            body.get("documentNumber") or None,
            UNPOSTED,
            stored,
            numbered=False,
        )
        return BcAnswer(201, self.view(doc))

    def _post_journal(self, call: BcCall, subsidiary: str, company: BusinessCentralCompany) -> BcAnswer:
        """Every line of the journal posts, or none does (a line refused stops the posting)."""
        lines = self._docs(company, RecordType.CUSTOMER_PAYMENT, status=UNPOSTED)
        if not lines:
            raise dialog("There is nothing to post.")
        plans = []
        for line in lines:
            try:
                plans.append((line, self._postable(subsidiary, company, line)))
            except BcRefusal as refusal:
                # Business Central names the line it stopped at: the whole journal did not post.
                where = (
                    f"Journal line {line.body['lineNumber']}, Document No. {line.body.get('documentNumber')}"
                )
                raise dialog(f"{where}: {refusal.message}") from None
        for line, invoice in plans:
            amount = abs(Decimal(line.body["amount"]))
            body = dict(line.body)
            if invoice is not None:
                invoice = self.sandbox.store.by_id(RecordType.INVOICE, invoice.internal_id)
                assert invoice is not None
                applied = min(amount, Decimal(invoice.body.get("remainingAmount", 0)))
                self._settle(invoice, applied)
                body["@applied"] = {invoice.external_id: applied}
            self.sandbox.store.update(line, body, POSTED)
        return BcAnswer(204)

    def _postable(
        self, subsidiary: str, company: BusinessCentralCompany, line: StoredDocument
    ) -> StoredDocument | None:
        """The invoice a journal line applies to (None: none), once the line may post."""
        self._check_period(subsidiary, line.body.get("postingDate"))
        if not line.body.get("appliesToInvoiceId"):
            return None
        invoice = self._invoice_by_id(company, str(line.body["appliesToInvoiceId"]))
        if invoice.status not in (OPEN, PAID):
            number = invoice.body.get("number")
            raise dialog(f"invoice {number} is {invoice.status}: the payment cannot be applied to it.")
        return invoice

    def _ledger_entries(self, call: BcCall, company: BusinessCentralCompany) -> BcAnswer:
        """Posted payments as general ledger entries (receivables credited, the bank debited)."""
        entries = []
        keys = _keys(call, "documentNumber")
        for doc in self._docs(company, RecordType.CUSTOMER_PAYMENT, keys, status=POSTED):
            amount = abs(Decimal(doc.body["amount"]))
            for n, (account, debit, credit) in enumerate(
                (("1200", Decimal(0), amount), ("2910", amount, Decimal(0)))
            ):
                entries.append(
                    {
                        "id": guid(doc.internal_id)[:-3] + f"{n:03d}",
                        "entryNumber": doc.internal_id * 10 + n,
                        "postingDate": doc.body.get("postingDate"),
                        "documentNumber": doc.body.get("documentNumber"),
                        "documentType": "Payment",
                        "accountNumber": account,
                        "description": doc.body.get("description", ""),
                        "debitAmount": debit,
                        "creditAmount": credit,
                        "lastModifiedDateTime": doc.updated_at,
                    }
                )
        return self._page(call, entries, "generalLedgerEntries")

    # -- admin ---------------------------------------------------------------------------------

    def summary(self, doc: StoredDocument) -> dict[str, Any]:
        """A document as tests and operators check it, in the shape the NetSuite stand-in's
        summary has: amounts in minor units of the ISO currency, the customer's number, the
        invoices it applies to and the invoice a corrective credit memo cancels, by their keys."""
        subsidiary, company = self.companies.get(str(doc.body.get("@company")), ("?", None))
        currency = str(doc.body.get("currencyCode") or "") or (company.currency if company else "")
        out: dict[str, Any] = {
            "subsidiary": subsidiary,
            "erp_id": doc.external_id
            if doc.record_type is RecordType.CUSTOMER_PAYMENT
            else guid(doc.internal_id),
            "number": doc.body.get("number"),
            "currency": currency,
        }
        if doc.record_type is RecordType.CUSTOMER or not currency:
            return out

        def minor(value: Any) -> int:
            return int(Decimal(value).scaleb(currency_exponent(currency)))

        payment = doc.record_type is RecordType.CUSTOMER_PAYMENT
        out["amount"] = abs(minor(doc.body.get("amount" if payment else "totalAmountIncludingTax") or 0))
        out["customer"] = doc.body.get("customerNumber")
        if doc.record_type is RecordType.INVOICE:
            out["remaining"] = minor(doc.body.get("remainingAmount") or 0)
        out["applied_to"] = {key: minor(amount) for key, amount in (doc.body.get("@applied") or {}).items()}
        if doc.body.get("@corrective"):
            out["created_from"] = doc.body.get("@cancels")
        return out


# -- HTTP ---------------------------------------------------------------------------------------


def _filter(text: str | None) -> list[list[tuple[str, str]]]:
    """`a eq 'x' or a eq 'y'` (and `and` inside an alternative) as alternatives of conditions;
    a filter on anything else is refused, as a property Business Central cannot filter on."""
    if not text:
        return []
    alternatives = []
    for alternative in re.split(r"\s+or\s+", text.strip()):
        terms = []
        for term in re.split(r"\s+and\s+", alternative.strip().strip("()")):
            match = _FILTER_TERM.fullmatch(term)
            if match is None or match["name"] not in FILTERABLE:
                raise _refused(400, "BadRequest", f"Could not parse the $filter expression '{text}'.")
            terms.append((match["name"], match["value"].replace("''", "'")))
        alternatives.append(terms)
    return alternatives


def _keys(call: BcCall, key_field: str) -> list[str] | None:
    """The values a `$filter` asks the key field to equal, when that is all it asks (a lookup);
    None for any other filter, or none."""
    alternatives = _filter(call.query.get("$filter"))
    if not alternatives or any(len(terms) != 1 or terms[0][0] != key_field for terms in alternatives):
        return None
    return [terms[0][1] for terms in alternatives]


def _matches(view: dict[str, Any], alternatives: list[list[tuple[str, str]]]) -> bool:
    return not alternatives or any(all(str(view.get(n, "")) == v for n, v in terms) for terms in alternatives)


def _draft_only(doc: StoredDocument) -> None:
    if doc.status != DRAFT:
        raise dialog(
            f"Status must be equal to '{DRAFT}' in {ENTITIES[doc.record_type]}: "
            f"No.={doc.body.get('number')}. Current value is '{doc.status}'."
        )


def _body(call: BcCall) -> dict[str, Any]:
    if not isinstance(call.body, dict):
        raise _refused(400, "BadRequest", "The request body must be a JSON object.")
    return dict(call.body)


def _schema(entity: str, body: dict[str, Any]) -> None:
    problems = check_body(entity, body)
    if problems:
        raise _refused(400, "BadRequest", f"Invalid request body for {entity}: " + "; ".join(problems))


def _round(value: Decimal, currency: str) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-currency_exponent(currency)), rounding=ROUND_HALF_UP)


def _exact(value: Decimal, currency: str, name: str) -> None:
    if value != _round(value, currency):
        raise dialog(f"The {name} {value} has more decimals than {currency}'s amount rounding precision.")


def _headers(request_headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in request_headers.items()}


async def route(request: web.Request) -> web.StreamResponse:
    """One API call, or a `$batch` of them (each operation answered on its own)."""
    from connectors.erp.sandbox import SANDBOX, json_response

    sandbox = request.app[SANDBOX]
    books = sandbox.business_central
    config = books.config
    if (
        request.match_info["tenant"] != config.tenant
        or request.match_info["environment"] != config.environment
    ):
        return json_response(
            odata_error_body(
                "Authentication_InvalidCredentials",
                f"The tenant or environment in {request.path} is not this one.",
            ),
            401,
        )
    origin = f"{request.scheme}://{request.host}/v2.0/{config.tenant}/{config.environment}/api/v2.0"
    raw = await request.read()
    try:
        body = netsuite.loads(raw) if raw else None
    except ValueError:
        return json_response(odata_error_body("BadRequest", "The request body is not valid JSON."), 400)
    path = request.match_info["path"]
    headers = _headers(request.headers)
    if path == "$batch" and request.method == "POST":
        refused = await _weigh_batch(request, sandbox, body)
        if refused is not None:
            return refused
        answer = _batch(books, body, origin, headers)
    else:
        answer = books.handle(BcCall(request.method, path, dict(request.query), headers, body, origin))
    if answer.status == 204:
        return web.Response(status=204, headers=answer.headers)
    return json_response(answer.body, answer.status, answer.headers)


async def _weigh_batch(request: web.Request, sandbox: Sandbox, body: Any) -> web.Response | None:
    """A `$batch`'s operations: in the request log, in the rate limit when it counts them
    (`batch_rate`), and in its latency (`operation_ms` each). A 429 when they are too many."""
    from connectors.erp.sandbox import _refuse

    requests = body.get("requests") if isinstance(body, dict) else None
    operations = len(requests) if isinstance(requests, list) else 0
    entry = request.get(LOG_ENTRY)
    if entry is not None:
        entry["operations"] = operations
    faults = sandbox.faults
    counted = sandbox.business_central.config.batch_rate == "operations" and operations > 1
    if counted and sandbox.throttled(operations - 1):  # the request itself was counted already
        if entry is not None:
            entry["fault"] = "rate_limit"
        retry_after = sandbox.retry_after(faults.retry_after_s)
        return _refuse(request, 429, "SSS_REQUEST_LIMIT_EXCEEDED", "Too many requests.", retry_after)
    if faults.operation_ms and operations:
        await sandbox.sleep(faults.operation_ms * operations / 1000)
    return None


def _batch(books: BusinessCentralBooks, body: Any, origin: str, headers: dict[str, str]) -> BcAnswer:
    """A JSON batch: each operation runs in order and answers on its own; an operation whose
    `dependsOn` failed is not run (424). Business Central's limit is 100 operations. Without
    `Prefer: odata.continue-on-error` the batch stops at its first failed operation, as OData
    4.01 has it (whether Business Central does is [UNSURE]: the stricter reading)."""
    go_on = "odata.continue-on-error" in headers.get("prefer", "")
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not all(isinstance(r, dict) for r in requests):
        return BcAnswer(400, odata_error_body("BadRequest", 'A $batch body is {"requests": [{…}, …]}.'))
    if len(requests) > BATCH_MAX:
        message = f"A batch request may contain at most {BATCH_MAX} operations."
        return BcAnswer(400, odata_error_body("BadRequest", message))
    failed: set[str] = set()
    responses = []
    for operation in requests:
        op_id = str(operation.get("id"))
        if any(str(d) in failed for d in operation.get("dependsOn") or []):
            failed.add(op_id)
            error = odata_error_body("BadRequest_FailedDependency", "An operation it depends on failed.")
            responses.append({"id": op_id, "status": 424, "body": error})
            continue
        url = urlsplit(str(operation.get("url", "")))
        # Relative to the API root (`companies(…)/…`), or the whole URL.
        path = url.path.split("/api/v2.0/", 1)[-1].lstrip("/")
        op_headers = {k.lower(): str(v) for k, v in (operation.get("headers") or {}).items()}
        call = BcCall(
            str(operation.get("method", "GET")).upper(),
            path,
            dict(parse_qsl(url.query)),
            {**headers, **op_headers},
            operation.get("body"),
            origin,
        )
        answer = books.handle(call)
        if answer.status >= 400:
            failed.add(op_id)
        entry: dict[str, Any] = {"id": op_id, "status": answer.status, "headers": answer.headers}
        if answer.body is not None:
            entry["body"] = answer.body
        responses.append(entry)
        if answer.status >= 400 and not go_on:
            break
    return BcAnswer(200, {"responses": responses})
