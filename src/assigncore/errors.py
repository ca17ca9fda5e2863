"""Typed domain errors. A command that raises one of these has changed nothing.

The server maps each class to one gRPC status code (see src/server); the engine never
knows about gRPC.
"""

from __future__ import annotations

SHOWN_LIMIT = 40


_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:@-/ ")


def shown(value: object, limit: int = SHOWN_LIMIT) -> str:
    """Client input as it may appear in a message: quoted, at most `limit` characters of
    it, and only letters, digits and ._:@-/ (anything else is '?'), so an error never
    echoes much, nor markup or control characters, whatever a request held."""
    text = value if isinstance(value, str) else repr(value)
    clean = "".join(ch if ch in _SAFE else "?" for ch in text[:limit])
    return f"'{clean}{'...' if len(text) > limit else ''}'"


class DomainError(Exception):
    """Base class; `message` is safe to show to the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(DomainError):
    def __init__(self, kind: str, ident: str, message: str | None = None) -> None:
        super().__init__(message or f"{kind} {shown(ident)} not found")
        self.kind = kind
        self.ident = ident


class AlreadyExists(DomainError):
    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {shown(ident)} already exists")
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
