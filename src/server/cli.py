"""The `assigncore` command.

assigncore serve    [--config FILE] [--listen HOST:PORT]
assigncore backup   [--config FILE | --path DESK_FILE] DEST    (while serving)
assigncore restore  [--config FILE | --path DESK_FILE] BACKUP  (server stopped)
assigncore journal  [--config FILE | --path DESK_FILE] [--from N] [--to N]
assigncore snapshot [--config FILE | --path DESK_FILE]         (while serving)
assigncore top      --server HOST:PORT --token TOKEN [--once]  (a terminal wallboard)
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import importlib.metadata
import json
import logging
import os
import signal
import sqlite3
import sys
import zlib
from typing import Any

from .app import create_server
from .config import ConfigError, Settings, load
from .desk import durable
from .ops import logs
from .storage import files as storage
from .storage import postgres as pg
from .storage import transfer
from .storage.base import JournalError, StorageError, Store

log = logging.getLogger("assigncore.server")


async def serve(settings: Settings, show_demo_tokens: bool) -> None:
    server, port = await create_server(settings)
    host = settings.listen.rsplit(":", 1)[0]
    log.info(
        "assigncore %s on %s:%d: loading the desk (health: NOT_SERVING)", version(), host, port
    )
    await server.start()
    tune_gc()
    log.info("assigncore listening on %s:%d", host, port)
    if server.metrics_port and settings.metrics_listen:
        metrics_host = settings.metrics_listen.rsplit(":", 1)[0]
        log.info("Prometheus metrics on http://%s:%d/metrics", metrics_host, server.metrics_port)
    rt = server.runtime
    if rt.generated_admin_token:
        log.info(
            "admin token (generated for this run; set ASSIGNCORE_ADMIN_TOKEN or "
            "[server] admin_token to choose one): %s",
            rt.generated_admin_token,
        )
    if show_demo_tokens:
        for tok in settings.desk.get("tokens", []):
            who = f"rep {tok['rep']}" if tok.get("rep") else tok["kind"]
            log.info("demo token for %s: %s", who, tok["secret"])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining (grace %.0f s)", settings.shutdown_grace)
    await server.stop()


# Collections of the youngest generation every this many allocations (the default 700
# runs one every few calls); older generations as by default.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """For a long-running server: what the desk holds once loaded is long-lived, so it
    is frozen out of every collection (a full collection would walk all of it, a pause
    that grows with the desk), and young collections run rarely: the garbage of a call
    is freed by reference counting, cycles are few."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def journal_dump(path: str, start: int, end: int | None, out: Any = sys.stdout) -> int:
    """Every record from `start` to `end` as one JSON line each, for support and audits.
    A record whose checksum does not match is shown as such (with its first bytes) and
    the dump goes on: this is the tool to inspect one."""
    conn = storage.journal_connection(path)
    bad = 0
    try:
        rows = conn.execute(
            "SELECT position, checksum, body FROM records WHERE position >= ? AND position <= ? "
            "ORDER BY position",
            (start, end if end is not None else 2**62),
        )
        for position, checksum, body in rows:
            body = bytes(body)
            line: dict[str, Any] = {"position": position}
            if zlib.crc32(body) != checksum:
                bad += 1
                line["error"] = "checksum mismatch: this record is corrupt"
                line["first_bytes"] = body[:64].hex()
            else:
                try:
                    line["records"] = json.loads(body)
                except ValueError:
                    line["error"] = "not JSON"
            out.write(json.dumps(line, sort_keys=True) + "\n")
    finally:
        conn.close()
    return 1 if bad else 0


def end_with_parent(parent: int) -> bool:
    """This process is killed when its parent ends (Linux: PR_SET_PDEATHSIG), so a
    snapshot process never outlives the server that started it (a killed server's next
    start must not meet its predecessor's snapshot writer). False if the parent is
    already gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent check below still holds
        pass
    return os.getppid() == parent


PR_SET_PDEATHSIG = 1


def snapshot_now(store: Store, settings: Settings) -> int:
    """Replays the desk (newest snapshot, then the journal) in this process and writes
    a snapshot at the position reached: the server never pauses for it."""
    desk, position = durable.load(store, settings)
    if desk is None:
        print(f"assigncore: {store.name} holds no desk yet", file=sys.stderr)
        return 1
    store.write_snapshot(position, desk.dump())
    log.info("wrote a snapshot of %s at journal position %d", store.name, position)
    return 0


def desk_settings(settings: Settings, desk: str | None) -> Settings:
    """The settings of desk `desk` ([[desks]] id, or the config's own desk)."""
    if not settings.desks:
        if desk is not None and settings.storage_mode == "postgresql":
            settings.desk_id = desk
        return settings
    for entry in settings.desks:
        if desk is None or entry.desk_id == desk:
            return entry
    raise ConfigError(f"no desk {desk!r} in the config's [[desks]]")


def open_store(args: argparse.Namespace, settings: Settings) -> Store:
    """The storage a tool reads (never the server's writer): the desk file, or the
    desk's rows in PostgreSQL."""
    if getattr(args, "path", None):
        return storage.FileView(args.path)
    own = desk_settings(settings, getattr(args, "desk", None))
    if own.storage_mode == "postgresql":
        assert own.storage_url is not None
        return pg.PgStore(own.storage_url, own.desk_id, writer=False)
    if own.storage_mode == "memory":
        raise ConfigError("this config keeps its desk in memory: there is nothing to read")
    return storage.FileView(own.storage_path)


def status(args: argparse.Namespace, settings: Settings, out: Any = sys.stdout) -> int:
    """Per desk: its storage, leader, epoch, lease expiry, journal position, and each
    standby's position and lag (PostgreSQL); `--json` for machines."""
    entries = settings.desks or [settings]
    if args.desk is not None:
        entries = [desk_settings(settings, args.desk)]
    report: list[dict[str, Any]] = []
    for own in entries:
        if own.storage_mode == "postgresql":
            assert own.storage_url is not None
            conn = pg.connect(own.storage_url, "status")
            try:
                ids = [own.desk_id]
                if args.all:
                    ids = pg.desks(conn)
                for desk_id in ids:
                    info = pg.lease_info(conn, desk_id)
                    report.append(
                        {
                            "desk": desk_id,
                            "storage": pg.redact(own.storage_url),
                            "leader": info.holder if info.expires_in > 0 else "",
                            "address": info.address if info.expires_in > 0 else "",
                            "epoch": info.epoch,
                            "lease_expires_in": round(info.expires_in, 3)
                            if info.expires_in > -1e9
                            else None,
                            "position": info.last_position,
                            "standbys": [
                                {
                                    "holder": h,
                                    "address": a,
                                    "position": p,
                                    "lag": max(0, info.last_position - p),
                                    "seen_ago": round(ago, 3),
                                }
                                for h, a, p, ago in info.standbys
                            ],
                        }
                    )
            finally:
                conn.close()
        elif own.storage_mode == "file":
            path = own.storage_path
            position = journal_last(path) if os.path.exists(path) else 0
            report.append(
                {"desk": own.desk_id, "storage": path, "position": position, "standbys": []}
            )
    if args.json:
        out.write(json.dumps(report, indent=2) + "\n")
        return 0
    for desk in report:
        out.write(f"desk {desk['desk']}  ({desk['storage']})\n")
        out.write(f"  journal position {desk['position']}\n")
        if "epoch" in desk:
            if desk["leader"]:
                out.write(
                    f"  leader {desk['leader']} at {desk['address']}, epoch {desk['epoch']}, "
                    f"lease expires in {desk['lease_expires_in']:.2f} s\n"
                )
            else:
                out.write(f"  no leader now (last epoch {desk['epoch']})\n")
            for standby in desk["standbys"]:
                out.write(
                    f"  standby {standby['holder']} at {standby['address']}: position "
                    f"{standby['position']}, lag {standby['lag']} records\n"
                )
    return 0


def journal_last(path: str) -> int:
    from .storage.journal import last_position

    return last_position(path)


def migrate(args: argparse.Namespace) -> int:
    """Moves a desk file into PostgreSQL (the desk there must be empty), or, without
    --from, brings the database's schema to this version."""
    url = args.to or os.environ.get("ASSIGNCORE_DATABASE_URL")
    if not url or not pg.is_url(url):
        print("assigncore: --to must be a postgresql:// URL", file=sys.stderr)
        return 2
    if args.source is None:
        conn = pg.connect(url, "migrate")
        try:
            version = pg.migrate(conn)
        finally:
            conn.close()
        print(f"{pg.redact(url)}: assigncore schema version {version}")
        return 0
    if not os.path.exists(args.source):
        print(f"assigncore: no desk file at {args.source}", file=sys.stderr)
        return 2
    source = storage.FileView(args.source)
    last = transfer.to_postgres(source, url, args.desk)
    print(
        f"migrated {args.source} to desk {args.desk!r} in {pg.redact(url)} (journal "
        f"position {last}); serve it with [storage] url and desk = {args.desk!r}"
    )
    return 0


def version() -> str:
    """The installed distribution's version."""
    try:
        return importlib.metadata.version("assigncore")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "unknown (not installed)"


def add_top_arguments(parser: argparse.ArgumentParser) -> None:
    from .ops.remote import add_connection_arguments

    add_connection_arguments(parser, "a supervisor's or admin's")
    parser.add_argument("--team", action="append", default=[], help="only this team (repeat)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between pushes")
    parser.add_argument("--target", type=float, default=0.8, help="service level goal, 0-1")
    parser.add_argument("--once", action="store_true", help="print the board once and exit")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="assigncore", description="assigncore server")
    parser.add_argument("--version", action="version", version=f"assigncore {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="run the gRPC server")
    run.add_argument("--config", help="desk and server TOML (default: embedded demo desk)")
    run.add_argument("--listen", help="HOST:PORT to listen on (overrides the config)")
    tools = {
        "backup": "copy the desk (file or PostgreSQL) to a desk file, while the server runs",
        "restore": "replace the desk file with a backup (the server must be stopped)",
        "journal": "dump journal records as JSON lines (support, audits, inspection)",
        "snapshot": "write a snapshot now, from a separate process",
        "status": "each desk's leader, epoch, lease and standbys' lag",
    }
    for name, text in tools.items():
        tool = sub.add_parser(name, help=text)
        tool.add_argument("--config", help="the server's TOML (locates the desk's storage)")
        tool.add_argument("--path", help="the desk file itself")
        tool.add_argument("--desk", help="the desk's id ([[desks]], or in PostgreSQL)")
        if name == "status":
            tool.add_argument("--json", action="store_true", help="as JSON")
            tool.add_argument("--all", action="store_true", help="every desk in the database")
        if name in ("backup", "restore"):
            tool.add_argument("file", help="the backup file")
        if name == "snapshot":
            tool.add_argument(
                "--parent",
                type=int,
                default=0,
                help="end when this process (the server that started it) ends",
            )
        if name == "journal":
            tool.add_argument("--from", dest="start", type=int, default=1)
            tool.add_argument("--to", dest="end", type=int, default=None)
    move = sub.add_parser("migrate", help="move a desk file into PostgreSQL, or migrate the schema")
    move.add_argument("--from", dest="source", help="the desk file (SQLite) to move")
    move.add_argument("--to", help="postgresql:// URL (default: $ASSIGNCORE_DATABASE_URL)")
    move.add_argument("--desk", default="default", help="the desk's id there")
    board = sub.add_parser("top", help="a live terminal wallboard of a running server")
    add_top_arguments(board)
    from .ops.remote import add_token_parser, token_command

    add_token_parser(sub)
    from .tools.commands import add_simulate_parser

    add_simulate_parser(sub)
    from .tools.bench import add_bench_parser

    add_bench_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "top":
        from .ops import top  # Textual is only loaded for the wallboard

        return top.run(args)
    if args.command == "token":
        return token_command(args)
    if args.command == "bench":
        from .tools.bench import bench_command

        return bench_command(args)
    if args.command == "simulate":
        from .tools.commands import simulate_command

        return simulate_command(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.command == "migrate":
        try:
            return migrate(args)
        except (OSError, StorageError, JournalError, sqlite3.Error) as exc:
            print(f"assigncore: {exc}", file=sys.stderr)
            return 1
    try:
        settings = load(args.config)
    except ConfigError as exc:
        print(f"assigncore: {exc}", file=sys.stderr)
        return 2
    if args.command != "serve":
        return _tool(args, settings)
    logs.configure(settings.log_format, settings.log_level)
    if args.listen:
        settings.listen = args.listen
    error, code = "", 0
    try:
        with asyncio.Runner(loop_factory=_loop_factory(settings)) as runner:
            runner.run(serve(settings, show_demo_tokens=args.config is None))
    except ConfigError as exc:
        error, code = str(exc), 2
    except (OSError, StorageError, JournalError, sqlite3.Error) as exc:
        error, code = str(exc), 1
    finally:
        logs.release_stderr()  # the last lines are written before the process ends
    if error:
        print(f"assigncore: {error}", file=sys.stderr)
    return code


def _loop_factory(settings: Settings) -> Any:
    if settings.event_loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def _tool(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if args.command == "status":
            return status(args, settings)
        own = desk_settings(settings, args.desk)
        if args.path or own.storage_mode != "postgresql":
            return _file_tool(args, args.path or own.storage_path, own)
        if args.command == "restore":
            print(
                "assigncore: a desk on PostgreSQL is restored with `assigncore migrate --from "
                "BACKUP --to URL --desk ID` into an empty desk (or with the database's own "
                "backups)",
                file=sys.stderr,
            )
            return 2
        store = open_store(args, settings)
        try:
            if args.command == "backup":
                last = transfer.to_file(store, args.file)
                print(f"backed up {store.name} to {args.file} (journal position {last})")
            elif args.command == "journal":
                return dump_records(store, args.start, args.end)
            else:
                if args.parent and not end_with_parent(args.parent):
                    print(
                        "assigncore: the server that asked for this snapshot is gone",
                        file=sys.stderr,
                    )
                    return 1
                return snapshot_now(store, own)
        finally:
            store.close()
    except (StorageError, JournalError, sqlite3.Error, OSError, pg.psycopg.Error) as exc:
        print(f"assigncore: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"assigncore: {exc}", file=sys.stderr)
        return 2
    return 0


def dump_records(store: Store, start: int, end: int | None, out: Any = sys.stdout) -> int:
    """Journal records of a store, as journal_dump writes them (a corrupt record stops
    the dump, with its position)."""
    try:
        for position, body in store.records(after=start - 1, until=end):
            line: dict[str, Any] = {"position": position}
            try:
                line["records"] = json.loads(body)
            except ValueError:
                line["error"] = "not JSON"
            out.write(json.dumps(line, sort_keys=True) + "\n")
    except JournalError as exc:
        out.write(json.dumps({"position": exc.position, "error": str(exc)}) + "\n")
        return 1
    return 0


def _file_tool(args: argparse.Namespace, path: str, settings: Settings) -> int:
    if not os.path.exists(path) and args.command != "restore":
        print(f"assigncore: no desk file at {path}", file=sys.stderr)
        return 2
    try:
        if args.command == "backup":
            last = storage.backup(path, args.file)
            print(f"backed up {path} to {args.file} (journal position {last})")
        elif args.command == "restore":
            last, kept = storage.restore(args.file, path)
            print(f"restored {path} from {args.file} (journal position {last})")
            if kept is not None:
                print(f"the desk file it replaced is kept as {kept}")
        elif args.command == "journal":
            return journal_dump(path, args.start, args.end)
        else:
            if args.parent and not end_with_parent(args.parent):
                print(
                    "assigncore: the server that asked for this snapshot is gone", file=sys.stderr
                )
                return 1
            return snapshot_now(storage.FileView(path), settings)
    except (StorageError, JournalError, sqlite3.Error, OSError) as exc:
        print(f"assigncore: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
