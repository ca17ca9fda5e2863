"""What a running server holds: its desk (engine, console feeds, tokens, idempotency
entries), the desk's file (journal and snapshots), the recorder that makes every change
durable before anything about it leaves the process, and the task that fires the
engine's timers on the event loop.

Write-ahead, with group commit (DESIGN.md 4.2): a command runs on the loop and its
record joins the open journal entry; at the end of the loop's turn the entry goes to the
journal's writer thread, which makes many entries durable per fsync. Replies wait for
their entry (the `rpc` decorator awaits `durable()`), and console events are held in the
hub until their entry is durable. When the journal cannot be written (a full disk),
every call is refused with UNAVAILABLE, the console streams end, and the desk is rebuilt
from the file (what was durable) as soon as a write succeeds again: nothing that was
refused is half-applied.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import secrets
import sqlite3
import subprocess
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from assigncore.engine import Engine, Outcome
from assigncore.errors import DomainError
from assigncore.model import Session
from assigncore.records import encode

from ..config import Settings
from ..gen.assigncore.v1 import common_pb2 as pb
from ..ops.audit import AuditTrail
from ..ops.metrics import Metrics
from ..storage.files import Storage, StorageError, snapshots, write_snapshot
from ..storage.journal import Journal, JournalError
from .durable import Desk, Idempotency, encode_entry, load
from .hub import Hub, StreamEnd
from .seed import load_desk
from .stall import StallClock
from .tokens import Principal, PrincipalKind, TokenStore

if TYPE_CHECKING:
    from ..api.auth import Gate

log = logging.getLogger("assigncore.server")

RECOVERY_RETRY = 1.0  # seconds between attempts to write the journal again


class Recorder:
    """The open journal entry of this turn of the loop, and the futures of the entries
    on their way to disk (they resolve in order)."""

    def __init__(self, journal: Journal, hub: Hub, on_failure: Any, on_durable: Any) -> None:
        self.journal, self.hub = journal, hub
        self.on_failure, self.on_durable = on_failure, on_durable
        self.loop = asyncio.get_running_loop()
        self.bodies: list[bytes] = []
        self.open: asyncio.Future[int] | None = None
        self.last: asyncio.Future[int] | None = None
        self.entries = 0
        # Entries the writer finished, for the loop to settle in order.
        self.settled: collections.deque[tuple[Any, asyncio.Future[int], list[Any]]] = (
            collections.deque()
        )
        self.waking = False

    def add(self, body: bytes) -> None:
        if self.open is None:
            self.open = self.loop.create_future()
            self.loop.call_soon(self.flush)
        self.bodies.append(body)

    def flush(self) -> None:
        future, self.open = self.open, None
        if future is None:
            return
        bodies, self.bodies = self.bodies, []
        held = self.hub.take_held()
        self.last = future
        self.entries += 1
        done = self.journal.append(encode_entry(bodies))
        done.add_done_callback(lambda d: self._written(d, future, held))

    def _written(self, done: Any, future: asyncio.Future[int], held: list[Any]) -> None:
        """In the writer's thread: the loop is woken once for all the entries one
        commit made durable, not once per entry."""
        self.settled.append((done, future, held))
        if not self.waking:
            self.waking = True
            self.loop.call_soon_threadsafe(self._settle_all)

    def _settle_all(self) -> None:
        self.waking = False  # before draining: an entry added meanwhile wakes it again
        settled = self.settled
        while settled:
            self._settled(*settled.popleft())

    def _settled(self, done: Any, future: asyncio.Future[int], held: list[Any]) -> None:
        error = done.exception()
        if error is None:
            self.hub.release(held)
            future.set_result(done.result())
            self.on_durable()
        else:
            future.set_exception(error)
            future.exception()  # retrieved: whoever awaits it is told
            self.on_failure(error)

    async def durable(self) -> None:
        """Returns once everything recorded so far is durable; JournalError if some of
        it could not be written."""
        future = self.open or self.last
        if future is not None:
            await asyncio.shield(future)  # a waiter cancelled never cancels the entry


def no_desk(path: str, why: str) -> str:
    return (
        f"{path} exists but holds no desk ({why}; a deleted -wal file does this too); "
        "a desk is created only where no file exists: restore a backup with `assigncore "
        f"restore --path {path} BACKUP`, or move the file away to start a new desk"
    )


class Runtime:
    """A desk and what serves it. `Runtime(settings)` opens the desk at once (tools,
    tests); the server makes it with `open=False` and calls `open_async()` once its
    ports are bound (so a port in use stops the start before any desk file exists),
    answering health with NOT_SERVING while a large desk loads."""

    def __init__(self, settings: Settings, open: bool = True) -> None:
        self.settings = settings
        if not settings.manual_clock and not isinstance(settings.clock, StallClock):
            # Desk time stands still while the loop is stalled (see server/desk/stall.py).
            settings.clock = StallClock(settings.clock)
        self.clock = settings.clock
        self.gate: Gate | None = None  # the interceptor's call budgets, once serving
        self.storage: Storage | None = None
        self.metrics = Metrics(self) if settings.metrics_listen else None
        self.recorder: Recorder | None = None
        self.failed = False  # the journal cannot be written: refusing calls, recovering
        # Changes recorded (commands, tokens, idempotency entries, audit entries): a call
        # that fails tells its client whether it changed anything before it failed.
        self.applied = 0
        self.generated_admin_token: str | None = None
        self.ready = False  # the desk is loaded: calls other than health are served
        self._file_existed = False
        # Told whether calls are served (health): False while the journal cannot be
        # written, True again once the desk is rebuilt.
        self.on_serving: Any = None
        self.desk: Desk
        self._wake = asyncio.Event()
        self._sleeping_until = math.inf  # the deadline the timer task sleeps until
        self._task: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._snapshotter: asyncio.subprocess.Process | None = None
        self._snapshot_position = 0  # journal position of the newest snapshot
        self._closing = False
        if open:
            self._open_storage()
            self._opened(self._load())

    def _open_storage(self) -> None:
        settings = self.settings
        if settings.storage_mode == "file":
            path = settings.storage_path
            self._file_existed = os.path.exists(path)
            if self._file_existed and os.path.getsize(path) == 0:
                raise StorageError(no_desk(path, "it is empty (0 bytes)"))
            self.storage = Storage(path)
            if self.metrics is not None:
                self.storage.journal.on_commit = self.metrics.journal_commit
            log.info("desk file (journal and snapshots): %s", os.path.abspath(self.storage.path))
        else:
            log.warning(
                "STORAGE MODE IS MEMORY: nothing is written to disk, and everything this "
                "server is told (sessions, reps, teams, tokens) is lost when it stops"
            )

    def _opened(self, loaded: tuple[Desk | None, int]) -> None:
        try:
            self.desk = self._open(loaded)
        except BaseException:
            self.close_storage()
            raise
        self.ready = True

    async def open_async(self) -> None:
        """Opens the desk file and loads the desk in a thread: the event loop goes on
        serving (health answers NOT_SERVING, other calls UNAVAILABLE) meanwhile."""
        self._open_storage()
        try:
            loaded = await asyncio.to_thread(self._load)
        except BaseException:
            self.close_storage()
            raise
        self._opened(loaded)

    # ------------------------------------------------------------- the desk

    @property
    def engine(self) -> Engine:
        return self.desk.engine

    @property
    def hub(self) -> Hub:
        return self.desk.hub

    def session_message(self, s: Session) -> pb.Session:
        """A session's message, shared by every reply and event built before the next
        command (see Hub.session_message)."""
        return self.desk.hub.session_message(s)

    @property
    def tokens(self) -> TokenStore:
        return self.desk.tokens

    @property
    def idempotency(self) -> Idempotency:
        return self.desk.idempotency

    @property
    def audit(self) -> AuditTrail:
        return self.desk.audit

    def principal(self, secret: str) -> Principal | None:
        """The interceptor's token lookup (on whatever desk is current)."""
        return self.desk.tokens.principal(secret)

    def _load(self) -> tuple[Desk | None, int]:
        """The desk in the file and its journal position; (None, 0) for a new file. A
        file that existed but holds no desk is refused: a desk is created only where
        there was no file (an empty file, or one whose -wal was lost, is damage)."""
        if self.storage is None:
            return None, 0
        path = self.storage.path
        try:
            loaded = load(path, self.settings)
            snapshot_at = snapshots(path)
        except sqlite3.DatabaseError as exc:
            raise StorageError(
                f"{path} is damaged ({exc}); restore a backup with `assigncore restore "
                f"--path {path} BACKUP` (the damaged file is kept beside it)"
            ) from None
        if loaded[0] is None and self._file_existed:
            raise StorageError(no_desk(path, "it has no journal records and no snapshot"))
        self._snapshot_position = max((p for p, _, done in snapshot_at if done), default=0)
        return loaded

    def _open(self, loaded: tuple[Desk | None, int]) -> Desk:
        """The desk loaded from its file (newest snapshot, then the journal), or a new
        one from the config; then what a start records (a restart, the admin token),
        made durable before anything is served."""
        settings = self.settings
        startup: list[bytes] = []
        desk, position = loaded
        if desk is not None:
            log.info("recovered the desk at journal position %d", position)
        if desk is None:
            desk, created = Desk.create(settings, secrets.token_bytes(32), self.clock())
            startup.append(encode(created))  # the desk's creation comes first
            desk.record_to(startup.append)
            load_desk(desk.engine, desk.tokens, settings.desk)
        else:
            if asdict(desk.engine.config) != asdict(settings.engine):
                log.warning(
                    "this desk keeps the engine settings it was created with; the changed "
                    "[server] routing settings in the config are not applied"
                )
            desk.record_to(startup.append)
            desk.engine.server_restarted()
        self._admin_token(desk)
        desk.record_to(None)
        if self.storage is not None and startup:
            self.storage.journal.append(encode_entry(startup)).result()
        desk.record_to(self._record)
        desk.engine.timings = self.metrics
        desk.engine.state.stats.enabled = settings.statistics
        desk.hub.holding = self.storage is not None
        desk.hub.on_lost = self.lost
        return desk

    def _admin_token(self, desk: Desk) -> None:
        admin = self.settings.admin_token or os.environ.get("ASSIGNCORE_ADMIN_TOKEN")
        tokens = desk.tokens
        if admin:
            if not tokens.has_secret(admin):
                tokens.add(admin, Principal(PrincipalKind.ADMIN), "first admin token")
        elif not any(r.principal.kind is PrincipalKind.ADMIN for r in tokens.records()):
            admin = self.generated_admin_token = secrets.token_urlsafe(24)
            tokens.add(admin, Principal(PrincipalKind.ADMIN), "first admin token")

    def _record(self, body: bytes) -> None:
        self.applied += 1
        if self.storage is None:
            return
        if self.recorder is None:
            self.recorder = Recorder(
                self.storage.journal, self.hub, self._journal_failed, self._maybe_snapshot
            )
        self.recorder.add(body)

    async def durable(self) -> None:
        """Waits until everything done so far is durable (a reply may leave then)."""
        if self.failed:
            raise JournalError("the journal cannot be written")
        if self.recorder is not None:
            await self.recorder.durable()
        elif self.hub.woke:
            # Console streams this call woke write their events before the reply
            # leaves: an offer reaches its rep as soon as the caller hears of it.
            self.hub.woke = False
            await asyncio.sleep(0)

    # ------------------------------------------------------------- failure

    def torn(self, error: BaseException) -> None:
        """An engine command or timer pass failed midway (a bug, never a refusal): part
        of it may be applied, and none of it is in the journal. With a desk file, the
        desk is rebuilt from what is durable (calls are refused with UNAVAILABLE until
        then), so nothing half-done stays; in memory there is nothing to rebuild from."""
        log.error("an engine command failed midway", exc_info=error)
        if self.storage is None:
            log.critical(
                "STORAGE MODE IS MEMORY: the desk cannot be rebuilt; it may now hold part "
                "of the failed command"
            )
            return
        self._journal_failed(error)

    def _journal_failed(self, error: BaseException) -> None:
        if self.failed:
            return
        self.failed = True
        log.error("the journal cannot be written (%s): refusing calls until it can", error)
        if self.on_serving is not None:
            self.on_serving(False)
        self.hub.drain(StreamEnd.UNAVAILABLE)
        self._recovery = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        """Rebuilds the desk from what is durable, once the journal takes writes again."""
        assert self.storage is not None
        while True:
            await asyncio.sleep(RECOVERY_RETRY)
            self.recorder = None
            try:
                await asyncio.wrap_future(self.storage.journal.reset())
                desk = self._open(self._load())
            except (JournalError, OSError) as exc:
                log.warning("the journal still cannot be written (%s)", exc)
                continue
            self.desk, self.failed = desk, False
            self._wake.set()
            if self.on_serving is not None:
                self.on_serving(True)
            log.info("the journal is writable again: the desk was rebuilt, serving")
            return

    # ------------------------------------------------------------- commands

    def lost(self, rep_id: str) -> None:
        """A rep's console stream is gone without a sign-out: the connection-lost path
        (rule 11), unless the server is draining (a restart is not the rep's fault)."""
        rep = self.engine.find_rep(rep_id)
        if rep is not None and rep.connected and not self.hub.draining and not self.failed:
            self.command(self.engine.disconnect, rep_id)

    def command(self, fn: Any, *args: Any, **kwargs: Any) -> Outcome:
        """Run an engine command and let the timer task re-plan (it may have scheduled
        an earlier deadline). A command refused (a DomainError) changed nothing; one that
        failed any other way (a bug) may have changed part of the desk, which is then
        rebuilt from its journal (see torn)."""
        try:
            outcome: Outcome = fn(*args, **kwargs)
        except DomainError:
            raise
        except Exception as exc:
            self.torn(exc)
            raise
        deadline = self.engine.next_deadline()
        if deadline is not None and deadline < self._sleeping_until:
            self._wake.set()  # the timer task sleeps past a new, earlier deadline
        return outcome

    # ------------------------------------------------------------- timers

    def start(self) -> None:
        if isinstance(self.clock, StallClock):
            self.clock.start()
        self._task = asyncio.get_running_loop().create_task(self._run_timers())

    async def stop(self) -> None:
        if isinstance(self.clock, StallClock):
            self.clock.stop()
        for task in (self._task, self._recovery):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _run_timers(self) -> None:
        while True:
            deadline = None if self.failed else self.engine.next_deadline()
            self._sleeping_until = math.inf if deadline is None else deadline
            timeout = None
            if deadline is not None and not self.settings.manual_clock:
                timeout = max(0.0, deadline - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if self.failed:
                continue
            try:
                self.engine.advance()
            except Exception as exc:  # a bug: the desk is rebuilt from its journal
                self.torn(exc)

    def tick(self) -> None:
        """With a manual clock: the time moved; fire what is due now."""
        if not self.failed:
            self.engine.advance()
        self._wake.set()

    # ------------------------------------------------------------- snapshots, closing

    def _maybe_snapshot(self) -> None:
        """Every `snapshot_every` journal entries, a separate process replays the file
        and writes a snapshot (the serving loop never pauses for one)."""
        every = self.settings.snapshot_every
        if not every or self.recorder is None or self.storage is None or self._closing:
            return
        position = self.storage.journal.last_position
        if position - self._snapshot_position < every:
            return
        if self._snapshotter is not None and self._snapshotter.returncode is None:
            return
        self._snapshot_position = position
        args = [sys.executable, "-m", "server.cli", "snapshot", "--path", self.storage.path]
        args += ["--parent", str(os.getpid())]  # it ends if this server ends
        if self.settings.source:
            args += ["--config", self.settings.source]
        asyncio.get_running_loop().create_task(self._spawn_snapshot(args))

    async def _spawn_snapshot(self, args: list[str]) -> None:
        self._snapshotter = await asyncio.create_subprocess_exec(
            *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if await self._snapshotter.wait() != 0:
            log.warning("the snapshot process failed (exit %s)", self._snapshotter.returncode)

    async def close(self, snapshot: bool = True) -> None:
        """After serving: the last entries made durable, a snapshot written (the loop
        serves nobody by now), the desk file closed."""
        if self.storage is None:
            return
        self._closing = True  # no snapshot process starts from here on
        if self.recorder is not None:
            self.recorder.flush()
            with contextlib.suppress(JournalError):
                await self.recorder.durable()
        if self._snapshotter is not None and self._snapshotter.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._snapshotter.kill()
            await self._snapshotter.wait()
        if snapshot and not self.failed:
            position = self.storage.journal.last_position
            write_snapshot(self.storage.path, position, self.desk.dump())
            log.info("wrote a snapshot at journal position %d", position)
        self.close_storage()

    def close_storage(self) -> None:
        if self.storage is not None:
            self.storage.close()
            self.storage = None
