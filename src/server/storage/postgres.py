"""A desk's journal, snapshots and lease in PostgreSQL (psycopg 3): the storage that lets
a standby on another machine take a desk over (DESIGN.md 4.3).

Every desk is a row of `assigncore.desks`: its lease (holder, address, expiry), the epoch
of the current leadership term, and the last journal position. Records and snapshot
chunks are rows keyed by (desk, position), so one database holds any number of desks.

Fencing, as Temporal conditions every write of a history shard on its `range_id`: an
append is one statement that raises the desk's `last_position` only where the epoch is
the appender's, its lease has not run out and the journal ends where the appender thinks
it ends, and inserts the records only if that row was updated. A deposed leader (a
takeover raised the epoch), a paused one (its lease ran out) or one that lost track of
the journal writes nothing, whatever it believes. A takeover is an UPDATE of the same row,
so it waits for an append in flight and sees everything committed before it.

The lease is a row with an expiry rather than an advisory lock on a connection: an
advisory lock is released the moment its connection drops, so a standby could take over
while the old leader, not yet aware, still answers from its memory; an expiry lets the
leader stop serving on its own clock before anyone else may start (DESIGN.md 4.3).
Expiries are computed by the database's clock (`now()`), never by the processes'.

The server migrates the schema itself: `MIGRATIONS` are applied in order, each once,
in one transaction under an advisory lock; a database whose schema is newer than this
server knows is refused (an older server never writes to a newer schema).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from . import base
from .base import CHUNK, KEEP_SNAPSHOTS, Fenced, JournalError, StorageError

log = logging.getLogger("assigncore.storage")

SCHEMA = "assigncore"
CHANNEL = "assigncore_journal"  # NOTIFY payload: "<desk> <last position>"
CONNECT_TIMEOUT = 5  # seconds
STATEMENT_TIMEOUT_MS = 10_000  # no statement holds a connection longer
READ_PAGE = 2000  # records per catch-up query

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
CREATE TABLE assigncore.desks (
    desk text PRIMARY KEY,
    epoch bigint NOT NULL DEFAULT 0,
    holder text NOT NULL DEFAULT '',
    address text NOT NULL DEFAULT '',
    lease_expires timestamptz NOT NULL DEFAULT '-infinity',
    last_position bigint NOT NULL DEFAULT 0,
    created timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE assigncore.records (
    desk text NOT NULL,
    position bigint NOT NULL,
    epoch bigint NOT NULL,
    checksum bigint NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (desk, position)
);
CREATE TABLE assigncore.snapshots (
    desk text NOT NULL,
    position bigint NOT NULL,
    size bigint NOT NULL,
    checksum bigint NOT NULL,
    chunks integer NOT NULL,
    complete boolean NOT NULL DEFAULT false,
    written timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (desk, position)
);
CREATE TABLE assigncore.snapshot_chunks (
    desk text NOT NULL,
    position bigint NOT NULL,
    idx integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (desk, position, idx)
);
CREATE TABLE assigncore.standbys (
    desk text NOT NULL,
    holder text NOT NULL,
    address text NOT NULL,
    position bigint NOT NULL,
    seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (desk, holder)
);
CREATE FUNCTION assigncore.notify_append() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('assigncore_journal', NEW.desk || ' ' || NEW.last_position);
    RETURN NEW;
END $$;
CREATE TRIGGER desks_appended AFTER UPDATE OF last_position ON assigncore.desks
    FOR EACH ROW WHEN (OLD.last_position IS DISTINCT FROM NEW.last_position)
    EXECUTE FUNCTION assigncore.notify_append();
""",
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def is_url(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://..."
    host = info.get("host", "localhost")
    return f"postgresql://{info.get('user', '')}@{host}/{info.get('dbname', '')}"


def connect(url: str, name: str = "") -> psycopg.Connection[Any]:
    """A connection (autocommit) with the server's timeouts, named `assigncore <name>`
    in pg_stat_activity; StorageError if the database cannot be reached."""
    try:
        conn = psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            application_name=f"assigncore {name}".strip()[:63],
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
        )
    except psycopg.Error as exc:
        raise StorageError(f"cannot connect to {redact(url)}: {_first_line(exc)}") from None
    return conn


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def schema_version(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT to_regclass('assigncore.schema_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    found = conn.execute("SELECT max(version) FROM assigncore.schema_version").fetchone()
    return int(found[0] or 0) if found else 0


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Brings the schema to SCHEMA_VERSION (each migration once, in order, in one
    transaction, under an advisory lock so two servers starting together do not race).
    Returns the version; StorageError if the database's schema is newer than known."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('assigncore.migrate'))")
        conn.execute("CREATE SCHEMA IF NOT EXISTS assigncore")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS assigncore.schema_version (version integer PRIMARY KEY,"
            " applied timestamptz NOT NULL DEFAULT now(), by text NOT NULL)"
        )
        current = schema_version(conn)
        if current > SCHEMA_VERSION:
            raise StorageError(
                f"the database's assigncore schema is version {current}, newer than this "
                f"server knows ({SCHEMA_VERSION}); upgrade assigncore"
            )
        for version, sql in MIGRATIONS:
            if version > current:
                conn.execute(sql.encode())
                conn.execute(
                    "INSERT INTO assigncore.schema_version (version, by) VALUES (%s, %s)",
                    (version, "assigncore " + _version()),
                )
                log.info("database schema migrated to version %d", version)
    return SCHEMA_VERSION


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("assigncore")
    except metadata.PackageNotFoundError:
        return "unknown"


def new_holder() -> str:
    """This process's name in leases: host, pid and a random part (never reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(slots=True)
class LeaseInfo:
    desk: str
    epoch: int
    holder: str
    address: str
    expires_in: float  # seconds from now by the database's clock (< 0: lapsed)
    last_position: int
    standbys: list[tuple[str, str, int, float]]  # holder, address, position, seen ago


class PgStore(base.Store):
    """A desk's rows in PostgreSQL. Opening it migrates the schema and makes sure the
    desk's row exists; `journal` appends only under the epoch it is given (`fence`)."""

    def __init__(self, url: str, desk: str, writer: bool = True, holder: str = "") -> None:
        self.url, self.desk, self.holder = url, desk, holder
        self.name = f"desk {desk!r} in {redact(url)}"
        self.inspect = f"assigncore journal --desk {desk}"
        self._lock = threading.Lock()  # the reader connection, between threads
        self._conn = connect(url, holder)
        try:
            migrate(self._conn)
            self._conn.execute(
                "INSERT INTO assigncore.desks (desk) VALUES (%s) ON CONFLICT DO NOTHING", (desk,)
            )
            self.existed = self.last_record() > 0 or bool(self.snapshots())
            self.journal: PgJournal = (
                PgJournal(url, desk, self.last_record(), holder) if writer else None  # type: ignore[assignment]
            )
        except BaseException:
            self._conn.close()
            raise

    def _query(self, sql: str, args: Any = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except psycopg.OperationalError:
                # A dropped connection: one new one, one more try.
                self._conn.close()
                self._conn = connect(self.url, self.holder)
                return self._conn.execute(sql, args).fetchall()

    def records(self, after: int = 0, until: int | None = None) -> Iterator[tuple[int, bytes]]:
        last = self.last_record() if until is None else until
        while after < last:
            rows = self._query(
                "SELECT position, checksum, body FROM assigncore.records WHERE desk = %s "
                "AND position > %s AND position <= %s ORDER BY position LIMIT %s",
                (self.desk, after, last, READ_PAGE),
            )
            if not rows:
                return
            for position, checksum, body in rows:
                body = bytes(body)
                if zlib.crc32(body) != checksum:
                    raise base.corrupt(self.name, position, self.inspect)
                yield position, body
                after = position

    def last_record(self) -> int:
        rows = self._query(
            "SELECT last_position FROM assigncore.desks WHERE desk = %s", (self.desk,)
        )
        return int(rows[0][0]) if rows else 0

    def snapshots(self) -> list[tuple[int, int, bool]]:
        return [
            (int(p), int(size), bool(done))
            for p, size, done in self._query(
                "SELECT position, size, complete FROM assigncore.snapshots WHERE desk = %s "
                "ORDER BY position DESC",
                (self.desk,),
            )
        ]

    def read_snapshot(self, position: int) -> bytes:
        rows = self._query(
            "SELECT size, checksum, chunks, complete FROM assigncore.snapshots "
            "WHERE desk = %s AND position = %s",
            (self.desk, position),
        )
        if not rows or not rows[0][3]:
            raise JournalError(f"snapshot {position} is incomplete", position)
        size, checksum, chunks, _ = rows[0]
        parts = [
            bytes(d)
            for (d,) in self._query(
                "SELECT data FROM assigncore.snapshot_chunks WHERE desk = %s AND position = %s "
                "ORDER BY idx",
                (self.desk, position),
            )
        ]
        return base.check_chunks(parts, chunks, size, checksum, position)

    def write_snapshot(self, position: int, data: bytes) -> None:
        """Chunk by chunk, each its own transaction, marked complete last; then the
        KEEP_SNAPSHOTS newest are kept and the records none of them needs deleted."""
        conn = connect(self.url, self.holder)
        try:
            chunks = max(1, -(-len(data) // CHUNK))
            with conn.transaction():
                conn.execute(
                    "DELETE FROM assigncore.snapshot_chunks WHERE desk = %s AND position = %s",
                    (self.desk, position),
                )
                conn.execute(
                    "INSERT INTO assigncore.snapshots (desk, position, size, checksum, chunks) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (desk, position) DO UPDATE SET "
                    "size = EXCLUDED.size, checksum = EXCLUDED.checksum, "
                    "chunks = EXCLUDED.chunks, complete = false, written = now()",
                    (self.desk, position, len(data), zlib.crc32(data), chunks),
                )
            view = memoryview(data)
            for i in range(chunks):
                conn.execute(
                    "INSERT INTO assigncore.snapshot_chunks (desk, position, idx, data) "
                    "VALUES (%s, %s, %s, %s)",
                    (self.desk, position, i, bytes(view[i * CHUNK : (i + 1) * CHUNK])),
                )
            conn.execute(
                "UPDATE assigncore.snapshots SET complete = true WHERE desk = %s AND position = %s",
                (self.desk, position),
            )
            self._prune(conn)
        finally:
            conn.close()

    def _prune(self, conn: psycopg.Connection[Any]) -> None:
        kept = [
            int(p)
            for (p,) in conn.execute(
                "SELECT position FROM assigncore.snapshots WHERE desk = %s AND complete "
                "ORDER BY position DESC LIMIT %s",
                (self.desk, KEEP_SNAPSHOTS),
            ).fetchall()
        ]
        if len(kept) < KEEP_SNAPSHOTS:
            return
        oldest = kept[-1]
        with conn.transaction():
            conn.execute(
                "DELETE FROM assigncore.snapshot_chunks WHERE desk = %s AND position < %s",
                (self.desk, oldest),
            )
            conn.execute(
                "DELETE FROM assigncore.snapshots WHERE desk = %s AND position < %s",
                (self.desk, oldest),
            )
            conn.execute(
                "DELETE FROM assigncore.records WHERE desk = %s AND position <= %s",
                (self.desk, oldest),
            )

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
        with self._lock:
            self._conn.close()


APPEND = """
WITH lease AS (
    UPDATE assigncore.desks SET last_position = %(last)s
    WHERE desk = %(desk)s AND epoch = %(epoch)s AND lease_expires > now()
        AND last_position = %(prev)s
    RETURNING 1)
INSERT INTO assigncore.records (desk, position, epoch, checksum, body)
SELECT %(desk)s, p, %(epoch)s, c, b
FROM unnest(%(positions)s::bigint[], %(checksums)s::bigint[], %(bodies)s::bytea[]) AS t(p, c, b)
WHERE EXISTS (SELECT 1 FROM lease)
"""


class PgJournal(base.Journal):
    """Group commit into PostgreSQL: one statement per batch (its own transaction), so a
    batch costs one round trip and one commit. Appends carry the epoch set by `fence`;
    until one is set (a standby), every append is refused."""

    def __init__(self, url: str, desk: str, last_position: int, holder: str = "") -> None:
        self.url, self.desk, self.holder = url, desk, holder
        self.epoch = 0  # the leadership term this process appends under (0: none)
        self._conn: psycopg.Connection[Any] | None = connect(url, holder)
        super().__init__(last_position)

    def fence(self, epoch: int, last_position: int) -> None:
        """From now on appends go under `epoch`, after `last_position` (a takeover, once
        the journal was read to its end). Call before reset()."""
        self.epoch, self.last_position = epoch, last_position

    def _store(self, rows: list[base.Row]) -> None:
        if self.epoch == 0:
            raise Fenced("this process does not lead the desk")
        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self.url, self.holder)
            cursor = self._conn.execute(
                APPEND,
                {
                    "desk": self.desk,
                    "epoch": self.epoch,
                    "prev": rows[0][0] - 1,
                    "last": rows[-1][0],
                    "positions": [r[0] for r in rows],
                    "checksums": [r[1] for r in rows],
                    "bodies": [r[2] for r in rows],
                },
            )
            written = cursor.rowcount
        except (psycopg.Error, StorageError) as exc:
            if self._conn is not None and not self._conn.closed:
                with contextlib.suppress(psycopg.Error):
                    self._conn.close()
            self._conn = None
            raise JournalError(
                f"the journal cannot be written ({_first_line(exc)}); whether the last "
                "batch was recorded is known only once the desk is read again"
            ) from None
        if written != len(rows):
            raise Fenced(self._why_fenced())

    def _why_fenced(self) -> str:
        try:
            assert self._conn is not None
            row = self._conn.execute(
                "SELECT epoch, holder, lease_expires > now(), last_position "
                "FROM assigncore.desks WHERE desk = %s",
                (self.desk,),
            ).fetchone()
        except psycopg.Error:
            row = None
        if row is None:
            return "the append was refused: this process no longer leads the desk"
        epoch, holder, live, last = row
        if epoch != self.epoch:
            return f"deposed: epoch {epoch} (of {holder}) superseded this leader's {self.epoch}"
        if not live:
            return f"the lease of epoch {epoch} ran out before this append"
        return f"the journal ends at {last}, not where this leader thought ({self.last_position})"

    def close(self) -> None:
        self._stop_writer()
        if self._conn is not None:
            self._conn.close()


# ----------------------------------------------------------------- leases


def acquire(
    conn: psycopg.Connection[Any], desk: str, holder: str, address: str, ttl: float
) -> tuple[int, int] | None:
    """Takes the desk's lease if it has lapsed (or was released): a new epoch. Returns
    (epoch, last position) or None if another process holds it."""
    row = conn.execute(
        "UPDATE assigncore.desks SET epoch = epoch + 1, holder = %s, address = %s, "
        "lease_expires = now() + make_interval(secs => %s) "
        "WHERE desk = %s AND lease_expires <= now() RETURNING epoch, last_position",
        (holder, address, ttl, desk),
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else None


def renew(conn: psycopg.Connection[Any], desk: str, epoch: int, ttl: float) -> bool:
    """Extends the lease of `epoch` by `ttl` from now (the database's now); False if that
    epoch no longer holds it (deposed) or it ran out (then it may be taken: never
    extended)."""
    row = conn.execute(
        "UPDATE assigncore.desks SET lease_expires = now() + make_interval(secs => %s) "
        "WHERE desk = %s AND epoch = %s AND lease_expires > now() RETURNING 1",
        (ttl, desk, epoch),
    ).fetchone()
    return row is not None


def release(conn: psycopg.Connection[Any], desk: str, epoch: int) -> None:
    """Gives the lease up at once (a clean stop, a step-down): a standby need not wait
    for it to run out."""
    conn.execute(
        "UPDATE assigncore.desks SET lease_expires = now() WHERE desk = %s AND epoch = %s",
        (desk, epoch),
    )


def report_standby(
    conn: psycopg.Connection[Any], desk: str, holder: str, address: str, position: int
) -> None:
    conn.execute(
        "INSERT INTO assigncore.standbys (desk, holder, address, position) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT (desk, holder) DO UPDATE SET "
        "address = EXCLUDED.address, position = EXCLUDED.position, seen = now()",
        (desk, holder, address, position),
    )


def forget_standby(conn: psycopg.Connection[Any], desk: str, holder: str) -> None:
    conn.execute("DELETE FROM assigncore.standbys WHERE desk = %s AND holder = %s", (desk, holder))


STANDBY_FORGOTTEN = 60.0  # seconds: a standby not seen for this long is not listed


def lease_info(conn: Any, desk: str) -> LeaseInfo:
    row = conn.execute(
        "SELECT epoch, holder, address, "
        "extract(epoch FROM lease_expires - now())::float8, last_position "
        "FROM assigncore.desks WHERE desk = %s",
        (desk,),
    ).fetchone()
    if row is None:
        return LeaseInfo(desk, 0, "", "", float("-inf"), 0, [])
    epoch, holder, address, expires_in, last = row
    standbys = [
        (h, a, int(p), float(ago))
        for h, a, p, ago in conn.execute(
            "SELECT holder, address, position, extract(epoch FROM now() - seen)::float8 "
            "FROM assigncore.standbys WHERE desk = %s AND seen > now() - make_interval("
            "secs => %s) ORDER BY holder",
            (desk, STANDBY_FORGOTTEN),
        ).fetchall()
    ]
    expires = float(expires_in) if expires_in is not None else float("-inf")
    return LeaseInfo(desk, int(epoch), holder, address, expires, int(last), standbys)


def desks(conn: psycopg.Connection[Any]) -> list[str]:
    if schema_version(conn) == 0:
        return []
    return [d for (d,) in conn.execute("SELECT desk FROM assigncore.desks ORDER BY desk")]
