"""Typed domain errors. A command that raises one of these has changed nothing.

The server maps each class to one gRPC status code (see src/server); the engine never
knows about gRPC.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base class; `message` is safe to show to the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(DomainError):
    def __init__(self, kind: str, ident: str, message: str | None = None) -> None:
        super().__init__(message or f"{kind} {ident!r} not found")
        self.kind = kind
        self.ident = ident


class AlreadyExists(DomainError):
    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident!r} already exists")
        self.kind = kind
        self.ident = ident


class InvalidArgument(DomainError):
    """Carries (field, description) violations, like google.rpc.BadRequest: every one a
    request has, when the checks were collected (see validation.Checks)."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.violations: list[tuple[str, str]] = [(field, description)]

    @classmethod
    def of(cls, violations: list[tuple[str, str]]) -> InvalidArgument:
        exc = cls(*violations[0])
        exc.violations = list(violations)
        if len(violations) > 1:
            exc.message = f"{len(violations)} invalid fields: " + "; ".join(
                f"{field}: {description}" for field, description in violations[:5]
            )
            exc.args = (exc.message,)
        return exc


class FailedPrecondition(DomainError):
    pass


class PermissionDenied(DomainError):
    pass


class ResourceExhausted(DomainError):
    pass
