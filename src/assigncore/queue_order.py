"""Queue order (rule 4): every queue keeps its items sorted, so the head, a position and
a page cost O(log n), never a scan or a sort of the queue.

An item's key is one int that sorts in rule-4 order: higher priority first, then the
earlier arrival. Arrival is the engine's `seq`, handed out in creation order (the clock
never goes back, so seq order is created_time order, and it survives moves between
queues). The low bits make keys unique and say where the item lives: a session's
column slot, or an invitation's marker.

Team queues also keep, for the assignment pass, which of their sessions are ready (they
wait without an offer) and which of those are parked: sessions every eligible member who
could take them has declined. A parked session is not looked at again until the team
gains such a member, so a pass never rescans what it already knows nobody can take.

Ready sessions are kept in pools: a pool holds the sessions of a team queue that the
same members may take, the same filter (routing steps, capacity by channel). Its key is
(channel bit, the step's strict requirements or None, the one rep allowed or -1); a
desk without steps or channels has one pool per team, DEFAULT_POOL. A pass walks a
pool's head only as far as it has members who could take it, so sessions that wait for
other reps (another channel, another skill) are never walked past.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain
from typing import TYPE_CHECKING, Any

from sortedcontainers import SortedList

from . import steps
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


PoolKey = tuple  # (channel bit, (skill ordinals, levels) or None, rep ordinal or -1)
DEFAULT_POOL: PoolKey = (1, None, -1)


class Pool:
    """The ready and parked sessions of one team queue's pool, in rule-4 order."""

    __slots__ = ("ready", "parked")

    def __init__(self) -> None:
        self.ready: SortedList = SortedList()
        self.parked: dict[int, None] = {}

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.ready, self.parked)

    def __setstate__(self, saved: tuple[Any, ...]) -> None:
        self.ready, self.parked = saved

    def unpark(self) -> list[int]:
        """Parked sessions become ready again; returns their keys."""
        keys = list(self.parked)
        if keys:
            self.ready.update(keys)
            self.parked.clear()
        return keys


# What an empty queue reads: one shared list, never written (a desk has a personal queue
# per rep, and most are empty). Writes go through QueueIndex, which makes its own first.
_EMPTY: SortedList = SortedList()


class QueueIndex:
    """One queue's items in rule-4 order; for a team queue also its ready and parked
    sessions. Read `sessions` and `invitations`; write through the methods."""

    __slots__ = ("ref", "sessions", "invitations", "pools", "by_rep")

    def __init__(self, ref: QueueRef) -> None:
        # The queue's one QueueRef: every session waiting here holds this object, not
        # a copy of its own (a million waiting sessions, a million fewer objects).
        self.ref = ref
        team = ref.kind is QueueKind.TEAM
        self.sessions: SortedList = _EMPTY
        self.invitations: SortedList = _EMPTY
        # Team queues: pools by key, and the keys of the pools that allow one rep, by
        # that rep's ordinal (a rep's gain looks at its own pools and the shared ones).
        self.pools: dict[PoolKey, Pool] | None = {} if team else None
        self.by_rep: dict[int, set[PoolKey]] | None = {} if team else None

    def __getstate__(self) -> tuple[Any, ...]:
        # The shared empty list is saved as None and restored as itself (a snapshot
        # must not make every empty queue share one new, writable list).
        shared = tuple(None if x is _EMPTY else x for x in (self.sessions, self.invitations))
        return (self.ref, *shared, self.pools, self.by_rep)

    def __setstate__(self, saved: tuple[Any, ...]) -> None:
        self.ref, sessions, invitations, self.pools, self.by_rep = saved
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

    def pool(self, key: PoolKey) -> Pool:
        """The pool of `key`, made when first needed."""
        assert self.pools is not None and self.by_rep is not None
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = Pool()
            if key[2] >= 0:
                self.by_rep.setdefault(key[2], set()).add(key)
        return pool

    def drop_if_empty(self, key: PoolKey) -> None:
        """Pools of one rep are many over a day: an empty one is dropped."""
        assert self.pools is not None and self.by_rep is not None
        pool = self.pools.get(key)
        if pool is not None and not pool.ready and not pool.parked and key[2] >= 0:
            del self.pools[key]
            keys = self.by_rep[key[2]]
            keys.discard(key)
            if not keys:
                del self.by_rep[key[2]]

    def pools_for(self, rep_ord: int) -> list[PoolKey]:
        """Keys of the pools a rep could be offered from: the shared ones, its own."""
        assert self.pools is not None and self.by_rep is not None
        keys = [k for k in self.pools if k[2] < 0]
        keys.extend(self.by_rep.get(rep_ord, ()))
        return keys


# ------------------------------------------------------------------ the engine's queue operations


def gained(st: State, team_ord: int, rep_ord: int, channels: int) -> None:
    """Rep `rep_ord` became a candidate in team `team_ord` for the `channels` (bits):
    what the team's candidates had all declined there may be offered again, and a pass
    must look at those pools."""
    index = st.team_index[team_ord]
    assert index is not None and index.pools is not None
    for key in index.pools_for(rep_ord):
        if not key[0] & channels:
            continue
        for k in index.pools[key].unpark():
            session = st.session_by_slot[k & SLOT_MASK]
            assert session is not None
            session.pool = READY
        st.dirty.add((team_ord, key))


def mark_team(st: State, team_ord: int) -> None:
    """Every pool of a team needs a pass (its algorithm changed)."""
    index = st.team_index[team_ord]
    assert index is not None and index.pools is not None
    st.dirty.update((team_ord, key) for key in index.pools)


def leave_pool(st: State, s: Session, team_ord: int) -> None:
    """The session is no longer among team `team_ord`'s ready or parked sessions."""
    if s.pool == NOT_READY:
        return
    index = st.team_index[team_ord]
    assert index is not None and index.pools is not None
    pool = index.pools[s.pool_key]
    if s.pool == READY:
        pool.ready.remove(s.key)
    else:
        del pool.parked[s.key]
    s.pool = NOT_READY
    index.drop_if_empty(s.pool_key)


def sync_slot(st: State, s: Session) -> None:
    """Expose a session to the kernel iff it waits, without an offer, in a team
    queue, and keep it among that queue's ready sessions exactly then (in the pool of
    its routing step)."""
    table = st.sessions_table
    was = table.team_v[s.slot]
    team_ord = -1
    if s.state is SessionState.WAITING and s.queue is not None and s.queue.kind is QueueKind.TEAM:
        team_ord = st.teams[s.queue.owner].ordinal
    table.team_v[s.slot] = team_ord
    table.decl_cnt_v[s.slot] = len(s.declined_by)
    if team_ord != was:
        leave_pool(st, s, was)
    if team_ord >= 0 and s.pool == NOT_READY:
        index = st.team_index[team_ord]
        assert index is not None
        index.pool(s.pool_key).ready.add(s.key)
        s.pool = READY
        st.dirty.add((team_ord, s.pool_key))


def repool(st: State, s: Session, key: PoolKey) -> None:
    """The session's routing step changed its pool: it moves there, ready again."""
    team_ord = st.sessions_table.team_v[s.slot]
    if team_ord >= 0:
        leave_pool(st, s, team_ord)
    s.pool_key = key
    if team_ord >= 0:
        sync_slot(st, s)


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
        steps.start(st, s)
        rule = st.teams[queue.owner].settings.waiting_rule
        if rule is not None:
            s.rule_timer = st.timers.schedule(
                st.now + rule.overdue_after, TimerKind.WAITING_RULE, (s.id, s.entry_seq)
            )
    sync_slot(st, s)
    st.emit(SessionQueued(st.now, s.id, queue, origin))
    if s.step_changes and queue.kind is QueueKind.TEAM:
        steps.announce(st, s)


def dequeue(st: State, s: Session) -> QueueRef:
    queue = s.queue
    assert queue is not None
    st.queues[queue].remove_session(s.key)
    # Leaving a queue leaves its pools: back in one (even the same), a session is
    # ready afresh, since a transfer clears what parked it.
    leave_pool(st, s, st.sessions_table.team_v[s.slot])
    st.sessions_table.team_v[s.slot] = -1
    st.timers.cancel(s.rule_timer)
    s.rule_timer = None
    steps.leave(st, s)
    s.queue = None
    st.emit(SessionDequeued(st.now, s.id, queue))
    return queue
