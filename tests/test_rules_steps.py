"""Routing beyond the seeds, on a manual clock: routing steps (rules 13-15), capacity by
channel (rule 16) and explanations of routing decisions."""

from __future__ import annotations

import pytest

from assigncore.errors import InvalidArgument
from assigncore.events import EligibilityChanged, SessionQueued, StepChanged
from assigncore.explain import Reason
from assigncore.model import (
    Algorithm,
    CapacityProfile,
    IneligibleReason,
    IssueType,
    Permissions,
    RoutingStep,
    SessionState,
    StepKind,
    personal_queue,
    team_queue,
)

from .conftest import Desk, customer

THREE_STEPS = (
    RoutingStep(StepKind.PREFERRED_REP, duration=30),
    RoutingStep(StepKind.SKILLS, (("french", 5),), 60),
    RoutingStep(),
)


def steps_desk(algorithm: Algorithm = Algorithm.LEAST_BUSY, steps=THREE_STEPS) -> Desk:
    d = Desk()
    d.team("support", algorithm, offer_timeout=20)
    d.engine.create_issue_type(IssueType("it", "Issue", "support", (), 0, steps))
    return d


def start(d: Desk, preferred: str = "", it: str = "it", channel=None):
    return d.engine.start_from_issue(
        it, customer(), preferred_rep=preferred, service_channel=channel
    ).value


def offered_to(d: Desk, s) -> str | None:
    offer = d.pending_offer(s.id)
    return None if offer is None else offer.rep_id


def busy(d: Desk, rep: str) -> None:
    """The rep locks the console: signed in, so it could match, but not eligible."""
    d.engine.set_locked(rep, True)


# ---------------------------------------------------------------- rule 13: steps widen


def test_rule_13_preferred_rep_then_skill_then_anyone():
    d = steps_desk()
    d.rep("pat", ["support"], skills={"french": 2})
    d.rep("fra", ["support"], skills={"french": 7})
    d.rep("any", ["support"])
    for rep in ("pat", "fra", "any"):
        busy(d, rep)
    s = start(d, preferred="pat")
    assert d.engine.session(s.id).step == 0
    d.engine.set_locked("fra", False)
    d.engine.set_locked("any", False)
    assert offered_to(d, s) is None  # step 1 allows only pat
    d.later(30)
    assert d.engine.session(s.id).step == 1
    assert offered_to(d, s) == "fra"  # step 2: French 5+
    d.engine.answer_offer("fra", d.pending_offer(s.id).id, False)
    assert offered_to(d, s) is None  # declines carry over; "any" is not French
    d.later(59)
    assert d.engine.session(s.id).step == 1
    d.later(1)
    assert d.engine.session(s.id).step == 2
    assert offered_to(d, s) == "any"
    changes = d.of(StepChanged, session_id=s.id)
    assert [(c.step, c.skipped, c.steps) for c in changes] == [(1, 0, 3), (2, 0, 3)]
    assert [c.step for c in d.engine.session(s.id).step_changes] == [1, 2]


def test_rule_13_a_preferred_step_waits_for_its_rep_while_others_are_free():
    d = steps_desk()
    d.rep("pat", ["support"])
    d.rep("other", ["support"])
    first = start(d)  # no preferred rep: steps 1 and 2 skipped, to the longest available
    assert d.engine.session(first.id).step == 2 and offered_to(d, first) == "pat"
    s = start(d, preferred="pat")  # pat has an offer pending, but is signed in
    assert d.engine.session(s.id).step == 0
    assert offered_to(d, s) is None  # "other" is free, and not allowed yet
    d.engine.answer_offer("pat", d.pending_offer(first.id).id, True)
    assert offered_to(d, s) == "pat"
    assert d.pending_offer(s.id).decision.step == 0


def test_rule_13_steps_expire_in_the_order_sessions_entered_them():
    d = steps_desk()
    d.rep("pat", ["support"], skills={"french": 7})
    busy(d, "pat")
    first = start(d, preferred="pat")
    d.later(10)
    second = start(d, preferred="pat")
    d.later(19.5)
    assert [d.engine.session(x.id).step for x in (first, second)] == [0, 0]
    d.later(0.5)
    assert [d.engine.session(x.id).step for x in (first, second)] == [1, 0]
    d.later(10)
    assert [d.engine.session(x.id).step for x in (first, second)] == [1, 1]
    # one FIFO per (queue, duration), one timer at its head; step 1's is gone
    assert len(d.engine.state.step_fifos) == 1
    [fifo] = d.engine.state.step_fifos.values()
    assert list(fifo.entries) == [first.id, second.id]


def test_rule_14_a_step_nobody_signed_in_could_match_is_skipped_at_once():
    d = steps_desk()
    d.rep("pat", ["support"], connect=False)  # preferred, but signed out
    d.rep("fra", ["support"], skills={"french": 9}, connect=False)
    d.rep("any", ["support"])
    busy(d, "any")
    s = start(d, preferred="pat")
    # pat is not signed in, nobody signed in speaks French: straight to the last step
    assert d.engine.session(s.id).step == 2
    [change] = d.of(StepChanged, session_id=s.id)
    assert (change.step, change.skipped) == (2, 2)
    assert d.engine.state.step_fifos == {}  # the last step never expires
    # told after the queue entry itself, so a console never hears of a change first
    kinds = [type(e) for e in d.events if getattr(e, "session_id", None) == s.id]
    assert kinds.index(SessionQueued) < kinds.index(StepChanged)


def test_rule_13_a_rep_who_learns_a_steps_skill_is_offered_the_session():
    d = steps_desk()
    d.rep("fra", ["support"], skills={"french": 2}, connect=False)
    d.rep("gone", ["support"], skills={"french": 9}, connect=False)
    d.engine.connect("gone")
    d.engine.set_locked("gone", True)  # signed in: step 2 holds, nobody eligible
    t = start(d)
    assert d.engine.session(t.id).step == 1
    d.engine.connect("fra")
    assert offered_to(d, t) is None  # fra is free but lacks French 5
    d.engine.update_rep("fra", skills={"french": 6})
    assert offered_to(d, t) == "fra"


def test_rule_14_an_unknown_or_outside_preferred_rep_skips_the_step():
    d = steps_desk()
    d.team("other")
    d.rep("outsider", ["other"])
    d.rep("fra", ["support"], skills={"french": 6})
    busy(d, "fra")
    s = start(d, preferred="outsider")
    assert d.engine.session(s.id).step == 1
    t = start(d, preferred="nobody-by-that-name")
    assert d.engine.session(t.id).step == 1


def test_rule_14_a_locked_rep_still_counts_as_able_to_match():
    d = steps_desk()
    d.rep("pat", ["support"])
    busy(d, "pat")
    s = start(d, preferred="pat")
    assert d.engine.session(s.id).step == 0
    d.engine.set_locked("pat", False)
    assert offered_to(d, s) == "pat"


def test_rule_13_declines_carry_across_steps():
    d = steps_desk()
    d.rep("pat", ["support"], skills={"french": 8})
    s = start(d, preferred="pat")
    d.engine.answer_offer("pat", d.pending_offer(s.id).id, False)
    d.later(30)
    assert d.engine.session(s.id).step == 1  # pat is French, but declined it
    assert offered_to(d, s) is None
    d.later(60)
    assert offered_to(d, s) is None
    assert d.engine.session(s.id).declined_by == ("pat",)


def test_rule_15_a_transfer_starts_the_step_list_again():
    d = steps_desk()
    d.team("other")
    d.rep("pat", ["support", "other"], permissions=Permissions(may_transfer=True))
    d.rep("fra", ["support"], skills={"french": 7})
    busy(d, "pat")
    busy(d, "fra")
    s = start(d, preferred="pat")
    d.later(30)
    assert d.engine.session(s.id).step == 1
    d.engine.set_locked("fra", False)
    d.engine.answer_offer("fra", d.pending_offer(s.id).id, True)
    d.engine.transfer_session("fra", s.id, team_queue("support"))
    again = d.engine.session(s.id)
    assert again.step == 0 and again.step_changes == () and again.declined_by == ()
    assert again.step_fifo is not None
    d.engine.transfer_session("pat", s.id, team_queue("other"))  # pat is locked, may see it
    moved = d.engine.session(s.id)
    # pat, the preferred rep, is a member of "other" and signed in: step 1 holds there
    assert moved.step == 0 and len(moved.steps) == 3
    assert moved.step_fifo is not None and moved.step_fifo[0] == team_queue("other")


def test_rule_13_the_team_default_list_and_today_behaviour():
    d = Desk()
    team_steps = (RoutingStep(StepKind.SKILLS, (("win", 8),), 10), RoutingStep())
    d.team("support", steps=team_steps)
    d.engine.create_issue_type(IssueType("plain", "Plain", "support", (("win", 1),)))
    d.rep("low", ["support"], skills={"win": 2})
    d.rep("high", ["support"], skills={"win": 9})
    busy(d, "high")
    s = start(d, it="plain")
    assert d.engine.session(s.id).steps == team_steps
    assert offered_to(d, s) is None
    d.later(10)
    assert offered_to(d, s) == "low"


def test_steps_are_validated_whole():
    d = Desk()
    d.team("support")
    bad = [
        (RoutingStep(StepKind.PREFERRED_REP),),  # last step waits for one rep
        (RoutingStep(StepKind.SKILLS, (("a", 5),), 0), RoutingStep()),  # no duration
        (RoutingStep(StepKind.SKILLS, (), 10), RoutingStep()),  # no skills
        (RoutingStep(StepKind.ANY, (("a", 3),), 10), RoutingStep()),  # skills on ANY
        (RoutingStep(StepKind.SKILLS, (("a", 11),), 10), RoutingStep()),  # level
        (RoutingStep(), RoutingStep(duration=5)),  # last step with a duration
        tuple(RoutingStep(duration=1) for _ in range(8)) + (RoutingStep(),),  # 9 steps
    ]
    for steps in bad:
        with pytest.raises(InvalidArgument):
            d.engine.create_issue_type(IssueType("x", "X", "support", (), 0, steps))
    assert d.engine.issue_types() == []


# ---------------------------------------------------------------- rule 16: capacity


def chat_voice_desk() -> Desk:
    d = Desk()
    d.engine.define_channels(["chat", "voice"])
    d.team("support", offer_timeout=20)
    for ch in ("chat", "voice"):
        d.engine.create_issue_type(IssueType(ch, ch, "support", (), 0, (), ch))
    return d


BLENDED = CapacityProfile(3, (("chat", 1), ("voice", 2)), (("voice", 1),))


def chats(units: int) -> Permissions:
    return Permissions(capacity=CapacityProfile(units, (("chat", 1),)))


def accept(d: Desk, s) -> None:
    offer = d.pending_offer(s.id)
    d.engine.answer_offer(offer.rep_id, offer.id, True)


def test_rule_16_one_voice_call_and_one_chat_or_three_chats():
    d = chat_voice_desk()
    d.rep("ann", ["support"], permissions=Permissions(capacity=BLENDED))
    v1 = start(d, it="voice")
    accept(d, v1)
    v2 = start(d, it="voice")
    assert offered_to(d, v2) is None  # at most one voice call
    c1 = start(d, it="chat")
    assert offered_to(d, c1) == "ann"  # 2 + 1 units fit
    accept(d, c1)
    c2 = start(d, it="chat")
    assert offered_to(d, c2) is None  # 3 of 3 units used
    [*_, last] = d.of(EligibilityChanged, rep_id="ann")
    assert last.reasons == {IneligibleReason.AT_MAX_LOAD}
    d.engine.end_session("ann", v1.id)
    # room again: the voice call waiting first (rule 4), then the chat
    assert offered_to(d, v2) == "ann"


def test_rule_16_a_channel_limit_binds_before_the_units_do():
    d = chat_voice_desk()
    # four units: two calls would fit, but at most one call at once
    profile = CapacityProfile(4, (("chat", 1), ("voice", 2)), (("voice", 1),))
    d.rep("ann", ["support"], permissions=Permissions(capacity=profile))
    v1 = start(d, it="voice")
    accept(d, v1)
    v2 = start(d, it="voice")
    assert offered_to(d, v2) is None  # 2 + 2 units fit; the limit of one call does not
    c = start(d, it="chat")
    assert offered_to(d, c) == "ann"  # a chat still has room beside the call
    x = d.engine.explain_routing(v2.id)
    assert [c.reasons for c in x.candidates] == [
        (Reason.HAS_PENDING_OFFER, Reason.NO_ROOM_FOR_CHANNEL)
    ]
    accept(d, c)
    assert [c.reasons for c in d.engine.explain_routing(v2.id).candidates] == [
        (Reason.NO_ROOM_FOR_CHANNEL,)
    ]


def test_rule_16_least_busy_compares_the_share_of_capacity_in_use():
    d = chat_voice_desk()
    d.rep("big", ["support"], permissions=chats(4))
    d.rep("small", ["support"], permissions=chats(2))
    first = start(d, it="chat")
    accept(d, first)  # one of them has one chat
    holder = d.engine.session(first.id).owner
    second = start(d, it="chat")
    other = "small" if holder == "big" else "big"
    assert offered_to(d, second) == other
    accept(d, second)
    # big: 1/4 in use; small: 1/2: big is less busy
    third = start(d, it="chat")
    assert offered_to(d, third) == "big"


def test_rule_16_a_channel_a_profile_has_no_cost_for_is_never_offered():
    d = chat_voice_desk()
    d.rep("chatty", ["support"], permissions=chats(3))
    v = start(d, it="voice")
    assert offered_to(d, v) is None
    c = start(d, it="chat")
    assert offered_to(d, c) == "chatty"
    # the voice call waits in a pool of its own: the chat was not held up behind it
    assert d.engine.session(v.id).state is SessionState.WAITING


def test_rule_16_a_plain_rep_keeps_max_concurrent_sessions_for_every_channel():
    d = chat_voice_desk()
    d.rep("plain", ["support"], permissions=Permissions(max_concurrent_sessions=1))
    v = start(d, it="voice")
    accept(d, v)
    c = start(d, it="chat")
    assert offered_to(d, c) is None
    d.engine.end_session("plain", v.id)
    assert offered_to(d, c) == "plain"


def test_rule_16_channels_and_profiles_are_checked():
    d = chat_voice_desk()
    with pytest.raises(InvalidArgument):
        start(d, channel="fax")
    with pytest.raises(InvalidArgument):
        d.rep("x", permissions=Permissions(capacity=CapacityProfile(2, (("fax", 1),))))
    with pytest.raises(InvalidArgument):
        d.rep("y", permissions=Permissions(capacity=CapacityProfile(0, (("chat", 1),))))
    with pytest.raises(InvalidArgument):
        d.rep(
            "z",
            permissions=Permissions(
                max_concurrent_sessions=2, capacity=CapacityProfile(2, (("chat", 1),))
            ),
        )
    with pytest.raises(InvalidArgument):
        d.engine.define_channels([f"c{i}" for i in range(20)])
    assert sorted(r.id for r in d.engine.reps()) == []
    assert d.engine.define_channels(["chat", "email"]).value == ["chat", "voice", "email"]


# ---------------------------------------------------------------- explanations


def test_explain_a_waiting_session_gives_every_members_reason():
    d = chat_voice_desk()
    d.engine.create_issue_type(
        IssueType(
            "fr",
            "French chat",
            "support",
            (),
            0,
            (RoutingStep(StepKind.SKILLS, (("french", 5),), 60), RoutingStep()),
            "chat",
        )
    )
    d.rep("off", ["support"], skills={"french": 9}, connect=False)
    d.rep("lock", ["support"], skills={"french": 9})
    d.rep("nofr", ["support"], skills={"french": 2})
    d.rep(
        "voice",
        ["support"],
        skills={"french": 9},
        permissions=Permissions(capacity=CapacityProfile(2, (("voice", 2),))),
    )
    d.rep("decl", ["support"], skills={"french": 6})
    busy(d, "lock")
    s = start(d, it="fr")
    assert offered_to(d, s) == "decl"
    d.engine.answer_offer("decl", d.pending_offer(s.id).id, False)
    x = d.engine.explain_routing(s.id)
    assert (x.step, x.steps, x.step_kind, x.channel) == (0, 2, StepKind.SKILLS, "chat")
    why = {c.rep_id: c for c in x.candidates}
    assert why["off"].reasons == (Reason.OFFLINE,)
    assert why["lock"].reasons == (Reason.LOCKED,)
    assert why["nofr"].reasons == (Reason.MISSING_SKILL,)
    assert why["nofr"].missing_skill == ("french", 5)
    assert why["voice"].reasons == (Reason.NO_ROOM_FOR_CHANNEL,)
    assert why["decl"].reasons == (Reason.DECLINED,)
    assert x.best_rep_id == ""
    d.engine.set_locked("lock", False)
    # unlocking offered it: the explanation is now the recorded decision
    y = d.engine.explain_routing(s.id)
    assert y.offered_to == "lock" and y.decision is not None
    assert y.decision.step == 0 and y.decision.candidates >= 1


def test_explain_ranks_the_eligible_in_kernel_order_and_names_the_pick():
    d = Desk()
    d.team("support", Algorithm.BEST_SKILLS, offer_timeout=20)
    d.engine.create_issue_type(IssueType("it", "It", "support", (("win", 3),)))
    d.rep("a", ["support"], skills={"win": 4})
    d.rep("b", ["support"], skills={"win": 9})
    d.rep("c", ["support"], skills={"win": 9})
    busy(d, "a")
    busy(d, "b")
    busy(d, "c")
    s = start(d)
    d.engine.set_locked("c", False)
    # c was offered it at once; keep it waiting by declining, then look with a and b back
    d.engine.answer_offer("c", d.pending_offer(s.id).id, False)
    x = d.engine.explain_routing(s.id)
    assert {c.rep_id: c.reasons for c in x.candidates} == {
        "a": (Reason.LOCKED,),
        "b": (Reason.LOCKED,),
        "c": (Reason.DECLINED,),
    }
    accepted = start(d)  # c takes the next one
    assert offered_to(d, accepted) == "c"
    accept(d, accepted)
    x = d.engine.explain_routing(accepted.id)
    assert x.state is SessionState.ACTIVE and x.offered_to == "c"
    assert x.decision is not None and x.decision.major == -((1 << 20) + 9)


def test_rule_14_skipping_follows_sign_ins_skills_and_membership():
    """Whether a step could match is remembered per team until the team changes: each
    change that can alter the answer is seen by the next session."""
    d = steps_desk()
    d.team("elsewhere")
    d.rep("fra", ["support"], skills={"french": 9}, connect=False)
    d.rep("newbie", ["support"], skills={"french": 1})
    d.rep("mover", ["elsewhere"], skills={"french": 9})
    for rep in ("newbie", "mover"):
        busy(d, rep)

    def step_of_a_new_session() -> int:
        return d.engine.session(start(d).id).step

    assert step_of_a_new_session() == 2  # nobody French signed in: straight to anyone
    d.engine.connect("fra")
    busy(d, "fra")
    assert step_of_a_new_session() == 1  # fra signed in
    d.engine.disconnect("fra", signed_out=True)
    assert step_of_a_new_session() == 2
    d.engine.update_rep("newbie", skills={"french": 5})
    assert step_of_a_new_session() == 1  # newbie learned French
    d.engine.update_rep("newbie", skills={"french": 1})
    assert step_of_a_new_session() == 2
    d.engine.add_team_member("support", "mover")
    assert step_of_a_new_session() == 1  # a French speaker joined the team
    d.engine.remove_team_member("support", "mover")
    assert step_of_a_new_session() == 2


def test_explain_a_session_outside_team_queues_shows_no_routing():
    d = Desk()
    d.team("support", offer_timeout=20)
    d.engine.create_issue_type(IssueType("it", "It", "support"))
    d.rep("ann", ["support"], permissions=Permissions(may_transfer=True))
    s = start(d)
    accept(d, s)
    assert d.engine.explain_routing(s.id).decision is not None  # accepted from an offer
    d.engine.transfer_session("ann", s.id, personal_queue("ann"))
    x = d.engine.explain_routing(s.id)
    assert x.state is SessionState.WAITING and not x.routed
    assert x.candidates == () and x.decision is None and x.steps == 0


def test_explain_lists_at_most_the_limit_and_counts_every_member():
    """A large team's explanation is bounded: the candidates first in ranking order,
    then the others by id, at most `limit`; the counts cover every member."""
    d = Desk()
    d.team("support", Algorithm.NONE)  # nothing is offered: the eligible stay candidates
    for i in (4, 2, 0, 3, 1):  # signed in in this order: the earliest ranks first
        d.rep(f"on{i}", ["support"])
        d.later(1)
    for i in range(7):
        d.rep(f"off{i}", ["support"], connect=False)
    d.engine.set_locked("on3", True)
    d.engine.create_issue_type(IssueType("it", "It", "support"))
    s = start(d)
    full = d.engine.explain_routing(s.id, 5000)
    assert [c.rep_id for c in full.candidates] == [
        *("on4", "on2", "on0", "on1"),  # candidates: longest available first
        *(f"off{i}" for i in range(7)),  # then the others by id (on3 is locked)
        "on3",
    ]
    assert (full.members, full.eligible) == (12, 4)
    assert dict(full.reason_counts) == {Reason.OFFLINE: 7, Reason.LOCKED: 1}
    for limit in (1, 3, 4, 6, 12):
        x = d.engine.explain_routing(s.id, limit)
        assert x.candidates == full.candidates[:limit]
        assert (x.members, x.eligible, x.reason_counts) == (12, 4, full.reason_counts)
    for bad in (0, -1, 5001, True, 2.5):
        with pytest.raises(InvalidArgument) as err:
            d.engine.explain_routing(s.id, bad)
        assert [f for f, _ in err.value.violations] == ["max_candidates"]


def test_rule_16_profiles_replaced_over_and_over_keep_a_bounded_cache():
    """Each distinct profile is compiled once and cached; a desk whose profiles keep
    changing does not keep them all (the cache starts again), and routes the same."""
    from assigncore.capacity import PROFILES_KEPT

    d = chat_voice_desk()
    d.rep("ann", ["support"], permissions=chats(1))
    both = (("chat", 1), ("voice", 1))
    for units in range(1, 1001):  # 2,000 distinct profiles
        d.engine.update_rep("ann", permissions=chats(units))
        d.engine.update_rep("ann", permissions=Permissions(capacity=CapacityProfile(units, both)))
        assert len(d.engine.state.profiles) <= PROFILES_KEPT
    d.engine.update_rep("ann", permissions=chats(2))
    first, second, third = (start(d, it="chat") for _ in range(3))
    accept(d, first)
    accept(d, second)
    assert offered_to(d, third) is None  # two units, two chats


@pytest.mark.parametrize("seed", range(6))
def test_pool_candidates_counted_by_loop_and_by_numpy_agree(seed, monkeypatch):
    """A pass counts a pool's candidates with a loop for small teams and numpy for
    large ones; both give the brute-force count (eligible, room for the channel, the
    step's skills) for every filter."""
    import random

    from assigncore import routing, steps

    rng = random.Random(seed)
    d = chat_voice_desk()
    for i in range(70):
        profile = rng.choice([None, BLENDED, CapacityProfile(2, (("chat", 1),))])
        d.rep(
            f"r{i:02}",
            ["support"],
            connect=rng.random() < 0.8,
            skills={"french": rng.randint(1, 10), "windows": rng.randint(1, 10)},
            permissions=Permissions(capacity=profile),
        )
        if rng.random() < 0.2:
            busy(d, f"r{i:02}")
    for _ in range(25):  # some load, so that room differs per channel
        s = start(d, it=rng.choice(["chat", "voice"]))
        if d.pending_offer(s.id) is not None and rng.random() < 0.7:
            accept(d, s)
    st = d.engine.state
    t = st.teams["support"].ordinal
    french, windows = st.skills["french"], st.skills["windows"]
    for channel in ("", "chat", "voice"):
        bit = 1 << st.channels[channel]
        for strict in (None, ((french,), (5,)), ((french, windows), (3, 7))):
            key = (bit, strict, -1)
            counts = set()
            for small in (0, 10**6):
                monkeypatch.setattr(routing, "SMALL_TEAM", small)
                counts.add(routing.candidates(st, t, key))
            brute = 0
            for rep in st.teams["support"].members:
                r = st.reps[rep]
                step = steps.RoutingStep(
                    StepKind.SKILLS if strict else StepKind.ANY,
                    tuple(zip(("french", "windows"), strict[1], strict=False)) if strict else (),
                )
                brute += (
                    r.eligible
                    and bool(st.reps_table.room_v[r.ordinal] & bit)
                    and all(r.skills.get(n, 0) >= lv for n, lv in step.skills)
                )
            assert counts == {brute}, (channel, strict, counts, brute)
