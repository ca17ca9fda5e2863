"""Queue order (rule 4): every queue keeps its items sorted, so the head, a position and
a page cost O(log n), never a scan or a sort of the queue.

An item's key is one int that sorts in rule-4 order: higher priority first, then the
earlier arrival. Arrival is the engine's `seq`, handed out in creation order (the clock
never goes back, so seq order is created_time order, and it survives moves between
queues). The low bits make keys unique and say where the item lives: a session's
column slot, or an invitation's marker.

Team queues also keep, for the assignment pass, which of their sessions are ready (they
wait without an offer) and which of those are parked: sessions every eligible member of
the team has declined. A parked session is not looked at again until the team gains an
eligible member, so a pass never rescans what it already knows nobody can take.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain
from typing import TYPE_CHECKING, Any

from sortedcontainers import SortedList

from .events import SessionDequeued, SessionQueued
from .model import Move, Origin, QueueKind, QueueRef, Session, SessionState
from .timers import TimerKind
from .validation import MAX_PRIORITY

if TYPE_CHECKING:
    from .state import State

_SEQ_SHIFT = 32
_PRIORITY_SHIFT = 32 + 48  # 48 bits of seq: 2.8e14 sessions and invitations
SLOT_MASK = (1 << _SEQ_SHIFT) - 1
INVITATION = SLOT_MASK  # the low bits of an invitation's key


def rule4_key(priority: int, seq: int, slot: int = INVITATION) -> int:
    """Smaller sorts first: higher priority, then earlier seq."""
    return ((MAX_PRIORITY - priority) << _PRIORITY_SHIFT) | (seq << _SEQ_SHIFT) | slot


# Where a session is in its team queue's assignment bookkeeping.
NOT_READY, READY, PARKED = 0, 1, 2


# What an empty queue reads: one shared list, never written (a desk has a personal queue
# per rep, and most are empty). Writes go through QueueIndex, which makes its own first.
_EMPTY: SortedList = SortedList()


class QueueIndex:
    """One queue's items in rule-4 order; for a team queue also its ready and parked
    sessions. Read `sessions` and `invitations`; write through the methods."""

    __slots__ = ("ref", "sessions", "invitations", "ready", "parked")

    def __init__(self, ref: QueueRef) -> None:
        # The queue's one QueueRef: every session waiting here holds this object, not
        # a copy of its own (a million waiting sessions, a million fewer objects).
        self.ref = ref
        team = ref.kind is QueueKind.TEAM
        self.sessions: SortedList = _EMPTY
        self.invitations: SortedList = _EMPTY
        self.ready: SortedList | None = SortedList() if team else None
        self.parked: dict[int, None] | None = {} if team else None

    def __getstate__(self) -> tuple[Any, ...]:
        # The shared empty list is saved as None and restored as itself (a snapshot
        # must not make every empty queue share one new, writable list).
        shared = tuple(None if x is _EMPTY else x for x in (self.sessions, self.invitations))
        return (self.ref, *shared, self.ready, self.parked)

    def __setstate__(self, saved: tuple[Any, ...]) -> None:
        self.ref, sessions, invitations, self.ready, self.parked = saved
        self.sessions = _EMPTY if sessions is None else sessions
        self.invitations = _EMPTY if invitations is None else invitations

    def add_session(self, key: int) -> None:
        if self.sessions is _EMPTY:
            self.sessions = SortedList()
        self.sessions.add(key)

    def remove_session(self, key: int) -> None:
        self.sessions.remove(key)
        if not self.sessions:
            self.sessions = _EMPTY

    def add_invitation(self, key: int) -> None:
        if self.invitations is _EMPTY:
            self.invitations = SortedList()
        self.invitations.add(key)

    def remove_invitation(self, key: int) -> None:
        self.invitations.remove(key)
        if not self.invitations:
            self.invitations = _EMPTY

    def __len__(self) -> int:
        return len(self.sessions) + len(self.invitations)

    def position(self, key: int) -> int:
        """1-based place among the queue's sessions."""
        return int(self.sessions.bisect_left(key)) + 1

    def page(self, after: int | None, limit: int) -> tuple[list[int], int | None]:
        """Up to `limit` item keys after the cursor `after` (None: from the head), and the
        cursor for the next page (None when this is the last). O(log n + limit)."""
        parts: list[Iterator[int]] = []
        for items in (self.sessions, self.invitations):
            start = 0 if after is None else items.bisect_right(after)
            parts.append(items.islice(start, start + limit + 1))
        merged = sorted(chain(*parts))[: limit + 1]
        if len(merged) > limit:
            return merged[:limit], merged[limit - 1]
        return merged, None

    def unpark(self) -> list[int]:
        """Parked sessions become ready again (the team gained an eligible member);
        returns their keys."""
        assert self.parked is not None and self.ready is not None
        keys = list(self.parked)
        if keys:
            self.ready.update(keys)
            self.parked.clear()
        return keys


# ------------------------------------------------------------------ the engine's queue operations


def gained(st: State, team_ord: int) -> None:
    """Team `team_ord` has a new eligible member: what its eligible members had all
    declined may be offered again, and a pass must look at it."""
    index = st.team_index[team_ord]
    assert index is not None
    for key in index.unpark():
        session = st.session_by_slot[key & SLOT_MASK]
        assert session is not None
        session.pool = READY
    st.dirty.add(team_ord)


def leave_pool(st: State, s: Session, team_ord: int) -> None:
    """The session is no longer among team `team_ord`'s ready or parked sessions."""
    if s.pool == NOT_READY:
        return
    index = st.team_index[team_ord]
    assert index is not None and index.ready is not None and index.parked is not None
    if s.pool == READY:
        index.ready.remove(s.key)
    else:
        del index.parked[s.key]
    s.pool = NOT_READY


def sync_slot(st: State, s: Session) -> None:
    """Expose a session to the kernel iff it waits, without an offer, in a team
    queue, and keep it among that queue's ready sessions exactly then."""
    table = st.sessions_table
    was = int(table.team[s.slot])
    team_ord = -1
    if s.state is SessionState.WAITING and s.queue is not None and s.queue.kind is QueueKind.TEAM:
        team_ord = st.teams[s.queue.owner].ordinal
    table.team[s.slot] = team_ord
    table.decl_cnt[s.slot] = len(s.declined_by)
    if team_ord != was:
        leave_pool(st, s, was)
    if team_ord >= 0 and s.pool == NOT_READY:
        index = st.team_index[team_ord]
        assert index is not None and index.ready is not None
        index.ready.add(s.key)
        s.pool = READY
        st.dirty.add(team_ord)


def enqueue(st: State, s: Session, queue: QueueRef, origin: Origin) -> None:
    index = st.queues[queue]
    queue = index.ref
    s.queue, s.origin, s.state = queue, origin, SessionState.WAITING
    s.queued_time = st.now
    s.entry_seq += 1
    s.overdue_alerted = False
    if s.first_queue is None:
        s.first_queue, s.first_origin = queue, origin
    else:
        s.moves += (Move(queue, st.now, origin),)
    index.add_session(s.key)
    if queue.kind is QueueKind.TEAM:
        rule = st.teams[queue.owner].settings.waiting_rule
        if rule is not None:
            s.rule_timer = st.timers.schedule(
                st.now + rule.overdue_after, TimerKind.WAITING_RULE, (s.id, s.entry_seq)
            )
    sync_slot(st, s)
    st.emit(SessionQueued(st.now, s.id, queue, origin))


def dequeue(st: State, s: Session) -> QueueRef:
    queue = s.queue
    assert queue is not None
    st.queues[queue].remove_session(s.key)
    # Leaving a queue leaves its pools: back in one (even the same), a session is
    # ready afresh, since a transfer clears what parked it.
    leave_pool(st, s, int(st.sessions_table.team[s.slot]))
    st.sessions_table.team[s.slot] = -1
    st.timers.cancel(s.rule_timer)
    s.rule_timer = None
    s.queue = None
    st.emit(SessionDequeued(st.now, s.id, queue))
    return queue
