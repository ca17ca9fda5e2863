"""Routing steps (rules 13-15): who may take a waiting session widens as it waits.

A team queue entry starts at the first step of its list: the issue type's, else the
team's, else one ANY step (rule 2 as the seeds have it). A step's filter goes into the
session's kernel columns (requirements, strict prefix, the one rep allowed) and names
its pool (queue_order). A step nobody signed in could ever match is skipped at once;
the last step never expires.

Expiry costs no scan: sessions of one queue that wait out steps of the same duration
expire in the order they entered those steps, whatever the list or the step. So each
(queue, duration) keeps a FIFO with one timer at its head: one per (queue, step) of a
desk's lists, or fewer when steps share a duration.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np

from . import queue_order
from .columns import FLAG_OFFLINE, FLAG_REMOVED
from .events import StepChanged
from .model import QueueKind, RoutingStep, Session, StepChange, StepKind
from .timers import Timer, TimerKind

if TYPE_CHECKING:
    from .state import State

DEFAULT_STEPS: tuple[RoutingStep, ...] = (RoutingStep(),)
_GONE = FLAG_OFFLINE | FLAG_REMOVED


class StepFifo:
    """Sessions waiting out steps of one duration in one queue, in entry order."""

    __slots__ = ("entries", "timer")

    def __init__(self) -> None:
        self.entries: OrderedDict[str, float] = OrderedDict()  # session id -> expiry
        self.timer: Timer | None = None

    def __getstate__(self) -> tuple:
        return (self.entries, self.timer)

    def __setstate__(self, saved: tuple) -> None:
        self.entries, self.timer = saved


def steps_for(st: State, s: Session) -> tuple[RoutingStep, ...]:
    assert s.queue is not None
    it = st.issue_types.get(s.issue_type_id) if s.issue_type_id else None
    if it is not None and it.steps:
        return it.steps
    return st.teams[s.queue.owner].settings.steps or DEFAULT_STEPS


def channel_bit(st: State, s: Session) -> int:
    return 1 << st.channels[s.service_channel]


def _skills(st: State, pairs: tuple[tuple[str, int], ...]) -> tuple[list[int], list[int]]:
    return [st.skills[name] for name, _ in pairs], [level for _, level in pairs]


def could_match(st: State, s: Session, step: RoutingStep) -> bool:
    """Whether a member of the session's team who is signed in could ever take it in
    `step`: serves its channel, and is the step's rep or holds the step's skills.

    The answer for a team, channel and step filter is kept until something it depends
    on changes in the team (a member signs in or out, joins or leaves, or changes its
    skills or capacity: `touch`), so arrivals do not scan the team each time."""
    assert s.queue is not None
    team = st.teams[s.queue.owner]
    rt = st.reps_table
    chan = channel_bit(st, s)
    if step.kind is StepKind.PREFERRED_REP:
        rep = st.reps.get(s.preferred_rep)
        return bool(
            rep is not None
            and team.id in rep.teams
            and not rt.flags_v[rep.ordinal] & _GONE
            and rt.serves_v[rep.ordinal] & chan
        )
    t = team.ordinal
    key = (t, chan, step.skills if step.kind is StepKind.SKILLS else ())
    version = st.team_version[t]
    known = st.match_cache.get(key)
    if known is not None and known[0] == version:
        return known[1]
    members = st.teams_table.members(t)
    ok = ((rt.flags[members] & _GONE) == 0) & ((rt.serves[members] & chan) != 0)
    if key[2]:
        ords, levels = _skills(st, step.skills)
        ok &= (rt.skills[members][:, ords] >= np.array(levels, dtype=np.uint8)).all(axis=1)
    answer = bool(ok.any())
    st.match_cache[key] = (version, answer)
    return answer


def touch(st: State, team_ords: list[int]) -> None:
    """Who in these teams could match a step may have changed: forget the answers."""
    for t in team_ords:
        st.team_version[t] += 1


def start(st: State, s: Session) -> None:
    """A team queue entry begins at the first step of its list (or past the steps
    nobody could match: `announce` tells of that once the entry itself is told)."""
    steps = s.steps = steps_for(st, s)
    s.step_changes = ()
    was = s.pool_key
    if (
        len(steps) == 1
        and steps[0].kind is StepKind.ANY
        and (not was or (was[1] is None and was[2] < 0))
    ):
        # The usual case, and the seeds' routing: one ANY step, and the columns hold
        # the session's own requirements already. Nothing to write, nothing to wait.
        s.step = 0
        s.pool_key = _pool_key(st, s, None, -1)
        return
    enter(st, s, 0, initial=True)


# Pool keys are shared (a million waiting sessions, one key object per pool), but for
# the keys of one rep, which come and go with the sessions that name it. Not state:
# equal keys are equal whichever object holds them.
_KEYS: dict[tuple, tuple] = {}


def _pool_key(st: State, s: Session, strict: tuple | None, only: int) -> tuple:
    if not s.service_channel and strict is None and only < 0:
        return queue_order.DEFAULT_POOL
    key = (channel_bit(st, s), strict, only)
    return key if only >= 0 else _KEYS.setdefault(key, key)


def announce(st: State, s: Session) -> None:
    """After SessionQueued: the steps a new queue entry skipped at once, if any."""
    if s.step_changes:
        change = s.step_changes[-1]
        assert s.queue is not None
        st.emit(StepChanged(st.now, s.id, s.queue, change.step, len(s.steps), change.skipped))


def enter(st: State, s: Session, step: int, initial: bool = False) -> None:
    """The session moves to `step`, or past it to the first step someone signed in
    could match (the last step is never skipped)."""
    skipped = 0
    last = len(s.steps) - 1
    while step < last and not could_match(st, s, s.steps[step]):
        step += 1
        skipped += 1
    s.step = step
    current = s.steps[step]
    only = -1
    strict = None
    was = s.pool_key
    if current.kind is StepKind.ANY and (not was or (was[1] is None and was[2] < 0)):
        pass  # the columns hold the session's own requirements already (the usual case)
    else:
        if current.kind is StepKind.SKILLS:
            ords, levels = _skills(st, current.skills)
            strict = (tuple(ords), tuple(levels))
        else:
            ords, levels = _skills(st, s.required_skills)
            if current.kind is StepKind.PREFERRED_REP:
                rep = st.reps.get(s.preferred_rep)
                only = rep.ordinal if rep is not None else -1
        st.sessions_table.set_requirements(s.slot, ords, levels, strict is not None, only)
    key = _pool_key(st, s, strict, only)
    if initial:
        s.pool_key = key
    elif key != s.pool_key:
        queue_order.repool(st, s, key)
    if step < last:
        _wait(st, s, step, current.duration)
    if not initial or skipped:
        s.step_changes += (StepChange(st.now, step, skipped),)
        if not initial:
            assert s.queue is not None
            st.emit(StepChanged(st.now, s.id, s.queue, step, len(s.steps), skipped))


def _wait(st: State, s: Session, step: int, duration: float) -> None:
    assert s.queue is not None
    key = (s.queue, duration)
    fifo = st.step_fifos.get(key)
    if fifo is None:
        fifo = st.step_fifos[key] = StepFifo()
    due = st.now + duration
    fifo.entries[s.id] = due
    if fifo.timer is None:
        fifo.timer = st.timers.schedule(due, TimerKind.STEP_EXPIRY, key)
    s.step_fifo = key


def leave(st: State, s: Session) -> None:
    """The session left its queue: it no longer waits out a step there."""
    key = s.step_fifo
    if key is None:
        return
    s.step_fifo = None
    fifo = st.step_fifos[key]
    del fifo.entries[s.id]
    if not fifo.entries:
        st.timers.cancel(fifo.timer)
        del st.step_fifos[key]


def on_expiry(st: State, key: tuple) -> None:
    """The head of a step FIFO is due: every session due there moves on, in order."""
    fifo = st.step_fifos.get(key)
    if fifo is None:
        return
    fifo.timer = None
    due: list[Session] = []
    while fifo.entries:
        sid, when = next(iter(fifo.entries.items()))
        if when > st.now:
            break
        fifo.entries.popitem(last=False)
        s = st.sessions[sid]
        s.step_fifo = None
        due.append(s)
    if fifo.entries:
        head = next(iter(fifo.entries.values()))
        fifo.timer = st.timers.schedule(head, TimerKind.STEP_EXPIRY, key)
    else:
        del st.step_fifos[key]
    for s in due:
        assert s.queue is not None and s.queue.kind is QueueKind.TEAM
        enter(st, s, s.step + 1)
