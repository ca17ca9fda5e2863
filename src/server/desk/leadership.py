"""Leading or standing by for a desk held in PostgreSQL (DESIGN.md 4.3).

One keeper thread per desk talks to the database on a connection of its own, so that a
busy event loop never delays a lease renewal and a slow database never stalls the loop:

- leading: it renews the lease every `renew_every` seconds. A renewal that succeeds
  moves the local deadline to (when it was sent + lease_ttl - margin): the database's
  expiry is later than that, since the database computed it after the request left. A
  renewal refused (another epoch holds the desk) deposes this process at once; one that
  fails (the connection is gone) is retried until the deadline, at which the runtime
  stops serving on its own clock, before any standby can take the lease.
- standing by: it LISTENs for appends, reads the records after its position and hands
  them to the loop, which applies them to a warm engine; it polls the lease row, and
  when the lease has lapsed it tries to take it (one standby wins: the UPDATE is
  conditional on the expiry), reads the journal to its end, and hands over the epoch.

The runtime (server/desk/runtime.py) owns everything else: it applies records, takes
over, steps down, and fences its journal with the epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from ..config import LeaseSettings
from ..storage import postgres as pg
from ..storage.base import JournalError, StorageError

log = logging.getLogger("assigncore.server")

MARGIN = 0.2  # of the lease: the leader stops this much before its lease can lapse
REPORT_EVERY = 1.0  # seconds between a standby's reports of its position


class Keeper:
    """The desk's keeper thread. Its callbacks run on the event loop:
    `records(list[(position, body)])`, `won(epoch, last_position)`,
    `deposed(reason)`, `renewed(deadline)`, `seen(LeaseInfo)`."""

    def __init__(
        self,
        url: str,
        desk: str,
        holder: str,
        address: Callable[[], str],
        lease: LeaseSettings,
        loop: asyncio.AbstractEventLoop,
        runtime: Any,
    ) -> None:
        self.url, self.desk, self.holder = url, desk, holder
        self.address, self.lease, self.loop, self.runtime = address, lease, loop, runtime
        self.epoch = 0  # leading under this epoch (0: standing by)
        self.position = 0  # standing by: the last record handed to the loop
        self._wake = threading.Event()
        self._stop = False
        self._release: int | None = None  # an epoch to give up (a step-down)
        self._thread = threading.Thread(target=self._run, name=f"lease-{desk}", daemon=True)
        self._conn: psycopg.Connection[Any] | None = None
        self.failures = 0
        self._hold_off_until = 0.0

    # ------------------------------------------------------------- from the loop

    def start_standby(self, position: int, hold_off: float = 0.0) -> None:
        """Stand by from `position` (the loaded desk's): tail and try for the lease
        (not before `hold_off` seconds from now)."""
        self.epoch, self.position = 0, position
        if hold_off:
            self._hold_off_until = max(self._hold_off_until, time.monotonic() + hold_off)
        if not self._thread.is_alive():
            self._thread.start()
        self._wake.set()

    def start_leading(self, epoch: int) -> None:
        self.epoch = epoch
        if not self._thread.is_alive():
            self._thread.start()
        self._wake.set()

    def step_down(self, epoch: int) -> None:
        """Stop renewing; give the lease of `epoch` up (if still ours) so a standby may
        take it at once. The runtime calls start_standby once it reloaded its desk."""
        self.epoch = -1  # neither leading nor tailing until start_standby
        self._release = epoch
        # A process that just stepped down (a dropped connection, a pause) lets a
        # healthy standby win first: it competes again one lease period later.
        self._hold_off_until = time.monotonic() + self.lease.ttl
        self._wake.set()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    # ------------------------------------------------------------- the thread

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the process ends
            self.loop.call_soon_threadsafe(fn, *args)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = pg.connect(self.url, self.holder)
            self._conn.execute(f"LISTEN {pg.CHANNEL}")
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None

    def _run(self) -> None:
        last_report = 0.0
        while not self._stop:
            try:
                conn = self._connection()
                if self._release is not None:
                    epoch, self._release = self._release, None
                    pg.release(conn, self.desk, epoch)
                    log.info("desk %s: gave up the lease of epoch %d", self.desk, epoch)
                if self.epoch > 0:
                    self._renew(conn)
                elif self.epoch == 0:
                    last_report = self._stand_by(conn, last_report)
                else:  # stepped down, the desk being read again: who leads, meanwhile
                    self._post(self.runtime.lease_seen, pg.lease_info(conn, self.desk))
                    self._wake.wait(self.lease.poll_every)
                    self._wake.clear()
                self.failures = 0
            except Exception as exc:  # the database, or a bug: this thread must go on
                if not isinstance(exc, psycopg.Error | StorageError | JournalError):
                    log.exception("desk %s: the lease keeper failed", self.desk)
                self.failures += 1
                if self.failures in (1, 10) or self.failures % 100 == 0:
                    log.warning("desk %s: the database: %s", self.desk, exc)
                self._drop()
                self._wake.wait(min(1.0, self.lease.poll_every * self.failures))
                self._wake.clear()
        self._drop()

    def _renew(self, conn: psycopg.Connection[Any]) -> None:
        epoch = self.epoch
        sent = time.monotonic()
        if pg.renew(conn, self.desk, epoch, self.lease.ttl):
            deadline = sent + self.lease.ttl * (1 - MARGIN)
            self._post(self.runtime.lease_renewed, epoch, deadline)
        elif self.epoch == epoch:
            info = pg.lease_info(conn, self.desk)
            self._post(
                self.runtime.deposed,
                epoch,
                f"the lease was not renewed (now epoch {info.epoch}, held by "
                f"{info.holder or 'nobody'})",
            )
            self.epoch = -1
            return
        self._wake.wait(self.lease.renew_every)
        self._wake.clear()

    def _stand_by(self, conn: psycopg.Connection[Any], last_report: float) -> float:
        self._catch_up(conn)
        info = pg.lease_info(conn, self.desk)
        self._post(self.runtime.lease_seen, info)
        now = time.monotonic()
        if now - last_report >= REPORT_EVERY:
            pg.report_standby(conn, self.desk, self.holder, self.address(), self.position)
            last_report = now
        if (
            info.expires_in <= 0
            and self.epoch == 0
            and not self._stop
            and now >= self._hold_off_until
        ):
            won = pg.acquire(conn, self.desk, self.holder, self.address(), self.lease.ttl)
            if won is not None:
                epoch, last = won
                sent = now
                self._catch_up(conn, until=last)
                if self.position != last:
                    raise JournalError(
                        f"the journal of desk {self.desk} reads to {self.position}, not to {last}"
                    )
                pg.forget_standby(conn, self.desk, self.holder)
                self.epoch = epoch
                self._post(self.runtime.won, epoch, last, sent + self.lease.ttl * (1 - MARGIN))
                return last_report
        for _ in conn.notifies(timeout=self.lease.poll_every, stop_after=1):
            pass  # woken by an append (or the poll interval passed)
        return last_report

    def _catch_up(self, conn: psycopg.Connection[Any], until: int | None = None) -> None:
        """Reads the records after the position (to `until`) and hands them over."""
        while True:
            rows = conn.execute(
                "SELECT position, checksum, body FROM assigncore.records WHERE desk = %s "
                "AND position > %s AND (%s::bigint IS NULL OR position <= %s::bigint) "
                "ORDER BY position LIMIT %s",
                (self.desk, self.position, until, until, pg.READ_PAGE),
            ).fetchall()
            if not rows:
                return
            if rows[0][0] != self.position + 1:
                # Compacted past this standby (it fell behind a snapshot): reload.
                self.epoch = -1
                self._post(self.runtime.fell_behind, self.position, int(rows[0][0]))
                return
            batch = [(int(p), int(c), bytes(b)) for p, c, b in rows]
            self.position = batch[-1][0]
            self._post(self.runtime.tail, batch)
            if len(rows) < pg.READ_PAGE:
                return
