"""Abusive transport over hand-built HTTP/2 frames: streams without a token, half-sent
messages, bytes that are not a protobuf, reflection v1. The server runs on the test's
loop, so the raw clients run in threads."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as refl

from assigncore.v1 import console_service_pb2 as cpb
from assigncore.v1 import intake_service_pb2 as ipb

from .h2client import RawConnection, grpc_frame
from .server_harness import INTAKE, auth, live_server

START = "/assigncore.v1.IntakeService/StartSession"
CHECK = "/grpc.health.v1.Health/Check"
HALF_A_MESSAGE = grpc_frame(b"\x0a\x05order", claimed=4096)  # claims 4 KiB, sends 7 bytes

UNAUTHENTICATED, DEADLINE_EXCEEDED, INVALID_ARGUMENT, RESOURCE_EXHAUSTED = 16, 4, 3, 8


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


async def health_ok(live) -> bool:
    response = await health_pb2_grpc.HealthStub(live.channel).Check(
        health_pb2.HealthCheckRequest(), timeout=10
    )
    return response.status == health_pb2.HealthCheckResponse.SERVING


async def lifecycle(live) -> None:
    """Start -> offer on the console -> accept -> end, all authenticated."""
    ann = await live.console("ann")
    session = await live.start(issue_type_id="general-help")
    offer = await ann.next("offer_made", session=session)
    answer = await ann.rpc(
        "AnswerOffer", cpb.AnswerOfferRequest(offer_id=offer.offer_id, accept=True)
    )
    assert answer.session.owner_rep_id == "ann"
    await ann.rpc("EndSession", cpb.EndSessionRequest(session_id=session.id))


def open_half_sent(port: int, connections: int, streams: int, token: str | None) -> list:
    conns = []
    for _ in range(connections):
        c = RawConnection(port)
        c.wait_for_settings()
        for _ in range(streams):
            c.open(START, token=token, body=HALF_A_MESSAGE)
        conns.append(c)
    return conns


def wait_all_ended(conns: list, seconds: float = 30.0) -> None:
    for c in conns:
        c.pump_until(lambda c=c: all(s.ended for s in c.streams.values()), seconds)


async def test_thousands_of_tokenless_half_sent_streams_hold_no_capacity():
    # 150 streams per connection: not h2's default of 100, so the check below reads the
    # server's SETTINGS.
    live = await live_server(max_concurrent_rpcs=100, max_streams_per_connection=150)
    conns: list = []
    try:
        before = rss_bytes()
        conns = await asyncio.to_thread(open_half_sent, live.port, 20, 150, None)
        assert conns[0].max_concurrent_streams() == 150  # streams per connection limited
        await asyncio.to_thread(wait_all_ended, conns)
        statuses = [s.status for c in conns for s in c.streams.values()]
        assert len(statuses) == 3000
        assert set(statuses) == {UNAUTHENTICATED}  # refused from the headers
        gate = live.server.runtime.gate
        assert gate.in_flight() == 0
        # The attackers are still connected; everyone else is served at once.
        assert await health_ok(live)
        await lifecycle(live)
        assert rss_bytes() - before < 64 * 2**20
    finally:
        for c in conns:
            c.close()
        await live.close()


async def test_a_half_sent_message_is_ended_and_health_is_never_starved():
    live = await live_server(max_concurrent_rpcs=40, message_timeout=1.0)
    conns: list = []
    try:
        conns = await asyncio.to_thread(open_half_sent, live.port, 2, 60, INTAKE)
        gate = live.server.runtime.gate
        # Give the server the headers; 40 calls are admitted and wait for their message.
        await asyncio.to_thread(
            conns[1].pump_until,
            lambda: (
                sum(s.status == RESOURCE_EXHAUSTED for c in conns for s in c.streams.values()) >= 80
                or gate.authenticated >= 40
            ),
        )
        assert gate.authenticated <= 40
        assert await health_ok(live)  # a health Check is never refused
        await asyncio.to_thread(wait_all_ended, conns)
        statuses = [s.status for c in conns for s in c.streams.values()]
        assert statuses.count(DEADLINE_EXCEEDED) == 40, statuses
        assert statuses.count(RESOURCE_EXHAUSTED) == 80
        assert gate.in_flight() == 0
        await lifecycle(live)
    finally:
        for c in conns:
            c.close()
        await live.close()


async def test_bytes_that_are_not_a_protobuf_get_invalid_argument_after_auth(caplog):
    live = await live_server()
    try:
        raw = live.channel.unary_unary(START)  # no serializers: bytes on the wire
        with caplog.at_level(logging.DEBUG):
            for token, expected in (
                (None, grpc.StatusCode.UNAUTHENTICATED),
                (INTAKE, grpc.StatusCode.INVALID_ARGUMENT),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await raw(b"\xff\xff\xff\xff", metadata=auth(token) if token else None)
                assert err.value.code() == expected
                if token:
                    assert err.value.details() == "malformed request"
        assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
        # Nothing was created, and the server still serves.
        assert live.server.runtime.engine.sessions() == []
        assert await health_ok(live)
    finally:
        await live.close()


async def test_reflection_is_served_as_v1_and_v1alpha():
    live = await live_server()
    try:
        for version in ("v1", "v1alpha"):
            call = live.channel.stream_stream(
                f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                request_serializer=refl.ServerReflectionRequest.SerializeToString,
                response_deserializer=refl.ServerReflectionResponse.FromString,
            )
            requests = [
                refl.ServerReflectionRequest(list_services=""),
                refl.ServerReflectionRequest(
                    file_containing_symbol="grpc.reflection.v1.ServerReflection"
                ),
            ]
            replies = [r async for r in call(iter(requests))]
            names = {s.name for s in replies[0].list_services_response.service}
            assert {
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
                "assigncore.v1.IntakeService",
            } <= names
            assert replies[1].HasField("file_descriptor_response"), version
    finally:
        await live.close()


async def test_a_deserialized_request_still_works_through_the_guard():
    """The guard decodes the message itself: a well-formed one reaches the handler."""
    live = await live_server()
    try:
        response = await live.intake.StartSession(
            ipb.StartSessionRequest(
                request_id="ok-1", customer={"name": "Carol"}, undesignated=ipb.Undesignated()
            ),
            metadata=auth(INTAKE),
        )
        assert response.session.id
    finally:
        await live.close()


async def test_the_registered_hot_methods_check_their_calls_as_the_guard_does():
    """The hot unary methods are registered with grpc (their own accept slots), and
    their handlers check each call themselves: no token, a wrong kind of token, or a
    half-read body get the same statuses as on the generic path."""
    from assigncore_server.api.auth import HOT

    from .server_harness import rep_token

    live = await live_server()
    try:
        for method in sorted(HOT - {CHECK}):
            raw = live.channel.unary_unary(method)  # bytes on the wire
            for token, code in (
                (None, grpc.StatusCode.UNAUTHENTICATED),
                ("not-a-token-0123456789", grpc.StatusCode.UNAUTHENTICATED),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await raw(b"", metadata=auth(token) if token else None)
                assert err.value.code() == code, method
            wrong = INTAKE if "RepConsoleService" in method else rep_token("ann")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await raw(b"", metadata=auth(wrong))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
            right = rep_token("ann") if "RepConsoleService" in method else INTAKE
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await raw(b"\xff\xff\xff\xff", metadata=auth(right))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert err.value.details() == "malformed request"
        assert live.server.runtime.gate.in_flight() == 0
        assert await health_ok(live)
    finally:
        await live.close()
