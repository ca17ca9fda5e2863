"""The storage interface a desk is served from, whatever holds it.

A desk's storage is a journal (append a batch of records, read after a position), its
snapshots (write, list, read), the compaction of records no kept snapshot needs, and the
hold on the desk: a file lock for SQLite (one server per file), a lease with an epoch
for PostgreSQL (one leader at a time, fenced). Two backends implement it:
server/storage/files.py (SQLite, the embedded default) and server/storage/postgres.py.

`Journal` is the part they share: one writer thread that makes many records durable per
transaction (group commit). `append()` returns a future that resolves, in append order,
to the record's position once it is durable; callers release replies and events only
then. When a write fails, the records of that transaction fail, and so does every append
after them until `reset()`: a record may never land behind one that was lost, since it
may depend on it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass

log = logging.getLogger("assigncore.journal")

MAX_BATCH = 4096  # records per transaction at most
KEEP_SNAPSHOTS = 2
CHUNK = 4 << 20  # bytes per snapshot chunk


class JournalError(Exception):
    """The journal cannot be written, or a record in it is corrupt."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


class Fenced(JournalError):
    """The append was refused because this process no longer holds the desk's lease
    (another leader raised the epoch, or the lease ran out): nothing of it was written.
    Unlike a failed write, this never heals: the process stops serving the desk."""


class StorageError(Exception):
    """The desk's storage cannot be used (locked by another server, not a desk file,
    an unreachable or too new database...)."""


@dataclass(slots=True)
class Stats:
    records: int = 0  # made durable
    commits: int = 0  # transactions (fsyncs) that made them so
    failed: int = 0  # records refused (disk full, unwritable, fenced)


_STOP = object()

Row = tuple[int, int, bytes]  # position, CRC-32 of the body, body


class Journal(ABC):
    """Group commit over a backend's `_store` (one transaction per batch)."""

    def __init__(self, last_position: int) -> None:
        self.stats = Stats()
        self.last_position = last_position
        self.broken: JournalError | None = None  # set by a failed write, until reset()
        # Told, in the writer's thread, how long each commit took (its write and fsync)
        # and how many records it made durable (the server's metrics).
        self.on_commit: Callable[[float, int], None] | None = None
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="journal", daemon=True)
        self._writer.start()

    @abstractmethod
    def _store(self, rows: list[Row]) -> None:
        """Writes the rows in one transaction, or raises JournalError (nothing written)."""

    def _after_failure(self, error: JournalError) -> None:
        """In the writer's thread, after a transaction failed."""
        return None

    def _after_commit(self, position: int) -> None:
        """In the writer's thread, after a transaction made `position` durable."""
        return None

    def _before_reset(self) -> None:
        """In the writer's thread, before appends are taken again."""
        return None

    def append(self, body: bytes) -> Future[int]:
        """Queues a record; the future resolves to its position once it is durable, or
        fails with JournalError (then the record was not written)."""
        future: Future[int] = Future()
        self._queue.put((body, future))
        return future

    def reset(self) -> Future[int]:
        """Appends may be written again (after the caller rebuilt its state from what
        is durable). Runs in the writer's order: appends queued before it still fail.
        The future resolves to the last durable position."""
        done: Future[int] = Future()
        self._queue.put((None, done))
        return done

    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    self._commit(batch)  # type: ignore[arg-type]
                    return
                batch.append(item)
            self._commit(batch)  # type: ignore[arg-type]

    def _commit(self, batch: list[tuple[bytes | None, Future[int]]]) -> None:
        """Writes the batch's records in one transaction; a reset marker (body None) in
        it clears a break for the records after it."""
        while batch:
            cut = next((i for i, (body, _) in enumerate(batch) if body is None), len(batch))
            records = [(body, future) for body, future in batch[:cut] if body is not None]
            if records and self.broken is not None:
                self.stats.failed += len(records)
                for _, future in records:
                    future.set_exception(self.broken)
            elif records:
                self._write(records)
            if cut < len(batch):
                self.broken = None
                try:
                    self._before_reset()
                except Exception as exc:  # the next write says whether it can go on
                    log.warning("journal: before taking appends again: %s", exc)
                batch[cut][1].set_result(self.last_position)
            batch = batch[cut + 1 :]

    def _write(self, batch: list[tuple[bytes, Future[int]]]) -> None:
        position = self.last_position
        rows = []
        for body, _ in batch:
            position += 1
            rows.append((position, zlib.crc32(body), body))
        started = time.perf_counter()
        try:
            self._store(rows)
        except JournalError as exc:
            log.error("journal write failed (%s): %d records refused", exc, len(batch))
            self.broken = exc
            self.stats.failed += len(batch)
            self._after_failure(exc)
            for _, future in batch:
                future.set_exception(exc)
            return
        took = time.perf_counter() - started
        self.last_position = position
        self.stats.records += len(batch)
        self.stats.commits += 1
        # The records are durable: their callers are told first, the rest after (the
        # caller's loop needs the GIL this thread holds meanwhile).
        for (_, future), (pos, _, _) in zip(batch, rows, strict=True):
            future.set_result(pos)
        self._after_commit(position)
        if self.on_commit is not None:
            self.on_commit(took, len(batch))

    def _stop_writer(self) -> None:
        self._queue.put(_STOP)
        self._writer.join()

    @abstractmethod
    def close(self) -> None: ...


class Store(ABC):
    """A desk's storage, as a running server holds it: the journal it appends to, and
    what replay, snapshots and tools read."""

    name: str  # in logs and errors: the file, or the database and desk id
    inspect: str  # the command that dumps its records (`... --from N` follows)
    journal: Journal
    existed: bool  # held a desk's records or snapshots before this process opened it

    @abstractmethod
    def records(self, after: int = 0, until: int | None = None) -> Iterator[tuple[int, bytes]]:
        """(position, body) of the records after `after` (up to `until`), in order; a
        bad checksum raises JournalError naming the position."""

    @abstractmethod
    def last_record(self) -> int:
        """The position of the last record stored (0: none)."""

    @abstractmethod
    def snapshots(self) -> list[tuple[int, int, bool]]:
        """(position, size, complete) of the stored snapshots, newest first."""

    @abstractmethod
    def read_snapshot(self, position: int) -> bytes:
        """A stored snapshot's bytes; JournalError if it is incomplete or damaged."""

    @abstractmethod
    def write_snapshot(self, position: int, data: bytes) -> None:
        """Stores a snapshot at `position`, then keeps the KEEP_SNAPSHOTS newest and
        deletes the journal records none of them needs (compaction)."""

    @abstractmethod
    def close(self) -> None: ...

    def valid_snapshots(self) -> Iterator[tuple[int, bytes]]:
        """(position, bytes) of each readable snapshot, newest first; damaged ones are
        skipped with a warning."""
        for position, _, complete in self.snapshots():
            if not complete:
                continue
            try:
                yield position, self.read_snapshot(position)
            except JournalError as exc:
                log.warning("%s; trying an older one", exc)


def check_chunks(parts: list[bytes], chunks: int, size: int, checksum: int, position: int) -> bytes:
    """A snapshot's bytes from its chunks, or JournalError if they do not add up."""
    data = b"".join(parts)
    if len(parts) != chunks or len(data) != size or zlib.crc32(data) != checksum:
        raise JournalError(f"snapshot {position} is damaged (checksum mismatch)", position)
    return data


def corrupt(name: str, position: int, inspect: str) -> JournalError:
    return JournalError(
        f"journal record {position} of {name} is corrupt (checksum mismatch); nothing "
        f"after it was read; inspect it with `{inspect} --from {position}`, or restore a "
        "backup (`assigncore restore`)",
        position,
    )
