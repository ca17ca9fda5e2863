"""What a console reads: queues with counts, favourites, chat, items, search; and
directory changes taking effect on the next pass."""

from __future__ import annotations

from assigncore.events import ChatMessagePosted, OfferRescinded
from assigncore.model import (
    GENERAL_QUEUE,
    Algorithm,
    Channel,
    HelpLink,
    Permissions,
    RescindReason,
    Target,
    TeamKind,
    personal_queue,
    team_queue,
)

from .conftest import Desk, customer
from .test_rules import offered_to, start_team_session


def test_rep_queues_list_personal_favourites_teams_general_with_counts(desk):
    desk.team("zulu", Algorithm.NONE)
    desk.team("alpha", Algorithm.NONE)
    desk.team("mike", Algorithm.NONE)
    desk.rep("ann", ["zulu", "alpha", "mike"], permissions=Permissions(may_use_general_queue=True))
    start_team_session(desk, "mike")
    start_team_session(desk, "mike", name="two")
    desk.engine.start_undesignated(customer())
    desk.engine.set_favourite("ann", "zulu", True)
    queues = desk.engine.rep_queues("ann")
    assert [str(q.queue) for q in queues] == [
        "personal/ann",
        "team/zulu",
        "team/alpha",
        "team/mike",
        "general",
    ]
    assert [q.sessions for q in queues] == [0, 0, 0, 2, 1]
    assert [q.favourite for q in queues] == [False, True, False, False, False]


def test_team_chat_unread_mark_until_read(desk):
    desk.team("support", Algorithm.NONE)
    desk.rep("ann", ["support"])
    desk.rep("bob", ["support"])
    desk.engine.post_chat("ann", "support", "anyone on printers?")
    assert desk.of(ChatMessagePosted)[0].text == "anyone on printers?"

    def unread(rep):
        return {str(q.queue): q.unread_chat for q in desk.engine.rep_queues(rep)}["team/support"]

    assert unread("bob") and not unread("ann")
    assert [m.text for m in desk.engine.chat_messages("bob", "support")] == ["anyone on printers?"]
    desk.engine.mark_chat_read("bob", "support")
    assert not unread("bob")


def test_queue_items_show_browser_sessions_and_invitations_in_order(desk):
    desk.team("web", Algorithm.NONE)
    desk.rep("ann", ["web"])
    desk.rep("bob", ["web"])
    desk.engine.create_help_link(HelpLink("l", "Web", Target(team_id="web")))
    browser = desk.engine.start_from_help_link("l", customer("Browsy")).value
    desk.clock.tick(1)
    other = start_team_session(desk, "web", name="later")
    desk.engine.accept_session("ann", other.id)
    inv = desk.engine.invite("ann", other.id, team_queue("web")).value
    items = desk.engine.queue_items(team_queue("web"))
    assert [i.id for i in items] == [browser.id, inv.id]
    assert items[0].session.channel is Channel.BROWSER_SHARING
    assert items[1].invitation is not None and items[1].session.id == other.id


def test_search_targets(desk):
    desk.team("support")
    desk.engine.create_team("partner", "Partner Corp", TeamKind.EMBASSY)
    desk.rep("ann")
    desk.rep("annabel")
    desk.rep("bob")
    assert [t.id for t in desk.engine.search_teams("corp")] == ["partner"]
    assert [t.id for t in desk.engine.search_teams(kind=TeamKind.STANDARD)] == ["support"]
    assert [r.id for r in desk.engine.search_reps("ann")] == ["ann", "annabel"]


def test_directory_changes_take_effect_on_the_next_pass(desk):
    desk.team("support", Algorithm.SKILLS_MATCH_LEAST_BUSY)
    desk.team("other", Algorithm.NONE)
    desk.rep("ann", ["support"], skills={"win": 2})
    desk.rep("bob", ["other"])
    first = start_team_session(desk, "support", skills=[("win", 5)])
    assert offered_to(desk, first) == "ann"  # peeled: nobody has win 5
    desk.engine.answer_offer("ann", desk.pending_offer(first.id).id, False)
    desk.engine.add_team_member("support", "bob")  # joining is a trigger
    assert offered_to(desk, first) == "bob"
    desk.engine.remove_team_member("support", "bob")  # pending offer rescinded
    assert desk.of(OfferRescinded)[-1].reason is RescindReason.LEFT_TEAM
    desk.engine.update_rep("ann", skills={"win": 9})
    second = start_team_session(desk, "support", skills=[("win", 5)], name="second")
    assert offered_to(desk, second) == "ann"
    desk.engine.update_team(
        "support", settings=desk.engine.team("support").settings.__class__(algorithm=Algorithm.NONE)
    )
    third = start_team_session(desk, "support", name="third")
    assert offered_to(desk, third) is None


def test_max_load_change_applies_at_once(desk):
    desk.team("support")
    desk.rep("ann", ["support"], permissions=Permissions(max_concurrent_sessions=1))
    s = start_team_session(desk, "support")
    desk.engine.answer_offer("ann", desk.pending_offer(s.id).id, True)
    waiting = start_team_session(desk, "support", name="w")
    assert offered_to(desk, waiting) is None
    desk.engine.update_rep("ann", permissions=Permissions(max_concurrent_sessions=2))
    assert offered_to(desk, waiting) == "ann"


def test_signing_out_hands_sessions_on_at_once(desk):
    desk.team("support", Algorithm.NONE)
    desk.rep("ann", ["support"])
    s = start_team_session(desk, "support")
    desk.engine.accept_session("ann", s.id)
    desk.engine.disconnect("ann", signed_out=True)
    assert desk.engine.session(s.id).queue == team_queue("support")


def test_general_queue_disabled_refuses_undesignated_and_ends_orphans():
    from assigncore.engine import EngineConfig
    from assigncore.errors import FailedPrecondition
    from assigncore.model import EndReason

    d = Desk(EngineConfig(general_queue_enabled=False))
    d.team("temp", Algorithm.NONE)
    d.rep("ann", ["temp"])
    try:
        d.engine.start_undesignated(customer())
        raise AssertionError("accepted")
    except FailedPrecondition:
        pass
    s = start_team_session(d, "temp")
    d.engine.accept_session("ann", s.id)
    d.engine.delete_issue_type(d.engine.session(s.id).issue_type_id)
    d.engine.delete_team("temp")
    d.engine.disconnect("ann", signed_out=True)
    assert d.engine.session(s.id).end_reason is EndReason.NO_FALLBACK
    assert GENERAL_QUEUE not in [q.queue for q in d.engine.rep_queues("ann")]
    assert personal_queue("ann") in [q.queue for q in d.engine.rep_queues("ann")]


def test_ended_sessions_are_forgotten_after_the_retention_period(desk):
    from assigncore.errors import NotFound

    desk.team("support", Algorithm.NONE)
    desk.rep("ann", ["support"])
    s = start_team_session(desk, "support")
    desk.engine.accept_session("ann", s.id)
    desk.engine.end_session("ann", s.id)
    desk.later(3599)
    assert desk.engine.session(s.id).state.value == "ENDED"
    desk.later(1)
    try:
        desk.engine.session(s.id)
        raise AssertionError("still there")
    except NotFound:
        pass
    assert desk.engine.sessions() == []


def test_queue_position_follows_the_listed_rule_4_order(desk):
    desk.team("web", Algorithm.NONE)
    desk.team("other", Algorithm.NONE)
    desk.rep("ann", ["web", "other"])
    old = start_team_session(desk, "other", name="old")  # created first, moved in last
    desk.clock.tick(1)
    low = start_team_session(desk, "web", name="low")
    desk.clock.tick(1)
    vip = start_team_session(desk, "web", priority=5, name="vip")
    active = start_team_session(desk, "web", name="active")
    desk.engine.accept_session("ann", active.id)
    desk.engine.invite("ann", active.id, team_queue("web"))  # an invitation in the queue
    desk.engine.transfer_session("ann", old.id, team_queue("web"))
    listed = [
        i.session.id for i in desk.engine.queue_items(team_queue("web")) if i.invitation is None
    ]
    assert listed == [vip.id, old.id, low.id]
    assert [desk.engine.queue_position(s) for s in listed] == [1, 2, 3]
    assert desk.engine.queue_position(active.id) == 0
