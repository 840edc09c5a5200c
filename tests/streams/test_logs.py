"""Every log line carries its fields, in text or JSON, with personal data and secrets redacted."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator

import orjson
import pytest
from mode.utils.logging import setup_logging

from streams import logs


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger's handlers, swapped for the test and put back after."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    yield io.StringIO()
    root.handlers[:] = saved
    root.setLevel(level)


def _to(stream: io.StringIO, fmt: logs.LogFormat) -> None:
    logs.configure(fmt, "INFO")
    [handler] = logging.getLogger().handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)


def test_a_text_line_names_its_fields_and_the_context_it_was_logged_in(captured: io.StringIO) -> None:
    _to(captured, "text")
    with logs.log_context(command="post_invoice", idempotency_key="post_invoice-stripe-in_1", absent=None):
        logging.getLogger("connectors.erp.client").warning(
            "erp call failed", extra={"status": 503, "code": "UNEXPECTED_ERROR", "url": "http://h/a b"}
        )
    logging.getLogger("x").info("after the block")
    first, second = captured.getvalue().splitlines()
    assert first.endswith(
        "[WARNING] connectors.erp.client: erp call failed command=post_invoice "
        'idempotency_key=post_invoice-stripe-in_1 status=503 code=UNEXPECTED_ERROR url="http://h/a b"'
    )
    assert first[:24].endswith("Z") and first[10] == "T"  # UTC, ISO 8601
    assert "absent" not in first and second.endswith("x: after the block")  # the context ended


def test_a_json_line_is_one_object_with_time_level_logger_message_and_fields(captured: io.StringIO) -> None:
    _to(captured, "json")
    with logs.log_context(correlation_id="corr-1"):
        logging.getLogger("agents.outbox").info(
            "business exception raised", extra={"reason": "closed_period", "customer_id": "cust-1"}
        )
    line = orjson.loads(captured.getvalue())
    assert line["level"] == "INFO" and line["logger"] == "agents.outbox"
    assert line["message"] == "business exception raised" and line["time"].endswith("+00:00")
    assert (line["reason"], line["customer_id"], line["correlation_id"]) == (
        "closed_period",
        "cust-1",
        "corr-1",
    )


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_personal_data_and_secrets_are_redacted_whatever_the_caller_passed(
    captured: io.StringIO, fmt: logs.LogFormat
) -> None:
    _to(captured, fmt)
    with logs.log_context(erp_token="tok-SECRET"):
        logging.getLogger("x").warning(
            "careless",
            extra={
                "customer_name": "Acme Ltd",
                "email": "ap@acme.example",
                "billing_address": "1 Main St",
                "phone": "+44 20 1234",
                "client_secret": "s3cret",
                "authorization": "Bearer abc",
                "customer_id": "cust-1",
            },
        )
    out = captured.getvalue()
    for value in (
        "Acme Ltd",
        "ap@acme.example",
        "1 Main St",
        "+44 20 1234",
        "s3cret",
        "Bearer abc",
        "tok-SECRET",
    ):
        assert value not in out
    assert out.count(logs.REDACTED) == 7 and "cust-1" in out


def test_a_traceback_follows_the_fields(captured: io.StringIO) -> None:
    _to(captured, "text")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("x").exception("sink lane failed", extra={"customer_id": "cust-1"})
    head, *rest = captured.getvalue().splitlines()
    assert head.endswith("x: sink lane failed customer_id=cust-1")
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "ValueError: boom"


async def test_tasks_started_in_a_context_log_with_it(captured: io.StringIO) -> None:
    _to(captured, "text")

    async def call() -> None:
        await asyncio.sleep(0)
        logging.getLogger("x").warning("inside")

    with logs.log_context(idempotency_key="k1"):
        task = asyncio.create_task(call())
    await task
    assert captured.getvalue().strip().endswith("x: inside idempotency_key=k1")


@pytest.mark.parametrize(("fmt", "kind"), [("json", logs.JsonLineFormatter), ("text", logs.TextFormatter)])
def test_faust_workers_logging_takes_ledgerflows_formatter(
    captured: io.StringIO, fmt: logs.LogFormat, kind: type[logging.Formatter]
) -> None:
    # What a Faust worker does with the app's `logging_config` and its `-l` level and stream.
    setup_logging(loglevel="info", logfile=captured, logging_config=logs.logging_config(fmt))
    [handler] = logging.getLogger().handlers
    assert isinstance(handler.formatter, kind) and isinstance(handler, logging.StreamHandler)
    handler.setStream(captured)  # mode's handler writes to stderr
    logging.getLogger("faust.worker").info("Worker ready", extra={"pid": 1})
    assert "Worker ready" in captured.getvalue() and "pid" in captured.getvalue()


def test_names_are_matched_in_any_case_and_inside_nested_values(captured: io.StringIO) -> None:
    _to(captured, "json")
    logging.getLogger("x").warning(
        "nested",
        extra={
            "body": {"companyName": "Acme Ltd", "billingAddress": {"line1": "1 Main St"}, "currency": "GBP"},
            "contacts": [{"emails": ["ap@acme.example"]}],
            "private_key": "-----BEGIN",
            "record_type": "invoice",
        },
    )
    line = orjson.loads(captured.getvalue())
    assert line["body"] == {"companyName": logs.REDACTED, "billingAddress": logs.REDACTED, "currency": "GBP"}
    assert line["contacts"] == [{"emails": logs.REDACTED}]
    assert line["private_key"] == logs.REDACTED and line["record_type"] == "invoice"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_validation_error_in_a_traceback_names_fields_never_values(
    captured: io.StringIO, fmt: logs.LogFormat
) -> None:
    from pydantic import BaseModel, ValidationError

    class Contact(BaseModel):
        email: int
        seats: int

    email, company = "jane.doe" + "@example.com", "Acme" + " Corp"  # not in the traceback's source lines
    _to(captured, fmt)
    try:
        try:
            Contact(email=email, seats=company)
        except ValidationError as exc:
            raise RuntimeError("mapping failed") from exc
    except RuntimeError:
        logging.getLogger("x").exception("posting failed", extra={"customer_id": "cust-1"})
    out = captured.getvalue()
    text = orjson.loads(out)["exc_info"] if fmt == "json" else out
    assert "jane.doe@example.com" not in out and "Acme Corp" not in out
    assert "2 validation error(s) for Contact: email: Input should be a valid integer" in text
    assert "seats: Input should be a valid integer" in text and "RuntimeError: mapping failed" in text
