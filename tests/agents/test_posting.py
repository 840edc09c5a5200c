"""Stage 2's invoice rules (pure), then the agent around them with Faust's test_context."""

from __future__ import annotations

import asyncio
from unittest import mock

from agents.posting import Outcome, decide_invoice
from canonical import ErpCommand, ExceptionReason, InvoiceStatus, PostInvoice, VoidInvoice
from streams.mappings import load_mappings
from tables.invoices import InvoiceErpStatus
from tests.factories import T0, invoice, invoice_event, invoice_line, posted

MAPPINGS = load_mappings(None)


def test_a_valid_open_invoice_yields_one_post_invoice() -> None:
    decision = decide_invoice(None, invoice_event(), MAPPINGS, T0)
    assert decision.outcome is Outcome.COMMANDED
    [command] = decision.commands
    assert isinstance(command, PostInvoice)
    assert command.idempotency_key == "post_invoice-stripe-in_100"
    assert command.document.total == 12000 and command.document.lines[0].tax_code == "UK-VAT-S"
    assert decision.row.erp_status is InvoiceErpStatus.PENDING


def test_the_idempotency_key_is_the_same_on_a_fresh_replay_and_new_for_another_invoice() -> None:
    first = decide_invoice(None, invoice_event(event_id="evt_a"), MAPPINGS, T0).commands[0]
    replay = decide_invoice(None, invoice_event(event_id="evt_b"), MAPPINGS, T0.replace(hour=20)).commands[0]
    other = decide_invoice(None, invoice_event(invoice(invoice_id="in_101")), MAPPINGS, T0).commands[0]
    assert first.idempotency_key == replay.idempotency_key != other.idempotency_key


def test_a_duplicate_event_changes_nothing() -> None:
    first = decide_invoice(None, invoice_event(), MAPPINGS, T0)
    again = decide_invoice(first.row, invoice_event(), MAPPINGS, T0)
    assert again.outcome is Outcome.DUPLICATE and again.commands == [] and again.row == first.row


def test_a_posted_invoice_is_not_posted_again_when_it_is_paid() -> None:
    first = decide_invoice(None, invoice_event(), MAPPINGS, T0)
    paid = decide_invoice(
        first.row, invoice_event(invoice(status=InvoiceStatus.PAID), "evt_paid"), MAPPINGS, T0
    )
    assert paid.outcome is Outcome.APPLIED and paid.commands == []
    assert paid.row.status is InvoiceStatus.PAID and paid.row.version == (3,)


def test_a_stale_snapshot_never_overwrites_a_newer_one() -> None:
    paid = decide_invoice(None, invoice_event(invoice(status=InvoiceStatus.PAID), "evt_paid"), MAPPINGS, T0)
    late_open = decide_invoice(paid.row, invoice_event(event_id="evt_open"), MAPPINGS, T0)
    assert late_open.outcome is Outcome.STALE and late_open.commands == []
    assert late_open.row.status is InvoiceStatus.PAID and "evt_open" in late_open.row.seen_event_ids


def test_a_draft_is_recorded_but_not_posted() -> None:
    draft = decide_invoice(None, invoice_event(invoice(status=InvoiceStatus.DRAFT)), MAPPINGS, T0)
    assert draft.outcome is Outcome.APPLIED and draft.commands == []
    assert draft.row.erp_status is InvoiceErpStatus.NOT_SENT


def test_an_invalid_invoice_is_held_with_a_stable_exception_and_released_when_fixed() -> None:
    bad = invoice(lines=(invoice_line(amount=9000),))
    held = decide_invoice(None, invoice_event(bad, "evt_bad"), MAPPINGS, T0)
    assert held.outcome is Outcome.HELD and held.commands == []
    [exc] = held.exceptions
    assert exc.reason is ExceptionReason.ARITHMETIC_MISMATCH and exc.entity_id == "in_100"
    again = decide_invoice(held.row, invoice_event(bad, "evt_bad2"), MAPPINGS, T0)
    assert again.exceptions[0].exception_id == exc.exception_id
    fixed = decide_invoice(
        again.row, invoice_event(invoice(status=InvoiceStatus.PAID), "evt_fix"), MAPPINGS, T0
    )
    assert fixed.outcome is Outcome.COMMANDED and fixed.row.exception_ids == ()


def test_voiding_a_posted_invoice_emits_one_void() -> None:
    posted = decide_invoice(None, invoice_event(), MAPPINGS, T0)
    void = decide_invoice(
        posted.row, invoice_event(invoice(status=InvoiceStatus.VOID), "evt_void"), MAPPINGS, T0
    )
    [command] = void.commands
    assert isinstance(command, VoidInvoice) and command.invoice_external_id == "stripe-in_100"
    again = decide_invoice(
        void.row, invoice_event(invoice(status=InvoiceStatus.VOID), "evt_void2"), MAPPINGS, T0
    )
    assert again.commands == []


async def test_agent_posts_once_and_dead_letters_undecodable_values() -> None:
    """The agent loop with Faust's test_context: no broker, the table in memory."""
    from agents import posting
    from streams.schemas import Undecodable
    from tests.agents.test_customers import account_change

    sent_commands: list[PostInvoice] = []
    upserts: list[ErpCommand] = []
    dead: list[str] = []

    def delivered() -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def fake_send(*, key: str, value: PostInvoice, headers: dict[str, bytes], force: bool) -> object:
        assert force, "sends must not be attached to the event (published only at commit)"
        if isinstance(value, PostInvoice):
            sent_commands.append(value)
        elif isinstance(value, ErpCommand):
            upserts.append(value)
        return delivered()

    async def fake_dlq(outbox: object, event: object, reason: str) -> None:
        dead.append(reason)

    store: dict[bytes, bytes] = {}
    with (
        mock.patch.object(posting.erp_commands_topic, "send", side_effect=fake_send),
        mock.patch.object(posting.customer_fingerprints_topic, "send", side_effect=fake_send),
        mock.patch.object(posting, "send_to_dlq", side_effect=fake_dlq),
        mock.patch.object(posting, "invoice_table", store),
        mock.patch.object(posting, "contract_table", {}),
        mock.patch.object(posting, "customer_table", {}),
    ):
        async with posting.build_posting_commands.test_context() as agent:
            key = "cust-stripe-cus_100"
            customer = account_change().model_copy(update={"customer_id": key})
            await agent.put(invoice_event(), key=key, wait=False)  # waits for its customer
            await agent.put(customer, key=key, wait=False)
            for _ in range(200):
                if upserts:
                    break
                await asyncio.sleep(0.01)
            assert sent_commands == []  # the customer's upsert is not confirmed yet
            await agent.put(posted(upserts[0]), key=key, wait=False)  # erp.results says it is
            await agent.put(invoice_event(), key=key, wait=False)  # redelivered
            await agent.put(Undecodable(raw=b"{}", reason="payload: missing"), key=key, wait=False)
            for _ in range(200):
                if len(sent_commands) == 1 and dead:
                    break
                await asyncio.sleep(0.01)
    assert [c.idempotency_key for c in sent_commands] == ["post_invoice-stripe-in_100"]
    assert dead == ["undecodable canonical event: payload: missing"]
    assert b"cust-stripe-cus_100" in store


def _transition(current: InvoiceStatus, new: InvoiceStatus):  # type: ignore[no-untyped-def]
    from agents.posting import INVOICE_TRANSITIONS

    rank = {"draft": 0, "open": 1, "uncollectible": 2, "paid": 3, "void": 3}
    first = decide_invoice(None, invoice_event(invoice(status=current), "evt_a"), MAPPINGS, T0)
    second = decide_invoice(first.row, invoice_event(invoice(status=new), "evt_b"), MAPPINGS, T0)
    return second, rank[new.value] < rank[current.value], new in INVOICE_TRANSITIONS[current]


def test_every_invoice_transition_is_applied_ignored_as_stale_or_an_exception() -> None:
    for current in InvoiceStatus:
        for new in InvoiceStatus:
            decision, stale, legal = _transition(current, new)
            if stale:
                assert decision.outcome is Outcome.STALE and decision.row.status is current, (current, new)
            elif legal:
                assert decision.outcome in (Outcome.APPLIED, Outcome.COMMANDED), (current, new)
                assert decision.row.status is new
            else:
                assert decision.outcome is Outcome.ILLEGAL and decision.row.status is current, (current, new)
                assert [e.reason for e in decision.exceptions] == [ExceptionReason.ILLEGAL_TRANSITION]


async def test_a_message_keyed_by_another_customer_is_dead_lettered_not_taken_into_its_rows() -> None:
    """Stage 1 and the sink key by customer id; a canonical event or a result under another key
    (found by tests/integration/test_fuzz_topics.py) would write one customer's documents into
    another's rows, and emit commands the sink then refuses."""
    from agents import posting
    from tests.agents.test_fuzz_ingest import Event, Message

    dead: list[str] = []
    rows: dict[bytes, bytes] = {}

    async def fake_dlq(outbox: object, event: object, reason: str) -> None:
        dead.append(reason)

    change = invoice_event()  # customer cust-stripe-cus_100
    events = [
        Event(key, value, {}, Message("p.ledgerflow.canonical", b"", offset=i))
        for i, (key, value) in enumerate([("cust-other", change), ("cust-other", posted(_command(change)))])
    ]
    with (
        mock.patch.object(posting, "send_to_dlq", side_effect=fake_dlq),
        mock.patch.object(posting, "invoice_table", rows),
        mock.patch.object(posting, "contract_table", {}),
        mock.patch.object(posting, "customer_table", {}),
    ):
        outbox = posting.Outbox()
        counts = await posting.post_customer_changes(outbox, "cust-other", events, MAPPINGS, T0)  # type: ignore[arg-type]
        await outbox.commit()
    assert dead == ["misrouted: the message key is not its customer_id"] * 2
    assert counts == {} and rows == {}


def _command(change: object) -> PostInvoice:
    decision = decide_invoice(None, change, MAPPINGS, T0)  # type: ignore[arg-type]
    [command] = decision.commands
    assert isinstance(command, PostInvoice)
    return command
