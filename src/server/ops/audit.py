"""The audit trail: every call of AdminService and SupervisorService that changes
something (who, what, when, from where, how it ended), kept in the journal as the
desk's own records (server/desk/durable.py, AUDITED) and so in snapshots too.

The most recent AUDIT_CAPACITY entries are held for ListAuditEntries; the journal
keeps all of them until compaction drops records older than its snapshots.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import astuple, dataclass
from typing import Any

from assigncore.v1 import admin_service_pb2 as apb

from ..api import convert
from ..desk.tokens import Principal

AUDIT_CAPACITY = 100_000


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    time: float
    token_id: str
    kind: str  # PrincipalKind's value
    rep_id: str
    method: str
    request_json: str
    peer: str
    code: int  # google.rpc.Code
    message: str
    request_id: str


class AuditTrail:
    def __init__(self) -> None:
        self.entries: deque[AuditEntry] = deque(maxlen=AUDIT_CAPACITY)
        self.seq = 0
        # Told of every entry added (the journal's input), never of a replayed one.
        self.on_add: Callable[[AuditEntry], None] | None = None

    def add(
        self,
        time: float,
        principal: Principal,
        method: str,
        body: str,
        peer: str,
        code: int,
        message: str,
        request_id: str,
    ) -> AuditEntry:
        entry = AuditEntry(
            self.seq + 1,
            time,
            principal.token_id,
            principal.kind.value,
            principal.rep_id,
            method,
            body,
            peer,
            code,
            message,
            request_id,
        )
        self.put(entry)
        if self.on_add is not None:
            self.on_add(entry)
        return entry

    def put(self, entry: AuditEntry) -> None:
        """Adds an entry as it was recorded (a replay, a snapshot)."""
        self.entries.append(entry)
        self.seq = entry.seq

    def after(self, seq: int) -> Iterator[AuditEntry]:
        """The entries held after `seq`, oldest first."""
        entries = self.entries
        start = bisect.bisect_right(entries, seq, key=lambda e: e.seq) if entries else 0
        for i in range(start, len(entries)):
            yield entries[i]

    def dump(self) -> list[tuple[Any, ...]]:
        return [astuple(e) for e in self.entries]


def entry_out(e: AuditEntry) -> apb.AuditEntry:
    return apb.AuditEntry(
        seq=e.seq,
        time=convert.timestamp(e.time),
        token_id=e.token_id,
        kind=apb.PrincipalKind.Value("PRINCIPAL_KIND_" + e.kind),
        rep_id=e.rep_id,
        method=e.method,
        request_json=e.request_json,
        peer=e.peer,
        code=e.code,
        message=e.message,
        request_id=e.request_id,
    )
