"""SupervisorService over a real gRPC channel: statistics, scope, interventions, the
audit trail, and supervisor tokens (expiry, rotation)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import duration_pb2

from assigncore.v1 import admin_service_pb2 as apb
from assigncore.v1 import common_pb2 as pb
from assigncore.v1 import console_service_pb2 as cpb
from assigncore.v1 import supervisor_service_pb2 as spb
from assigncore.v1 import supervisor_service_pb2_grpc as sgrpc

from .server_harness import ADMIN, auth, live_server, rep_token, until


@pytest.fixture
async def live():
    server = await live_server()
    yield server
    await server.close()


def team(team_id: str) -> pb.QueueRef:
    return pb.QueueRef(kind=pb.QUEUE_KIND_TEAM, owner_id=team_id)


def personal(rep_id: str) -> pb.QueueRef:
    return pb.QueueRef(kind=pb.QUEUE_KIND_PERSONAL, owner_id=rep_id)


async def supervisor(live, teams=("manual",), rep="cat", **kw) -> str:
    issued = await live.admin.IssueAccessToken(
        apb.IssueAccessTokenRequest(
            kind=apb.PRINCIPAL_KIND_SUPERVISOR, team_ids=list(teams), rep_id=rep, **kw
        ),
        metadata=auth(ADMIN),
    )
    assert list(issued.access_token.team_ids) == sorted(teams)
    return issued.secret


async def start(live, issue_type: str) -> pb.Session:
    return await live.start(issue_type_id=issue_type)


def queue_row(stats: spb.Statistics, ref: pb.QueueRef) -> spb.QueueStatistics:
    [row] = [q for q in stats.queues if q.queue == ref]
    return row


def rep_row(stats: spb.Statistics, rep_id: str) -> spb.RepStatistics:
    [row] = [r for r in stats.reps if r.rep_id == rep_id]
    return row


async def test_statistics_in_a_supervisors_scope(live):
    token = await supervisor(live)
    sup = sgrpc.SupervisorServiceStub(live.channel)
    await start(live, "manual-help")  # waits: the manual team assigns nothing
    await start(live, "general-help")  # the support team: out of scope
    await live.advance(10)
    stats = (await sup.GetStatistics(spb.GetStatisticsRequest(), metadata=auth(token))).statistics
    assert [t.team_id for t in stats.teams] == ["manual"]
    assert sorted(r.rep_id for r in stats.reps) == ["bob", "cat"]
    manual = queue_row(stats, team("manual"))
    assert (manual.waiting, manual.longest_wait.seconds, manual.today.arrived) == (1, 10, 1)
    assert not manual.today.HasField("service_level")
    assert len(manual.arrivals_per_minute) == 60
    assert all(q.queue != team("support") for q in stats.queues)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sup.GetStatistics(
            spb.GetStatisticsRequest(team_ids=["support"]), metadata=auth(token)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # an admin sees every team, and the general queue
    stats = (await sup.GetStatistics(spb.GetStatisticsRequest(), metadata=auth(ADMIN))).statistics
    assert {"support", "manual"} <= {t.team_id for t in stats.teams}
    assert any(q.queue.kind == pb.QUEUE_KIND_GENERAL for q in stats.queues)


async def test_sessions_listed_inspected_pulled_and_moved_within_scope(live):
    token = await supervisor(live)
    sup = sgrpc.SupervisorServiceStub(live.channel)
    mine = await start(live, "manual-help")
    theirs = await start(live, "general-help")
    await live.advance(10)
    listed = await sup.ListSessions(spb.ListSessionsRequest(), metadata=auth(token))
    assert [s.id for s in listed.sessions] == [mine.id]
    longer = duration_pb2.Duration(seconds=20)
    listed = await sup.ListSessions(
        spb.ListSessionsRequest(waiting_longer_than=longer), metadata=auth(token)
    )
    assert list(listed.sessions) == []
    for call, request in (
        (sup.InspectSession, spb.InspectSessionRequest(session_id=theirs.id)),
        (sup.PullSession, spb.PullSessionRequest(session_id=theirs.id)),
        (
            sup.ForceTransferSession,
            spb.ForceTransferSessionRequest(session_id=mine.id, target=team("support")),
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(request, metadata=auth(token))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    pulled = await sup.PullSession(spb.PullSessionRequest(session_id=mine.id), metadata=auth(token))
    assert (pulled.session.state, pulled.session.owner_rep_id) == (
        pb.SESSION_STATE_ACTIVE,
        "cat",
    )
    moved = await sup.ForceTransferSession(
        spb.ForceTransferSessionRequest(session_id=mine.id, target=personal("bob")),
        metadata=auth(token),
    )
    assert moved.session.queue == personal("bob") and not moved.session.owner_rep_id
    inspected = await sup.InspectSession(
        spb.InspectSessionRequest(session_id=mine.id), metadata=auth(token)
    )
    assert inspected.session.queue == personal("bob")


async def test_declines_with_why(live):
    sup = sgrpc.SupervisorServiceStub(live.channel)
    consoles = {rep: await live.console(rep) for rep in ("ann", "bob")}
    s = await start(live, "general-help")
    engine = live.server.runtime.engine
    offer = engine.offer(engine.session(s.id).offer)
    await consoles[offer.rep_id].rpc(
        "AnswerOffer", cpb.AnswerOfferRequest(offer_id=offer.id, accept=False)
    )
    got = await sup.InspectSession(spb.InspectSessionRequest(session_id=s.id), metadata=auth(ADMIN))
    [decline] = got.declines
    assert (decline.rep_id, decline.timed_out, decline.queue) == (
        offer.rep_id,
        False,
        team("support"),
    )


async def test_sign_out_and_auto_assign_and_the_audit_trail(live):
    token = await supervisor(live)
    sup = sgrpc.SupervisorServiceStub(live.channel)
    bob = await live.console("bob")
    await sup.SetRepAutoAssign(
        spb.SetRepAutoAssignRequest(rep_id="bob", auto_assign=False),
        metadata=(*auth(token), ("x-request-id", "req-42")),
    )
    stats = (await sup.GetStatistics(spb.GetStatisticsRequest(), metadata=auth(token))).statistics
    assert (rep_row(stats, "bob").state, rep_row(stats, "bob").reason) == (
        spb.REP_STATE_AWAY,
        "OPTED_OUT",
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:  # ann is in no team of this scope
        await sup.SignOutRep(spb.SignOutRepRequest(rep_id="ann"), metadata=auth(token))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await sup.SignOutRep(spb.SignOutRepRequest(rep_id="bob"), metadata=auth(token))
    await until(lambda: bob.task.done())
    stats = (await sup.GetStatistics(spb.GetStatisticsRequest(), metadata=auth(token))).statistics
    assert rep_row(stats, "bob").state == spb.REP_STATE_OFFLINE
    trail = await live.admin.ListAuditEntries(apb.ListAuditEntriesRequest(), metadata=auth(ADMIN))
    methods = [(e.method.rsplit("/", 1)[-1], e.code) for e in trail.entries]
    assert methods == [
        ("IssueAccessToken", 0),
        ("SetRepAutoAssign", 0),
        ("SignOutRep", grpc.StatusCode.NOT_FOUND.value[0]),
        ("SignOutRep", 0),
    ]
    auto = trail.entries[1]
    assert auto.kind == apb.PRINCIPAL_KIND_SUPERVISOR and auto.request_id == "req-42"
    assert '"rep_id": "bob"' in auto.request_json and auto.peer
    only = await live.admin.ListAuditEntries(
        apb.ListAuditEntriesRequest(method="SignOutRep", page_size=1), metadata=auth(ADMIN)
    )
    assert len(only.entries) == 1 and only.next_page_token
    rest = await live.admin.ListAuditEntries(
        apb.ListAuditEntriesRequest(method="SignOutRep", page_token=only.next_page_token),
        metadata=auth(ADMIN),
    )
    assert [e.code for e in rest.entries] == [0] and not rest.next_page_token


async def test_who_may_call_what(live):
    token = await supervisor(live)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await live.admin.ListAccessTokens(apb.ListAccessTokensRequest(), metadata=auth(token))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    sup = sgrpc.SupervisorServiceStub(live.channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sup.GetStatistics(spb.GetStatisticsRequest(), metadata=auth(rep_token("ann")))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    no_rep = await supervisor(live, rep="")
    s = await start(live, "manual-help")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sup.PullSession(spb.PullSessionRequest(session_id=s.id), metadata=auth(no_rep))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await live.admin.IssueAccessToken(
            apb.IssueAccessTokenRequest(kind=apb.PRINCIPAL_KIND_SUPERVISOR),
            metadata=auth(ADMIN),
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_watch_pushes_on_change_and_ends_on_revocation(live):
    issued = await live.admin.IssueAccessToken(
        apb.IssueAccessTokenRequest(kind=apb.PRINCIPAL_KIND_SUPERVISOR, team_ids=["manual"]),
        metadata=auth(ADMIN),
    )
    sup = sgrpc.SupervisorServiceStub(live.channel)
    call = sup.WatchStatistics(
        spb.WatchStatisticsRequest(
            interval=duration_pb2.Duration(seconds=3600),
            min_interval=duration_pb2.Duration(nanos=100_000_000),
        ),
        metadata=auth(issued.secret),
    )
    first = await asyncio.wait_for(call.read(), 5)
    assert queue_row(first.statistics, team("manual")).waiting == 0
    await start(live, "manual-help")
    second = await asyncio.wait_for(call.read(), 5)  # long before the hour's interval
    assert queue_row(second.statistics, team("manual")).waiting == 1
    await live.admin.RevokeAccessToken(
        apb.RevokeAccessTokenRequest(token_id=issued.access_token.token_id), metadata=auth(ADMIN)
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        while True:
            await asyncio.wait_for(call.read(), 5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_tokens_expire_and_rotate_with_an_overlap(live):
    sup = sgrpc.SupervisorServiceStub(live.channel)
    issued = await live.admin.IssueAccessToken(
        apb.IssueAccessTokenRequest(
            kind=apb.PRINCIPAL_KIND_SUPERVISOR,
            team_ids=["manual"],
            ttl=duration_pb2.Duration(seconds=600),
        ),
        metadata=auth(ADMIN),
    )
    assert issued.access_token.HasField("expire_time")
    old = issued.secret
    rotated = await live.admin.RotateAccessToken(
        apb.RotateAccessTokenRequest(
            token_id=issued.access_token.token_id, overlap=duration_pb2.Duration(seconds=60)
        ),
        metadata=auth(ADMIN),
    )
    new = rotated.secret
    assert list(rotated.access_token.team_ids) == ["manual"]
    for secret in (old, new):
        await sup.GetStatistics(spb.GetStatisticsRequest(), metadata=auth(secret))
    await live.advance(61)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sup.GetStatistics(spb.GetStatisticsRequest(), metadata=auth(old))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await sup.GetStatistics(spb.GetStatisticsRequest(), metadata=auth(new))
    await live.advance(600)  # the new one kept the old one's expiry
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sup.GetStatistics(spb.GetStatisticsRequest(), metadata=auth(new))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_statistics_tokens_and_audit_survive_a_restart():
    live = await live_server()
    path = live.server.runtime.settings.storage_path
    scratch, live.scratch = live.scratch, None
    token = await supervisor(live)
    sup = sgrpc.SupervisorServiceStub(live.channel)
    s = await start(live, "manual-help")
    await live.advance(5)
    await sup.PullSession(spb.PullSessionRequest(session_id=s.id), metadata=auth(token))
    before = (await sup.GetStatistics(spb.GetStatisticsRequest(), metadata=auth(token))).statistics
    trail = await live.admin.ListAuditEntries(apb.ListAuditEntriesRequest(), metadata=auth(ADMIN))
    await live.close(snapshot=False)  # rebuilt from the journal alone
    again = await live_server(storage_path=path, clock=live.clock)
    again.scratch = scratch
    try:
        sup = sgrpc.SupervisorServiceStub(again.channel)
        after = (
            await sup.GetStatistics(spb.GetStatisticsRequest(), metadata=auth(token))
        ).statistics
        manual = queue_row(after, team("manual"))
        assert manual == queue_row(before, team("manual"))
        assert manual.today.accepted == 1 and manual.today.average_speed_of_answer.seconds == 5
        kept = await again.admin.ListAuditEntries(
            apb.ListAuditEntriesRequest(), metadata=auth(ADMIN)
        )
        assert list(kept.entries) == list(trail.entries)
    finally:
        await again.close()
