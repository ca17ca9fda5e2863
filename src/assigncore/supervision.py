"""A supervisor's interventions (DESIGN.md 4.4): what a rep could not do alone.

Each is an engine command like any other (journaled, replayed). Who may do it (a
supervisor's teams, an admin) is the server's question; here the session and the reps
must simply exist and be in a state that allows it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import presence, routing
from . import validation as v
from .errors import FailedPrecondition, InvalidArgument, shown
from .model import QueueKind, QueueRef, SessionState, personal_queue

if TYPE_CHECKING:
    from .state import State


def force_transfer(st: State, session_id: str, target: QueueRef) -> None:
    """Moves a waiting or active session to a team's or a rep's queue, whoever owns
    it: its owner and sharers let go, a pending offer is withdrawn (rule 9 otherwise:
    declines are forgotten, rule moves start again)."""
    s = st.session(session_id)
    target = st.queue_ref("target", target)
    if target.kind is QueueKind.GENERAL:
        raise InvalidArgument("target", "must be a team or a rep")
    if s.state is SessionState.ENDED:
        raise FailedPrecondition(f"session {shown(session_id)} has ended")
    routing.move(st, s, target)


def pull_session(st: State, rep_id: str, session_id: str) -> None:
    """The supervisor's own rep takes the session: a waiting one is accepted at once
    (whatever queue it waits in, whatever the rep's load); an active one is moved from
    its owner to the supervisor, through the supervisor's personal queue."""
    rep, s = st.rep(rep_id), st.session(session_id)
    if s.state is SessionState.ENDED:
        raise FailedPrecondition(f"session {shown(session_id)} has ended")
    if s.owner == rep.id:
        raise FailedPrecondition(f"rep {shown(rep_id)} owns session {shown(session_id)}")
    if s.queue is None:
        routing.move(st, s, personal_queue(rep.id))
    routing.activate(st, s, rep, via_offer=False)


def switch_auto_assign(st: State, rep_id: str, auto_assign: bool) -> None:
    """Switches a rep's automatic assignment on or off, whatever its permissions."""
    rep = st.rep(rep_id)
    v.flag("auto_assign", auto_assign)
    presence.set_auto_assign(st, rep, auto_assign)
