"""Shared sessions (rule 10): invitations, participants, and ownership passing on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import presence, routing
from . import validation as v
from .errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    shown,
)
from .events import (
    InvitationCreated,
    InvitationRemoved,
    OwnershipChanged,
    ParticipantJoined,
    ParticipantLeft,
)
from .model import (
    Invitation,
    QueueKind,
    QueueRef,
    Rep,
    Session,
    SessionState,
)
from .queue_order import rule4_key

if TYPE_CHECKING:
    from .state import State


def withdraw_invitations(st: State, s: Session) -> None:
    for inv_id in s.invitations:
        inv = st.invitations.pop(inv_id)
        st.queues[inv.queue].remove_invitation(inv.key)
        del st.inv_by_key[inv.key]
        st.emit(InvitationRemoved(st.now, inv_id, s.id, inv.queue, None))
    s.invitations = ()


def hand_over(st: State, s: Session, owner: Rep, by_fallback: bool) -> None:
    """Rule 10/11: the owner goes; the participant who joined first owns it now."""
    heir, s.participants = s.participants[0], s.participants[1:]
    s.owner = heir
    heir_rep = st.reps[heir]
    heir_rep.participating = heir_rep.participating - {s.id}
    heir_rep.owned = heir_rep.owned | {s.id}
    owner.owned = owner.owned - {s.id}
    st.emit(OwnershipChanged(st.now, s.id, owner.id, heir, by_fallback))


def part(st: State, s: Session, rep: Rep) -> None:
    """A participant leaves a shared session."""
    s.participants = tuple(p for p in s.participants if p != rep.id)
    rep.participating = rep.participating - {s.id}
    st.emit(ParticipantLeft(st.now, s.id, rep.id))


def leave_session(st: State, rep_id: str, session_id: str) -> None:
    """A participant leaves; an owner leaving hands the session to the participant
    who joined first (rule 10). An owner alone must end or transfer instead."""
    rep, s = st.rep(rep_id), st.session(session_id)
    if s.state is not SessionState.ACTIVE:
        raise FailedPrecondition(f"session {shown(session_id)} is not active")
    if s.owner == rep.id:
        if not s.participants:
            raise FailedPrecondition("the owner is alone: end or transfer the session")
        hand_over(st, s, rep, by_fallback=False)
    elif rep.id in s.participants:
        part(st, s, rep)
    else:
        raise FailedPrecondition(f"rep {shown(rep_id)} is not in session {shown(session_id)}")
    presence.sync_rep(st, rep, load_changed=True)


def invite(st: State, rep_id: str, session_id: str, target: QueueRef) -> Invitation:
    """Rule 10: invite a rep (their personal queue) or a team (its queue)."""
    rep, s = st.rep(rep_id), st.session(session_id)
    target = st.queue_ref("target", target)
    if target.kind is QueueKind.GENERAL:
        raise InvalidArgument("target", "must be a team or a rep")
    routing.owned_active(st, rep, s)
    if target.kind is QueueKind.PERSONAL and (
        target.owner == rep.id or target.owner in s.participants
    ):
        raise FailedPrecondition(f"rep {shown(target.owner)} is already in the session")
    if any(st.invitations[i].queue == target for i in s.invitations):
        raise AlreadyExists("invitation", f"{session_id} -> {target}")
    inv = Invitation(
        st.next_id("invitation"),
        s.id,
        rep.id,
        target,
        st.now,
        rule4_key(s.priority, st.next_seq()),
    )
    st.invitations[inv.id] = inv
    st.queues[target].add_invitation(inv.key)
    st.inv_by_key[inv.key] = inv.id
    s.invitations += (inv.id,)
    st.emit(InvitationCreated(st.now, inv.id, s.id, rep.id, target))
    return inv


def accept_invitation(st: State, rep_id: str, invitation_id: str) -> None:
    rep = st.rep(rep_id)
    inv = st.invitations.get(v.ident("invitation_id", invitation_id))
    if inv is None:
        raise NotFound("invitation", invitation_id)
    if not st.can_see(rep, inv.queue):
        raise PermissionDenied(f"rep {shown(rep_id)} cannot see queue {inv.queue}")
    s = st.sessions[inv.session_id]
    if s.owner == rep.id or rep.id in s.participants:
        raise FailedPrecondition(f"rep {shown(rep_id)} is already in the session")
    del st.invitations[inv.id]
    st.queues[inv.queue].remove_invitation(inv.key)
    del st.inv_by_key[inv.key]
    s.invitations = tuple(i for i in s.invitations if i != inv.id)
    s.participants += (rep.id,)
    rep.participating = rep.participating | {s.id}
    st.emit(InvitationRemoved(st.now, inv.id, s.id, inv.queue, rep.id))
    st.emit(ParticipantJoined(st.now, s.id, rep.id))
    presence.sync_rep(st, rep, load_changed=True)
