"""The routing engine: single-writer owner of one desk's routing state.

Every public command validates its whole input first, then applies, then runs the
assignment pass if anything it did can change the pass's result (rule 5), and returns
an `Outcome` with the events it caused. A command that raises a `DomainError` has
changed nothing. Timers (offer deadlines, waiting rules, idle, wrap-up, reconnect
grace, key expiry) live in one heap; `advance()` fires what is due in deadline order,
and every command first catches up with the clock the same way.

The engine never reads the wall clock: time comes from the injected `clock` callable.
It is not thread-safe: call it from one thread (the server's event loop).
"""

from __future__ import annotations

import random
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from enum import Enum
from functools import wraps
from typing import Any, cast

import numpy as np

from . import validation as v
from .columns import (
    FLAG_IDLE,
    FLAG_LOCKED,
    FLAG_OFFLINE,
    FLAG_OPTED_OUT,
    FLAG_PENDING_OFFER,
    FLAG_REMOVED,
    FLAG_WRAP_UP,
    INELIGIBLE,
    MAX_AVAIL_TICKS,
    NO_CAP,
    RepTable,
    SessionTable,
    TeamTable,
)
from .errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    shown,
)
from .events import (
    ChatMessagePosted,
    DirectoryChanged,
    EligibilityChanged,
    Event,
    InvitationCreated,
    InvitationRemoved,
    OfferDeclined,
    OfferMade,
    OfferRescinded,
    OwnershipChanged,
    ParticipantJoined,
    ParticipantLeft,
    PresenceChanged,
    RepSettingsChanged,
    SessionAccepted,
    SessionDequeued,
    SessionEnded,
    SessionOverdue,
    SessionQueued,
)
from .kernel import Kernel
from .model import (
    GENERAL_QUEUE,
    Algorithm,
    Channel,
    ChatMessage,
    Customer,
    EndReason,
    HelpLink,
    IneligibleReason,
    Invitation,
    IssueType,
    Move,
    Offer,
    Origin,
    Permissions,
    QueueKind,
    QueueRef,
    QueueSettings,
    Rep,
    RescindReason,
    RuleAction,
    Session,
    SessionKey,
    SessionState,
    SupportButton,
    Target,
    Team,
    TeamKind,
    WaitingRule,
    personal_queue,
    team_queue,
)
from .queue_order import (
    INVITATION,
    NOT_READY,
    PARKED,
    READY,
    SLOT_MASK,
    QueueIndex,
    rule4_key,
)
from .timers import Timers

KEY_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read out over the phone
# Ids that leave the engine (sessions, offers, invitations): a kind prefix and 100 random
# bits in hex, so they cannot be guessed and are never reused, across
# restarts included. Order never comes from an id (sessions carry a seq for that).
ID_BITS = 100  # 25 hex digits
ID_PREFIX = {"session": "ses_", "offer": "off_", "invitation": "inv_"}
_ALG_NONE = int(Algorithm.NONE)
_NO_REASONS: frozenset[IneligibleReason] = frozenset()
_NO_POOL = np.zeros(0, dtype=np.int32)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    reconnect_grace: float = 30.0
    max_rule_moves: int = 10
    session_key_ttl: float = 7200.0
    session_key_length: int = 8  # 32**8 ~ 1.1e12 keys
    key_failures_allowed: int = 10  # failed redemptions per customer address per window
    key_failures_per_portal: int = 1000  # failed redemptions per intake portal per window
    key_failure_window: float = 60.0
    general_queue_enabled: bool = True
    chat_history: int = 500
    ended_retention: float = 3600.0  # an ended session is forgotten this long after


@dataclass(slots=True)
class Outcome:
    """What a command did: the events it caused (in order) and its result, if any."""

    events: list[Event]
    value: Any = None


@dataclass(frozen=True, slots=True)
class QueueSummary:
    queue: QueueRef
    name: str
    sessions: int
    invitations: int
    favourite: bool = False
    unread_chat: bool = False


@dataclass(frozen=True, slots=True)
class QueueItem:
    """A session or an invitation as it is listed in a queue."""

    id: str
    session: Session
    invitation: Invitation | None = None


class _KeyGuard:
    """Failed session-key redemptions, counted per customer address (behind a portal)
    and per portal, to make guessing impractical without letting one guesser lock out
    everyone behind the same portal.

    Security accounting, not routing state: a refused redemption is recorded here (that
    is its purpose), and this is the one thing a refused command may change."""

    def __init__(self, per_address: int, per_portal: int, window: float) -> None:
        self.per_address, self.per_portal, self.window = per_address, per_portal, window
        self.failures: dict[tuple[str, str], deque[float]] = {}

    def _count(self, who: tuple[str, str], now: float) -> int:
        log = self.failures.get(who)
        if log is None:
            return 0
        while log and log[0] <= now - self.window:
            log.popleft()
        if not log:
            del self.failures[who]
        return len(log)

    def check(self, portal: str, address: str, now: float) -> None:
        if (
            self._count((portal, address), now) >= self.per_address
            or self._count((portal, ""), now) >= self.per_portal
        ):
            raise ResourceExhausted("too many invalid session keys; try again later")

    def fail(self, portal: str, address: str, now: float) -> None:
        self.failures.setdefault((portal, address), deque()).append(now)
        if address:
            self.failures.setdefault((portal, ""), deque()).append(now)


def command(method: Callable[..., Any]) -> Callable[..., Outcome]:
    """Wraps a public command: catch up with the clock, collect events, run the
    assignment pass if needed, return an Outcome."""

    @wraps(method)
    def run(self: Engine, *args: Any, **kwargs: Any) -> Outcome:
        if self._busy:
            raise RuntimeError("engine commands must not be re-entered (single writer)")
        self._busy = True
        try:
            # Timers due before this command fire first; their events reach the listener
            # but are not this command's.
            self._catch_up(self._clock())
            self._scratch.clear()
            self._events = events = cast(list[Event], [])
            value = method(self, *args, **kwargs)
            if self._dirty:
                self._assign()
        finally:
            self._busy = False
            self._events = self._scratch
        return Outcome(events, value)

    return run


class Engine:
    def __init__(
        self,
        clock: Callable[[], float],
        config: EngineConfig | None = None,
        listener: Callable[[Event], None] | None = None,
        kernel: Kernel | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self.config = config or EngineConfig()
        self._listener = listener
        self.kernel = kernel or Kernel()
        self._rng = rng or secrets.SystemRandom()
        self._now = float(clock())
        self._epoch = self._now  # available_since is counted from here, in microseconds
        self._busy = False
        self._scratch: list[Event] = []
        self._events: list[Event] = self._scratch
        # directory
        self._reps: dict[str, Rep] = {}
        self._rep_by_ord: list[Rep | None] = []
        self._teams: dict[str, Team] = {}
        self._team_by_ord: list[Team | None] = []
        self._skills: dict[str, int] = {}
        self._issue_types: dict[str, IssueType] = {}
        self._buttons: dict[str, SupportButton] = {}
        self._links: dict[str, HelpLink] = {}
        self._keys: dict[str, SessionKey] = {}
        self._key_guard = _KeyGuard(
            self.config.key_failures_allowed,
            self.config.key_failures_per_portal,
            self.config.key_failure_window,
        )
        # routing state
        self._sessions: dict[str, Session] = {}
        self._session_by_slot: list[Session | None] = []
        self._offers: dict[str, Offer] = {}
        # Offers no longer pending, by closing time: answering one is FAILED_PRECONDITION
        # (stale), not NOT_FOUND, for as long as ended sessions are kept.
        self._closed_offers: dict[str, float] = {}
        self._invitations: dict[str, Invitation] = {}
        self._queues: dict[QueueRef, QueueIndex] = {GENERAL_QUEUE: QueueIndex(team=False)}
        self._team_index: list[QueueIndex | None] = []  # by team ordinal
        self._team_eligible: list[int] = []  # eligible members, by team ordinal
        # Teams where an offer may have become possible since the last pass: a session
        # became ready there, or it gained an eligible member (rule 5). Nowhere else can
        # a pass make an offer, since the previous pass left none possible.
        self._dirty: set[int] = set()
        self._inv_by_key: dict[int, str] = {}
        self._reported: dict[str, frozenset[IneligibleReason]] = {}
        # Arrival order of sessions and invitations (rule 4): one sequence for both.
        self._counters = {"seq": 0}
        # columns and timers
        self.reps_table = RepTable(self.kernel)
        self.teams_table = TeamTable(self.kernel)
        self.sessions_table = SessionTable(self.kernel)
        self._timers = Timers()

    # ------------------------------------------------------------------ plumbing

    def _emit(self, event: Event) -> None:
        self._events.append(event)
        if self._listener is not None:
            self._listener(event)

    def _next_seq(self) -> int:
        self._counters["seq"] += 1
        return self._counters["seq"]

    def _next_id(self, kind: str) -> str:
        while True:
            ident = ID_PREFIX[kind] + format(self._rng.getrandbits(ID_BITS), "025x")
            if (
                ident not in self._sessions
                and ident not in self._offers
                and ident not in self._closed_offers
                and ident not in self._invitations
            ):
                return ident

    def _catch_up(self, now: float) -> None:
        now = float(now)
        while True:
            entry = self._timers.pop_due(now)
            if entry is None:
                break
            self._now = max(self._now, entry[0])
            getattr(self, "_on_" + entry[2])(entry[3])
            if self._dirty:
                self._assign()
        self._now = max(self._now, now)

    @property
    def now(self) -> float:
        return self._now

    def next_deadline(self) -> float | None:
        """When the next timer is due (for the server's loop to sleep until)."""
        return self._timers.next_deadline()

    def advance(self, now: float | None = None) -> Outcome:
        """Fire every timer due at or before `now` (default: the clock), in deadline
        order, running the assignment pass after each; returns the events fired."""
        until = self._clock() if now is None else v.seconds("now", now, -1e18, 1e18)
        if self._busy:
            raise RuntimeError("engine commands must not be re-entered (single writer)")
        self._busy = True
        self._events = events = cast(list[Event], [])
        try:
            self._catch_up(until)
            if self._dirty:
                self._assign()
        finally:
            self._busy = False
            self._events = self._scratch
        return Outcome(events)

    # ------------------------------------------------------------------ lookups

    def _rep(self, rep_id: Any, field_name: str = "rep_id") -> Rep:
        rep = self._reps.get(v.ident(field_name, rep_id))
        if rep is None:
            raise NotFound("rep", rep_id)
        return rep

    def _team(self, team_id: Any, field_name: str = "team_id") -> Team:
        team = self._teams.get(v.ident(field_name, team_id))
        if team is None:
            raise NotFound("team", team_id)
        return team

    def _session(self, session_id: Any) -> Session:
        s = self._sessions.get(v.ident("session_id", session_id))
        if s is None:
            raise NotFound("session", session_id)
        return s

    def _queue_ref(self, field_name: str, queue: Any) -> QueueRef:
        if not isinstance(queue, QueueRef) or not isinstance(queue.kind, QueueKind):
            raise InvalidArgument(field_name, "must be a queue reference")
        if queue.kind is QueueKind.GENERAL:
            return GENERAL_QUEUE
        if queue.kind is QueueKind.TEAM:
            self._team(queue.owner, f"{field_name}.team_id")
        else:
            self._rep(queue.owner, f"{field_name}.rep_id")
        return queue

    def can_see(self, rep: Rep, queue: QueueRef) -> bool:
        if queue.kind is QueueKind.PERSONAL:
            return queue.owner == rep.id
        if queue.kind is QueueKind.TEAM:
            return queue.owner in rep.teams
        return rep.permissions.may_use_general_queue and self.config.general_queue_enabled

    # ------------------------------------------------------------------ rep state sync

    def _reasons(self, rep: Rep) -> frozenset[IneligibleReason]:
        cap = rep.permissions.max_concurrent_sessions
        if (
            rep.connected
            and not (rep.locked or rep.idle)
            and rep.auto_assign
            and rep.wrap_up_timer is None
            and (not cap or rep.load < cap)
        ):
            return _NO_REASONS  # the common case, without building a set
        reasons = set()
        if not rep.connected:
            reasons.add(IneligibleReason.OFFLINE)
        if rep.locked:
            reasons.add(IneligibleReason.LOCKED)
        if rep.idle:
            reasons.add(IneligibleReason.IDLE)
        if not rep.auto_assign:
            reasons.add(
                IneligibleReason.MISSED_OFFERS
                if rep.opted_out_by_missed_offers
                else IneligibleReason.OPTED_OUT
            )
        if rep.wrap_up_timer is not None:
            reasons.add(IneligibleReason.WRAP_UP)
        if cap and rep.load >= cap:
            reasons.add(IneligibleReason.AT_MAX_LOAD)
        return frozenset(reasons)

    def _sync_rep(self, rep: Rep, load_changed: bool = False) -> None:
        """Write a rep's presence, settings, load and offer into the columns; stamp
        available_since when it becomes eligible or its load changes; tell the console
        when the reasons it is ineligible change; ask for a pass when it is eligible."""
        table, o = self.reps_table, rep.ordinal
        was_eligible = rep.eligible
        flags = (
            (0 if rep.connected else FLAG_OFFLINE)
            | (FLAG_LOCKED if rep.locked else 0)
            | (FLAG_IDLE if rep.idle else 0)
            | (0 if rep.auto_assign else FLAG_OPTED_OUT)
            | (FLAG_WRAP_UP if rep.wrap_up_timer is not None else 0)
            | (FLAG_PENDING_OFFER if rep.offer is not None else 0)
        )
        table.flags[o] = flags
        table.load[o] = rep.load
        table.cap[o] = rep.permissions.max_concurrent_sessions or NO_CAP
        table.refresh(o)
        eligible = table.rank_key[o] != INELIGIBLE
        if load_changed or (eligible and not was_eligible):
            table.set_available(o, self._available_ticks())
        if eligible != was_eligible:
            rep.eligible = eligible
            for team_id in rep.teams:
                t = self._teams[team_id].ordinal
                self._team_eligible[t] += 1 if eligible else -1
                if eligible:
                    self._gained(t)
        reasons = self._reasons(rep)
        if reasons != self._reported.get(rep.id):
            self._reported[rep.id] = reasons
            self._emit(EligibilityChanged(self._now, rep.id, not reasons, reasons))

    def _available_ticks(self) -> int:
        """available_since as integer microseconds since the engine's epoch: exact ties
        stay ties, and load and availability fold into one int64 rank key."""
        ticks = round((self._now - self._epoch) * 1e6)
        if ticks > MAX_AVAIL_TICKS:  # after ~8.9 years: move the epoch, keep the order
            self._epoch += self.reps_table.rebase() / 1e6
            ticks = round((self._now - self._epoch) * 1e6)
        return min(ticks, MAX_AVAIL_TICKS)

    def _gained(self, team_ord: int) -> None:
        """Team `team_ord` has a new eligible member: what its eligible members had all
        declined may be offered again, and a pass must look at it."""
        index = self._team_index[team_ord]
        assert index is not None
        for key in index.unpark():
            session = self._session_by_slot[key & SLOT_MASK]
            assert session is not None
            session.pool = READY
        self._dirty.add(team_ord)

    def _leave_pool(self, s: Session, team_ord: int) -> None:
        """The session is no longer among team `team_ord`'s ready or parked sessions."""
        if s.pool == NOT_READY:
            return
        index = self._team_index[team_ord]
        assert index is not None and index.ready is not None and index.parked is not None
        if s.pool == READY:
            index.ready.remove(s.key)
        else:
            del index.parked[s.key]
        s.pool = NOT_READY

    def _sync_slot(self, s: Session) -> None:
        """Expose a session to the kernel iff it waits, without an offer, in a team
        queue, and keep it among that queue's ready sessions exactly then."""
        table = self.sessions_table
        was = int(table.team[s.slot])
        team_ord = -1
        if (
            s.state is SessionState.WAITING
            and s.queue is not None
            and s.queue.kind is QueueKind.TEAM
        ):
            team_ord = self._teams[s.queue.owner].ordinal
        table.team[s.slot] = team_ord
        table.decl_cnt[s.slot] = len(s.declined_by)
        if team_ord != was:
            self._leave_pool(s, was)
        if team_ord >= 0 and s.pool == NOT_READY:
            index = self._team_index[team_ord]
            assert index is not None and index.ready is not None
            index.ready.add(s.key)
            s.pool = READY
            self._dirty.add(team_ord)

    # ------------------------------------------------------------------ the pass

    def _assign(self) -> None:
        """Rules 1-5: one kernel pass over the ready sessions that can be offered now, in
        rule-4 order across queues.

        Only teams marked dirty since the last pass can yield an offer. Of each such team
        with an eligible member, the pass needs only the head of its ready sessions: up
        to as many undeclined sessions as it has eligible members (each takes one, or the
        team runs out), with the declined ones among them. The heads of all these teams,
        merged in rule-4 order, are the kernel's log, so the cost follows the offers and
        the queues touched, not the sessions waiting. Declined sessions that no eligible
        member could take are parked until their team gains an eligible member."""
        dirty, self._dirty = self._dirty, set()
        rt, st = self.reps_table, self.sessions_table
        if rt.n_eligible == 0:
            return  # nobody can take anything; the teams will be marked again
        algorithms = self.teams_table.alg
        heads: list[int] = []
        considered: list[int] = []
        for t in dirty:
            need = self._team_eligible[t]
            index = self._team_index[t]
            if need <= 0 or index is None or algorithms[t] == _ALG_NONE:
                continue
            considered.append(t)
            assert index.ready is not None
            for key in index.ready:
                heads.append(key)
                if st.decl_cnt[key & SLOT_MASK] == 0:
                    need -= 1
                    if need == 0:
                        break
        if not heads:
            return
        heads.sort()
        slot_list = [k & SLOT_MASK for k in heads]
        pool: list[int] = []
        for slot in slot_list:
            s = self._session_by_slot[slot]
            assert s is not None
            if s.declined_by:
                ords = [self._reps[r].ordinal for r in s.declined_by if r in self._reps]
                st.decl_off[slot] = len(pool)
                st.decl_cnt[slot] = len(ords)
                pool.extend(ords)
        slots, reps = self.kernel.assign_batch(
            np.array(slot_list, dtype=np.int64),
            st.seq[slot_list],
            np.array(pool, dtype=np.int32) if pool else _NO_POOL,
            min(len(heads), rt.n_eligible),
            rt.n_eligible,
        )
        rt.offers_made(len(slots))
        for slot, rep_ord in zip(slots.tolist(), reps.tolist(), strict=True):
            session = self._session_by_slot[slot]
            rep = self._rep_by_ord[rep_ord]
            assert session is not None and rep is not None
            self._make_offer(session, rep)
        self._park(heads, considered)

    def _park(self, heads: list[int], considered: list[int]) -> None:
        """After a pass: in a team that still has an eligible member, the pass looked at
        every head (it never ran out of reps there), so a head still ready was declined
        by every eligible member. It waits, parked, until the team gains one."""
        open_teams = {t for t in considered if self._team_eligible[t] > 0}
        if not open_teams:
            return
        for key in heads:
            s = self._session_by_slot[key & SLOT_MASK]
            if s is None or s.pool != READY or s.key != key:
                continue
            t = int(self.sessions_table.team[s.slot])
            if t in open_teams:
                index = self._team_index[t]
                assert index is not None and index.ready is not None
                assert index.parked is not None
                index.ready.remove(key)
                index.parked[key] = None
                s.pool = PARKED

    def _make_offer(self, s: Session, rep: Rep) -> None:
        assert s.queue is not None
        team = self._teams[s.queue.owner]
        offer = Offer(
            self._next_id("offer"),
            s.id,
            rep.id,
            self._now + team.settings.offer_timeout,
            rep.audible_alerts,
        )
        offer.timer = self._timers.schedule(offer.deadline, "offer_deadline", offer.id)
        self._offers[offer.id] = offer
        s.state, s.offer, rep.offer = SessionState.OFFERED, offer.id, offer.id
        self._sync_slot(s)
        self._sync_rep(rep)
        self._emit(
            OfferMade(self._now, offer.id, s.id, rep.id, s.queue, offer.deadline, offer.audible)
        )

    def _close_offer(self, offer: Offer) -> tuple[Session, Rep]:
        self._timers.cancel(offer.timer)
        del self._offers[offer.id]
        closed = self._closed_offers
        closed[offer.id] = self._now
        horizon = self._now - self.config.ended_retention
        while closed:
            oldest = next(iter(closed))
            if closed[oldest] > horizon:
                break
            del closed[oldest]
        s, rep = self._sessions[offer.session_id], self._reps[offer.rep_id]
        s.offer = rep.offer = None
        if s.state is SessionState.OFFERED:
            s.state = SessionState.WAITING
        return s, rep

    def _rescind(self, s: Session, reason: RescindReason) -> None:
        if s.offer is None:
            return
        offer = self._offers[s.offer]
        s, rep = self._close_offer(offer)
        self._sync_slot(s)
        self._sync_rep(rep)
        self._emit(OfferRescinded(self._now, offer.id, s.id, rep.id, reason))

    def _decline(self, offer: Offer, timed_out: bool) -> None:
        s, rep = self._close_offer(offer)
        s.declined_by += (rep.id,)
        rep.missed_offers += 1
        assert s.queue is not None and s.queue.kind is QueueKind.TEAM
        limit = self._teams[s.queue.owner].settings.max_missed_offers
        self._emit(OfferDeclined(self._now, offer.id, s.id, rep.id, timed_out))
        if limit and rep.missed_offers >= limit and rep.auto_assign:
            rep.auto_assign, rep.opted_out_by_missed_offers, rep.missed_offers = False, True, 0
            self._emit(RepSettingsChanged(self._now, rep.id, False, rep.audible_alerts))
        self._sync_slot(s)
        self._sync_rep(rep)

    # ------------------------------------------------------------------ queues

    def _enqueue(self, s: Session, queue: QueueRef, origin: Origin) -> None:
        s.queue, s.origin, s.state = queue, origin, SessionState.WAITING
        s.queued_time = self._now
        s.entry_seq += 1
        s.overdue_alerted = False
        if s.first_queue is None:
            s.first_queue, s.first_origin = queue, origin
        else:
            s.moves += (Move(queue, self._now, origin),)
        self._queues[queue].add_session(s.key)
        if queue.kind is QueueKind.TEAM:
            rule = self._teams[queue.owner].settings.waiting_rule
            if rule is not None:
                s.rule_timer = self._timers.schedule(
                    self._now + rule.overdue_after, "waiting_rule", (s.id, s.entry_seq)
                )
        self._sync_slot(s)
        self._emit(SessionQueued(self._now, s.id, queue, origin))

    def _dequeue(self, s: Session) -> QueueRef:
        queue = s.queue
        assert queue is not None
        self._queues[queue].remove_session(s.key)
        # Leaving a queue leaves its pools: back in one (even the same), a session is
        # ready afresh, since a transfer clears what parked it.
        self._leave_pool(s, int(self.sessions_table.team[s.slot]))
        self.sessions_table.team[s.slot] = -1
        self._timers.cancel(s.rule_timer)
        s.rule_timer = None
        s.queue = None
        self._emit(SessionDequeued(self._now, s.id, queue))
        return queue

    def _withdraw_invitations(self, s: Session) -> None:
        for inv_id in s.invitations:
            inv = self._invitations.pop(inv_id)
            self._queues[inv.queue].remove_invitation(inv.key)
            del self._inv_by_key[inv.key]
            self._emit(InvitationRemoved(self._now, inv_id, s.id, inv.queue, None))
        s.invitations = ()

    def _activate(self, s: Session, rep: Rep, via_offer: bool) -> None:
        """The session becomes ACTIVE with `rep` as owner (offer accept or manual)."""
        if s.offer is not None:
            offer = self._offers[s.offer]
            if offer.rep_id == rep.id:
                self._close_offer(offer)
            else:
                self._rescind(s, RescindReason.ACCEPTED_BY_OTHER)
        queue = self._dequeue(s)
        s.state, s.owner, s.accepted_from = SessionState.ACTIVE, rep.id, queue
        rep.owned = rep.owned | {s.id}
        if via_offer:
            rep.missed_offers = 0
        self._sync_slot(s)
        self._sync_rep(rep, load_changed=True)
        self._emit(SessionAccepted(self._now, s.id, rep.id, queue, via_offer))

    def _release(self, s: Session, rep_id: str) -> None:
        rep = self._reps[rep_id]
        rep.owned = rep.owned - {s.id}
        rep.participating = rep.participating - {s.id}
        self._sync_rep(rep, load_changed=True)

    def _unassign(self, s: Session) -> None:
        """Owner and participants let go of an ACTIVE session (it is about to move)."""
        self._withdraw_invitations(s)
        for rep_id in s.participants:
            self._release(s, rep_id)
            self._emit(ParticipantLeft(self._now, s.id, rep_id))
        s.participants = ()
        if s.owner is not None:
            owner, s.owner = s.owner, None
            self._release(s, owner)

    def _end(self, s: Session, reason: EndReason) -> None:
        if s.offer is not None:
            self._rescind(
                s,
                RescindReason.CANCELLED
                if reason is EndReason.ABANDONED
                else RescindReason.SESSION_ENDED,
            )
        if s.queue is not None:
            self._dequeue(s)
        owner, origin_queue = s.owner, s.accepted_from
        if (
            owner is not None
            and reason is EndReason.COMPLETED
            and origin_queue is not None
            and origin_queue.kind is QueueKind.TEAM
            and origin_queue.owner in self._teams
        ):
            # Wrap-up starts before the load drops, so the rep never flickers eligible.
            wrap_up = self._teams[origin_queue.owner].settings.wrap_up
            rep = self._reps[owner]
            if wrap_up > 0:
                self._timers.cancel(rep.wrap_up_timer)
                rep.wrap_up_timer = self._timers.schedule(
                    self._now + wrap_up, "wrap_up_end", rep.id
                )
        self._unassign(s)
        s.state, s.end_reason = SessionState.ENDED, reason
        self._sync_slot(s)
        self.sessions_table.release(s.slot)
        self._session_by_slot[s.slot] = None
        self._timers.schedule(self._now + self.config.ended_retention, "forget_session", s.id)
        self._emit(SessionEnded(self._now, s.id, reason))

    # ------------------------------------------------------------------ timers

    def _on_offer_deadline(self, offer_id: str) -> None:
        offer = self._offers.get(offer_id)
        if offer is not None:
            self._decline(offer, timed_out=True)

    def _on_waiting_rule(self, payload: tuple[str, int]) -> None:
        session_id, entry_seq = payload
        s = self._sessions.get(session_id)
        if s is None or s.entry_seq != entry_seq or s.queue is None:
            return
        s.rule_timer = None
        assert s.queue.kind is QueueKind.TEAM
        rule = self._teams[s.queue.owner].settings.waiting_rule
        if rule is None:
            return
        exhausted = s.rule_moves >= self.config.max_rule_moves
        if rule.action is RuleAction.ALERT or exhausted or rule.overflow is None:
            if not s.overdue_alerted:
                s.overdue_alerted = True
                self._emit(
                    SessionOverdue(
                        self._now, s.id, s.queue, rule.action is RuleAction.TRANSFER and exhausted
                    )
                )
            return
        self._rescind(s, RescindReason.SESSION_MOVED)
        self._dequeue(s)
        s.rule_moves += 1
        self._enqueue(s, rule.overflow, Origin.WAITING_RULE)

    def _on_idle(self, rep_id: str) -> None:
        rep = self._reps.get(rep_id)
        if rep is None:
            return
        rep.idle_timer = None
        timeout = rep.permissions.idle_timeout
        if not rep.connected or timeout <= 0 or rep.idle:
            return
        due = rep.last_activity + timeout
        if due > self._now:
            rep.idle_timer = self._timers.schedule(due, "idle", rep.id)
            return
        rep.idle = True
        self._rescind_offer_of(rep, RescindReason.IDLE)
        self._emit_presence(rep)
        self._sync_rep(rep)

    def _on_wrap_up_end(self, rep_id: str) -> None:
        rep = self._reps.get(rep_id)
        if rep is not None:
            rep.wrap_up_timer = None
            self._sync_rep(rep)

    def _on_reconnect_grace(self, rep_id: str) -> None:
        rep = self._reps.get(rep_id)
        if rep is not None and not rep.connected:
            rep.grace_timer = None
            self._fall_back(rep)

    def _on_forget_session(self, session_id: str) -> None:
        """Ended sessions are kept for status queries for a while, then dropped, so a
        long-running desk does not grow without bound."""
        s = self._sessions.get(session_id)
        if s is not None and s.state is SessionState.ENDED:
            del self._sessions[session_id]

    def _on_key_expiry(self, key: str) -> None:
        self._keys.pop(key, None)

    def _schedule_idle(self, rep: Rep) -> None:
        self._timers.cancel(rep.idle_timer)
        rep.idle_timer = None
        if rep.connected and rep.permissions.idle_timeout > 0:
            rep.idle_timer = self._timers.schedule(
                rep.last_activity + rep.permissions.idle_timeout, "idle", rep.id
            )

    def _hand_over(self, s: Session, owner: Rep, by_fallback: bool) -> None:
        """Rule 10/11: the owner goes; the participant who joined first owns it now."""
        heir, s.participants = s.participants[0], s.participants[1:]
        s.owner = heir
        heir_rep = self._reps[heir]
        heir_rep.participating = heir_rep.participating - {s.id}
        heir_rep.owned = heir_rep.owned | {s.id}
        owner.owned = owner.owned - {s.id}
        self._emit(OwnershipChanged(self._now, s.id, owner.id, heir, by_fallback))

    def _part(self, s: Session, rep: Rep) -> None:
        """A participant leaves a shared session."""
        s.participants = tuple(p for p in s.participants if p != rep.id)
        rep.participating = rep.participating - {s.id}
        self._emit(ParticipantLeft(self._now, s.id, rep.id))

    def _fall_back(self, rep: Rep) -> None:
        """Rule 11: a rep who is gone hands on what they owned, and leaves the rest."""
        for sid in sorted(rep.owned, key=lambda i: self._sessions[i].seq):
            s = self._sessions[sid]
            if s.participants:
                self._hand_over(s, rep, by_fallback=True)
                continue
            self._unassign(s)
            target = s.accepted_from
            if target is None or target not in self._queues:
                target = GENERAL_QUEUE if self.config.general_queue_enabled else None
            if target is None:
                self._end(s, EndReason.NO_FALLBACK)
            else:
                self._enqueue(s, target, Origin.CONNECTION_LOST)
        for sid in sorted(rep.participating, key=lambda i: self._sessions[i].seq):
            self._part(self._sessions[sid], rep)
        self._sync_rep(rep, load_changed=True)

    def _emit_presence(self, rep: Rep) -> None:
        self._emit(PresenceChanged(self._now, rep.id, rep.connected, rep.locked, rep.idle))

    # ================================================================== directory

    def _skill_ordinal(self, name: str) -> int:
        o = self._skills.get(name)
        if o is None:
            o = self._skills[name] = self.reps_table.add_skill_column()
        return o

    def _write_skills(self, rep: Rep) -> None:
        row = self.reps_table.skills[rep.ordinal]
        row[:] = 0
        for name, level in rep.skills.items():
            row[self._skill_ordinal(name)] = level

    @staticmethod
    def _settings_fields(team_id: str, settings: Any, c: v.Checks) -> None:
        """Queue settings' own fields (no lookups)."""
        if not isinstance(settings, QueueSettings):
            c.add("settings", "must be queue settings")
            return
        if not isinstance(settings.algorithm, Algorithm):
            c.add("settings.algorithm", "unknown algorithm")
        c(v.seconds, "settings.offer_timeout", settings.offer_timeout, 1.0, 3600.0)
        c(v.seconds, "settings.wrap_up", settings.wrap_up, 0.0, 3600.0)
        c(
            v.integer,
            "settings.max_missed_offers",
            settings.max_missed_offers,
            0,
            v.MAX_MISSED_OFFERS,
        )
        rule = settings.waiting_rule
        if rule is None:
            return
        if not isinstance(rule, WaitingRule) or not isinstance(rule.action, RuleAction):
            c.add("settings.waiting_rule", "must be ALERT or TRANSFER")
            return
        c(v.seconds, "settings.waiting_rule.overdue_after", rule.overdue_after, 1.0)
        overflow = rule.overflow
        if rule.action is RuleAction.TRANSFER:
            if overflow is None:
                c.add("settings.waiting_rule.overflow", "required for a TRANSFER rule")
            elif not isinstance(overflow, QueueRef) or not isinstance(overflow.kind, QueueKind):
                c.add("settings.waiting_rule.overflow", "must be a queue reference")
            elif overflow.kind is QueueKind.PERSONAL:
                c.add("settings.waiting_rule.overflow", "must be a team queue or the general queue")
            elif overflow == team_queue(team_id):
                c.add("settings.waiting_rule.overflow", "must be another queue")
            elif overflow.kind is QueueKind.TEAM:
                c(v.ident, "settings.waiting_rule.overflow.team_id", overflow.owner)
        elif overflow is not None:
            c.add("settings.waiting_rule.overflow", "only a TRANSFER rule has an overflow queue")

    def _settings_lookups(self, settings: QueueSettings) -> QueueSettings:
        """What queue settings refer to exists (after their fields are known good)."""
        rule = settings.waiting_rule
        if rule is not None and rule.overflow is not None:
            target = self._queue_ref("settings.waiting_rule.overflow", rule.overflow)
            if target.kind is QueueKind.GENERAL and not self.config.general_queue_enabled:
                raise InvalidArgument(
                    "settings.waiting_rule.overflow", "the general queue is disabled"
                )
        return settings

    @command
    def create_team(
        self,
        team_id: str,
        name: str,
        kind: TeamKind = TeamKind.STANDARD,
        settings: QueueSettings | None = None,
    ) -> Team:
        settings = QueueSettings() if settings is None else settings
        c = v.Checks()
        c(v.ident, "team_id", team_id)
        c(v.text, "name", name, required=True)
        if not isinstance(kind, TeamKind):
            c.add("kind", "must be STANDARD or EMBASSY")
        self._settings_fields(team_id, settings, c)
        c.done()
        self._settings_lookups(settings)
        if team_id in self._teams:
            raise AlreadyExists("team", team_id)
        team = Team(team_id, name, kind, self.teams_table.add(int(settings.algorithm)), settings)
        self._teams[team_id] = team
        self._team_by_ord.append(team)
        index = self._queues[team_queue(team_id)] = QueueIndex(team=True)
        self._team_index.append(index)
        self._team_eligible.append(0)
        self._emit(DirectoryChanged(self._now, "team", team_id, "created"))
        return team

    @command
    def update_team(
        self,
        team_id: str,
        name: str | None = None,
        kind: TeamKind | None = None,
        settings: QueueSettings | None = None,
    ) -> Team:
        c = v.Checks()
        c(v.ident, "team_id", team_id)
        if name is not None:
            c(v.text, "name", name, required=True)
        if kind is not None and not isinstance(kind, TeamKind):
            c.add("kind", "must be STANDARD or EMBASSY")
        if settings is not None:
            self._settings_fields(team_id, settings, c)
        c.done()
        team = self._team(team_id)
        if settings is not None:
            self._settings_lookups(settings)
        team.name = team.name if name is None else name
        team.kind = team.kind if kind is None else kind
        if settings is not None:
            old_rule = team.settings.waiting_rule
            team.settings = settings
            self.teams_table.set_algorithm(team.ordinal, int(settings.algorithm))
            self._dirty.add(team.ordinal)
            if settings.waiting_rule != old_rule:
                self._rearm_waiting_rules(team)
        self._emit(DirectoryChanged(self._now, "team", team_id, "updated"))
        return team

    def _rearm_waiting_rules(self, team: Team) -> None:
        rule = team.settings.waiting_rule
        for key in self._queues[team_queue(team.id)].sessions:
            s = self._session_by_slot[key & SLOT_MASK]
            assert s is not None
            self._timers.cancel(s.rule_timer)
            s.rule_timer = None
            if rule is not None:
                s.rule_timer = self._timers.schedule(
                    max(self._now, s.queued_time + rule.overdue_after),
                    "waiting_rule",
                    (s.id, s.entry_seq),
                )

    @command
    def delete_team(self, team_id: str) -> None:
        team = self._team(team_id)
        queue = team_queue(team_id)
        if len(self._queues[queue]):
            raise FailedPrecondition(f"team {shown(team_id)} still has items in its queue")
        users = [
            f"issue type {shown(i.id)}" for i in self._issue_types.values() if i.team_id == team_id
        ]
        users += [
            f"button {shown(b.id)}" for b in self._buttons.values() if b.target.team_id == team_id
        ]
        users += [
            f"help link {shown(x.id)}" for x in self._links.values() if x.target.team_id == team_id
        ]
        users += [
            f"team {shown(t.id)}"
            for t in self._teams.values()
            if t.settings.waiting_rule and t.settings.waiting_rule.overflow == queue
        ]
        if users:
            raise FailedPrecondition(f"team {shown(team_id)} is still used by " + ", ".join(users))
        for rep_id in sorted(team.members):
            self._leave_team(team, self._reps[rep_id])
        del self._queues[queue]
        del self._teams[team_id]
        self._team_by_ord[team.ordinal] = None
        self._team_index[team.ordinal] = None
        self.teams_table.set_algorithm(team.ordinal, int(Algorithm.NONE))
        self._emit(DirectoryChanged(self._now, "team", team_id, "deleted"))

    @staticmethod
    def _permission_fields(p: Any, c: v.Checks) -> None:
        if not isinstance(p, Permissions):
            c.add("permissions", "must be a permission profile")
            return
        c(
            v.integer,
            "permissions.max_concurrent_sessions",
            p.max_concurrent_sessions,
            0,
            v.MAX_CONCURRENT_SESSIONS,
        )
        c(v.seconds, "permissions.idle_timeout", p.idle_timeout, 0.0)
        for name in (
            "may_get_next",
            "may_opt_out",
            "may_transfer",
            "may_use_general_queue",
            "shown_on_public_site",
        ):
            c(v.flag, f"permissions.{name}", getattr(p, name))

    def _teams_exist(self, team_ids: list[str]) -> None:
        for i, t in enumerate(team_ids):
            self._team(t, f"teams[{i}]")

    @command
    def create_rep(
        self,
        rep_id: str,
        name: str,
        skills: Mapping[str, int] | None = None,
        permissions: Permissions | None = None,
        teams: Iterable[str] = (),
        auto_assign: bool = True,
        audible_alerts: bool = True,
    ) -> Rep:
        perms = Permissions() if permissions is None else permissions
        c = v.Checks()
        c(v.ident, "rep_id", rep_id)
        c(v.text, "name", name, required=True)
        skill_map = c(v.skill_levels, "skills", {} if skills is None else skills)
        self._permission_fields(perms, c)
        team_ids = c(v.id_list, "teams", teams, v.MAX_TEAMS_PER_REP)
        c(v.flag, "auto_assign", auto_assign)
        c(v.flag, "audible_alerts", audible_alerts)
        c.done()
        self._teams_exist(team_ids)
        if not auto_assign and not perms.may_opt_out:
            raise PermissionDenied("auto_assign can only be off for reps who may opt out")
        if rep_id in self._reps:
            raise AlreadyExists("rep", rep_id)
        rep = Rep(
            rep_id, name, self.reps_table.add(), skill_map, perms, auto_assign, audible_alerts
        )
        self._reps[rep_id] = rep
        self._rep_by_ord.append(rep)
        self._queues[personal_queue(rep_id)] = QueueIndex(team=False)
        self._write_skills(rep)
        for t in team_ids:
            self._join_team(self._teams[t], rep)
        self._sync_rep(rep)
        self._emit(DirectoryChanged(self._now, "rep", rep_id, "created"))
        return rep

    def _join_team(self, team: Team, rep: Rep) -> None:
        team.members.add(rep.id)
        rep.teams.add(team.id)
        rep.chat_read.setdefault(team.id, team.chat_seq)
        self.teams_table.add_member(team.ordinal, rep.ordinal)
        if rep.eligible:
            self._team_eligible[team.ordinal] += 1
            self._gained(team.ordinal)

    def _leave_team(self, team: Team, rep: Rep) -> None:
        if rep.offer is not None:
            s = self._sessions[self._offers[rep.offer].session_id]
            if s.queue == team_queue(team.id):
                self._rescind(s, RescindReason.LEFT_TEAM)
        team.members.discard(rep.id)
        rep.teams.discard(team.id)
        rep.favourites = rep.favourites - {team.id}
        rep.chat_read.pop(team.id, None)
        self.teams_table.remove_member(team.ordinal, rep.ordinal)
        if rep.eligible:
            self._team_eligible[team.ordinal] -= 1

    @command
    def update_rep(
        self,
        rep_id: str,
        name: str | None = None,
        skills: Mapping[str, int] | None = None,
        permissions: Permissions | None = None,
        teams: Iterable[str] | None = None,
    ) -> Rep:
        """Replace the given fields; takes effect on the next assignment pass."""
        c = v.Checks()
        c(v.ident, "rep_id", rep_id)
        if name is not None:
            c(v.text, "name", name, required=True)
        skill_map = None if skills is None else c(v.skill_levels, "skills", skills)
        perms = permissions
        if perms is not None:
            self._permission_fields(perms, c)
        team_ids = None if teams is None else c(v.id_list, "teams", teams, v.MAX_TEAMS_PER_REP)
        c.done()
        rep = self._rep(rep_id)
        if team_ids is not None:
            self._teams_exist(team_ids)
        rep.name = rep.name if name is None else name
        if skill_map is not None:
            rep.skills = skill_map
            self._write_skills(rep)
        if team_ids is not None:
            for t in sorted(rep.teams - set(team_ids)):
                self._leave_team(self._teams[t], rep)
            for t in team_ids:
                if t not in rep.teams:
                    self._join_team(self._teams[t], rep)
        if perms is not None:
            idle_changed = perms.idle_timeout != rep.permissions.idle_timeout
            rep.permissions = perms
            if idle_changed:
                rep.idle = False
                self._schedule_idle(rep)
        self._sync_rep(rep)
        self._emit(DirectoryChanged(self._now, "rep", rep_id, "updated"))
        return rep

    @command
    def add_team_member(self, team_id: str, rep_id: str) -> None:
        team, rep = self._team(team_id), self._rep(rep_id)
        if rep.id in team.members:
            raise AlreadyExists("team membership", f"{team_id}/{rep_id}")
        if len(rep.teams) >= v.MAX_TEAMS_PER_REP:
            raise InvalidArgument("team_id", f"a rep is in at most {v.MAX_TEAMS_PER_REP} teams")
        self._join_team(team, rep)
        self._emit(DirectoryChanged(self._now, "rep", rep_id, "updated"))

    @command
    def remove_team_member(self, team_id: str, rep_id: str) -> None:
        team, rep = self._team(team_id), self._rep(rep_id)
        if rep.id not in team.members:
            raise NotFound("team membership", f"{team_id}/{rep_id}")
        self._leave_team(team, rep)
        self._emit(DirectoryChanged(self._now, "rep", rep_id, "updated"))

    @command
    def delete_rep(self, rep_id: str) -> None:
        rep = self._rep(rep_id)
        if rep.load or rep.grace_timer is not None or len(self._queues[personal_queue(rep_id)]):
            raise FailedPrecondition(f"rep {shown(rep_id)} still has sessions or queue items")
        users = [
            f"button {shown(b.id)}" for b in self._buttons.values() if b.target.rep_id == rep_id
        ]
        users += [
            f"help link {shown(x.id)}" for x in self._links.values() if x.target.rep_id == rep_id
        ]
        if users:
            raise FailedPrecondition(f"rep {shown(rep_id)} is still used by " + ", ".join(users))
        if rep.connected:  # signed off first: nothing is left for it to own
            self._go_offline(rep, RescindReason.SIGNED_OUT)
        for team_id in sorted(rep.teams):
            self._leave_team(self._teams[team_id], rep)
        for key in [k for k, sk in self._keys.items() if sk.rep_id == rep_id]:
            self._timers.cancel(self._keys.pop(key).timer)
        for timer in (rep.idle_timer, rep.wrap_up_timer):
            self._timers.cancel(timer)
        del self._queues[personal_queue(rep_id)]
        del self._reps[rep_id]
        self._reported.pop(rep_id, None)
        self._rep_by_ord[rep.ordinal] = None
        self.reps_table.set_flag(rep.ordinal, FLAG_REMOVED, True)
        self._emit(DirectoryChanged(self._now, "rep", rep_id, "deleted"))

    def _check_issue_type(self, it: Any) -> IssueType:
        if not isinstance(it, IssueType):
            raise InvalidArgument("issue_type", "must be an issue type")
        c = v.Checks()
        c(v.ident, "issue_type.id", it.id)
        c(v.text, "issue_type.name", it.name, required=True)
        c(v.ident, "issue_type.team_id", it.team_id)
        c(v.required_skills, "issue_type.required_skills", it.required_skills)
        c(v.integer, "issue_type.priority", it.priority, v.MIN_PRIORITY, v.MAX_PRIORITY)
        c.done()
        self._team(it.team_id, "issue_type.team_id")
        return it

    @command
    def create_issue_type(self, issue_type: IssueType) -> IssueType:
        it = self._check_issue_type(issue_type)
        if it.id in self._issue_types:
            raise AlreadyExists("issue type", it.id)
        return self._put_issue_type(it, "created")

    @command
    def update_issue_type(self, issue_type: IssueType) -> IssueType:
        it = self._check_issue_type(issue_type)
        if it.id not in self._issue_types:
            raise NotFound("issue type", it.id)
        return self._put_issue_type(it, "updated")

    def _put_issue_type(self, it: IssueType, change: str) -> IssueType:
        skills = tuple((str(name), int(level)) for name, level in it.required_skills)
        it = IssueType(it.id, it.name, it.team_id, skills, it.priority)
        for skill, _ in it.required_skills:
            self._skill_ordinal(skill)
        self._issue_types[it.id] = it
        self._emit(DirectoryChanged(self._now, "issue_type", it.id, change))
        return it

    @command
    def delete_issue_type(self, issue_type_id: str) -> None:
        if self._issue_types.pop(v.ident("issue_type_id", issue_type_id), None) is None:
            raise NotFound("issue type", issue_type_id)
        self._emit(DirectoryChanged(self._now, "issue_type", issue_type_id, "deleted"))

    @staticmethod
    def _target_fields(field_name: str, target: Any) -> None:
        if not isinstance(target, Target) or bool(target.rep_id) == bool(target.team_id):
            raise InvalidArgument(field_name, "must name exactly one of a rep or a team")
        if target.rep_id:
            v.ident(f"{field_name}.rep_id", target.rep_id)
        else:
            v.ident(f"{field_name}.team_id", target.team_id)

    def _check_target(self, field_name: str, target: Any) -> Target:
        self._target_fields(field_name, target)
        if target.rep_id:
            self._rep(target.rep_id, f"{field_name}.rep_id")
        else:
            self._team(target.team_id, f"{field_name}.team_id")
        return target

    def _entry_table(self, kind: str) -> dict[str, Any]:
        return self._buttons if kind == "support_button" else self._links

    def _put_entry(self, kind: str, entry: Any, create: bool) -> Any:
        cls = SupportButton if kind == "support_button" else HelpLink
        if not isinstance(entry, cls):
            raise InvalidArgument(kind, f"must be a {kind.replace('_', ' ')}")
        c = v.Checks()
        c(v.ident, f"{kind}.id", entry.id)
        c(v.text, f"{kind}.name", entry.name, required=True)
        c(self._target_fields, f"{kind}.target", entry.target)
        c.done()
        self._check_target(f"{kind}.target", entry.target)
        table = self._entry_table(kind)
        if create and entry.id in table:
            raise AlreadyExists(kind.replace("_", " "), entry.id)
        if not create and entry.id not in table:
            raise NotFound(kind.replace("_", " "), entry.id)
        table[entry.id] = entry
        self._emit(DirectoryChanged(self._now, kind, entry.id, "created" if create else "updated"))
        return entry

    def _delete_entry(self, kind: str, entry_id: str) -> None:
        if self._entry_table(kind).pop(v.ident(f"{kind}_id", entry_id), None) is None:
            raise NotFound(kind.replace("_", " "), entry_id)
        self._emit(DirectoryChanged(self._now, kind, entry_id, "deleted"))

    @command
    def create_support_button(self, button: SupportButton) -> SupportButton:
        return self._put_entry("support_button", button, create=True)

    @command
    def update_support_button(self, button: SupportButton) -> SupportButton:
        return self._put_entry("support_button", button, create=False)

    @command
    def delete_support_button(self, button_id: str) -> None:
        self._delete_entry("support_button", button_id)

    @command
    def create_help_link(self, link: HelpLink) -> HelpLink:
        return self._put_entry("help_link", link, create=True)

    @command
    def update_help_link(self, link: HelpLink) -> HelpLink:
        return self._put_entry("help_link", link, create=False)

    @command
    def delete_help_link(self, link_id: str) -> None:
        self._delete_entry("help_link", link_id)

    # ================================================================== intake

    @staticmethod
    def _check_customer(customer: Any, c: v.Checks) -> None:
        if not isinstance(customer, Customer):
            c.violations.append(("customer", "required"))
            return
        c(v.text, "customer.name", customer.name, required=True)
        c(v.text, "customer.company", customer.company)
        c(v.text, "customer.details", customer.details, max_len=v.MAX_TEXT_LEN)

    def _intake_checks(self, customer: Any, portal: Any, *ids: tuple[str, Any]) -> None:
        """Every field of an intake command, before anything is looked up."""
        c = v.Checks()
        for field_name, value in ids:
            c(v.ident, field_name, value)
        self._check_customer(customer, c)
        if portal != "":
            c(v.ident, "portal", portal)
        c.done()

    def _new_session(
        self,
        queue: QueueRef,
        origin: Origin,
        customer: Customer,
        portal: str,
        channel: Channel = Channel.FULL_CLIENT,
        issue_type: IssueType | None = None,
    ) -> Session:
        seq = self._next_seq()
        required = issue_type.required_skills if issue_type else ()
        priority = issue_type.priority if issue_type else 0
        # seq grows with creation time (the clock never goes back), so the table can
        # keep rule-4 order by seq alone.
        slot = self.sessions_table.alloc(
            priority,
            seq,
            [self._skills[name] for name, _ in required],
            [level for _, level in required],
        )
        s = Session(
            self._next_id("session"),
            seq,
            slot,
            customer,
            channel,
            origin,
            issue_type.id if issue_type else "",
            required,
            priority,
            self._now,
            self._now,
            portal=portal,
            key=rule4_key(priority, seq, slot),
        )
        self._sessions[s.id] = s
        if slot == len(self._session_by_slot):
            self._session_by_slot.append(s)
        else:
            self._session_by_slot[slot] = s
        self._enqueue(s, queue, origin)
        return s

    @command
    def start_with_key(
        self, key: str, customer: Customer, portal: str = "", address: str = ""
    ) -> Session:
        """A customer entered a session key a rep generated: the rep's personal queue.
        Unknown, used and expired keys are refused alike. Failures are counted per
        customer `address` behind the `portal`, and per portal."""
        c = v.Checks()
        if not isinstance(key, str) or len(key) > v.MAX_SESSION_KEY_LEN:
            c.violations.append(
                ("key", f"must be a string of at most {v.MAX_SESSION_KEY_LEN} characters")
            )
        self._check_customer(customer, c)
        if portal != "":
            c(v.ident, "portal", portal)
        c(v.text, "address", address, max_len=v.MAX_ADDRESS_LEN)
        c.done()
        self._key_guard.check(portal, address, self._now)
        normalized = key.replace("-", "").replace(" ", "").upper()
        sk = self._keys.get(normalized)
        if sk is None or sk.expires_at <= self._now:
            self._key_guard.fail(portal, address, self._now)
            raise NotFound("session key", "", "session key is not valid")
        del self._keys[normalized]
        self._timers.cancel(sk.timer)
        return self._new_session(personal_queue(sk.rep_id), Origin.SESSION_KEY, customer, portal)

    @command
    def start_with_rep(self, rep_id: str, customer: Customer, portal: str = "") -> Session:
        """The customer picked a rep on the public site."""
        self._intake_checks(customer, portal, ("rep_id", rep_id))
        rep = self._rep(rep_id)
        if not rep.permissions.shown_on_public_site:
            raise NotFound("rep", rep_id)
        return self._new_session(personal_queue(rep.id), Origin.PUBLIC_SITE, customer, portal)

    @command
    def start_from_button(self, button_id: str, customer: Customer, portal: str = "") -> Session:
        self._intake_checks(customer, portal, ("button_id", button_id))
        button = self._buttons.get(button_id)
        if button is None:
            raise NotFound("support button", button_id)
        return self._new_session(button.target.queue, Origin.SUPPORT_BUTTON, customer, portal)

    @command
    def start_from_issue(self, issue_type_id: str, customer: Customer, portal: str = "") -> Session:
        self._intake_checks(customer, portal, ("issue_type_id", issue_type_id))
        it = self._issue_types.get(issue_type_id)
        if it is None:
            raise NotFound("issue type", issue_type_id)
        return self._new_session(
            team_queue(it.team_id), Origin.ISSUE_FORM, customer, portal, issue_type=it
        )

    @command
    def start_from_help_link(self, link_id: str, customer: Customer, portal: str = "") -> Session:
        self._intake_checks(customer, portal, ("link_id", link_id))
        link = self._links.get(link_id)
        if link is None:
            raise NotFound("help link", link_id)
        return self._new_session(
            link.target.queue,
            Origin.HELP_LINK,
            customer,
            portal,
            channel=Channel.BROWSER_SHARING,
        )

    @command
    def start_undesignated(self, customer: Customer, portal: str = "") -> Session:
        """A request meant for no particular team or rep: the general queue."""
        self._intake_checks(customer, portal)
        if not self.config.general_queue_enabled:
            raise FailedPrecondition("the general queue is disabled on this desk")
        return self._new_session(GENERAL_QUEUE, Origin.UNDESIGNATED, customer, portal)

    @command
    def cancel_session(self, session_id: str) -> None:
        """The customer left before or during support."""
        s = self._session(session_id)
        if s.state is SessionState.ENDED:
            raise FailedPrecondition(f"session {shown(session_id)} has already ended")
        self._end(s, EndReason.ABANDONED)

    @command
    def generate_session_key(self, rep_id: str, ttl: float | None = None) -> str:
        rep = self._rep(rep_id)
        ttl = self.config.session_key_ttl if ttl is None else v.seconds("ttl", ttl, 60.0)
        length = self.config.session_key_length
        while True:
            key = "".join(self._rng.choice(KEY_ALPHABET) for _ in range(length))
            if key not in self._keys:
                break
        sk = SessionKey(key, rep.id, self._now + ttl)
        sk.timer = self._timers.schedule(sk.expires_at, "key_expiry", key)
        self._keys[key] = sk
        return key

    # ================================================================== presence

    @command
    def connect(self, rep_id: str) -> None:
        """The rep's console stream opened."""
        rep = self._rep(rep_id)
        if rep.connected:
            raise FailedPrecondition(f"rep {shown(rep_id)} is already connected")
        self._timers.cancel(rep.grace_timer)
        rep.grace_timer = None
        rep.connected, rep.idle, rep.last_activity = True, False, self._now
        self._schedule_idle(rep)
        self._emit_presence(rep)
        self._sync_rep(rep)

    @command
    def disconnect(self, rep_id: str, signed_out: bool = False) -> None:
        """The console went away. A lost connection gets a grace period to come back;
        signing out hands sessions on at once (rule 11)."""
        rep = self._rep(rep_id)
        v.flag("signed_out", signed_out)
        if not rep.connected:
            raise FailedPrecondition(f"rep {shown(rep_id)} is not connected")
        self._go_offline(
            rep, RescindReason.SIGNED_OUT if signed_out else RescindReason.CONNECTION_LOST
        )
        if signed_out:
            self._fall_back(rep)
        elif rep.load:
            rep.grace_timer = self._timers.schedule(
                self._now + self.config.reconnect_grace, "reconnect_grace", rep.id
            )

    def _go_offline(self, rep: Rep, reason: RescindReason) -> None:
        rep.connected = False
        self._timers.cancel(rep.idle_timer)
        rep.idle_timer = None
        self._rescind_offer_of(rep, reason)
        self._emit_presence(rep)
        self._sync_rep(rep)

    def _rescind_offer_of(self, rep: Rep, reason: RescindReason) -> None:
        if rep.offer is not None:
            self._rescind(self._sessions[self._offers[rep.offer].session_id], reason)

    @command
    def set_locked(self, rep_id: str, locked: bool) -> None:
        rep = self._rep(rep_id)
        v.flag("locked", locked)
        if rep.locked != locked:
            rep.locked = locked
            if locked:  # the rep cannot see the offer: withdraw it now (not a decline)
                self._rescind_offer_of(rep, RescindReason.LOCKED)
            else:
                self._touch(rep)
            self._emit_presence(rep)
            self._sync_rep(rep)

    def _touch(self, rep: Rep) -> None:
        rep.last_activity = self._now
        if rep.idle:
            rep.idle = False
            self._schedule_idle(rep)
        elif rep.idle_timer is None:
            self._schedule_idle(rep)

    @command
    def report_activity(self, rep_id: str) -> None:
        rep = self._rep(rep_id)
        was_idle = rep.idle
        self._touch(rep)
        if was_idle:
            self._emit_presence(rep)
            self._sync_rep(rep)

    @command
    def update_settings(
        self, rep_id: str, auto_assign: bool | None = None, audible_alerts: bool | None = None
    ) -> Rep:
        rep = self._rep(rep_id)
        if auto_assign is not None:
            v.flag("auto_assign", auto_assign)
            if not auto_assign and not rep.permissions.may_opt_out:
                raise PermissionDenied("this rep may not opt out of automatic assignment")
        if audible_alerts is not None:
            v.flag("audible_alerts", audible_alerts)
            rep.audible_alerts = audible_alerts
        if auto_assign is not None:
            rep.auto_assign = auto_assign
            rep.opted_out_by_missed_offers = False
            rep.missed_offers = 0
        self._emit(RepSettingsChanged(self._now, rep.id, rep.auto_assign, rep.audible_alerts))
        self._sync_rep(rep)
        return rep

    # ================================================================== rep actions

    def _offer_of(self, rep: Rep, offer_id: Any) -> Offer:
        v.ident("offer_id", offer_id)
        offer = self._offers.get(offer_id)
        if offer is None:
            if offer_id in self._closed_offers:
                raise FailedPrecondition(f"offer {shown(offer_id)} is no longer pending")
            raise NotFound("offer", offer_id)
        if offer.rep_id != rep.id:
            raise PermissionDenied(f"offer {shown(offer_id)} was made to another rep")
        return offer

    @command
    def answer_offer(self, rep_id: str, offer_id: str, accept: bool) -> None:
        rep = self._rep(rep_id)
        v.flag("accept", accept)
        offer = self._offer_of(rep, offer_id)
        if accept:
            self._activate(self._sessions[offer.session_id], rep, via_offer=True)
        else:
            self._decline(offer, timed_out=False)

    def _waiting_visible(self, rep: Rep, s: Session) -> None:
        if s.state not in (SessionState.WAITING, SessionState.OFFERED) or s.queue is None:
            raise FailedPrecondition(
                f"session {shown(s.id)} is not waiting (it is {s.state.value})"
            )
        if not self.can_see(rep, s.queue):
            raise PermissionDenied(f"rep {shown(rep.id)} cannot see queue {s.queue}")

    @command
    def accept_session(self, rep_id: str, session_id: str) -> None:
        """Rule 6: manual accept from a visible queue; first accept wins; ignores load."""
        rep, s = self._rep(rep_id), self._session(session_id)
        self._waiting_visible(rep, s)
        self._activate(s, rep, via_offer=False)

    @command
    def get_next(self, rep_id: str) -> Session | None:
        """Rule 7: the best waiting session (rule-4 order) across the rep's team queues and,
        if permitted, the general queue. None when nothing waits."""
        rep = self._rep(rep_id)
        if not rep.permissions.may_get_next:
            raise PermissionDenied("this rep may not use Get Next")
        queues = [team_queue(t) for t in rep.teams]
        if self.can_see(rep, GENERAL_QUEUE):
            queues.append(GENERAL_QUEUE)
        heads = [
            index.sessions[0] for index in map(self._queues.__getitem__, queues) if index.sessions
        ]
        best = self._session_by_slot[min(heads) & SLOT_MASK] if heads else None
        if best is not None:
            self._activate(best, rep, via_offer=False)
        return best

    @command
    def transfer_session(self, rep_id: str, session_id: str, target: QueueRef) -> None:
        """Rule 9: to a team queue (embassies included) or a rep's personal queue."""
        rep, s = self._rep(rep_id), self._session(session_id)
        target = self._queue_ref("target", target)
        if target.kind is QueueKind.GENERAL:
            raise InvalidArgument("target", "must be a team or a rep")
        if not rep.permissions.may_transfer:
            raise PermissionDenied("this rep may not transfer sessions")
        if s.state is SessionState.ACTIVE:
            if s.owner != rep.id:
                raise PermissionDenied(f"only the owner may transfer session {shown(session_id)}")
        else:
            self._waiting_visible(rep, s)
        if s.queue is not None:
            self._rescind(s, RescindReason.TRANSFERRED)
            self._dequeue(s)
        else:
            self._unassign(s)
        s.declined_by = ()
        s.rule_moves = 0
        s.accepted_from = None
        self._enqueue(s, target, Origin.TRANSFER)

    def _owned_active(self, rep: Rep, s: Session) -> None:
        if s.state is not SessionState.ACTIVE:
            raise FailedPrecondition(f"session {shown(s.id)} is not active")
        if s.owner != rep.id:
            raise PermissionDenied(f"rep {shown(rep.id)} does not own session {shown(s.id)}")

    @command
    def end_session(self, rep_id: str, session_id: str) -> None:
        rep, s = self._rep(rep_id), self._session(session_id)
        self._owned_active(rep, s)
        self._end(s, EndReason.COMPLETED)

    @command
    def leave_session(self, rep_id: str, session_id: str) -> None:
        """A participant leaves; an owner leaving hands the session to the participant
        who joined first (rule 10). An owner alone must end or transfer instead."""
        rep, s = self._rep(rep_id), self._session(session_id)
        if s.state is not SessionState.ACTIVE:
            raise FailedPrecondition(f"session {shown(session_id)} is not active")
        if s.owner == rep.id:
            if not s.participants:
                raise FailedPrecondition("the owner is alone: end or transfer the session")
            self._hand_over(s, rep, by_fallback=False)
        elif rep.id in s.participants:
            self._part(s, rep)
        else:
            raise FailedPrecondition(f"rep {shown(rep_id)} is not in session {shown(session_id)}")
        self._sync_rep(rep, load_changed=True)

    @command
    def invite(self, rep_id: str, session_id: str, target: QueueRef) -> Invitation:
        """Rule 10: invite a rep (their personal queue) or a team (its queue)."""
        rep, s = self._rep(rep_id), self._session(session_id)
        target = self._queue_ref("target", target)
        if target.kind is QueueKind.GENERAL:
            raise InvalidArgument("target", "must be a team or a rep")
        self._owned_active(rep, s)
        if target.kind is QueueKind.PERSONAL and (
            target.owner == rep.id or target.owner in s.participants
        ):
            raise FailedPrecondition(f"rep {shown(target.owner)} is already in the session")
        if any(self._invitations[i].queue == target for i in s.invitations):
            raise AlreadyExists("invitation", f"{session_id} -> {target}")
        inv = Invitation(
            self._next_id("invitation"),
            s.id,
            rep.id,
            target,
            self._now,
            rule4_key(s.priority, self._next_seq()),
        )
        self._invitations[inv.id] = inv
        self._queues[target].add_invitation(inv.key)
        self._inv_by_key[inv.key] = inv.id
        s.invitations += (inv.id,)
        self._emit(InvitationCreated(self._now, inv.id, s.id, rep.id, target))
        return inv

    @command
    def accept_invitation(self, rep_id: str, invitation_id: str) -> None:
        rep = self._rep(rep_id)
        inv = self._invitations.get(v.ident("invitation_id", invitation_id))
        if inv is None:
            raise NotFound("invitation", invitation_id)
        if not self.can_see(rep, inv.queue):
            raise PermissionDenied(f"rep {shown(rep_id)} cannot see queue {inv.queue}")
        s = self._sessions[inv.session_id]
        if s.owner == rep.id or rep.id in s.participants:
            raise FailedPrecondition(f"rep {shown(rep_id)} is already in the session")
        del self._invitations[inv.id]
        self._queues[inv.queue].remove_invitation(inv.key)
        del self._inv_by_key[inv.key]
        s.invitations = tuple(i for i in s.invitations if i != inv.id)
        s.participants += (rep.id,)
        rep.participating = rep.participating | {s.id}
        self._emit(InvitationRemoved(self._now, inv.id, s.id, inv.queue, rep.id))
        self._emit(ParticipantJoined(self._now, s.id, rep.id))
        self._sync_rep(rep, load_changed=True)

    # ================================================================== favourites, chat

    def _member(self, rep: Rep, team_id: str) -> Team:
        team = self._team(team_id)
        if rep.id not in team.members:
            raise PermissionDenied(f"rep {shown(rep.id)} is not a member of team {shown(team_id)}")
        return team

    @command
    def set_favourite(self, rep_id: str, team_id: str, starred: bool) -> None:
        rep = self._rep(rep_id)
        v.flag("starred", starred)
        self._member(rep, team_id)
        rep.favourites = rep.favourites | {team_id} if starred else rep.favourites - {team_id}

    @command
    def post_chat(self, rep_id: str, team_id: str, text: str) -> ChatMessage:
        c = v.Checks()
        c(v.ident, "rep_id", rep_id)
        c(v.ident, "team_id", team_id)
        c(v.text, "text", text, max_len=v.MAX_TEXT_LEN, required=True)
        c.done()
        rep = self._rep(rep_id)
        team = self._member(rep, team_id)
        team.chat_seq += 1
        msg = ChatMessage(team.chat_seq, rep.id, text, self._now)
        team.chat.append(msg)
        del team.chat[: -self.config.chat_history]
        rep.chat_read[team_id] = team.chat_seq
        self._emit(ChatMessagePosted(self._now, team_id, msg.seq, rep.id, text))
        return msg

    @command
    def mark_chat_read(self, rep_id: str, team_id: str) -> None:
        rep = self._rep(rep_id)
        team = self._member(rep, team_id)
        rep.chat_read[team_id] = team.chat_seq

    # ================================================================== queries (read-only)

    def rep(self, rep_id: str) -> Rep:
        return self._rep(rep_id)

    def team(self, team_id: str) -> Team:
        return self._team(team_id)

    def session(self, session_id: str) -> Session:
        return self._session(session_id)

    def offer(self, offer_id: str) -> Offer:
        o = self._offers.get(v.ident("offer_id", offer_id))
        if o is None:
            raise NotFound("offer", offer_id)
        return o

    def find_rep(self, rep_id: str) -> Rep | None:
        return self._reps.get(rep_id)

    def find_offer(self, offer_id: str) -> Offer | None:
        return self._offers.get(offer_id)

    def session_key_expiry(self, key: str) -> float:
        sk = self._keys.get(key)
        if sk is None:
            raise NotFound("session key", "", "session key is not valid")
        return sk.expires_at

    def find_session(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def invitation(self, invitation_id: str) -> Invitation:
        inv = self._invitations.get(v.ident("invitation_id", invitation_id))
        if inv is None:
            raise NotFound("invitation", invitation_id)
        return inv

    def invitations(self) -> list[Invitation]:
        return list(self._invitations.values())

    def offers(self) -> list[Offer]:
        return list(self._offers.values())

    def queue_audience(self, queue: QueueRef) -> list[str]:
        """The reps who can see a queue (whose consoles list it)."""
        if queue.kind is QueueKind.PERSONAL:
            return [queue.owner] if queue.owner in self._reps else []
        if queue.kind is QueueKind.TEAM:
            team = self._teams.get(queue.owner)
            return sorted(team.members) if team else []
        return [r.id for r in self.reps() if self.can_see(r, queue)]

    def can_see_session(self, rep_id: str, session: Session) -> bool:
        """A rep sees a session in one of its queues, one it is in, or one it is invited to."""
        rep = self._rep(rep_id)
        if session.owner == rep.id or rep.id in session.participants:
            return True
        if session.queue is not None and self.can_see(rep, session.queue):
            return True
        return any(self.can_see(rep, self._invitations[i].queue) for i in session.invitations)

    def reps(self) -> list[Rep]:
        return sorted(self._reps.values(), key=lambda r: r.id)

    def teams(self) -> list[Team]:
        return sorted(self._teams.values(), key=lambda t: t.id)

    def issue_type(self, issue_type_id: str) -> IssueType:
        it = self._issue_types.get(v.ident("issue_type_id", issue_type_id))
        if it is None:
            raise NotFound("issue type", issue_type_id)
        return it

    def support_button(self, button_id: str) -> SupportButton:
        button = self._buttons.get(v.ident("support_button_id", button_id))
        if button is None:
            raise NotFound("support button", button_id)
        return button

    def help_link(self, link_id: str) -> HelpLink:
        link = self._links.get(v.ident("help_link_id", link_id))
        if link is None:
            raise NotFound("help link", link_id)
        return link

    def issue_types(self) -> list[IssueType]:
        return sorted(self._issue_types.values(), key=lambda i: i.id)

    def support_buttons(self) -> list[SupportButton]:
        return sorted(self._buttons.values(), key=lambda b: b.id)

    def help_links(self) -> list[HelpLink]:
        return sorted(self._links.values(), key=lambda x: x.id)

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def eligible(self, rep_id: str) -> bool:
        return self.reps_table.eligible(self._rep(rep_id).ordinal)

    def _item(self, key: int) -> QueueItem:
        if key & SLOT_MASK == INVITATION:
            inv = self._invitations[self._inv_by_key[key]]
            return QueueItem(inv.id, self._sessions[inv.session_id], inv)
        s = self._session_by_slot[key & SLOT_MASK]
        assert s is not None
        return QueueItem(s.id, s)

    def queue_items(self, queue: QueueRef) -> list[QueueItem]:
        """A queue's sessions and invitations in rule-4 order (all of them)."""
        index = self._queues[self._queue_ref("queue", queue)]
        keys = sorted([*index.sessions, *index.invitations])
        return [self._item(key) for key in keys]

    def queue_page(
        self, queue: QueueRef, after: int | None, limit: int
    ) -> tuple[list[QueueItem], int | None]:
        """Up to `limit` items of a queue in rule-4 order after the cursor `after` (None:
        from the head), and the cursor of the next page (None on the last page).
        O(log n + limit): cursors are order keys, so a page never moves when items
        ahead of it come and go."""
        index = self._queues[self._queue_ref("queue", queue)]
        if after is not None:
            v.integer("after", after, 0, 2**128)
        v.integer("limit", limit, 1, 1000)
        keys, cursor = index.page(after, limit)
        return [self._item(key) for key in keys], cursor

    def queue_position(self, session_id: str) -> int:
        """1-based place of a waiting session among its queue's sessions in rule-4
        order (0 if not waiting): O(log n)."""
        s = self._session(session_id)
        if s.queue is None:
            return 0
        return self._queues[s.queue].position(s.key)

    def rep_teams(self, rep_id: str) -> list[Team]:
        """A rep's teams as its console lists them: starred first, then by name."""
        rep = self._rep(rep_id)
        return sorted(
            (self._teams[t] for t in rep.teams),
            key=lambda t: (t.id not in rep.favourites, t.name.lower(), t.id),
        )

    def rep_queues(self, rep_id: str) -> list[QueueSummary]:
        """The queues a rep's console lists: personal, favourite teams, other teams (by
        name), then the general queue if permitted."""
        rep = self._rep(rep_id)

        def summary(q: QueueRef, name: str, team: Team | None = None) -> QueueSummary:
            index = self._queues[q]
            return QueueSummary(
                q,
                name,
                len(index.sessions),
                len(index.invitations),
                team is not None and team.id in rep.favourites,
                team is not None and team.chat_seq > rep.chat_read.get(team.id, 0),
            )

        teams = self.rep_teams(rep_id)
        out = [summary(personal_queue(rep.id), rep.name)]
        out += [summary(team_queue(t.id), t.name, t) for t in teams]
        if self.can_see(rep, GENERAL_QUEUE):
            out.append(summary(GENERAL_QUEUE, "General"))
        return out

    def chat_messages(
        self, rep_id: str, team_id: str, after_seq: int = 0, limit: int = 100
    ) -> list[ChatMessage]:
        rep = self._rep(rep_id)
        team = self._member(rep, team_id)
        v.integer("after_seq", after_seq, 0, 2**62)
        v.integer("limit", limit, 1, 1000)
        return [m for m in team.chat if m.seq > after_seq][:limit]

    def search_teams(self, query: str = "", kind: TeamKind | None = None) -> list[Team]:
        q = v.text("query", query).lower()
        return [
            t
            for t in self.teams()
            if (kind is None or t.kind is kind) and (q in t.name.lower() or q in t.id.lower())
        ]

    def search_reps(self, query: str = "") -> list[Rep]:
        q = v.text("query", query).lower()
        return [r for r in self.reps() if q in r.name.lower() or q in r.id.lower()]

    # ================================================================== snapshot

    def snapshot(self) -> dict[str, Any]:
        """All routing state as plain data, for tests and (later) the journal's
        snapshots. Two equal snapshots mean equal routing state."""

        def plain(x: Any) -> Any:
            if isinstance(x, Enum):
                return x.value
            if isinstance(x, QueueRef):
                return str(x)
            if is_dataclass(x) and not isinstance(x, type):
                return {f.name: plain(getattr(x, f.name)) for f in fields(x)}
            if isinstance(x, dict):
                return {str(plain(k)): plain(val) for k, val in x.items()}
            if isinstance(x, set | frozenset):
                return sorted(plain(i) for i in x)
            if (
                isinstance(x, list)
                and len(x) == 5
                and isinstance(x[4], bool)
                and isinstance(x[2], str)
            ):
                return ("timer", x[0], x[2], plain(x[3]), x[4])  # a timer entry
            if isinstance(x, list | tuple):
                return [plain(i) for i in x]
            return x

        rt, st = self.reps_table, self.sessions_table
        return {
            "now": self._now,
            "reps": plain(self._reps),
            "teams": plain(self._teams),
            "skills": dict(self._skills),
            "issue_types": plain(self._issue_types),
            "buttons": plain(self._buttons),
            "links": plain(self._links),
            "keys": plain(self._keys),
            "sessions": plain(self._sessions),
            "offers": plain(self._offers),
            "invitations": plain(self._invitations),
            "queues": {str(q): [i.id for i in self.queue_items(q)] for q in self._queues},
            "ready": {
                str(q): [list(index.ready), sorted(index.parked)]
                for q, index in self._queues.items()
                if index.ready is not None and index.parked is not None
            },
            "dirty": sorted(self._dirty),
            "team_eligible": list(self._team_eligible),
            "reported": plain(self._reported),
            "counters": dict(self._counters),
            "timers": plain(self._timers.pending()),
            "rep_columns": [
                col[: rt.n].tolist() for col in (rt.load, rt.cap, rt.flags, rt.avail, rt.rank_key)
            ]
            + [rt.skills[: rt.n].tolist()],
            "session_columns": [
                st.team[: st.n].tolist(),
                st.decl_cnt[: st.n].tolist(),
                sorted(st.free),
            ],
            "team_columns": [
                self.teams_table.alg[: self.teams_table.n].tolist(),
                [sorted(self.teams_table.members(t).tolist()) for t in range(self.teams_table.n)],
            ],
        }


__all__ = ["DomainError", "Engine", "EngineConfig", "Outcome", "QueueItem", "QueueSummary"]
