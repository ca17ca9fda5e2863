"""The server's logging ([logging] in the config): JSON lines or text on stderr.

A JSON line has `time` (ISO 8601, UTC), `level`, `logger` and `message`, the fields a
record was given (the access log's method, code, duration_ms, peer, principal,
token_id, rep_id), and `request_id` when it was written during a call (see
server/api/calls.py). `format = "auto"` writes text to a terminal and JSON lines otherwise
(a service manager, a container, a log shipper).

What is logged at INFO never holds a customer's details: calls are logged by method
and outcome, sessions by id.

gRPC's C core writes its own lines (a failed TLS handshake, a refused connection) to
file descriptor 2, as does anything else below Python. With JSON logs, `capture_stderr`
puts a pipe on descriptor 2 and turns each line that arrives there into a JSON record
(logger `grpc` for gRPC's own lines, at their level; `stderr` for anything else), so
the stream stays one JSON object per line. The faulthandler keeps writing straight to
the real stderr: a crash report must not wait for a thread.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import re
import sys
import threading
from typing import IO

from pythonjsonlogger.json import JsonFormatter

from ..api.calls import current_request_id

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
    returns the handler (tests read what it wrote). JSON on the process's own stderr
    captures what is written to descriptor 2 below Python (see capture_stderr)."""
    own = stream is None
    stream = stream if stream is not None else sys.stderr
    if format == "auto":
        format = "text" if stream.isatty() else "json"
    if own and format == "json":
        stream = capture_stderr()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter() if format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RequestId())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


# gRPC's (abseil's) line prefix: severity letter, MMDD, time, thread, file:line].
_GRPC_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [^\]]+\] ?(.*)$")
_GRPC_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}


_captured: tuple[IO[str], threading.Thread] | None = None


def capture_stderr() -> IO[str]:
    """Puts a pipe on file descriptor 2, read by a thread that logs each line as a
    record; returns a stream on the real stderr for the log handler itself."""
    global _captured
    sys.stderr.flush()
    real = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = os.fdopen(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    if faulthandler.is_enabled():
        faulthandler.enable(file=real)
    relay = threading.Thread(target=_relay, args=(read_end,), name="stderr-relay", daemon=True)
    relay.start()
    _captured = real, relay
    return real


def release_stderr() -> None:
    """Puts the real stderr back on descriptor 2 and lets the relay log what was still
    in the pipe (before the process exits: what is printed last must not be lost)."""
    global _captured
    if _captured is None:
        return
    real, relay = _captured
    _captured = None
    sys.stderr.flush()
    os.dup2(real.fileno(), 2)  # the pipe's only writer is gone: the relay reads its end
    relay.join(5)


def _relay(fd: int) -> None:
    grpc_log, other = logging.getLogger("grpc"), logging.getLogger("stderr")
    with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as lines:
        for line in lines:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            found = _GRPC_LINE.match(line)
            if found:
                grpc_log.log(_GRPC_LEVELS[found.group(1)], "%s", found.group(2) or line)
            else:
                other.warning("%s", line)
