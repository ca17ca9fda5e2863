"""Access tokens: random secrets stored only as SHA-256 hashes, each naming a principal
(a rep, a portal, an admin or a supervisor). A token id is random too and never reused.
The store is part of a desk (its changes are journal records); the guard that asks
it on every call is server/api/auth.py."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any


class PrincipalKind(Enum):
    REP = "REP"
    INTAKE = "INTAKE"
    ADMIN = "ADMIN"
    SUPERVISOR = "SUPERVISOR"


@dataclass(frozen=True, slots=True)
class Principal:
    kind: PrincipalKind
    rep_id: str = ""  # a rep's token; a supervisor's own rep, if it has one
    token_id: str = ""  # the token it came from: streams opened with it end when revoked
    teams: frozenset[str] = frozenset()  # a supervisor's scope


@dataclass(slots=True)
class TokenRecord:
    token_id: str
    digest: bytes
    principal: Principal
    description: str
    created: float
    expires: float | None = None  # not accepted from then on


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_token_id() -> str:
    return "tok_" + secrets.token_hex(12)  # 96 random bits


class TokenStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._by_digest: dict[bytes, TokenRecord] = {}
        self._by_id: dict[str, TokenRecord] = {}  # in order of issue
        # Secrets presented before, to their principal: a call costs one dictionary hit.
        # Only valid secrets enter (so it holds at most one per token); any revocation
        # empties it.
        self._seen: dict[str, TokenRecord] = {}
        self._clock = clock
        # Called with the revoked record, so open streams opened with it can be ended.
        self.on_revoke: Callable[[TokenRecord], None] | None = None
        # Told of every change (the journal's input): ("issued", record) or ("revoked",
        # token id); never of a replayed one.
        self.on_change: Callable[[str, Any], None] | None = None

    def add(
        self,
        secret: str,
        principal: Principal,
        description: str = "",
        expires: float | None = None,
    ) -> TokenRecord:
        token_id = new_token_id()
        while token_id in self._by_id:  # pragma: no cover - 96 random bits
            token_id = new_token_id()
        principal = Principal(principal.kind, principal.rep_id, token_id, principal.teams)
        record = TokenRecord(
            token_id, _digest(secret), principal, description, self._clock(), expires
        )
        self.put(record)
        if self.on_change is not None:
            self.on_change("issued", record)
        return record

    def put(self, record: TokenRecord) -> None:
        """Adds an issued token as it was recorded (a replay)."""
        self._by_digest[record.digest] = record
        self._by_id[record.token_id] = record

    def has_secret(self, secret: str) -> bool:
        return _digest(secret) in self._by_digest

    def issue(
        self, principal: Principal, description: str = "", expires: float | None = None
    ) -> tuple[TokenRecord, str]:
        secret = secrets.token_urlsafe(32)
        return self.add(secret, principal, description, expires), secret

    def get(self, token_id: str) -> TokenRecord | None:
        return self._by_id.get(token_id)

    def set_expiry(self, token_id: str, expires: float) -> None:
        """A token is accepted until `expires` only (a rotation's overlap)."""
        record = self._by_id[token_id]
        record.expires = expires if record.expires is None else min(record.expires, expires)
        if self.on_change is not None:
            self.on_change("expires", (token_id, record.expires))

    def revoke(self, token_id: str) -> bool:
        record = self._by_id.pop(token_id, None)
        if record is None:
            return False
        del self._by_digest[record.digest]
        self._seen.clear()
        if self.on_change is not None:
            self.on_change("revoked", token_id)
        if self.on_revoke is not None:
            self.on_revoke(record)
        return True

    def revoke_rep(self, rep_id: str) -> None:
        for record in [r for r in self._by_id.values() if r.principal.rep_id == rep_id]:
            self.revoke(record.token_id)

    def records(self) -> list[TokenRecord]:
        return list(self._by_id.values())

    def principal(self, secret: str) -> Principal | None:
        record = self._seen.get(secret)
        if record is None:
            # The lookup is keyed by a SHA-256 of the secret: its timing says nothing
            # useful about the secrets that exist.
            record = self._by_digest.get(_digest(secret))
            if record is None:
                return None
            self._seen[secret] = record
        if record.expires is not None and self._clock() >= record.expires:
            return None
        return record.principal
