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

On PostgreSQL (DESIGN.md 4.3) a runtime leads its desk or stands by for it. Standing by,
it applies the records its keeper thread (server/desk/leadership.py) reads from the
journal to a warm desk, and serves nothing of it. When it wins the lease it records the
takeover like a restart and serves. Leading, every append carries its epoch; when an
append is fenced, a renewal is refused, or the lease's local deadline passes without a
renewal, it steps down at once: calls and console streams end with UNAVAILABLE naming the
leader, and the desk is read again from the database (what was durable) to stand by.
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
import time
import zlib
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from assigncore.engine import Engine, Outcome
from assigncore.errors import DomainError
from assigncore.model import Session
from assigncore.records import encode
from assigncore.v1 import common_pb2 as pb

from ..config import Settings
from ..ops.audit import AuditTrail
from ..ops.metrics import Metrics
from ..storage import postgres as pg
from ..storage.base import Fenced, JournalError, StorageError, Store
from ..storage.files import Storage, no_desk
from .durable import Desk, Idempotency, encode_entry, load, replay
from .hub import Hub, StreamEnd
from .leadership import Keeper
from .seed import load_desk
from .stall import StallClock
from .tokens import Principal, PrincipalKind, TokenStore

if TYPE_CHECKING:
    from ..api.auth import Gate

log = logging.getLogger("assigncore.server")

RECOVERY_RETRY = 1.0  # seconds between attempts to write the journal again
# Statistics events waiting to be counted when a fold is scheduled (see Runtime.command).
FOLD_EVERY = 256


class Recorder:
    """The open journal entry of this turn of the loop, and the futures of the entries
    on their way to disk (they resolve in order)."""

    def __init__(self, journal: Any, hub: Hub, on_failure: Any, on_durable: Any) -> None:
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
        # Who waits for each entry on its way (see wait): resolved as the entry settles,
        # so a waiting reply runs in the loop's next turn, not two turns later.
        self.waiters: dict[asyncio.Future[int], list[asyncio.Future[None]]] = {}

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
        waiters = self.waiters.pop(future, ())
        if error is None:
            self.hub.release(held)
            future.set_result(done.result())
            for waiter in waiters:
                if not waiter.done():  # its caller may have left (cancelled)
                    waiter.set_result(None)
            self.on_durable()
        else:
            future.set_exception(error)
            future.exception()  # retrieved: whoever awaits it is told
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(error)
                    waiter.exception()
            self.on_failure(error)

    async def durable(self) -> None:
        """Returns once everything recorded so far is durable; JournalError if some of
        it could not be written."""
        future = self.open or self.last
        if future is not None:
            await self.wait(future)

    async def wait(self, future: asyncio.Future[int]) -> None:
        """Returns once the entry of `future` is durable (JournalError if it failed). A
        waiter of its own per caller: one cancelled never cancels the entry."""
        if future.done():
            future.result()
            return
        waiter = self.loop.create_future()
        self.waiters.setdefault(future, []).append(waiter)
        await waiter


class Runtime:
    """A desk and what serves it. `Runtime(settings)` opens the desk at once (tools,
    tests; not on PostgreSQL); the server makes it with `open=False` and calls
    `open_async()` once its ports are bound (so a port in use stops the start before
    any desk file exists), answering health with NOT_SERVING while a large desk loads."""

    def __init__(
        self, settings: Settings, open: bool = True, metrics: Metrics | None = None
    ) -> None:
        self.settings = settings
        self.desk_id = settings.desk_id
        if not settings.manual_clock and not isinstance(settings.clock, StallClock):
            # Desk time stands still while the loop is stalled (see server/desk/stall.py).
            settings.clock = StallClock(settings.clock)
        self.clock = settings.clock
        self.gate: Gate | None = None  # the guard's call budgets, once serving
        self.storage: Store | None = None
        if metrics is None and settings.metrics_listen:
            metrics = Metrics(lambda: [self])
        self.metrics = metrics
        self.timings = metrics.for_desk(self.desk_id) if metrics is not None else None
        self.recorder: Recorder | None = None
        self.failed = False  # the journal cannot be written: refusing calls, recovering
        # Changes recorded (commands, tokens, idempotency entries, audit entries): a call
        # that fails tells its client whether it changed anything before it failed.
        self.applied = 0
        self.generated_admin_token: str | None = None
        self.ready = False  # leading a loaded desk: calls other than health are served
        self.loaded = False  # a desk is in memory (leading or standing by): tokens known
        # Told whether calls are served (health): False while the journal cannot be
        # written or this process stands by, True once it serves the desk.
        self.on_serving: Any = None
        self.desk: Desk
        # High availability (PostgreSQL): this process's role, the epoch it leads under
        # (or last saw), until when its lease surely holds (monotonic), the leader's
        # address as last seen, and a standby's lag in records.
        self.role = "loading"  # "leader", "standby"
        self.epoch = 0
        self.lease_deadline = math.inf
        self.leader_address = ""
        self.lag = 0
        self.address = settings.advertise  # given to clients by standbys; set by the server
        self.keeper: Keeper | None = None
        self.holder = pg.new_holder()
        self._applied_position = 0  # standing by: the last record applied
        self._decided: asyncio.Event | None = None
        self._lease_check: asyncio.TimerHandle | None = None
        self._reloading: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._sleeping_until = math.inf  # the deadline the timer task sleeps until
        self._folding = False  # a fold of the statistics is scheduled
        self._task: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._snapshotter: asyncio.subprocess.Process | None = None
        self._snapshot_position = 0  # journal position of the newest snapshot
        self._closing = False
        if open:
            if settings.storage_mode == "postgresql":
                raise StorageError("a desk on PostgreSQL is opened by the server (open_async)")
            self._open_storage()
            self._opened(self._load())

    @property
    def ha(self) -> bool:
        """The desk is on PostgreSQL: led under a lease, with standbys."""
        return isinstance(self.storage, pg.PgStore)

    @property
    def serving(self) -> bool:
        """This process leads the desk and serves it now."""
        return self.ready and not self.failed and self.role == "leader"

    @property
    def position(self) -> int:
        """The last journal position this process holds (durable, or applied)."""
        if self.role == "leader" and self.storage is not None:
            return self.storage.journal.last_position
        return self._applied_position

    def _open_storage(self) -> None:
        settings = self.settings
        if settings.storage_mode == "file":
            self.storage = Storage(settings.storage_path)
            log.info("desk file (journal and snapshots): %s", os.path.abspath(self.storage.name))
        elif settings.storage_mode == "postgresql":
            assert settings.storage_url is not None
            self.storage = pg.PgStore(settings.storage_url, self.desk_id, holder=self.holder)
            log.info("desk %s: journal, snapshots and lease in %s", self.desk_id, self.storage.name)
        else:
            log.warning(
                "STORAGE MODE IS MEMORY: nothing is written to disk, and everything this "
                "server is told (sessions, reps, teams, tokens) is lost when it stops"
            )
        if self.storage is not None and self.timings is not None:
            self.storage.journal.on_commit = self.timings.journal_commit

    def _opened(self, loaded: tuple[Desk | None, int]) -> None:
        try:
            self.desk = self._open(loaded)
        except BaseException:
            self.close_storage()
            raise
        self.role = "leader"
        self.ready = self.loaded = True

    async def open_async(self) -> None:
        """Opens the desk's storage and loads the desk in a thread: the event loop goes
        on serving (health answers NOT_SERVING, other calls UNAVAILABLE) meanwhile. On
        PostgreSQL, returns once this process leads the desk or stands by for it."""
        await asyncio.to_thread(self._open_storage)
        try:
            loaded = await asyncio.to_thread(self._load)
        except BaseException:
            self.close_storage()
            raise
        if not self.ha:
            self._opened(loaded)
            return
        # A process that prefers to stand by for this desk leaves a free lease to the
        # others for two lease periods (placement by configuration).
        hold_off = 2 * self.settings.lease.ttl if self.settings.prefer_standby else 0.0
        self._stand_by(loaded, hold_off)
        assert self._decided is not None
        await self._decided.wait()

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
        """The guard's token lookup (on whatever desk is current)."""
        return self.desk.tokens.principal(secret) if self.loaded else None

    def _load(self) -> tuple[Desk | None, int]:
        """The desk in storage and its journal position; (None, 0) for a new one. A
        file that existed but holds no desk is refused: a desk is created only where
        there was no file (an empty file, or one whose -wal was lost, is damage)."""
        store = self.storage
        if store is None:
            return None, 0
        try:
            loaded = load(store, self.settings)
            snapshot_at = store.snapshots()
        except sqlite3.DatabaseError as exc:
            raise StorageError(
                f"{store.name} is damaged ({exc}); restore a backup with `assigncore restore "
                f"--path {store.name} BACKUP` (the damaged file is kept beside it)"
            ) from None
        except pg.psycopg.Error as exc:
            raise StorageError(f"{store.name} cannot be read: {exc}") from None
        if loaded[0] is None and store.existed and not self.ha:
            raise StorageError(no_desk(store.name, "it has no journal records and no snapshot"))
        self._snapshot_position = max((p for p, _, done in snapshot_at if done), default=0)
        return loaded

    def _open(self, loaded: tuple[Desk | None, int]) -> Desk:
        """The desk loaded from storage (newest snapshot, then the journal), or a new
        one from the config; then what a start records (a restart, the admin token),
        made durable before anything is served."""
        settings = self.settings
        startup: list[bytes] = []
        desk, position = loaded
        if desk is not None:
            log.info("desk %s: recovered at journal position %d", self.desk_id, position)
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
        if self.storage is None:
            desk.count_to(self._count)  # nothing to write: changes are only counted
        else:
            desk.record_to(self._record)
        desk.engine.timings = self.timings
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

    def _count(self) -> None:
        self.applied += 1

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
        if self.ha and self.role != "leader":
            raise Fenced("this process does not lead the desk now")
        if self.recorder is not None:
            await self.recorder.durable()
        elif self.hub.woke:
            # Console streams this call woke write their events before the reply
            # leaves: an offer reaches its rep as soon as the caller hears of it.
            self.hub.woke = False
            await asyncio.sleep(0)

    def durable_point(self) -> asyncio.Future[int] | None:
        """What `durable()` would wait for now, to be awaited later with `durable_at`
        (None: nothing): the Intake stream applies a portal's next call while an
        earlier one's result waits for its entry."""
        recorder = self.recorder
        return None if recorder is None else (recorder.open or recorder.last)

    async def durable_at(self, point: asyncio.Future[int] | None) -> None:
        """Returns once the entry of a `durable_point` is durable; JournalError if it
        could not be written."""
        if point is not None and self.recorder is not None:
            await self.recorder.wait(point)

    # ------------------------------------------------------------- leading, standing by

    def leading(self) -> bool:
        """Serving, and the lease surely holds now (else this steps down at once)."""
        if not self.serving:
            return False
        if self.ha and time.monotonic() >= self.lease_deadline:
            self.deposed(self.epoch, "the lease could not be renewed before it ran out")
            return False
        return True

    def not_leader(self) -> dict[str, str]:
        """What a refused call is told: this desk, its leader's address when known."""
        return {
            "desk": self.desk_id,
            "leader": self.leader_address if self.leader_address != self.address else "",
            "epoch": str(self.epoch),
        }

    def _stand_by(self, loaded: tuple[Desk | None, int], hold_off: float = 0.0) -> None:
        """Hold `loaded` as a warm standby desk (not served) and let the keeper tail
        the journal from its position and try for the lease."""
        desk, position = loaded
        self.role, self.ready = "standby", False
        if desk is not None:
            desk.record_to(None)
            desk.hub.holding = False
            self.desk, self.loaded = desk, True
        self._applied_position = position
        if self._decided is None:
            self._decided = asyncio.Event()
        if self.keeper is None:
            assert isinstance(self.storage, pg.PgStore)
            self.keeper = Keeper(
                self.storage.url,
                self.desk_id,
                self.holder,
                lambda: self.address,
                self.settings.lease,
                asyncio.get_running_loop(),
                self,
            )
        self.keeper.start_standby(position, hold_off)

    def tail(self, batch: list[tuple[int, int, bytes]]) -> None:
        """On the loop: records the keeper read, applied to the standby desk."""
        if self.role != "standby" or self._reloading is not None:
            return
        desk = self.desk if self.loaded else None
        assert self.storage is not None
        for at, checksum, body in batch:
            if at != self._applied_position + 1:
                return  # a stale batch (from before a reload)
            try:
                if zlib.crc32(body) != checksum:
                    raise JournalError(f"journal record {at} is corrupt (checksum mismatch)", at)
                desk = replay(desk, at, body, self.settings, self.storage)
            except JournalError as exc:
                log.critical("desk %s: standing by, cannot apply: %s", self.desk_id, exc)
                self._reload()
                return
            self._applied_position = at
            if not self.loaded:
                desk.record_to(None)
                desk.hub.holding = False
                self.desk, self.loaded = desk, True

    def lease_seen(self, info: pg.LeaseInfo) -> None:
        """On the loop: the lease row as the standby's keeper last read it."""
        live = info.expires_in > 0
        self.leader_address = info.address if live else ""
        self.lag = max(0, info.last_position - self._applied_position)
        if self.role == "standby":
            self.epoch = info.epoch
        if live and info.holder != self.holder and self._decided is not None:
            if not self._decided.is_set():
                log.info(
                    "desk %s: standing by (leader %s at %s, epoch %d)",
                    self.desk_id,
                    info.holder,
                    info.address,
                    info.epoch,
                )
            self._decided.set()  # another process leads: the start is done, standing by

    def won(self, epoch: int, last: int, deadline: float) -> None:
        """On the loop: the keeper took the lease (epoch) with the journal read to
        `last`; the takeover is recorded like a restart, then the desk is served."""
        assert self.storage is not None and self.keeper is not None
        if self._closing or self.role != "standby" or self._reloading is not None:
            # Not in a state to serve (stopping, or reading the desk again, which ends
            # by standing by): the lease goes back at once rather than lapse unserved.
            self.keeper.step_down(epoch)
            return
        if self._applied_position != last:
            self._give_up(epoch, f"the standby desk is at {self._applied_position}, not {last}")
            return
        self.epoch, self.lease_deadline = epoch, deadline
        journal = self.storage.journal
        assert isinstance(journal, pg.PgJournal)
        journal.fence(epoch, last)
        try:
            journal.reset().result()
            desk = self._open((self.desk if self.loaded else None, last))
        except JournalError as exc:
            self._give_up(epoch, f"recording the takeover failed: {exc}")
            return
        self.desk, self.loaded, self.failed, self.recorder = desk, True, False, None
        self.role, self.ready, self.lag = "leader", True, 0
        self.leader_address = self.address
        self.keeper.start_leading(epoch)
        self._schedule_lease_check()
        self._wake.set()
        log.warning(
            "desk %s: leading at epoch %d (journal position %d)",
            self.desk_id,
            epoch,
            journal.last_position,
        )
        if self._decided is not None:
            self._decided.set()
        if self.on_serving is not None:
            self.on_serving(True)

    def _give_up(self, epoch: int, why: str) -> None:
        """A takeover that could not complete: the lease is released, the desk read again."""
        log.error("desk %s: cannot take over at epoch %d: %s", self.desk_id, epoch, why)
        self.role = "leader"  # so that deposed() runs its course
        self.epoch = epoch
        self.deposed(epoch, why)

    def lease_renewed(self, epoch: int, deadline: float) -> None:
        if self.role == "leader" and epoch == self.epoch and self.lease_deadline != math.inf:
            self.lease_deadline = deadline
            self._schedule_lease_check()

    def _schedule_lease_check(self) -> None:
        """A timer at the lease's local deadline (the loop's clock is monotonic, as the
        deadline is): unless a renewal moves it first, the desk is given up right then,
        not at the next call."""
        if self._lease_check is not None:
            self._lease_check.cancel()
        self._lease_check = asyncio.get_running_loop().call_at(
            self.lease_deadline, self._check_lease
        )

    def _check_lease(self) -> None:
        self._lease_check = None
        if self.role == "leader" and self.leading():
            self._schedule_lease_check()  # woken early (a clock's rounding): again

    def deposed(self, epoch: int, why: str) -> None:
        """Stop serving the desk at once: this process no longer (surely) leads it.
        Calls are refused and console streams end with UNAVAILABLE naming the leader;
        the desk is read again from the database and this process stands by."""
        if self.role != "leader" or epoch != self.epoch or not self.ha:
            return
        log.error("desk %s: stepping down from epoch %d: %s", self.desk_id, epoch, why)
        self.role, self.ready, self.lease_deadline = "standby", False, math.inf
        if self.leader_address == self.address:
            self.leader_address = ""
        if self._lease_check is not None:
            self._lease_check.cancel()
            self._lease_check = None
        if self.on_serving is not None:
            self.on_serving(False)
        if self.loaded:
            self.hub.not_leader = self.not_leader()
            self.hub.drain(StreamEnd.DEPOSED)
        self.recorder = None
        assert self.keeper is not None
        self.keeper.step_down(epoch)
        self._reload()

    def fell_behind(self, position: int, first: int) -> None:
        log.warning(
            "desk %s: standing by at %d, but the journal now starts at %d (compacted): "
            "reading the desk again from its newest snapshot",
            self.desk_id,
            position,
            first,
        )
        self._reload()

    def _reload(self) -> None:
        """Reads the desk again (newest snapshot, then the journal) and stands by."""
        if self._reloading is not None or self._closing:
            return
        self._reloading = asyncio.get_running_loop().create_task(self._reload_desk())

    async def _reload_desk(self) -> None:
        while not self._closing:
            try:
                loaded = await asyncio.to_thread(self._load)
            except (StorageError, JournalError) as exc:
                log.error("desk %s: cannot read the desk again: %s", self.desk_id, exc)
                await asyncio.sleep(RECOVERY_RETRY)
                continue
            self._reloading = None
            if self.loaded:
                self.hub.not_leader = self.not_leader()
                self.hub.drain(StreamEnd.DEPOSED)  # streams opened meanwhile end too
            self.loaded = False
            self._stand_by(loaded)
            return

    # ------------------------------------------------------------- failure

    def torn(self, error: BaseException) -> None:
        """An engine command or timer pass failed midway (a bug, never a refusal): part
        of it may be applied, and none of it is in the journal. With storage, the desk
        is rebuilt from what is durable (calls are refused with UNAVAILABLE until then),
        so nothing half-done stays; in memory there is nothing to rebuild from."""
        log.error("an engine command failed midway", exc_info=error)
        if self.storage is None:
            log.critical(
                "STORAGE MODE IS MEMORY: the desk cannot be rebuilt; it may now hold part "
                "of the failed command"
            )
            return
        self._journal_failed(error)

    def _journal_failed(self, error: BaseException) -> None:
        if self.ha:
            # On PostgreSQL any failure to append ends this leadership: the desk is read
            # again from the database, and whichever process wins the lease serves it.
            self.deposed(self.epoch, f"the journal cannot be written ({error})")
            return
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
        if rep is not None and rep.connected and not self.hub.draining and self.serving:
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
        stats = self.engine.state.stats
        if len(stats.pending) >= FOLD_EVERY and not self._folding:
            # Counted between calls, a few hundred events at a time, never in one.
            try:
                asyncio.get_running_loop().call_soon(self._fold)
                self._folding = True
            except RuntimeError:  # no loop (a tool): counted now
                stats.fold()
        return outcome

    def _fold(self) -> None:
        self._folding = False
        self.engine.state.stats.fold()

    # ------------------------------------------------------------- timers

    def start(self) -> None:
        if isinstance(self.clock, StallClock):
            self.clock.start()
        if self.role == "leader" and self.ha:
            self._schedule_lease_check()
        self._task = asyncio.get_running_loop().create_task(self._run_timers())

    async def stop(self) -> None:
        if isinstance(self.clock, StallClock):
            self.clock.stop()
        if self._lease_check is not None:
            self._lease_check.cancel()
        for task in (self._task, self._recovery, self._reloading):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _run_timers(self) -> None:
        while True:
            deadline = self.engine.next_deadline() if self.serving else None
            self._sleeping_until = math.inf if deadline is None else deadline
            timeout = None
            if deadline is not None and not self.settings.manual_clock:
                timeout = max(0.0, deadline - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if not self.serving:
                continue
            try:
                self.engine.advance()
            except Exception as exc:  # a bug: the desk is rebuilt from its journal
                self.torn(exc)

    def tick(self) -> None:
        """With a manual clock: the time moved; fire what is due now."""
        if self.serving:
            self.engine.advance()
        self._wake.set()

    # ------------------------------------------------------------- snapshots, closing

    def _maybe_snapshot(self) -> None:
        """Every `snapshot_every` journal entries, a separate process replays the
        storage and writes a snapshot (the serving loop never pauses for one)."""
        every = self.settings.snapshot_every
        if not every or self.recorder is None or self.storage is None or self._closing:
            return
        position = self.storage.journal.last_position
        if position - self._snapshot_position < every:
            return
        if self._snapshotter is not None and self._snapshotter.returncode is None:
            return
        self._snapshot_position = position
        args = [
            sys.executable,
            "-m",
            "assigncore_server.cli",
            "snapshot",
            "--parent",
            str(os.getpid()),
        ]
        env = None
        if isinstance(self.storage, pg.PgStore):
            # The URL (it may hold a password) goes by the environment, not argv.
            env = {**os.environ, "ASSIGNCORE_DATABASE_URL": self.storage.url}
            args += ["--desk", self.desk_id]
        else:
            args += ["--path", self.storage.name]
        if self.settings.source:
            args += ["--config", self.settings.source]
        asyncio.get_running_loop().create_task(self._spawn_snapshot(args, env))

    async def _spawn_snapshot(self, args: list[str], env: dict[str, str] | None) -> None:
        self._snapshotter = await asyncio.create_subprocess_exec(
            *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        if await self._snapshotter.wait() != 0:
            log.warning("the snapshot process failed (exit %s)", self._snapshotter.returncode)

    async def close(self, snapshot: bool = True) -> None:
        """After serving: the last entries made durable, a snapshot written (the loop
        serves nobody by now), the lease given up, the storage closed."""
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
        if snapshot and self.serving:
            position = self.storage.journal.last_position
            try:
                await asyncio.to_thread(self.storage.write_snapshot, position, self.desk.dump())
                log.info("wrote a snapshot at journal position %d", position)
            except (JournalError, StorageError, OSError, sqlite3.Error, pg.psycopg.Error) as exc:
                log.warning("no snapshot at shutdown: %s", exc)
        if self.keeper is not None:
            await asyncio.to_thread(self.keeper.stop)
        if self.ha:  # the lease back at once (a leader), the standby row gone (any)
            with contextlib.suppress(pg.psycopg.Error, StorageError):
                await asyncio.to_thread(self._release_lease, self.role == "leader")
        self.role, self.ready = "stopped", False
        self.close_storage()

    def _release_lease(self, leading: bool) -> None:
        assert isinstance(self.storage, pg.PgStore)
        conn = pg.connect(self.storage.url, self.holder)
        try:
            if leading:
                pg.release(conn, self.desk_id, self.epoch)
            pg.forget_standby(conn, self.desk_id, self.holder)
        finally:
            conn.close()

    def close_storage(self) -> None:
        if self.keeper is not None:
            self.keeper.stop()
            self.keeper = None
        if self.storage is not None:
            self.storage.close()
            self.storage = None
