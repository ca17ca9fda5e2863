"""Defects a misbehaving client found, each kept caught: a console dropping its stream
(the peer read after the call ended), out-of-range well-known types applied and then
answered UNKNOWN, a new skill name past the skill matrix's first allocation, health
Watch, and request ids."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from assigncore.engine import Engine
from assigncore.v1 import admin_service_pb2 as apb
from assigncore.v1 import common_pb2 as pb
from assigncore.v1 import console_service_pb2 as cpb
from assigncore.v1 import console_service_pb2_grpc as cgrpc

from .conftest import T0, Desk, ManualClock
from .server_harness import ADMIN, auth, live_server, rep_token


def violations(exc: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(exc)
    from google.rpc import error_details_pb2

    out = []
    for detail in status.details if status else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out += [v.field for v in bad.field_violations]
    return out


async def audit_count(live) -> int:
    trail = await live.admin.ListAuditEntries(
        apb.ListAuditEntriesRequest(page_size=500), metadata=auth(ADMIN)
    )
    return len(trail.entries)


# ------------------------------------------------------------- skill columns


def test_skill_names_past_the_first_allocation_engine(desk: Desk) -> None:
    desk.team("t")
    names = [f"skill{i}" for i in range(40)]  # the matrix starts 8 wide: grows twice
    for i, name in enumerate(names):
        desk.rep(f"r{i}", ["t"], skills={name: 3, "common": 1})
    table = desk.engine.reps_table
    for i, name in enumerate(names):
        rep = desk.engine.rep(f"r{i}")
        assert table.skills[rep.ordinal][desk.engine.state.skills[name]] == 3
        assert table.skills[rep.ordinal][desk.engine.state.skills["common"]] == 1
    desk.engine.update_rep("r0", skills={f"new{i}": 2 for i in range(20)})
    row = table.skills[desk.engine.rep("r0").ordinal]
    assert sorted(int(x) for x in row[: table.n_skills] if x) == [2] * 20


def test_skill_names_past_the_first_allocation_replay() -> None:
    clock = ManualClock()
    engine = Engine(clock, secret=b"k" * 32)
    records = []
    engine.on_command = records.append
    engine.create_team("t", "T")
    for i in range(20):
        engine.create_rep(f"r{i}", f"R {i}", teams=["t"], skills={f"s{i}": 4})
        clock.tick(1)
    replay = Engine(ManualClock(), secret=b"k" * 32, start=T0)
    for record in records:
        replay.apply(record)
    assert [r.skills for r in replay.reps()] == [r.skills for r in engine.reps()]
    a, b = engine.reps_table, replay.reps_table
    assert (a.skills[: a.n, : a.n_skills] == b.skills[: b.n, : b.n_skills]).all()


async def test_ninth_skill_over_the_api_and_a_restart(tmp_path) -> None:
    path = str(tmp_path / "desk.sqlite3")
    live = await live_server(storage_path=path)
    try:
        for i in range(12):
            await live.admin.CreateRep(
                apb.CreateRepRequest(
                    rep=apb.Rep(id=f"sk{i}", display_name=f"Sk {i}", skills={f"skill-{i}": 5})
                ),
                metadata=auth(ADMIN),
            )
        got = await live.admin.GetRep(apb.GetRepRequest(rep_id="sk11"), metadata=auth(ADMIN))
        assert dict(got.rep.skills) == {"skill-11": 5}
    finally:
        await live.close(snapshot=False)  # the restart replays the journal
    again = await live_server(storage_path=path)
    try:
        got = await again.admin.GetRep(apb.GetRepRequest(rep_id="sk11"), metadata=auth(ADMIN))
        assert dict(got.rep.skills) == {"skill-11": 5}
    finally:
        await again.close()


# ------------------------------------------------------------- durations


BAD_DURATIONS = [
    ({"seconds": 1, "nanos": 2_000_000_000}, "nanos"),
    ({"seconds": 2**63 - 1}, "seconds"),
    ({"seconds": 10**12}, "seconds"),
    ({"seconds": 5, "nanos": -3}, "nanos"),
]


@pytest.mark.parametrize("value,part", BAD_DURATIONS)
async def test_out_of_range_durations_are_refused_before_anything_applies(value, part) -> None:
    live = await live_server()
    try:
        before = await audit_count(live)
        calls = [
            (
                "CreateTeam",
                apb.CreateTeamRequest(
                    team=apb.Team(
                        id="t-new",
                        display_name="New",
                        queue_settings=apb.QueueSettings(wrap_up=pb_duration(value)),
                    )
                ),
                "team.queue_settings.wrap_up." + part,
            ),
            (
                "IssueAccessToken",
                apb.IssueAccessTokenRequest(kind=apb.PRINCIPAL_KIND_ADMIN, ttl=pb_duration(value)),
                "ttl." + part,
            ),
            (
                "UpdateRep",
                apb.UpdateRepRequest(
                    rep=apb.Rep(
                        id="ann", permissions=pb.PermissionProfile(idle_timeout=pb_duration(value))
                    ),
                    update_mask={"paths": ["permissions.idle_timeout"]},
                ),
                "rep.permissions.idle_timeout." + part,
            ),
        ]
        tokens = await live.admin.ListAccessTokens(
            apb.ListAccessTokensRequest(), metadata=auth(ADMIN)
        )
        calls.append(
            (
                "RotateAccessToken",
                apb.RotateAccessTokenRequest(
                    token_id=tokens.access_tokens[0].token_id, overlap=pb_duration(value)
                ),
                "overlap." + part,
            )
        )
        for method, request, field in calls:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await getattr(live.admin, method)(request, metadata=auth(ADMIN))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert field in violations(caught.value), (method, violations(caught.value))
        after = await live.admin.ListAccessTokens(
            apb.ListAccessTokensRequest(), metadata=auth(ADMIN)
        )
        assert [t.token_id for t in after.access_tokens] == [
            t.token_id for t in tokens.access_tokens
        ]
        assert all(not t.HasField("expire_time") for t in after.access_tokens)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await live.admin.GetTeam(apb.GetTeamRequest(team_id="t-new"), metadata=auth(ADMIN))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        rep = await live.admin.GetRep(apb.GetRepRequest(rep_id="ann"), metadata=auth(ADMIN))
        assert rep.rep.permissions.idle_timeout.ToNanoseconds() == 0
        # each refusal is in the audit trail, once
        assert await audit_count(live) == before + len(calls)
    finally:
        await live.close()


def pb_duration(value: dict) -> object:
    from google.protobuf import duration_pb2

    return duration_pb2.Duration(**value)


async def test_watch_statistics_refuses_bad_intervals_naming_each() -> None:
    from assigncore.v1 import supervisor_service_pb2 as spb
    from assigncore.v1 import supervisor_service_pb2_grpc as sgrpc

    live = await live_server()
    try:
        stub = sgrpc.SupervisorServiceStub(live.channel)
        call = stub.WatchStatistics(
            spb.WatchStatisticsRequest(
                interval=pb_duration({"seconds": 1, "nanos": -1}),
                min_interval=pb_duration({"seconds": 10**13}),
            ),
            metadata=auth(ADMIN),
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(violations(caught.value)) == {"interval.nanos", "min_interval.seconds"}
    finally:
        await live.close()


# ------------------------------------------------------------- health Watch


async def test_health_watch_streams_serving() -> None:
    live = await live_server()
    try:
        stub = health_pb2_grpc.HealthStub(live.channel)
        call = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        first = await asyncio.wait_for(anext(call.__aiter__()), 5)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        call.cancel()
    finally:
        await live.close()


# ------------------------------------------------------------- request ids


@pytest.mark.parametrize(
    "sent,kept",
    [
        ("abc-123.x:y_z", True),
        ("a" * 64, True),
        ("a" * 65, False),
        ("has space", False),
        ("<b>markup</b>", False),
    ],
)
async def test_request_id_used_only_when_well_formed(sent: str, kept: bool) -> None:
    live = await live_server()
    try:
        call = live.admin.ListTeams(
            apb.ListTeamsRequest(),
            metadata=(*auth(ADMIN), ("x-request-id", sent)),
        )
        await call
        trailers = dict(await call.trailing_metadata())
        rid = trailers["x-request-id"]
        if kept:
            assert rid == sent
        else:
            assert rid != sent and len(rid) == 16
    finally:
        await live.close()


# ------------------------------------------------------------- dropped streams

DROPPER = r"""
import asyncio, random, sys
import grpc
from assigncore.v1 import console_service_pb2 as cpb
from assigncore.v1 import console_service_pb2_grpc as cg

async def one(channel, token, connect):
    stub = cg.RepConsoleServiceStub(channel)
    md = (("authorization", "Bearer " + token),)
    call = stub.Connect(metadata=md) if connect else stub.Subscribe(
        cpb.SubscribeRequest(), metadata=md
    )
    try:
        if connect:
            await call.write(cpb.ConnectRequest())
        await asyncio.sleep(random.random() * 0.03)
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the server ended it first (a newer stream of the rep replaced it)
    call.cancel()

async def main():
    random.seed(5)
    for _ in range(int(sys.argv[2])):
        async with grpc.aio.insecure_channel("127.0.0.1:" + sys.argv[1]) as channel:
            await asyncio.gather(*(
                one(channel, random.choice(sys.argv[3:]), random.random() < 0.5)
                for _ in range(20)
            ))

asyncio.run(main())
"""


async def test_consoles_dropping_their_streams_do_not_crash_the_server() -> None:
    """The server logs every ended stream (access_log = "all") while consoles cancel
    theirs at random moments: the peer is read when a call begins, never after."""
    live = await live_server(access_log="all")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            DROPPER,
            str(live.port),
            "40",
            rep_token("ann"),
            rep_token("bob"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 50)
        assert proc.returncode == 0, err.decode()[-2000:]
        stub = cgrpc.RepConsoleServiceStub(live.channel)
        profile = await stub.GetMyProfile(
            cpb.GetMyProfileRequest(), metadata=auth(rep_token("ann"))
        )
        assert profile.profile.rep_id == "ann"
    finally:
        await live.close()


# ------------------------------------------------------------- every violation first


async def test_every_violation_before_any_lookup() -> None:
    from assigncore.v1 import intake_service_pb2 as ipb

    from .server_harness import INTAKE

    live = await live_server()
    try:
        cases = [
            (
                live.intake.StartSession(
                    ipb.StartSessionRequest(
                        request_id="r" * 65,
                        customer=pb.Customer(name=""),
                        customer_address="not-an-address",
                        issue_type_id="bad id!",
                    ),
                    metadata=auth(INTAKE),
                ),
                {"request_id", "customer.name", "customer_address", "issue_type_id"},
            ),
            (
                live.intake.StartSession(
                    ipb.StartSessionRequest(
                        request_id="",
                        customer_address="1" * 101,
                        undesignated=ipb.Undesignated(),
                    ),
                    metadata=auth(INTAKE),
                ),
                {"request_id", "customer", "customer_address"},
            ),
        ]
        stub = cgrpc.RepConsoleServiceStub(live.channel)
        ann = auth(rep_token("ann"))
        cases += [
            (
                stub.TransferSession(
                    cpb.TransferSessionRequest(
                        session_id="ses_nonexistent", target=pb.Target(team_id="bad id!")
                    ),
                    metadata=ann,
                ),
                {"target.team_id"},
            ),
            (
                stub.InviteToSession(
                    cpb.InviteToSessionRequest(session_id="", target=pb.Target()),
                    metadata=ann,
                ),
                {"session_id", "target"},
            ),
            (
                stub.ListQueueItems(
                    cpb.ListQueueItemsRequest(
                        queue=pb.QueueRef(kind=pb.QUEUE_KIND_TEAM, owner_id="bad id!"),
                        page_size=100_000,
                        page_token="garbage",
                    ),
                    metadata=ann,
                ),
                {"queue.owner_id", "page_size", "page_token"},
            ),
        ]
        for call, fields in cases:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert set(violations(caught.value)) == fields
        # addresses that are addresses
        for address in ("10.0.0.7", "2001:db8::1"):
            await live.intake.StartSession(
                ipb.StartSessionRequest(
                    request_id=f"ok-{address}",
                    customer=pb.Customer(name="Carol"),
                    customer_address=address,
                    undesignated=ipb.Undesignated(),
                ),
                metadata=auth(INTAKE),
            )
    finally:
        await live.close()


async def test_a_deleted_reps_calls_are_unauthenticated_as_documented() -> None:
    live = await live_server()
    try:
        stub = cgrpc.RepConsoleServiceStub(live.channel)
        await live.admin.DeleteRep(apb.DeleteRepRequest(rep_id="cat"), metadata=auth(ADMIN))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetMyProfile(cpb.GetMyProfileRequest(), metadata=auth(rep_token("cat")))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await live.close()


# ------------------------------------------------------------- starting


def test_a_port_in_use_stops_serve_before_any_desk_file(tmp_path) -> None:
    import socket

    from assigncore_server.cli import main

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        for table, listener in (("server", "gRPC"), ("metrics", "metrics")):
            config = tmp_path / f"{table}.toml"
            other = "127.0.0.1:0"
            lines = [
                "[server]",
                f'listen = "{f"127.0.0.1:{port}" if table == "server" else other}"',
                "[storage]",
                'path = "desk.sqlite3"',
                "[metrics]",
                f'listen = "{f"127.0.0.1:{port}" if table == "metrics" else other}"',
            ]
            config.write_text("\n".join(lines) + "\n")
            done = subprocess.run(
                [sys.executable, "-m", "assigncore_server.cli", "serve", "--config", str(config)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 1, done.stderr
            last = done.stderr.strip().splitlines()[-1]
            assert f"127.0.0.1:{port}" in last and listener in last, done.stderr
            assert not (tmp_path / "desk.sqlite3").exists()
        assert main is not None
    finally:
        taken.close()


async def test_health_is_not_serving_while_the_desk_loads(tmp_path, caplog) -> None:
    import threading

    from assigncore_server import config
    from assigncore_server.app import create_server
    from assigncore_server.desk import durable

    from .server_harness import DESK, INTAKE

    path = str(tmp_path / "desk.sqlite3")
    live = await live_server(storage_path=path)
    for _ in range(30):
        await live.start(issue_type_id="manual-help")
    await live.close(snapshot=False)

    settings = config.parse(DESK, "test desk")
    settings.storage_path, settings.clock, settings.manual_clock = path, live.clock, True
    server, port = await create_server(settings)
    release = threading.Event()
    load = server.runtime._load

    def held_load():
        release.wait(30)
        return load()

    server.runtime._load = held_load
    durable_progress = durable.PROGRESS_FROM
    durable.PROGRESS_FROM = 10
    starting = asyncio.get_running_loop().create_task(server.start())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(200):
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.01)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            from assigncore.v1 import intake_service_pb2 as ipb
            from assigncore.v1 import intake_service_pb2_grpc as igrpc

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await igrpc.IntakeServiceStub(channel).GetSessionStatus(
                    ipb.GetSessionStatusRequest(session_id="ses_x"), metadata=auth(INTAKE)
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "loading" in caught.value.details()
            with caplog.at_level("INFO", logger="assigncore.server"):
                release.set()
                await asyncio.wait_for(starting, 30)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert len(server.runtime.engine.sessions()) == 30
        progress = [r.getMessage() for r in caplog.records if "journal entries (" in r.getMessage()]
        assert progress and progress[-1].endswith("(100%)"), progress
    finally:
        durable.PROGRESS_FROM = durable_progress
        release.set()
        if not starting.done():
            await starting
        await server.stop(0.2)


async def test_the_readme_example_runs_twice_against_the_default_desk(tmp_path) -> None:
    import re
    from pathlib import Path

    from assigncore_server import config
    from assigncore_server.app import create_server

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    code = re.search(r"```python\n(import asyncio\n.*?)```", readme, re.S).group(1)
    settings = config.load(None)
    settings.listen, settings.storage_path = "127.0.0.1:0", str(tmp_path / "desk.sqlite3")
    server, port = await create_server(settings)
    await server.start()
    try:
        script = tmp_path / "example.py"
        script.write_text(code.replace("127.0.0.1:50051", f"127.0.0.1:{port}"))
        for _ in range(2):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(script), stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, err.decode()
            text = out.decode()
            assert all(f"helping {name}" in text for name in ("Carol", "Dave", "Erin")), text
            assert text.count("SESSION_STATE_ENDED") == 3, text
        ann = server.runtime.engine.rep("ann")
        assert ann.load == 0  # every session ended
    finally:
        await server.stop(0.2)


async def test_a_command_failing_midway_leaves_no_trace(monkeypatch) -> None:
    """A bug inside an engine command (here: after the rep is registered, before its
    skills are written) is answered INTERNAL saying nothing was applied; the desk is
    rebuilt from its journal, so the half-made rep is gone and a retry succeeds."""
    from assigncore import directory

    live = await live_server()
    try:
        real = directory.write_skills

        def broken(st, rep):
            raise IndexError("a bug in the middle of a command")

        monkeypatch.setattr(directory, "write_skills", broken)
        request = apb.CreateRepRequest(
            rep=apb.Rep(id="half", display_name="Half", skills={"x": 3}, team_ids=["support"])
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await live.admin.CreateRep(request, metadata=auth(ADMIN))
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert "nothing of this call was applied" in caught.value.details()
        monkeypatch.setattr(directory, "write_skills", real)
        runtime = live.server.runtime

        async def rebuilt() -> None:
            while runtime.failed:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(rebuilt(), 20)
        assert runtime.engine.find_rep("half") is None
        assert "half" not in runtime.engine.team("support").members
        created = await live.admin.CreateRep(request, metadata=auth(ADMIN))
        assert created.rep.id == "half" and dict(created.rep.skills) == {"x": 3}
    finally:
        await live.close()


async def test_a_record_that_cannot_replay_stops_the_start_with_its_position(
    tmp_path, monkeypatch
) -> None:
    """Whatever the error inside a replayed command (here an IndexError, as the old
    skill-matrix bug raised), the start stops with the record's position and the
    command that shows it, never a traceback."""
    from assigncore import directory
    from assigncore_server import config
    from assigncore_server.desk import durable
    from assigncore_server.storage.files import FileView
    from assigncore_server.storage.journal import JournalError

    from .server_harness import DESK

    path = str(tmp_path / "desk.sqlite3")
    live = await live_server(storage_path=path)
    await live.close(snapshot=False)

    def broken(st, rep):
        raise IndexError("index 8 is out of bounds for axis 1 with size 8")

    monkeypatch.setattr(directory, "write_skills", broken)
    settings = config.parse(DESK, "test desk")
    with pytest.raises(JournalError) as caught:
        durable.load(FileView(path), settings)
    message = str(caught.value)
    assert f"assigncore journal --path {path} --from 1" in message
    assert "IndexError" in message and caught.value.position == 1


def test_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "assigncore_server.cli", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0 and re.fullmatch(r"assigncore \d+\.\d+\.\d+\n", done.stdout)


async def test_an_ended_session_can_be_inspected_by_admins_and_its_supervisors() -> None:
    """Found by the crash loop: an ended session has no queue and no owner, and was
    NOT_FOUND even for an admin. Its history says where it was."""
    from assigncore.v1 import supervisor_service_pb2 as spb
    from assigncore.v1 import supervisor_service_pb2_grpc as sgrpc

    live = await live_server()
    try:
        bob = await live.console("bob")
        session = await live.start(issue_type_id="manual-help")
        await bob.rpc("AcceptSession", cpb.AcceptSessionRequest(session_id=session.id))
        await bob.rpc("EndSession", cpb.EndSessionRequest(session_id=session.id))
        issued = await live.admin.IssueAccessToken(
            apb.IssueAccessTokenRequest(kind=apb.PRINCIPAL_KIND_SUPERVISOR, team_ids=["manual"]),
            metadata=auth(ADMIN),
        )
        other = await live.admin.IssueAccessToken(
            apb.IssueAccessTokenRequest(kind=apb.PRINCIPAL_KIND_SUPERVISOR, team_ids=["front"]),
            metadata=auth(ADMIN),
        )
        sup = sgrpc.SupervisorServiceStub(live.channel)
        for token in (ADMIN, issued.secret):
            seen = await sup.InspectSession(
                spb.InspectSessionRequest(session_id=session.id), metadata=auth(token)
            )
            assert seen.session.state == pb.SESSION_STATE_ENDED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sup.InspectSession(
                spb.InspectSessionRequest(session_id=session.id), metadata=auth(other.secret)
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # not in its scope
    finally:
        await live.close()


async def test_an_internal_error_after_a_change_says_it_was_applied(monkeypatch) -> None:
    """A failure after the change (here: building the reply) answers INTERNAL saying
    the change is kept, for an engine command and for a token alike; never UNKNOWN."""
    from assigncore_server.api import admin, convert

    live = await live_server()
    try:

        def broken(*args, **kwargs):
            raise RuntimeError("a bug while building the reply")

        before = await live.admin.ListAccessTokens(
            apb.ListAccessTokensRequest(), metadata=auth(ADMIN)
        )
        monkeypatch.setattr(convert, "rep_out", broken)
        monkeypatch.setattr(admin.AdminServicer, "_token_out", broken)
        calls = [
            live.admin.CreateRep(
                apb.CreateRepRequest(rep=apb.Rep(id="kept", display_name="Kept")),
                metadata=auth(ADMIN),
            ),
            live.admin.IssueAccessToken(
                apb.IssueAccessTokenRequest(kind=apb.PRINCIPAL_KIND_INTAKE), metadata=auth(ADMIN)
            ),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            assert "change was applied (it is kept)" in caught.value.details()
        monkeypatch.undo()
        assert live.server.runtime.engine.find_rep("kept") is not None
        after = await live.admin.ListAccessTokens(
            apb.ListAccessTokensRequest(), metadata=auth(ADMIN)
        )
        assert len(after.access_tokens) == len(before.access_tokens) + 1
    finally:
        await live.close()
