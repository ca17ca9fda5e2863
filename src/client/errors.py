"""Typed errors: a gRPC status with its google.rpc details decoded.

Every failed call, and every failed action on a console stream, raises one of these.
The class says the status code (`NotFound`, `FailedPrecondition`, ...); the exception
carries the server's message and its details:

    try:
        await console.answer(offer_id)
    except FailedPrecondition as exc:   # the offer is no longer pending
        ...
    except InvalidArgument as exc:
        for field, why in exc.violations: ...

`NotLeader` (an `Unavailable`) is what a process that does not lead the desk answers;
the client follows its `leader` address by itself, so callers rarely see it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import any_pb2, message
from google.rpc import error_details_pb2, status_pb2

# ErrorInfo.domain of the server's own reasons.
DOMAIN = "assigncore.v1"
STATUS_DETAILS_KEY = "grpc-status-details-bin"

_DETAIL_TYPES: dict[str, type[message.Message]] = {
    cls.DESCRIPTOR.full_name: cls
    for cls in (
        error_details_pb2.BadRequest,
        error_details_pb2.ErrorInfo,
        error_details_pb2.RetryInfo,
        error_details_pb2.ResourceInfo,
        error_details_pb2.PreconditionFailure,
        error_details_pb2.QuotaFailure,
        error_details_pb2.RequestInfo,
        error_details_pb2.DebugInfo,
        error_details_pb2.Help,
        error_details_pb2.LocalizedMessage,
    )
}


def decode_details(details: Iterable[any_pb2.Any]) -> list[message.Message]:
    """Unpacks google.rpc detail messages; one of an unknown type stays an Any."""
    out: list[message.Message] = []
    for detail in details:
        cls = _DETAIL_TYPES.get(detail.TypeName())
        if cls is None:
            out.append(detail)
            continue
        decoded = cls()
        detail.Unpack(decoded)
        out.append(decoded)
    return out


class AssignCoreError(Exception):
    """A call or an action failed with `code`; `details` are the decoded google.rpc
    details (BadRequest, ErrorInfo, ...)."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        details: Iterable[message.Message] = (),
        *,
        code: grpc.StatusCode | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.details = list(details)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def detail(self, kind: type[Any]) -> Any | None:
        """The first detail of this type, if any."""
        return next((d for d in self.details if isinstance(d, kind)), None)

    @property
    def violations(self) -> list[tuple[str, str]]:
        """(field, description) of every google.rpc.BadRequest field violation."""
        bad = self.detail(error_details_pb2.BadRequest)
        return [] if bad is None else [(v.field, v.description) for v in bad.field_violations]

    @property
    def reason(self) -> str | None:
        """google.rpc.ErrorInfo.reason, if the status has one (CONSOLE_OUTBOX_OVERFLOW,
        NOT_LEADER, ...)."""
        info = self.detail(error_details_pb2.ErrorInfo)
        return None if info is None else info.reason

    @property
    def metadata(self) -> dict[str, str]:
        """google.rpc.ErrorInfo.metadata, if the status has one."""
        info = self.detail(error_details_pb2.ErrorInfo)
        return {} if info is None else dict(info.metadata)


class Cancelled(AssignCoreError):
    code = grpc.StatusCode.CANCELLED


class InvalidArgument(AssignCoreError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(AssignCoreError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(AssignCoreError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(AssignCoreError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(AssignCoreError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(AssignCoreError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(AssignCoreError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(AssignCoreError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(AssignCoreError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(AssignCoreError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(AssignCoreError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(AssignCoreError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(AssignCoreError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(AssignCoreError):
    code = grpc.StatusCode.UNAUTHENTICATED


class NotLeader(Unavailable):
    """The process called does not lead the desk; nothing of the call was applied.
    `leader` is the leader's HOST:PORT, or "" while a takeover is under way."""

    @property
    def leader(self) -> str:
        return self.metadata.get("leader", "")

    @property
    def desk(self) -> str:
        return self.metadata.get("desk", "")

    @property
    def epoch(self) -> int:
        try:
            return int(self.metadata.get("epoch", "0"))
        except ValueError:
            return 0


class OutcomeUnknown(Unavailable):
    """The connection dropped after an action was sent and before its result came: the
    server may or may not have applied it. The console reloads its sessions after
    reconnecting, so `Console.sessions` tells what happened."""


_BY_CODE: dict[grpc.StatusCode, type[AssignCoreError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}
_BY_VALUE: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def error_for(
    code: grpc.StatusCode, message: str, details: Iterable[message.Message] = ()
) -> AssignCoreError:
    """The typed exception of a status."""
    details = list(details)
    cls = _BY_CODE.get(code, AssignCoreError)
    if code is grpc.StatusCode.UNAVAILABLE:
        for d in details:
            if (
                isinstance(d, error_details_pb2.ErrorInfo)
                and d.reason == "NOT_LEADER"
                and d.domain == DOMAIN
            ):
                cls = NotLeader
    return cls(message, details, code=code)


def from_status(status: Any) -> AssignCoreError:
    """The typed exception of a google.rpc.Status (or the field-for-field equal
    ActionStatus of a console stream's action result)."""
    code = _BY_VALUE.get(status.code, grpc.StatusCode.UNKNOWN)
    return error_for(code, status.message, decode_details(status.details))


def from_rpc_error(exc: grpc.RpcError) -> AssignCoreError:
    """The typed exception of a failed gRPC call, its details read from the
    `grpc-status-details-bin` trailer."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    text = (exc.details() if hasattr(exc, "details") else None) or ""
    details: list[message.Message] = []
    trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except message.DecodeError:
                break
            details = decode_details(status.details)
            text = status.message or text
            break
    error = error_for(code, text, details)
    error.__cause__ = exc
    return error
