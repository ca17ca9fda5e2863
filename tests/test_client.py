"""The Python client (assigncore.client) against a real server over loopback: every event
exactly once and in order across dropped connections, a kill -9 and a token rotation;
pipelined actions matched by id; the unary RPC's errors, typed; a portal's retry after a
lost reply."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

import pytest

from assigncore.client import (
    Admin,
    AssignCoreError,
    Backoff,
    Connection,
    Console,
    InvalidArgument,
    NotFound,
    OfferMade,
    OfferRescinded,
    PermissionDenied,
    Portal,
    QueueItemAdded,
    QueueItemRemoved,
    ResyncRequired,
    SessionChanged,
    Unauthenticated,
    errors,
)
from assigncore.v1 import common_pb2 as pb
from assigncore.v1 import console_service_pb2 as cpb
from assigncore.v1 import console_service_pb2_grpc as cgrpc

from .crashloop import Server
from .server_harness import ADMIN, DESK, INTAKE, free_port, live_server, rep_token, until
from .tcp_proxy import Proxy

FAST = Backoff(initial=0.02, maximum=0.2)
CAROL = pb.Customer(name="Carol", company="ACME")
MANUAL = pb.QueueRef(kind=pb.QUEUE_KIND_TEAM, owner_id="manual")


class Feed:
    """Everything a console yields, collected by a task."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.events: list = []
        self.error: BaseException | None = None
        self.task = asyncio.get_running_loop().create_task(self._collect())

    async def _collect(self) -> None:
        try:
            async for event in self.console:
                self.events.append(event)
        except AssignCoreError as exc:
            self.error = exc

    def added(self) -> list[str]:
        return [e.item.session.id for e in self.events if isinstance(e, QueueItemAdded)]

    def removed(self) -> list[str]:
        return [e.item_id for e in self.events if isinstance(e, QueueItemRemoved)]

    def assert_exactly_once_in_order(self) -> None:
        sequences = [e.sequence for e in self.events]
        assert not [e for e in self.events if isinstance(e, ResyncRequired)]
        assert sequences == list(range(sequences[0], sequences[0] + len(sequences))), sequences


async def start_many(portal: Portal, n: int, issue_type: str = "manual-help") -> list[str]:
    return [(await portal.start(CAROL, issue_type=issue_type)).session.id for _ in range(n)]


async def open_console(address: str, rep: str, token: str | None = None) -> Console:
    conn = Connection(address, token=token or rep_token(rep))
    return await Console(conn, backoff=Backoff(initial=0.02, maximum=0.2)).start()


async def server_items(address: str, rep: str, queue: pb.QueueRef) -> set[str]:
    async with Connection(address, token=rep_token(rep)) as conn:
        reply = await conn.call(
            cgrpc.RepConsoleServiceStub,
            "ListQueueItems",
            cpb.ListQueueItemsRequest(queue=queue, page_size=500),
        )
    return {item.session.id for item in reply.items}


async def test_a_console_gets_every_event_once_in_order_across_dropped_connections() -> None:
    live = await live_server()
    proxy = await Proxy(live.port).start()
    direct = f"127.0.0.1:{live.port}"
    portal = Portal(Connection(direct, token=INTAKE))
    console = await open_console(proxy.address, "bob")
    feed = Feed(console)
    try:
        started, cancelled = [], []
        for i in range(60):
            reply = await portal.start(pb.Customer(name=f"c{i}"), issue_type="manual-help")
            started.append(reply.session.id)
            if i % 5 == 4:
                await portal.cancel(started[i - 2])
                cancelled.append(started[i - 2])
            if i % 7 == 3:
                await until(lambda: console.connected and console.reconnects == proxy.cuts)
                proxy.cut()  # the network drops: the console reconnects and resumes
        await until(lambda: len(feed.added()) >= 60 and len(feed.removed()) >= len(cancelled))
        await until(lambda: console.connected and console.reconnects == proxy.cuts)
        feed.assert_exactly_once_in_order()
        assert feed.added() == started
        assert feed.removed() == cancelled
        assert console.reconnects == proxy.cuts == 9
        # Its view of the queue is the server's.
        view = console.queues[(pb.QUEUE_KIND_TEAM, "manual")]
        assert set(view.items) == await server_items(direct, "bob", MANUAL)
        assert feed.error is None
    finally:
        await console.close()
        await portal.connection.close()
        await proxy.close()
        await live.close()


async def test_a_console_resumes_across_a_server_killed_and_restarted(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "desk.toml"
    config.write_text(DESK.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"'))
    server = Server(config)
    server.start()
    address = f"127.0.0.1:{port}"
    portal = Portal(Connection(address, token=INTAKE))
    console = await open_console(address, "bob")
    feed = Feed(console)
    try:
        started = [
            (await portal.start(CAROL, issue_type="manual-help")).session.id for _ in range(10)
        ]
        await until(lambda: len(feed.added()) == 10)
        server.kill()  # kill -9: what was acknowledged is on disk
        server.start()
        started += await start_many(portal, 10)
        # A last session marks the end: an event delivered twice would come before it.
        started += await start_many(portal, 1)
        await until(lambda: len(feed.added()) >= 21, 30)
        assert feed.added() == started
        feed.assert_exactly_once_in_order()
        assert set(console.queues[(pb.QUEUE_KIND_TEAM, "manual")].items) == set(started)
        assert console.reconnects >= 1 and feed.error is None
    finally:
        await console.close()
        await portal.connection.close()
        server.stop()


async def test_a_rotated_token_switches_the_stream_without_losing_an_event() -> None:
    live = await live_server()
    address = f"127.0.0.1:{live.port}"
    admin = Admin(Connection(address, token=ADMIN))
    portal = Portal(Connection(address, token=INTAKE))
    console = await open_console(address, "bob")
    feed = Feed(console)
    try:
        old = [t async for t in admin.tokens() if t.rep_id == "bob"][0]
        first = [(await portal.start(CAROL, issue_type="manual-help")).session.id for _ in range(5)]
        rotated = await admin.rotate_token(old.token_id, overlap=3600)
        switching = asyncio.ensure_future(console.use_token(rotated.secret))
        more = [(await portal.start(CAROL, issue_type="manual-help")).session.id for _ in range(5)]
        await switching
        # The old token is gone: a console still on it would end UNAUTHENTICATED.
        await admin.revoke_token(old.token_id)
        more += [(await portal.start(CAROL, issue_type="manual-help")).session.id for _ in range(5)]
        await until(lambda: len(feed.added()) >= 15)
        assert feed.added() == first + more
        feed.assert_exactly_once_in_order()
        assert console.connected and feed.error is None
        assert (await console.get_next()) is not None  # actions carry the new token

        # A console whose own token is revoked, with no new one, ends with the error.
        await admin.revoke_token(rotated.access_token.token_id)
        await until(lambda: feed.task.done())
        assert isinstance(feed.error, Unauthenticated)
        with pytest.raises(Unauthenticated):
            await console.end("anything")
    finally:
        await console.close()
        for conn in (admin.connection, portal.connection):
            await conn.close()
        await live.close()


async def test_pipelined_actions_match_their_results_while_events_arrive() -> None:
    live = await live_server()
    address = f"127.0.0.1:{live.port}"
    portal = Portal(Connection(address, token=INTAKE))
    console = await open_console(address, "bob")
    feed = Feed(console)
    try:
        ids = [(await portal.start(CAROL, issue_type="manual-help")).session.id for _ in range(30)]

        async def accept(session_id: str) -> str:
            return (await console.accept(session_id)).id

        async def unknown(n: int) -> str:
            with pytest.raises(NotFound) as caught:
                await console.accept(f"ses_missing{n}")
            return caught.value.message

        async def more_arrivals() -> list[str]:
            return await start_many(portal, 10)

        tasks = [accept(i) for i in ids] + [unknown(n) for n in range(10)] + [more_arrivals()]
        results = await asyncio.gather(*tasks)
        assert results[:30] == ids  # each accept got its own session back
        assert all("ses_missing" in m for m in results[30:40])
        arrived = results[40]
        assert set(console.sessions) == set(ids)
        await until(lambda: set(feed.removed()) >= set(ids) and set(feed.added()) >= set(arrived))
        for session_id in ids[:10]:
            await console.end(session_id)
        assert set(console.sessions) == set(ids[10:])
        feed.assert_exactly_once_in_order()
    finally:
        await console.close()
        await portal.connection.close()
        await live.close()


async def test_an_action_raises_the_unary_rpcs_error_typed_with_its_details() -> None:
    live = await live_server()
    address = f"127.0.0.1:{live.port}"
    ann = await open_console(address, "ann")
    cat = await open_console(address, "cat")
    portal = Portal(Connection(address, token=INTAKE))
    try:
        waiting = (await portal.start(CAROL, issue_type="manual-help")).session.id
        cases = [
            (ann, "accept_session", cpb.AcceptSessionRequest(session_id="ses_nope"), NotFound),
            (ann, "accept_session", cpb.AcceptSessionRequest(session_id=""), InvalidArgument),
            (
                ann,
                "transfer_session",
                cpb.TransferSessionRequest(session_id=waiting, target=pb.Target()),
                InvalidArgument,
            ),
            (cat, "get_next_session", cpb.GetNextSessionRequest(), PermissionDenied),
            (ann, "answer_offer", cpb.AnswerOfferRequest(offer_id="off_nope"), NotFound),
            (ann, "end_session", cpb.EndSessionRequest(session_id=waiting), AssignCoreError),
        ]
        for console, name, request, kind in cases:
            with pytest.raises(kind) as on_stream:
                await console.act(name, request)
            method = "".join(part.title() for part in name.split("_"))
            with pytest.raises(AssignCoreError) as unary:
                await console.connection.call(cgrpc.RepConsoleServiceStub, method, request)
            a, b = on_stream.value, unary.value
            assert (type(a), a.code, a.message) == (type(b), b.code, b.message), name
            assert a.details == b.details, name
        # BadRequest violations are decoded into (field, description) pairs.
        with pytest.raises(InvalidArgument) as bad:
            await ann.transfer(waiting, team_id="")
        assert bad.value.violations and bad.value.violations[0][0].startswith("target")
    finally:
        for console in (ann, cat):
            await console.close()
        await portal.connection.close()
        await live.close()


async def test_a_portal_retrying_after_a_lost_reply_gets_the_same_session() -> None:
    live = await live_server()
    proxy = await Proxy(live.port).start()
    portal = Portal(Connection(proxy.address, token=INTAKE))
    engine = live.server.runtime.engine
    try:
        await portal.start(CAROL, issue_type="manual-help")  # the connection is up
        before = len(engine.state.sessions)
        proxy.swallow = True  # the server's reply never arrives ...
        starting = asyncio.ensure_future(portal.start(CAROL, issue_type="manual-help"))
        await until(lambda: len(engine.state.sessions) == before + 1)
        proxy.cut()  # ... and the connection drops: the portal retries the same request
        proxy.swallow = False
        reply = await starting
        assert len(engine.state.sessions) == before + 1
        created = max(engine.state.sessions.values(), key=lambda s: s.seq)
        assert reply.session.id == created.id
    finally:
        await portal.connection.close()
        await proxy.close()
        await live.close()


async def test_a_console_that_cannot_connect_says_why() -> None:
    live = await live_server()
    address = f"127.0.0.1:{live.port}"
    try:
        with pytest.raises(Unauthenticated):
            await open_console(address, "bob", token="not-a-token-at-all-0123456789")
        with pytest.raises(errors.PermissionDenied):
            await open_console(address, "bob", token=INTAKE)
    finally:
        await live.close()


async def test_an_offer_and_its_rescinding_arrive_typed() -> None:
    live = await live_server()
    address = f"127.0.0.1:{live.port}"
    portal = Portal(Connection(address, token=INTAKE))
    console = await open_console(address, "ann")
    feed = Feed(console)
    try:
        started = (await portal.start(CAROL, issue_type="general-help")).session.id
        await until(lambda: any(isinstance(e, OfferMade) for e in feed.events))
        offer = next(e for e in feed.events if isinstance(e, OfferMade))
        assert offer.session.id == started and offer.offer_id in console.offers
        await portal.cancel(started)
        await until(lambda: any(isinstance(e, OfferRescinded) for e in feed.events))
        rescinded = next(e for e in feed.events if isinstance(e, OfferRescinded))
        assert (rescinded.offer_id, rescinded.reason) == (offer.offer_id, "CANCELLED")
        assert not console.offers
    finally:
        with contextlib.suppress(Exception):
            await console.close()
        await portal.connection.close()
        await live.close()


async def test_a_session_ended_by_its_customer_leaves_the_console_s_sessions() -> None:
    live = await live_server()
    address = f"127.0.0.1:{live.port}"
    portal = Portal(Connection(address, token=INTAKE))
    console = await open_console(address, "bob")
    feed = Feed(console)
    try:
        (session_id,) = await start_many(portal, 1)
        await console.accept(session_id)
        assert set(console.sessions) == {session_id}
        await portal.cancel(session_id)  # the customer leaves mid-session
        await until(lambda: not console.sessions)
        changed = [e for e in feed.events if isinstance(e, SessionChanged)]
        assert changed[-1].session.id == session_id
        assert changed[-1].session.state == pb.SESSION_STATE_ENDED
    finally:
        await console.close()
        await portal.connection.close()
        await live.close()


async def test_a_token_switched_while_disconnected_is_used_by_the_next_stream() -> None:
    live = await live_server()
    proxy = await Proxy(live.port).start()
    admin = Admin(Connection(f"127.0.0.1:{live.port}", token=ADMIN))
    portal = Portal(Connection(f"127.0.0.1:{live.port}", token=INTAKE))
    console = await open_console(proxy.address, "bob")
    feed = Feed(console)
    try:
        old = [t async for t in admin.tokens() if t.rep_id == "bob"][0]
        rotated = await admin.rotate_token(old.token_id, overlap=3600)
        proxy.cut()
        await until(lambda: not console.connected)
        await console.use_token(rotated.secret)  # returns once connected again
        assert console.connected
        await admin.revoke_token(old.token_id)
        started = await start_many(portal, 3)
        await until(lambda: feed.added() == started)
        assert (await console.accept(started[0])).owner_rep_id == "bob"
        feed.assert_exactly_once_in_order()
    finally:
        await console.close()
        for conn in (admin.connection, portal.connection):
            await conn.close()
        await proxy.close()
        await live.close()


async def test_a_console_resumes_across_a_graceful_restart_and_an_action_waits_for_it() -> None:
    """The server drains (server_draining, then the stream ends) and comes back on the
    same desk file and port: the console resumes with no gap, and an action made while
    no server was there is sent once it is connected again."""
    first = await live_server()
    port, path = first.port, first.server.runtime.settings.storage_path
    address = f"127.0.0.1:{port}"
    portal = Portal(Connection(address, token=INTAKE))
    console = await open_console(address, "bob")
    feed = Feed(console)
    second = None
    try:
        before = await start_many(portal, 3)
        await until(lambda: feed.added() == before)
        await first.server.stop(0.5)  # graceful: drains the streams
        await until(lambda: not console.connected)
        waiting = asyncio.ensure_future(console.accept(before[0]))  # nobody to send it to
        tries = console.reconnects
        await until(lambda: console.reconnects >= tries + 2)  # it tried, and tried again
        assert not waiting.done()
        second = await live_server(storage_path=path, listen=address)
        session = await asyncio.wait_for(waiting, 20)
        assert session.owner_rep_id == "bob" and set(console.sessions) == {before[0]}
        after = await start_many(portal, 2)
        await until(lambda: feed.added() == before + after)
        feed.assert_exactly_once_in_order()
        assert feed.error is None and console.reconnects >= 1
    finally:
        await console.close()
        await portal.connection.close()
        await first.channel.close()
        if second is not None:
            await second.close()
        if first.scratch is not None:
            shutil.rmtree(first.scratch, ignore_errors=True)


def test_the_client_config_table_and_its_fallbacks(tmp_path) -> None:
    from assigncore.client import load_client_config
    from assigncore_server import config

    server_toml = tmp_path / "server.toml"
    server_toml.write_text('[server]\nlisten = "0.0.0.0:50077"\n')
    assert load_client_config(server_toml) == {"server": "127.0.0.1:50077"}
    (tmp_path / "tok").write_text("  secret-from-file-0123456789\n")
    both = tmp_path / "both.toml"
    both.write_text(
        '[server]\nlisten = "0.0.0.0:50077"\n'
        '[client]\nserver = "desk:50051"\ntoken_file = "tok"\ntls_ca = "ca.pem"\n'
    )
    settings = load_client_config(both)
    assert settings["server"] == "desk:50051" and settings["token"] == "secret-from-file-0123456789"
    assert settings["tls_ca"] == str(tmp_path / "ca.pem")
    assert config.parse(both.read_text(), "both").listen == "0.0.0.0:50077"  # server: ignored
    bad = tmp_path / "bad.toml"
    bad.write_text('[client]\nserver = "x:1"\npassword = "no"\n')
    with pytest.raises(ValueError, match="unknown"):
        load_client_config(bad)
    with pytest.raises(ValueError, match="at least one"):
        Connection([])


async def test_a_portal_stream_sends_again_what_a_dropped_connection_left_unanswered() -> None:
    """Portal.stream(): many starts in flight on one Intake stream; the network drops
    while results are swallowed, the stream is opened again and every call without a
    result is sent again: each customer gets one session, and its own."""
    live = await live_server()
    proxy = await Proxy(live.port).start()
    portal = Portal(Connection(proxy.address, token=INTAKE))
    engine = live.server.runtime.engine
    try:
        async with portal.stream() as stream:
            first = await stream.start(CAROL, issue_type="manual-help")  # the stream is up
            proxy.swallow = True  # results never arrive ...
            starts = [
                asyncio.ensure_future(
                    stream.start(pb.Customer(name=f"c{i}"), issue_type="manual-help")
                )
                for i in range(30)
            ]
            await until(lambda: len(engine.state.sessions) == 31)
            proxy.cut()  # ... and the connection drops
            proxy.swallow = False
            replies = await asyncio.wait_for(asyncio.gather(*starts), 20)
            assert len(engine.state.sessions) == 31  # nothing started twice
            assert [r.session.customer.name for r in replies] == [f"c{i}" for i in range(30)]
            assert len({r.session.id for r in replies} | {first.session.id}) == 31
            # A call's own error is typed, and the stream goes on.
            with pytest.raises(NotFound):
                await stream.start(CAROL, issue_type="no-such-type")
            cancelled = await stream.cancel(first.session.id)
            assert cancelled.state == pb.SESSION_STATE_ENDED
    finally:
        await portal.connection.close()
        await proxy.close()
        await live.close()


async def test_a_portal_stream_refused_for_good_tells_every_caller() -> None:
    live = await live_server()
    portal = Portal(Connection(f"127.0.0.1:{live.port}", token="not-a-token-0123456789"))
    try:
        async with portal.stream() as stream:
            with pytest.raises(Unauthenticated):
                await asyncio.wait_for(stream.start(CAROL, issue_type="manual-help"), 10)
            with pytest.raises(Unauthenticated):  # and every later call
                await stream.start(CAROL, issue_type="manual-help")
        assert live.server.runtime.engine.sessions() == []
    finally:
        await portal.connection.close()
        await live.close()
