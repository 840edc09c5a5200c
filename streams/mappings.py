"""ERP mappings as configuration: subsidiaries, items and GL accounts, tax codes, closed periods.

Loaded from the TOML file named by `LEDGERFLOW_MAPPINGS` and validated here, so a typo in the
file is an error at start-up, never a wrong posting.
"""

from __future__ import annotations

import tomllib
from datetime import date
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from canonical.money import Currency

EXAMPLE_MAPPINGS = Path(__file__).with_name("mappings.example.toml")
"""The bundled example, used when LEDGERFLOW_MAPPINGS is unset."""


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Subsidiary(_Config):
    """A legal entity in the ERP, the countries it books for and its enabled currencies."""

    id: str = Field(min_length=1)
    name: str
    countries: tuple[str, ...] = ()
    currencies: tuple[Currency, ...] = Field(min_length=1)


class ItemMapping(_Config):
    item: str = Field(min_length=1)
    gl_account: str = Field(min_length=1)


class ClosedPeriod(_Config):
    subsidiary: str = "*"
    start: date
    end: date

    @model_validator(mode="after")
    def _ordered(self) -> ClosedPeriod:
        if self.end < self.start:
            raise ValueError("closed period ends before it starts")
        return self


class NetSuiteTaxCode(_Config):
    """A SuiteTax tax code: its salesTaxItem internal id and the internal id of its tax type."""

    id: str = Field(min_length=1)
    type: str = Field(min_length=1)


class NetSuiteFields(_Config):
    """Script ids of the custom fields ledgerflow writes (created in the account by an admin)."""

    crm_account_id: str = Field(default="custentity_lf_crm_account_id", pattern=r"^custentity_\w+$")
    billing_customer_id: str = Field(default="custentity_lf_billing_customer_id", pattern=r"^custentity_\w+$")
    billing_invoice_id: str = Field(default="custbody_lf_billing_invoice_id", pattern=r"^custbody_\w+$")
    billing_invoice_number: str = Field(
        default="custbody_lf_billing_invoice_number", pattern=r"^custbody_\w+$"
    )


class NetSuiteIds(_Config):
    """NetSuite's internal ids for the codes the rest of the mappings use: a NetSuite body
    references records as `{"id": "<internal id>"}`. `ledgerflow erp check` verifies each one."""

    subsidiaries: dict[str, str]
    """Subsidiary code (US01) → internal id."""
    currencies: dict[Currency, str]
    """ISO 4217 code → internal id of the currency record."""
    items: dict[str, str]
    """Item code (SUB-PLATFORM) → internal id."""
    accounts: dict[str, str] = {}
    """GL account number → internal id (income accounts of the items, deposit accounts)."""
    deposit_accounts: dict[str, str]
    """Subsidiary code → number of the bank account its customer payments are deposited to."""
    tax_codes: dict[str, NetSuiteTaxCode] = {}
    """Tax code (US-SALES) → its salesTaxItem and tax type."""
    credit_tax_codes: dict[str, str] = {}
    """Subsidiary code → the tax code a credit memo's tax books with."""
    shipping_item: str | None = None
    """Item code an invoice's shipping is booked on (one line)."""
    credit_item: str | None = None
    """Item code a credit memo's credited amount is booked on."""
    fields: NetSuiteFields = NetSuiteFields()

    def currency_code(self, internal_id: str) -> str | None:
        """The ISO code of a currency record, by its internal id."""
        return next((code for code, cid in self.currencies.items() if cid == internal_id), None)


class BusinessCentralCompany(_Config):
    """The Business Central company a subsidiary books in (one legal entity, one company)."""

    id: str = Field(min_length=1)
    """The company's id (a GUID: `GET …/api/v2.0/companies`), which every URL names."""
    currency: Currency
    """The company's local currency (LCY): Business Central writes it as an empty currencyCode."""
    payment_journal: str = Field(min_length=1)
    """The id of the customer payment journal (batch) payments are entered in."""
    credit_tax_code: str | None = None
    """The tax code a credit memo's credited amount is taxed with."""


class BusinessCentralIds(_Config):
    """What Business Central calls the things the rest of the mappings name. Items are referenced
    by their number (the mappings' item codes), G/L accounts by theirs, tax codes by code."""

    companies: dict[str, BusinessCentralCompany]
    """Subsidiary code (US01) → its company."""
    shipping_account: str | None = None
    """G/L account number an invoice's shipping is booked to (an Account line)."""
    credit_account: str | None = None
    """G/L account number a credit memo's credited amount is booked to (an Account line)."""

    @property
    def accounts(self) -> set[str]:
        """The G/L accounts this section books to (shipping, credits)."""
        return {a for a in (self.shipping_account, self.credit_account) if a}


class Mappings(_Config):
    subsidiaries: tuple[Subsidiary, ...] = Field(min_length=1)
    default_subsidiary_by_currency: dict[Currency, str] = {}
    """Used when the customer's country is unknown: the currency alone picks the entity."""
    items: dict[str, ItemMapping] = {}
    """Keyed by price id or product id (price wins)."""
    default_item: ItemMapping | None = None
    """For lines that name neither a price nor a product (one-off invoice items)."""
    tax_codes: dict[str, str] = {}
    """Tax rate id → ERP tax code."""
    closed_periods: tuple[ClosedPeriod, ...] = ()
    ownership: dict[str, str] = {
        "name": "salesforce",
        "country": "salesforce",
        "parent_account_id": "salesforce",
        "tax_ids": "salesforce",
        "crm_account_id": "salesforce",
        "deleted": "salesforce",
        "email": "stripe",
        "currency": "stripe",
        "billing_customer_id": "stripe",
    }
    """Customer attribute → the source that owns it (the system of record). An attribute is
    taken from another source only while the owner has not supplied it."""
    netsuite: NetSuiteIds | None = None
    """NetSuite's internal ids for the codes above; required in NetSuite mode."""
    business_central: BusinessCentralIds | None = None
    """Business Central's companies and accounts; required in Business Central mode."""

    @model_validator(mode="after")
    def _references_exist(self) -> Mappings:
        known = {s.id for s in self.subsidiaries}
        if self.netsuite is not None:
            self._netsuite_complete(self.netsuite, known)
        if self.business_central is not None:
            self._business_central_complete(self.business_central, known)
        for currency, subsidiary in self.default_subsidiary_by_currency.items():
            if subsidiary not in known:
                raise ValueError(f"default_subsidiary_by_currency.{currency} names unknown {subsidiary!r}")
        for period in self.closed_periods:
            if period.subsidiary != "*" and period.subsidiary not in known:
                raise ValueError(f"closed period names unknown subsidiary {period.subsidiary!r}")
        return self

    def _netsuite_complete(self, ns: NetSuiteIds, subsidiaries: set[str]) -> None:
        """Every code the mappings use has a NetSuite internal id: a gap is a start-up error,
        not a document the ERP refuses at month-end."""
        missing: list[str] = []
        missing += [f"subsidiaries.{s}" for s in sorted(subsidiaries - ns.subsidiaries.keys())]
        currencies = {c for s in self.subsidiaries for c in s.currencies}
        missing += [f"currencies.{c}" for c in sorted(currencies - ns.currencies.keys())]
        items = self.item_codes | {i for i in (ns.shipping_item, ns.credit_item) if i is not None}
        missing += [f"items.{i}" for i in sorted(items - ns.items.keys())]
        missing += [f"tax_codes.{t}" for t in sorted(set(self.tax_codes.values()) - ns.tax_codes.keys())]
        missing += [
            f"tax_codes.{t} (credit_tax_codes)"
            for t in sorted(set(ns.credit_tax_codes.values()) - ns.tax_codes.keys())
        ]
        missing += [f"deposit_accounts.{s}" for s in sorted(subsidiaries - ns.deposit_accounts.keys())]
        missing += [
            f"accounts.{a} (deposit account)"
            for a in sorted(set(ns.deposit_accounts.values()) - ns.accounts.keys())
        ]
        if missing:
            raise ValueError("netsuite: no internal id for " + ", ".join(missing))

    def _business_central_complete(self, bc: BusinessCentralIds, subsidiaries: set[str]) -> None:
        """Every subsidiary has its company, whose local currency it enables."""
        missing = sorted(subsidiaries - bc.companies.keys())
        if missing:
            raise ValueError("business_central: no company for " + ", ".join(missing))
        for sub in self.subsidiaries:
            company = bc.companies[sub.id]
            if company.currency not in sub.currencies:
                raise ValueError(
                    f"business_central.companies.{sub.id}: local currency {company.currency} is not "
                    f"one of the subsidiary's currencies ({', '.join(sub.currencies)})"
                )

    @property
    def item_codes(self) -> set[str]:
        """Every item the price and product mappings (and the default) post to."""
        mapped = [*self.items.values(), *([self.default_item] if self.default_item else [])]
        return {m.item for m in mapped}

    @property
    def gl_accounts(self) -> set[str]:
        """Every GL account the price and product mappings (and the default) post to."""
        mapped = [*self.items.values(), *([self.default_item] if self.default_item else [])]
        return {m.gl_account for m in mapped}

    def subsidiary(self, subsidiary_id: str) -> Subsidiary | None:
        return next((s for s in self.subsidiaries if s.id == subsidiary_id), None)

    def subsidiary_for(self, country: str | None, currency: str) -> Subsidiary | None:
        """The legal entity that books a document: by country first, else by currency."""
        if country is not None:
            for sub in self.subsidiaries:
                if country in sub.countries:
                    return sub
        default = self.default_subsidiary_by_currency.get(currency)
        return self.subsidiary(default) if default is not None else None

    def item_for(self, price_id: str | None, product_id: str | None) -> ItemMapping | None:
        for key in (price_id, product_id):
            if key is not None and key in self.items:
                return self.items[key]
        if price_id is None and product_id is None:
            return self.default_item
        return None

    def is_closed(self, subsidiary_id: str, day: date) -> bool:
        return any(
            p.start <= day <= p.end and p.subsidiary in ("*", subsidiary_id) for p in self.closed_periods
        )


def load_mappings(path: Path | None) -> Mappings:
    """Read and validate a mappings TOML; `None` loads the bundled example."""
    path = Path(path) if path is not None else EXAMPLE_MAPPINGS
    text = path.read_text("utf-8")
    return Mappings.model_validate(tomllib.loads(text))
