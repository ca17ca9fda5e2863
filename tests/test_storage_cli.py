"""The desk file's tools: backup while serving, restore, the journal dump, snapshots
written by a separate process, and compaction."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys

from assigncore_server.cli import journal_dump, main
from assigncore_server.storage import files as storage

from .server_harness import live_server, until


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "assigncore_server.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_backup_while_serving_and_restore_bring_the_desk_back(tmp_path):
    path = str(tmp_path / "desk.sqlite3")
    live = await live_server(storage_path=path)
    try:
        kept = await live.start(issue_type_id="manual-help")
        # A backup taken by another process while the server serves.
        done = cli("backup", "--path", path, str(tmp_path / "backup.sqlite3"))
        assert done.returncode == 0, done.stderr
        assert "journal position" in done.stdout
        later = await live.start(issue_type_id="manual-help")
        refused = cli("restore", "--path", path, str(tmp_path / "backup.sqlite3"))
        assert refused.returncode == 1 and "in use" in refused.stderr  # still serving
    finally:
        await live.close()
    assert main(["restore", "--path", path, str(tmp_path / "backup.sqlite3")]) == 0
    live = await live_server(storage_path=path, clock=live.clock)
    try:
        ids = {s.id for s in live.server.runtime.engine.sessions()}
        assert kept.id in ids and later.id not in ids
    finally:
        await live.close()
    # The desk file the restore replaced is kept, whole: it opens with both sessions.
    (replaced,) = [p for p in tmp_path.iterdir() if ".replaced-" in p.name and "-wal" not in p.name]
    live = await live_server(storage_path=str(replaced), clock=live.clock)
    try:
        ids = {s.id for s in live.server.runtime.engine.sessions()}
        assert {kept.id, later.id} <= ids
    finally:
        await live.close()
    assert cli("backup", "--path", path, str(tmp_path / "backup.sqlite3")).returncode == 1


async def test_the_journal_dump_shows_every_record_and_points_at_a_corrupt_one(tmp_path):
    path = str(tmp_path / "desk.sqlite3")
    live = await live_server(storage_path=path)
    for _ in range(3):
        await live.start(issue_type_id="manual-help")
    await live.close()
    out = io.StringIO()
    assert journal_dump(path, 1, None, out) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    commands = [r["c"] for line in lines for r in line["records"]]
    assert commands[0] == "server.desk_created" and "start_from_issue" in commands
    with sqlite3.connect(path) as db:
        db.execute("UPDATE records SET body = X'0102' WHERE position = 2")
    out = io.StringIO()
    assert journal_dump(path, 1, 3, out) == 1
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["position"] for line in lines] == [1, 2, 3]
    assert lines[1]["error"].startswith("checksum mismatch") and lines[1]["first_bytes"] == "0102"
    assert "records" in lines[2]  # the dump goes on past it


async def test_snapshots_from_a_separate_process_bound_recovery_and_compact(tmp_path):
    path = str(tmp_path / "desk.sqlite3")
    live = await live_server(storage_path=path, snapshot_every=5)
    try:
        runtime = live.server.runtime
        # The server spawns `assigncore snapshot` itself every 5 entries (one at a time);
        # the desk keeps working meanwhile, until two snapshots are there.
        for _ in range(2000):
            await live.start(issue_type_id="manual-help")
            if len(storage.snapshots(path)) >= 2:
                break
        await until(lambda: runtime._snapshotter.returncode is not None, seconds=60)
        newest, older = storage.snapshots(path)[:2]
        with sqlite3.connect(path) as db:
            first = db.execute("SELECT MIN(position) FROM records").fetchone()[0]
        assert first == older[0] + 1  # records the older snapshot covers are compacted
        before = live.server.runtime.engine.snapshot()
    finally:
        await live.close(snapshot=False)
    # Recovery starts from the newest snapshot and replays what came after it.
    live = await live_server(storage_path=path, clock=live.clock)
    try:
        assert live.server.runtime.engine.snapshot() == before
    finally:
        await live.close()
    # A damaged newest snapshot: the older one and the journal after it are used.
    with sqlite3.connect(path) as db:
        top = db.execute("SELECT MAX(position) FROM snapshots").fetchone()[0]
        db.execute("UPDATE snapshot_chunks SET data = X'00' WHERE position = ?", (top,))
    live = await live_server(storage_path=path, clock=live.clock)
    try:
        assert {s.id for s in live.server.runtime.engine.sessions()} == set(before["sessions"])
    finally:
        await live.close()


async def test_a_desk_file_migrates_to_postgresql_and_backs_up_from_it(tmp_path):
    """`assigncore migrate` moves a desk file into PostgreSQL byte for byte; the desk
    served from there is the same desk; `assigncore backup` of it writes a desk file
    that serves the same desk again; `journal`, `snapshot` and `status` read it."""
    from . import postgres

    url = postgres.fresh_database()
    path = str(tmp_path / "desk.sqlite3")
    live = await live_server(storage_path=path)
    kept = [(await live.start(issue_type_id="manual-help")).id for _ in range(3)]
    await live.close()  # with a snapshot: the migration carries it and the records after
    moved = cli("migrate", "--from", path, "--to", url, "--desk", "moved")
    assert moved.returncode == 0, moved.stderr
    again = cli("migrate", "--from", path, "--to", url, "--desk", "moved")
    assert again.returncode == 1 and "not empty" in again.stderr  # never overwrites

    on_pg = {"storage_mode": "postgresql", "storage_url": url, "desk_id": "moved"}
    live = await live_server(clock=live.clock, **on_pg)
    try:
        for sid in kept:
            assert live.server.runtime.engine.session(sid).state.value == "WAITING"
        kept.append((await live.start(issue_type_id="manual-help")).id)
    finally:
        await live.close(snapshot=False)

    config = tmp_path / "pg.toml"
    config.write_text(f'[storage]\nurl = "{url}"\ndesk = "moved"\n')
    snap = cli("snapshot", "--config", str(config))
    assert snap.returncode == 0, snap.stderr
    dumped = cli("journal", "--config", str(config), "--from", "1")
    lines = [json.loads(line) for line in dumped.stdout.splitlines()]
    assert dumped.returncode == 0 and lines and all("records" in line for line in lines)
    status = cli("status", "--config", str(config), "--json")
    assert status.returncode == 0, status.stderr
    (report,) = json.loads(status.stdout)
    assert report["desk"] == "moved" and report["position"] == lines[-1]["position"]
    assert report["leader"] == "" and report["epoch"] == 1  # released at the clean stop

    backup = str(tmp_path / "from-pg.sqlite3")
    done = cli("backup", "--config", str(config), backup)
    assert done.returncode == 0, done.stderr
    live = await live_server(storage_path=backup, clock=live.clock)
    try:
        for sid in kept:
            assert live.server.runtime.engine.session(sid).state.value == "WAITING"
    finally:
        await live.close()
