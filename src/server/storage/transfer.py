"""Moving a desk between storages, byte for byte: its complete snapshots and its journal
records, with their positions and checksums. `assigncore migrate` moves a desk file to
PostgreSQL; `assigncore backup` of a desk on PostgreSQL writes a desk file (which
`assigncore restore` and `assigncore migrate` take like any other)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import zlib

from . import postgres as pg
from .base import StorageError, Store
from .journal import create_schema, write_mark


def _newest_snapshot(source: Store) -> tuple[int, bytes] | None:
    for position, data in source.valid_snapshots():
        return position, data
    return None


def to_postgres(source: Store, url: str, desk: str) -> int:
    """Copies `source` into desk `desk` at `url`, which must hold nothing yet (no
    records, no snapshots). Returns the last position copied. One transaction: a
    failed copy leaves the database as it was."""
    conn = pg.connect(url, "migrate")
    try:
        pg.migrate(conn)
        with conn.transaction():
            conn.execute(
                "INSERT INTO assigncore.desks (desk) VALUES (%s) ON CONFLICT DO NOTHING", (desk,)
            )
            row = conn.execute(
                "SELECT last_position, epoch, lease_expires > now() FROM assigncore.desks "
                "WHERE desk = %s FOR UPDATE",
                (desk,),
            ).fetchone()
            assert row is not None
            has_snapshots = conn.execute(
                "SELECT 1 FROM assigncore.snapshots WHERE desk = %s LIMIT 1", (desk,)
            ).fetchone()
            if row[0] or has_snapshots or row[2]:
                raise StorageError(
                    f"desk {desk!r} in {pg.redact(url)} is not empty (or is being served); "
                    "a migration never overwrites a desk"
                )
            last = 0
            snap = _newest_snapshot(source)
            if snap is not None:
                position, data = snap
                conn.execute(
                    "INSERT INTO assigncore.snapshots (desk, position, size, checksum, chunks, "
                    "complete) VALUES (%s, %s, %s, %s, 1, true)",
                    (desk, position, len(data), zlib.crc32(data)),
                )
                conn.execute(
                    "INSERT INTO assigncore.snapshot_chunks (desk, position, idx, data) "
                    "VALUES (%s, %s, 0, %s)",
                    (desk, position, data),
                )
                last = position
            with conn.cursor().copy(
                "COPY assigncore.records (desk, position, epoch, checksum, body) FROM STDIN"
            ) as copy:
                for position, body in source.records(after=last):
                    copy.write_row((desk, position, 0, zlib.crc32(body), body))
                    last = position
            conn.execute(
                "UPDATE assigncore.desks SET last_position = %s WHERE desk = %s", (last, desk)
            )
        return last
    finally:
        conn.close()


def to_file(source: Store, dest: str) -> int:
    """Writes `source` (its newest snapshot and the records after it) as a new desk
    file at `dest`. Returns the last position written."""
    if os.path.exists(dest):
        raise StorageError(f"{dest} exists; a backup never overwrites a file")
    tmp = f"{dest}.writing-{os.getpid()}"
    target = sqlite3.connect(tmp, isolation_level=None)
    try:
        target.execute("PRAGMA journal_mode=WAL")
        create_schema(target)
        target.execute("BEGIN")
        last = 0
        snap = _newest_snapshot(source)
        if snap is not None:
            position, data = snap
            target.execute(
                "INSERT INTO snapshots (position, size, checksum, chunks, complete, written) "
                "VALUES (?, ?, ?, 1, 1, ?)",
                (position, len(data), zlib.crc32(data), time.time()),
            )
            target.execute(
                "INSERT INTO snapshot_chunks (position, idx, data) VALUES (?, 0, ?)",
                (position, data),
            )
            last = position
        for position, body in source.records(after=last):
            target.execute(
                "INSERT INTO records (position, checksum, body) VALUES (?, ?, ?)",
                (position, zlib.crc32(body), body),
            )
            last = position
        target.execute("COMMIT")
        target.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except BaseException:
        target.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp + suffix)
        raise
    target.close()
    os.replace(tmp, dest)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp + suffix)
    write_mark(dest, last)
    return last
