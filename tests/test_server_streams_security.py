"""Console streams (order, resume, fallback, drain), security and bad input over a real
channel."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from assigncore.v1 import admin_service_pb2 as apb
from assigncore.v1 import common_pb2 as pb
from assigncore.v1 import console_service_pb2 as cpb
from assigncore.v1 import console_service_pb2_grpc as cgrpc
from assigncore.v1 import intake_service_pb2 as ipb

from .server_harness import ADMIN, INTAKE, auth, live_server, rep_token


@pytest.fixture
async def live():
    server = await live_server()
    yield server
    await server.close()


async def code_of(awaitable) -> grpc.StatusCode:
    try:
        await awaitable
    except grpc.aio.AioRpcError as exc:
        assert "Traceback" not in (exc.details() or "")
        return exc.code()
    return grpc.StatusCode.OK


# ----------------------------------------------------------------- streams


async def test_events_arrive_in_order_with_increasing_sequence(live):
    ann = await live.console("ann")
    for i in range(5):
        await live.start(issue_type_id="manual-help", customer=pb.Customer(name=f"c{i}"))
    await ann.rpc(
        "SendTeamChatMessage", cpb.SendTeamChatMessageRequest(team_id="support", text="hi")
    )
    await ann.next("chat_message")
    seqs = [m.sequence for m in ann.seen if m.WhichOneof("event") != "welcome"]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def test_resume_after_replays_what_was_missed(live):
    bob = await live.console("bob")
    await live.start(issue_type_id="manual-help", customer=pb.Customer(name="before"))
    added = await bob.next("queue_item_added")
    last = max(m.sequence for m in bob.seen)
    await bob.drop()
    for name in ("missed-1", "missed-2"):
        await live.start(issue_type_id="manual-help", customer=pb.Customer(name=name))
    again = await live.console("bob", resume_after=last)
    assert again.seen[0].welcome.resumed and again.seen[0].sequence == last
    names = []
    for _ in range(2):
        names.append((await again.next("queue_item_added")).item.session.customer.name)
    assert names == ["missed-1", "missed-2"]
    seqs = [m.sequence for m in again.seen if m.WhichOneof("event") != "welcome"]
    assert seqs[0] == last + 1 and seqs == sorted(seqs)
    assert added.item.session.customer.name == "before"


async def test_resume_too_far_back_asks_for_resync():
    desk = __import__("tests.server_harness", fromlist=["DESK"]).DESK.replace(
        "max_rule_moves = 3", "max_rule_moves = 3\nevent_buffer = 3"
    )
    live = await live_server(desk)
    try:
        bob = await live.console("bob")
        await bob.drop()
        for i in range(6):
            await live.start(issue_type_id="manual-help", customer=pb.Customer(name=f"c{i}"))
        again = await live.console("bob", resume_after=1)
        resync = await again.next("resync_required")
        assert resync.oldest_held > 2 and not again.seen[0].welcome.resumed
    finally:
        await live.close()


async def test_a_replaced_stream_ends_and_the_new_one_keeps_the_rep_connected(live):
    first = await live.console("ann")
    second = await live.console("ann")
    await asyncio.wait_for(first.task, 10)
    assert first.ended == grpc.StatusCode.ABORTED
    assert live.server.runtime.engine.rep("ann").connected
    s = await live.start(issue_type_id="general-help")
    assert (await second.next("offer_made")).session.id == s.id


async def test_shutdown_drains_streams():
    live = await live_server()
    ann = await live.console("ann")
    health = health_pb2_grpc.HealthStub(live.channel)
    ok = await health.Check(health_pb2.HealthCheckRequest())
    assert ok.status == health_pb2.HealthCheckResponse.SERVING
    stop = asyncio.create_task(live.server.stop(1.0))
    draining = await ann.next("server_draining")
    assert draining is not None
    await stop
    await asyncio.wait_for(ann.task, 2)
    await live.channel.close()


# ----------------------------------------------------------------- security


async def test_tokens_are_required_and_checked(live):
    console = cgrpc.RepConsoleServiceStub(live.channel)
    request = cpb.ListMyQueuesRequest()
    assert await code_of(console.ListMyQueues(request)) == grpc.StatusCode.UNAUTHENTICATED
    assert (
        await code_of(console.ListMyQueues(request, metadata=auth("nope")))
        == grpc.StatusCode.UNAUTHENTICATED
    )
    assert (
        await code_of(console.ListMyQueues(request, metadata=auth(INTAKE)))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        await code_of(live.admin.ListReps(apb.ListRepsRequest(), metadata=auth(INTAKE)))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        await code_of(live.admin.ListReps(apb.ListRepsRequest(), metadata=auth(rep_token("ann"))))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    issued = await live.admin.IssueAccessToken(
        apb.IssueAccessTokenRequest(kind=apb.PRINCIPAL_KIND_REP, rep_id="ann"), metadata=auth(ADMIN)
    )
    assert (
        await code_of(console.ListMyQueues(request, metadata=auth(issued.secret)))
        == grpc.StatusCode.OK
    )
    await live.admin.RevokeAccessToken(
        apb.RevokeAccessTokenRequest(token_id=issued.access_token.token_id), metadata=auth(ADMIN)
    )
    assert (
        await code_of(console.ListMyQueues(request, metadata=auth(issued.secret)))
        == grpc.StatusCode.UNAUTHENTICATED
    )
    listed = await live.admin.ListAccessTokens(
        apb.ListAccessTokensRequest(page_size=500), metadata=auth(ADMIN)
    )
    assert all(not t.description.startswith("test-") for t in listed.access_tokens)
    assert issued.secret not in str(listed)


async def test_reps_only_act_on_what_is_theirs(live):
    ann = await live.console("ann")
    cat = await live.console("cat")
    s = await live.start(issue_type_id="general-help")
    offer = await ann.next("offer_made")
    engine = live.server.runtime.engine
    before = engine.snapshot()
    assert (
        await code_of(
            cat.rpc("AnswerOffer", cpb.AnswerOfferRequest(offer_id=offer.offer_id, accept=True))
        )
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        await code_of(
            cat.rpc(
                "ListQueueItems",
                cpb.ListQueueItemsRequest(
                    queue=pb.QueueRef(kind=pb.QUEUE_KIND_TEAM, owner_id="support")
                ),
            )
        )
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        await code_of(cat.rpc("GetSession", cpb.GetSessionRequest(session_id=s.id)))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    manual = await live.start(issue_type_id="manual-help")
    before = engine.snapshot()
    assert (
        await code_of(
            cat.rpc(
                "TransferSession",
                cpb.TransferSessionRequest(
                    session_id=manual.id, target=pb.Target(team_id="support")
                ),
            )
        )
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        await code_of(cat.rpc("GetNextSession", cpb.GetNextSessionRequest()))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert engine.snapshot() == before


# ----------------------------------------------------------------- bad input


async def test_bad_input_gets_clear_statuses_and_changes_nothing(live):
    ann = await live.console("ann")
    engine = live.server.runtime.engine
    await live.advance(0)
    before = engine.snapshot()
    huge = "x" * 5000
    bad = [
        live.intake.StartSession(
            ipb.StartSessionRequest(
                request_id="r1", customer=pb.Customer(name=huge), undesignated=ipb.Undesignated()
            ),
            metadata=auth(INTAKE),
        ),
        live.intake.StartSession(
            ipb.StartSessionRequest(
                request_id="r2", customer=pb.Customer(name=""), undesignated=ipb.Undesignated()
            ),
            metadata=auth(INTAKE),
        ),
        live.intake.StartSession(
            ipb.StartSessionRequest(request_id="r3", customer=pb.Customer(name="x")),
            metadata=auth(INTAKE),
        ),
        live.intake.StartSession(
            ipb.StartSessionRequest(
                request_id="", customer=pb.Customer(name="x"), undesignated=ipb.Undesignated()
            ),
            metadata=auth(INTAKE),
        ),
        ann.rpc("ReportPresence", cpb.ReportPresenceRequest(action=99)),
        ann.rpc("ListQueueItems", cpb.ListQueueItemsRequest(queue=pb.QueueRef(kind=77))),
        ann.rpc(
            "ListQueueItems",
            cpb.ListQueueItemsRequest(
                queue=pb.QueueRef(kind=pb.QUEUE_KIND_PERSONAL, owner_id="ann"), page_size=10_000
            ),
        ),
        ann.rpc(
            "ListQueueItems",
            cpb.ListQueueItemsRequest(
                queue=pb.QueueRef(kind=pb.QUEUE_KIND_PERSONAL, owner_id="ann"),
                page_token="garbage!",
            ),
        ),
        ann.rpc("TransferSession", cpb.TransferSessionRequest(session_id="ses-1")),
        ann.rpc(
            "SendTeamChatMessage", cpb.SendTeamChatMessageRequest(team_id="support", text=huge)
        ),
        live.admin.CreateRep(
            apb.CreateRepRequest(
                rep=apb.Rep(id="zed", display_name="Zed", skills={f"s{i}": 1 for i in range(500)})
            ),
            metadata=auth(ADMIN),
        ),
        live.admin.CreateRep(
            apb.CreateRepRequest(
                rep=apb.Rep(id="zed", display_name="Zed", team_ids=["support"] * 300)
            ),
            metadata=auth(ADMIN),
        ),
        live.admin.CreateTeam(
            apb.CreateTeamRequest(
                team=apb.Team(
                    id="t", display_name="T", queue_settings=apb.QueueSettings(algorithm=42)
                )
            ),
            metadata=auth(ADMIN),
        ),
        live.admin.UpdateRep(
            apb.UpdateRepRequest(rep=apb.Rep(id="ann"), update_mask={"paths": ["load"]}),
            metadata=auth(ADMIN),
        ),
    ]
    codes = [await code_of(call) for call in bad]
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 14, codes
    unknown = [
        ann.rpc("GetSession", cpb.GetSessionRequest(session_id="ses-404")),
        ann.rpc("AcceptInvitation", cpb.AcceptInvitationRequest(invitation_id="inv-9")),
        live.intake.StartSession(
            ipb.StartSessionRequest(
                request_id="r9", customer=pb.Customer(name="x"), issue_type_id="nope"
            ),
            metadata=auth(INTAKE),
        ),
        live.admin.GetTeam(apb.GetTeamRequest(team_id="nope"), metadata=auth(ADMIN)),
    ]
    assert [await code_of(c) for c in unknown] == [grpc.StatusCode.NOT_FOUND] * 4
    assert engine.snapshot() == before


async def violations_of(awaitable) -> list[str]:
    """The BadRequest field paths of an INVALID_ARGUMENT refusal."""
    from google.rpc import error_details_pb2

    try:
        await awaitable
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), exc.details())
        bad = error_details_pb2.BadRequest()
        assert rpc_status.from_call(exc).details[0].Unpack(bad)
        return [v.field for v in bad.field_violations]
    raise AssertionError("accepted")


async def test_invalid_argument_names_every_violation_by_its_request_path(live):
    assert await violations_of(
        live.intake.StartSession(
            ipb.StartSessionRequest(
                request_id="r1", customer=pb.Customer(name=""), undesignated=ipb.Undesignated()
            ),
            metadata=auth(INTAKE),
        )
    ) == ["customer.name"]
    # Fields are checked before lookups: an empty name beside an unknown issue type.
    assert await violations_of(
        live.intake.StartSession(
            ipb.StartSessionRequest(
                request_id="r2", customer=pb.Customer(name=" "), issue_type_id="no-such-type"
            ),
            metadata=auth(INTAKE),
        )
    ) == ["customer.name"]
    team = apb.Team(
        id="new-team",
        display_name="",
        queue_settings=apb.QueueSettings(
            algorithm=42,
            offer_timeout={"seconds": -5},
            waiting_rule=apb.WaitingRule(
                overdue_after={"seconds": 60},
                action=apb.RULE_ACTION_TRANSFER,
                overflow_queue=pb.QueueRef(kind=pb.QUEUE_KIND_TEAM),
            ),
        ),
    )
    assert await violations_of(
        live.admin.CreateTeam(apb.CreateTeamRequest(team=team), metadata=auth(ADMIN))
    ) == [
        "team.display_name",
        "team.queue_settings.algorithm",
        "team.queue_settings.offer_timeout",
        "team.queue_settings.waiting_rule.overflow_queue",
    ]
    rep = apb.Rep(id="bad id!", display_name="Zed", skills={"win": 11}, team_ids=["ghosts"])
    fields = await violations_of(
        live.admin.CreateRep(apb.CreateRepRequest(rep=rep), metadata=auth(ADMIN))
    )
    assert fields == ["rep.id", "rep.skills['win']"]  # the unknown team is not looked up yet
    assert live.server.runtime.engine.find_rep("bad id!") is None


async def test_request_id_makes_start_idempotent(live):
    request = ipb.StartSessionRequest(
        request_id="same", customer=pb.Customer(name="x"), undesignated=ipb.Undesignated()
    )
    first = await live.intake.StartSession(request, metadata=auth(INTAKE))
    again = await live.intake.StartSession(request, metadata=auth(INTAKE))
    assert first.session.id == again.session.id
    assert len(live.server.runtime.engine.sessions()) == 1
    other = ipb.StartSessionRequest(
        request_id="same", customer=pb.Customer(name="y"), undesignated=ipb.Undesignated()
    )
    assert (
        await code_of(live.intake.StartSession(other, metadata=auth(INTAKE)))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert len(live.server.runtime.engine.sessions()) == 1


async def test_oversized_message_and_garbage_bytes_leave_the_server_serving(live):
    ann = await live.console("ann")
    too_big = "x" * (2 * 1024 * 1024)
    assert (
        await code_of(
            ann.rpc(
                "SendTeamChatMessage",
                cpb.SendTeamChatMessageRequest(team_id="support", text=too_big),
            )
        )
        == grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    for payload in (b"\x00" * 64, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 8):
        with socket.create_connection(("127.0.0.1", live.port), timeout=2) as raw:
            raw.sendall(payload)
            raw.settimeout(2)
            with contextlib.suppress(OSError):
                raw.recv(1024)
    queues = await ann.rpc("ListMyQueues", cpb.ListMyQueuesRequest())
    assert queues.queues[0].queue.owner_id == "ann"
    s = await live.start(issue_type_id="general-help")
    assert (await ann.next("offer_made")).session.id == s.id


async def test_an_unanswered_offer_moves_on_by_itself_on_the_real_clock(tmp_path):
    """No manual clock: the runtime's timer task fires the offer deadline on the loop."""
    from assigncore_server import config
    from assigncore_server.app import create_server

    from .server_harness import DESK, Live

    desk = DESK.replace("offer_timeout = 30", "offer_timeout = 1", 1)
    settings = config.parse(desk, "test desk")
    settings.shutdown_grace = 0.2
    settings.storage_path = str(tmp_path / "desk.sqlite3")
    server, port = await create_server(settings)
    await server.start()
    live = Live(server, port, clock=None)  # type: ignore[arg-type]
    try:
        ann = await live.console("ann")
        bob = await live.console("bob")
        s = await live.start(issue_type_id="general-help")
        first = await ann.next("offer_made")
        # No request moves it on: the runtime's timer fires the deadline on the loop.
        second = await bob.next("offer_made", timeout=30)
        expired = await ann.next("offer_rescinded", offer_id=first.offer_id)
        assert first.session.id == second.session.id == s.id
        assert expired.reason == cpb.RESCIND_REASON_TIMED_OUT
        # Judged by the server's own clock: bob's offer came once ann's deadline passed.
        offered_at = next(m.time for m in bob.seen if m.WhichOneof("event") == "offer_made")
        assert offered_at.ToNanoseconds() >= first.deadline_time.ToNanoseconds()
    finally:
        await live.close()


def test_reflection_lists_the_services():
    import asyncio as _asyncio

    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    async def start():
        live = await live_server()
        return live

    loop = _asyncio.new_event_loop()
    live = loop.run_until_complete(start())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{live.port}") as channel:
            names = loop.run_in_executor(
                None, lambda: set(ProtoReflectionDescriptorDatabase(channel).get_services())
            )
            services = loop.run_until_complete(names)
        assert {
            "assigncore.v1.RepConsoleService",
            "assigncore.v1.IntakeService",
            "assigncore.v1.AdminService",
            "grpc.health.v1.Health",
        } <= services
    finally:
        loop.run_until_complete(live.close())
        loop.close()


async def test_session_key_guessing_is_limited_per_host_across_connections(live):
    for attempt in range(12):
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{live.port}")  # a new connection
        from assigncore.v1 import intake_service_pb2_grpc as igrpc

        code = await code_of(
            igrpc.IntakeServiceStub(channel).StartSession(
                ipb.StartSessionRequest(
                    request_id=f"guess-{attempt}",
                    customer=pb.Customer(name="x"),
                    session_key="AAAAAAAA",
                ),
                metadata=auth(INTAKE),
            )
        )
        await channel.close()
        expected = grpc.StatusCode.NOT_FOUND if attempt < 10 else grpc.StatusCode.RESOURCE_EXHAUSTED
        assert code == expected, attempt


async def test_one_customer_guessing_keys_does_not_lock_out_the_portals_other_customers(live):
    ann = await live.console("ann")
    key = (await ann.rpc("GenerateSessionKey", cpb.GenerateSessionKeyRequest())).session_key

    async def redeem(key: str, address: str, attempt: str) -> grpc.StatusCode:
        return await code_of(
            live.intake.StartSession(
                ipb.StartSessionRequest(
                    request_id=f"key-{attempt}",
                    customer=pb.Customer(name="x"),
                    session_key=key,
                    customer_address=address,
                ),
                metadata=auth(INTAKE),
            )
        )

    codes = [await redeem("AAAAAAAA", "203.0.113.7", f"g{i}") for i in range(11)]
    assert codes == [grpc.StatusCode.NOT_FOUND] * 10 + [grpc.StatusCode.RESOURCE_EXHAUSTED]
    # The same portal, another customer, a valid key: served.
    assert await redeem(key, "198.51.100.20", "valid") == grpc.StatusCode.OK


async def test_a_portal_sees_and_cancels_only_its_own_sessions(live):
    other = await live.admin.IssueAccessToken(
        apb.IssueAccessTokenRequest(kind=apb.PRINCIPAL_KIND_INTAKE), metadata=auth(ADMIN)
    )
    mine = await live.start(issue_type_id="manual-help")
    theirs = await live.start(token=other.secret, issue_type_id="manual-help")
    assert mine.id != theirs.id
    for session_id in (theirs.id, "ses_00000000000000000000"):
        status = await code_of(
            live.intake.GetSessionStatus(
                ipb.GetSessionStatusRequest(session_id=session_id), metadata=auth(INTAKE)
            )
        )
        assert status == grpc.StatusCode.NOT_FOUND  # foreign and unknown look the same
    cancel = await code_of(
        live.intake.CancelSession(
            ipb.CancelSessionRequest(request_id="c-1", session_id=theirs.id),
            metadata=auth(INTAKE),
        )
    )
    assert cancel == grpc.StatusCode.NOT_FOUND
    assert live.server.runtime.engine.session(theirs.id).state.value == "WAITING"
    # Its own session, and an admin for any.
    own = await live.intake.GetSessionStatus(
        ipb.GetSessionStatusRequest(session_id=mine.id), metadata=auth(INTAKE)
    )
    assert own.state == pb.SESSION_STATE_WAITING
    admin = await live.intake.GetSessionStatus(
        ipb.GetSessionStatusRequest(session_id=theirs.id), metadata=auth(ADMIN)
    )
    assert admin.state == pb.SESSION_STATE_WAITING
    # The same request_id from two portals makes two sessions, not one.
    a = await live.intake.StartSession(
        ipb.StartSessionRequest(
            request_id="shared-id", customer=pb.Customer(name="A"), undesignated=ipb.Undesignated()
        ),
        metadata=auth(INTAKE),
    )
    b = await live.intake.StartSession(
        ipb.StartSessionRequest(
            request_id="shared-id", customer=pb.Customer(name="A"), undesignated=ipb.Undesignated()
        ),
        metadata=auth(other.secret),
    )
    assert a.session.id != b.session.id
