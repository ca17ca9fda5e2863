"""Durability through the API (DESIGN.md 4.2): a desk stopped and started again on the
same file is the same desk, read through every service; a console resumes across the
restart; what a restart must not blame on reps, it does not."""

from __future__ import annotations

import asyncio
import sqlite3

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc

from assigncore.v1 import admin_service_pb2 as apb
from assigncore.v1 import common_pb2 as pb
from assigncore.v1 import console_service_pb2 as cpb
from assigncore.v1 import console_service_pb2_grpc as cgrpc
from assigncore.v1 import intake_service_pb2 as ipb
from assigncore.v1 import supervisor_service_pb2 as spb
from assigncore.v1 import supervisor_service_pb2_grpc as sgrpc

from . import postgres
from .server_harness import ADMIN, INTAKE, Console, Live, auth, live_server, rep_token, until

REPS = ("ann", "bob", "cat", "gil", "dan")


def plain(msg) -> dict:
    data = MessageToDict(msg, preserving_proto_field_name=True)
    data.pop("feed_sequence", None)
    return data


async def view(live: Live, sessions: list[str], dan_token: str) -> dict:
    """Everything the services tell about the desk, as plain data."""
    a, md = live.admin, auth(ADMIN)
    out: dict = {}
    for name in ("Reps", "Teams", "IssueTypes", "SupportButtons", "HelpLinks", "AccessTokens"):
        request = getattr(apb, f"List{name}Request")(page_size=500)
        out[name] = plain(await getattr(a, f"List{name}")(request, metadata=md))
    out["channels"] = plain(await a.ListChannels(apb.ListChannelsRequest(), metadata=md))
    # Presence is the one thing a restart changes on purpose: nobody has a console.
    out["connected"] = sorted(r["id"] for r in out["Reps"]["reps"] if r.pop("connected", 0))
    out["Reps"] = sorted(out["Reps"]["reps"], key=str)
    stub = cgrpc.RepConsoleServiceStub(live.channel)
    for rep in REPS:
        md = auth(dan_token if rep == "dan" else rep_token(rep))
        mine = {"profile": plain(await stub.GetMyProfile(cpb.GetMyProfileRequest(), metadata=md))}
        queues = await stub.ListMyQueues(cpb.ListMyQueuesRequest(), metadata=md)
        mine["queues"] = plain(queues)
        for q in queues.queues:
            items = await stub.ListQueueItems(
                cpb.ListQueueItemsRequest(queue=q.queue, page_size=100), metadata=md
            )
            mine[f"items {q.queue.owner_id}"] = plain(items)
            if q.queue.kind == pb.QUEUE_KIND_TEAM:
                chat = await stub.ListTeamChatMessages(
                    cpb.ListTeamChatMessagesRequest(team_id=q.queue.owner_id), metadata=md
                )
                mine[f"chat {q.queue.owner_id}"] = plain(chat)
        out[rep] = mine
    for sid in sessions:
        status = await live.intake.GetSessionStatus(
            ipb.GetSessionStatusRequest(session_id=sid), metadata=auth(INTAKE)
        )
        out[sid] = plain(status)
    return out


BACKENDS = ["sqlite", "postgresql"]


def storage_of(backend: str, tmp_path) -> dict:
    """live_server settings for a new desk on `backend`."""
    if backend == "sqlite":
        return {"storage_path": str(tmp_path / "desk.sqlite3")}
    return {"storage_mode": "postgresql", "storage_url": postgres.fresh_database()}


def same_storage(live: Live) -> dict:
    """live_server settings that open the desk `live` serves, again."""
    settings = live.server.runtime.settings
    if settings.storage_mode == "postgresql":
        return {"storage_mode": "postgresql", "storage_url": settings.storage_url}
    return {"storage_path": settings.storage_path}


async def restart(live: Live, crash_like: bool) -> Live:
    """Stops the server (a clean stop writes a snapshot) and starts it again on the same
    storage and clock. `crash_like` deletes the snapshots first, so the desk comes back
    from the journal alone, as after a crash."""
    storage, clock = same_storage(live), live.clock
    await live.close()
    if crash_like and "storage_url" in storage:
        postgres.execute(storage["storage_url"], "DELETE FROM assigncore.snapshot_chunks")
        postgres.execute(storage["storage_url"], "DELETE FROM assigncore.snapshots")
    elif crash_like:
        with sqlite3.connect(storage["storage_path"]) as db:
            db.execute("DELETE FROM snapshot_chunks")
            db.execute("DELETE FROM snapshots")
    return await live_server(clock=clock, **storage)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("crash_like", [False, True], ids=["snapshot", "journal-only"])
async def test_a_restarted_desk_is_the_same_desk(tmp_path, crash_like, backend):
    live = await live_server(**storage_of(backend, tmp_path))
    md = auth(ADMIN)
    try:
        # The directory and tokens, through the admin API.
        await live.admin.CreateTeam(
            apb.CreateTeamRequest(
                team=apb.Team(
                    id="extra",
                    display_name="Extra",
                    queue_settings=apb.QueueSettings(algorithm=apb.ALGORITHM_LEAST_BUSY),
                )
            ),
            metadata=md,
        )
        await live.admin.CreateRep(
            apb.CreateRepRequest(
                rep=apb.Rep(id="dan", display_name="Dan", team_ids=["extra", "manual"])
            ),
            metadata=md,
        )
        dan = await live.admin.IssueAccessToken(
            apb.IssueAccessTokenRequest(kind=apb.PRINCIPAL_KIND_REP, rep_id="dan"), metadata=md
        )
        doomed = await live.admin.IssueAccessToken(
            apb.IssueAccessTokenRequest(kind=apb.PRINCIPAL_KIND_INTAKE), metadata=md
        )
        await live.admin.RevokeAccessToken(
            apb.RevokeAccessTokenRequest(token_id=doomed.access_token.token_id), metadata=md
        )
        ann = await live.console("ann")
        bob = await live.console("bob")
        await live.console("gil")
        # Waiting sessions in rule-4 order (priorities), and one through a key.
        first = await live.start(issue_type_id="manual-help", customer=pb.Customer(name="m0"))
        await live.start(issue_type_id="manual-help", customer=pb.Customer(name="m1"))
        key = await ann.rpc("GenerateSessionKey", cpb.GenerateSessionKeyRequest())
        await live.start(session_key=key.session_key)
        spare_key = await bob.rpc("GenerateSessionKey", cpb.GenerateSessionKeyRequest())
        # An active session, shared; a pending invitation; a pending offer.
        active = await live.start(issue_type_id="general-help")
        offer = await ann.next("offer_made")
        await ann.rpc("AnswerOffer", cpb.AnswerOfferRequest(offer_id=offer.offer_id, accept=True))
        inv = await ann.rpc(
            "InviteToSession",
            cpb.InviteToSessionRequest(session_id=active.id, target=pb.Target(rep_id="bob")),
        )
        await bob.rpc(
            "AcceptInvitation", cpb.AcceptInvitationRequest(invitation_id=inv.invitation.id)
        )
        await ann.rpc(
            "InviteToSession",
            cpb.InviteToSessionRequest(session_id=active.id, target=pb.Target(team_id="manual")),
        )
        pending = await live.start(issue_type_id="general-help")
        engine = live.server.runtime.engine
        await until(lambda: engine.offers())
        (pending_offer,) = engine.offers()
        assert pending_offer.session_id == pending.id
        # Chat, unread marks, favourites.
        await bob.rpc(
            "SendTeamChatMessage", cpb.SendTeamChatMessageRequest(team_id="support", text="hi")
        )
        await ann.rpc(
            "SetFavoriteTeam", cpb.SetFavoriteTeamRequest(team_id="skills", favorite=True)
        )
        await ann.next("chat_message")
        # Routing beyond the seeds: channels, a capacity profile, and a session that
        # waits out its first routing step (bob, its preferred rep, is signed in); the
        # next step names a skill nobody had before.
        await live.admin.DefineChannels(
            apb.DefineChannelsRequest(channels=["chat", "voice"]), metadata=md
        )
        profile = pb.CapacityProfile(
            total_units=2, channels=[pb.ChannelCapacity(channel="chat", units=1)]
        )
        await live.admin.UpdateRep(
            apb.UpdateRepRequest(
                rep=apb.Rep(id="cat", permissions=pb.PermissionProfile(capacity=profile)),
                update_mask=field_mask_pb2.FieldMask(paths=["permissions"]),
            ),
            metadata=md,
        )
        ten_minutes = duration_pb2.Duration(seconds=600)
        await live.admin.CreateIssueType(
            apb.CreateIssueTypeRequest(
                issue_type=apb.IssueType(
                    id="stepped",
                    display_name="Stepped",
                    team_id="manual",
                    service_channel="chat",
                    steps=[
                        pb.RoutingStep(kind=pb.STEP_KIND_PREFERRED_REP, duration=ten_minutes),
                        pb.RoutingStep(
                            kind=pb.STEP_KIND_SKILLS,
                            skills=[pb.RequiredSkill(skill="linux", min_level=4)],
                            duration=ten_minutes,
                        ),
                        pb.RoutingStep(kind=pb.STEP_KIND_ANY),
                    ],
                )
            ),
            metadata=md,
        )
        stepped = await live.start(issue_type_id="stepped", preferred_rep_id="bob")
        assert (stepped.routing_step.step, stepped.service_channel) == (0, "chat")
        sessions = [s.id for s in live.server.runtime.engine.sessions()]
        before = await view(live, sessions, dan.secret)
        ann_seen = ann.seen[-1].sequence
        feeds_before = {r: f.seq for r, f in live.server.runtime.hub.feeds.items()}

        live = await restart(live, crash_like)
        live._request = 1000  # this client's own request ids go on from where they were
        after = await view(live, sessions, dan.secret)
        assert before["connected"] == ["ann", "bob", "gil"] and after["connected"] == []
        after["connected"] = before["connected"]
        assert after == before
        # Console feeds were rebuilt: ann resumes where she was, with the restart's own
        # events after it, and needs no resync.
        feeds = live.server.runtime.hub.feeds
        assert {r: f.seq for r, f in feeds.items() if r in feeds_before} != feeds_before
        ann = await live.console("ann", resume_after=ann_seen)
        welcome = ann.seen[0]
        assert welcome.welcome.resumed and welcome.sequence == ann_seen
        changed = await ann.next("eligibility_changed", eligible=True)
        assert changed  # her reconnect, numbered after what the restart told her
        numbers = [m.sequence for m in ann.seen[1:]]
        assert numbers == list(range(ann_seen + 1, ann_seen + 1 + len(numbers)))
        # The offer pending at the stop is still its rep's to answer.
        offered = await live.console(pending_offer.rep_id)
        await offered.rpc(
            "AnswerOffer", cpb.AnswerOfferRequest(offer_id=pending_offer.id, accept=True)
        )
        # Intake idempotency: a retried request_id gets the first answer.
        again = await live.intake.StartSession(
            ipb.StartSessionRequest(
                request_id="req-1",
                customer=pb.Customer(name="m0"),
                issue_type_id="manual-help",
            ),
            metadata=auth(INTAKE),
        )
        assert again.session.id == first.id
        # Revoked stays revoked; issued still works; the spare key still redeems.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await live.start(token=doomed.secret)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await Console(live, "dan", token=dan.secret).welcome()
        keyed = await live.start(session_key=spare_key.session_key)
        assert keyed.queue == pb.QueueRef(kind=pb.QUEUE_KIND_PERSONAL, owner_id="bob")
        # Ids are never reused.
        fresh = await live.start(issue_type_id="manual-help")
        assert fresh.id not in sessions and keyed.id not in sessions
        # The step's timer came back: at its expiry the session moves on, past the
        # skills step that nobody signed in could match now.
        await live.advance(600)
        inspected = await sgrpc.SupervisorServiceStub(live.channel).InspectSession(
            spb.InspectSessionRequest(session_id=stepped.id), metadata=md
        )
        routing = inspected.session.routing_step
        assert (routing.step, routing.kind) == (2, pb.STEP_KIND_ANY)
        assert [(c.step, c.skipped) for c in routing.changes] == [(2, 1)]
    finally:
        await live.close()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_offer_that_ran_out_while_the_server_was_down_is_withdrawn_not_declined(
    tmp_path, backend
):
    live = await live_server(**storage_of(backend, tmp_path))
    try:
        ann = await live.console("ann")
        s = await live.start(issue_type_id="general-help")
        offer = await ann.next("offer_made")
        seen = ann.seen[-1].sequence
        storage, clock = same_storage(live), live.clock
        await live.close()
        clock.tick(45)  # down longer than the 30 s offer timeout
        live = await live_server(clock=clock, **storage)
        ann = await live.console("ann", resume_after=seen)
        gone = await ann.next("offer_rescinded", offer_id=offer.offer_id)
        assert gone.reason == cpb.RESCIND_REASON_SERVER_RESTARTED
        again = await ann.next("offer_made")  # she is back: offered again, nothing declined
        assert again.session.id == s.id and not again.session.declined_by_rep_ids
        assert live.server.runtime.engine.rep("ann").missed_offers == 0
    finally:
        await live.close()


async def test_a_second_server_on_the_same_desk_file_refuses_to_start(tmp_path):
    from assigncore_server.storage.files import StorageError

    path = str(tmp_path / "desk.sqlite3")
    live = await live_server(storage_path=path)
    try:
        with pytest.raises(StorageError, match="in use"):
            await live_server(storage_path=path)
        await until(lambda: live.server.runtime.storage is not None)
    finally:
        await live.close()


async def test_memory_mode_keeps_nothing_and_says_so(tmp_path, caplog):
    path = str(tmp_path / "desk.sqlite3")
    live = await live_server(storage_mode="memory", storage_path=path)
    try:
        await live.start(issue_type_id="manual-help")
    finally:
        await live.close()
    assert "STORAGE MODE IS MEMORY" in caplog.text
    assert not (tmp_path / "desk.sqlite3").exists()


async def test_a_full_disk_refuses_calls_applies_nothing_and_recovers(tmp_path):
    """The journal cannot be written: the call that could not be made durable is
    refused with UNAVAILABLE, so are the calls after it, consoles are told to come back,
    and once space returns the desk is rebuilt from what was durable."""
    live = await live_server(storage_path=str(tmp_path / "desk.sqlite3"))
    try:
        ann = await live.console("ann")
        kept = await live.start(issue_type_id="manual-help")
        runtime = live.server.runtime
        journal = runtime.storage.journal
        pages = journal._conn.execute("PRAGMA page_count").fetchone()[0]
        journal._conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
        refused = None
        for _ in range(200):
            try:
                await live.start(issue_type_id="manual-help", customer=pb.Customer(name="x" * 60))
            except grpc.aio.AioRpcError as exc:
                refused = exc
                break
        assert refused is not None and refused.code() == grpc.StatusCode.UNAVAILABLE
        assert "journal" in refused.details()
        lost = live._request  # the request id of the refused call
        await until(lambda: ann.ended is not None)
        assert ann.ended == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as also:
            await live.intake.GetSessionStatus(
                ipb.GetSessionStatusRequest(session_id=kept.id), metadata=auth(INTAKE)
            )
        assert also.value.code() == grpc.StatusCode.UNAVAILABLE
        health = health_pb2_grpc.HealthStub(live.channel)
        reply = await health.Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING  # not a lie
        journal._conn.execute("PRAGMA max_page_count = 1073741823")  # space returns
        await until(lambda: not runtime.failed, seconds=30)
        for _ in range(100):
            reply = await health.Check(health_pb2.HealthCheckRequest())
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.01)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        waiting = [s.customer.name for s in runtime.engine.sessions()]
        # The refused call left nothing behind: its request id is free, and it starts a
        # session now.
        retried = await live.intake.StartSession(
            ipb.StartSessionRequest(
                request_id=f"req-{lost}",
                customer=pb.Customer(name="x" * 60),
                issue_type_id="manual-help",
            ),
            metadata=auth(INTAKE),
        )
        assert retried.session.id not in {s.id for s in runtime.engine.sessions()} - {
            retried.session.id
        }
        assert len(waiting) == lost - 1  # every acknowledged start, and no other
        ann = await live.console("ann", resume_after=ann.seen[-1].sequence)
        assert ann.seen[0].welcome.resumed
    finally:
        await live.close()


async def test_a_corrupt_middle_record_stops_the_start_and_names_its_position(tmp_path):
    from assigncore_server.storage.journal import JournalError

    path = str(tmp_path / "desk.sqlite3")
    live = await live_server(storage_path=path)
    for _ in range(3):
        await live.start(issue_type_id="manual-help")
    await live.close()
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM snapshot_chunks")
        db.execute("DELETE FROM snapshots")
        last = db.execute("SELECT MAX(position) FROM records").fetchone()[0]
        db.execute("UPDATE records SET body = X'00' WHERE position = ?", (last - 1,))
    with pytest.raises(JournalError) as refused:
        await live_server(storage_path=path)
    assert refused.value.position == last - 1
    assert f"record {last - 1}" in str(refused.value) and "assigncore journal" in str(refused.value)


async def test_a_corrupt_last_record_stops_the_start(tmp_path):
    """An acknowledged change in a damaged last record is not dropped: the server does
    not start, and says which record and how to inspect it."""
    from assigncore_server.storage.files import StorageError

    path = str(tmp_path / "desk.sqlite3")
    live = await live_server(storage_path=path)
    await live.start(issue_type_id="manual-help")
    await live.close()
    with sqlite3.connect(path) as db:
        last = db.execute("SELECT MAX(position) FROM records").fetchone()[0]
        db.execute("UPDATE records SET body = substr(body, 1, 10) WHERE position = ?", (last,))
    with pytest.raises(StorageError) as refused:
        await live_server(storage_path=path)
    assert f"record {last}" in str(refused.value) and "assigncore journal" in str(refused.value)
