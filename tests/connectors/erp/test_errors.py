"""Reading the ERP's answers into typed errors: which are retried, with which hint."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from connectors.erp import (
    ErpAuthError,
    ErpPermanentError,
    ErpTransientError,
    ErpUncertainError,
    classify,
)
from connectors.erp.errors import from_transport_error, parse_retry_after
from connectors.erp.schemas import netsuite_error_body, odata_error_body

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _response(status: int, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request("PUT", "http://erp.test/services/rest/record/v1/invoice/eid:x")
    if body is None:
        return httpx.Response(status, headers=headers, request=request)
    if isinstance(body, str):
        return httpx.Response(status, text=body, headers=headers, request=request)
    return httpx.Response(status, json=body, headers=headers, request=request)


def test_successes_are_not_errors() -> None:
    assert classify(_response(200, {"id": "1"})) is None
    assert classify(_response(204)) is None


def test_a_netsuite_validation_error_is_permanent_with_the_erps_code_and_message() -> None:
    body = {
        "type": "https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.1",
        "title": "Bad Request",
        "status": 400,
        "o:errorDetails": [
            {"detail": "Invalid customer reference key cust-9.", "o:errorCode": "INVALID_KEY_OR_REF"}
        ],
    }
    error = classify(_response(400, body))
    assert isinstance(error, ErpPermanentError)
    assert (error.code, error.message, error.status) == (
        "INVALID_KEY_OR_REF",
        "Invalid customer reference key cust-9.",
        400,
    )


def test_several_error_details_keep_every_message_and_the_first_code() -> None:
    body = netsuite_error_body(400, "USER_ERROR", "Please enter value(s) for: Customer")
    body["o:errorDetails"].append(
        {"detail": "Please enter value(s) for: Currency", "o:errorCode": "USER_ERROR"}
    )
    error = classify(_response(400, body))
    assert isinstance(error, ErpPermanentError)
    assert error.code == "USER_ERROR"
    assert error.message == "Please enter value(s) for: Customer; Please enter value(s) for: Currency"


def test_an_odata_error_body_is_read_too() -> None:
    error = classify(
        _response(400, odata_error_body("Application_FieldValidation", "Currency JPY not enabled"))
    )
    assert isinstance(error, ErpPermanentError)
    assert (error.code, error.message) == ("Application_FieldValidation", "Currency JPY not enabled")


def test_429_is_transient_with_retry_after_in_seconds() -> None:
    body = netsuite_error_body(429, "SSS_REQUEST_LIMIT_EXCEEDED", "Request blocked by the concurrency limit")
    error = classify(_response(429, body, {"Retry-After": "7"}))
    assert isinstance(error, ErpTransientError) and not isinstance(error, ErpUncertainError)
    assert (error.code, error.retry_after, error.status) == ("SSS_REQUEST_LIMIT_EXCEEDED", 7.0, 429)


def test_request_limit_code_is_transient_whatever_the_status() -> None:
    body = netsuite_error_body(400, "SSS_REQUEST_LIMIT_EXCEEDED", "Too many concurrent requests")
    error = classify(_response(400, body))
    assert isinstance(error, ErpTransientError)
    assert error.retry_after is None


def test_maintenance_503_carries_an_http_date_retry_after() -> None:
    error = classify(
        _response(503, "down for maintenance", {"Retry-After": "Sun, 01 Mar 2026 12:02:00 GMT"}), NOW
    )
    assert isinstance(error, ErpTransientError)
    assert error.retry_after == 120.0
    assert (error.code, error.message) == ("HTTP_503", "down for maintenance")


def test_a_500_without_a_body_is_transient_with_a_generic_code() -> None:
    error = classify(_response(500))
    assert isinstance(error, ErpTransientError)
    assert (error.code, error.message, error.status) == ("HTTP_500", "Internal Server Error", 500)


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_auth_errors(status: int) -> None:
    error = classify(
        _response(status, netsuite_error_body(status, "INVALID_LOGIN", "Invalid login attempt."))
    )
    assert isinstance(error, ErpAuthError)
    assert (error.code, error.status) == ("INVALID_LOGIN", status)


def test_a_404_is_permanent() -> None:
    body = netsuite_error_body(404, "NONEXISTENT_ID", "The record instance does not exist.")
    error = classify(_response(404, body))
    assert isinstance(error, ErpPermanentError)
    assert (error.code, error.status) == ("NONEXISTENT_ID", 404)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        ("0.5", 0.5),
        ("-4", 0.0),
        ("Sun, 01 Mar 2026 12:00:30 GMT", 30.0),
        ("Sun, 01 Mar 2026 11:00:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_is_seconds_or_an_http_date(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_a_refused_connection_is_transient_but_a_lost_answer_to_a_write_is_uncertain() -> None:
    request = httpx.Request("POST", "http://erp.test/api/v1/invoice")
    refused = from_transport_error(httpx.ConnectError("refused", request=request), request_sent=True)
    assert type(refused) is ErpTransientError and refused.code == "CONNECTION_FAILED"
    for lost in (
        httpx.ReadTimeout("slow", request=request),
        httpx.RemoteProtocolError("closed", request=request),
    ):
        error = from_transport_error(lost, request_sent=True)
        assert isinstance(error, ErpUncertainError) and error.code == "NO_RESPONSE"
    read = from_transport_error(httpx.ReadTimeout("slow", request=request), request_sent=False)
    assert type(read) is ErpTransientError
