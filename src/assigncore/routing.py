"""Routing and offers: the assignment pass (rules 1-5), offers and their answers,
manual accept, Get Next, transfer, and the end of a session."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import presence, queue_order, sharing
from . import validation as v
from .columns import INELIGIBLE, LOAD_SHIFT
from .errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    shown,
)
from .events import (
    OfferDeclined,
    OfferMade,
    OfferRescinded,
    OwnerReleased,
    ParticipantLeft,
    RepSettingsChanged,
    SessionAccepted,
    SessionEnded,
)
from .model import (
    GENERAL_QUEUE,
    Algorithm,
    Decision,
    Decline,
    EndReason,
    Offer,
    Origin,
    QueueKind,
    QueueRef,
    Rep,
    RescindReason,
    Session,
    SessionState,
    team_queue,
)
from .queue_order import PARKED, READY, SLOT_MASK, PoolKey
from .timers import TimerKind

if TYPE_CHECKING:
    from .state import State

_ALG_NONE = int(Algorithm.NONE)
_NO_POOL = np.zeros(0, dtype=np.int32)
AVAIL_MASK = (1 << LOAD_SHIFT) - 1


def assign(st: State) -> None:
    """Rules 1-5: one kernel pass over the ready sessions that can be offered now, in
    rule-4 order across queues.

    Only pools marked dirty since the last pass can yield an offer. Of each such pool
    with a member who could take its sessions (eligible, with room for its channel,
    allowed by its step), the pass needs only the head of its ready sessions: up to as
    many undeclined sessions as it has such members (each takes one, or they run out),
    with the declined ones among them. The heads of all these pools, merged in rule-4
    order, are the kernel's log, so the cost follows the offers and the queues
    touched, not the sessions waiting. Declined sessions that no such member could
    take are parked until their pool gains one."""
    dirty, st.dirty = st.dirty, set()
    rt, table = st.reps_table, st.sessions_table
    if rt.n_eligible == 0:
        return  # nobody can take anything; the pools will be marked again
    algorithms = st.teams_table.alg
    heads: list[int] = []
    considered: list[tuple[int, PoolKey]] = []
    for t, key in dirty:
        index = st.team_index[t]
        if st.team_eligible[t] <= 0 or index is None or algorithms[t] == _ALG_NONE:
            continue
        assert index.pools is not None
        pool = index.pools.get(key)
        if pool is None or not pool.ready:
            continue
        if key[1] is None and key[2] < 0 and not st.profiled:
            need = st.team_eligible[t]  # (candidates' first case, without the call)
        else:
            need = candidates(st, t, key)
            if need <= 0:
                continue
        considered.append((t, key))
        for k in pool.ready:
            heads.append(k)
            if table.decl_cnt_v[k & SLOT_MASK] == 0:
                need -= 1
                if need == 0:
                    break
    if not heads:
        return
    heads.sort()
    slot_list = [k & SLOT_MASK for k in heads]
    pool_ords: list[int] = []
    for slot in slot_list:
        s = st.session_by_slot[slot]
        assert s is not None
        if s.declined_by:
            ords = [st.reps[r].ordinal for r in s.declined_by if r in st.reps]
            table.decl_off[slot] = len(pool_ords)
            table.decl_cnt_v[slot] = len(ords)
            pool_ords.extend(ords)
    batch = st.kernel.assign_batch(
        np.array(slot_list, dtype=np.int64),
        table.seq[slot_list],
        np.array(pool_ords, dtype=np.int32) if pool_ords else _NO_POOL,
        min(len(heads), rt.n_eligible),
        rt.n_eligible,
    )
    rt.offers_made(len(batch))
    for slot, rep_ord, major, key, eligible in batch.rows.tolist():
        session = st.session_by_slot[slot]
        rep = st.rep_by_ord[rep_ord]
        assert session is not None and rep is not None
        decision = Decision(
            session.step,
            eligible,
            major,
            key >> LOAD_SHIFT,
            st.epoch + (key & AVAIL_MASK) / 1e6,
        )
        make_offer(st, session, rep, decision)
    park(st, heads, considered)


SMALL_TEAM = 48


def candidates(st: State, t: int, key: PoolKey) -> int:
    """How many members of team `t` could be offered a session of pool `key` now:
    eligible, with room for its channel, allowed by its step (declines aside)."""
    chan, strict, only = key
    if strict is None and only < 0 and not st.profiled:
        return st.team_eligible[t]  # every eligible rep has room for every channel
    rt = st.reps_table
    if only >= 0:  # one rep: no need to look at the team
        rep = st.rep_by_ord[only]
        team = st.team_by_ord[t]
        return int(
            rep is not None
            and team is not None
            and team.id in rep.teams
            and rt.key_v[only] != INELIGIBLE
            and bool(rt.room_v[only] & chan)
        )
    members = st.teams_table.members(t)
    need = list(zip(*strict, strict=True)) if strict is not None and strict[0] else []
    if len(members) <= SMALL_TEAM:  # a loop over the views costs less than numpy's set-up
        key_v, room_v, skills_v = rt.key_v, rt.room_v, rt.skills_v
        return sum(
            1
            for r in members.tolist()
            if key_v[r] != INELIGIBLE
            and room_v[r] & chan
            and all(skills_v[r, k] >= level for k, level in need)
        )
    ok = (rt.rank_key[members] != INELIGIBLE) & ((rt.room[members] & chan) != 0)
    if need:
        assert strict is not None
        ords, levels = strict
        ok &= (rt.skills[members][:, list(ords)] >= np.array(levels, dtype=np.uint8)).all(axis=1)
    return int(ok.sum())


def park(st: State, heads: list[int], considered: list[tuple[int, PoolKey]]) -> None:
    """After a pass: in a pool that still has a member who could take its sessions,
    the pass looked at every head (it never ran out of such reps there), so a head
    still ready was declined by every one of them. It waits, parked, until the pool
    gains one."""
    left: list[tuple[int, Session]] = []  # heads still ready: usually none
    for k in heads:
        s = st.session_by_slot[k & SLOT_MASK]
        if s is not None and s.pool == READY and s.key == k:
            left.append((st.sessions_table.team_v[s.slot], s))
    if not left:
        return
    looked = set(considered)
    pools = {(t, s.pool_key) for t, s in left}
    open_pools = {p for p in pools if p in looked and candidates(st, *p) > 0}
    for t, s in left:
        k = s.key
        if (t, s.pool_key) in open_pools:
            index = st.team_index[t]
            assert index is not None and index.pools is not None
            pool = index.pools[s.pool_key]
            pool.ready.remove(k)
            pool.parked[k] = None
            s.pool = PARKED


def make_offer(st: State, s: Session, rep: Rep, decision: Decision | None = None) -> None:
    assert s.queue is not None
    team = st.teams[s.queue.owner]
    offer = Offer(
        st.next_id("offer"),
        s.id,
        rep.id,
        st.now + team.settings.offer_timeout,
        rep.audible_alerts,
        decision=decision,
    )
    offer.timer = st.timers.schedule(offer.deadline, TimerKind.OFFER_DEADLINE, offer.id)
    st.offers[offer.id] = offer
    s.state, s.offer, rep.offer = SessionState.OFFERED, offer.id, offer.id
    queue_order.sync_slot(st, s)
    presence.sync_rep(st, rep)
    st.emit(OfferMade(st.now, offer.id, s.id, rep.id, s.queue, offer.deadline, offer.audible))


def close_offer(st: State, offer: Offer) -> tuple[Session, Rep]:
    st.timers.cancel(offer.timer)
    del st.offers[offer.id]
    closed = st.closed_offers
    closed[offer.id] = st.now
    horizon = st.now - st.config.ended_retention
    while closed:
        oldest = next(iter(closed))
        if closed[oldest] > horizon:
            break
        del closed[oldest]
    s, rep = st.sessions[offer.session_id], st.reps[offer.rep_id]
    s.offer = rep.offer = None
    if s.state is SessionState.OFFERED:
        s.state = SessionState.WAITING
    return s, rep


def rescind(st: State, s: Session, reason: RescindReason) -> None:
    if s.offer is None:
        return
    offer = st.offers[s.offer]
    s, rep = close_offer(st, offer)
    queue_order.sync_slot(st, s)
    presence.sync_rep(st, rep)
    st.emit(OfferRescinded(st.now, offer.id, s.id, rep.id, reason))


def decline(st: State, offer: Offer, timed_out: bool) -> None:
    s, rep = close_offer(st, offer)
    s.declined_by += (rep.id,)
    rep.missed_offers += 1
    assert s.queue is not None and s.queue.kind is QueueKind.TEAM
    s.declines += (Decline(rep.id, st.now, timed_out, s.queue),)
    limit = st.teams[s.queue.owner].settings.max_missed_offers
    st.emit(OfferDeclined(st.now, offer.id, s.id, rep.id, timed_out))
    if limit and rep.missed_offers >= limit and rep.auto_assign:
        rep.auto_assign, rep.opted_out_by_missed_offers, rep.missed_offers = False, True, 0
        st.emit(RepSettingsChanged(st.now, rep.id, False, rep.audible_alerts))
    queue_order.sync_slot(st, s)
    presence.sync_rep(st, rep)


def activate(st: State, s: Session, rep: Rep, via_offer: bool) -> None:
    """The session becomes ACTIVE with `rep` as owner (offer accept or manual)."""
    s.decision = None
    if s.offer is not None:
        offer = st.offers[s.offer]
        if offer.rep_id == rep.id:
            close_offer(st, offer)
            s.decision = offer.decision
        else:
            rescind(st, s, RescindReason.ACCEPTED_BY_OTHER)
    queue = queue_order.dequeue(st, s)
    s.state, s.owner, s.accepted_from = SessionState.ACTIVE, rep.id, queue
    rep.owned = rep.owned | {s.id}
    if via_offer:
        rep.missed_offers = 0
    queue_order.sync_slot(st, s)
    presence.sync_rep(st, rep, load_changed=True)
    st.emit(SessionAccepted(st.now, s.id, rep.id, queue, via_offer))


def release(st: State, s: Session, rep_id: str) -> None:
    rep = st.reps[rep_id]
    rep.owned = rep.owned - {s.id}
    rep.participating = rep.participating - {s.id}
    presence.sync_rep(st, rep, load_changed=True)


def unassign(st: State, s: Session) -> None:
    """Owner and participants let go of an ACTIVE session (it is about to move)."""
    sharing.withdraw_invitations(st, s)
    for rep_id in s.participants:
        release(st, s, rep_id)
        st.emit(ParticipantLeft(st.now, s.id, rep_id))
    s.participants = ()
    if s.owner is not None:
        owner, s.owner = s.owner, None
        release(st, s, owner)
        st.emit(OwnerReleased(st.now, s.id, owner))


def end(st: State, s: Session, reason: EndReason) -> None:
    if s.offer is not None:
        rescind(
            st,
            s,
            RescindReason.CANCELLED
            if reason is EndReason.ABANDONED
            else RescindReason.SESSION_ENDED,
        )
    if s.queue is not None:
        queue_order.dequeue(st, s)
    owner, origin_queue = s.owner, s.accepted_from
    if (
        owner is not None
        and reason is EndReason.COMPLETED
        and origin_queue is not None
        and origin_queue.kind is QueueKind.TEAM
        and origin_queue.owner in st.teams
    ):
        # Wrap-up starts before the load drops, so the rep never flickers eligible.
        wrap_up = st.teams[origin_queue.owner].settings.wrap_up
        rep = st.reps[owner]
        if wrap_up > 0:
            st.timers.cancel(rep.wrap_up_timer)
            rep.wrap_up_timer = st.timers.schedule(st.now + wrap_up, TimerKind.WRAP_UP_END, rep.id)
    unassign(st, s)
    s.state, s.end_reason = SessionState.ENDED, reason
    queue_order.sync_slot(st, s)
    st.sessions_table.release(s.slot)
    st.session_by_slot[s.slot] = None
    st.timers.schedule(st.now + st.config.ended_retention, TimerKind.FORGET_SESSION, s.id)
    st.emit(SessionEnded(st.now, s.id, reason))


def on_offer_deadline(st: State, offer_id: str) -> None:
    offer = st.offers.get(offer_id)
    if offer is None:
        return
    if not st.reps[offer.rep_id].connected:
        # Only an offer kept across a restart can wait for a rep with no console; if the
        # rep is not back by its deadline, that was the restart, not the rep.
        rescind(st, st.sessions[offer.session_id], RescindReason.SERVER_RESTARTED)
    else:
        decline(st, offer, timed_out=True)


def on_forget_session(st: State, session_id: str) -> None:
    """Ended sessions are kept for status queries for a while, then dropped, so a
    long-running desk does not grow without bound."""
    s = st.sessions.get(session_id)
    if s is not None and s.state is SessionState.ENDED:
        del st.sessions[session_id]


def rescind_offer_of(st: State, rep: Rep, reason: RescindReason) -> None:
    if rep.offer is not None:
        rescind(st, st.sessions[st.offers[rep.offer].session_id], reason)


def offer_of(st: State, rep: Rep, offer_id: Any) -> Offer:
    v.ident("offer_id", offer_id)
    offer = st.offers.get(offer_id)
    if offer is None:
        if offer_id in st.closed_offers:
            raise FailedPrecondition(f"offer {shown(offer_id)} is no longer pending")
        raise NotFound("offer", offer_id)
    if offer.rep_id != rep.id:
        raise PermissionDenied(f"offer {shown(offer_id)} was made to another rep")
    return offer


def answer_offer(st: State, rep_id: str, offer_id: str, accept: bool) -> None:
    rep = st.rep(rep_id)
    v.flag("accept", accept)
    offer = offer_of(st, rep, offer_id)
    if accept:
        activate(st, st.sessions[offer.session_id], rep, via_offer=True)
    else:
        decline(st, offer, timed_out=False)


def waiting_visible(st: State, rep: Rep, s: Session) -> None:
    if s.state not in (SessionState.WAITING, SessionState.OFFERED) or s.queue is None:
        raise FailedPrecondition(f"session {shown(s.id)} is not waiting (it is {s.state.value})")
    if not st.can_see(rep, s.queue):
        raise PermissionDenied(f"rep {shown(rep.id)} cannot see queue {s.queue}")


def accept_session(st: State, rep_id: str, session_id: str) -> None:
    """Rule 6: manual accept from a visible queue; first accept wins; ignores load."""
    rep, s = st.rep(rep_id), st.session(session_id)
    waiting_visible(st, rep, s)
    activate(st, s, rep, via_offer=False)


def get_next(st: State, rep_id: str) -> Session | None:
    """Rule 7: the best waiting session (rule-4 order) across the rep's team queues and,
    if permitted, the general queue. None when nothing waits."""
    rep = st.rep(rep_id)
    if not rep.permissions.may_get_next:
        raise PermissionDenied("this rep may not use Get Next")
    queues = [team_queue(t) for t in rep.teams]
    if st.can_see(rep, GENERAL_QUEUE):
        queues.append(GENERAL_QUEUE)
    heads = [index.sessions[0] for index in map(st.queues.__getitem__, queues) if index.sessions]
    best = st.session_by_slot[min(heads) & SLOT_MASK] if heads else None
    if best is not None:
        activate(st, best, rep, via_offer=False)
    return best


def transfer_session(st: State, rep_id: str, session_id: str, target: QueueRef) -> None:
    """Rule 9: to a team queue (embassies included) or a rep's personal queue."""
    rep, s = st.rep(rep_id), st.session(session_id)
    target = st.queue_ref("target", target)
    if target.kind is QueueKind.GENERAL:
        raise InvalidArgument("target", "must be a team or a rep")
    if not rep.permissions.may_transfer:
        raise PermissionDenied("this rep may not transfer sessions")
    if s.state is SessionState.ACTIVE:
        if s.owner != rep.id:
            raise PermissionDenied(f"only the owner may transfer session {shown(session_id)}")
    else:
        waiting_visible(st, rep, s)
    move(st, s, target)


def move(st: State, s: Session, target: QueueRef) -> None:
    """A manual transfer's effect: out of its queue (a pending offer withdrawn) or
    away from its owner and sharers, into `target`; declines and rule moves start
    again."""
    if s.queue is not None:
        rescind(st, s, RescindReason.TRANSFERRED)
        queue_order.dequeue(st, s)
    else:
        unassign(st, s)
    s.declined_by = ()
    s.rule_moves = 0
    s.accepted_from = None
    queue_order.enqueue(st, s, target, Origin.TRANSFER)


def owned_active(st: State, rep: Rep, s: Session) -> None:
    if s.state is not SessionState.ACTIVE:
        raise FailedPrecondition(f"session {shown(s.id)} is not active")
    if s.owner != rep.id:
        raise PermissionDenied(f"rep {shown(rep.id)} does not own session {shown(s.id)}")


def end_session(st: State, rep_id: str, session_id: str) -> None:
    rep, s = st.rep(rep_id), st.session(session_id)
    owned_active(st, rep, s)
    end(st, s, EndReason.COMPLETED)
