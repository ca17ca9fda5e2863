"""A desk's file: its journal (server/storage/journal.py) and its snapshots, in one SQLite file.

A snapshot is stored in chunks (each its own short transaction, so a snapshot written by
another process never holds the server's writer for long) and marked complete last; a
snapshot that is not complete, or whose checksum does not match, is not valid and is
skipped. The newest valid snapshot plus the journal records after its position is the
desk. Compaction deletes the records that no kept snapshot needs: those at or before the
older of the two newest snapshots (so the newest may be damaged and recovery still has
everything it needs).

The server holds an exclusive lock (flock) on the desk file itself for as long as it
runs, so on its inode: a second server on the same file, by any path (a symlink, a hard
link), refuses to start, and so does a restore.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import sqlite3
import time
import zlib
from collections.abc import Iterator
from typing import IO

from . import base
from .base import CHUNK, KEEP_SNAPSHOTS, JournalError, StorageError
from .journal import Journal, connect, create_schema, last_position, read_records, write_mark

log = logging.getLogger("assigncore.storage")

COMPACT_BATCH = 20_000  # journal records deleted per transaction


def lock(path: str) -> IO[bytes]:
    """An exclusive lock on the desk file itself, held by the returned file until
    closed. It is taken on the file's inode (flock), so every path to the file (a
    symlink, a hard link) conflicts, and deleting some other file cannot release it.
    The file is created (empty) if it does not exist. SQLite's own locks are POSIX
    record locks, which flock does not touch; this descriptor stays open until the
    journal's connection is closed (closing it earlier would drop SQLite's locks)."""
    handle = open(path, "ab")  # noqa: SIM115 - held for the server's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise StorageError(f"{path} is in use by another assigncore server") from None
    return handle


class FileView(base.Store):
    """A desk file as readers see it (tools, the snapshot process): no lock, no journal
    writer (WAL: readers never wait for the server's writer)."""

    def __init__(self, path: str) -> None:
        self.path = self.name = path
        self.inspect = f"assigncore journal --path {path}"
        self.existed = os.path.exists(path)

    def records(self, after: int = 0, until: int | None = None) -> Iterator[tuple[int, bytes]]:
        return read_records(self.path, after, until)

    def last_record(self) -> int:
        return last_position(self.path)

    def snapshots(self) -> list[tuple[int, int, bool]]:
        return snapshots(self.path)

    def read_snapshot(self, position: int) -> bytes:
        return read_snapshot(self.path, position)

    def write_snapshot(self, position: int, data: bytes) -> None:
        write_snapshot(self.path, position, data)

    def close(self) -> None:
        return None


class Storage(FileView):
    """The running server's hold on its desk file: the lock and the journal."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise StorageError(f"the directory of {path} does not exist")
        if self.existed and os.path.getsize(path) == 0:
            raise StorageError(no_desk(path, "it is empty (0 bytes)"))
        self._lock = lock(path)
        try:
            self.journal = Journal(path)
        except (sqlite3.Error, JournalError) as exc:
            self._lock.close()
            raise StorageError(
                f"{path} is not a usable desk file ({exc}); restore a backup with "
                f"`assigncore restore --path {path} BACKUP` (the damaged file is kept "
                "beside it)"
            ) from None

    def close(self) -> None:
        self.journal.close()
        self._lock.close()


def no_desk(path: str, why: str) -> str:
    return (
        f"{path} exists but holds no desk ({why}; a deleted -wal file does this too); "
        "a desk is created only where no file exists: restore a backup with `assigncore "
        f"restore --path {path} BACKUP`, or move the file away to start a new desk"
    )


def journal_connection(path: str) -> sqlite3.Connection:
    """A connection to an existing desk file (never creates one)."""
    if not os.path.exists(path):
        raise StorageError(f"no desk file at {path}")
    return connect(path)


# ----------------------------------------------------------------- snapshots


def write_snapshot(path: str, position: int, data: bytes) -> None:
    """Stores a snapshot of the desk at journal `position`, then prunes old snapshots
    and compacts the journal."""
    conn = connect(path)
    try:
        create_schema(conn)
        chunks = max(1, -(-len(data) // CHUNK))
        with conn:
            conn.execute("DELETE FROM snapshot_chunks WHERE position = ?", (position,))
            conn.execute(
                "INSERT OR REPLACE INTO snapshots "
                "(position, size, checksum, chunks, complete, written) VALUES (?, ?, ?, ?, 0, ?)",
                (position, len(data), zlib.crc32(data), chunks, time.time()),
            )
        view = memoryview(data)
        for i in range(chunks):
            with conn:
                conn.execute(
                    "INSERT INTO snapshot_chunks (position, idx, data) VALUES (?, ?, ?)",
                    (position, i, view[i * CHUNK : (i + 1) * CHUNK]),
                )
        with conn:
            conn.execute("UPDATE snapshots SET complete = 1 WHERE position = ?", (position,))
        prune(conn)
    finally:
        conn.close()


def prune(conn: sqlite3.Connection) -> None:
    """Keeps the KEEP_SNAPSHOTS newest complete snapshots (and any newer incomplete one,
    which may be being written); deletes the journal records none of them needs."""
    kept = [
        p
        for (p,) in conn.execute(
            "SELECT position FROM snapshots WHERE complete = 1 ORDER BY position DESC LIMIT ?",
            (KEEP_SNAPSHOTS,),
        )
    ]
    if len(kept) < KEEP_SNAPSHOTS:
        return
    oldest = kept[-1]
    with conn:
        conn.execute("DELETE FROM snapshot_chunks WHERE position < ?", (oldest,))
        conn.execute("DELETE FROM snapshots WHERE position < ?", (oldest,))
    while True:
        with conn:
            deleted = conn.execute(
                "DELETE FROM records WHERE position IN "
                "(SELECT position FROM records WHERE position <= ? ORDER BY position LIMIT ?)",
                (oldest, COMPACT_BATCH),
            ).rowcount
        if deleted < COMPACT_BATCH:
            break


def snapshots(path: str) -> list[tuple[int, int, bool]]:
    """(position, size, complete) of the stored snapshots, newest first."""
    conn = connect(path)
    try:
        create_schema(conn)
        return [
            (p, size, bool(done))
            for p, size, done in conn.execute(
                "SELECT position, size, complete FROM snapshots ORDER BY position DESC"
            )
        ]
    finally:
        conn.close()


def read_snapshot(path: str, position: int) -> bytes:
    """A stored snapshot's bytes; JournalError if it is incomplete or damaged."""
    conn = connect(path)
    try:
        row = conn.execute(
            "SELECT size, checksum, chunks, complete FROM snapshots WHERE position = ?",
            (position,),
        ).fetchone()
        if row is None or not row[3]:
            raise JournalError(f"snapshot {position} is incomplete", position)
        size, checksum, chunks, _ = row
        parts = [
            bytes(d)
            for (d,) in conn.execute(
                "SELECT data FROM snapshot_chunks WHERE position = ? ORDER BY idx", (position,)
            )
        ]
    finally:
        conn.close()
    return base.check_chunks(parts, chunks, size, checksum, position)


# ----------------------------------------------------------------- backup


def backup(path: str, dest: str) -> int:
    """A consistent copy of the desk file at `dest`, taken with SQLite's online backup
    API (the server may keep serving). Returns the last journal position it holds."""
    if os.path.exists(dest):
        raise StorageError(f"{dest} exists; a backup never overwrites a file")
    source = connect(path)
    target = sqlite3.connect(dest)
    try:
        source.backup(target)
        target.execute("PRAGMA journal_mode=WAL")
        row = target.execute("SELECT MAX(position) FROM records").fetchone()
        return int(row[0] or 0)
    finally:
        target.close()
        source.close()


def restore(backup_path: str, path: str) -> tuple[int, str | None]:
    """Replaces the desk file at `path` with a backup (the server must be stopped: its
    lock is taken for the duration). The backup is checked record by record first, and
    the desk file it replaces is kept beside it, byte for byte with its -wal file
    (`<path>.replaced-<UTC time>`), so a restore of the wrong backup can be undone.
    Returns the last journal position restored and where the replaced file was kept."""
    last = 0
    for position, _ in read_records(backup_path):  # every checksum, before anything is replaced
        last = position
    existed = os.path.exists(path)  # a restore may create the desk file
    handle = lock(path)
    kept = None
    try:
        if existed:
            kept = f"{path}.replaced-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            for suffix in ("", "-wal"):
                if os.path.exists(path + suffix):
                    shutil.copy2(path + suffix, kept + suffix)
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path + suffix)
        tmp = path + ".restoring"
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        source = connect(backup_path)
        target = sqlite3.connect(tmp)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        os.replace(tmp, path)
        write_mark(path, last)  # what this desk has made durable is now the backup's
    except BaseException:
        if not existed:  # leave no empty desk file behind
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        raise
    finally:
        handle.close()
    return last, kept
