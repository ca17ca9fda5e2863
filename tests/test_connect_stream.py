"""The console stream (`Connect`): the feed and the console's actions on one stream.
Ordering, action ids, errors as the unary RPCs give them, auth, revocation, resume."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from google.rpc import code_pb2, error_details_pb2

from assigncore.v1 import admin_service_pb2 as apb
from assigncore.v1 import console_service_pb2 as cpb
from assigncore.v1 import console_service_pb2_grpc as cgrpc

from .server_harness import ADMIN, INTAKE, auth, live_server, rep_token, until


class Stream:
    """A console on Connect: write actions, read what comes back."""

    def __init__(self, live, rep: str, token: str | None = None, resume_after: int = 0):
        self.call = cgrpc.RepConsoleServiceStub(live.channel).Connect(
            metadata=auth(token or rep_token(rep))
        )
        self.resume_after = resume_after
        self.seen: list[cpb.ConnectResponse] = []

    async def open(self) -> cpb.Welcome:
        await self.call.write(
            cpb.ConnectRequest(subscribe=cpb.SubscribeRequest(resume_after=self.resume_after))
        )
        first = await self.read()
        assert first.WhichOneof("message") == "event"
        return first.event.welcome

    async def read(self) -> cpb.ConnectResponse:
        msg = await asyncio.wait_for(self.call.read(), 10)
        assert msg is not grpc.aio.EOF
        self.seen.append(msg)
        return msg

    async def act(self, action_id: str, **action) -> cpb.ActionResult:
        """Sends an action; returns its result (events read meanwhile are kept)."""
        await self.call.write(cpb.ConnectRequest(action_id=action_id, **action))
        while True:
            msg = await self.read()
            if msg.WhichOneof("message") == "result":
                return msg.result

    async def event(self, kind: str):
        while True:
            msg = await self.read()
            if msg.WhichOneof("message") == "event" and msg.event.WhichOneof("event") == kind:
                return getattr(msg.event, kind)


async def test_actions_run_in_order_and_each_result_follows_its_events():
    live = await live_server()
    try:
        ann = Stream(live, "ann")
        welcome = await ann.open()
        assert welcome.rep_id == "ann"
        s = await live.start(issue_type_id="general-help")
        offer = await ann.event("offer_made")
        mark = len(ann.seen)
        accepted = await ann.act(
            "a1", answer_offer=cpb.AnswerOfferRequest(offer_id=offer.offer_id, accept=True)
        )
        assert accepted.action_id == "a1" and accepted.status.code == code_pb2.OK
        assert accepted.answer_offer.session.owner_rep_id == "ann"
        # The accept's own events came first, numbered on from the feed.
        between = [m.event for m in ann.seen[mark:-1]]
        assert between and all(m.WhichOneof("message") == "event" for m in ann.seen[mark:-1])
        numbers = [e.sequence for e in between]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        # Pipelined actions: results come back in the order sent, each with its id.
        await ann.call.write(
            cpb.ConnectRequest(action_id="k", generate_session_key=cpb.GenerateSessionKeyRequest())
        )
        await ann.call.write(
            cpb.ConnectRequest(action_id="e", end_session=cpb.EndSessionRequest(session_id=s.id))
        )
        results = []
        while len(results) < 2:
            msg = await ann.read()
            if msg.WhichOneof("message") == "result":
                results.append(msg.result)
        assert [r.action_id for r in results] == ["k", "e"]
        assert results[0].generate_session_key.session_key
        assert results[1].status.code == code_pb2.OK and results[1].HasField("end_session")
        assert live.server.runtime.engine.session(s.id).state.value == "ENDED"
    finally:
        await live.close()


async def test_an_action_s_error_is_the_unary_error_and_the_stream_goes_on():
    live = await live_server()
    try:
        ann = Stream(live, "ann")
        await ann.open()
        missing = await ann.act("m", end_session=cpb.EndSessionRequest(session_id="ses_nope"))
        assert missing.status.code == code_pb2.NOT_FOUND and "ses_nope" in missing.status.message
        assert not missing.HasField("end_session")
        bad = await ann.act("b", end_session=cpb.EndSessionRequest(session_id="x" * 500))
        assert bad.status.code == code_pb2.INVALID_ARGUMENT
        violations = error_details_pb2.BadRequest()
        assert bad.status.details[0].Unpack(violations)
        assert [v.field for v in violations.field_violations] == ["session_id"]
        # The unary RPC says the same.
        stub = cgrpc.RepConsoleServiceStub(live.channel)
        try:
            await stub.EndSession(
                cpb.EndSessionRequest(session_id="ses_nope"), metadata=auth(rep_token("ann"))
            )
            raise AssertionError("the unary call succeeded")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            assert exc.details() == missing.status.message
        again = await ann.act("s", subscribe=cpb.SubscribeRequest())
        assert again.status.code == code_pb2.INVALID_ARGUMENT and again.action_id == "s"
        empty = await ann.act("n")
        assert empty.status.code == code_pb2.INVALID_ARGUMENT
        # Authorization is per action: another rep's offer is not hers to answer.
        bob = Stream(live, "bob")
        await bob.open()
        await live.start(issue_type_id="win")  # skills team: bob is the better match
        offer = await bob.event("offer_made")
        stolen = await ann.act(
            "x", answer_offer=cpb.AnswerOfferRequest(offer_id=offer.offer_id, accept=True)
        )
        assert stolen.status.code == code_pb2.PERMISSION_DENIED
        fine = await ann.act("ok", generate_session_key=cpb.GenerateSessionKeyRequest())
        assert fine.status.code == code_pb2.OK
    finally:
        await live.close()


async def test_connect_must_open_with_subscribe_and_a_token():
    live = await live_server()
    try:
        stub = cgrpc.RepConsoleServiceStub(live.channel)
        call = stub.Connect(metadata=auth(rep_token("ann")))
        await call.write(cpb.ConnectRequest(action_id="1", end_session=cpb.EndSessionRequest()))
        assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
        for token, code in (
            ("nope-0123456789abcdef", grpc.StatusCode.UNAUTHENTICATED),
            (INTAKE, grpc.StatusCode.PERMISSION_DENIED),
        ):
            call = stub.Connect(metadata=auth(token))
            await call.write(cpb.ConnectRequest(subscribe=cpb.SubscribeRequest()))
            assert await call.code() == code
    finally:
        await live.close()


async def test_revoking_the_token_ends_the_stream_and_a_console_resumes():
    live = await live_server(message_timeout=0.3)
    try:
        issued = await live.admin.IssueAccessToken(
            apb.IssueAccessTokenRequest(kind=apb.PRINCIPAL_KIND_REP, rep_id="ann"),
            metadata=auth(ADMIN),
        )
        ann = Stream(live, "ann", token=issued.secret)
        await ann.open()
        await asyncio.sleep(0.6)  # a quiet console is not timed out
        ok = await ann.act("1", generate_session_key=cpb.GenerateSessionKeyRequest())
        assert ok.status.code == code_pb2.OK
        s = await live.start(issue_type_id="general-help")
        await ann.event("offer_made")
        seen = ann.seen[-1].event.sequence
        await live.admin.RevokeAccessToken(
            apb.RevokeAccessTokenRequest(token_id=issued.access_token.token_id),
            metadata=auth(ADMIN),
        )
        assert await ann.call.code() == grpc.StatusCode.UNAUTHENTICATED
        # The same rep, another token: resumes after the last event it processed.
        again = Stream(live, "ann", resume_after=seen)
        welcome = await again.open()
        assert welcome.resumed
        rescinded = await again.event("offer_rescinded")  # what happened meanwhile
        assert rescinded.session_id == s.id
    finally:
        await live.close()


async def test_bytes_that_are_not_a_connect_request_end_the_stream_with_invalid_argument():
    live = await live_server()
    try:
        raw = live.channel.stream_stream("/assigncore.v1.RepConsoleService/Connect")
        call = raw(metadata=auth(rep_token("ann")))  # no serializers: bytes on the wire
        await call.write(cpb.ConnectRequest(subscribe=cpb.SubscribeRequest()).SerializeToString())
        welcome = cpb.ConnectResponse.FromString(await call.read())
        assert welcome.event.welcome.rep_id == "ann"
        await call.write(b"\xff\xff\xff\xff")
        with contextlib.suppress(grpc.aio.AioRpcError):  # events sent before the end
            while await call.read() is not grpc.aio.EOF:
                pass
        assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert await call.details() == "malformed request"
        # The stream's end is the connection-lost path, as for Subscribe.
        await until(lambda: not live.server.runtime.engine.rep("ann").connected)
    finally:
        await live.close()
