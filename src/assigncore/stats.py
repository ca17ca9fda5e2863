"""Live statistics of a desk, kept from its own events (DESIGN.md 4.4).

The counters are part of the engine's state: `State.emit` hands every event to
`Statistics.observe`, so a desk rebuilt from its journal (or from a snapshot and the
journal after it) has the same statistics as the desk that ran, and a replica that takes
over has them too. Nothing here reads the wall clock: times are the events' own.

Per queue it counts, in one-minute buckets for the sliding windows and since midnight
in the desk's time zone (`EngineConfig.time_zone`):

- arrived: sessions that entered the queue (started there, transferred or moved in);
- offered / rejected / timed_out: offers made from it and how they were declined;
- accepted: sessions answered from it (by offer or by hand), with their wait, measured
  from the time they entered the queue;
- abandoned: sessions the customer ended while they waited in it;
- moved: sessions a waiting rule moved out of it to its overflow queue;
- transferred: sessions transferred out of it by hand (a rep's or a supervisor's
  transfer), while they waited in it or were handled from it;
- service level: of the sessions answered or abandoned, the share answered within the
  queue's threshold (a team's `service_level_threshold`, the desk's for personal queues
  and the general queue);
- handled: sessions whose handling ended (ended, transferred away or returned to a
  queue), with the time from their acceptance, counted against the queue they were
  accepted from: the average handle time.

A window of W minutes at time t holds the bucket of t's minute and the W - 1 minutes
before it. Per rep it keeps the state the rep is in and since when; waiting counts and
the longest current wait come from the queues themselves (`views.statistics`).
"""

from __future__ import annotations

import datetime
import functools
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from . import capacity
from .events import (
    Event,
    OfferDeclined,
    OfferMade,
    SessionAccepted,
    SessionDequeued,
    SessionEnded,
    SessionQueued,
)
from .model import (
    GENERAL_QUEUE,
    EndReason,
    Origin,
    QueueKind,
    QueueRef,
    Rep,
    Team,
    personal_queue,
    team_queue,
)

if TYPE_CHECKING:
    from .state import State

BUCKET = 60.0  # seconds per bucket of the sliding windows
WINDOWS = (15, 60)  # minutes
HISTORY = max(WINDOWS)  # buckets kept per queue

# Counter slots, per queue and bucket.
(
    ARRIVED,
    OFFERED,
    ACCEPTED,
    REJECTED,
    TIMED_OUT,
    ABANDONED,
    MOVED,
    WITHIN_THRESHOLD,
    WAIT_SUM,
    HANDLED,
    HANDLE_SUM,
    TRANSFERRED,
) = range(12)
SLOTS = 12  # (snapshots with fewer slots get the missing ones as 0: __setstate__)
# Events observed and not yet counted, at most (then they are counted at once).
FOLD_AT = 4096
_COUNTED = frozenset(
    {SessionQueued, SessionDequeued, OfferMade, OfferDeclined, SessionAccepted, SessionEnded}
)


class RepState(Enum):
    """What a rep is doing, as a wallboard shows it; the first that applies wins."""

    OFFLINE = "OFFLINE"  # no console: RECONNECTING while the grace holds its sessions
    OFFERED = "OFFERED"  # an offer is waiting for its answer
    BUSY = "BUSY"  # owns or shares sessions
    WRAP_UP = "WRAP_UP"
    AWAY = "AWAY"  # connected, but not taking sessions (a reason says why)
    AVAILABLE = "AVAILABLE"


def rep_state(rep: Rep) -> tuple[RepState, str]:
    """A rep's state and, for AWAY and OFFLINE, why."""
    if not rep.connected:
        return RepState.OFFLINE, "RECONNECTING" if rep.grace_timer is not None else "DISCONNECTED"
    if rep.offer is not None:
        return RepState.OFFERED, ""
    if rep.owned or rep.participating:
        return RepState.BUSY, ""
    if rep.wrap_up_timer is not None:
        return RepState.WRAP_UP, ""
    if rep.locked:
        return RepState.AWAY, "LOCKED"
    if rep.idle:
        return RepState.AWAY, "IDLE"
    if not rep.auto_assign:
        return RepState.AWAY, "MISSED_OFFERS" if rep.opted_out_by_missed_offers else "OPTED_OUT"
    return RepState.AVAILABLE, ""


@functools.lru_cache(maxsize=8)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def day_bounds(t: float, zone: str) -> tuple[float, float]:
    """The midnights (as POSIX times) that begin and end t's day in the time zone."""
    tz = _zone(zone)
    day = datetime.datetime.fromtimestamp(t, tz).date()
    start = datetime.datetime.combine(day, datetime.time(), tz)
    end = datetime.datetime.combine(day + datetime.timedelta(days=1), datetime.time(), tz)
    return start.timestamp(), end.timestamp()


class QueueCounters:
    """One queue's counters: minute buckets for the windows, and today's."""

    __slots__ = ("buckets", "day", "today")

    def __init__(self) -> None:
        self.buckets: deque[tuple[int, list[float]]] = deque()
        self.day = 0.0  # the midnight `today` counts from
        self.today = [0.0] * SLOTS

    def add(self, minute: int, day: float, slot: int, amount: float) -> None:
        buckets = self.buckets
        if not buckets or buckets[-1][0] != minute:
            buckets.append((minute, [0.0] * SLOTS))
            while buckets[0][0] <= minute - HISTORY:
                buckets.popleft()
        buckets[-1][1][slot] += amount
        if day != self.day:
            self.day, self.today = day, [0.0] * SLOTS
        self.today[slot] += amount

    def __setstate__(self, state: tuple[None, dict[str, object]]) -> None:
        """From a snapshot: counters saved with fewer slots (an older build) get the
        missing ones as 0, once, here."""
        for name, value in state[1].items():
            setattr(self, name, value)
        for counts in (self.today, *(c for _, c in self.buckets)):
            if len(counts) < SLOTS:
                counts.extend([0.0] * (SLOTS - len(counts)))

    def window(self, minute: int, minutes: int) -> list[float]:
        total = [0.0] * SLOTS
        for m, counts in reversed(self.buckets):
            if m <= minute - minutes:
                break
            if m <= minute:
                for i, c in enumerate(counts):
                    total[i] += c
        return total


class Statistics:
    """A desk's counters, fed by its events (see the module's docstring).

    Counting is off the command's path: `observe` keeps each counted event with the
    little it needs of the state at that moment (the queue a declined offer came from,
    the threshold an answer is measured against), and `fold` counts them, in order, when
    the statistics are read (`statistics`, `summary`, a snapshot, a queue deleted) or
    once FOLD_AT of them wait. The counts are the same as counting each at once."""

    # Off (the server's `[server] statistics = false`, to measure what they cost),
    # nothing is counted, and a desk that turns them on again counts from then. A class
    # attribute: snapshots of desks written before it existed restore with it on.
    enabled = True

    def __init__(self, zone: str) -> None:
        self.zone = zone
        self.day_start = self.day_end = 0.0  # the day last seen, cached
        self.queues: dict[QueueRef, QueueCounters] = {}
        # Sessions waiting per queue: session id -> when it entered, in order of entry
        # (the first is the longest waiting).
        self.waiting: dict[QueueRef, dict[str, float]] = {}
        # Who is handling what: session id -> (queue accepted from, when).
        self.handling: dict[str, tuple[QueueRef, float]] = {}
        # The session that left a queue last, until the next event says why it left.
        self.left: tuple[str, QueueRef, float] | None = None
        self.reps: dict[str, tuple[RepState, str, float]] = {}  # state, reason, since
        self.touched: set[str] = set()  # reps whose state may have changed
        self.pending: list[tuple[Event, object]] = []  # observed, not yet counted

    def __getstate__(self) -> dict[str, object]:
        """A snapshot holds the counts, never events waiting to be counted."""
        self.fold()
        state = dict(self.__dict__)
        del state["pending"]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self.pending = []

    def _day(self, t: float) -> float:
        if not self.day_start <= t < self.day_end:
            self.day_start, self.day_end = day_bounds(t, self.zone)
        return self.day_start

    def _add(self, queue: QueueRef, t: float, slot: int, amount: float = 1.0) -> None:
        counters = self.queues.get(queue)
        if counters is None:
            counters = self.queues[queue] = QueueCounters()
        counters.add(int(t // BUCKET), self._day(t), slot, amount)

    def observe(self, st: State, e: Event) -> None:
        if not self.enabled:
            return
        kind = type(e)
        if kind not in _COUNTED:
            return
        extra: object = None
        if kind is OfferDeclined:
            s = st.sessions.get(e.session_id)  # type: ignore[attr-defined]
            extra = None if s is None else s.queue
        elif kind is SessionAccepted:
            extra = self.threshold(st, e.queue)  # type: ignore[attr-defined]
        pending = self.pending
        pending.append((e, extra))
        if len(pending) >= FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Counts the events observed so far, in order."""
        pending, self.pending = self.pending, []
        for e, extra in pending:
            self._count(e, extra)

    def _count(self, e: Event, extra: object) -> None:
        kind = type(e)
        if kind is SessionQueued:
            assert isinstance(e, SessionQueued)
            handled = self._stop_handling(e.session_id, e.time)
            if self.left is not None and self.left[0] == e.session_id:
                if e.origin is Origin.WAITING_RULE:
                    self._add(self.left[1], e.time, MOVED)
                elif e.origin is Origin.TRANSFER:
                    self._add(self.left[1], e.time, TRANSFERRED)
                self.left = None
            elif handled is not None and e.origin is Origin.TRANSFER:
                self._add(handled, e.time, TRANSFERRED)
            self.waiting.setdefault(e.queue, {})[e.session_id] = e.time
            self._add(e.queue, e.time, ARRIVED)
        elif kind is SessionDequeued:
            assert isinstance(e, SessionDequeued)
            waiting = self.waiting.get(e.queue)
            entered = waiting.pop(e.session_id, e.time) if waiting else e.time
            self.left = (e.session_id, e.queue, entered)
        elif kind is OfferMade:
            assert isinstance(e, OfferMade)
            self._add(e.queue, e.time, OFFERED)
        elif kind is OfferDeclined:
            assert isinstance(e, OfferDeclined)
            if extra is not None:
                self._add(extra, e.time, TIMED_OUT if e.timed_out else REJECTED)  # type: ignore[arg-type]
        elif kind is SessionAccepted:
            assert isinstance(e, SessionAccepted)
            entered = e.time
            if self.left is not None and self.left[0] == e.session_id:
                entered, self.left = self.left[2], None
            wait = e.time - entered
            self._add(e.queue, e.time, ACCEPTED)
            self._add(e.queue, e.time, WAIT_SUM, wait)
            if wait <= extra:  # type: ignore[operator]
                self._add(e.queue, e.time, WITHIN_THRESHOLD)
            self.handling[e.session_id] = (e.queue, e.time)
        elif kind is SessionEnded:
            assert isinstance(e, SessionEnded)
            if self.left is not None and self.left[0] == e.session_id:
                if e.reason is EndReason.ABANDONED:
                    self._add(self.left[1], e.time, ABANDONED)
                self.left = None
            self._stop_handling(e.session_id, e.time)

    def _stop_handling(self, session_id: str, t: float) -> QueueRef | None:
        """The session's handling ended: the queue it was answered from, if any."""
        handled = self.handling.pop(session_id, None)
        if handled is None:
            return None
        self._add(handled[0], t, HANDLED)
        self._add(handled[0], t, HANDLE_SUM, t - handled[1])
        return handled[0]

    @staticmethod
    def threshold(st: State, queue: QueueRef) -> float:
        if queue.kind is QueueKind.TEAM:
            team = st.teams.get(queue.owner)
            if team is not None:
                return team.settings.service_level_threshold
        return st.config.service_level_threshold

    def settle(self, st: State) -> None:
        """After a command: the state of each rep it touched, and since when."""
        if not self.enabled:
            self.touched.clear()
            return
        reps, now = self.reps, st.now
        for rep_id in self.touched:
            rep = st.reps.get(rep_id)
            if rep is None:
                reps.pop(rep_id, None)
                continue
            state, reason = rep_state(rep)
            held = reps.get(rep_id)
            if held is None or held[0] is not state or held[1] != reason:
                reps[rep_id] = (state, reason, now)
        self.touched.clear()

    def forget_queue(self, queue: QueueRef) -> None:
        """A deleted team's or rep's queue: its counters go with it."""
        self.fold()
        self.queues.pop(queue, None)
        self.waiting.pop(queue, None)


# ---------------------------------------------------------------------- read views


@dataclass(frozen=True, slots=True)
class Counts:
    """A queue's counts over one window; the averages are None when nothing was
    answered (or handled) in it, the service level when nothing was answered or
    abandoned."""

    arrived: int
    offered: int
    accepted: int
    rejected: int
    timed_out: int
    abandoned: int
    moved: int
    transferred: int
    service_level: float | None
    average_speed_of_answer: float | None
    average_handle_time: float | None

    @classmethod
    def of(cls, c: list[float]) -> Counts:
        answered, handled = c[ACCEPTED], c[HANDLED]
        served = answered + c[ABANDONED]
        return cls(
            int(c[ARRIVED]),
            int(c[OFFERED]),
            int(answered),
            int(c[REJECTED]),
            int(c[TIMED_OUT]),
            int(c[ABANDONED]),
            int(c[MOVED]),
            int(c[TRANSFERRED]),
            c[WITHIN_THRESHOLD] / served if served else None,
            c[WAIT_SUM] / answered if answered else None,
            c[HANDLE_SUM] / handled if handled else None,
        )


@dataclass(frozen=True, slots=True)
class QueueStatistics:
    queue: QueueRef
    waiting: int
    longest_wait: float  # seconds the longest waiting session has been in it (0: none)
    threshold: float  # the service level's threshold, seconds
    last_15_minutes: Counts
    last_hour: Counts
    today: Counts
    arrivals: tuple[int, ...]  # per minute over the last hour, oldest first
    overdue_after: float | None = None  # the team's waiting rule, seconds (None: no rule)


@dataclass(frozen=True, slots=True)
class RepStatistics:
    rep_id: str
    name: str
    state: RepState
    reason: str  # for AWAY and OFFLINE
    since: float
    load: int
    teams: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ChannelUse:
    channel: str
    sessions: int  # sessions of the channel the team's members signed in hold
    units: int  # the capacity units they use (members with a capacity profile)


@dataclass(frozen=True, slots=True)
class TeamStatistics:
    team_id: str
    name: str
    staffed: int  # members signed in
    available: int
    busy: int  # members handling sessions (an offer pending counts too)
    capacity_units: int = 0  # units of the members signed in with a capacity profile
    channels: tuple[ChannelUse, ...] = ()  # per channel in hand, by name


@dataclass(frozen=True, slots=True)
class DeskStatistics:
    time: float
    day_start: float  # the midnight "today" counts from, in the desk's time zone
    queues: tuple[QueueStatistics, ...]
    reps: tuple[RepStatistics, ...]
    teams: tuple[TeamStatistics, ...]


def _add_up(rows: list[list[float]]) -> list[float]:
    return [sum(column) for column in zip(*rows, strict=True)] if rows else [0.0] * SLOTS


def _queue_row(
    st: State, queue: QueueRef, parts: list[QueueRef], minute: int, day: float
) -> QueueStatistics:
    """The statistics of `queue`, made of the counters of the queues in `parts` (one,
    or all personal queues together)."""
    stats, now = st.stats, st.now
    counters = [c for c in map(stats.queues.get, parts) if c is not None]
    waitings = [w for w in map(stats.waiting.get, parts) if w]
    oldest = min((next(iter(w.values())) for w in waitings), default=None)
    arrivals = dict.fromkeys(range(minute - HISTORY + 1, minute + 1), 0)
    for c in counters:
        for m, counts in c.buckets:
            if m in arrivals:
                arrivals[m] += int(counts[ARRIVED])
    return QueueStatistics(
        queue,
        sum(map(len, waitings)),
        now - oldest if oldest is not None else 0.0,
        stats.threshold(st, queue),
        Counts.of(_add_up([c.window(minute, WINDOWS[0]) for c in counters])),
        Counts.of(_add_up([c.window(minute, WINDOWS[1]) for c in counters])),
        Counts.of(_add_up([c.today for c in counters if c.day == day])),
        tuple(arrivals.values()),
        _overdue_after(st, queue),
    )


def _overdue_after(st: State, queue: QueueRef) -> float | None:
    team = st.teams.get(queue.owner) if queue.kind is QueueKind.TEAM else None
    rule = None if team is None else team.settings.waiting_rule
    return None if rule is None else rule.overdue_after


def _team_rows(st: State, teams: list[Team], reps: list[RepStatistics]) -> list[TeamStatistics]:
    counts = {t.id: [0, 0, 0] for t in teams}  # staffed, available, busy
    for row in reps:
        for team_id in row.teams:
            c = counts.get(team_id)
            if c is not None:
                c[0] += row.state is not RepState.OFFLINE
                c[1] += row.state is RepState.AVAILABLE
                c[2] += row.state is RepState.BUSY or row.state is RepState.OFFERED
    rows = []
    for t in teams:
        units_total = 0
        use: dict[str, list[int]] = {}  # channel -> [sessions, units]
        for rep_id in t.members:
            rep = st.reps[rep_id]
            if not rep.connected:
                continue
            if rep.permissions.capacity is not None:
                units_total += rep.permissions.capacity.total
                for channel, (n, units) in capacity.in_use(st, rep).items():
                    u = use.setdefault(channel, [0, 0])
                    u[0], u[1] = u[0] + n, u[1] + units
            else:
                for sid in rep.owned | rep.participating:
                    use.setdefault(st.sessions[sid].service_channel, [0, 0])[0] += 1
        channels = tuple(ChannelUse(ch, n, u) for ch, (n, u) in sorted(use.items()))
        staffed, available, busy = counts[t.id]
        rows.append(TeamStatistics(t.id, t.name, staffed, available, busy, units_total, channels))
    return rows


def _rep_rows(st: State, members: list[Rep]) -> list[RepStatistics]:
    held, now = st.stats.reps, st.now
    rows = []
    for r in members:
        state, reason, since = held.get(r.id) or (*rep_state(r), now)
        rows.append(
            RepStatistics(r.id, r.name, state, reason, since, r.load, tuple(sorted(r.teams)))
        )
    return rows


def statistics(st: State, team_ids: frozenset[str] | None = None) -> DeskStatistics:
    """The desk's statistics now; with `team_ids`, those teams, their queues, their
    members and their members' personal queues (a supervisor's scope). Personal queues
    are listed once anything happened in them."""
    stats, now = st.stats, st.now
    stats.fold()
    minute = int(now // BUCKET)
    day, _ = day_bounds(now, stats.zone)
    teams = [t for t in st.teams.values() if team_ids is None or t.id in team_ids]
    members = [r for r in st.reps.values() if team_ids is None or not team_ids.isdisjoint(r.teams)]
    refs = [team_queue(t.id) for t in teams]
    refs += [
        q
        for q in map(personal_queue, (r.id for r in members))
        if q in stats.queues or stats.waiting.get(q)
    ]
    if team_ids is None:
        refs.append(GENERAL_QUEUE)
    queues = tuple(_queue_row(st, q, [q], minute, day) for q in refs)
    reps = _rep_rows(st, members)
    return DeskStatistics(now, day, queues, tuple(reps), tuple(_team_rows(st, teams, reps)))


ALL_PERSONAL = QueueRef(QueueKind.PERSONAL, "")  # every personal queue, added up


@dataclass(frozen=True, slots=True)
class QueueTotals:
    """A queue now and since midnight: the counter slots of `today` (ARRIVED ...
    HANDLE_SUM), in the order of the module's slot constants."""

    queue: QueueRef
    waiting: int
    longest_wait: float
    today: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class DeskSummary:
    """The whole desk in few numbers (the server's metrics): the teams' queues, the
    general queue and every personal queue added up as one (ALL_PERSONAL); how many
    reps are in each state; per team, members staffed, available and busy."""

    time: float
    queues: tuple[QueueTotals, ...]
    reps: dict[RepState, int]
    teams: dict[str, tuple[int, int, int]]


def summary(st: State) -> DeskSummary:
    """Cheap enough to take at every scrape of a desk of thousands of queues and reps:
    no windows, no per-rep rows."""
    stats, now = st.stats, st.now
    stats.fold()
    day, _ = day_bounds(now, stats.zone)

    def totals(queue: QueueRef, parts: list[QueueRef]) -> QueueTotals:
        counters = [c for c in map(stats.queues.get, parts) if c is not None and c.day == day]
        waitings = [w for w in map(stats.waiting.get, parts) if w]
        oldest = min((next(iter(w.values())) for w in waitings), default=None)
        return QueueTotals(
            queue,
            sum(map(len, waitings)),
            now - oldest if oldest is not None else 0.0,
            tuple(_add_up([c.today for c in counters])),
        )

    counted, waiting, zero = stats.queues, stats.waiting, (0.0,) * SLOTS

    def one(queue: QueueRef) -> QueueTotals:  # totals() of one queue, as a scrape needs
        c, w = counted.get(queue), waiting.get(queue)
        return QueueTotals(
            queue,
            len(w) if w else 0,
            now - next(iter(w.values())) if w else 0.0,
            tuple(c.today) if c is not None and c.day == day else zero,
        )

    personal = [q for q in {*stats.queues, *stats.waiting} if q.kind is QueueKind.PERSONAL]
    queues = [one(team_queue(t)) for t in st.teams]
    queues.append(one(GENERAL_QUEUE))
    queues.append(totals(ALL_PERSONAL, personal))
    states = dict.fromkeys(RepState, 0)
    teams = {t: [0, 0, 0] for t in st.teams}  # staffed, available, busy
    held = stats.reps
    for r in st.reps.values():
        known = held.get(r.id)
        state = known[0] if known is not None else rep_state(r)[0]
        states[state] += 1
        if state is RepState.OFFLINE:
            continue
        available = state is RepState.AVAILABLE
        busy = state is RepState.BUSY or state is RepState.OFFERED
        for team_id in r.teams:
            c = teams.get(team_id)
            if c is not None:
                c[0] += 1
                c[1] += available
                c[2] += busy
    return DeskSummary(
        now, tuple(queues), states, {t: (c[0], c[1], c[2]) for t, c in teams.items()}
    )
