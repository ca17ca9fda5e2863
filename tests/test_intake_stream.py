"""The Intake stream over a real channel: results by request id and in order, the same
statuses and details as the unary calls, idempotency across streams and reconnects,
errors that leave the stream open and those that end it, authentication, revocation,
shutdown, a portal that vanishes or stops reading."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from google.rpc import code_pb2, status_pb2

from assigncore.v1 import admin_service_pb2 as apb
from assigncore.v1 import common_pb2 as pb
from assigncore.v1 import intake_service_pb2 as ipb
from assigncore_server.api.intake import INTAKE_READ_AHEAD

from .server_harness import ADMIN, INTAKE, auth, live_server, rep_token, until

CUSTOMER = pb.Customer(name="Carol", company="ACME")


def start(rid: str, **via: object) -> ipb.IntakeRequest:
    if not via:
        via = {"undesignated": ipb.Undesignated()}
    return ipb.IntakeRequest(
        start_session=ipb.StartSessionRequest(request_id=rid, customer=CUSTOMER, **via)
    )


def cancel(rid: str, session_id: str) -> ipb.IntakeRequest:
    return ipb.IntakeRequest(
        cancel_session=ipb.CancelSessionRequest(request_id=rid, session_id=session_id)
    )


def status_of(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The full status (code, message, details) a unary call ended with."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    return status_pb2.Status(code=error.code().value[0], message=error.details() or "")


async def results(call: grpc.aio.StreamStreamCall, n: int) -> list[ipb.IntakeResponse]:
    return [await asyncio.wait_for(call.read(), 10) for _ in range(n)]


async def test_results_come_in_order_by_request_id_as_the_unary_calls_give_them():
    live = await live_server()
    try:
        call = live.intake.Intake(metadata=auth(INTAKE))
        sent = [
            start("a1", issue_type_id="manual-help"),
            start("a2", issue_type_id="no-such-type"),  # NOT_FOUND
            start("a3", issue_type_id="manual-help"),
            start("", issue_type_id="manual-help"),  # no request id: INVALID_ARGUMENT
            ipb.IntakeRequest(),  # names no call: INVALID_ARGUMENT, the stream goes on
            start("a4", issue_type_id="Bad Id!", customer_address="nowhere"),
            start("a5", issue_type_id="manual-help"),
        ]
        for message in sent:  # all written before any result is read
            await call.write(message)
        got = await results(call, len(sent))
        assert [r.request_id for r in got] == ["a1", "a2", "a3", "", "", "a4", "a5"]
        ok = [r for r in got if r.status.code == code_pb2.OK]
        assert [r.request_id for r in ok] == ["a1", "a3", "a5"]
        # Applied in the order sent: positions 1, 2, 3 of the one queue.
        assert [r.start_session.position for r in ok] == [1, 2, 3]
        assert all(r.start_session.session.queue.owner_id == "manual" for r in ok)
        assert got[4].status.code == code_pb2.INVALID_ARGUMENT
        assert got[4].status.message == "no call given"
        # Each error is exactly the unary call's: code, message and details.
        for message, result in ((sent[1], got[1]), (sent[3], got[3]), (sent[5], got[5])):
            request = ipb.StartSessionRequest()
            request.CopyFrom(message.start_session)
            if request.request_id:
                request.request_id = "unary-" + request.request_id
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await live.intake.StartSession(request, metadata=auth(INTAKE))
            unary = status_of(err.value)
            assert result.status.code == unary.code != code_pb2.OK
            assert result.status.message == unary.message
            assert list(result.status.details) == list(unary.details)
        assert got[5].status.code == code_pb2.INVALID_ARGUMENT
        assert len(got[5].status.details) == 1  # BadRequest, each violation named
        # A cancel on the same stream; the session is the portal's own.
        await call.write(cancel("c1", ok[0].start_session.session.id))
        (cancelled,) = await results(call, 1)
        assert cancelled.request_id == "c1"
        assert cancelled.cancel_session.session.state == pb.SESSION_STATE_ENDED
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
        assert len(live.server.runtime.engine.sessions()) == 3
    finally:
        await live.close()


async def test_a_call_sent_again_on_another_stream_or_unary_gets_the_first_result():
    live = await live_server()
    try:
        first = live.intake.Intake(metadata=auth(INTAKE))
        await first.write(start("same", issue_type_id="manual-help"))
        (one,) = await results(first, 1)
        first.cancel()  # the portal's stream broke
        again = live.intake.Intake(metadata=auth(INTAKE))
        await again.write(start("same", issue_type_id="manual-help"))
        await again.write(start("same", issue_type_id="front-help"))  # another body
        two, changed = await results(again, 2)
        assert two.start_session.session.id == one.start_session.session.id
        assert changed.status.code == code_pb2.INVALID_ARGUMENT
        await again.done_writing()
        unary = await live.intake.StartSession(
            start("same", issue_type_id="manual-help").start_session, metadata=auth(INTAKE)
        )
        assert unary.session.id == one.start_session.session.id
        # A unary call's id is the stream's too, and the other way round.
        done = await live.intake.StartSession(
            start("u1", issue_type_id="manual-help").start_session, metadata=auth(INTAKE)
        )
        third = live.intake.Intake(metadata=auth(INTAKE))
        await third.write(start("u1", issue_type_id="manual-help"))
        (three,) = await results(third, 1)
        assert three.start_session.session.id == done.session.id
        await third.done_writing()
        assert len(live.server.runtime.engine.sessions()) == 2
    finally:
        await live.close()


async def test_a_portal_sees_and_cancels_only_its_own_sessions_on_the_stream():
    live = await live_server()
    try:
        issued = await live.admin.IssueAccessToken(
            apb.IssueAccessTokenRequest(kind=apb.PRINCIPAL_KIND_INTAKE), metadata=auth(ADMIN)
        )
        theirs = await live.start(token=issued.secret, issue_type_id="manual-help")
        call = live.intake.Intake(metadata=auth(INTAKE))
        await call.write(cancel("x", theirs.id))
        (result,) = await results(call, 1)
        assert result.status.code == code_pb2.NOT_FOUND
        await call.done_writing()
        assert live.server.runtime.engine.session(theirs.id).end_reason is None
    finally:
        await live.close()


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (None, grpc.StatusCode.UNAUTHENTICATED),
        ("not-a-token-0123456789", grpc.StatusCode.UNAUTHENTICATED),
        (rep_token("ann"), grpc.StatusCode.PERMISSION_DENIED),
    ],
)
async def test_the_stream_needs_an_intake_or_admin_token(token, code):
    live = await live_server()
    try:
        call = live.intake.Intake(metadata=auth(token) if token else None)
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await call.write(start("r1", issue_type_id="manual-help"))
        assert await call.code() == code
        assert live.server.runtime.engine.sessions() == []
        admin = live.intake.Intake(metadata=auth(ADMIN))  # an admin may start sessions
        await admin.write(start("r1", issue_type_id="manual-help"))
        (result,) = await results(admin, 1)
        assert result.status.code == code_pb2.OK
        await admin.done_writing()
    finally:
        await live.close()


async def test_revoking_the_token_ends_the_stream_and_applies_nothing_after():
    live = await live_server(message_timeout=0.2)
    try:
        issued = await live.admin.IssueAccessToken(
            apb.IssueAccessTokenRequest(kind=apb.PRINCIPAL_KIND_INTAKE), metadata=auth(ADMIN)
        )
        call = live.intake.Intake(metadata=auth(issued.secret))
        await call.write(start("r1", issue_type_id="manual-help"))
        (first,) = await results(call, 1)
        assert first.status.code == code_pb2.OK
        await asyncio.sleep(0.5)  # quiet past message_timeout: a portal's stream is not timed
        await live.admin.RevokeAccessToken(
            apb.RevokeAccessTokenRequest(token_id=issued.access_token.token_id),
            metadata=auth(ADMIN),
        )
        assert await call.code() == grpc.StatusCode.UNAUTHENTICATED
        assert await call.details() == "the access token was revoked"
        assert len(live.server.runtime.engine.sessions()) == 1
        assert live.server.runtime.hub.intakes == set()
        assert live.server.runtime.gate.in_flight() == 0
    finally:
        await live.close()


async def test_bytes_that_are_not_an_intake_request_end_the_stream():
    live = await live_server()
    try:
        raw = live.channel.stream_stream("/assigncore.v1.IntakeService/Intake")
        call = raw(metadata=auth(INTAKE))  # no serializers: bytes on the wire
        await call.write(start("m1", issue_type_id="manual-help").SerializeToString())
        result = ipb.IntakeResponse.FromString(await call.read())
        assert result.request_id == "m1" and result.status.code == code_pb2.OK
        await call.write(b"\xff\xff\xff\xff")
        assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert await call.details() == "malformed request"
        assert len(live.server.runtime.engine.sessions()) == 1
        assert live.server.runtime.gate.in_flight() == 0
    finally:
        await live.close()


async def test_a_portal_that_vanishes_mid_stream_loses_nothing_applied():
    live = await live_server()
    try:
        for round_ in range(5):
            call = live.intake.Intake(metadata=auth(INTAKE))
            for i in range(50):
                await call.write(start(f"v{round_}-{i}", issue_type_id="manual-help"))
            await results(call, round_ * 7)  # reads some, then goes away
            call.cancel()
        await until(lambda: live.server.runtime.gate.in_flight() == 0)
        assert live.server.runtime.hub.intakes == set()
        applied = {s.id for s in live.server.runtime.engine.sessions()}
        # Every call sent again is answered with what was applied, once.
        again = live.intake.Intake(metadata=auth(INTAKE))
        for round_ in range(5):
            for i in range(50):
                await again.write(start(f"v{round_}-{i}", issue_type_id="manual-help"))
        got = await results(again, 250)
        assert all(r.status.code == code_pb2.OK for r in got)
        assert applied <= {r.start_session.session.id for r in got}
        assert len(live.server.runtime.engine.sessions()) == 250
        await again.done_writing()
    finally:
        await live.close()


async def test_a_portal_that_stops_reading_is_held_back_then_served():
    live = await live_server()
    try:
        call = live.intake.Intake(metadata=auth(INTAKE))
        total = 3000
        big = pb.Customer(name="Carol", details="x" * 3000)  # the transport fills fast

        async def send() -> None:
            for i in range(total):
                request = start(f"b{i}", issue_type_id="manual-help")
                request.start_session.customer.CopyFrom(big)
                await call.write(request)
            await call.done_writing()

        sender = asyncio.create_task(send())
        engine = live.server.runtime.engine
        await until(lambda: len(engine.sessions()) > INTAKE_READ_AHEAD)
        await asyncio.sleep(0.5)
        (stream,) = live.server.runtime.hub.intakes
        assert len(stream.results) <= INTAKE_READ_AHEAD  # no more waits for the portal
        assert len(engine.sessions()) < total  # reading stopped: flow control holds it
        assert not sender.done()
        got = await results(call, total)  # reading again: everything comes, in order
        assert [r.request_id for r in got] == [f"b{i}" for i in range(total)]
        await sender
        assert await call.read() is grpc.aio.EOF
    finally:
        await live.close()


async def test_a_shutdown_sends_the_results_of_applied_calls_then_ends_unavailable():
    live = await live_server()
    try:
        call = live.intake.Intake(metadata=auth(INTAKE))
        for i in range(20):
            await call.write(start(f"s{i}", issue_type_id="manual-help"))
        got = await results(call, 20)
        assert all(r.status.code == code_pb2.OK for r in got)
        await live.server.stop(1.0)
        assert await call.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        with contextlib.suppress(Exception):
            await live.channel.close()


async def test_a_result_leaves_only_once_its_call_is_durable(monkeypatch):
    """Write-ahead on the stream: with the journal's writer held back, the calls are
    applied (later ones too: the stream reads ahead) but no result leaves; released,
    the results come in order. A call whose entry cannot be written is told
    UNAVAILABLE, never OK."""
    import threading

    from assigncore_server.storage.base import JournalError
    from assigncore_server.storage.journal import Journal

    live = await live_server()
    gate = threading.Event()
    write = Journal._write
    try:
        call = live.intake.Intake(metadata=auth(INTAKE))
        await call.write(start("w0", issue_type_id="manual-help"))
        await results(call, 1)

        def held(self, batch):
            gate.wait(30)
            return write(self, batch)

        monkeypatch.setattr(Journal, "_write", held)
        for i in range(1, 4):
            await call.write(start(f"w{i}", issue_type_id="manual-help"))
        engine = live.server.runtime.engine
        await until(lambda: len(engine.sessions()) == 4)  # applied, not yet durable
        first = asyncio.ensure_future(call.read())
        await asyncio.sleep(0.5)
        assert not first.done()  # nothing leaves before it is durable
        gate.set()
        got = [await asyncio.wait_for(first, 10), *await results(call, 2)]
        assert [r.request_id for r in got] == ["w1", "w2", "w3"]
        assert all(r.status.code == code_pb2.OK for r in got)

        def broken(self, batch):
            error = JournalError("the journal cannot be written: disk I/O error")
            for _, future in batch:
                future.set_exception(error)

        monkeypatch.setattr(Journal, "_write", broken)
        await call.write(start("w4", issue_type_id="manual-help"))
        (failed,) = await results(call, 1)  # told, before the stream ends
        assert failed.request_id == "w4"
        assert failed.status.code == code_pb2.UNAVAILABLE
        assert await call.code() == grpc.StatusCode.UNAVAILABLE  # the desk is rebuilt
    finally:
        gate.set()
        monkeypatch.setattr(Journal, "_write", write)
        await live.close()


async def test_a_reader_that_fails_ends_the_stream_with_internal(monkeypatch):
    """A bug in reading the portal's calls ends the stream with INTERNAL (after the
    results of what was applied), never leaves it hanging with its budget held."""
    from assigncore_server.api.intake import IntakeServicer

    live = await live_server()
    try:
        call = live.intake.Intake(metadata=auth(INTAKE))
        await call.write(start("f0", issue_type_id="manual-help"))
        (first,) = await results(call, 1)
        assert first.status.code == code_pb2.OK

        async def broken(self, request):
            raise RuntimeError("a bug")

        monkeypatch.setattr(IntakeServicer, "_intake_call", broken)
        await call.write(start("f1", issue_type_id="manual-help"))
        assert await asyncio.wait_for(call.code(), 10) == grpc.StatusCode.INTERNAL
        await until(lambda: live.server.runtime.gate.in_flight() == 0)
        assert len(live.server.runtime.engine.sessions()) == 1
    finally:
        await live.close()
