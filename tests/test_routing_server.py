"""Routing steps, capacity by channel and ExplainRouting over a real gRPC channel: a
desk file that declares them, intake naming a channel and a preferred rep, consoles
seeing step changes, explanations in a supervisor's scope, statistics per channel, and
bad input refused whole."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2

from assigncore.client import AssignCoreError, Connection, Portal, Supervisor
from assigncore.v1 import admin_service_pb2 as apb
from assigncore.v1 import common_pb2 as pb
from assigncore.v1 import console_service_pb2 as cpb
from assigncore.v1 import intake_service_pb2 as ipb
from assigncore.v1 import supervisor_service_pb2 as spb
from assigncore.v1 import supervisor_service_pb2_grpc as sgrpc

from .server_harness import ADMIN, INTAKE, auth, live_server
from .test_hardening import violations

DESK = """
channels = ["chat", "voice"]

[server]
listen = "127.0.0.1:0"

[[teams]]
id = "french"
algorithm = "BEST_SKILLS"
offer_timeout = 300
steps = [
  { kind = "PREFERRED_REP", duration = 20 },
  { kind = "SKILLS", skills = [["french", 5]], duration = 40 },
  { kind = "ANY" },
]

[[teams]]
id = "other"
algorithm = "LEAST_BUSY"

[[reps]]
id = "ann"
teams = ["french"]
skills = { french = 3 }
permissions = { capacity = { total = 3, cost = { chat = 1, voice = 2 }, limit = { voice = 1 } } }

[[reps]]
id = "bob"
teams = ["french"]
skills = { french = 8 }
permissions = { capacity = { total = 2, cost = { chat = 1 } } }

[[reps]]
id = "olga"
teams = ["other"]

[[issue_types]]
id = "fr-chat"
team = "french"
channel = "chat"

[[issue_types]]
id = "fr-voice"
team = "french"
channel = "voice"
steps = [{ kind = "ANY" }]

[[issue_types]]
id = "other-help"
team = "other"

[[tokens]]
kind = "admin"
secret = "test-admin-token-0123456789"

[[tokens]]
kind = "intake"
secret = "test-intake-token-0123456789"

[[tokens]]
kind = "supervisor"
teams = ["french"]
secret = "test-french-supervisor-0123456789"
""" + "".join(
    f"""
[[tokens]]
kind = "rep"
rep = "{r}"
secret = "test-{r}-token-0123456789"
"""
    for r in ("ann", "bob", "olga")
)

FRENCH_SUPERVISOR = "test-french-supervisor-0123456789"
REASON = spb.NotOfferedReason


@pytest.fixture
async def live():
    server = await live_server(DESK)
    yield server
    await server.close()


async def explain(live, session_id: str, token: str = FRENCH_SUPERVISOR):
    sup = sgrpc.SupervisorServiceStub(live.channel)
    return await sup.ExplainRouting(
        spb.ExplainRoutingRequest(session_id=session_id), metadata=auth(token)
    )


async def test_steps_widen_and_consoles_see_the_step_change(live):
    ann = await live.console("ann")
    bob = await live.console("bob")
    # bob, the French speaker and the preferred rep, has an offer pending
    first = await live.start(issue_type_id="fr-chat", preferred_rep_id="bob")
    assert (await bob.next("offer_made")).session.id == first.id
    assert first.service_channel == "chat" and first.preferred_rep_id == "bob"
    assert first.routing_step.step == 0 and first.routing_step.step_count == 3
    s = await live.start(issue_type_id="fr-chat", preferred_rep_id="bob")
    assert s.routing_step.kind == pb.STEP_KIND_PREFERRED_REP
    x = await explain(live, s.id)
    why = {c.rep_id: list(c.reasons) for c in x.candidates}
    assert why == {
        "ann": [REASON.NOT_OFFERED_REASON_NOT_PREFERRED_REP],
        "bob": [REASON.NOT_OFFERED_REASON_HAS_PENDING_OFFER],
    }
    assert x.routed and x.next_rep_id == ""
    await live.advance(20)  # both sessions reach step 2 (the offered one keeps its offer)
    changed = await ann.next("queue_item_changed")
    while changed.item.session.id != s.id:
        assert changed.item.session.id == first.id
        changed = await ann.next("queue_item_changed")
    assert changed.item.session.routing_step.step == 1
    assert changed.item.session.routing_step.kind == pb.STEP_KIND_SKILLS
    [change] = changed.item.session.routing_step.changes
    assert (change.step, change.skipped) == (1, 0)
    x = await explain(live, s.id)
    ann_row = next(c for c in x.candidates if c.rep_id == "ann")
    assert list(ann_row.reasons) == [REASON.NOT_OFFERED_REASON_MISSING_SKILL]
    assert (ann_row.missing_skill.skill, ann_row.missing_skill.min_level) == ("french", 5)
    await live.advance(40)  # the last step: anyone; ann takes it
    offer = await ann.next("offer_made")
    assert offer.session.id == s.id
    x = await explain(live, s.id)
    assert x.offered_to_rep_id == "ann" and x.decision.step == 2
    assert x.decision.eligible_members == 1  # bob has an offer pending


async def test_explain_is_scoped_to_the_supervisors_teams(live):
    mine = await live.start(issue_type_id="fr-voice")
    theirs = await live.start(issue_type_id="other-help")
    assert (await explain(live, mine.id)).session.id == mine.id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await explain(live, theirs.id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # the client library: a portal naming a channel and a preferred rep, and the typed
    # explanation, with the same answer and the same refusal as the raw stub
    async with Connection(f"127.0.0.1:{live.port}", token=INTAKE) as conn:
        started = await Portal(conn).start(
            pb.Customer(name="Dora"), issue_type="fr-voice", service_channel="chat",
            preferred_rep="bob",
        )  # fmt: skip
        assert started.session.service_channel == "chat"
        assert started.session.preferred_rep_id == "bob"
        assert started.session.routing_step.kind == pb.STEP_KIND_ANY
    async with Connection(f"127.0.0.1:{live.port}", token=FRENCH_SUPERVISOR) as conn:
        typed = await Supervisor(conn).explain_routing(mine.id)
        assert typed.session.id == mine.id and typed.routed
        with pytest.raises(AssignCoreError) as refused:
            await Supervisor(conn).explain_routing(theirs.id)
        assert refused.value.code == grpc.StatusCode.NOT_FOUND
    admin_view = await explain(live, theirs.id, ADMIN)
    assert [c.rep_id for c in admin_view.candidates] == ["olga"]
    assert list(admin_view.candidates[0].reasons) == [REASON.NOT_OFFERED_REASON_OFFLINE]
    for bad in ("", "x" * 65, "nope"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await explain(live, bad)
        assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)


async def test_capacity_by_channel_over_the_api_and_in_statistics(live):
    ann = await live.console("ann")
    await live.console("bob")
    voice = await live.start(issue_type_id="fr-voice")
    x = await explain(live, voice.id)
    assert x.offered_to_rep_id == "ann"  # bob's profile has no voice
    offer = await ann.next("offer_made")
    await ann.rpc("AnswerOffer", cpb.AnswerOfferRequest(offer_id=offer.offer_id, accept=True))
    sup = sgrpc.SupervisorServiceStub(live.channel)
    stats = (await sup.GetStatistics(spb.GetStatisticsRequest(), metadata=auth(ADMIN))).statistics
    french = next(t for t in stats.teams if t.team_id == "french")
    assert french.capacity_units == 5
    assert [(c.channel, c.sessions, c.units) for c in french.channels] == [("voice", 1, 2)]
    second = await live.start(issue_type_id="fr-voice")
    x = await explain(live, second.id)
    why = {c.rep_id: list(c.reasons) for c in x.candidates}
    assert why["ann"] == [REASON.NOT_OFFERED_REASON_NO_ROOM_FOR_CHANNEL]
    assert why["bob"] == [REASON.NOT_OFFERED_REASON_NO_ROOM_FOR_CHANNEL]
    rep = await live.admin.GetRep(apb.GetRepRequest(rep_id="ann"), metadata=auth(ADMIN))
    cap = rep.rep.permissions.capacity
    assert cap.total_units == 3
    assert [(c.channel, c.units, c.max_sessions) for c in cap.channels] == [
        ("chat", 1, 0),
        ("voice", 2, 1),
    ]


async def test_channels_and_steps_are_refused_whole_with_details(live):
    channels = await live.admin.ListChannels(apb.ListChannelsRequest(), metadata=auth(ADMIN))
    assert list(channels.channels) == ["chat", "voice"]
    defined = await live.admin.DefineChannels(
        apb.DefineChannelsRequest(channels=["email", "chat"]), metadata=auth(ADMIN)
    )
    assert list(defined.channels) == ["chat", "voice", "email"]
    before = len(live.server.runtime.engine.sessions())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await live.intake.StartSession(
            ipb.StartSessionRequest(
                request_id="bad-channel",
                customer=pb.Customer(name="Carol"),
                issue_type_id="fr-chat",
                service_channel="fax",
            ),
            metadata=auth(INTAKE),
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "service_channel" in err.value.details()
    assert len(live.server.runtime.engine.sessions()) == before
    bad_steps = apb.IssueType(
        id="bad",
        display_name="Bad",
        team_id="french",
        steps=[
            pb.RoutingStep(kind=pb.STEP_KIND_SKILLS, duration=duration_pb2.Duration(seconds=5)),
            pb.RoutingStep(kind=pb.STEP_KIND_PREFERRED_REP),
        ],
        service_channel="fax",
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await live.admin.CreateIssueType(
            apb.CreateIssueTypeRequest(issue_type=bad_steps), metadata=auth(ADMIN)
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details()
    assert "issue_type.steps[0].skills" in details and "issue_type.steps[1]" in details
    bad_rep = apb.Rep(
        id="zed",
        display_name="Zed",
        permissions=pb.PermissionProfile(
            capacity=pb.CapacityProfile(
                total_units=0, channels=[pb.ChannelCapacity(channel="fax", units=1)]
            )
        ),
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await live.admin.CreateRep(apb.CreateRepRequest(rep=bad_rep), metadata=auth(ADMIN))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "rep.permissions.capacity.total_units" in err.value.details()
    assert "rep.permissions.capacity.channels[0]" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await live.admin.DefineChannels(
            apb.DefineChannelsRequest(channels=[f"c{i}" for i in range(20)]),
            metadata=auth(ADMIN),
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = await live.admin.ListChannels(apb.ListChannelsRequest(), metadata=auth(ADMIN))
    assert list(after.channels) == ["chat", "voice", "email"]


async def test_explain_is_bounded_and_counts_every_member(live):
    """max_candidates bounds the listing; the counts cover the whole team; a bad bound
    is refused before the session is looked up."""
    s = await live.start(issue_type_id="fr-voice")  # nobody signed in: it waits
    full = await explain(live, s.id)
    assert [c.rep_id for c in full.candidates] == ["ann", "bob"]
    assert (full.members, full.eligible_candidates) == (2, 0)
    assert [(r.reason, r.reps) for r in full.reason_counts] == [
        (REASON.NOT_OFFERED_REASON_OFFLINE, 2),
        (REASON.NOT_OFFERED_REASON_NO_ROOM_FOR_CHANNEL, 1),  # bob's profile has no voice
    ]
    sup = sgrpc.SupervisorServiceStub(live.channel)
    one = await sup.ExplainRouting(
        spb.ExplainRoutingRequest(session_id=s.id, max_candidates=1), metadata=auth(ADMIN)
    )
    assert [c.rep_id for c in one.candidates] == ["ann"]
    assert (one.members, list(one.reason_counts)) == (2, list(full.reason_counts))
    for session_id in (s.id, "no-such-session"):
        for bad in (-1, 5001):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await sup.ExplainRouting(
                    spb.ExplainRoutingRequest(session_id=session_id, max_candidates=bad),
                    metadata=auth(ADMIN),
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert violations(err.value) == ["max_candidates"]
    async with Connection(f"127.0.0.1:{live.port}", token=FRENCH_SUPERVISOR) as conn:
        typed = await Supervisor(conn).explain_routing(s.id, max_candidates=1)
        assert [c.rep_id for c in typed.candidates] == ["ann"] and typed.members == 2
