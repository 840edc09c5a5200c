"""Validation of an invoice against ERP rules before any command is emitted. Pure functions."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from canonical import ExceptionReason, FieldError, Invoice
from streams.mappings import ItemMapping, Mappings, Subsidiary


@dataclass(frozen=True)
class Problem:
    """One rule that failed, with every field at fault."""

    reason: ExceptionReason
    fields: tuple[FieldError, ...]

    @property
    def message(self) -> str:
        shown = "; ".join(f"{f.field}: {f.problem}" for f in self.fields[:5])
        more = f" (+{len(self.fields) - 5} more)" if len(self.fields) > 5 else ""
        return f"{self.reason.value}: {shown}{more}"


@dataclass(frozen=True)
class ResolvedInvoice:
    """What validation resolved on the way: the booking entity and each line's item."""

    subsidiary: Subsidiary
    items: tuple[ItemMapping, ...]
    tax_codes: tuple[tuple[str, ...], ...]


def check_arithmetic(invoice: Invoice) -> list[FieldError]:
    """Minor-unit arithmetic: each line, the lines against the totals, the totals together."""
    errors: list[FieldError] = []
    for i, line in enumerate(invoice.lines):
        if line.amount != line.subtotal - line.discount_amount:
            errors.append(
                FieldError(
                    field=f"lines[{i}].amount",
                    problem=f"{line.amount} != subtotal {line.subtotal} - discount {line.discount_amount}",
                )
            )
    lines_subtotal = sum(line.subtotal for line in invoice.lines)
    if lines_subtotal != invoice.subtotal:
        errors.append(
            FieldError(
                field="subtotal",
                problem=f"{invoice.subtotal} != sum of line subtotals {lines_subtotal}",
            )
        )
    lines_discount = sum(line.discount_amount for line in invoice.lines)
    if lines_discount != invoice.discount_total:
        errors.append(
            FieldError(
                field="discount_total",
                problem=f"{invoice.discount_total} != sum of line discounts {lines_discount}",
            )
        )
    lines_tax = sum(line.tax_amount for line in invoice.lines)
    if lines_tax != invoice.tax_total:
        errors.append(
            FieldError(
                field="tax_total",
                problem=f"{invoice.tax_total} != sum of line taxes {lines_tax}",
            )
        )
    expected = invoice.subtotal - invoice.discount_total + invoice.tax_total + invoice.shipping_total
    if expected != invoice.total:
        errors.append(
            FieldError(
                field="total",
                problem=f"{invoice.total} != subtotal - discounts + tax + shipping = {expected}",
            )
        )
    return errors


def validate_invoice(
    invoice: Invoice, mappings: Mappings, customer_subsidiary: str | None = None
) -> tuple[ResolvedInvoice | None, list[Problem]]:
    """Every rule an invoice must pass to be posted; all failures at once, grouped by reason.

    `customer_subsidiary` is the subsidiary the customer master resolved (the ERP keeps a
    customer in one, and refuses its invoice in another): the invoice books there, whether its
    billing record has an address or not, unless its own country or currency says otherwise."""
    found: dict[ExceptionReason, list[FieldError]] = defaultdict(list)
    found[ExceptionReason.ARITHMETIC_MISMATCH].extend(check_arithmetic(invoice))

    subsidiary = _booking_subsidiary(invoice, mappings, customer_subsidiary, found)
    if subsidiary is None:
        if not found[ExceptionReason.SUBSIDIARY_MISMATCH]:
            found[ExceptionReason.UNMAPPED_SUBSIDIARY].append(
                FieldError(
                    field="customer_country",
                    problem=(
                        f"no subsidiary for country {invoice.customer_country} / currency {invoice.currency}"
                    ),
                )
            )
    elif invoice.currency not in subsidiary.currencies:
        found[ExceptionReason.CURRENCY_NOT_ENABLED].append(
            FieldError(
                field="currency",
                problem=f"{invoice.currency} is not enabled for {subsidiary.id}",
            )
        )
    elif mappings.is_closed(subsidiary.id, invoice.issued_at.date()):
        found[ExceptionReason.CLOSED_PERIOD].append(
            FieldError(
                field="issued_at",
                problem=f"{invoice.issued_at.date()} is in a closed period of {subsidiary.id}",
            )
        )

    items: list[ItemMapping] = []
    tax_codes: list[tuple[str, ...]] = []
    for i, line in enumerate(invoice.lines):
        item = mappings.item_for(line.price_id, line.product_id)
        if item is None:
            found[ExceptionReason.MISSING_GL_MAPPING].append(
                FieldError(
                    field=f"lines[{i}].price_id",
                    problem=f"no item/GL account for price {line.price_id} / product {line.product_id}",
                )
            )
        else:
            items.append(item)
        codes = []
        for rate in line.tax_rate_ids:
            code = mappings.tax_codes.get(rate)
            if code is None:
                found[ExceptionReason.MISSING_TAX_CODE].append(
                    FieldError(
                        field=f"lines[{i}].tax_rate_ids",
                        problem=f"no tax code for tax rate {rate}",
                    )
                )
            else:
                codes.append(code)
        if line.tax_amount and not line.tax_rate_ids:
            found[ExceptionReason.MISSING_TAX_CODE].append(
                FieldError(
                    field=f"lines[{i}].tax_rate_ids",
                    problem="taxed line names no tax rate",
                )
            )
        tax_codes.append(tuple(codes))
    if not invoice.lines:
        found[ExceptionReason.ARITHMETIC_MISMATCH].append(
            FieldError(field="lines", problem="an invoice to post needs at least one line")
        )

    problems = [Problem(reason, tuple(errs)) for reason, errs in found.items() if errs]
    if problems or subsidiary is None:
        return None, problems
    return ResolvedInvoice(subsidiary, tuple(items), tuple(tax_codes)), []


def _booking_subsidiary(
    invoice: Invoice,
    mappings: Mappings,
    customer_subsidiary: str | None,
    found: dict[ExceptionReason, list[FieldError]],
) -> Subsidiary | None:
    """The customer's subsidiary when the master resolved one, else the invoice's own (by its
    country, then its currency). A mismatch names both, as booking in either would be wrong in
    one of the two systems: the invoice's own country belongs to another subsidiary, or it has
    no country and its currency is another subsidiary's default that the customer's does not
    enable. (A currency the customer's subsidiary does not enable, on an invoice whose country
    agrees, stays `currency_not_enabled`: the fix is to enable it there.)"""
    if customer_subsidiary is None:
        return mappings.subsidiary_for(invoice.customer_country, invoice.currency)
    customers = mappings.subsidiary(customer_subsidiary)
    if customers is None:  # the mappings lost the customer's subsidiary: unmapped, not another one
        return None
    if invoice.customer_country is not None:
        own = next((sub for sub in mappings.subsidiaries if invoice.customer_country in sub.countries), None)
        if own is not None and own.id != customers.id:
            problem = (
                f"the invoice's country {invoice.customer_country} books in {own.id}; "
                f"its customer is in {customers.id}"
            )
            found[ExceptionReason.SUBSIDIARY_MISMATCH].append(
                FieldError(field="customer_country", problem=problem)
            )
            return None
    elif invoice.currency not in customers.currencies:
        default = mappings.subsidiary_for(None, invoice.currency)
        if default is not None and default.id != customers.id:
            problem = (
                f"{invoice.currency} is {default.id}'s currency and not enabled for {customers.id}, "
                "its customer's subsidiary"
            )
            found[ExceptionReason.SUBSIDIARY_MISMATCH].append(FieldError(field="currency", problem=problem))
            return None
    return customers
