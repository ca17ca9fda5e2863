"""Live statistics (DESIGN.md 4.4) on a manual clock, against figures worked out by hand;
and rebuilt the same from the journal's records and from a snapshot."""

from __future__ import annotations

import random

import pytest

from assigncore import snapshot
from assigncore.engine import Engine, EngineConfig
from assigncore.errors import InvalidArgument
from assigncore.model import (
    GENERAL_QUEUE,
    Customer,
    IssueType,
    Permissions,
    QueueSettings,
    RuleAction,
    WaitingRule,
    personal_queue,
    team_queue,
)
from assigncore.stats import Counts, RepState, day_bounds

from .conftest import T0, Desk, ManualClock, customer

# T0 is 40 s into its minute (1970-01-12 13:46:40 UTC).
assert T0 % 60 == 40


def queue(d: Desk, ref, teams=None):
    [q] = [q for q in d.engine.statistics(teams).queues if q.queue == ref]
    return q


def rep(d: Desk, rep_id: str):
    [r] = [r for r in d.engine.statistics().reps if r.rep_id == rep_id]
    return r


def issue(d: Desk, team: str) -> str:
    d.engine.create_issue_type(IssueType(f"it-{team}", "Issue", team))
    return f"it-{team}"


def at(d: Desk, t: float) -> None:
    d.clock.t = T0 + t
    d.engine.advance()


def offered(d: Desk, session_id: str) -> tuple[str, str]:
    o = d.pending_offer(session_id)
    return o.rep_id, o.id


def support_desk() -> Desk:
    d = Desk(EngineConfig(time_zone="Europe/Berlin"))
    d.team("support", offer_timeout=20, service_level_threshold=30)
    d.team("sales")
    d.rep("ann", ["support"])
    d.rep("bob", ["support"])
    issue(d, "support")
    issue(d, "sales")
    return d


@pytest.fixture
def support() -> Desk:
    return support_desk()


def morning(d: Desk) -> None:
    """s1: rejected, then answered after 15 s, handled for 60 s. s2: timed out, then
    answered after 35 s (over the 30 s threshold). s3: abandoned after 10 s. s4 waits in
    sales from T0 + 170."""
    e = d.engine
    s1 = e.start_from_issue("it-support", customer()).value.id
    at(d, 10)
    first, offer = offered(d, s1)
    e.answer_offer(first, offer, False)
    at(d, 15)
    second, offer = offered(d, s1)
    assert second != first
    e.answer_offer(second, offer, True)
    at(d, 75)
    e.end_session(second, s1)
    at(d, 100)
    s2 = e.start_from_issue("it-support", customer()).value.id
    at(d, 120)  # the offer times out and goes to the other rep
    other, offer = offered(d, s2)
    at(d, 135)
    e.answer_offer(other, offer, True)
    at(d, 150)
    s3 = e.start_from_issue("it-support", customer()).value.id
    assert d.pending_offer(s3) is not None
    at(d, 160)
    e.cancel_session(s3)
    at(d, 170)
    e.start_from_issue("it-sales", customer())


def test_queue_counts_service_level_and_averages_by_hand(support):
    morning(support)
    at(support, 200)
    q = queue(support, team_queue("support"))
    expected = Counts(
        arrived=3,
        offered=5,
        accepted=2,
        rejected=1,
        timed_out=1,
        abandoned=1,
        moved=0,
        transferred=0,
        service_level=1 / 3,  # s1 within 30 s; s2 answered late; s3 abandoned
        average_speed_of_answer=(15 + 35) / 2,
        average_handle_time=60.0,  # s1 only: s2 is still being handled
    )
    assert q.last_15_minutes == q.last_hour == q.today == expected
    assert (q.waiting, q.longest_wait, q.threshold) == (0, 0.0, 30.0)
    sales = queue(support, team_queue("sales"))
    assert (sales.waiting, sales.longest_wait, sales.threshold) == (1, 30.0, 20.0)
    assert sales.today.arrived == 1 and sales.today.service_level is None
    # arrivals per minute, oldest first: T0's minute m0, m0 + 2 (T0 + 100), m0 + 3
    # (T0 + 150); T0 + 200 is in m0 + 4
    assert q.arrivals[-5:] == (1, 0, 1, 1, 0) and sum(q.arrivals) == 3
    assert len(q.arrivals) == 60


def test_windows_slide_by_the_minute(support):
    morning(support)
    # T0 + 1000 is in minute m0 + 17 (m0 = T0's minute): the 15-minute window holds
    # minutes m0 + 3 .. m0 + 17, where only what happened from T0 + 150 on falls (T0 + t
    # is in minute m0 + (40 + t) // 60): s3's arrival, offer and abandonment.
    at(support, 1000)
    q = queue(support, team_queue("support"))
    assert q.last_15_minutes == Counts(1, 1, 0, 0, 0, 1, 0, 0, 0.0, None, None)
    assert q.last_hour == q.today and q.last_hour.accepted == 2
    at(support, 3800)  # minute m0 + 64: the hour holds m0 + 4 on; s2 is still handled
    q = queue(support, team_queue("support"))
    assert q.last_hour == Counts(0, 0, 0, 0, 0, 0, 0, 0, None, None, None)
    assert q.today.accepted == 2
    (owner,) = [r.rep_id for r in support.engine.statistics().reps if r.state is RepState.BUSY]
    s2 = next(s for s in support.engine.sessions() if s.owner == owner)
    support.engine.end_session(owner, s2.id)
    q = queue(support, team_queue("support"))
    assert q.last_15_minutes.average_handle_time == 3800 - 135
    assert q.today.average_handle_time == (60 + 3800 - 135) / 2


def test_today_starts_at_midnight_in_the_desks_time_zone(support):
    start, end = day_bounds(T0, "Europe/Berlin")
    assert (start, end) == (946800.0, 1033200.0)  # 1970-01-12 00:00 CET, UTC+1
    assert day_bounds(T0, "UTC")[0] == 950400.0
    e = support.engine
    e.set_locked("ann", True)
    e.set_locked("bob", True)
    at(support, end - 10 - T0)
    s = e.start_from_issue("it-support", customer()).value.id
    at(support, end + 5 - T0)
    e.set_locked("ann", False)
    e.answer_offer("ann", offered(support, s)[1], True)
    q = queue(support, team_queue("support"))
    # arrived yesterday, answered today after 15 s: today has the answer, not the arrival
    assert (q.today.arrived, q.today.accepted, q.today.average_speed_of_answer) == (0, 1, 15.0)
    assert q.last_15_minutes.arrived == 1 and q.last_15_minutes.accepted == 1
    assert support.engine.statistics().day_start == end


def test_moved_by_a_waiting_rule_counts_against_the_queue_it_left():
    d = Desk()
    d.team("second")
    d.team(
        "first",
        waiting_rule=WaitingRule(60, RuleAction.TRANSFER, team_queue("second")),
    )
    issue(d, "first")
    d.engine.start_from_issue("it-first", customer())
    at(d, 59)
    assert queue(d, team_queue("first")).waiting == 1
    at(d, 61)
    first, second = queue(d, team_queue("first")), queue(d, team_queue("second"))
    assert (first.today.moved, first.today.arrived, first.waiting) == (1, 1, 0)
    assert (second.today.moved, second.today.arrived, second.waiting) == (0, 1, 1)
    assert second.longest_wait == 1.0  # from entering the overflow queue at T0 + 60


def test_transfers_count_against_the_queue_left_waiting_or_answered_from(support):
    e = support.engine
    waiting = e.start_from_issue("it-sales", customer()).value.id
    e.force_transfer(waiting, team_queue("support"))  # by a supervisor, waiting in sales
    at(support, 5)
    answered, offer = offered(support, waiting)
    e.answer_offer(answered, offer, True)
    at(support, 20)
    e.transfer_session(answered, waiting, team_queue("sales"))  # handled from support
    sales, support_q = queue(support, team_queue("sales")), queue(support, team_queue("support"))
    assert (sales.today.transferred, sales.today.arrived) == (1, 2)
    assert (support_q.today.transferred, support_q.today.arrived) == (1, 1)
    assert support_q.today.average_handle_time == 15.0  # the transfer ended its handling
    # A snapshot of an older build (counters with fewer slots) reads the new one as 0
    # and counts on.
    for counters in support.engine.state.stats.queues.values():
        for _, bucket in counters.buckets:
            del bucket[11:]
        del counters.today[11:]
    old = Engine.restored(support.clock, snapshot.restore(snapshot.dump(support.engine.state)))
    sales = [q for q in old.statistics().queues if q.queue == team_queue("sales")][0]
    assert (sales.today.transferred, sales.today.arrived) == (0, 2)
    old.force_transfer(old.start_from_issue("it-sales", customer()).value.id, team_queue("support"))
    sales = [q for q in old.statistics().queues if q.queue == team_queue("sales")][0]
    assert (sales.today.transferred, sales.last_15_minutes.transferred) == (1, 1)


def test_rep_states_and_time_in_state(support):
    e = support.engine
    e.update_team("support", settings=QueueSettings(offer_timeout=20, wrap_up=30))
    assert rep(support, "ann").state is RepState.AVAILABLE
    at(support, 5)
    s = e.start_from_issue("it-support", customer()).value.id
    who, offer = offered(support, s)
    r = rep(support, who)
    assert (r.state, r.since) == (RepState.OFFERED, T0 + 5)
    at(support, 8)
    e.answer_offer(who, offer, True)
    assert (rep(support, who).state, rep(support, who).load) == (RepState.BUSY, 1)
    at(support, 20)
    e.end_session(who, s)
    assert (rep(support, who).state, rep(support, who).since) == (RepState.WRAP_UP, T0 + 20)
    at(support, 50)
    assert (rep(support, who).state, rep(support, who).since) == (RepState.AVAILABLE, T0 + 50)
    e.set_locked(who, True)
    assert (rep(support, who).state, rep(support, who).reason) == (RepState.AWAY, "LOCKED")
    e.disconnect("bob")
    assert (rep(support, "bob").state, rep(support, "bob").reason) == (
        RepState.OFFLINE,
        "DISCONNECTED",
    )
    [team] = [t for t in e.statistics().teams if t.team_id == "support"]
    assert (team.staffed, team.available, team.busy) == (1, 0, 0)


def test_team_counts_and_a_supervisors_scope(support):
    support.rep("cid", ["sales"], permissions=Permissions(shown_on_public_site=True))
    e = support.engine
    e.start_with_rep("cid", customer())
    s = e.start_from_issue("it-support", customer()).value.id
    who, offer = offered(support, s)
    e.answer_offer(who, offer, True)
    [team] = [t for t in e.statistics().teams if t.team_id == "support"]
    assert (team.staffed, team.available, team.busy) == (2, 1, 1)
    e.disconnect(who)  # with a session: the reconnect grace holds it
    assert (rep(support, who).state, rep(support, who).reason) == (
        RepState.OFFLINE,
        "RECONNECTING",
    )
    assert rep(support, who).load == 1
    [team] = [t for t in e.statistics().teams if t.team_id == "support"]
    assert (team.staffed, team.available, team.busy) == (1, 1, 0)
    scoped = e.statistics(frozenset({"sales"}))
    assert [t.team_id for t in scoped.teams] == ["sales"]
    assert [r.rep_id for r in scoped.reps] == ["cid"]
    # the team's queue and the personal queue where something happened; not the general
    assert {q.queue for q in scoped.queues} == {team_queue("sales"), personal_queue("cid")}
    assert GENERAL_QUEUE in {q.queue for q in e.statistics().queues}


def test_threshold_is_validated():
    d = Desk()
    with pytest.raises(InvalidArgument) as err:
        d.team("t", service_level_threshold=0.5)
    assert err.value.violations[0][0] == "settings.service_level_threshold"


def replayed(records, secret, config) -> Engine:
    clock = ManualClock()
    engine = Engine(clock, config, secret=secret, start=T0)
    for r in records:
        clock.t = r.time
        engine.apply(r)
    return engine


def test_statistics_are_rebuilt_from_the_journal_and_kept_in_snapshots(support):
    config = EngineConfig(time_zone="Europe/Berlin")
    clock = ManualClock()
    live = Engine(clock, config, rng=random.Random(3), start=T0)
    records: list = []
    live.on_command = records.append
    d = Desk.__new__(Desk)
    d.clock, d.events, d.engine = clock, [], live
    d.team("support", offer_timeout=20, service_level_threshold=30)
    d.team("sales")
    d.rep("ann", ["support"])
    d.rep("bob", ["support"])
    issue(d, "support")
    issue(d, "sales")
    morning(d)
    at(d, 200)
    again = replayed(records, live.state.entropy.secret, config)
    again.advance(T0 + 200)
    assert again.statistics() == live.statistics()
    restored = Engine.restored(ManualClock(T0 + 200), snapshot.restore(snapshot.dump(live.state)))
    assert restored.statistics() == live.statistics()
    # and they go on counting alike
    for engine in (live, restored):
        engine.start_from_issue("it-sales", Customer("Dora"))
    assert restored.statistics() == live.statistics()


@pytest.mark.parametrize("fold_at", [1, 3, 4096])
def test_counting_later_gives_the_counts_of_counting_at_once(monkeypatch, fold_at):
    """Events are counted when the statistics are read (or once FOLD_AT wait): what
    they need of the moment (a declined offer's queue, the threshold) is kept with
    them, so a threshold changed before the count changes nothing already answered."""
    import dataclasses

    from assigncore import stats

    def day(fold: int) -> object:
        monkeypatch.setattr(stats, "FOLD_AT", fold)
        d = support_desk()
        morning(d)
        # s1 was answered within 30 s: raising the bar now leaves it within.
        team = d.engine.team("support")
        d.engine.update_team(
            "support", settings=dataclasses.replace(team.settings, service_level_threshold=5)
        )
        at(d, 200)
        return d.engine.statistics()

    assert day(fold_at) == day(1)
    q = next(q for q in day(fold_at).queues if q.queue == team_queue("support"))
    assert q.today.service_level == 1 / 3
