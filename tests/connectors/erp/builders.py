"""Builders of ERP commands for the connector tests: valid by default, overridable."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from canonical import (
    ApplyPayment,
    Contract,
    ContractLine,
    ContractStatus,
    Customer,
    ErpCreditMemo,
    ErpInvoice,
    ErpInvoiceLine,
    ErpPayment,
    Payment,
    PaymentStatus,
    PostCreditMemo,
    PostInvoice,
    UpsertContract,
    UpsertCustomer,
    VoidInvoice,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = date(2026, 3, 1)


def _envelope(key: str, customer_id: str, subsidiary: str, correlation_id: str | None) -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "customer_id": customer_id,
        "correlation_id": correlation_id or f"corr-{key}",
        "subsidiary": subsidiary,
        "issued_at": T0,
    }


def upsert_customer(
    customer_id: str = "cust-1",
    subsidiary: str = "US01",
    currency: str | None = "USD",
    name: str = "Acme Corp",
    correlation_id: str | None = None,
) -> UpsertCustomer:
    return UpsertCustomer(
        **_envelope(f"upsert_customer-{customer_id}", customer_id, subsidiary, correlation_id),
        external_id=customer_id,
        document=Customer(
            source_ref="acc_1",
            crm_account_id="001xx0000001",
            billing_customer_id="cus_1",
            name=name,
            email="ap@acme.test",
            country="US",
            currency=currency,
            tax_ids=("US-12-3456789",),
        ),
    )


def upsert_contract(
    external_id: str = "clm-ctr_1", customer_id: str = "cust-1", subsidiary: str = "US01"
) -> UpsertContract:
    return UpsertContract(
        **_envelope(f"upsert_contract-{external_id}", customer_id, subsidiary, None),
        external_id=external_id,
        document=Contract(
            contract_id="ctr_1",
            crm_account_id="001xx0000001",
            status=ContractStatus.ACTIVE,
            amendment_number=2,
            effective_date=date(2019, 6, 1),
            end_date=date(2027, 5, 31),
            currency="USD",
            lines=(
                ContractLine(product_id="prod_platform", quantity=1, unit_amount=50000, currency="USD"),
                ContractLine(product_id="prod_seats", quantity=12, unit_amount=1500, currency="USD"),
            ),
        ),
    )


def post_invoice(
    external_id: str = "stripe-in_1",
    customer_id: str = "cust-1",
    subsidiary: str = "US01",
    currency: str = "USD",
    tran_date: date = DAY,
    correlation_id: str | None = None,
) -> PostInvoice:
    return PostInvoice(
        **_envelope(f"post_invoice-{external_id}", customer_id, subsidiary, correlation_id),
        document=ErpInvoice(
            external_id=external_id,
            customer_external_id=customer_id,
            subsidiary=subsidiary,
            currency=currency,
            tran_date=tran_date,
            due_date=date(2026, 3, 31),
            memo="INV-0001",
            lines=(
                ErpInvoiceLine(
                    line_no=1,
                    item="SUB-PLATFORM",
                    gl_account="4010",
                    description="Platform, March",
                    quantity=1,
                    amount=9000,
                    tax_code="US-SALES",
                    tax_amount=720,
                ),
                ErpInvoiceLine(line_no=2, item="SVC-ONBOARD", gl_account="4100", quantity=1, amount=1000),
            ),
            subtotal=11000,
            discount_total=1000,
            tax_total=720,
            total=10720,
        ),
    )


def apply_payment(
    external_id: str = "stripe-pi_1",
    invoice_external_id: str = "stripe-in_1",
    customer_id: str = "cust-1",
    amount: int = 10720,
    tran_date: date = DAY,
    currency: str = "USD",
    subsidiary: str = "US01",
) -> ApplyPayment:
    return ApplyPayment(
        **_envelope(f"apply_payment-{external_id}", customer_id, subsidiary, None),
        document=ErpPayment(
            external_id=external_id,
            customer_external_id=customer_id,
            invoice_external_id=invoice_external_id,
            subsidiary=subsidiary,
            currency=currency,
            amount=amount,
            tran_date=tran_date,
            source=Payment(
                payment_id="pi_1",
                customer_ref="cus_1",
                invoice_id="in_1",
                amount=amount,
                currency=currency,
                status=PaymentStatus.SUCCEEDED,
                received_at=T0,
                method="card",
            ),
        ),
    )


def post_credit_memo(
    external_id: str = "stripe-cn_1",
    invoice_external_id: str = "stripe-in_1",
    customer_id: str = "cust-1",
    currency: str = "USD",
    subsidiary: str = "US01",
) -> PostCreditMemo:
    return PostCreditMemo(
        **_envelope(f"post_credit_memo-{external_id}", customer_id, subsidiary, None),
        document=ErpCreditMemo(
            external_id=external_id,
            customer_external_id=customer_id,
            invoice_external_id=invoice_external_id,
            subsidiary=subsidiary,
            currency=currency,
            tran_date=DAY,
            subtotal=1000,
            tax_total=80,
            total=1080,
        ),
    )


def void_invoice(
    invoice_external_id: str = "stripe-in_1", customer_id: str = "cust-1", subsidiary: str = "US01"
) -> VoidInvoice:
    return VoidInvoice(
        **_envelope(f"void_invoice-{invoice_external_id}", customer_id, subsidiary, None),
        invoice_external_id=invoice_external_id,
        reason="customer cancelled",
    )
