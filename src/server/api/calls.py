"""What is kept of every call: its request id, its duration in the metrics, and its
line in the access log.

The request id is the client's `x-request-id` metadata (if it is at most 64 characters
of [A-Za-z0-9._:-]), or one generated here. It goes back in the call's trailers under the same
key, whatever the outcome, is set in `current_request_id` for the call's handler (so
every log line written during the call carries it, see server/ops/logs.py), and is kept
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
    from assigncore.engine import Engine

    from ..desk.runtime import Runtime
    from ..desk.tokens import Principal

current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "current_request_id", default=""
)
# Where the call being served came from (its address and, over mutual TLS, the client
# certificate's subject), read when the call began. A call's context must never be asked
# for its peer later: once the call has ended (a client that dropped its stream), gRPC
# core has freed the transport's peer string, and reading it crashes the process.
current_peer: contextvars.ContextVar[str] = contextvars.ContextVar("current_peer", default="")
# The principal of the call being served, and the runtime of the desk its token belongs
# to; set by the guard (server/api/auth.py) for the handler.
current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal")
current_runtime: contextvars.ContextVar[Runtime] = contextvars.ContextVar("runtime")

REQUEST_ID = "x-request-id"
MAX_REQUEST_ID = 64
_REQUEST_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")


def request_id_of(sent: str) -> str:
    """The client's request id if it is 1 to 64 characters of [A-Za-z0-9._:-] (it goes
    into logs and trailers as it is), else a new one."""
    if sent and len(sent) <= MAX_REQUEST_ID and _REQUEST_ID_CHARS.issuperset(sent):
        return sent
    return os.urandom(8).hex()


def peer_of(context: Any, client_certificates: bool) -> str:
    """Where a call comes from: its address and, when clients present certificates,
    the subject of the client's. Only while the call is live (see current_peer)."""
    peer = context.peer() or ""
    if client_certificates:
        subject = (context.auth_context() or {}).get("x509_subject")
        if subject:
            peer += f" ({subject[0].decode(errors='replace')})"
    return peer


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
    """Begins and ends every call the guard lets through (or refuses)."""

    def __init__(
        self, metrics: Any = None, access_log: str = "errors", client_certificates: bool = False
    ) -> None:
        self.metrics = metrics  # server.metrics.Metrics, or None: nothing measured
        self.log_all = access_log == "all"
        self.log_errors = access_log in ("all", "errors")
        self.client_certificates = client_certificates  # mutual TLS: subjects in the peer

    def begin(self, context: Any, rid: str) -> float:
        """The call's request id (`request_id_of` the client's) set and put in its
        trailers, and its peer read while the call is live; returns when the call
        began."""
        current_request_id.set(rid)
        current_peer.set(peer_of(context, self.client_certificates))
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
                self._log(level, method, code, seconds, principal)

    @staticmethod
    def _log(
        level: int,
        method: tuple[str, str, str],
        code: str,
        seconds: float,
        principal: Principal | None,
    ) -> None:
        fields: dict[str, Any] = {
            "method": f"{method[1]}/{method[2]}",
            "code": code,
            "duration_ms": round(seconds * 1000, 3),
            "peer": current_peer.get(),
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


class OnDesk:
    """A servicer's view of the desk its call is for: the runtime the guard found
    by the call's token, and that desk's engine (a new one after a rebuild)."""

    @property
    def rt(self) -> Runtime:
        return current_runtime.get()

    @property
    def engine(self) -> Engine:
        return self.rt.engine
