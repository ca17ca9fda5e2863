"""Durability benchmarks (DESIGN.md 4.2), measured in one run:

- the journal alone: one record at a time (each waits for its fsync: the floor), and
  under group commit (a producer keeps many records in flight): durable records per
  second and fsyncs (commits) per second;
- recovery of a large desk: 100k reps and 1M waiting sessions (quick: 10k and 100k) from
  a snapshot plus a tail of 100k commands (quick: 10k), the same desk from its journal
  alone, and the bytes each takes.

    python benchmarks/durability.py --json            # full run (a few minutes)
    python benchmarks/durability.py --json --quick    # under a minute
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from assigncore.model import Algorithm, Customer, IssueType, QueueSettings
from assigncore.records import encode
from assigncore_server import config
from assigncore_server.desk import durable
from assigncore_server.storage import files as storage
from assigncore_server.storage.journal import Journal

BODY = (
    b'[{"a":["r1","off_0123456789abcdef012345678",true],"c":"answer_offer","k":{},"t":1.5,"v":1}]'
)


def journal_rates(path: Path, quick: bool) -> dict:
    journal = Journal(str(path))
    single = 200 if quick else 1000
    t0 = time.perf_counter()
    for _ in range(single):
        journal.append(BODY).result()
    one_at_a_time = time.perf_counter() - t0
    n = 50_000 if quick else 300_000
    commits0 = journal.stats.commits
    t0 = time.perf_counter()
    futures = [journal.append(BODY) for _ in range(n)]
    futures[-1].result()
    grouped = time.perf_counter() - t0
    commits = journal.stats.commits - commits0
    journal.close()
    return {
        "fsync_floor_us": round(one_at_a_time / single * 1e6, 1),
        "single_records_per_s": round(single / one_at_a_time),
        "group_commit_records_per_s": round(n / grouped),
        "group_commit_fsyncs_per_s": round(commits / grouped),
        "records_per_fsync": round(n / commits, 1),
        "record_bytes": len(BODY),
    }


def build_desk(path: Path, reps: int, sessions: int, tail: int) -> dict:
    """Writes a desk's journal the way the server does (records grouped in entries), with
    a snapshot after the sessions are in, then a tail of commands after it."""
    settings = config.Settings(storage_mode="file", storage_path=str(path))
    journal = Journal(str(path))
    desk, created = durable.Desk.create(settings, random.Random(1).randbytes(32), 1000.0)
    pending: list[bytes] = [encode(created)]
    desk.record_to(pending.append)
    futures = []

    def flush() -> None:
        if pending:
            futures.append(journal.append(durable.encode_entry(pending)))
            pending.clear()

    engine = desk.engine
    teams = max(1, reps // 100)
    t0 = time.perf_counter()
    for t in range(teams):
        engine.create_team(f"t{t}", f"T{t}", settings=QueueSettings(Algorithm.LEAST_BUSY))
        engine.create_issue_type(IssueType(f"i{t}", f"I{t}", f"t{t}"))
    flush()
    for r in range(reps):
        engine.create_rep(f"r{r}", f"R{r}", teams=[f"t{r % teams}"])
        if r % 100 == 99:
            flush()
    ids = []
    for s in range(sessions):
        ids.append(engine.start_from_issue(f"i{s % teams}", Customer(f"c{s}")).value.id)
        if s % 100 == 99:
            flush()
    flush()
    futures[-1].result()
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = desk.dump()
    dumped = time.perf_counter() - t0
    position = journal.last_position
    t0 = time.perf_counter()
    storage.write_snapshot(str(path), position, data)
    written = time.perf_counter() - t0
    rng = random.Random(2)
    for k in range(tail):
        if k % 2:
            engine.cancel_session(ids.pop(rng.randrange(len(ids))))
        else:
            engine.start_from_issue(f"i{k % teams}", Customer(f"t{k}"))
        if k % 100 == 99:
            flush()
    flush()
    futures[-1].result()
    journal.close()
    with sqlite3.connect(path) as db:
        body_bytes = db.execute("SELECT SUM(LENGTH(body)) FROM records").fetchone()[0]
    return {
        "build_s": round(built, 1),
        "snapshot_dump_s": round(dumped, 2),
        "snapshot_write_s": round(written, 2),
        "snapshot_bytes": len(data),
        "journal_bytes": int(body_bytes),
        "commands": reps + 2 * teams + sessions + tail,
    }


_RECOVER = """
import json, time
from assigncore_server import config
from assigncore_server.desk import durable
from assigncore_server.storage.files import FileView
settings = config.Settings(storage_mode="file", storage_path={path!r})
t0 = time.perf_counter()
desk, position = durable.load(FileView({path!r}), settings)
elapsed = time.perf_counter() - t0
waiting = sum(1 for s in desk.engine.sessions() if s.state.value == "WAITING")
print(json.dumps([elapsed, waiting]))
"""


def recover(path: Path) -> tuple[float, int]:
    """Loads the desk in a fresh process, as a restarting server does; (seconds, waiting
    sessions)."""
    script = _RECOVER.format(path=str(path))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    elapsed, waiting = json.loads(done.stdout)
    return elapsed, waiting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="a smaller desk, under a minute")
    args = parser.parse_args()
    reps, sessions, tail = (
        (10_000, 100_000, 10_000) if args.quick else (100_000, 1_000_000, 100_000)
    )
    result: dict = {"quick": args.quick}
    with tempfile.TemporaryDirectory(dir=os.environ.get("ASSIGNCORE_BENCH_DIR")) as tmp:
        result["journal"] = journal_rates(Path(tmp) / "rates.sqlite3", args.quick)
        path = Path(tmp) / "desk.sqlite3"
        desk = build_desk(path, reps, sessions, tail)
        from_snapshot, waiting = recover(path)
        with sqlite3.connect(path) as db:  # the same desk, from its journal alone
            db.execute("DELETE FROM snapshot_chunks")
            db.execute("DELETE FROM snapshots")
        from_journal, waiting_again = recover(path)
        assert waiting == waiting_again == sessions  # half the tail starts, half cancels
        result["recovery"] = {
            "reps": reps,
            "waiting_sessions": waiting,
            "tail_commands": tail,
            "from_snapshot_plus_tail_s": round(from_snapshot, 2),
            "from_journal_alone_s": round(from_journal, 2),
            "journal_commands": desk["commands"],
            **desk,
        }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
