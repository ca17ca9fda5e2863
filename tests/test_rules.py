"""One scenario per routing rule of DESIGN.md section 2, on a manual clock."""

from __future__ import annotations

import pytest

from assigncore.engine import EngineConfig
from assigncore.errors import FailedPrecondition, PermissionDenied
from assigncore.events import (
    EligibilityChanged,
    OfferDeclined,
    OfferMade,
    OfferRescinded,
    OwnershipChanged,
    RepSettingsChanged,
    SessionOverdue,
)
from assigncore.model import (
    GENERAL_QUEUE,
    Algorithm,
    IneligibleReason,
    IssueType,
    Origin,
    Permissions,
    QueueKind,
    RescindReason,
    RuleAction,
    SessionState,
    SupportButton,
    Target,
    TeamKind,
    WaitingRule,
    personal_queue,
    team_queue,
)

from .conftest import Desk, customer


def start_team_session(d: Desk, team: str, skills=(), priority: int = 0, name: str = "Carol"):
    it_id = f"it-{team}-{len(skills)}-{priority}-{'_'.join(s for s, _ in skills)}"
    if it_id not in {i.id for i in d.engine.issue_types()}:
        d.engine.create_issue_type(IssueType(it_id, "Issue", team, tuple(skills), priority))
    return d.engine.start_from_issue(it_id, customer(name)).value


def offered_to(d: Desk, session) -> str | None:
    offer = d.pending_offer(session.id)
    return None if offer is None else offer.rep_id


# ---------------------------------------------------------------- rule 1: offer


def test_rule_01_offer_goes_to_an_eligible_member_with_deadline_and_audible_flag(desk):
    desk.team("support", offer_timeout=45)
    desk.rep("ann", ["support"], audible_alerts=False)
    s = start_team_session(desk, "support")
    [offer] = desk.of(OfferMade, session_id=s.id)
    assert offer.rep_id == "ann"
    assert offer.deadline == desk.clock.t + 45
    assert offer.audible is False
    assert desk.engine.session(s.id).state is SessionState.OFFERED


def test_rule_01_at_most_one_pending_offer_per_session_and_per_rep(desk):
    desk.team("support")
    desk.rep("ann", ["support"])
    first = start_team_session(desk, "support")
    second = start_team_session(desk, "support", name="Dan")
    assert offered_to(desk, first) == "ann"
    assert offered_to(desk, second) is None
    desk.rep("bob", ["support"])
    assert offered_to(desk, second) == "bob"
    assert len(desk.of(OfferMade, session_id=first.id)) == 1


def test_rule_01_algorithm_none_never_offers(desk):
    desk.team("manual", Algorithm.NONE)
    desk.rep("ann", ["manual"])
    s = start_team_session(desk, "manual")
    assert desk.of(OfferMade) == []
    assert desk.engine.session(s.id).state is SessionState.WAITING


# ---------------------------------------------------------------- rule 2: best candidate


def test_rule_02_least_busy_prefers_lowest_load(desk):
    desk.team("support")
    desk.rep("ann", ["support"])
    desk.rep("bob", ["support"])
    busy = start_team_session(desk, "support")
    desk.engine.answer_offer("ann", desk.pending_offer(busy.id).id, True)
    s = start_team_session(desk, "support")
    assert offered_to(desk, s) == "bob"


def test_rule_02_least_busy_ties_go_to_longest_available_then_lowest_ordinal(desk):
    desk.team("support")
    desk.rep("ann", ["support"], connect=False)
    desk.rep("bob", ["support"], connect=False)
    desk.engine.connect("bob")
    desk.clock.tick(5)
    desk.engine.connect("ann")
    s = start_team_session(desk, "support")
    assert offered_to(desk, s) == "bob"  # available 5 s longer, though created later

    d2 = Desk()
    d2.team("support")
    d2.rep("zed", ["support"], connect=False)
    d2.rep("amy", ["support"], connect=False)
    d2.engine.connect("amy")
    d2.engine.connect("zed")  # same instant
    assert offered_to(d2, start_team_session(d2, "support")) == "zed"  # lower ordinal


def test_rule_02_skills_match_peels_least_important_skill_until_someone_qualifies(desk):
    desk.team("tech", Algorithm.SKILLS_MATCH_LEAST_BUSY)
    desk.rep("ann", ["tech"], skills={"windows": 5})  # lacks printers
    desk.rep("bob", ["tech"], skills={"windows": 7, "printers": 4})
    # bob is busier but the only full match
    warm = start_team_session(desk, "tech", skills=[("windows", 7)])
    desk.engine.answer_offer("bob", desk.pending_offer(warm.id).id, True)
    s = start_team_session(desk, "tech", skills=[("windows", 5), ("printers", 3)])
    assert offered_to(desk, s) == "bob"
    desk.engine.answer_offer("bob", desk.pending_offer(s.id).id, False)
    # nobody else fully qualifies: printers is peeled, ann (windows 5) qualifies
    assert offered_to(desk, s) == "ann"


def test_rule_02_skills_match_with_no_skill_left_everyone_qualifies(desk):
    desk.team("tech", Algorithm.SKILLS_MATCH_LEAST_BUSY)
    desk.rep("ann", ["tech"], skills={"mac": 2})
    desk.rep("bob", ["tech"])
    s = start_team_session(desk, "tech", skills=[("linux", 9), ("bsd", 9)])
    assert offered_to(desk, s) == "ann"  # all qualify: least busy, then ordinal


def test_rule_02_skills_match_requires_the_most_important_skill_first(desk):
    desk.team("tech", Algorithm.SKILLS_MATCH_LEAST_BUSY)
    desk.rep("ann", ["tech"], skills={"printers": 9})  # holds only the less important one
    desk.rep("bob", ["tech"], skills={"windows": 5})
    s = start_team_session(desk, "tech", skills=[("windows", 5), ("printers", 5)])
    assert offered_to(desk, s) == "bob"


def test_rule_02_best_skills_highest_proficiency_sum_over_kept_skills(desk):
    desk.team("tech", Algorithm.BEST_SKILLS)
    desk.rep("ann", ["tech"], skills={"windows": 5, "printers": 5, "mac": 10})
    desk.rep("bob", ["tech"], skills={"windows": 9, "printers": 3})
    warm = start_team_session(desk, "tech")
    desk.engine.accept_session("bob", warm.id)  # bob busier: sum still decides
    s = start_team_session(desk, "tech", skills=[("windows", 3), ("printers", 3)])
    assert offered_to(desk, s) == "bob"  # 12 > 10; ann's mac is not a kept skill


# ---------------------------------------------------------------- rule 3: answer


def test_rule_03_accept_makes_session_active_with_owner(desk):
    desk.team("support")
    desk.rep("ann", ["support"])
    s = start_team_session(desk, "support")
    desk.engine.answer_offer("ann", desk.pending_offer(s.id).id, True)
    live = desk.engine.session(s.id)
    assert (live.state, live.owner, live.queue) == (SessionState.ACTIVE, "ann", None)
    assert desk.engine.rep("ann").load == 1


def test_rule_03_reject_and_timeout_move_on_and_never_repeat(desk):
    desk.team("support", offer_timeout=20)
    for r in ("ann", "bob", "cat"):
        desk.rep(r, ["support"])
    s = start_team_session(desk, "support")
    assert offered_to(desk, s) == "ann"
    desk.engine.answer_offer("ann", desk.pending_offer(s.id).id, False)
    assert offered_to(desk, s) == "bob"
    desk.later(20)  # bob lets it time out
    assert offered_to(desk, s) == "cat"
    desk.engine.answer_offer("cat", desk.pending_offer(s.id).id, False)
    # everyone declined: it stays queued, no further offers
    assert desk.engine.session(s.id).state is SessionState.WAITING
    assert list(desk.engine.session(s.id).declined_by) == ["ann", "bob", "cat"]  # in order
    desk.later(600)
    assert [o.rep_id for o in desk.of(OfferMade, session_id=s.id)] == ["ann", "bob", "cat"]
    # a new eligible rep who has not declined appears: offered at once
    desk.rep("dan", ["support"])
    assert offered_to(desk, s) == "dan"


def test_rule_03_manual_transfer_clears_declined_by(desk):
    desk.team("support")
    desk.team("billing")
    desk.rep("ann", ["support", "billing"])
    s = start_team_session(desk, "support")
    desk.engine.answer_offer("ann", desk.pending_offer(s.id).id, False)
    assert offered_to(desk, s) is None
    desk.engine.transfer_session("ann", s.id, team_queue("billing"))
    assert not desk.engine.session(s.id).declined_by
    assert offered_to(desk, s) == "ann"


def test_rule_03_stale_offer_answer_is_refused_and_changes_nothing(desk):
    desk.team("support", offer_timeout=10)
    desk.rep("ann", ["support"])
    desk.rep("bob", ["support"])
    s = start_team_session(desk, "support")
    stale = desk.pending_offer(s.id).id
    desk.later(10)
    before = desk.engine.snapshot()
    with pytest.raises(FailedPrecondition):
        desk.engine.answer_offer("ann", stale, True)
    assert desk.engine.snapshot() == before


# ---------------------------------------------------------------- rule 4: order


def test_rule_04_higher_priority_first_then_earliest_created(desk):
    desk.team("support")
    desk.rep("ann", ["support"], connect=False)
    low_old = start_team_session(desk, "support", priority=1, name="old")
    desk.clock.tick(1)
    high = start_team_session(desk, "support", priority=5, name="high")
    desk.clock.tick(1)
    low_new = start_team_session(desk, "support", priority=1, name="new")
    desk.engine.connect("ann")
    assert offered_to(desk, high) == "ann"
    desk.engine.answer_offer("ann", desk.pending_offer(high.id).id, True)
    desk.engine.end_session("ann", high.id)
    assert offered_to(desk, low_old) == "ann"
    assert offered_to(desk, low_new) is None


def test_rule_04_whole_wait_counts_across_moves(desk):
    desk.team("support")
    desk.team("billing")
    desk.rep("ann", ["support", "billing"], connect=False)
    desk.rep("mover", ["support"], connect=False)
    old = start_team_session(desk, "support", name="old")
    desk.clock.tick(30)
    new = start_team_session(desk, "billing", name="new")
    desk.clock.tick(30)
    desk.engine.transfer_session("mover", old.id, team_queue("billing"))  # re-queued last
    desk.engine.connect("ann")
    assert offered_to(desk, old) == "ann"
    assert offered_to(desk, new) is None


# ---------------------------------------------------------------- rule 5: re-run triggers


@pytest.mark.parametrize(
    "trigger",
    ["connect", "unlock", "activity", "opt_in", "end", "leave", "wrap_up", "reject", "timeout"],
)
def test_rule_05_assignment_reruns_when_a_rep_may_become_eligible(trigger):
    d = Desk()
    d.team(
        "support", Algorithm.LEAST_BUSY, offer_timeout=10, wrap_up=30 if trigger == "wrap_up" else 0
    )
    d.team("side", Algorithm.NONE)
    perms = Permissions(max_concurrent_sessions=1, idle_timeout=60, may_opt_out=True)
    d.rep("ann", ["support"], permissions=perms, connect=trigger != "connect")
    first = start_team_session(d, "support", name="first")
    if trigger in ("end", "wrap_up"):
        d.engine.answer_offer("ann", d.pending_offer(first.id).id, True)
    elif trigger == "leave":  # ann is at her limit as a participant of someone else's session
        d.rep("own", ["side"])
        d.engine.answer_offer("ann", d.pending_offer(first.id).id, False)
        shared = start_team_session(d, "side", name="shared")
        d.engine.accept_session("own", shared.id)
        inv = d.engine.invite("own", shared.id, personal_queue("ann")).value
        d.engine.accept_invitation("ann", inv.id)
    elif trigger == "unlock":
        d.engine.answer_offer("ann", d.pending_offer(first.id).id, False)
        d.engine.set_locked("ann", True)
    elif trigger == "activity":
        d.engine.answer_offer("ann", d.pending_offer(first.id).id, False)
        d.later(61)
        assert d.engine.rep("ann").idle
    elif trigger == "opt_in":
        d.engine.answer_offer("ann", d.pending_offer(first.id).id, False)
        d.engine.update_settings("ann", auto_assign=False)
    second = start_team_session(d, "support", name="second")
    assert offered_to(d, second) is None
    if trigger == "connect":
        d.engine.connect("ann")
    elif trigger == "unlock":
        d.engine.set_locked("ann", False)
    elif trigger == "activity":
        d.engine.report_activity("ann")
    elif trigger == "opt_in":
        d.engine.update_settings("ann", auto_assign=True)
    elif trigger in ("end", "wrap_up"):
        d.engine.end_session("ann", first.id)
    elif trigger == "leave":
        d.engine.leave_session("ann", next(iter(d.engine.rep("ann").participating)))
    elif trigger == "reject":
        d.engine.answer_offer("ann", d.pending_offer(first.id).id, False)
    elif trigger == "timeout":
        d.later(10)
    if trigger == "wrap_up":
        assert offered_to(d, second) is None
        d.later(29)
        assert offered_to(d, second) is None
        d.later(1)
    # Offline from the start, ann never saw `first`: rule 4 gives her the older one.
    assert offered_to(d, first if trigger == "connect" else second) == "ann"


def test_rule_05_one_pass_considers_every_queue(desk):
    for t in ("a", "b", "c"):
        desk.team(t)
    desk.rep("ann", ["a"], connect=False)
    desk.rep("bob", ["b"], connect=False)
    desk.rep("cat", ["c"], connect=False)
    sessions = [start_team_session(desk, t) for t in ("a", "b", "c")]
    for r in ("ann", "bob", "cat"):
        desk.engine.connect(r)
    assert [offered_to(desk, s) for s in sessions] == ["ann", "bob", "cat"]


# ---------------------------------------------------------------- rule 6: manual accept


def test_rule_06_first_accept_wins_and_rescinds_the_pending_offer(desk):
    desk.team("support")
    desk.rep("ann", ["support"])
    desk.rep("bob", ["support"], permissions=Permissions(max_concurrent_sessions=1))
    busy = start_team_session(desk, "support", name="busy")
    desk.engine.accept_session("bob", busy.id)  # bob is now at his limit
    s = start_team_session(desk, "support")
    offer = desk.pending_offer(s.id)
    assert offer.rep_id == "ann"
    desk.engine.accept_session("bob", s.id)  # ignores bob's load limit
    assert desk.engine.session(s.id).owner == "bob"
    assert desk.engine.rep("bob").load == 2
    assert desk.of(OfferRescinded, offer_id=offer.id)[0].reason is RescindReason.ACCEPTED_BY_OTHER
    with pytest.raises(FailedPrecondition):
        desk.engine.accept_session("ann", s.id)


def test_rule_06_only_visible_queues(desk):
    desk.team("support")
    desk.team("other", Algorithm.NONE)
    desk.rep("ann", ["support"])
    s = start_team_session(desk, "other")
    with pytest.raises(PermissionDenied):
        desk.engine.accept_session("ann", s.id)
    g = desk.engine.start_undesignated(customer()).value
    with pytest.raises(PermissionDenied):
        desk.engine.accept_session("ann", g.id)
    desk.rep("gil", permissions=Permissions(may_use_general_queue=True))
    desk.engine.accept_session("gil", g.id)
    assert desk.engine.session(g.id).owner == "gil"


# ---------------------------------------------------------------- rule 7: get next


def test_rule_07_get_next_takes_best_across_team_queues_and_general(desk):
    desk.team("a", Algorithm.NONE)
    desk.team("b", Algorithm.NONE)
    desk.rep("ann", ["a", "b"], permissions=Permissions(may_use_general_queue=True))
    old_a = start_team_session(desk, "a", name="old")
    desk.clock.tick(1)
    vip_b = start_team_session(desk, "b", priority=3, name="vip")
    desk.clock.tick(1)
    general = desk.engine.start_undesignated(customer()).value
    assert desk.engine.get_next("ann").value.id == vip_b.id
    assert desk.engine.get_next("ann").value.id == old_a.id
    assert desk.engine.get_next("ann").value.id == general.id
    assert desk.engine.get_next("ann").value is None


def test_rule_07_get_next_needs_permission_and_skips_general_without_it(desk):
    desk.team("a", Algorithm.NONE)
    desk.rep("ann", ["a"], permissions=Permissions(may_get_next=False))
    desk.rep("bob", ["a"])
    desk.engine.start_undesignated(customer())
    before = desk.engine.snapshot()
    with pytest.raises(PermissionDenied):
        desk.engine.get_next("ann")
    assert desk.engine.snapshot() == before
    assert desk.engine.get_next("bob").value is None


# ---------------------------------------------------------------- rule 8: waiting rules


def test_rule_08_alert_fires_once_per_queue_entry(desk):
    desk.team("support", Algorithm.NONE, waiting_rule=WaitingRule(60, RuleAction.ALERT))
    desk.team("other", Algorithm.NONE, waiting_rule=WaitingRule(60, RuleAction.ALERT))
    desk.rep("ann", ["support", "other"])
    s = start_team_session(desk, "support")
    desk.later(59)
    assert desk.of(SessionOverdue) == []
    desk.later(1)
    assert len(desk.of(SessionOverdue, session_id=s.id)) == 1
    desk.later(600)
    assert len(desk.of(SessionOverdue, session_id=s.id)) == 1
    desk.engine.transfer_session("ann", s.id, team_queue("other"))  # a new queue entry
    desk.later(60)
    assert len(desk.of(SessionOverdue, session_id=s.id)) == 2


def test_rule_08_transfer_rule_moves_to_overflow_keeping_declined_by(desk):
    desk.team("overflow", offer_timeout=30)
    desk.team(
        "front",
        offer_timeout=30,
        waiting_rule=WaitingRule(100, RuleAction.TRANSFER, team_queue("overflow")),
    )
    desk.rep("ann", ["front", "overflow"])
    desk.rep("bob", ["overflow"], connect=False)
    s = start_team_session(desk, "front")
    desk.engine.answer_offer("ann", desk.pending_offer(s.id).id, False)
    desk.later(100)
    live = desk.engine.session(s.id)
    assert live.queue == team_queue("overflow")
    assert live.origin is Origin.WAITING_RULE
    assert list(live.declined_by) == ["ann"]
    assert offered_to(desk, s) is None  # ann declined it before; kept
    desk.engine.connect("bob")
    assert offered_to(desk, s) == "bob"


def test_rule_08_ping_pong_stops_after_max_rule_moves_and_alerts(desk):
    from assigncore.engine import EngineConfig

    d = Desk(EngineConfig(max_rule_moves=3))
    d.team("a", Algorithm.NONE)
    d.team("b", Algorithm.NONE, waiting_rule=WaitingRule(10, RuleAction.TRANSFER, team_queue("a")))
    d.engine.update_team(
        "a",
        settings=d.engine.team("a").settings.__class__(
            algorithm=Algorithm.NONE,
            waiting_rule=WaitingRule(10, RuleAction.TRANSFER, team_queue("b")),
        ),
    )
    s = start_team_session(d, "a")
    d.later(1000)
    live = d.engine.session(s.id)
    assert live.rule_moves == 3
    assert [str(m.queue) for m in live.history] == ["team/a", "team/b", "team/a", "team/b"]
    [alert] = d.of(SessionOverdue, session_id=s.id)
    assert alert.rule_moves_exhausted and alert.queue == team_queue("b")


# ---------------------------------------------------------------- rule 9: transfer


def test_rule_09_owner_transfers_to_embassy_and_stops_owning(desk):
    desk.team("support")
    desk.engine.create_team("partner", "Partner", TeamKind.EMBASSY)
    desk.rep("ann", ["support"])
    desk.rep("ext", ["partner"], connect=False)
    s = start_team_session(desk, "support")
    desk.engine.answer_offer("ann", desk.pending_offer(s.id).id, True)
    desk.engine.transfer_session("ann", s.id, team_queue("partner"))
    live = desk.engine.session(s.id)
    assert (live.state, live.owner, live.queue, live.origin) == (
        SessionState.WAITING,
        None,
        team_queue("partner"),
        Origin.TRANSFER,
    )
    assert desk.engine.rep("ann").load == 0
    assert [t.id for t in desk.engine.search_teams(kind=TeamKind.EMBASSY)] == ["partner"]


def test_rule_09_transfer_to_a_rep_and_permission(desk):
    desk.team("support", Algorithm.NONE)
    desk.rep("ann", ["support"])
    desk.rep("nop", ["support"], permissions=Permissions(may_transfer=False))
    desk.rep("bob")
    s = start_team_session(desk, "support")
    with pytest.raises(PermissionDenied):
        desk.engine.transfer_session("nop", s.id, personal_queue("bob"))
    desk.engine.transfer_session("ann", s.id, personal_queue("bob"))  # a waiting one it sees
    assert [i.id for i in desk.engine.queue_items(personal_queue("bob"))] == [s.id]


# ---------------------------------------------------------------- rule 10: shared sessions


def test_rule_10_invitations_participants_and_ownership_passing(desk):
    desk.team("support")
    desk.team("experts", Algorithm.LEAST_BUSY)
    desk.rep("ann", ["support"])
    desk.rep("bob", ["experts"])
    desk.rep("cat", ["experts"])
    s = start_team_session(desk, "support")
    desk.engine.answer_offer("ann", desk.pending_offer(s.id).id, True)
    inv_team = desk.engine.invite("ann", s.id, team_queue("experts")).value
    inv_rep = desk.engine.invite("ann", s.id, personal_queue("cat")).value
    assert desk.of(OfferMade, session_id=s.id)[-1].rep_id == "ann"  # invitations not offered
    desk.engine.accept_invitation("bob", inv_team.id)
    desk.engine.accept_invitation("cat", inv_rep.id)
    assert desk.engine.session(s.id).participants == ("bob", "cat")
    assert desk.engine.rep("bob").load == 1
    desk.engine.leave_session("ann", s.id)
    assert desk.engine.session(s.id).owner == "bob"
    assert desk.of(OwnershipChanged)[-1].to_rep == "bob"
    desk.engine.invite("bob", s.id, personal_queue("ann"))
    desk.engine.end_session("bob", s.id)
    assert desk.engine.queue_items(personal_queue("ann")) == []
    assert desk.engine.rep("cat").load == 0


# ---------------------------------------------------------------- rule 11: connection lost


def test_rule_11_drop_rescinds_offer_and_reroutes(desk):
    desk.team("support")
    desk.rep("ann", ["support"])
    desk.rep("bob", ["support"])
    s = start_team_session(desk, "support")
    desk.engine.disconnect("ann")
    assert desk.of(OfferRescinded)[-1].reason is RescindReason.CONNECTION_LOST
    assert offered_to(desk, s) == "bob"
    assert not desk.engine.session(s.id).declined_by


def test_rule_11_fallback_order_participant_then_queue_then_general(desk):
    desk.team("support", Algorithm.NONE)
    desk.rep("ann", ["support"])
    desk.rep("bob", ["support"])
    shared = start_team_session(desk, "support", name="shared")
    alone = start_team_session(desk, "support", name="alone")
    desk.engine.accept_session("ann", shared.id)
    desk.engine.accept_session("ann", alone.id)
    general = desk.engine.start_undesignated(customer("g")).value
    desk.engine.update_rep("ann", permissions=Permissions(may_use_general_queue=True))
    desk.engine.accept_session("ann", general.id)
    inv = desk.engine.invite("ann", shared.id, personal_queue("bob")).value
    desk.engine.accept_invitation("bob", inv.id)
    desk.engine.disconnect("ann")
    desk.later(29)
    assert desk.engine.session(alone.id).owner == "ann"  # still in grace
    desk.later(1)
    assert desk.engine.session(shared.id).owner == "bob"
    assert desk.of(OwnershipChanged, session_id=shared.id)[0].by_fallback
    back = desk.engine.session(alone.id)
    assert (back.queue, back.origin) == (team_queue("support"), Origin.CONNECTION_LOST)
    assert desk.engine.session(general.id).queue == GENERAL_QUEUE
    assert desk.engine.rep("ann").load == 0


def test_a_restart_is_not_the_reps_fault(desk):
    """DESIGN.md 4.2: an offer whose deadline passed while the server was down is
    withdrawn, not declined; one still running stays for its rep to answer on coming
    back, and is withdrawn (not declined) if the rep is not back in time; every rep gets
    the full reconnect grace from the restart."""
    desk.team("support", offer_timeout=30)
    desk.team("desk", offer_timeout=120)
    desk.rep("ann", ["support"])
    desk.rep("bob", ["desk"])
    desk.rep("cat", ["support"])
    busy = start_team_session(desk, "support", name="busy")
    desk.engine.answer_offer("ann", desk.engine.rep("ann").offer, True)  # ann owns one
    expired = start_team_session(desk, "support", name="expired")
    assert offered_to(desk, expired) == "cat"
    kept = start_team_session(desk, "desk", name="kept")
    assert offered_to(desk, kept) == "bob"
    desk.clock.tick(60)  # down for a minute: cat's offer ran out, bob's did not
    desk.engine.server_restarted()
    withdrawn = desk.of(OfferRescinded, session_id=expired.id)
    assert [e.reason for e in withdrawn] == [RescindReason.SERVER_RESTARTED]
    assert not desk.of(OfferDeclined)
    assert desk.engine.session(expired.id).declined_by == ()
    assert desk.engine.rep("cat").missed_offers == 0
    assert offered_to(desk, kept) == "bob"  # still pending
    assert not any(r.connected for r in desk.engine.reps())
    assert desk.engine.offers() and not desk.engine.eligible("cat")
    desk.engine.connect("bob")
    desk.engine.answer_offer("bob", desk.engine.rep("bob").offer, True)
    assert desk.engine.session(kept.id).owner == "bob"
    desk.later(29)  # the grace runs from the restart, not from the crash
    assert desk.engine.session(busy.id).owner == "ann"
    desk.later(1)
    assert desk.engine.session(busy.id).owner is None


def test_an_offer_kept_across_a_restart_is_withdrawn_if_its_rep_is_not_back(desk):
    desk.team("support", offer_timeout=30)
    desk.rep("ann", ["support"])
    s = start_team_session(desk, "support")
    desk.clock.tick(10)
    desk.engine.server_restarted()
    assert offered_to(desk, s) == "ann"
    desk.later(20)
    assert [e.reason for e in desk.of(OfferRescinded)] == [RescindReason.SERVER_RESTARTED]
    assert not desk.of(OfferDeclined) and desk.engine.session(s.id).declined_by == ()


def test_rule_11_fallback_to_general_when_the_queue_is_gone(desk):
    desk.team("temp", Algorithm.NONE)
    desk.rep("ann", ["temp"])
    s = start_team_session(desk, "temp")
    desk.engine.accept_session("ann", s.id)
    desk.engine.delete_issue_type(desk.engine.session(s.id).issue_type_id)
    desk.engine.delete_team("temp")
    desk.engine.disconnect("ann")
    desk.later(30)
    assert desk.engine.session(s.id).queue == GENERAL_QUEUE


def test_rule_11_reconnect_within_grace_keeps_sessions(desk):
    desk.team("support")
    desk.rep("ann", ["support"])
    s = start_team_session(desk, "support")
    desk.engine.answer_offer("ann", desk.pending_offer(s.id).id, True)
    desk.engine.disconnect("ann")
    desk.later(20)
    desk.engine.connect("ann")
    desk.later(60)
    assert desk.engine.session(s.id).owner == "ann"


# ---------------------------------------------------------------- rule 12: presence


def test_rule_12_each_cause_makes_the_rep_ineligible_and_says_why(desk):
    desk.team("support")
    perms = Permissions(max_concurrent_sessions=1, idle_timeout=120, may_opt_out=True)
    desk.rep("ann", ["support"], permissions=perms)

    def reasons():
        return desk.of(EligibilityChanged, rep_id="ann")[-1].reasons

    assert desk.engine.eligible("ann") and reasons() == frozenset()
    desk.engine.set_locked("ann", True)
    assert reasons() == {IneligibleReason.LOCKED} and not desk.engine.eligible("ann")
    desk.engine.set_locked("ann", False)
    desk.later(120)
    assert reasons() == {IneligibleReason.IDLE}
    desk.engine.report_activity("ann")
    desk.engine.update_settings("ann", auto_assign=False)
    assert reasons() == {IneligibleReason.OPTED_OUT}
    desk.engine.update_settings("ann", auto_assign=True)
    s = start_team_session(desk, "support")
    desk.engine.answer_offer("ann", desk.pending_offer(s.id).id, True)
    assert reasons() == {IneligibleReason.AT_MAX_LOAD}
    assert offered_to(desk, start_team_session(desk, "support")) is None


@pytest.mark.parametrize("cause", ["lock", "idle"])
def test_rule_12_lock_and_idle_withdraw_the_offer_at_once_and_it_is_no_decline(desk, cause):
    desk.team("support", offer_timeout=300)
    desk.rep("ann", ["support"], permissions=Permissions(idle_timeout=60))
    desk.clock.tick(1)
    desk.rep("bob", ["support"])
    s = start_team_session(desk, "support")
    first = desk.pending_offer(s.id)
    assert first.rep_id == "ann"  # available longest
    if cause == "lock":
        desk.engine.set_locked("ann", True)
    else:
        desk.later(60)  # well before the offer's deadline
    rescinded = desk.of(OfferRescinded, offer_id=first.id)
    expected = RescindReason.LOCKED if cause == "lock" else RescindReason.IDLE
    assert [e.reason for e in rescinded] == [expected]
    assert offered_to(desk, s) == "bob"  # re-routed at once
    assert not desk.engine.session(s.id).declined_by
    assert desk.engine.rep("ann").missed_offers == 0
    assert not desk.of(OfferDeclined)


def test_rescind_reasons_name_transfer_and_cancel(desk):
    desk.team("support")
    desk.team("other", Algorithm.NONE)
    desk.rep("ann", ["support"])
    s = start_team_session(desk, "support")
    first = desk.pending_offer(s.id)
    desk.engine.transfer_session("ann", s.id, team_queue("support"))
    second = desk.pending_offer(s.id)
    desk.engine.cancel_session(s.id)
    reasons = {e.offer_id: e.reason for e in desk.of(OfferRescinded)}
    assert reasons == {
        first.id: RescindReason.TRANSFERRED,
        second.id: RescindReason.CANCELLED,
    }


def test_ids_are_random_unguessable_and_not_reused_by_a_new_engine():
    """Two engines (as before and after a restart) with fresh randomness hand out
    different ids; ids carry 100 random bits and no counter."""
    import random
    import re

    from assigncore.state import Entropy

    from .conftest import Desk

    seen: list[str] = []
    for seed in (1, 2):
        d = Desk()
        d.engine.state.entropy = Entropy(random.Random(seed).randbytes(32))
        d.team("support")
        d.rep("ann", ["support"])
        d.rep("bob", ["support"])
        for _ in range(20):
            s = start_team_session(d, "support")
            offer = d.pending_offer(s.id)
            d.engine.answer_offer(offer.rep_id, offer.id, True)
            inv = d.engine.invite(offer.rep_id, s.id, team_queue("support")).value
            seen += [s.id, offer.id, inv.id]
    assert len(set(seen)) == len(seen)
    for ident in seen:
        assert re.fullmatch(r"(ses|off|inv)_[0-9a-f]{25}", ident), ident


def test_rule_12_opt_out_needs_permission(desk):
    desk.rep("ann")
    with pytest.raises(PermissionDenied):
        desk.engine.update_settings("ann", auto_assign=False)


def test_max_missed_offers_switches_auto_assign_off(desk):
    desk.team("support", offer_timeout=10, max_missed_offers=2)
    desk.rep("ann", ["support"])
    a = start_team_session(desk, "support", name="a")
    b = start_team_session(desk, "support", name="b")
    desk.engine.answer_offer("ann", desk.pending_offer(a.id).id, False)
    assert offered_to(desk, b) == "ann"
    desk.later(10)
    assert desk.engine.rep("ann").auto_assign is False
    assert desk.of(RepSettingsChanged, rep_id="ann")[-1].auto_assign is False
    assert desk.of(EligibilityChanged, rep_id="ann")[-1].reasons == {IneligibleReason.MISSED_OFFERS}
    desk.engine.update_settings("ann", auto_assign=True)  # opting back in is always allowed
    assert desk.engine.eligible("ann")  # a and b stay declined by her: nothing to offer
    assert offered_to(desk, a) is None and offered_to(desk, b) is None
    c = start_team_session(desk, "support", name="c")
    assert offered_to(desk, c) == "ann"


# ---------------------------------------------------------------- origins


def test_origin_session_key_lands_in_the_generating_reps_queue_and_is_single_use(desk):
    desk.rep("ann")
    key = desk.engine.generate_session_key("ann").value
    s = desk.engine.start_with_key(key.lower(), customer()).value
    assert (s.queue, s.origin) == (personal_queue("ann"), Origin.SESSION_KEY)
    from assigncore.errors import NotFound

    with pytest.raises(NotFound) as used:
        desk.engine.start_with_key(key, customer())
    expiring = desk.engine.generate_session_key("ann", ttl=60).value
    desk.later(60)
    with pytest.raises(NotFound) as expired:
        desk.engine.start_with_key(expiring, customer())
    with pytest.raises(NotFound) as unknown:
        desk.engine.start_with_key("ZZZZZZZZ", customer())
    assert used.value.message == expired.value.message == unknown.value.message


def test_origin_session_key_guessing_is_limited_per_customer_not_per_portal(desk):
    from assigncore.errors import NotFound, ResourceExhausted

    desk.rep("ann")
    key = desk.engine.generate_session_key("ann").value
    for _ in range(10):
        with pytest.raises(NotFound):
            desk.engine.start_with_key("AAAAAAAA", customer(), "portal-1", "1.2.3.4")
    with pytest.raises(ResourceExhausted):  # this customer is refused, even a valid key
        desk.engine.start_with_key(key, customer(), "portal-1", "1.2.3.4")
    # Another customer of the same portal is not.
    assert desk.engine.start_with_key(key, customer(), "portal-1", "5.6.7.8").value is not None
    desk.later(60)
    with pytest.raises(NotFound):
        desk.engine.start_with_key("AAAAAAAA", customer(), "portal-1", "1.2.3.4")


def test_origin_session_key_guessing_has_a_larger_budget_per_portal():
    from assigncore.errors import NotFound, ResourceExhausted

    desk = Desk(EngineConfig(key_failures_allowed=10, key_failures_per_portal=25))
    desk.rep("ann")
    key = desk.engine.generate_session_key("ann").value
    for i in range(25):  # spread over addresses, each under its own limit
        with pytest.raises(NotFound):
            desk.engine.start_with_key("AAAAAAAA", customer(), "portal-1", f"10.0.0.{i}")
    with pytest.raises(ResourceExhausted):
        desk.engine.start_with_key(key, customer(), "portal-1", "10.9.9.9")
    # Another portal has its own budget.
    assert desk.engine.start_with_key(key, customer(), "portal-2", "10.9.9.9").value is not None


def test_origin_public_site_only_for_shown_reps(desk):
    from assigncore.errors import NotFound

    desk.rep("ann", permissions=Permissions(shown_on_public_site=True))
    desk.rep("bob")
    s = desk.engine.start_with_rep("ann", customer()).value
    assert (s.queue, s.origin) == (personal_queue("ann"), Origin.PUBLIC_SITE)
    with pytest.raises(NotFound):
        desk.engine.start_with_rep("bob", customer())


def test_origin_support_buttons_to_rep_and_team(desk):
    desk.team("support", Algorithm.NONE)
    desk.rep("ann")
    desk.engine.create_support_button(SupportButton("b1", "Ann's", Target(rep_id="ann")))
    desk.engine.create_support_button(SupportButton("b2", "Desk", Target(team_id="support")))
    a = desk.engine.start_from_button("b1", customer()).value
    b = desk.engine.start_from_button("b2", customer()).value
    assert (a.queue, a.origin) == (personal_queue("ann"), Origin.SUPPORT_BUTTON)
    assert (b.queue, b.origin) == (team_queue("support"), Origin.SUPPORT_BUTTON)


def test_origin_issue_form_uses_team_skills_and_priority(desk):
    desk.team("support", Algorithm.NONE)
    desk.engine.create_issue_type(IssueType("vpn", "VPN", "support", (("net", 4),), 7))
    s = desk.engine.start_from_issue("vpn", customer()).value
    assert (s.queue, s.origin, s.priority, s.required_skills) == (
        team_queue("support"),
        Origin.ISSUE_FORM,
        7,
        (("net", 4),),
    )


def test_origin_help_links_are_browser_sharing(desk):
    from assigncore.model import Channel, HelpLink

    desk.team("web", Algorithm.NONE)
    desk.rep("ann")
    desk.engine.create_help_link(HelpLink("l1", "Web", Target(team_id="web")))
    desk.engine.create_help_link(HelpLink("l2", "Ann", Target(rep_id="ann")))
    a = desk.engine.start_from_help_link("l1", customer()).value
    b = desk.engine.start_from_help_link("l2", customer()).value
    assert (a.queue, a.channel, a.origin) == (
        team_queue("web"),
        Channel.BROWSER_SHARING,
        Origin.HELP_LINK,
    )
    assert (b.queue, b.channel) == (personal_queue("ann"), Channel.BROWSER_SHARING)


def test_origin_undesignated_goes_to_general_queue(desk):
    s = desk.engine.start_undesignated(customer()).value
    assert (s.queue.kind, s.origin) == (QueueKind.GENERAL, Origin.UNDESIGNATED)


def test_customer_cancel_ends_as_abandoned_and_frees_the_rep(desk):
    from assigncore.model import EndReason

    desk.team("support")
    desk.rep("ann", ["support"])
    s = start_team_session(desk, "support")
    desk.engine.cancel_session(s.id)
    assert desk.engine.session(s.id).end_reason is EndReason.ABANDONED
    assert desk.engine.eligible("ann")


def test_a_session_every_eligible_member_declined_waits_until_someone_new_or_a_transfer(desk):
    """Parked sessions: declined by every eligible member, they are not looked at again
    until the team gains an eligible member, or a manual transfer clears declined_by
    (even back into the same queue)."""
    desk.team("support", offer_timeout=30)
    desk.rep("ann", ["support"])
    s = start_team_session(desk, "support")
    desk.engine.answer_offer("ann", desk.pending_offer(s.id).id, False)
    assert offered_to(desk, s) is None  # ann is eligible, but declined it
    second = start_team_session(desk, "support", name="Dan")
    assert offered_to(desk, second) == "ann"  # the next one is not held up behind it
    desk.engine.answer_offer("ann", desk.pending_offer(second.id).id, True)
    desk.rep("bob", ["support"])  # someone new: the parked session is offered to bob
    assert offered_to(desk, s) == "bob"
    desk.engine.answer_offer("bob", desk.pending_offer(s.id).id, False)
    assert offered_to(desk, s) is None
    desk.engine.transfer_session("bob", s.id, team_queue("support"))  # same queue
    assert offered_to(desk, s) == "bob"  # declines cleared: offered again


def test_deleting_a_signed_in_rep_signs_it_off_first_and_its_offer_moves_on(desk):
    from assigncore.errors import FailedPrecondition as Refused

    desk.team("support")
    desk.rep("ann", ["support"])
    desk.clock.tick(1)
    desk.rep("bob", ["support"])
    s = start_team_session(desk, "support")
    offer = desk.pending_offer(s.id)
    assert offer.rep_id == "ann"
    desk.engine.delete_rep("ann")
    assert [e.reason for e in desk.of(OfferRescinded, offer_id=offer.id)] == [
        RescindReason.SIGNED_OUT
    ]
    assert offered_to(desk, s) == "bob"
    assert desk.engine.find_rep("ann") is None
    desk.engine.answer_offer("bob", desk.pending_offer(s.id).id, True)
    with pytest.raises(Refused):  # a rep who owns a session is not deleted
        desk.engine.delete_rep("bob")
    assert desk.engine.find_rep("bob") is not None
