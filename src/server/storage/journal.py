"""The command journal: an append-only log of records in one SQLite file per desk.

SQLite runs in WAL mode with `synchronous=FULL`, so a committed transaction survives a
power cut. One writer thread owns the connection and makes many records durable per
commit (group commit): appends queue up while it writes, and it takes all of them in the
next transaction. `append()` returns a future that resolves, in append order, to the
record's position once it is durable; callers release replies and events only then.

Every record carries a CRC-32 of its body. SQLite commits a transaction whole, so a
crash never leaves half a record: a bad checksum is damage wherever it is, the last
record included, and stops the read with an error that names the position and the
command that shows it; nothing is silently dropped. When the disk is full or the file
unwritable, the appends of that transaction fail, and so does every append after them
until `reset()`: a record may never land behind one that was lost, since it may depend
on it. The caller refuses the commands (nothing is half-applied), rebuilds its state
from what is durable, and resets; appends succeed again once space returns.

The same file holds the desk's snapshots (server/storage/files.py), in their own tables.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import zlib
from collections.abc import Iterator

from . import base
from .base import JournalError

log = logging.getLogger("assigncore.journal")

BUSY_TIMEOUT_MS = 10_000  # another process (a snapshot, a backup) may hold the lock


def create_schema(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS records ("
        "position INTEGER PRIMARY KEY, checksum INTEGER NOT NULL, body BLOB NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE IF NOT EXISTS snapshots (position INTEGER PRIMARY KEY, "
        "size INTEGER NOT NULL, checksum INTEGER NOT NULL, chunks INTEGER NOT NULL, "
        "complete INTEGER NOT NULL DEFAULT 0, written REAL NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE IF NOT EXISTS snapshot_chunks (position INTEGER NOT NULL, "
        "idx INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (position, idx))"
    )


class Journal(base.Journal):
    """The SQLite journal: WAL, synchronous FULL, one writer connection."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        # The -wal file is bounded: checkpointed every WAL_PAGES pages, and cut back to
        # WAL_LIMIT bytes after each checkpoint (SQLite's default lets it grow to 4 MB
        # and keeps it at its largest: on a small volume that alone filled the disk).
        self._conn.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
        self._conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
        self._reserve = Reserve(path + RESERVE)
        self._reserve.release()  # room for the checkpoint below, on a full volume
        self._truncate_wal()
        create_schema(self._conn)
        last = self._last_position()
        known = read_mark(path)
        if known is not None and known > last:
            self._conn.close()
            raise JournalError(
                f"the journal of {path} ends at position {last}, but this "
                f"desk had made position {known} durable ({path}{MARK}): its -wal file is "
                "damaged or was lost, and SQLite stopped reading it there. Nothing was "
                f"changed; restore a backup with `assigncore restore --path {path} BACKUP`",
                last + 1,
            )
        self._reserve.make()
        # The last durable position, kept outside the database (see MARK).
        self._mark = os.open(path + MARK, os.O_WRONLY | os.O_CREAT, 0o644)
        self._put_mark(last)
        super().__init__(last)

    def _last_position(self) -> int:
        """The last position. SQLite commits a batch whole, so a record whose checksum
        is bad is damage, last or not: it stops the start, never silently dropped (its
        change was acknowledged, and its position would be handed out again)."""
        row = self._conn.execute(
            "SELECT position, checksum, body FROM records ORDER BY position DESC LIMIT 1"
        ).fetchone()
        if row is None:  # empty, or compacted up to its newest snapshot
            snap = self._conn.execute("SELECT MAX(position) FROM snapshots").fetchone()[0]
            return int(snap or 0)
        position, checksum, body = row
        if zlib.crc32(bytes(body)) != checksum:
            raise corrupt(self.path, int(position))
        return int(position)

    # ------------------------------------------------------------- writing

    def _store(self, rows: list[base.Row]) -> None:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                "INSERT INTO records (position, checksum, body) VALUES (?, ?, ?)", rows
            )
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise JournalError(f"the journal cannot be written: {exc}") from None

    def _after_failure(self, error: JournalError) -> None:
        if self._reserve.release():  # room to checkpoint and go on, once rebuilt
            log.warning("journal: released the reserve file (%s) for recovery", error)

    def _after_commit(self, position: int) -> None:
        self._put_mark(position)
        if not self._reserve.held:
            self._reserve.make()  # space came back: hold the reserve again

    def _before_reset(self) -> None:
        self._truncate_wal()  # space back from the -wal before writing again

    # ------------------------------------------------------------- reading

    def records(self, after: int = 0) -> Iterator[tuple[int, bytes]]:
        """(position, body) of every record after `after`, in order; a bad checksum
        anywhere raises JournalError."""
        return read_records(self.path, after)

    def _truncate_wal(self) -> None:
        """Checkpoints the -wal file into the database and truncates it (best effort: a
        reader may hold it, or the disk may be too full; the next one tries again)."""
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("journal: the -wal file could not be checkpointed (%s)", exc)

    def _put_mark(self, position: int) -> None:
        """After the commit that made `position` durable (so the mark is never ahead of
        the journal; if this write is lost in a crash, the mark only lags)."""
        with contextlib.suppress(OSError):  # a full disk: the next commit tries again
            os.pwrite(self._mark, b"%020d\n" % position, 0)

    def close(self) -> None:
        self._stop_writer()
        self._conn.close()
        os.close(self._mark)


def connect(path: str) -> sqlite3.Connection:
    """A connection of another reader or writer of a desk's file (WAL: readers never
    wait for the server's writer)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn


# Beside the desk file: the last position its journal made durable. SQLite ends WAL
# recovery at the first bad frame without an error; a journal that ends before this mark
# lost durable records, and the start stops instead of serving without them.
MARK = ".durable"


WAL_PAGES = 256  # pages (1 MiB): the -wal file is checkpointed at this size
WAL_LIMIT = 1 << 20  # bytes the -wal file is cut back to after a checkpoint
# Beside the desk file: space held back so that a full volume can still checkpoint its
# -wal file and serve again (released when a write fails for want of space).
RESERVE = ".reserve"
RESERVE_BYTES = 1 << 20


class Reserve:
    def __init__(self, path: str) -> None:
        self.path = path
        self.held = os.path.exists(path)

    def make(self) -> None:
        """Takes the reserve: min(1 MiB, an eighth of the volume), best effort."""
        try:
            stat = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
            size = min(RESERVE_BYTES, stat.f_frsize * stat.f_blocks // 8)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)
            self.held = True
        except OSError:  # no space for it now: try again after the next commit
            self.release()

    def release(self) -> bool:
        """Frees the reserve's space; whether there was one."""
        try:
            os.remove(self.path)
        except FileNotFoundError:
            self.held = False
            return False
        self.held = False
        return True


def read_mark(path: str) -> int | None:
    try:
        with open(path + MARK, "rb") as mark:
            text = mark.read(64).strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def write_mark(path: str, position: int) -> None:
    with open(path + MARK, "wb") as mark:
        mark.write(b"%020d\n" % position)


def corrupt(path: str, position: int) -> JournalError:
    return base.corrupt(path, position, f"assigncore journal --path {path}")


def last_position(path: str) -> int:
    """The position of the last record in the file at `path` (0: none)."""
    reader = connect(path)
    try:
        return int(reader.execute("SELECT MAX(position) FROM records").fetchone()[0] or 0)
    finally:
        reader.close()


def read_records(
    path: str, after: int = 0, until: int | None = None
) -> Iterator[tuple[int, bytes]]:
    """(position, body) of the records of the file at `path` after `after` (up to
    `until`), in order; see Journal.records."""
    reader = connect(path)
    try:
        last = reader.execute("SELECT MAX(position) FROM records").fetchone()[0] or 0
        cursor = reader.execute(
            "SELECT position, checksum, body FROM records "
            "WHERE position > ? AND position <= ? ORDER BY position",
            (after, last if until is None else min(last, until)),
        )
        for position, checksum, body in cursor:
            body = bytes(body)
            if zlib.crc32(body) != checksum:
                raise corrupt(path, position)
            yield position, body
    finally:
        reader.close()
