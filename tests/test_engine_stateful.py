"""Random command sequences against the engine, checking the routing invariants after
every step, and that every refused command changed nothing."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from assigncore.capacity import LOAD_SCALE
from assigncore.columns import ALL_CHANNELS, INELIGIBLE, LOAD_SHIFT
from assigncore.engine import Engine, EngineConfig
from assigncore.errors import DomainError
from assigncore.events import OfferDeclined, OfferMade, OfferRescinded, SessionQueued
from assigncore.explain import MAX_LISTED, Reason
from assigncore.model import (
    GENERAL_QUEUE,
    Algorithm,
    CapacityProfile,
    Customer,
    IssueType,
    Origin,
    Permissions,
    QueueKind,
    QueueSettings,
    RescindReason,
    RoutingStep,
    RuleAction,
    SessionState,
    StepKind,
    SupportButton,
    Target,
    WaitingRule,
    personal_queue,
    team_queue,
)
from assigncore.queue_order import SLOT_MASK
from assigncore.records import decode, encode
from assigncore.snapshot import dump, restore

from .conftest import ManualClock

REPS = ["r0", "r1", "r2", "r3", "r4"]
# Capacity by channel: r3 takes one voice call and two chats, or four chats; r4
# takes two chats, or one voice call. The others count sessions.
PROFILES = {
    "r3": CapacityProfile(4, (("chat", 1), ("voice", 2)), (("voice", 1),)),
    "r4": CapacityProfile(2, (("chat", 1), ("voice", 2), ("", 1))),
}
TEAMS = ["least", "skills", "best", "manual"]
SKILLS = ["win", "mac", "net"]
# Skill names beyond the first allocation of the skill matrix (8 columns).
EXTRA_SKILLS = [f"extra-{i}" for i in range(40)]
GROWN_REPS = 22  # reps a `grow` step adds: three steps pass the rep columns' first 64


# The journals of the runs so far (for the cross-process replay test).
JOURNALS: list[tuple[list[bytes], str]] = []


def replay(journal: list[bytes], secret: bytes, config: EngineConfig) -> Engine:
    engine = Engine(ManualClock(), config, secret=secret)
    for data in journal:
        engine.apply(decode(data))
    return engine


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.events: list = []
        self.engine = Engine(
            self.clock,
            EngineConfig(reconnect_grace=20, max_rule_moves=3),
            listener=self.heard,
            rng=random.Random(3),
        )
        e = self.engine
        # The journal this run would write: every accepted command, as bytes.
        self.journal: list[bytes] = []
        e.on_command = lambda record: self.journal.append(encode(record))
        e.define_channels(["chat", "voice"])
        e.create_team("manual", "Manual", settings=QueueSettings(algorithm=Algorithm.NONE))
        e.create_team(
            "least",
            "Least",
            settings=QueueSettings(
                Algorithm.LEAST_BUSY,
                offer_timeout=15,
                max_missed_offers=3,
                waiting_rule=WaitingRule(50, RuleAction.TRANSFER, team_queue("manual")),
            ),
        )
        e.create_team(
            "skills",
            "Skills",
            settings=QueueSettings(
                Algorithm.SKILLS_MATCH_LEAST_BUSY,
                offer_timeout=10,
                wrap_up=5,
                waiting_rule=WaitingRule(40, RuleAction.ALERT),
            ),
        )
        e.create_team(
            "best",
            "Best",
            settings=QueueSettings(
                Algorithm.BEST_SKILLS,
                offer_timeout=20,
                waiting_rule=WaitingRule(30, RuleAction.TRANSFER, team_queue("least")),
            ),
        )
        for i, rep_id in enumerate(REPS):
            e.create_rep(
                rep_id,
                rep_id.upper(),
                skills={SKILLS[i % 3]: 3 + i, SKILLS[(i + 1) % 3]: 9 - i},
                teams=[TEAMS[i % 4], TEAMS[(i + 1) % 4]],
                permissions=Permissions(
                    max_concurrent_sessions=0 if rep_id in PROFILES else i % 3,
                    capacity=PROFILES.get(rep_id),
                    idle_timeout=60.0 * (i % 2),
                    may_get_next=i != 4,
                    may_opt_out=i % 2 == 0,
                    may_transfer=i != 3,
                    may_use_general_queue=i < 2,
                    shown_on_public_site=True,
                ),
            )
        e.create_issue_type(IssueType("it-win", "Windows", "skills", (("win", 5), ("net", 3)), 2))
        e.create_issue_type(IssueType("it-best", "Best", "best", (("mac", 4),), 1))
        e.create_issue_type(IssueType("it-least", "Least", "least", (), 0))
        # Routing steps and channels: a preferred rep, then a skill, then anyone, as chat;
        # a skilled step on the best team, as voice.
        e.create_issue_type(
            IssueType(
                "it-steps",
                "Steps",
                "skills",
                (("net", 2),),
                1,
                (
                    RoutingStep(StepKind.PREFERRED_REP, duration=10),
                    RoutingStep(StepKind.SKILLS, (("win", 5),), 20),
                    RoutingStep(),
                ),
                "chat",
            )
        )
        e.create_issue_type(
            IssueType(
                "it-voice",
                "Voice",
                "best",
                (("mac", 2),),
                0,
                (RoutingStep(StepKind.SKILLS, (("mac", 6), ("net", 2)), 15), RoutingStep()),
                "voice",
            )
        )
        e.create_support_button(SupportButton("btn", "Button", Target(team_id="least")))
        for rep_id in REPS:
            e.connect(rep_id)
        self.declined: dict[str, set[str]] = {}  # session -> reps who declined since transfer
        self.seen_events = 0

    # ------------------------------------------------------------- helpers

    def heard(self, event) -> None:
        """Every event, as the engine emits it. An offer is checked at that moment,
        against the brute-force rules: the rep had room for the session's channel (16)
        and its step allowed the rep (13)."""
        self.events.append(event)
        if isinstance(event, OfferMade):
            s = self.engine.state.sessions[event.session_id]
            rep = self.engine.state.reps[event.rep_id]
            assert self.has_room(event.rep_id, s.service_channel), (event, s)
            step = s.steps[s.step]
            assert step.kind is not StepKind.PREFERRED_REP or event.rep_id == s.preferred_rep
            assert all(rep.skills.get(n, 0) >= lv for n, lv in step.skills), (event, step)

    def run(self, fn, *args, **kwargs):
        self.engine.advance()  # timers due now fire first, outside the command
        before = self.engine.snapshot()
        try:
            return fn(*args, **kwargs)
        except DomainError:
            assert self.engine.snapshot() == before, "a refused command changed state"
            return None

    def sessions(self, *states):
        return sorted(
            (s for s in self.engine.sessions() if not states or s.state in states),
            key=lambda s: s.seq,
        )

    # ------------------------------------------------------------- rules

    @rule(
        origin=st.sampled_from(
            ["it-win", "it-best", "it-least", "it-steps", "it-voice", "button", "general"]
            + ["rep", "key"]
        ),
        rep=st.sampled_from(REPS),
        channel=st.sampled_from([None, None, "", "chat", "voice"]),
    )
    def start(self, origin, rep, channel):
        c = Customer("Customer")
        e = self.engine
        if origin.startswith("it-"):
            self.run(e.start_from_issue, origin, c, service_channel=channel, preferred_rep=rep)
        elif origin == "button" and channel is not None:
            self.run(e.start_from_button, "btn", c, service_channel=channel)
        elif origin == "button":
            self.run(e.start_from_button, "btn", c)
        elif origin == "general":
            self.run(e.start_undesignated, c)
        elif origin == "rep":
            self.run(e.start_with_rep, rep, c)
        else:
            key = self.run(e.generate_session_key, rep)
            self.run(e.start_with_key, key.value, c)

    @rule(rep=st.sampled_from(REPS), signed_out=st.booleans())
    def presence(self, rep, signed_out):
        if self.engine.rep(rep).connected:
            self.run(self.engine.disconnect, rep, signed_out)
        else:
            self.run(self.engine.connect, rep)

    @rule(rep=st.sampled_from(REPS), locked=st.booleans())
    def lock(self, rep, locked):
        self.run(self.engine.set_locked, rep, locked)

    @rule(rep=st.sampled_from(REPS))
    def activity(self, rep):
        self.run(self.engine.report_activity, rep)

    @rule(rep=st.sampled_from(REPS), on=st.booleans())
    def auto_assign(self, rep, on):
        self.run(self.engine.update_settings, rep, auto_assign=on)

    @rule(down=st.sampled_from([0, 5, 40]))
    def server_restarts(self, down):
        """The server stops for `down` seconds and comes back: offers are withdrawn (no
        decline), every rep is disconnected with the full grace from now."""
        before = {r.id: r.missed_offers for r in self.engine.reps()}
        declined = {s.id: s.declined_by for s in self.engine.sessions()}
        pending = {o.id: o.deadline for o in self.engine.offers()}
        self.clock.tick(down)
        heard = len(self.events)
        self.engine.server_restarted()
        kept = {o.id for o in self.engine.offers()}
        running = {o for o, deadline in pending.items() if deadline > self.clock.t}
        # Offers still running are kept by the restart itself; a timer that fell due
        # in the downtime (a waiting rule moving the session) may still withdraw one.
        withdrawn = {
            e.offer_id: e.reason
            for e in self.events[heard:]
            if isinstance(e, OfferRescinded) and e.offer_id in running
        }
        assert kept == running - withdrawn.keys()
        assert RescindReason.SERVER_RESTARTED not in withdrawn.values()
        ran_out = {o for o in pending if o not in running}
        assert ran_out.isdisjoint(kept)
        for r in self.engine.reps():
            assert not r.connected
            assert r.missed_offers == before[r.id]
            if r.grace_timer is not None and r.grace_timer.alive:
                assert r.grace_timer.deadline == self.clock.t + self.engine.config.reconnect_grace
        for s in self.engine.sessions():
            if s.id in declined:
                assert s.declined_by == declined[s.id]

    @rule(seconds=st.sampled_from([0.5, 3, 10, 16, 25, 45]))
    def time_passes(self, seconds):
        self.clock.tick(seconds)
        self.engine.advance()

    @rule(pick=st.integers(0, 10), accept=st.booleans(), wrong_rep=st.booleans())
    def answer(self, pick, accept, wrong_rep):
        offers = [self.engine.offer(s.offer) for s in self.sessions(SessionState.OFFERED)]
        if not offers:
            return
        offer = offers[pick % len(offers)]
        rep = offer.rep_id
        if wrong_rep:
            rep = REPS[(REPS.index(rep) + 1) % len(REPS)]
        self.run(self.engine.answer_offer, rep, offer.id, accept)

    @rule(rep=st.sampled_from(REPS), pick=st.integers(0, 50))
    def accept_manually(self, rep, pick):
        waiting = self.sessions(SessionState.WAITING, SessionState.OFFERED)
        if waiting:
            self.run(self.engine.accept_session, rep, waiting[pick % len(waiting)].id)

    @rule(rep=st.sampled_from(REPS))
    def get_next(self, rep):
        self.run(self.engine.get_next, rep)

    @rule(
        rep=st.sampled_from(REPS),
        pick=st.integers(0, 50),
        to=st.sampled_from(
            [team_queue(t) for t in TEAMS] + [personal_queue(r) for r in REPS] + [GENERAL_QUEUE]
        ),
    )
    def transfer(self, rep, pick, to):
        live = self.sessions(SessionState.WAITING, SessionState.OFFERED, SessionState.ACTIVE)
        if live:
            self.run(self.engine.transfer_session, rep, live[pick % len(live)].id, to)

    @rule(pick=st.integers(0, 50), leave=st.booleans(), owner=st.booleans())
    def end_or_leave(self, pick, leave, owner):
        active = self.sessions(SessionState.ACTIVE)
        if not active:
            return
        s = active[pick % len(active)]
        rep = s.owner if owner or not s.participants else s.participants[0]
        self.run(self.engine.leave_session if leave else self.engine.end_session, rep, s.id)

    @rule(
        pick=st.integers(0, 50),
        to=st.sampled_from([team_queue(t) for t in TEAMS] + [personal_queue(r) for r in REPS]),
    )
    def invite(self, pick, to):
        active = self.sessions(SessionState.ACTIVE)
        if active:
            s = active[pick % len(active)]
            self.run(self.engine.invite, s.owner, s.id, to)

    @rule(rep=st.sampled_from(REPS), pick=st.integers(0, 50))
    def accept_invitation(self, rep, pick):
        invitations = sorted(i.id for i in self.engine.invitations())
        if invitations:
            self.run(self.engine.accept_invitation, rep, invitations[pick % len(invitations)])

    @rule(pick=st.integers(0, 50))
    def customer_leaves(self, pick):
        live = self.sessions(SessionState.WAITING, SessionState.OFFERED, SessionState.ACTIVE)
        if live:
            self.run(self.engine.cancel_session, live[pick % len(live)].id)

    @rule(rep=st.sampled_from(REPS), team=st.sampled_from(TEAMS))
    def membership(self, rep, team):
        if team in self.engine.rep(rep).teams:
            self.run(self.engine.remove_team_member, team, rep)
        else:
            self.run(self.engine.add_team_member, team, rep)

    @rule(
        rep=st.sampled_from(REPS),
        levels=st.dictionaries(
            st.sampled_from(SKILLS + EXTRA_SKILLS), st.integers(1, 10), max_size=3
        ),
    )
    def reskill(self, rep, levels):
        self.run(self.engine.update_rep, rep, skills=levels)

    @precondition(lambda self: getattr(self, "grown", 0) < 3)
    @rule()
    def grow(self):
        """A new team of reps with skill names of their own: every growable structure
        (rep columns, skill columns, teams) passes its first allocation in a run. These
        commands cannot be refused, so they run without run()'s before/after snapshot."""
        n = self.grown = getattr(self, "grown", 0) + 1
        team = f"grown-{n}"
        e = self.engine
        e.advance()
        e.create_team(team, team.title(), settings=QueueSettings())
        for i in range(GROWN_REPS):
            rep_id = f"g{n}-{i}"
            skill = EXTRA_SKILLS[(n * GROWN_REPS + i) % len(EXTRA_SKILLS)]
            e.create_rep(rep_id, rep_id, skills={skill: 5, "win": 1 + i % 9}, teams=[team])
            e.connect(rep_id)

    @rule(
        garbage=st.sampled_from(
            [
                ("answer_offer", ("r0", "off-999999", True)),
                ("accept_session", ("nobody", "ses-1")),
                ("transfer_session", ("r0", "ses-1", "team/least")),
                ("end_session", ("r0", "")),
                ("create_rep", ("r0", "Dup")),
                ("update_rep", ("r1",), {"skills": {"win": 11}}),
                ("start_from_issue", ("it-none", Customer("x"))),
                ("post_chat", ("r0", "least", "")),
                ("start_undesignated", (Customer("x" * 10_000),)),
                ("set_locked", ("r0", "yes")),
                ("invite", ("r0", "ses-1", GENERAL_QUEUE)),
                ("update_settings", ("r1",), {"auto_assign": False}),
                ("create_team", ("least", "Again")),
                ("generate_session_key", ("r0",), {"ttl": -5}),
            ]
        )
    )
    def bad_command(self, garbage):
        name, args, *kw = garbage
        self.run(getattr(self.engine, name), *args, **(kw[0] if kw else {}))

    # ------------------------------------------------------------- invariants

    @invariant()
    def each_session_is_in_exactly_one_place(self):
        e = self.engine
        where: dict[str, list[str]] = {}
        for q in e.state.queues:
            for item in e.queue_items(q):
                where.setdefault(item.id, []).append(str(q))
        for s in e.sessions():
            if s.state in (SessionState.WAITING, SessionState.OFFERED):
                assert where.get(s.id) == [str(s.queue)] and s.owner is None
            elif s.state is SessionState.ACTIVE:
                assert s.id not in where and s.queue is None and s.owner is not None
                assert s.owner not in s.participants
            else:
                assert s.id not in where and s.owner is None and not s.participants
            assert len(set(s.participants)) == len(s.participants)

    @invariant()
    def at_most_one_pending_offer_per_session_and_rep(self):
        offers = self.engine.offers()
        assert len({o.session_id for o in offers}) == len(offers)
        assert len({o.rep_id for o in offers}) == len(offers)
        for o in offers:
            assert self.engine.session(o.session_id).offer == o.id
            assert self.engine.session(o.session_id).state is SessionState.OFFERED
            assert self.engine.rep(o.rep_id).offer == o.id
        for s in self.engine.sessions():
            assert (s.offer is None) == (s.state is not SessionState.OFFERED)
        for o in offers:  # made within the step the session was at, to a rep with room
            s, rep = self.engine.session(o.session_id), self.engine.rep(o.rep_id)
            if o.decision is None:
                continue  # kept across a restart from before decisions were recorded
            step = s.steps[o.decision.step]
            assert o.decision.step <= s.step
            assert step.kind is not StepKind.PREFERRED_REP or o.rep_id == s.preferred_rep
            assert all(rep.skills.get(n, 0) >= lv for n, lv in step.skills), (o, step)
            assert o.decision.candidates >= 1

    @invariant()
    def never_reoffered_a_declined_session_without_a_manual_transfer(self):
        for ev in self.events[self.seen_events :]:
            if isinstance(ev, SessionQueued) and ev.origin is Origin.TRANSFER:
                self.declined.pop(ev.session_id, None)
            elif isinstance(ev, OfferDeclined):
                self.declined.setdefault(ev.session_id, set()).add(ev.rep_id)
            elif isinstance(ev, OfferMade):
                assert ev.rep_id not in self.declined.get(ev.session_id, set())
        self.seen_events = len(self.events)

    @invariant()
    def load_equals_sessions_owned_or_joined(self):
        e = self.engine
        counts = dict.fromkeys(REPS, 0)
        for s in e.sessions():
            if s.state is SessionState.ACTIVE:
                counts[s.owner] += 1
                for p in s.participants:
                    counts[p] += 1
        for rep_id, n in counts.items():
            rep = e.rep(rep_id)
            assert rep.load == n
            if rep_id in PROFILES:
                units, _ = self.usage(rep_id)
                assert (
                    e.reps_table.load[rep.ordinal] == units * LOAD_SCALE // PROFILES[rep_id].total
                )
            else:
                assert e.reps_table.load[rep.ordinal] == n

    def usage(self, rep_id: str) -> tuple[int, dict[str, int]]:
        """Brute force: units and sessions per channel a profiled rep has in use."""
        profile = PROFILES[rep_id]
        cost = dict(profile.cost)
        units, counts = 0, {}
        for s in self.engine.sessions():
            if s.state is SessionState.ACTIVE and (rep_id == s.owner or rep_id in s.participants):
                units += cost.get(s.service_channel, profile.total)
                counts[s.service_channel] = counts.get(s.service_channel, 0) + 1
        return units, counts

    def has_room(self, rep_id: str, channel: str) -> bool:
        """Brute force of rule 16: room for one more session of `channel`."""
        rep = self.engine.rep(rep_id)
        if rep_id not in PROFILES:
            cap = rep.permissions.max_concurrent_sessions
            return not cap or rep.load < cap
        profile = PROFILES[rep_id]
        cost, limit = dict(profile.cost), dict(profile.limit)
        units, counts = self.usage(rep_id)
        return (
            channel in cost
            and units + cost[channel] <= profile.total
            and counts.get(channel, 0) < limit.get(channel, 10**6)
        )

    def could_take(self, rep_id: str, s) -> bool:
        """Brute force: eligible (rule 12), room for its channel (16), allowed by its
        current step (13), not declined (3)."""
        e = self.engine
        rep = e.rep(rep_id)
        if not (
            rep.connected
            and not rep.locked
            and not rep.idle
            and rep.auto_assign
            and rep.wrap_up_timer is None
            and rep.offer is None
            and self.has_room(rep_id, s.service_channel)
        ):
            return False
        step = s.steps[s.step]
        if step.kind is StepKind.PREFERRED_REP and rep_id != s.preferred_rep:
            return False
        lacks = any(rep.skills.get(name, 0) < level for name, level in step.skills)
        return not (step.kind is StepKind.SKILLS and lacks)

    @invariant()
    def rank_key_is_load_and_availability_of_eligible_reps(self):
        t = self.engine.reps_table
        ok = (t.flags[: t.n] == 0) & (t.load[: t.n] < t.cap[: t.n]) & (t.room[: t.n] != 0)
        key = (t.load[: t.n].astype(np.int64) << LOAD_SHIFT) | t.avail[: t.n]
        assert (t.rank_key[: t.n] == np.where(ok, key, INELIGIBLE)).all()
        assert t.n_eligible == int(ok.sum())
        assert t.narrow[0] == int((t.room[: t.n] != ALL_CHANNELS).sum())

    def routed_waiting(self):
        """(session, team) of every session waiting in a team queue that assigns."""
        e = self.engine
        for s in e.sessions():
            if s.state is not SessionState.WAITING or s.queue.kind is not QueueKind.TEAM:
                continue
            team = e.team(s.queue.owner)
            if team.settings.algorithm is not Algorithm.NONE:
                yield s, team

    @invariant()
    def work_conserving(self):
        for s, team in self.routed_waiting():
            for rep_id in team.members:
                assert not (self.could_take(rep_id, s) and rep_id not in s.declined_by), (
                    f"{rep_id} idles while {s.id} waits in {s.queue} at step {s.step}"
                )

    @invariant()
    def explanations_follow_the_rules(self):
        """ExplainRouting, for every waiting session, against the brute-force rules: no
        candidate idles (as work_conserving), and each member's reasons are exactly
        what the rules say keeps it from the session; the counts add up."""
        e = self.engine
        for s, team in self.routed_waiting():
            x = e.explain_routing(s.id, MAX_LISTED)
            assert (x.best_rep_id, x.eligible) == ("", 0), x
            step = s.steps[s.step]
            outsider = step.kind is StepKind.PREFERRED_REP and s.preferred_rep not in team.members
            assert x.members == len(x.candidates) == len(team.members) + outsider
            counts: dict[Reason, int] = {}
            for c in x.candidates:
                for r in c.reasons:
                    counts[r] = counts.get(r, 0) + 1
                if c.reasons == (Reason.NOT_A_MEMBER,):
                    assert c.rep_id == s.preferred_rep
                    continue
                rep = e.rep(c.rep_id)
                want = {
                    Reason.OFFLINE: not rep.connected,
                    Reason.LOCKED: rep.locked,
                    Reason.IDLE: rep.idle,
                    Reason.AUTO_ASSIGN_OFF: not rep.auto_assign,
                    Reason.WRAP_UP: rep.wrap_up_timer is not None,
                    Reason.HAS_PENDING_OFFER: rep.offer is not None,
                    Reason.DECLINED: c.rep_id in s.declined_by,
                    Reason.NOT_PREFERRED_REP: step.kind is StepKind.PREFERRED_REP
                    and c.rep_id != s.preferred_rep,
                    Reason.MISSING_SKILL: step.kind is StepKind.SKILLS
                    and any(rep.skills.get(n, 0) < lv for n, lv in step.skills),
                    Reason.NO_ROOM_FOR_CHANNEL: c.rep_id in PROFILES
                    and not self.has_room(c.rep_id, s.service_channel),
                }
                got = set(c.reasons) - {Reason.AT_CAPACITY}
                assert got == {r for r, on in want.items() if on}, (c, s.id)
                # at capacity: ineligible for no reason of its own state but room
                assert (Reason.AT_CAPACITY in c.reasons) == (
                    not any(want[r] for r in list(want)[:6]) and not rep.eligible
                ), (c, s.id)
            assert dict(x.reason_counts) == counts

    @invariant()
    def steps_expire_on_time_and_in_order(self):
        """A session is never past its step's duration (the FIFO timers fire on time),
        and every step change is recorded; a team queue entry without changes is at
        its first step unless it skipped."""
        e = self.engine
        for s in e.sessions():
            if s.queue is None or s.queue.kind is not QueueKind.TEAM:
                continue
            assert 0 <= s.step < len(s.steps)
            since = s.step_changes[-1].time if s.step_changes else s.queued_time
            if s.step_changes:
                assert s.step_changes[-1].step == s.step
            else:
                assert s.step == 0
            if s.step < len(s.steps) - 1:
                assert since + s.steps[s.step].duration > self.clock.t
                assert s.step_fifo is not None and s.id in e.state.step_fifos[s.step_fifo].entries
            else:
                assert s.step_fifo is None
        for key, fifo in e.state.step_fifos.items():
            dues = list(fifo.entries.values())
            assert dues == sorted(dues) and dues, key

    @invariant()
    def queue_indexes_match_a_brute_force_rule4_order(self):
        e = self.engine
        sessions = e.sessions()
        for q, index in e.state.queues.items():
            waiting = [s for s in sessions if s.queue == q]
            expected = sorted(waiting, key=lambda s: (-s.priority, s.created_time, s.seq))
            got = [e.state.session_by_slot[k & SLOT_MASK] for k in index.sessions]
            assert [s.id for s in got] == [s.id for s in expected], q
            for place, s in enumerate(expected, 1):
                assert e.queue_position(s.id) == place
            invitations = [i for i in e.invitations() if i.queue == q]
            assert len(index.invitations) == len(invitations)
            listed = [i.id for i in e.queue_items(q)]
            paged, cursor = [], None
            while True:
                page, cursor = e.queue_page(q, cursor, 2)
                paged += [i.id for i in page]
                if cursor is None:
                    break
            assert paged == listed
            if index.pools is None:
                continue
            team = e.team(q.owner)
            ready = [
                e.state.session_by_slot[k & SLOT_MASK].id
                for pool in index.pools.values()
                for k in pool.ready
            ]
            parked = [
                e.state.session_by_slot[k & SLOT_MASK].id
                for pool in index.pools.values()
                for k in pool.parked
            ]
            for key, pool in index.pools.items():
                for k in [*pool.ready, *pool.parked]:
                    assert e.state.session_by_slot[k & SLOT_MASK].pool_key == key
            unoffered = {s.id for s in waiting if s.state is SessionState.WAITING}
            assert len(ready) + len(parked) == len(unoffered)
            assert not set(ready) & set(parked) and set(ready) | set(parked) == unoffered, q
            eligible = {r for r in team.members if e.eligible(r)}
            assert e.state.team_eligible[team.ordinal] == len(eligible)
            for sid in parked:  # parked: every member who could take it declined it
                s = e.session(sid)
                able = {r for r in team.members if self.could_take(r, s)}
                assert able <= set(s.declined_by), (sid, able)

    def teardown(self):
        """The run's journal, replayed on a fresh engine, gives the same desk; and a
        snapshot restores to exactly the state it was taken of."""
        live = self.engine
        replayed = replay(self.journal, live.state.entropy.secret, live.config)
        replayed.advance(live.now)  # time passing that told nobody anything is no record
        assert replayed.snapshot() == live.snapshot()
        restored = Engine.restored(ManualClock(self.clock.t), restore(dump(live.state)))
        assert restored.snapshot() == live.snapshot()
        JOURNALS.append((self.journal, live.state.entropy.secret.hex()))

    @invariant()
    def no_due_timer_left_behind(self):
        deadline = self.engine.next_deadline()
        assert deadline is None or deadline > self.clock.t


EngineMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)
TestEngineStateful = EngineMachine.TestCase
# Each run's teardown replays its journal and round-trips a snapshot; on the pure-Python
# kernel, with CI's example count, that takes longer than the suite's default timeout.
TestEngineStateful.pytestmark = [pytest.mark.timeout(900)]
