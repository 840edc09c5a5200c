"""Every topic of the design (§2): its name, key, and value schema, in one registry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from canonical import AnyErpCommand, BusinessException, ChangeEvent, CrmWriteback, PostingResult
from canonical.fingerprints import CustomerFingerprint
from canonical.links import InvoiceOwner
from streams.app import app
from streams.schemas import ByTopicSchema, PydanticSchema, RawSchema
from streams.settings import settings
from streams.topic_names import (
    BILLING_CHANGES,
    CANONICAL,
    CLM_CHANGES,
    CRM_CHANGES,
    CRM_WRITEBACK,
    CUSTOMER_FINGERPRINTS,
    DLQ,
    ERP_COMMANDS,
    ERP_RESULTS,
    EXCEPTIONS,
    INVOICE_OWNERS,
    INVOICE_PAYMENTS,
    PAYMENTS_CHANGES,
)

if TYPE_CHECKING:
    from faust.types import SchemaT, TopicT


def _topic(name: str, schema: SchemaT) -> TopicT:
    return app.topic(
        settings.topic(name),
        schema=schema,
        partitions=settings.partitions,
        internal=True,  # declare (create) it with our partition count if it is missing
    )


crm_changes_topic = _topic(CRM_CHANGES, RawSchema())
clm_changes_topic = _topic(CLM_CHANGES, RawSchema())
billing_changes_topic = _topic(BILLING_CHANGES, RawSchema())
payments_changes_topic = _topic(PAYMENTS_CHANGES, RawSchema())
invoice_payments_topic = _topic(INVOICE_PAYMENTS, RawSchema())
canonical_topic = _topic(CANONICAL, PydanticSchema(ChangeEvent))
erp_commands_topic = _topic(ERP_COMMANDS, PydanticSchema(AnyErpCommand))
erp_results_topic = _topic(ERP_RESULTS, PydanticSchema(PostingResult))
crm_writeback_topic = _topic(CRM_WRITEBACK, PydanticSchema(CrmWriteback))
exceptions_topic = _topic(EXCEPTIONS, PydanticSchema(BusinessException))
dlq_topic = _topic(DLQ, RawSchema())
customer_fingerprints_topic = _topic(CUSTOMER_FINGERPRINTS, PydanticSchema(CustomerFingerprint))
invoice_owners_topic = _topic(INVOICE_OWNERS, PydanticSchema(InvoiceOwner))

ALL_TOPICS = {
    CRM_CHANGES: crm_changes_topic,
    CLM_CHANGES: clm_changes_topic,
    BILLING_CHANGES: billing_changes_topic,
    PAYMENTS_CHANGES: payments_changes_topic,
    INVOICE_PAYMENTS: invoice_payments_topic,
    CANONICAL: canonical_topic,
    ERP_COMMANDS: erp_commands_topic,
    ERP_RESULTS: erp_results_topic,
    CRM_WRITEBACK: crm_writeback_topic,
    EXCEPTIONS: exceptions_topic,
    DLQ: dlq_topic,
    CUSTOMER_FINGERPRINTS: customer_fingerprints_topic,
    INVOICE_OWNERS: invoice_owners_topic,
}

app.declared_topics.extend(ALL_TOPICS.values())

# Stage 2 reads what the ERP confirmed (erp.results) in the same actor as the canonical events:
# both are keyed by canonical customer id, so each customer's state has one writer.
core_inputs_topic = app.topic(
    settings.topic(CANONICAL),
    settings.topic(ERP_RESULTS),
    schema=ByTopicSchema(
        {settings.topic(CANONICAL): ChangeEvent, settings.topic(ERP_RESULTS): PostingResult}
    ),
)

# Stripe's two streams, read by ONE agent: both resolve customers through the same identity
# and parking tables (keyed by Stripe customer id), and two agents staging writes to one row
# would overwrite each other's (a payment parked after its customer was linked stays parked).
stripe_changes_topic = app.topic(
    settings.topic(BILLING_CHANGES), settings.topic(PAYMENTS_CHANGES), schema=RawSchema()
)

# Stripe invoice_payment Events and the invoice owners, both keyed by Stripe invoice id, read by
# one agent: a payment waits there for its invoice's customer, then goes to payments.changes.
invoice_links_topic = app.topic(
    settings.topic(INVOICE_PAYMENTS),
    settings.topic(INVOICE_OWNERS),
    schema=ByTopicSchema(
        {settings.topic(INVOICE_PAYMENTS): bytes, settings.topic(INVOICE_OWNERS): InvoiceOwner}
    ),
)
