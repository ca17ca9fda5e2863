"""The server's logging ([logging] in the config): JSON lines or text on stderr.

A JSON line has `time` (ISO 8601, UTC), `level`, `logger` and `message`, the fields a
record was given (the access log's method, code, duration_ms, peer, principal,
token_id, rep_id), and `request_id` when it was written during a call (see
server/calls.py). `format = "auto"` writes text to a terminal and JSON lines otherwise
(a service manager, a container, a log shipper).

What is logged at INFO never holds a customer's details: calls are logged by method
and outcome, sessions by id.
"""

from __future__ import annotations

import logging
import sys
from typing import IO

from pythonjsonlogger.json import JsonFormatter

from .calls import current_request_id

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class RequestId(logging.Filter):
    """Puts the current call's request id on records written during the call."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = current_request_id.get()
        if rid and not hasattr(record, "request_id"):
            record.request_id = rid
        return True


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",
        json_ensure_ascii=False,
    )


def configure(
    format: str = "auto", level: str = "INFO", stream: IO[str] | None = None
) -> logging.Handler:
    """Routes every logger to one handler on `stream` (default stderr) in `format`;
    returns the handler (tests read what it wrote)."""
    stream = stream if stream is not None else sys.stderr
    if format == "auto":
        format = "text" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter() if format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RequestId())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
