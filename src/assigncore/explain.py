"""Why a session is, or is not, offered to each rep (SupervisorService.ExplainRouting).

For a session waiting for an offer in a team queue, the ranking kernel itself is asked
(`Kernel.explain`): per member of the team, what keeps the rep from it (WHY_* bits, and
for an ineligible rep its flags) and the keys the ranking compares, and the rep it would
pick. So the explanation cannot drift from routing: it is the same code. For an offered
or accepted session it is the decision recorded with the offer when it was made.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

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
    LOAD_SHIFT,
)
from .constants import (
    WHY_DECLINED,
    WHY_INELIGIBLE,
    WHY_MISSING_SKILL,
    WHY_NO_ROOM,
    WHY_NOT_PREFERRED,
)
from .model import Decision, QueueKind, QueueRef, RoutingStep, SessionState, StepKind

if TYPE_CHECKING:
    from .state import State


class Reason(Enum):
    """Why a rep who could be in a session's pool is not offered it now."""

    OFFLINE = "OFFLINE"
    LOCKED = "LOCKED"
    IDLE = "IDLE"
    AUTO_ASSIGN_OFF = "AUTO_ASSIGN_OFF"
    WRAP_UP = "WRAP_UP"
    HAS_PENDING_OFFER = "HAS_PENDING_OFFER"
    AT_CAPACITY = "AT_CAPACITY"  # at max_concurrent_sessions, or no room in any channel
    NO_ROOM_FOR_CHANNEL = "NO_ROOM_FOR_CHANNEL"
    DECLINED = "DECLINED"
    MISSING_SKILL = "MISSING_SKILL"
    NOT_PREFERRED_REP = "NOT_PREFERRED_REP"
    NOT_A_MEMBER = "NOT_A_MEMBER"


_FLAGS = (
    (FLAG_OFFLINE | FLAG_REMOVED, Reason.OFFLINE),
    (FLAG_LOCKED, Reason.LOCKED),
    (FLAG_IDLE, Reason.IDLE),
    (FLAG_OPTED_OUT, Reason.AUTO_ASSIGN_OFF),
    (FLAG_WRAP_UP, Reason.WRAP_UP),
    (FLAG_PENDING_OFFER, Reason.HAS_PENDING_OFFER),
)
_WHY = (
    (WHY_NO_ROOM, Reason.NO_ROOM_FOR_CHANNEL),
    (WHY_DECLINED, Reason.DECLINED),
    (WHY_MISSING_SKILL, Reason.MISSING_SKILL),
    (WHY_NOT_PREFERRED, Reason.NOT_PREFERRED_REP),
)
_AVAIL_MASK = (1 << LOAD_SHIFT) - 1


@dataclass(frozen=True, slots=True)
class Candidate:
    rep_id: str
    reasons: tuple[Reason, ...]  # empty: it could be offered the session now
    missing_skill: tuple[str, int] | None = None  # the first of the step's it lacks
    # The ranking keys, in the order the kernel compares them (eligible reps only):
    # the policy's major score (smaller first), load, available since; then ordinal.
    major: int = 0
    load: int = 0
    available_since: float = 0.0
    ordinal: int = 0


DEFAULT_LISTED = 200  # reps an explanation lists unless asked for another number
MAX_LISTED = 5000


@dataclass(frozen=True, slots=True)
class Explanation:
    session_id: str
    state: SessionState
    queue: QueueRef | None
    step: int  # 0-based, in `steps` steps (0 of 0 outside a team queue)
    steps: int
    step_kind: StepKind | None
    channel: str
    routed: bool  # waits in a team queue that assigns automatically
    # A waiting session: its team's members (and a preferred rep who is not one), the
    # candidates first in ranking order, then the others by id; at most `limit` of them.
    candidates: tuple[Candidate, ...] = ()
    members: int = 0  # how many reps that list has before the limit
    eligible: int = 0  # how many of them are candidates now
    reason_counts: tuple[tuple[Reason, int], ...] = ()  # over all of them, by reason
    best_rep_id: str = ""  # who the kernel would offer it to now ("" nobody)
    offered_to: str = ""  # an offered or accepted session: the rep
    decision: Decision | None = None  # as recorded with that offer


def explain(st: State, session_id: str, limit: int = DEFAULT_LISTED) -> Explanation:
    """Why the session is, or is not, offered to each rep. A waiting session lists at
    most `limit` reps (1 to MAX_LISTED); the counts cover every member. The per-member
    work is done on the kernel's arrays and only the reps listed become objects (a team
    of 10,000: ~7 ms; what is left is the id of each non-candidate, to list by id)."""
    v.integer("max_candidates", limit, 1, MAX_LISTED)
    s = st.session(session_id)
    team = st.teams.get(s.queue.owner) if s.queue and s.queue.kind is QueueKind.TEAM else None
    in_team = team is not None and s.steps
    base = dict(
        session_id=s.id,
        state=s.state,
        queue=s.queue,
        step=s.step if in_team else 0,
        steps=len(s.steps) if in_team else 0,
        step_kind=s.steps[s.step].kind if in_team else None,
        channel=s.service_channel,
        routed=bool(team is not None and team.settings.algorithm.value),
    )
    if s.state is SessionState.OFFERED:
        assert s.offer is not None
        offer = st.offers[s.offer]
        return Explanation(**base, offered_to=offer.rep_id, decision=offer.decision)  # type: ignore[arg-type]
    if s.state is SessionState.ACTIVE or s.state is SessionState.ENDED:
        return Explanation(**base, offered_to=s.owner or "", decision=s.decision)  # type: ignore[arg-type]
    if team is None:  # waiting in a personal queue or the general one: never routed
        return Explanation(**base)  # type: ignore[arg-type]
    declined = [st.reps[r].ordinal for r in s.declined_by if r in st.reps]
    members = st.teams_table.members(team.ordinal)
    best, why, major, key = st.kernel.explain(s.slot, declined, len(members))
    flags = st.reps_table.flags[members]
    step = s.steps[s.step]
    # Each member's reasons, as one bit per Reason (in _ORDER), for every member at once.
    ineligible = (why & WHY_INELIGIBLE) != 0
    bits = np.zeros(len(members), dtype=np.int64)
    for i, (flag, _) in enumerate(_FLAGS):
        bits |= np.where(ineligible & ((flags & flag) != 0), 1 << i, 0)
    # ineligible without a flag that says why: no room at all (rule 12's at capacity)
    bits |= np.where(ineligible & (bits == 0), 1 << _AT_CAPACITY, 0)
    for i, (bit, _) in enumerate(_WHY):
        bits |= np.where((why & bit) != 0, 1 << (_AT_CAPACITY + 1 + i), 0)
    counts = [int(np.count_nonzero(bits & (1 << i))) for i in range(len(_ORDER))]
    outsider = step.kind is StepKind.PREFERRED_REP and s.preferred_rep not in team.members
    counts[-1] += outsider
    open_ = np.flatnonzero(bits == 0)
    ranked = open_[np.lexsort((members[open_], key[open_], major[open_]))][:limit]
    listed = [_candidate(st, int(members[i]), (), step, int(major[i]), int(key[i])) for i in ranked]
    room = limit - len(listed)
    if room > 0:
        shut = np.flatnonzero(bits)
        by_ord = st.rep_by_ord
        others = [
            (by_ord[r].id, i)  # type: ignore[union-attr]
            for r, i in zip(members[shut].tolist(), shut.tolist(), strict=True)
        ]
        if outsider:
            others.append((s.preferred_rep, -1))
        for rep_id, i in heapq.nsmallest(room, others):
            if i < 0:
                listed.append(Candidate(rep_id, (Reason.NOT_A_MEMBER,)))
                continue
            b = int(bits[i])
            reasons = tuple(r for j, r in enumerate(_ORDER) if b & (1 << j))
            listed.append(_candidate(st, int(members[i]), reasons, step, 0, 0))
    best_rep = st.rep_by_ord[best] if best >= 0 else None
    return Explanation(
        **base,  # type: ignore[arg-type]
        candidates=tuple(listed),
        members=len(members) + outsider,
        eligible=len(open_),
        reason_counts=tuple((r, n) for r, n in zip(_ORDER, counts, strict=True) if n),
        best_rep_id=best_rep.id if best_rep is not None else "",
    )


# Reasons in the order a rep's are listed: its own state (flags), at capacity, then
# what keeps it from this session, then not a member (a preferred rep outside the team).
_AT_CAPACITY = len(_FLAGS)
_ORDER = (
    *(r for _, r in _FLAGS),
    Reason.AT_CAPACITY,
    *(r for _, r in _WHY),
    Reason.NOT_A_MEMBER,
)


def _candidate(
    st: State, r: int, reasons: tuple[Reason, ...], step: RoutingStep, major: int, key: int
) -> Candidate:
    rep = st.rep_by_ord[r]
    assert rep is not None
    missing = None
    if Reason.MISSING_SKILL in reasons:
        missing = next(((n, lv) for n, lv in step.skills if rep.skills.get(n, 0) < lv), None)
    if reasons:
        return Candidate(rep.id, reasons, missing, ordinal=r)
    return Candidate(
        rep.id, (), None, major, key >> LOAD_SHIFT, st.epoch + (key & _AVAIL_MASK) / 1e6, r
    )
