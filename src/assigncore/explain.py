"""Why a session is, or is not, offered to each rep (SupervisorService.ExplainRouting).

For a session waiting for an offer in a team queue, the ranking kernel itself is asked
(`Kernel.explain`): per member of the team, what keeps the rep from it (WHY_* bits, and
for an ineligible rep its flags) and the keys the ranking compares, and the rep it would
pick. So the explanation cannot drift from routing: it is the same code. For an offered
or accepted session it is the decision recorded with the offer when it was made.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

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
from .constants import WHY_DECLINED, WHY_MISSING_SKILL, WHY_NO_ROOM, WHY_NOT_PREFERRED
from .model import Decision, QueueKind, QueueRef, SessionState, StepKind

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
    candidates: tuple[Candidate, ...] = ()  # a waiting session: every member, ranked first
    best_rep_id: str = ""  # who the kernel would offer it to now ("" nobody)
    offered_to: str = ""  # an offered or accepted session: the rep
    decision: Decision | None = None  # as recorded with that offer


def explain(st: State, session_id: str) -> Explanation:
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
    members = st.teams_table.members(team.ordinal).tolist()
    best, why, major, key = st.kernel.explain(s.slot, declined, len(members))
    rt = st.reps_table
    step = s.steps[s.step]
    out: list[Candidate] = []
    for i, r in enumerate(members):
        rep = st.rep_by_ord[r]
        assert rep is not None
        bits, reasons = int(why[i]), []
        if bits & 1:  # WHY_INELIGIBLE: the rep's own state says why
            flags = int(rt.flags[r])
            reasons = [reason for flag, reason in _FLAGS if flags & flag]
            if not reasons:
                reasons = [Reason.AT_CAPACITY]
        reasons += [reason for bit, reason in _WHY if bits & bit]
        missing = None
        if bits & WHY_MISSING_SKILL:
            missing = next((n, lv) for n, lv in step.skills if rep.skills.get(n, 0) < lv)
        k = int(key[i])
        eligible = not bits & 1
        out.append(
            Candidate(
                rep.id,
                tuple(reasons),
                missing,
                int(major[i]) if eligible else 0,
                k >> LOAD_SHIFT if eligible else 0,
                st.epoch + (k & _AVAIL_MASK) / 1e6 if eligible else 0.0,
                r,
            )
        )
    if step.kind is StepKind.PREFERRED_REP and s.preferred_rep not in team.members:
        out.append(Candidate(s.preferred_rep, (Reason.NOT_A_MEMBER,)))
    # Candidates first, in the order the kernel ranks them; then the others by id.
    out.sort(
        key=lambda c: (
            (1, 0, 0, 0, c.rep_id)
            if c.reasons
            else (0, c.major, (c.load << LOAD_SHIFT), c.available_since, c.ordinal)
        )
    )
    best_rep = st.rep_by_ord[best] if best >= 0 else None
    return Explanation(
        **base,  # type: ignore[arg-type]
        candidates=tuple(out),
        best_rep_id=best_rep.id if best_rep is not None else "",
    )
