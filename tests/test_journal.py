"""The command journal: durable appends in order with group commit, integrity checks on
reading back, and refusal (then recovery) when the disk is full."""

from __future__ import annotations

import sqlite3
import threading
import zlib

import pytest

from assigncore_server.storage.journal import Journal, JournalError


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "desk.journal")


def test_appends_become_durable_in_order_many_per_commit(path):
    journal = Journal(path)
    futures = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        for i in range(250):
            with lock:  # the order records are appended in is the order of positions
                futures.append((f"{n}:{i}".encode(), journal.append(f"{n}:{i}".encode())))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    positions = [f.result(timeout=30) for _, f in futures]
    assert positions == list(range(1, 1001))
    assert journal.stats.records == 1000
    assert journal.stats.commits < 1000  # group commit: many records per fsync
    journal.close()
    reopened = Journal(path)
    assert [body for _, body in reopened.records()] == [body for body, _ in futures]
    assert reopened.append(b"next").result(timeout=10) == 1001
    assert [p for p, _ in reopened.records(after=999)] == [1000, 1001]
    reopened.close()


def corrupt(path: str, position: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("UPDATE records SET body = ? WHERE position = ?", (b"garbage", position))
    conn.commit()
    conn.close()


def test_a_corrupt_last_record_stops_the_open_and_names_its_position(path):
    """SQLite commits a batch whole: a bad last record is damage, not a torn write. It
    is never dropped (its change was acknowledged, its position would be reused)."""
    journal = Journal(path)
    for i in range(5):
        journal.append(b"r%d" % i).result(timeout=10)
    journal.close()
    corrupt(path, 5)
    with pytest.raises(JournalError) as err:
        Journal(path)
    assert err.value.position == 5
    assert "record 5" in str(err.value) and f"--path {path} --from 5" in str(err.value)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 5  # kept
    conn.close()


def test_a_corrupt_record_in_the_middle_stops_the_read_and_names_its_position(path):
    journal = Journal(path)
    for i in range(5):
        journal.append(b"r%d" % i).result(timeout=10)
    journal.close()
    corrupt(path, 3)
    reopened = Journal(path)
    read = []
    with pytest.raises(JournalError) as err:
        for position, _ in reopened.records():
            read.append(position)
    assert read == [1, 2] and err.value.position == 3
    assert "record 3" in str(err.value)
    reopened.close()
    conn = sqlite3.connect(path)  # nothing after it was dropped
    assert conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 5
    conn.close()


def test_a_full_disk_refuses_appends_and_they_succeed_again_when_space_returns(path):
    journal = Journal(path)
    journal.append(b"before").result(timeout=10)
    pages = journal._conn.execute("PRAGMA page_count").fetchone()[0]
    journal._conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
    big = b"x" * 100_000
    with pytest.raises(JournalError):
        journal.append(big).result(timeout=10)
    assert journal.stats.failed == 1
    journal._conn.execute("PRAGMA max_page_count = 1073741823")  # space returns
    # Nothing lands behind a lost record until the caller has rebuilt and resets.
    with pytest.raises(JournalError):
        journal.append(b"small").result(timeout=10)
    assert journal.reset().result(timeout=10) == 1
    assert journal.append(big).result(timeout=10) == 2
    assert [zlib.crc32(b) for _, b in journal.records()] == [
        zlib.crc32(b"before"),
        zlib.crc32(big),
    ]
    journal.close()
