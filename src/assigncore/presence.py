"""Presence and fallback: connection, lock, idle and settings; the columns that say who
is eligible (rule 12); what a lost or signed-out rep's sessions do (rule 11)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import capacity, queue_order, routing, sharing, steps
from . import validation as v
from .columns import (
    ALL_CHANNELS,
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
)
from .errors import (
    FailedPrecondition,
    PermissionDenied,
    shown,
)
from .events import (
    EligibilityChanged,
    PresenceChanged,
    RepSettingsChanged,
)
from .model import (
    GENERAL_QUEUE,
    EndReason,
    IneligibleReason,
    Origin,
    Rep,
    RescindReason,
)
from .timers import TimerKind

if TYPE_CHECKING:
    from .state import State

_NO_REASONS: frozenset[IneligibleReason] = frozenset()
_GONE = FLAG_OFFLINE | FLAG_REMOVED  # flags that take a rep out of what steps could match


def _full(st: State, rep: Rep) -> bool:
    """No room for another session: at max_concurrent_sessions, or (with a capacity
    profile) no room in any channel."""
    if rep.permissions.capacity is not None:
        return not st.reps_table.room_v[rep.ordinal]
    cap = rep.permissions.max_concurrent_sessions
    return bool(cap and rep.load >= cap)


def ineligible_reasons(st: State, rep: Rep) -> frozenset[IneligibleReason]:
    if (
        rep.connected
        and not (rep.locked or rep.idle)
        and rep.auto_assign
        and rep.wrap_up_timer is None
        and not _full(st, rep)
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
    if _full(st, rep):
        reasons.add(IneligibleReason.AT_MAX_LOAD)
    return frozenset(reasons)


def sync_rep(st: State, rep: Rep, load_changed: bool = False) -> None:
    """Write a rep's presence, settings, load and offer into the columns; stamp
    available_since when it becomes eligible or its load changes; tell the console
    when the reasons it is ineligible change; ask for a pass when it is eligible."""
    table, o = st.reps_table, rep.ordinal
    st.stats.touched.add(rep.id)
    was_eligible = rep.eligible
    flags = (
        (0 if rep.connected else FLAG_OFFLINE)
        | (FLAG_LOCKED if rep.locked else 0)
        | (FLAG_IDLE if rep.idle else 0)
        | (0 if rep.auto_assign else FLAG_OPTED_OUT)
        | (FLAG_WRAP_UP if rep.wrap_up_timer is not None else 0)
        | (FLAG_PENDING_OFFER if rep.offer is not None else 0)
    )
    gone = table.flags_v[o] & _GONE
    table.flags_v[o] = flags
    profile = rep.permissions.capacity
    changed = gone != flags & _GONE  # signed in or out: what steps could match moved
    if profile is None:
        table.load_v[o] = rep.load
        table.cap_v[o] = rep.permissions.max_concurrent_sessions or NO_CAP
        room = old_room = ALL_CHANNELS
        if rep.id in st.profiled:  # the profile was just taken away
            st.profiled.discard(rep.id)
            old_room = table.room_v[o]
            table.set_room(o, ALL_CHANNELS, ALL_CHANNELS)
            changed = True
    else:
        old_room, old_serves = table.room_v[o], table.serves_v[o]
        table.load_v[o], room, serves = capacity.usage(st, rep, profile)
        table.cap_v[o] = NO_CAP
        st.profiled.add(rep.id)
        table.set_room(o, room, serves)
        changed |= serves != old_serves
    if changed:
        steps.touch(st, [st.teams[t].ordinal for t in rep.teams])
    table.refresh(o)
    eligible = table.key_v[o] != INELIGIBLE
    if load_changed or (eligible and not was_eligible):
        table.set_available(o, available_ticks(st))
    if eligible != was_eligible:
        rep.eligible = eligible
        for team_id in rep.teams:
            st.team_eligible[st.teams[team_id].ordinal] += 1 if eligible else -1
    gained = room if eligible and not was_eligible else room & ~old_room if eligible else 0
    if gained:
        for team_id in rep.teams:
            queue_order.gained(st, st.teams[team_id].ordinal, o, gained)
    reasons = ineligible_reasons(st, rep)
    if reasons != st.reported.get(rep.id):
        st.reported[rep.id] = reasons
        st.emit(EligibilityChanged(st.now, rep.id, not reasons, reasons))


def available_ticks(st: State) -> int:
    """available_since as integer microseconds since the engine's epoch: exact ties
    stay ties, and load and availability fold into one int64 rank key."""
    ticks = round((st.now - st.epoch) * 1e6)
    if ticks > MAX_AVAIL_TICKS:  # after ~8.9 years: move the epoch, keep the order
        st.epoch += st.reps_table.rebase() / 1e6
        ticks = round((st.now - st.epoch) * 1e6)
    return min(ticks, MAX_AVAIL_TICKS)


def on_idle(st: State, rep_id: str) -> None:
    rep = st.reps.get(rep_id)
    if rep is None:
        return
    rep.idle_timer = None
    timeout = rep.permissions.idle_timeout
    if not rep.connected or timeout <= 0 or rep.idle:
        return
    due = rep.last_activity + timeout
    if due > st.now:
        rep.idle_timer = st.timers.schedule(due, TimerKind.IDLE, rep.id)
        return
    rep.idle = True
    routing.rescind_offer_of(st, rep, RescindReason.IDLE)
    emit_presence(st, rep)
    sync_rep(st, rep)


def on_wrap_up_end(st: State, rep_id: str) -> None:
    rep = st.reps.get(rep_id)
    if rep is not None:
        rep.wrap_up_timer = None
        sync_rep(st, rep)


def on_reconnect_grace(st: State, rep_id: str) -> None:
    rep = st.reps.get(rep_id)
    if rep is not None and not rep.connected:
        rep.grace_timer = None
        fall_back(st, rep)


def schedule_idle(st: State, rep: Rep) -> None:
    st.timers.cancel(rep.idle_timer)
    rep.idle_timer = None
    if rep.connected and rep.permissions.idle_timeout > 0:
        rep.idle_timer = st.timers.schedule(
            rep.last_activity + rep.permissions.idle_timeout, TimerKind.IDLE, rep.id
        )


def fall_back(st: State, rep: Rep) -> None:
    """Rule 11: a rep who is gone hands on what they owned, and leaves the rest."""
    for sid in sorted(rep.owned, key=lambda i: st.sessions[i].seq):
        s = st.sessions[sid]
        if s.participants:
            sharing.hand_over(st, s, rep, by_fallback=True)
            continue
        routing.unassign(st, s)
        target = s.accepted_from
        if target is None or target not in st.queues:
            target = GENERAL_QUEUE if st.config.general_queue_enabled else None
        if target is None:
            routing.end(st, s, EndReason.NO_FALLBACK)
        else:
            queue_order.enqueue(st, s, target, Origin.CONNECTION_LOST)
    for sid in sorted(rep.participating, key=lambda i: st.sessions[i].seq):
        sharing.part(st, st.sessions[sid], rep)
    sync_rep(st, rep, load_changed=True)


def emit_presence(st: State, rep: Rep) -> None:
    st.emit(PresenceChanged(st.now, rep.id, rep.connected, rep.locked, rep.idle))


def connect(st: State, rep_id: str) -> None:
    """The rep's console stream opened."""
    rep = st.rep(rep_id)
    if rep.connected:
        raise FailedPrecondition(f"rep {shown(rep_id)} is already connected")
    st.timers.cancel(rep.grace_timer)
    rep.grace_timer = None
    rep.connected, rep.idle, rep.last_activity = True, False, st.now
    schedule_idle(st, rep)
    emit_presence(st, rep)
    sync_rep(st, rep)


def disconnect(st: State, rep_id: str, signed_out: bool = False) -> None:
    """The console went away. A lost connection gets a grace period to come back;
    signing out hands sessions on at once (rule 11)."""
    rep = st.rep(rep_id)
    v.flag("signed_out", signed_out)
    if not rep.connected:
        raise FailedPrecondition(f"rep {shown(rep_id)} is not connected")
    go_offline(st, rep, RescindReason.SIGNED_OUT if signed_out else RescindReason.CONNECTION_LOST)
    if signed_out:
        fall_back(st, rep)
    elif rep.load:
        rep.grace_timer = st.timers.schedule(
            st.now + st.config.reconnect_grace, TimerKind.RECONNECT_GRACE, rep.id
        )


def go_offline(st: State, rep: Rep, reason: RescindReason) -> None:
    rep.connected = False
    st.timers.cancel(rep.idle_timer)
    rep.idle_timer = None
    routing.rescind_offer_of(st, rep, reason)
    emit_presence(st, rep)
    sync_rep(st, rep)


def server_restarted(st: State) -> None:
    """The server is back after a stop or a crash, and a restart is not the reps' fault
    (DESIGN.md 4.2). Runs at the restart's time, before the timers that fell due while
    the server was down:

    - an offer whose deadline passed meanwhile is withdrawn (SERVER_RESTARTED), never
      declined; the others stay pending for their rep to answer on reconnecting (and
      are withdrawn the same way if the rep is not back by the deadline);
    - every rep who was connected has no console now: offline (no new offers), with
      the full reconnect grace from now for what they own, as has every rep whose
      grace was running."""
    for offer in sorted(st.offers.values(), key=lambda o: (o.deadline, o.id)):
        if offer.deadline <= st.now:
            routing.rescind(st, st.sessions[offer.session_id], RescindReason.SERVER_RESTARTED)
    for rep in st.reps.values():
        was_connected = rep.connected
        if was_connected:
            rep.connected = False
            st.timers.cancel(rep.idle_timer)
            rep.idle_timer = None
            emit_presence(st, rep)
            sync_rep(st, rep)
        if was_connected or rep.grace_timer is not None:
            st.timers.cancel(rep.grace_timer)
            rep.grace_timer = None
            if rep.load:  # nothing to hand on: no grace to run
                rep.grace_timer = st.timers.schedule(
                    st.now + st.config.reconnect_grace, TimerKind.RECONNECT_GRACE, rep.id
                )


def set_locked(st: State, rep_id: str, locked: bool) -> None:
    rep = st.rep(rep_id)
    v.flag("locked", locked)
    if rep.locked != locked:
        rep.locked = locked
        if locked:  # the rep cannot see the offer: withdraw it now (not a decline)
            routing.rescind_offer_of(st, rep, RescindReason.LOCKED)
        else:
            touch(st, rep)
        emit_presence(st, rep)
        sync_rep(st, rep)


def touch(st: State, rep: Rep) -> None:
    rep.last_activity = st.now
    if rep.idle:
        rep.idle = False
        schedule_idle(st, rep)
    elif rep.idle_timer is None:
        schedule_idle(st, rep)


def report_activity(st: State, rep_id: str) -> None:
    rep = st.rep(rep_id)
    was_idle = rep.idle
    touch(st, rep)
    if was_idle:
        emit_presence(st, rep)
        sync_rep(st, rep)


def set_auto_assign(st: State, rep: Rep, auto_assign: bool) -> None:
    rep.auto_assign = auto_assign
    rep.opted_out_by_missed_offers = False
    rep.missed_offers = 0
    announce_settings(st, rep)


def announce_settings(st: State, rep: Rep) -> None:
    st.emit(RepSettingsChanged(st.now, rep.id, rep.auto_assign, rep.audible_alerts))
    sync_rep(st, rep)


def update_settings(
    st: State, rep_id: str, auto_assign: bool | None = None, audible_alerts: bool | None = None
) -> Rep:
    rep = st.rep(rep_id)
    if auto_assign is not None:
        v.flag("auto_assign", auto_assign)
        if not auto_assign and not rep.permissions.may_opt_out:
            raise PermissionDenied("this rep may not opt out of automatic assignment")
    if audible_alerts is not None:
        v.flag("audible_alerts", audible_alerts)
        rep.audible_alerts = audible_alerts
    if auto_assign is not None:
        set_auto_assign(st, rep, auto_assign)
    else:
        announce_settings(st, rep)
    return rep
