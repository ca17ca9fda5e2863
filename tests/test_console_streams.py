"""Console streams ended from outside their handler: a console that stops reading, a
revoked token, a deleted rep. Over real channels on a loopback port."""

from __future__ import annotations

import asyncio

import grpc
from grpc_status import rpc_status

from assigncore.v1 import admin_service_pb2 as apb
from assigncore.v1 import console_service_pb2 as cpb

from .h2client import RawConnection, grpc_frame
from .server_harness import ADMIN, auth, live_server, rep_token, until

SUBSCRIBE = "/assigncore.v1.RepConsoleService/Subscribe"
RESOURCE_EXHAUSTED = 8


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


async def test_a_console_that_stops_reading_is_cut_off_and_memory_stays_flat():
    live = await live_server(outbox_limit=50, event_buffer=100)
    rt = live.server.runtime
    raw = None
    try:
        bob = await live.console("bob")
        # Ann's console opens Subscribe with a 1 KiB window and never acknowledges data.
        raw = await asyncio.to_thread(RawConnection, live.port, 1024, False)
        sid = raw.open(SUBSCRIBE, rep_token("ann"), grpc_frame(b""), end_stream=True)
        await until(lambda: rt.hub.stream_of("ann") is not None)
        await until(lambda: rt.engine.rep("ann").connected)
        stream = rt.hub.stream_of("ann")
        peak_outbox = 0
        before = 0
        text = "x" * 4000  # ~4 KB per event: 15,000 of them would be ~60 MB if kept
        for i in range(20_000):
            if i == 5_000:  # warmed up (allocator pools, SQLite's page cache)
                await rt.durable()
                before = rss_bytes()
            # Team "front" has ann alone: only her feed gets these events.
            rt.command(rt.engine.post_chat, "ann", "front", text)
            peak_outbox = max(peak_outbox, len(stream.outbox))
            if i % 1000 == 0:
                await asyncio.sleep(0)
        await rt.durable()  # every event released (the journal holds them until then)
        grown = rss_bytes() - before
        assert peak_outbox <= 50
        assert stream.ended is not None and not stream.outbox
        assert rt.hub.stream_of("ann") is None
        assert len(rt.hub.feed("ann").buffer) == 100
        assert grown < 20 * 2**20, grown
        # The connection-lost path ran: ann is offline, so bob gets the next session.
        await until(lambda: not rt.engine.rep("ann").connected)
        session = await live.start(issue_type_id="general-help")
        offer = await bob.next("offer_made", session=session)
        await bob.rpc("AnswerOffer", cpb.AnswerOfferRequest(offer_id=offer.offer_id, accept=True))
        # When ann reads again, her stream ends with a status that says how to resume.
        raw.ack_data = True
        raw.open_window(sid)
        await asyncio.to_thread(raw.pump_until, lambda: raw.streams[sid].ended)
        state = raw.streams[sid]
        assert state.status == RESOURCE_EXHAUSTED
        assert "resume_after" in state.message
    finally:
        if raw is not None:
            raw.close()
        await live.close()


async def test_revoking_a_token_ends_its_stream_and_reroutes_the_offer():
    live = await live_server()
    try:
        issued = await live.admin.IssueAccessToken(
            apb.IssueAccessTokenRequest(kind=apb.PRINCIPAL_KIND_REP, rep_id="ann"),
            metadata=auth(ADMIN),
        )
        ann = await live.console("ann", token=issued.secret)
        session = await live.start(issue_type_id="general-help")
        offer = await ann.next("offer_made", session=session)
        bob = await live.console("bob")
        await live.admin.RevokeAccessToken(
            apb.RevokeAccessTokenRequest(token_id=issued.access_token.token_id),
            metadata=auth(ADMIN),
        )
        await asyncio.wait_for(ann.task, 10)
        assert ann.ended == grpc.StatusCode.UNAUTHENTICATED
        # Connection lost at once: the offer is withdrawn and goes to bob.
        moved = await bob.next("offer_made", session=session)
        assert moved.offer_id != offer.offer_id
        assert not live.server.runtime.engine.rep("ann").connected
        after = [e.WhichOneof("event") for e in ann.seen if e.sequence > 0]
        assert "offer_rescinded" not in after  # nothing reaches the revoked console
        try:
            await ann.rpc("ListMyQueues", cpb.ListMyQueuesRequest())
            raise AssertionError("a revoked token still works")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await live.close()


async def test_deleting_a_rep_ends_its_stream():
    live = await live_server()
    try:
        cat = await live.console("cat")
        await live.admin.DeleteRep(apb.DeleteRepRequest(rep_id="cat"), metadata=auth(ADMIN))
        await asyncio.wait_for(cat.task, 10)
        assert cat.ended == grpc.StatusCode.UNAUTHENTICATED
        assert live.server.runtime.engine.find_rep("cat") is None
    finally:
        await live.close()


async def test_a_rep_with_a_session_cannot_be_deleted_and_keeps_its_stream():
    live = await live_server()
    try:
        ann = await live.console("ann")
        session = await live.start(issue_type_id="general-help")
        offer = await ann.next("offer_made", session=session)
        await ann.rpc("AnswerOffer", cpb.AnswerOfferRequest(offer_id=offer.offer_id, accept=True))
        try:
            await live.admin.DeleteRep(apb.DeleteRepRequest(rep_id="ann"), metadata=auth(ADMIN))
            raise AssertionError("deleted a rep who owns a session")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert rpc_status.from_call(exc) is None or exc.details()
        assert ann.ended is None and live.server.runtime.engine.rep("ann").connected
    finally:
        await live.close()
