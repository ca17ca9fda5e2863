"""A desk as the server holds it, and the journal entries that rebuild it.

A desk is its engine, its reps' console feeds (sequence numbers and buffers), its access
tokens and its intake idempotency entries. Every change to any of them is a command
record (assigncore.records): the engine's commands by their own names, the others by the
names below. A journal entry is the records of one turn of the event loop, as one
canonical JSON list: they become durable together (an intake call's session and its
idempotency entry are never split by a crash).

Replaying the entries in order on the desk their first record creates gives the same
desk: the same state, and every console event with the same number. A snapshot (`dump`)
is the desk at a journal position: the engine's state (assigncore.snapshot) and the rest
as plain data.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import pickle
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, astuple
from typing import Any

from google.protobuf import descriptor_pool, message_factory

from assigncore import snapshot
from assigncore.engine import Engine, EngineConfig
from assigncore.errors import InvalidArgument
from assigncore.records import CommandRecord, RecordError, decode_many, encode
from assigncore.v1 import console_service_pb2 as cpb

from ..config import Settings
from ..ops.audit import AuditEntry, AuditTrail
from ..storage.base import JournalError, Store
from .hub import Feed, Hub, Numbered
from .tokens import Principal, PrincipalKind, TokenRecord, TokenStore

log = logging.getLogger("assigncore.server")

# Records of the server's own state (the rest are engine commands).
DESK_CREATED = "server.desk_created"  # (secret hex, engine config): the first record
# (id, sha-256 hex, kind, rep id, description[, team ids, expiry or None])
TOKEN_ISSUED = "server.token_issued"
TOKEN_REVOKED = "server.token_revoked"  # (id,)
IDEMPOTENT = "server.idempotent"  # (portal, request id, fingerprint hex, type, body base64)
FEED_OPENED = "server.feed_opened"  # (rep id,): a rep's first console stream
TOKEN_EXPIRES = "server.token_expires"  # (id, time): a rotated token's overlap
AUDITED = "server.audited"  # an AuditEntry's fields, in order (server/ops/audit.py)

SNAPSHOT_FORMAT = b"assigncore-desk/2\n"


IDEMPOTENCY_CAPACITY = 100_000


MAX_REQUEST_ID = 64  # characters of an idempotency key


class Idempotency:
    """request_id -> (fingerprint of the request, result), for retried intake calls."""

    def __init__(self, ttl: float, clock: Any) -> None:
        self.ttl, self.clock = ttl, clock
        self.entries: OrderedDict[tuple[str, str], tuple[bytes, float, Any]] = OrderedDict()
        # Told of every entry stored (the journal's input), never of a replayed one.
        self.on_store: Callable[..., None] | None = None

    def _expire(self) -> None:
        now = self.clock()
        while self.entries and (
            len(self.entries) > IDEMPOTENCY_CAPACITY
            or next(iter(self.entries.values()))[1] + self.ttl < now
        ):
            self.entries.popitem(last=False)

    def lookup(self, key: tuple[str, str], request: Any) -> Any:
        """The stored result of an earlier call with this (portal, request_id), or None."""
        request_id = key[1]
        if not request_id or len(request_id) > MAX_REQUEST_ID:
            raise InvalidArgument("request_id", f"required, at most {MAX_REQUEST_ID} characters")
        self._expire()
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry[0] != self._fingerprint(request):
            raise InvalidArgument("request_id", "already used for a different request")
        return entry[2]

    def store(self, key: tuple[str, str], request: Any, result: Any) -> None:
        self.put(key, self._fingerprint(request), self.clock(), result)
        if self.on_store is not None:
            self.on_store(key, *self.entries[key])

    def put(self, key: tuple[str, str], fingerprint: bytes, time: float, result: Any) -> None:
        """Adds an entry as it was recorded (a replay)."""
        self.entries[key] = (fingerprint, time, result)

    @staticmethod
    def _fingerprint(request: Any) -> bytes:
        return hashlib.sha256(request.SerializeToString(deterministic=True)).digest()


def encode_entry(bodies: Iterable[bytes]) -> bytes:
    """Encoded records (records.encode) as one journal entry."""
    return b"[" + b",".join(bodies) + b"]"


class _PlainOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise snapshot.SnapshotError(f"a desk snapshot holds plain data only, not {name}")


class Desk:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.hub = Hub(engine, settings.event_buffer, settings.outbox_limit)
        engine.state.listener = self.hub.on_event
        engine.on_settled = self.hub.settle
        self.tokens = TokenStore(settings.clock)
        self.tokens.on_revoke = lambda record: self.hub.end_token(record.token_id)
        self.idempotency = Idempotency(settings.idempotency_ttl, settings.clock)
        self.audit = AuditTrail()

    @classmethod
    def create(cls, settings: Settings, secret: bytes, start: float) -> tuple[Desk, CommandRecord]:
        """A new, empty desk, and the record that creates it again."""
        record = CommandRecord(DESK_CREATED, start, (secret.hex(), asdict(settings.engine)))
        return cls._from_record(record, settings), record

    @classmethod
    def _from_record(cls, record: CommandRecord, settings: Settings) -> Desk:
        secret, config = record.args
        engine = Engine(
            settings.clock, EngineConfig(**config), secret=bytes.fromhex(secret), start=record.time
        )
        return cls(engine, settings)

    # ------------------------------------------------------------- recording

    def record_to(self, sink: Callable[[bytes], None] | None) -> None:
        """From now on every change is passed to `sink` as an encoded record (None: no
        longer recorded)."""
        if sink is None:
            self.engine.on_command = None
            self.tokens.on_change = self.idempotency.on_store = self.hub.on_feed = None
            self.audit.on_add = None
            return
        clock = self.engine.state

        def put(command: str, *args: Any) -> None:
            sink(encode(CommandRecord(command, clock.now, args)))

        def token(change: str, what: Any) -> None:
            if change == "revoked":
                put(TOKEN_REVOKED, what)
            elif change == "expires":
                put(TOKEN_EXPIRES, *what)
            else:
                p = what.principal
                put(
                    TOKEN_ISSUED,
                    what.token_id,
                    what.digest.hex(),
                    p.kind.value,
                    p.rep_id,
                    what.description,
                    sorted(p.teams),
                    what.expires,
                )

        def idempotent(key: tuple[str, str], fingerprint: bytes, time: float, result: Any) -> None:
            put(
                IDEMPOTENT,
                key[0],
                key[1],
                fingerprint.hex(),
                result.DESCRIPTOR.full_name,
                base64.b64encode(result.SerializeToString(deterministic=True)).decode(),
            )

        self.engine.on_command = lambda record: sink(encode(record))
        self.tokens.on_change = token
        self.idempotency.on_store = idempotent
        self.hub.on_feed = lambda rep_id: put(FEED_OPENED, rep_id)
        self.audit.on_add = lambda entry: put(AUDITED, *astuple(entry))

    def count_to(self, count: Callable[[], None]) -> None:
        """Without storage: every change is only counted (`count()`), never encoded."""
        self.engine.on_command = lambda record: count()
        self.tokens.on_change = lambda change, what: count()
        self.idempotency.on_store = lambda *entry: count()
        self.hub.on_feed = lambda rep_id: count()
        self.audit.on_add = lambda entry: count()

    # ------------------------------------------------------------- replaying

    def apply(self, record: CommandRecord) -> None:
        name, args = record.command, record.args
        if not name.startswith("server."):
            self.engine.apply(record)
        elif name == TOKEN_ISSUED:
            token_id, digest, kind, rep_id, description, *more = args
            teams = more[0] if more else []  # records written before supervisors had none
            expires = more[1] if len(more) > 1 else None
            principal = Principal(PrincipalKind(kind), rep_id, token_id, frozenset(teams))
            self.tokens.put(
                TokenRecord(
                    token_id, bytes.fromhex(digest), principal, description, record.time, expires
                )
            )
        elif name == TOKEN_EXPIRES:
            self.tokens.set_expiry(*args)
        elif name == AUDITED:
            self.audit.put(AuditEntry(*args))
        elif name == TOKEN_REVOKED:
            self.tokens.revoke(args[0])
        elif name == IDEMPOTENT:
            portal, request_id, fingerprint, type_name, body = args
            cls = message_factory.GetMessageClass(
                descriptor_pool.Default().FindMessageTypeByName(type_name)
            )
            result = cls.FromString(base64.b64decode(body, validate=True))
            self.idempotency.put(
                (portal, request_id), bytes.fromhex(fingerprint), record.time, result
            )
        elif name == FEED_OPENED:
            self.hub.feed(args[0])
        else:
            raise RecordError(f"{name!r} is not a record this server knows")

    # ------------------------------------------------------------- snapshots

    def dump(self) -> bytes:
        """The desk as bytes: the engine's state and the rest as plain data."""
        engine = snapshot.dump(self.engine.state)
        rest = {
            "tokens": [
                (
                    r.token_id,
                    r.digest,
                    r.principal.kind.value,
                    r.principal.rep_id,
                    r.description,
                    r.created,
                    sorted(r.principal.teams),
                    r.expires,
                )
                for r in self.tokens.records()
            ],
            "audit": self.audit.dump(),
            "idempotency": [
                (
                    portal,
                    request_id,
                    fingerprint,
                    time,
                    result.DESCRIPTOR.full_name,
                    result.SerializeToString(deterministic=True),
                )
                for (portal, request_id), (
                    fingerprint,
                    time,
                    result,
                ) in self.idempotency.entries.items()
            ],
            "feeds": [
                (rep_id, f.seq, [m.data for m in f.buffer]) for rep_id, f in self.hub.feeds.items()
            ],
        }
        plain = pickle.dumps(rest, 5)
        return b"".join((SNAPSHOT_FORMAT, struct.pack(">Q", len(plain)), plain, engine))

    @classmethod
    def restore(cls, data: bytes, settings: Settings) -> Desk:
        head = len(SNAPSHOT_FORMAT)
        if data[:head] != SNAPSHOT_FORMAT or len(data) < head + 8:
            raise snapshot.SnapshotError("not an assigncore desk snapshot")
        (size,) = struct.unpack(">Q", data[head : head + 8])
        state = snapshot.restore(data, head + 8 + size)
        try:
            rest = _PlainOnly(io.BytesIO(data[head + 8 : head + 8 + size])).load()
        except snapshot.SnapshotError:
            raise
        except Exception as exc:
            raise snapshot.SnapshotError(f"unreadable desk snapshot: {exc}") from None
        desk = cls(Engine.restored(settings.clock, state), settings)
        for token_id, digest, kind, rep_id, description, created, *more in rest["tokens"]:
            teams, expires = more if more else ([], None)
            principal = Principal(PrincipalKind(kind), rep_id, token_id, frozenset(teams))
            desk.tokens.put(TokenRecord(token_id, digest, principal, description, created, expires))
        for fields_ in rest.get("audit", []):
            desk.audit.put(AuditEntry(*fields_))
        pool = descriptor_pool.Default()
        for portal, request_id, fingerprint, stored, type_name, body in rest["idempotency"]:
            result = message_factory.GetMessageClass(pool.FindMessageTypeByName(type_name))
            desk.idempotency.put((portal, request_id), fingerprint, stored, result.FromString(body))
        for rep_id, seq, buffer in rest["feeds"]:
            f = desk.hub.feeds[rep_id] = Feed(desk.hub.buffer_size)
            f.seq = f.released = seq
            f.buffer.extend(
                Numbered(cpb.SubscribeResponse.FromString(m).sequence, m) for m in buffer
            )
        return desk


PROGRESS_FROM = 10_000  # journal entries to replay from which a start logs its progress


def load(store: Store, settings: Settings) -> tuple[Desk | None, int]:
    """The desk in `store` (its newest valid snapshot, then the journal after it) and
    the journal position it reflects; (None, 0) for an empty store."""
    with snapshot.no_gc():
        return _load(store, settings)


def _load(store: Store, settings: Settings) -> tuple[Desk | None, int]:
    desk, position = None, 0
    started = time.perf_counter()
    for position, data in store.valid_snapshots():
        try:
            desk = Desk.restore(data, settings)
            del data
            break
        except Exception as exc:  # an older snapshot, or the journal alone, may do
            log.warning(
                "snapshot %d of %s cannot be restored (%s); trying an older one",
                position,
                store.name,
                exc,
            )
            desk, position = None, 0
    if desk is not None:
        log.info(
            "restored the snapshot at journal position %d in %.1f s",
            position,
            time.perf_counter() - started,
        )
    started, replayed = time.perf_counter(), 0
    total = max(0, store.last_record() - position)
    step, next_report = max(1, total // 10), 0
    if total >= PROGRESS_FROM:
        log.info("replaying %d journal entries after position %d", total, position)
        next_report = min(step, total)
    for at, body in store.records(after=position):
        replayed += 1
        if replayed == next_report:
            log.info(
                "replayed %d of %d journal entries (%d%%)",
                replayed,
                total,
                100 * replayed // total,
            )
            next_report = min(next_report + step, total)
        desk = replay(desk, at, body, settings, store)
        position = at
    if replayed:
        log.info("replayed %d journal entries in %.1f s", replayed, time.perf_counter() - started)
    return desk, position


def replay(desk: Desk | None, at: int, body: bytes, settings: Settings, store: Store) -> Desk:
    """Applies the journal entry at position `at` to `desk` (None: the entry must be the
    desk's creation) and returns the desk. Whatever goes wrong is a JournalError naming
    the position and the command that shows it."""
    try:
        entry = decode_many(body)
        if desk is None:
            if not entry or entry[0].command != DESK_CREATED:
                raise RecordError(
                    "the journal does not start with the desk's creation (was it "
                    "compacted, and its snapshots lost?)"
                )
            desk = Desk._from_record(entry[0], settings)
            entry = entry[1:]
        for record in entry:
            desk.apply(record)
    except Exception as exc:  # whatever it is, the start stops with the position
        raise JournalError(
            f"journal record {at} of {store.name} cannot be replayed "
            f"({type(exc).__name__}: {exc}); inspect it with "
            f"`{store.inspect} --from {at}`",
            at,
        ) from None
    return desk
