"""How every ledgerflow process logs: one line per record, and every line carries its fields.

The code logs with `extra={...}` (a command's idempotency key, the ERP's status, the
correlation id) and with `log_context(...)` around work done for one command; both reach the
line. `LEDGERFLOW_LOG_FORMAT=json` writes one JSON object per line (python-json-logger: what a
pod's log shipper indexes), `text` a terminal's `time [LEVEL] logger: message key=value …`.
Faust's, aiokafka's and aiohttp's own records go through the same formatter.

Personal data and secrets never reach a line: a field whose name says it holds one (a name, an
e-mail, an address, a phone number, a token, a secret, a signature…) is written as
`[redacted]` whatever the caller passed, so a careless `extra=` cannot leak it; and a
traceback's pydantic validation errors name the fields and the problems, never the input
(pydantic's own text says `input_value='Acme Corp'`).
"""

from __future__ import annotations

import logging
import logging.config
import re
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal

import orjson
from pydantic import ValidationError
from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["json", "text"]
REDACTED = "[redacted]"
SENSITIVE = re.compile(
    r"(^|_)(names?|first_?name|last_?name|display_?name|company_?name|user_?name|e_?mails?|addresse?s?|"
    r"street|city|postal_?code|phones?|tax_?ids?|password|passphrase|secrets?|tokens?|authorization|"
    r"api_?key|private_?key|signatures?|credentials?|cookies?|assertion|jwt)($|_)"
)
"""Field names whose values are personal data or secrets (`customer_name`, `billingAddress`,
`erp_token`, …), matched on the name in snake case."""
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_context: ContextVar[Mapping[str, Any]] = ContextVar("ledgerflow_log_context", default=MappingProxyType({}))
TEXT_FORMAT = "%(asctime)s [%(levelname)s] %(name)s: %(message)s"


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Every line logged inside the block (in this task, and in tasks it starts) carries these
    fields, unless the line sets them itself; None values are left out."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The record's own fields (its `extra=`) over the current `log_context`, redacted."""
    fields = {**_context.get(), **{k: v for k, v in record.__dict__.items() if k not in _STANDARD}}
    return {k: _redacted(k, v) for k, v in fields.items() if not k.startswith("_")}


def sensitive(name: str) -> bool:
    return SENSITIVE.search(_CAMEL.sub("_", name).lower()) is not None


def _redacted(name: str, value: Any) -> Any:
    """The value, or REDACTED if its name says personal data or secret; dicts and lists are
    redacted inside too (a body's `companyName`, a list of contacts' e-mails)."""
    if sensitive(name):
        return REDACTED
    if isinstance(value, dict):
        return {k: _redacted(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(name, v) for v in value]
    return value


def format_exception(exc_info: Any) -> str:
    """A traceback as `logging` writes one, with each pydantic `ValidationError` in its chain
    told without the values it was given."""
    _, exc, _ = exc_info
    if exc is None:
        return logging.Formatter().formatException(exc_info)
    te = traceback.TracebackException.from_exception(exc)
    _scrub(exc, te, set())
    return "".join(te.format()).rstrip("\n")


def _scrub(exc: BaseException | None, te: traceback.TracebackException | None, seen: set[int]) -> None:
    # The TracebackException mirrors the exception's chain (cause, context), so both are walked
    # together; what it prints of an exception is its `_str`, the exception's text taken at build.
    if exc is None or te is None or id(exc) in seen:
        return
    seen.add(id(exc))
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or '(root)'}: {e['msg']} [type={e['type']}]"
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        )
        te._str = f"{exc.error_count()} validation error(s) for {exc.title}: {problems}"  # type: ignore[attr-defined]
    _scrub(exc.__cause__, te.__cause__, seen)
    _scrub(exc.__context__, te.__context__, seen)


class TextFormatter(logging.Formatter):
    """`2026-12-07T02:40:00.123Z [WARNING] connectors.erp.client: erp call failed status=503 …`."""

    converter = staticmethod(time.gmtime)  # UTC, as every timestamp ledgerflow writes
    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s.%03dZ"

    def __init__(self, fmt: str | None = TEXT_FORMAT, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)

    def formatException(self, ei: Any) -> str:
        return format_exception(ei)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = fields_of(record)
        if not fields:
            return line
        pairs = " ".join(f"{k}={_text(v)}" for k, v in fields.items())
        head, newline, rest = line.partition("\n")  # a traceback goes after the fields
        return f"{head} {pairs}{newline}{rest}"


class JsonLineFormatter(JsonFormatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, then the fields."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            json_default=str,
        )

    def formatException(self, ei: Any) -> str:
        return format_exception(ei)

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message: dict[str, Any]
    ) -> None:
        log_data["time"] = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        super().add_fields(log_data, record, message)
        log_data.update(fields_of(record))  # over the extras it copied: redacted, with the context


def formatter(fmt: LogFormat) -> logging.Formatter:
    return JsonLineFormatter() if fmt == "json" else TextFormatter()


def logging_config(fmt: LogFormat) -> dict[str, Any]:
    """For Faust's worker (`logging_config` of the app, merged into the config it builds for its
    `-l` level and stream): its formatters replaced by ledgerflow's."""
    ours = {"()": f"{__name__}.{type(formatter(fmt)).__name__}"}
    return {"merge": True, "formatters": {"default": ours, "colored": ours}}


def configure(fmt: LogFormat, level: str | int = "INFO") -> None:
    """Logging for a process that is not a Faust worker (the CLI's other commands)."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    if text == "" or any(c in text for c in ' ="\n'):
        return orjson.dumps(text).decode()
    return text
