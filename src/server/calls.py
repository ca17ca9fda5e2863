"""What is kept of every call: its request id, its duration in the metrics, and its
line in the access log.

The request id is the client's `x-request-id` metadata (printable ASCII, clipped to 128
characters), or one generated here. It goes back in the call's trailers under the same
key, whatever the outcome, is set in `current_request_id` for the call's handler (so
every log line written during the call carries it, see server/logs.py), and is kept
with the call's audit entry.

The access log (logger `assigncore.access`) has one line per call: method, status
code, duration, request id, peer and the caller's token id (and rep, for a rep's
token); never a request's contents nor a status message (they may quote what a
customer typed). `access_log = "errors"` keeps the calls that did not end OK (those
with a server-side code at WARNING); "all" every call; "off" none.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from .auth import Principal

current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "current_request_id", default=""
)

REQUEST_ID = "x-request-id"
MAX_REQUEST_ID = 128

access = logging.getLogger("assigncore.access")

# Codes that say the server failed, not the caller.
SERVER_SIDE = frozenset({"INTERNAL", "UNKNOWN", "UNAVAILABLE", "DATA_LOSS", "UNIMPLEMENTED"})


def code_of(error: BaseException | None, context: Any) -> str:
    """The status a call ended with: what the context was aborted with or set to; a
    call that was cancelled (the client left) is CANCELLED."""
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    code = context.code()
    if code is None:
        return "OK" if error is None else "UNKNOWN"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


def method_names(
    full: str, request_streaming: bool, response_streaming: bool
) -> tuple[str, str, str]:
    """(grpc_type, service, method) of "/pkg.Service/Method", as the metrics label
    them."""
    kind = {
        (False, False): "unary",
        (False, True): "server_stream",
        (True, False): "client_stream",
        (True, True): "bidi_stream",
    }[request_streaming, response_streaming]
    _, service, method = (["", "", ""] + full.split("/"))[-3:]
    return kind, service, method


class Calls:
    """Begins and ends every call the interceptor lets through (or refuses)."""

    def __init__(self, metrics: Any = None, access_log: str = "errors") -> None:
        self.metrics = metrics  # server.metrics.Metrics, or None: nothing measured
        self.log_all = access_log == "all"
        self.log_errors = access_log in ("all", "errors")

    @staticmethod
    def begin(context: Any, sent: str) -> float:
        """The call's request id (the client's, or a new one) set and put in its
        trailers; returns when the call began."""
        rid = sent[:MAX_REQUEST_ID] if sent else os.urandom(8).hex()
        current_request_id.set(rid)
        context.set_trailing_metadata(((REQUEST_ID, rid),))
        return time.perf_counter()

    def end(
        self,
        method: tuple[str, str, str],
        principal: Principal | None,
        context: Any,
        error: BaseException | None,
        began: float,
    ) -> None:
        code = code_of(error, context)
        seconds = time.perf_counter() - began
        if self.metrics is not None:
            self.metrics.rpc_done(method, code, seconds)
        if self.log_all or (self.log_errors and code != "OK"):
            level = logging.WARNING if code in SERVER_SIDE else logging.INFO
            if access.isEnabledFor(level):
                self._log(level, method, code, seconds, principal, context)

    @staticmethod
    def _log(
        level: int,
        method: tuple[str, str, str],
        code: str,
        seconds: float,
        principal: Principal | None,
        context: Any,
    ) -> None:
        fields: dict[str, Any] = {
            "method": f"{method[1]}/{method[2]}",
            "code": code,
            "duration_ms": round(seconds * 1000, 3),
            "peer": context.peer() or "",
        }
        if principal is not None:
            fields["principal"] = principal.kind.value
            fields["token_id"] = principal.token_id
            if principal.rep_id:
                fields["rep_id"] = principal.rep_id
        access.log(
            level,
            "%s %s %.1f ms request_id=%s",
            fields["method"],
            code,
            seconds * 1000,
            current_request_id.get(),
            extra=fields,
        )
