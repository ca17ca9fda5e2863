"""The desk file under faults (what an outside fault-injection run found): each test
injects the fault into a real file or a real server and checks what the server does."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest

from assigncore.v1 import console_service_pb2 as cpb
from assigncore_server.storage import files as storage
from assigncore_server.storage.files import StorageError
from assigncore_server.storage.journal import Journal

from .server_harness import free_port, live_server


async def test_a_refusal_waits_for_the_state_it_read_to_be_durable(monkeypatch) -> None:
    """With the journal's writer held back, bob's accept is applied but not durable:
    cat's accept of the same session is refused (it is ACTIVE), and that refusal must
    not leave before bob's accept is durable (a crash now would undo it)."""
    live = await live_server()
    try:
        bob, cat = await live.console("bob"), await live.console("cat")
        session = await live.start(issue_type_id="manual-help")
        gate = threading.Event()
        write = Journal._write

        def held(self, batch):
            gate.wait(30)
            return write(self, batch)

        monkeypatch.setattr(Journal, "_write", held)
        accepted = asyncio.ensure_future(
            bob.rpc("AcceptSession", cpb.AcceptSessionRequest(session_id=session.id))
        )
        await asyncio.sleep(0.1)
        refused = asyncio.ensure_future(
            cat.rpc("AcceptSession", cpb.AcceptSessionRequest(session_id=session.id))
        )
        await asyncio.sleep(0.5)
        assert not accepted.done() and not refused.done()
        gate.set()
        await asyncio.wait_for(accepted, 10)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(refused, 10)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        gate.set()
        await live.close()


async def test_a_file_that_holds_no_desk_is_refused_not_replaced(tmp_path) -> None:
    """A desk is created only where no file exists: an empty file, or the main file of
    a desk whose -wal was lost, stops the start and is left as it was."""
    empty = tmp_path / "empty.sqlite3"
    empty.write_bytes(b"")
    with pytest.raises(StorageError, match="holds no desk") as refused:
        await live_server(storage_path=str(empty))
    assert "assigncore restore" in str(refused.value)
    assert empty.stat().st_size == 0

    # A desk whose -wal file is gone: its main file has the tables and no records.
    path = tmp_path / "desk.sqlite3"
    live = await live_server(storage_path=str(path))
    await live.start(issue_type_id="manual-help")
    lost_wal = tmp_path / "lost-wal.sqlite3"
    lost_wal.write_bytes(path.read_bytes())  # the main file only, as a crash left it
    await live.close()
    assert not (tmp_path / "lost-wal.sqlite3-wal").exists()
    with pytest.raises(StorageError, match="holds no desk"):
        await live_server(storage_path=str(lost_wal))


async def test_a_damaged_page_gives_one_clear_message(tmp_path) -> None:
    path = tmp_path / "desk.sqlite3"
    live = await live_server(storage_path=str(path))
    for _ in range(30):
        await live.start(issue_type_id="manual-help")
    await live.close()
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(page, len(data), page):  # every page but the header's
        data[offset : offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "assigncore_server.cli",
            "serve",
            "--config",
            str(config(tmp_path, path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert str(path) in last and "restore" in last, done.stderr


def config(folder, path) -> object:
    toml = folder / "desk.toml"
    toml.write_text(f'[server]\nlisten = "127.0.0.1:0"\n[storage]\npath = "{path}"\n')
    return toml


async def test_snapshot_cadence_counts_from_the_last_snapshot_across_restarts(tmp_path):
    """A server that restarts often still takes its periodic snapshot: the count runs
    from the journal position of the newest snapshot, not from the process start."""
    path = str(tmp_path / "desk.sqlite3")
    for life in range(3):  # three short lives, 5 entries each, snapshot_every = 10
        live = await live_server(storage_path=path, snapshot_every=10)
        live._request = 100 * life  # request ids of its own: each start is new
        for _ in range(4):
            await live.start(issue_type_id="manual-help")
        runtime = live.server.runtime
        for _ in range(100):  # the snapshot process is started by a task of the loop
            if runtime._snapshotter is not None:
                await asyncio.wait_for(runtime._snapshotter.wait(), 60)
                break
            await asyncio.sleep(0.01)
        await live.close(snapshot=False)  # a crash: no snapshot at the stop
    assert storage.snapshots(path), "no periodic snapshot was ever taken"


async def test_the_lock_is_on_the_file_whatever_its_path(tmp_path) -> None:
    """Every path to the desk file conflicts: a symlink, a hard link; and a restore
    through one of them is refused while the server runs."""
    path = tmp_path / "desk.sqlite3"
    live = await live_server(storage_path=str(path))
    try:
        (tmp_path / "symlink.sqlite3").symlink_to(path)
        os.link(path, tmp_path / "hardlink.sqlite3")
        for other in ("symlink.sqlite3", "hardlink.sqlite3"):
            with pytest.raises(StorageError, match="in use"):
                await live_server(storage_path=str(tmp_path / other))
        backup = tmp_path / "backup.sqlite3"
        storage.backup(str(path), str(backup))
        with pytest.raises(StorageError, match="in use"):
            storage.restore(str(backup), str(tmp_path / "hardlink.sqlite3"))
        assert not list(tmp_path.glob("*.replaced-*"))
    finally:
        await live.close()


async def test_restore_into_a_path_that_does_not_exist_yet(tmp_path) -> None:
    path = tmp_path / "desk.sqlite3"
    live = await live_server(storage_path=str(path))
    kept = await live.start(issue_type_id="manual-help")
    storage.backup(str(path), str(tmp_path / "backup.sqlite3"))
    await live.close()
    fresh = tmp_path / "elsewhere" / "desk.sqlite3"
    fresh.parent.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "assigncore_server.cli",
            "restore",
            "--path",
            str(fresh),
            str(tmp_path / "backup.sqlite3"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "replaced" not in done.stdout  # nothing was there to keep
    live = await live_server(storage_path=str(fresh), clock=live.clock)
    try:
        assert kept.id in {s.id for s in live.server.runtime.engine.sessions()}
    finally:
        await live.close()


async def test_a_damaged_wal_that_ends_the_journal_early_is_detected(tmp_path) -> None:
    """SQLite ends WAL recovery at the first bad frame, silently. The desk's durable
    position is kept beside the file: a journal that ends before it stops the start."""
    path = tmp_path / "desk.sqlite3"
    live = await live_server(storage_path=str(path))
    try:
        for _ in range(30):
            await live.start(issue_type_id="manual-help")
        # The files as a crash would leave them, copied while the server runs.
        crashed = tmp_path / "crashed.sqlite3"
        for suffix in ("", "-wal", ".durable"):
            Path(str(crashed) + suffix).write_bytes(Path(str(path) + suffix).read_bytes())
    finally:
        await live.close()
    wal = Path(str(crashed) + "-wal")
    data = bytearray(wal.read_bytes())
    assert len(data) > 40_000, "the records are expected in the -wal file"
    middle = len(data) // 2
    data[middle : middle + 512] = os.urandom(512)  # a damaged frame half-way
    wal.write_bytes(bytes(data))
    with pytest.raises(StorageError) as refused:
        await live_server(storage_path=str(crashed))
    message = str(refused.value)
    assert "-wal" in message and "made position" in message and "restore" in message


# The desk of the tests that run a real server process: a team whose offers run 2 s,
# one rep, an issue type and the tokens.
PROCESS_DESK = """
[server]
listen = "127.0.0.1:{port}"

[storage]
path = "{path}"
snapshot_every = 0

[[teams]]
id = "support"
name = "Support"
algorithm = "LEAST_BUSY"
offer_timeout = 2

[[reps]]
id = "ann"
name = "Ann"
teams = ["support"]

[[issue_types]]
id = "help"
name = "Help"
team = "support"

[[tokens]]
kind = "intake"
secret = "process-intake-token-0123456789"

[[tokens]]
kind = "rep"
rep = "ann"
secret = "process-ann-token-0123456789"
"""


async def test_a_stalled_server_does_not_charge_the_rep_for_its_stall(tmp_path) -> None:
    """The server process is frozen (SIGSTOP) with an offer running; the rep answers
    1 s into the freeze, the freeze outlasts the offer's deadline; when the server runs
    again the answer is taken: a stall, like a restart, is not the rep's fault."""
    import signal

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from assigncore.v1 import common_pb2 as pb
    from assigncore.v1 import console_service_pb2_grpc as cgrpc
    from assigncore.v1 import intake_service_pb2 as ipb
    from assigncore.v1 import intake_service_pb2_grpc as igrpc

    from .server_harness import auth

    port = free_port()
    (tmp_path / "desk.toml").write_text(PROCESS_DESK.format(port=port, path="desk.sqlite3"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "assigncore_server.cli", "serve", "--config", "desk.toml"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(300):
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
            console = cgrpc.RepConsoleServiceStub(channel)
            ann = auth("process-ann-token-0123456789")
            feed = console.Subscribe(cpb.SubscribeRequest(), metadata=ann)
            events = feed.__aiter__()
            await anext(events)  # welcome
            await igrpc.IntakeServiceStub(channel).StartSession(
                ipb.StartSessionRequest(
                    request_id="stall-1",
                    customer=pb.Customer(name="Carol"),
                    issue_type_id="help",
                ),
                metadata=auth("process-intake-token-0123456789"),
            )
            while True:
                event = await asyncio.wait_for(anext(events), 10)
                if event.WhichOneof("event") == "offer_made":
                    offer = event.offer_made
                    break
            proc.send_signal(signal.SIGSTOP)
            await asyncio.sleep(1.0)
            answer = asyncio.ensure_future(
                console.AnswerOffer(
                    cpb.AnswerOfferRequest(offer_id=offer.offer_id, accept=True), metadata=ann
                )
            )
            await asyncio.sleep(3.0)  # the offer's 2 s deadline passes while frozen
            proc.send_signal(signal.SIGCONT)
            accepted = await asyncio.wait_for(answer, 10)
            assert accepted.session.owner_rep_id == "ann"
            feed.cancel()
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert b"stalled for" in err  # the log says so


async def test_the_stall_clock_subtracts_only_gaps_past_its_bound() -> None:
    from assigncore_server.desk.stall import StallClock

    now = {"wall": 1000.0, "mono": 50.0}
    clock = StallClock(lambda: now["wall"], lambda: now["mono"], tick=0.1, bound=1.0)
    clock.start()
    try:
        for _ in range(5):  # a busy loop, heartbeats late but within the bound
            now["wall"] += 0.9
            now["mono"] += 0.9
            assert clock() == pytest.approx(now["wall"])
        now["wall"] += 10.0  # frozen for 10 s
        now["mono"] += 10.0
        assert clock() == pytest.approx(now["wall"] - 9.9)  # stood still but for a tick
        assert clock.stalls == 1
        now["wall"] += 0.5
        now["mono"] += 0.5
        assert clock() == pytest.approx(now["wall"] - 9.9)  # and goes on from there
    finally:
        clock.stop()


SPAWNER = r"""
import subprocess, sys, os, time
child = subprocess.Popen([sys.executable, "-m", "assigncore_server.cli", "snapshot",
                          "--path", sys.argv[1], "--parent", str(os.getpid())])
print(child.pid, flush=True)
time.sleep(60)
"""


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] == "Z"  # a zombie has ended
    except FileNotFoundError:
        return True


async def test_the_snapshot_process_ends_with_its_server(tmp_path) -> None:
    """A snapshot process whose server is killed ends too (PR_SET_PDEATHSIG): it never
    writes and compacts beside the next server. Its desk takes seconds to replay, and
    its parent is killed with SIGKILL while it does."""
    import signal
    import time

    path = str(tmp_path / "desk.sqlite3")
    live = await live_server(storage_path=path)
    await live.start(issue_type_id="manual-help")
    await live.close(snapshot=False)
    journal = Journal(path)
    body = [b for _, b in journal.records() if b'"start_from_issue"' in b][0]
    for _ in range(80):
        futures = [journal.append(body) for _ in range(1000)]
        futures[-1].result(60)
    journal.close()
    spawner = subprocess.Popen(
        [sys.executable, "-c", SPAWNER, path], stdout=subprocess.PIPE, text=True
    )
    child = int(spawner.stdout.readline())
    time.sleep(2.0)  # the child is replaying (it would have failed to start by now)
    assert not gone(child)
    spawner.send_signal(signal.SIGKILL)
    spawner.wait()
    deadline = time.monotonic() + 10
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(child), "the snapshot process outlived its server"
    time.sleep(0.5)
    assert storage.snapshots(path) == []  # it was killed before it wrote anything


def test_a_tiny_volume_serves_again_once_space_is_freed(tmp_path) -> None:
    """A 3 MiB volume (tmpfs: this machine lets root mount one) with a 1 MiB file of
    something else on it. The desk fills it: calls get UNAVAILABLE and health says
    NOT_SERVING. The other file is deleted: the desk serves again, by itself. Killed
    with SIGKILL on the full volume, it starts again. The -wal file stays bounded."""
    import signal
    import time

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from assigncore.v1 import common_pb2 as pb
    from assigncore.v1 import intake_service_pb2 as ipb
    from assigncore.v1 import intake_service_pb2_grpc as igrpc

    volume = tmp_path / "volume"
    volume.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(volume)],
        capture_output=True,
        text=True,
    )
    assert mounted.returncode == 0, f"this test mounts a 3 MiB tmpfs: {mounted.stderr}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        filler = volume / "other-data"
        filler.write_bytes(b"\0" * (1 << 20))
        port = free_port()
        config = tmp_path / "desk.toml"
        config.write_text(PROCESS_DESK.format(port=port, path=volume / "desk.sqlite3"))

        def serve() -> None:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "assigncore_server.cli",
                        "serve",
                        "--config",
                        str(config),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)
        intake = igrpc.IntakeServiceStub(channel)
        md = (("authorization", "Bearer process-intake-token-0123456789"),)
        n = 0

        def start() -> grpc.StatusCode:
            nonlocal n
            n += 1
            try:
                intake.StartSession(
                    ipb.StartSessionRequest(
                        request_id=f"r{n}",
                        customer=pb.Customer(name="Carol", details="d" * 2000),
                        issue_type_id="help",
                    ),
                    metadata=md,
                    timeout=10,
                )
                return grpc.StatusCode.OK
            except grpc.RpcError as exc:
                return exc.code()

        def status() -> int:
            try:
                return health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
            except grpc.RpcError:
                return -1

        def until(condition, seconds: float = 30) -> bool:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if condition():
                    return True
                time.sleep(0.1)
            return False

        serving = health_pb2.HealthCheckResponse.SERVING
        serve()
        assert until(lambda: status() == serving)
        codes = [start()]
        while codes[-1] == grpc.StatusCode.OK and n < 5000:  # until the volume is full
            codes.append(start())
        assert grpc.StatusCode.OK in codes and codes[-1] == grpc.StatusCode.UNAVAILABLE
        assert status() == health_pb2.HealthCheckResponse.NOT_SERVING
        wal = volume / "desk.sqlite3-wal"
        assert wal.stat().st_size <= 2 << 20  # bounded, not the whole volume

        filler.unlink()  # space is freed
        assert until(lambda: status() == serving), "it did not serve again"
        assert start() == grpc.StatusCode.OK

        while start() == grpc.StatusCode.OK and n < 8000:
            pass  # full again, now with nothing else to free
        procs[-1].send_signal(signal.SIGKILL)
        procs[-1].wait()
        serve()  # a restart on the full volume
        assert until(lambda: status() in (serving, health_pb2.HealthCheckResponse.NOT_SERVING))
        assert procs[-1].poll() is None, "the server did not start on the full volume"
        channel.close()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        subprocess.run(["umount", "-l", str(volume)], capture_output=True)
