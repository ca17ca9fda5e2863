"""A supervisor's interventions as engine commands, on a manual clock."""

from __future__ import annotations

import pytest

from assigncore.errors import FailedPrecondition, InvalidArgument
from assigncore.events import OfferRescinded, SessionAccepted
from assigncore.model import (
    GENERAL_QUEUE,
    Decline,
    IssueType,
    RescindReason,
    SessionState,
    personal_queue,
    team_queue,
)
from assigncore.stats import RepState

from .conftest import T0, Desk, customer


@pytest.fixture
def d() -> Desk:
    d = Desk()
    d.team("support", offer_timeout=20)
    d.team("sales")
    d.rep("ann", ["support"])
    d.rep("bob", ["support"])
    d.rep("sue", [])  # a supervisor's own rep, in no team
    d.engine.create_issue_type(IssueType("it", "Issue", "support"))
    return d


def start(d: Desk) -> str:
    return d.engine.start_from_issue("it", customer()).value.id


def test_force_transfer_takes_an_active_session_from_its_owner(d):
    s = start(d)
    offer = d.pending_offer(s)
    d.engine.answer_offer(offer.rep_id, offer.id, True)
    d.engine.force_transfer(s, team_queue("sales"))
    session = d.engine.session(s)
    assert (session.state, session.queue, session.owner) == (
        SessionState.WAITING,
        team_queue("sales"),
        None,
    )
    assert d.engine.rep(offer.rep_id).load == 0


def test_force_transfer_of_an_offered_session_withdraws_the_offer(d):
    s = start(d)
    offer = d.pending_offer(s)
    d.engine.force_transfer(s, personal_queue("sue"))
    assert d.of(OfferRescinded, offer_id=offer.id)[0].reason is RescindReason.TRANSFERRED
    assert d.engine.session(s).queue == personal_queue("sue")


def test_force_transfer_refuses_the_general_queue_and_ended_sessions(d):
    s = start(d)
    with pytest.raises(InvalidArgument):
        d.engine.force_transfer(s, GENERAL_QUEUE)
    d.engine.cancel_session(s)
    with pytest.raises(FailedPrecondition):
        d.engine.force_transfer(s, team_queue("sales"))


def test_pull_takes_a_waiting_session_from_a_queue_the_rep_cannot_see(d):
    d.engine.set_locked("ann", True)
    d.engine.set_locked("bob", True)
    s = start(d)
    d.engine.pull_session("sue", s)
    session = d.engine.session(s)
    assert (session.state, session.owner) == (SessionState.ACTIVE, "sue")
    [accepted] = d.of(SessionAccepted, session_id=s)
    assert (accepted.queue, accepted.via_offer) == (team_queue("support"), False)


def test_pull_takes_an_active_session_from_its_owner(d):
    s = start(d)
    offer = d.pending_offer(s)
    d.engine.answer_offer(offer.rep_id, offer.id, True)
    d.engine.pull_session("sue", s)
    assert d.engine.session(s).owner == "sue"
    assert d.engine.rep(offer.rep_id).load == 0
    with pytest.raises(FailedPrecondition):
        d.engine.pull_session("sue", s)


def test_auto_assign_switched_whatever_the_reps_permissions(d):
    d.engine.switch_auto_assign("ann", False)  # ann may not opt out herself
    [row] = [r for r in d.engine.statistics().reps if r.rep_id == "ann"]
    assert (row.state, row.reason) == (RepState.AWAY, "OPTED_OUT")
    s = start(d)
    assert d.pending_offer(s).rep_id == "bob"
    d.engine.switch_auto_assign("ann", True)
    assert d.engine.rep("ann").auto_assign


def test_declines_are_kept_with_why_across_transfers(d):
    s = start(d)
    first = d.pending_offer(s)
    d.engine.answer_offer(first.rep_id, first.id, False)
    second = d.pending_offer(s)
    d.clock.tick(20)
    d.engine.advance()  # times out
    d.engine.force_transfer(s, team_queue("sales"))
    session = d.engine.session(s)
    assert session.declined_by == ()  # rule 9: offered afresh
    assert session.declines == (
        Decline(first.rep_id, T0, False, team_queue("support")),
        Decline(second.rep_id, T0 + 20, True, team_queue("support")),
    )
