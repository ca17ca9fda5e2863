"""Access tokens and the interceptor that turns `authorization: Bearer <token>` into a
principal. Tokens are random and stored only as SHA-256 hashes."""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import grpc


class PrincipalKind(Enum):
    REP = "REP"
    INTAKE = "INTAKE"
    ADMIN = "ADMIN"


@dataclass(frozen=True, slots=True)
class Principal:
    kind: PrincipalKind
    rep_id: str = ""


@dataclass(slots=True)
class TokenRecord:
    token_id: str
    digest: bytes
    principal: Principal
    description: str
    created: float


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class TokenStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._by_digest: dict[bytes, TokenRecord] = {}
        self._by_id: dict[str, TokenRecord] = {}
        self._clock = clock
        self._next = 0

    def add(self, secret: str, principal: Principal, description: str = "") -> TokenRecord:
        self._next += 1
        record = TokenRecord(
            f"tok-{self._next}", _digest(secret), principal, description, self._clock()
        )
        self._by_digest[record.digest] = record
        self._by_id[record.token_id] = record
        return record

    def issue(self, principal: Principal, description: str = "") -> tuple[TokenRecord, str]:
        secret = secrets.token_urlsafe(32)
        return self.add(secret, principal, description), secret

    def revoke(self, token_id: str) -> bool:
        record = self._by_id.pop(token_id, None)
        if record is None:
            return False
        del self._by_digest[record.digest]
        return True

    def revoke_rep(self, rep_id: str) -> None:
        for record in [r for r in self._by_id.values() if r.principal.rep_id == rep_id]:
            self.revoke(record.token_id)

    def records(self) -> list[TokenRecord]:
        return sorted(self._by_id.values(), key=lambda r: int(r.token_id.split("-")[1]))

    def principal(self, secret: str) -> Principal | None:
        record = self._by_digest.get(_digest(secret))
        # The dict lookup is on a hash of the secret, so its timing reveals nothing
        # useful; compare_digest keeps the final check constant-time all the same.
        if record is None or not hmac.compare_digest(record.digest, _digest(secret)):
            return None
        return record.principal


# The principal of the call being served; set by AuthInterceptor for the handler.
current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal")

# Which principals may call which service; services not listed need no token.
SERVICE_ACCESS = {
    "assigncore.v1.RepConsoleService": {PrincipalKind.REP},
    "assigncore.v1.IntakeService": {PrincipalKind.INTAKE, PrincipalKind.ADMIN},
    "assigncore.v1.AdminService": {PrincipalKind.ADMIN},
}


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks the bearer token before any handler of a protected service runs, and makes
    the principal available to it through `current_principal`."""

    def __init__(self, tokens: TokenStore) -> None:
        self.tokens = tokens

    async def intercept_service(
        self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        service = details.method.rsplit("/", 2)[-2] if details.method.count("/") >= 2 else ""
        allowed = SERVICE_ACCESS.get(service)
        if handler is None or allowed is None:
            return handler
        metadata = dict(details.invocation_metadata or ())
        header = metadata.get("authorization", "")
        principal = None
        if isinstance(header, str) and header[:7].lower() == "bearer ":
            principal = self.tokens.principal(header[7:].strip())

        async def refuse(context: grpc.aio.ServicerContext) -> None:
            if principal is None:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED, "missing, unknown or revoked access token"
                )
            else:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"a {principal.kind.value.lower()} token may not call {service}",
                )

        ok = principal is not None and principal.kind in allowed
        return _wrap(handler, principal if ok else None, refuse)


def _wrap(
    handler: grpc.RpcMethodHandler,
    principal: Principal | None,
    refuse: Callable[[grpc.aio.ServicerContext], Any],
) -> grpc.RpcMethodHandler:
    if handler.unary_unary:
        inner = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if principal is None:
                await refuse(context)
            current_principal.set(principal)  # type: ignore[arg-type]
            return await inner(request, context)

        return handler._replace(unary_unary=unary_unary)
    if handler.unary_stream:
        inner_stream = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if principal is None:
                await refuse(context)
            current_principal.set(principal)  # type: ignore[arg-type]
            async for response in inner_stream(request, context):
                yield response

        return handler._replace(unary_stream=unary_stream)
    return handler  # no client-streaming RPCs in this API
