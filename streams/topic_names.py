"""The design's topic names (§2, contract: keep them, or change them there and in the README
too), importable without building the Faust app (CLI tools, the trace reader, the bench)."""

CRM_CHANGES = "crm.changes"
CLM_CHANGES = "clm.changes"
BILLING_CHANGES = "billing.changes"
PAYMENTS_CHANGES = "payments.changes"
# Stripe `invoice_payment.*` Events, keyed by Stripe invoice id (they name no customer).
INVOICE_PAYMENTS = "billing.invoice-payments"
CANONICAL = "ledgerflow.canonical"
ERP_COMMANDS = "erp.commands"
ERP_RESULTS = "erp.results"
CRM_WRITEBACK = "crm.writeback"
EXCEPTIONS = "ledgerflow.exceptions"
DLQ = "ledgerflow.dlq"
# Internal (not part of the design's contract): customer fingerprints re-keyed for the
# likely-duplicate check.
CUSTOMER_FINGERPRINTS = "ledgerflow.customer-fingerprints"
# Internal: a Stripe invoice → its billing customer, keyed by invoice id like
# billing.invoice-payments, so stage 1 can re-key an invoice_payment to payments.changes.
INVOICE_OWNERS = "ledgerflow.invoice-owners"
# Internal, compacted: the Salesforce Pub/Sub subscriber's replay id per channel, written in the
# same transaction as the events it covers on crm.changes.
SALESFORCE_REPLAY = "ledgerflow.salesforce-replay"

STRIPE_TOPICS = (BILLING_CHANGES, PAYMENTS_CHANGES, INVOICE_PAYMENTS)
SOURCE_TOPICS = (CRM_CHANGES, CLM_CHANGES, *STRIPE_TOPICS)
