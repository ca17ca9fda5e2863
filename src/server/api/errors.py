"""The one table from domain errors to gRPC status codes, and the decorator every
handler goes through: a DomainError becomes its status (INVALID_ARGUMENT with
google.rpc.BadRequest field violations); anything unexpected becomes INTERNAL with a
generic message — never UNKNOWN, never a stack trace on the wire."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, json_format, text_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from assigncore.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)

from ..storage.journal import JournalError
from . import convert
from .calls import current_peer, current_principal, current_request_id

log = logging.getLogger("assigncore.server")

STATUS_OF: dict[type[DomainError], grpc.StatusCode] = {
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


# The last guard on what goes back to a client: messages and violations are clipped
# (domain messages already quote client input through errors.shown), so trailers stay
# far below grpc's metadata limit whatever a request held.
MAX_MESSAGE = 500
MAX_FIELD = 200
MAX_VIOLATIONS = 50


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def status_for(exc: DomainError) -> grpc.Status:
    return rpc_status.to_status(_proto(exc))


def _plain_proto(code: grpc.StatusCode, message: str) -> status_pb2.Status:
    return status_pb2.Status(code=getattr(code_pb2, code.name), message=message)


def _proto(exc: DomainError) -> status_pb2.Status:
    code = STATUS_OF.get(type(exc), grpc.StatusCode.FAILED_PRECONDITION)
    status = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=_clip(exc.message, MAX_MESSAGE)
    )
    if isinstance(exc, InvalidArgument):
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=_clip(f, MAX_FIELD), description=_clip(d, MAX_FIELD)
                )
                for f, d in exc.violations[:MAX_VIOLATIONS]
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad)
        status.details.append(detail)
    return status


def plain_status(code: grpc.StatusCode, message: str) -> grpc.Status:
    return rpc_status.to_status(_plain_proto(code, message))


def _info_proto(
    code: grpc.StatusCode, message: str, reason: str, metadata: dict[str, str]
) -> status_pb2.Status:
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.ErrorInfo(reason=reason, domain="assigncore.v1", metadata=metadata)
    )
    status.details.append(detail)
    return status


def info_status(
    code: grpc.StatusCode, message: str, reason: str, metadata: dict[str, str]
) -> grpc.Status:
    """A status with google.rpc.ErrorInfo: a machine-readable reason for clients."""
    return rpc_status.to_status(_info_proto(code, message, reason, metadata))


# ErrorInfo.reason of a call that reached a process that does not lead its desk (it
# stands by, or was deposed); metadata: "desk", "leader" (HOST:PORT of the leader, empty
# while a takeover is under way) and "epoch" (the leadership term that process knows).
NOT_LEADER = "NOT_LEADER"


def _not_leader_proto(metadata: dict[str, str]) -> status_pb2.Status:
    leader = metadata.get("leader", "")
    where = f"its leader is at {leader}" if leader else "a standby is taking it over; retry shortly"
    message = f"this server does not lead desk {metadata.get('desk', '')!r} now: {where}"
    return _info_proto(grpc.StatusCode.UNAVAILABLE, message, NOT_LEADER, metadata)


def not_leader_status(metadata: dict[str, str]) -> grpc.Status:
    """UNAVAILABLE with ErrorInfo(reason NOT_LEADER): retry at the leader's address."""
    return rpc_status.to_status(_not_leader_proto(metadata))


def unavailable(rt: Any) -> status_pb2.Status:
    """Why a call was refused for want of a writable journal: on PostgreSQL, this
    process no longer leads the desk (and who does); else the journal's failure."""
    if rt.ha:
        return _not_leader_proto(rt.not_leader())
    return _plain_proto(grpc.StatusCode.UNAVAILABLE, UNAVAILABLE)


async def abort(context: grpc.aio.ServicerContext, exc: DomainError) -> None:
    await abort_with(context, status_for(exc))


async def abort_with(context: Any, status: grpc.Status) -> None:
    """Ends the call with `status`, keeping the trailers set before it (the request
    id): `abort_with_status` would replace them."""
    kept = tuple(context.trailing_metadata() or ())
    await context.abort(status.code, status.details, kept + tuple(status.trailing_metadata))


UNAVAILABLE = (
    "the server cannot write its journal (is the disk full?); nothing of this call was "
    "kept; retry later"
)


def is_abort(exc: BaseException) -> bool:
    # context.abort() raises a private exception type; let it through untouched.
    return type(exc).__name__ == "AbortError"


def renamed(exc: InvalidArgument, fields: dict[str, str]) -> InvalidArgument:
    """The engine names fields by its own arguments (`settings.offer_timeout`); a client
    wants the request's path (`team.queue_settings.offer_timeout`). Each violation's
    field is rewritten by the longest matching prefix in `fields`."""

    def rename(field: str) -> str:
        for engine_name in sorted(fields, key=len, reverse=True):
            if field == engine_name or field.startswith((engine_name + ".", engine_name + "[")):
                return fields[engine_name] + field[len(engine_name) :]
        return field

    return InvalidArgument.of([(rename(f), d) for f, d in exc.violations])


async def invoke(
    method: Callable[..., Any],
    fields: dict[str, str] | None,
    servicer: Any,
    request: Any,
    context: Any,
    audited: bool = False,
) -> tuple[Any, status_pb2.Status | None]:
    """Runs a handler to its reply, made durable (write-ahead: nothing leaves before
    what it reflects is durable); or to the status it fails with. Used by unary calls
    and by actions on the console stream alike."""
    reply, status, wait = await apply(method, fields, servicer, request, context, audited)
    if wait:
        try:
            await servicer.rt.durable()
        except JournalError:
            return None, unavailable(servicer.rt)
    return reply, status


async def apply(
    method: Callable[..., Any],
    fields: dict[str, str] | None,
    servicer: Any,
    request: Any,
    context: Any,
    audited: bool = False,
) -> tuple[Any, status_pb2.Status | None, bool]:
    """Runs a handler to its reply or to the status it fails with, and says whether
    either must wait for durability before it leaves (`invoke` waits; the Intake stream
    waits for the journal position of its call, see Runtime.durable_point).

    What can be refused is refused before the handler runs (every Duration and
    Timestamp in range); an audited call's entry is encoded before too, and recorded
    with what the call did: nothing that can fail runs after a change was applied."""
    rt = servicer.rt
    status = None
    body = audit_body(request) if audited else ""
    applied = rt.applied
    try:
        if not rt.leading():
            raise JournalError("this desk is not served here now")
        convert.check_times(request)
        reply = await method(servicer, request, context)
        if audited:
            audit(servicer, method, body, None)
        return reply, None, True
    except JournalError:
        return None, unavailable(rt), False
    except InvalidArgument as exc:
        status = _proto(renamed(exc, fields) if fields else exc)
    except DomainError as exc:
        status = _proto(exc)
    except Exception as exc:
        if is_abort(exc):
            raise
        log.exception("internal error in %s", method.__qualname__)
        status = _plain_proto(grpc.StatusCode.INTERNAL, _internal(rt, applied))
    if audited:
        audit(servicer, method, body, status)
    # A refusal reads the desk as well: it waits for what it read to be durable, as a
    # reply does (a client must never hear of a state a crash could undo); unless a
    # command failed midway and the desk is being rebuilt.
    return None, status, not (rt.failed and status.code == code_pb2.INTERNAL)


def _internal(rt: Any, applied: int) -> str:
    """An internal error's message: whether the call changed the desk before it failed
    (a client must know before it retries)."""
    if rt.applied == applied:
        return "internal error; nothing of this call was applied"
    return (
        "internal error after this call's change was applied (it is kept); look at the "
        "desk before retrying"
    )


def audit_body(request: Any) -> str:
    """A request as the audit trail keeps it (JSON); never fails, so it can be made
    before a call applies anything."""
    try:
        return json_format.MessageToJson(
            request, indent=None, sort_keys=True, preserving_proto_field_name=True
        )
    except Exception:  # a value JSON has no form for: keep the text form instead
        return json.dumps({"text_format": text_format.MessageToString(request, as_one_line=True)})


def audit(servicer: Any, method: Any, body: str, status: status_pb2.Status | None) -> None:
    rt = servicer.rt
    if rt.failed:
        return
    rt.audit.add(
        rt.engine.now,
        current_principal.get(),
        f"/{servicer.SERVICE}/{method.__name__}",
        body,
        current_peer.get(),
        0 if status is None else status.code,
        "" if status is None else status.message,
        current_request_id.get(),
    )


def rpc(
    method: Callable[..., Any] | None = None,
    *,
    fields: dict[str, str] | None = None,
    audited: bool = False,
) -> Any:
    """For unary handlers: a DomainError becomes its status; with `fields`, violation
    paths are renamed to the request's (see `renamed`); `audited` calls go to the audit
    trail, whatever their outcome. The handler's `invoke` gives the reply or the status
    without ending a call (the console stream's actions)."""

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            reply, status = await invoke(method, fields, self, request, context, audited)
            if status is not None:
                await abort_with(context, rpc_status.to_status(status))
            return reply

        handler.invoke = functools.partial(invoke, method, fields)  # type: ignore[attr-defined]
        handler.apply = functools.partial(apply, method, fields)  # type: ignore[attr-defined]
        return handler

    return wrap(method) if method is not None else wrap
