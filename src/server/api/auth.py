"""Access tokens, and the guard that checks every call on its headers, before its body is
read.

Tokens are random and stored only as SHA-256 hashes; a token id is random too and never
reused. The guard is the server's one generic handler (`Guard.service`): grpc.aio asks
it for a method's handler with the request headers alone, so that:

- a missing, unknown or revoked token is refused at once, with nothing read;
- a call that must be counted (everything with a token) has its request read by our
  code, under a deadline (`message_timeout`): a client that sends headers and half a
  message cannot hold a call, nor its budget, open. grpc.aio can end a call only from
  a handler that holds its context, and a unary handler gets it only once the whole
  request arrived, so these handlers are request-streaming (see `_wrap`);
- health Check, which needs no token and is never counted, stays a unary call: a
  half-sent Check holds nothing of ours, only its HTTP/2 stream, which grpc's own limits
  bound (`max_streams_per_connection` per connection, keepalive, `max_connection_age`
  plus its grace);
- the message is decoded by our code: bytes that are not a valid protobuf get
  INVALID_ARGUMENT ("malformed request"), never UNKNOWN with a traceback;
- in-flight calls are counted by class: authenticated calls share `max_concurrent_rpcs`,
  long-lived unauthenticated streams (health Watch, reflection) a small budget of their
  own, each rep at most a few console streams; a health Check is never refused.

Methods are served through this one generic handler and a dictionary lookup. grpc
1.85's aio accept loop waits on one pending request per registered method for every
incoming call (grpc/grpc PR #43461), so registering all 69 costs every call; but the
unregistered ones share one accept slot, taken one call per turn of that loop. The
ten hottest unary methods (HOT) are registered, each handler making the same checks
on its own call (`Guard.registered`)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from ..desk.tokens import Principal, PrincipalKind
from .calls import (
    REQUEST_ID,
    Calls,
    current_principal,
    current_request_id,
    current_runtime,
    method_names,
    request_id_of,
)
from .errors import UNAVAILABLE, not_leader_status

if TYPE_CHECKING:
    from ..desk.host import Host
    from ..desk.runtime import Runtime

HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = (
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)


# Which principals may call which service; services not listed need no token.
SERVICE_ACCESS = {
    "assigncore.v1.RepConsoleService": {PrincipalKind.REP},
    "assigncore.v1.IntakeService": {PrincipalKind.INTAKE, PrincipalKind.ADMIN},
    "assigncore.v1.AdminService": {PrincipalKind.ADMIN},
    "assigncore.v1.SupervisorService": {PrincipalKind.SUPERVISOR, PrincipalKind.ADMIN},
}
# Console streams: a rep holds a few at most; a quiet one is normal (see _wrap).
CONSOLE_STREAMS = {
    "/assigncore.v1.RepConsoleService/Subscribe",
    "/assigncore.v1.RepConsoleService/Connect",
}
# A portal's stream of calls may stay quiet from its start: no message of it is timed.
INTAKE_STREAM = "/assigncore.v1.IntakeService/Intake"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


# Unary methods a busy desk calls most: registered with grpc (see Guard.registered).
HOT = frozenset(
    {
        HEALTH_CHECK,
        "/assigncore.v1.IntakeService/StartSession",
        "/assigncore.v1.IntakeService/CancelSession",
        "/assigncore.v1.IntakeService/GetSessionStatus",
        "/assigncore.v1.RepConsoleService/AnswerOffer",
        "/assigncore.v1.RepConsoleService/AcceptSession",
        "/assigncore.v1.RepConsoleService/EndSession",
        "/assigncore.v1.RepConsoleService/GetNextSession",
        "/assigncore.v1.RepConsoleService/TransferSession",
        "/assigncore.v1.RepConsoleService/ReportPresence",
    }
)


@dataclass(frozen=True, slots=True)
class _Details:
    """A registered hot method's call, as the guard's `service` reads it."""

    method: str
    invocation_metadata: Any


class Routes:
    """Collects what the generated `add_*_to_server` functions register, so that the
    guard serves it: give it in their `server` argument."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}
        self.services: set[str] = set()
        self._generic: list[Any] = []

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.services.add(service)
        for name, handler in handlers.items():
            self.handlers[f"/{service}/{name}"] = handler

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        # The generated code gives each service both ways; the dictionary is kept.
        self._generic.extend(handlers)

    def check(self) -> None:
        """Every generic handler given is a service also given as registered methods
        (else a method would be served by nothing)."""
        for handler in self._generic:
            name = getattr(handler, "service_name", lambda: None)()
            if name not in self.services:
                raise ValueError(f"a generic handler for {name!r} has no method table")


@dataclass(frozen=True, slots=True)
class Limits:
    message_timeout: float = 10.0  # seconds a request message may take to arrive
    max_concurrent_rpcs: int = 20000  # authenticated calls in flight, streams included
    max_open_streams: int = 100  # health Watch and reflection streams (no token)
    streams_per_rep: int = 4  # console streams one rep may hold open at once


class Gate:
    """In-flight call counts by class; health Check is never counted or refused."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.authenticated = 0
        self.open_streams = 0
        self.rep_streams: dict[str, int] = {}

    def in_flight(self) -> int:
        return self.authenticated + self.open_streams


async def _refuse(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> Any:
    """Ends the call with `code` (context.abort raises; this never returns)."""
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


async def _read(
    requests: AsyncIterator[bytes],
    context: grpc.aio.ServicerContext,
    deserialize: Callable[[bytes], Any] | None,
    timeout: float | None,
    end: Any,
    raise_malformed: bool = False,
) -> Any:
    """The next request message, read under a deadline and decoded here, so that a
    half-sent or malformed body gets a clear status; `end` when the stream closes.
    With `raise_malformed`, bytes that are not the message raise MalformedRequest
    instead of ending the call (for a reader outside the handler's task, which must
    not abort the call itself)."""
    try:
        if timeout is None:
            raw = await anext(requests)
        else:
            # asyncio.timeout arms one timer on this task; wait_for would start a task
            # per call.
            async with asyncio.timeout(timeout):
                raw = await anext(requests)
    except TimeoutError:
        return await _refuse(
            context,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"the request message did not arrive within {timeout:g} s",
        )
    except StopAsyncIteration:
        return end
    if deserialize is None:
        return raw
    try:
        return deserialize(raw)
    except Exception:  # DecodeError and friends: the bytes are not this message
        if raise_malformed:
            raise MalformedRequest from None
        return await _refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "malformed request")


_END = object()


class MalformedRequest(Exception):
    """A console stream's later message is not a request (see _timed_messages)."""


async def _first_message(
    requests: AsyncIterator[bytes],
    context: grpc.aio.ServicerContext,
    deserialize: Callable[[bytes], Any] | None,
    timeout: float,
) -> Any:
    """The one message of a unary-request call."""
    message = await _read(requests, context, deserialize, timeout, _END)
    if message is _END:
        return await _refuse(
            context, grpc.StatusCode.INVALID_ARGUMENT, "malformed request: no message"
        )
    return message


async def _timed_messages(
    requests: AsyncIterator[bytes],
    context: grpc.aio.ServicerContext,
    deserialize: Callable[[bytes], Any] | None,
    timeout: float,
    first_only: bool = False,
    untimed: bool = False,
) -> AsyncIterator[Any]:
    """A request stream whose every message must arrive within `timeout` of the last;
    with `first_only`, only the first (a console stream is quiet while its rep is: it
    holds only its own slot of the rep's few); `untimed`, none (a portal's Intake
    stream). A message read without a deadline that is not a request raises
    MalformedRequest (such streams are read in a task of their own)."""
    first = True
    while True:
        later = untimed or (first_only and not first)
        first = False
        message = await _read(
            requests, context, deserialize, None if later else timeout, _END, later
        )
        if message is _END:
            return
        yield message


class Guard(grpc.GenericRpcHandler):
    """The server's one generic handler: checks the bearer token on the headers before
    anything else happens, bounds how long a request message may take, decodes it,
    counts the call against its budget, and makes the principal available to the
    handler through `current_principal`. Every call, refused or not, goes through
    `calls` (request id, metrics, access log)."""

    def __init__(
        self,
        host: Host,
        routes: Routes,
        limits: Limits | None = None,
        calls: Calls | None = None,
    ):
        routes.check()
        self.host = host  # the desks: each call's runtime is found by its token
        self.routes = routes.handlers
        self.gate = Gate(limits or Limits())
        self.calls = calls or Calls(access_log="off")
        self._names = {
            method: method_names(method, h.request_streaming, h.response_streaming)
            for method, h in self.routes.items()
        }
        check = self.routes.get(HEALTH_CHECK)
        self._check = None if check is None else self._unary(check, self._names[HEALTH_CHECK])

    def registered(self) -> dict[str, dict[str, grpc.RpcMethodHandler]]:
        """The hot unary methods (HOT), by service, to register with grpc: each handler
        checks its own call (`service` on its headers, as the guard does for the rest).
        grpc accepts calls of each registered method on a slot of its own, where all
        other methods share one, so a desk's busiest calls are accepted in parallel."""
        out: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        for method in sorted(HOT & self.routes.keys()):
            _, service, name = method.split("/")
            out.setdefault(service, {})[name] = self._self_checked(method)
        return out

    def _self_checked(self, method: str) -> grpc.RpcMethodHandler:
        if method == HEALTH_CHECK:
            return self._check  # type: ignore[return-value]
        inner = self.routes[method]
        assert not inner.request_streaming and not inner.response_streaming, method
        service = self.service

        async def checked(requests: AsyncIterator[bytes], context: Any) -> Any:
            handler = service(_Details(method, context.invocation_metadata()))
            return await handler.stream_unary(requests, context)

        return grpc.stream_unary_rpc_method_handler(
            checked, request_deserializer=None, response_serializer=inner.response_serializer
        )

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        method = details.method
        handler = self.routes.get(method)
        if handler is None:
            return None  # grpc answers UNIMPLEMENTED
        names = self._names[method]
        authorization = rid = ""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                authorization = value if isinstance(value, str) else ""
            elif key == REQUEST_ID and isinstance(value, str):
                rid = value
        # The call's own task resolves its handler and then runs it: what is set here
        # is the handler's.
        rid = request_id_of(rid)
        current_request_id.set(rid)
        if method == HEALTH_CHECK:
            return self._check
        call = (names, rid)
        allowed = SERVICE_ACCESS.get(names[1])
        if allowed is None:  # health and reflection: no token; streams share a budget
            counted = handler.response_streaming
            return self._wrap(handler, call, None, console=False, counted=counted)
        found = None
        if authorization[:7].lower() == "bearer ":
            found = self.host.find(authorization[7:].strip())
        if found is None:
            if not self.host.loaded():  # the token may be of a desk still loading
                return self._refusal(
                    handler,
                    call,
                    grpc.StatusCode.UNAVAILABLE,
                    "the server is loading its desk; retry shortly",
                )
            return self._refusal(
                handler,
                call,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing, unknown, expired or revoked access token",
            )
        runtime, principal = found
        if not runtime.leading():
            if runtime.ha:
                return self._refusal(handler, call, status=not_leader_status(runtime.not_leader()))
            return self._refusal(handler, call, grpc.StatusCode.UNAVAILABLE, UNAVAILABLE)
        if principal.kind not in allowed:
            return self._refusal(
                handler,
                call,
                grpc.StatusCode.PERMISSION_DENIED,
                f"a {principal.kind.value.lower()} token may not call {names[1]}",
            )
        console = method in CONSOLE_STREAMS
        untimed = method == INTAKE_STREAM
        return self._wrap(
            handler, call, principal, console=console, counted=True, rt=runtime, untimed=untimed
        )

    # ------------------------------------------------------------- budgets

    def _admit(self, principal: Principal | None, console: bool, counted: bool) -> str | None:
        """None if admitted (and counted), else why not."""
        gate, limits = self.gate, self.gate.limits
        if principal is None:
            if not counted:
                return None
            if gate.open_streams >= limits.max_open_streams:
                return "too many open streams without a token; try again later"
            gate.open_streams += 1
            return None
        if gate.authenticated >= limits.max_concurrent_rpcs:
            return "the server is at its limit of concurrent calls; try again later"
        if console:
            held = gate.rep_streams.get(principal.rep_id, 0)
            if held >= limits.streams_per_rep:
                return f"at most {limits.streams_per_rep} console streams per rep"
            gate.rep_streams[principal.rep_id] = held + 1
        gate.authenticated += 1
        return None

    def _release(self, principal: Principal | None, console: bool, counted: bool) -> None:
        gate = self.gate
        if principal is None:
            gate.open_streams -= counted
            return
        gate.authenticated -= 1
        if console:
            left = gate.rep_streams[principal.rep_id] - 1
            if left:
                gate.rep_streams[principal.rep_id] = left
            else:
                del gate.rep_streams[principal.rep_id]

    # ------------------------------------------------------------- handlers

    def _wrap(
        self,
        handler: grpc.RpcMethodHandler,
        call: tuple[tuple[str, str, str], str],
        principal: Principal | None,
        console: bool,
        counted: bool,
        rt: Runtime | None = None,
        untimed: bool = False,
    ) -> grpc.RpcMethodHandler:
        timeout = self.gate.limits.message_timeout
        deserialize = handler.request_deserializer
        # Console streams write their messages encoded already (server/api/wire.py).
        serialize = None if console else handler.response_serializer
        admit, release = self._admit, self._release
        begin, end = self.calls.begin, self.calls.end
        names, rid = call

        unary_in = not handler.request_streaming

        async def enter(requests: AsyncIterator[bytes], context: Any) -> Any:
            """Admits the call, then reads its request (or wraps its request stream)."""
            refused = admit(principal, console, counted)
            if refused is not None:
                await _refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
            if principal is not None:
                current_principal.set(principal)
                current_runtime.set(rt)  # type: ignore[arg-type]
            try:
                if unary_in:
                    return await _first_message(requests, context, deserialize, timeout)
                return _timed_messages(requests, context, deserialize, timeout, console, untimed)
            except BaseException:
                release(principal, console, counted)
                raise

        inner_stream = handler.unary_stream or handler.stream_stream
        if not handler.response_streaming or inspect.iscoroutinefunction(inner_stream):
            # A unary response, or responses written with context.write (health Watch):
            # the handler is a coroutine, awaited whole.
            inner = handler.unary_unary or handler.stream_unary or inner_stream

            async def awaited(requests: AsyncIterator[bytes], context: Any) -> Any:
                began = begin(context, rid)
                error = None
                try:
                    request = await enter(requests, context)
                    try:
                        return await inner(request, context)
                    finally:
                        release(principal, console, counted)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    end(names, principal, context, error, began)

            make = (
                grpc.stream_stream_rpc_method_handler
                if handler.response_streaming
                else grpc.stream_unary_rpc_method_handler
            )
            return make(awaited, request_deserializer=None, response_serializer=serialize)

        async def stream_stream(requests: AsyncIterator[bytes], context: Any) -> Any:
            began = begin(context, rid)
            error = None
            try:
                request = await enter(requests, context)
                try:
                    async for response in inner_stream(request, context):
                        yield response
                finally:
                    release(principal, console, counted)
            except BaseException as exc:
                error = exc
                raise
            finally:
                end(names, principal, context, error, began)

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, request_deserializer=None, response_serializer=serialize
        )

    def _unary(
        self, handler: grpc.RpcMethodHandler, names: tuple[str, str, str]
    ) -> grpc.RpcMethodHandler:
        """A unary call that needs no token and is never counted (health Check), kept
        unary: grpc reads its request, and it is decoded here (bytes that are not the
        message get INVALID_ARGUMENT)."""
        inner, deserialize = handler.unary_unary, handler.request_deserializer
        begin, end = self.calls.begin, self.calls.end

        async def unary(raw: bytes, context: Any) -> Any:
            began = begin(context, current_request_id.get())
            error = None
            try:
                try:
                    request = deserialize(raw)
                except Exception:  # DecodeError and friends
                    return await _refuse(
                        context, grpc.StatusCode.INVALID_ARGUMENT, "malformed request"
                    )
                return await inner(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                end(names, None, context, error, began)

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=None, response_serializer=handler.response_serializer
        )

    def _refusal(
        self,
        handler: grpc.RpcMethodHandler,
        call: tuple[tuple[str, str, str], str],
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        message: str = "",
        status: grpc.Status | None = None,
    ) -> grpc.RpcMethodHandler:
        """A handler that ends the call with `code` (or `status`, with its details)
        without reading its message."""
        begin, end = self.calls.begin, self.calls.end
        names, rid = call

        async def refuse(requests: Any, context: Any) -> Any:
            began = begin(context, rid)
            try:
                if status is not None:
                    await context.abort(status.code, status.details, status.trailing_metadata)
                await _refuse(context, code, message)
            finally:
                end(names, None, context, None, began)

        if handler.response_streaming:

            async def refuse_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
                await refuse(requests, context)
                yield  # pragma: no cover - abort raised

            return grpc.stream_stream_rpc_method_handler(refuse_stream)
        return grpc.stream_unary_rpc_method_handler(refuse)
