"""End-to-end benchmark of the gRPC server, measured in one run:

- where a lifecycle's cost lies in-process, layer by layer (benchmarks/layers.py: the
  engine, + fan-out, + journal, + servicers);
- the server's CPU per call against a bare grpc.aio server in the same run: its
  trivial unary call and the same made request-streaming, beside this server's health
  Check and GetMyProfile (`per_call_server_cpu_us`);
- the empty-RPC floor: health Check round trips (p50/p99);
- enqueue-to-offer latency: from sending StartSession through the intake service until
  the offer event arrives on the chosen rep's console stream (p50/p99);
- the server's CPU for one empty unary call (64 in flight): the machine's floor;
- sustained full lifecycles per second: start -> offer -> accept -> end, with many
  lifecycles in flight; once with the console answering and ending by unary calls,
  once with the same actions on its `Connect` stream with the raw stubs, and once on
  the same stream through the Python client (`assigncore.client.Console`); and the
  server's and the client's CPU per lifecycle for each (from /proc): the client's
  overhead is their ratio (`sdk_to_raw_client_cpu`);
- the all-stream path beside them: the starts on one `Intake` stream and the consoles
  on `Connect` (`all_stream_*`): lifecycles/s, CPU per lifecycle (also in bare unary
  calls of the same run), and enqueue-to-offer latency on that path, with the disk's
  fsync p50 measured beside the desk file.

The server runs as a separate process (`python -m assigncore_server.cli serve`) with 1,000 team
queues and 1,000 reps whose consoles are connected and streaming throughout. In the
same run it serves with the journal off (`[storage] mode = "memory"`), then in turn
(`--pairs` times, 2 by default) with the journal on (the default: SQLite,
synchronous=FULL, group commit) and statistics and metrics off (`[server] statistics =
false`, no `[metrics]`), and with the journal on and both on, the metrics scraped every
5 s (three times as often as a Prometheus set to the common 15 s). The pairs give what
operating a desk costs. The figures of the first of each kind and their ratios are
reported; with the journal on, the journal's bytes and entries per lifecycle; with
metrics on, the scrapes' count and time.

    python benchmarks/e2e.py --json            # full run, about 6 minutes
    python benchmarks/e2e.py --json --quick    # about 2 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from assigncore.client import AssignCoreError, Connection, Console, OfferMade
from assigncore.v1 import common_pb2 as pb
from assigncore.v1 import console_service_pb2 as cpb
from assigncore.v1 import console_service_pb2_grpc as cgrpc
from assigncore.v1 import intake_service_pb2 as ipb
from assigncore.v1 import intake_service_pb2_grpc as igrpc

INTAKE = "bench-intake-token-0123456789"
# Console streams are spread over this many connections (each channel has its own: a
# local subchannel pool), well under the server's 100 streams per connection.
CHANNELS = 20
SCRAPE_EVERY = 5.0  # seconds between scrapes of the metrics


def rep_token(i: int) -> str:
    return f"bench-rep-{i}-token-0123456789"


def desk(n: int, journal: bool, operations: bool) -> str:
    mode = "file" if journal else "memory"
    parts = [
        "[server]\nmax_concurrent_rpcs = 50000\nshutdown_grace = 1\n"
        f"statistics = {'true' if operations else 'false'}\n",
        f'[storage]\nmode = "{mode}"\nsnapshot_every = 0\n',
    ]
    if operations:
        parts.append('[metrics]\nlisten = "127.0.0.1:0"\n')
    for i in range(n):
        parts.append(
            f'[[teams]]\nid = "t{i}"\nalgorithm = "LEAST_BUSY"\noffer_timeout = 60\n'
            f'[[reps]]\nid = "r{i}"\nteams = ["t{i}"]\n'
            f'[[issue_types]]\nid = "i{i}"\nteam = "t{i}"\n'
            f'[[tokens]]\nkind = "rep"\nrep = "r{i}"\nsecret = "{rep_token(i)}"\n'
        )
    parts.append(f'[[tokens]]\nkind = "intake"\nsecret = "{INTAKE}"\n')
    return "\n".join(parts)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


class Consoles:
    """n connected reps; per rep a queue of the offers its stream delivers."""

    def __init__(self, channels: list[grpc.aio.Channel], n: int) -> None:
        self.offers: list[asyncio.Queue[cpb.OfferMade]] = [asyncio.Queue() for _ in range(n)]
        self.stubs = [cgrpc.RepConsoleServiceStub(channels[i % len(channels)]) for i in range(n)]
        self.ready = [asyncio.Event() for _ in range(n)]
        self.tasks = [asyncio.create_task(self._pump(i)) for i in range(n)]

    async def _pump(self, i: int) -> None:
        call = self.stubs[i].Subscribe(cpb.SubscribeRequest(), metadata=auth(rep_token(i)))
        try:
            async for event in call:
                kind = event.WhichOneof("event")
                if kind == "welcome":
                    self.ready[i].set()
                elif kind == "offer_made":
                    self.offers[i].put_nowait(event.offer_made)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass

    async def answer(self, i: int, offer: cpb.OfferMade) -> None:
        md = auth(rep_token(i))
        await self.stubs[i].AnswerOffer(
            cpb.AnswerOfferRequest(offer_id=offer.offer_id, accept=True), metadata=md
        )
        await self.stubs[i].EndSession(
            cpb.EndSessionRequest(session_id=offer.session.id), metadata=md
        )


class StreamConsoles:
    """n reps on Connect: offers arrive and answers and ends go on the same stream."""

    def __init__(self, channels: list[grpc.aio.Channel], n: int) -> None:
        self.offers: list[asyncio.Queue[cpb.OfferMade]] = [asyncio.Queue() for _ in range(n)]
        self.calls = [
            cgrpc.RepConsoleServiceStub(channels[i % len(channels)]).Connect(
                metadata=auth(rep_token(i))
            )
            for i in range(n)
        ]
        self.pending: list[dict[str, asyncio.Future[cpb.ActionResult]]] = [{} for _ in range(n)]
        self.ready = [asyncio.Event() for _ in range(n)]
        self.tasks = [asyncio.create_task(self._pump(i)) for i in range(n)]
        self.ids = 0

    async def _pump(self, i: int) -> None:
        call = self.calls[i]
        try:
            await call.write(cpb.ConnectRequest(subscribe=cpb.SubscribeRequest()))
            async for msg in call:
                if msg.WhichOneof("message") == "result":
                    self.pending[i].pop(msg.result.action_id).set_result(msg.result)
                    continue
                kind = msg.event.WhichOneof("event")
                if kind == "welcome":
                    self.ready[i].set()
                elif kind == "offer_made":
                    self.offers[i].put_nowait(msg.event.offer_made)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass

    async def _act(self, i: int, **action: object) -> cpb.ActionResult:
        self.ids += 1
        action_id = str(self.ids)
        done = self.pending[i][action_id] = asyncio.get_running_loop().create_future()
        await self.calls[i].write(cpb.ConnectRequest(action_id=action_id, **action))
        result = await done
        if result.status.code:
            raise RuntimeError(f"action failed: {result.status.message}")
        return result

    async def answer(self, i: int, offer: cpb.OfferMade) -> None:
        await self._act(
            i, answer_offer=cpb.AnswerOfferRequest(offer_id=offer.offer_id, accept=True)
        )
        await self._act(i, end_session=cpb.EndSessionRequest(session_id=offer.session.id))

    async def close(self) -> None:
        for call in self.calls:
            call.cancel()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class SdkConsoles:
    """n reps on the Python client's Console (assigncore.client): the same Connect
    stream, with the client's action ids, typed events and state kept per console. The
    consoles share the 20 connections, each with its rep's token, as a gateway does."""

    def __init__(self, connections: list[Connection], n: int) -> None:
        self.offers: list[asyncio.Queue[OfferMade]] = [asyncio.Queue() for _ in range(n)]
        self.consoles = [
            Console(connections[i % len(connections)], token=rep_token(i)) for i in range(n)
        ]
        self.ready = [asyncio.Event() for _ in range(n)]
        self.tasks = [asyncio.create_task(self._pump(i)) for i in range(n)]

    async def _pump(self, i: int) -> None:
        console = self.consoles[i]
        try:
            await console.start()
            self.ready[i].set()
            async for event in console:
                if isinstance(event, OfferMade):
                    self.offers[i].put_nowait(event)
        except (AssignCoreError, asyncio.CancelledError):
            pass

    async def answer(self, i: int, offer: OfferMade) -> None:
        console = self.consoles[i]
        await console.answer(offer.offer_id)
        await console.end(offer.session.id)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.consoles), return_exceptions=True)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class IntakeDriver:
    """A portal on the Intake stream: many starts in flight on one stream, each
    result matched to its start by request id."""

    def __init__(self, stub: igrpc.IntakeServiceStub) -> None:
        self.queue: asyncio.Queue[ipb.IntakeRequest] = asyncio.Queue()
        self.call = stub.Intake(self._requests(), metadata=auth(INTAKE))
        self.waiting: dict[str, asyncio.Future[ipb.IntakeResponse]] = {}
        self.task = asyncio.create_task(self._pump())

    async def _requests(self) -> AsyncIterator[ipb.IntakeRequest]:
        while True:
            yield await self.queue.get()

    async def _pump(self) -> None:
        try:
            async for result in self.call:
                self.waiting.pop(result.request_id).set_result(result)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass

    async def start(self, request: ipb.StartSessionRequest) -> None:
        done = self.waiting[request.request_id] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(ipb.IntakeRequest(start_session=request))
        result = await done
        if result.status.code:
            raise RuntimeError(f"start failed: {result.status.message}")

    async def close(self) -> None:
        self.call.cancel()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def fsync_p50(directory: Path, samples: int = 200) -> float:
    """The median time (s) of a small write made durable with fsync, in the directory
    of the desk file: the disk's share of an offer with the journal on."""
    path = directory / "fsync-probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for i in range(samples):
            t0 = time.perf_counter()
            os.pwrite(fd, b"x" * 512, (i % 8) * 4096)
            os.fsync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times)


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def journal_size(path: Path) -> tuple[int, int]:
    """(bytes of record bodies, entries) in the desk file so far."""
    if not path.exists():
        return 0, 0
    with sqlite3.connect(path) as db:
        size, count = db.execute("SELECT SUM(LENGTH(body)), COUNT(*) FROM records").fetchone()
    return int(size or 0), int(count or 0)


BARE_UNARY = "/bench.Bare/Empty"
BARE_STREAM = "/bench.Bare/EmptyStream"


def bare_server() -> None:
    """A bare grpc.aio server on uvloop, as assigncore serves: one trivial unary method,
    and the same made request-streaming (reads its one message). Prints its port, serves
    until stdin closes."""
    import uvloop

    async def empty(request: bytes, context: object) -> bytes:
        return b""

    async def empty_stream(requests: object, context: object) -> bytes:
        async for _ in requests:  # type: ignore[attr-defined]
            break
        return b""

    async def main() -> None:
        handlers = {
            "Empty": grpc.unary_unary_rpc_method_handler(empty),
            "EmptyStream": grpc.stream_unary_rpc_method_handler(empty_stream),
        }
        server = grpc.aio.server(
            handlers=[grpc.method_handlers_generic_handler("bench.Bare", handlers)]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.stop(None)

    uvloop.run(main())


async def per_call(call: object, pid: int, seconds: float, in_flight: int = 64) -> float:
    """The server's CPU per call (µs), `in_flight` calls at a time for `seconds`."""
    count = 0
    stop = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal count
        while time.perf_counter() < stop:
            await call()  # type: ignore[operator]
            count += 1

    for _ in range(200):  # warm-up
        await call()  # type: ignore[operator]
    cpu0 = cpu_seconds(pid)
    await asyncio.gather(*(loop() for _ in range(in_flight)))
    return (cpu_seconds(pid) - cpu0) / count * 1e6


async def call_table(target: str, port: int, server_pid: int, quick: bool, health: object) -> dict:
    """Server CPU per call (µs, 64 in flight): a bare grpc.aio server's trivial unary
    call and the same made request-streaming, beside this server's health Check (no
    token) and GetMyProfile (a rep's token, a unary call through the guard). Rounds
    alternate the calls; each figure is the median of its rounds, and each call is also
    given over the bare unary call."""
    bare = subprocess.Popen(
        [sys.executable, __file__, "--bare-server"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        bare_port = int(bare.stdout.readline())  # type: ignore[union-attr]
        options = [("grpc.use_local_subchannel_pool", 1)]
        bare_channel = grpc.aio.insecure_channel(f"127.0.0.1:{bare_port}", options=options)
        rep_channel = grpc.aio.insecure_channel(target, options=options)
        unary = bare_channel.unary_unary(BARE_UNARY)
        streaming = bare_channel.stream_unary(BARE_STREAM)
        profile = cgrpc.RepConsoleServiceStub(rep_channel).GetMyProfile
        check = health.Check  # type: ignore[attr-defined]
        calls = {
            "bare_unary": (lambda: unary(b""), bare.pid),
            "bare_request_streaming": (lambda: streaming(iter((b"",))), bare.pid),
            "health_check": (lambda: check(health_pb2.HealthCheckRequest()), server_pid),
            "get_my_profile": (
                lambda: profile(cpb.GetMyProfileRequest(), metadata=auth(rep_token(0))),
                server_pid,
            ),
        }
        rounds: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(2 if quick else 3):
            for name, (call, pid) in calls.items():
                rounds[name].append(await per_call(call, pid, 1.5 if quick else 3.0))
        await bare_channel.close()
        await rep_channel.close()
    finally:
        bare.stdin.close()  # type: ignore[union-attr]
        bare.wait(timeout=30)
    table = {name: round(statistics.median(v), 1) for name, v in rounds.items()}
    base = table["bare_unary"]
    return {
        "us": table,
        "over_bare_unary": {name: round(v / base, 2) for name, v in table.items()},
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(port: int, n: int, quick: bool, desk_file: Path, server_pid: int) -> dict:
    target = f"127.0.0.1:{port}"
    own_connection = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=own_connection) for _ in range(CHANNELS)]
    portal = grpc.aio.insecure_channel(target, options=own_connection)  # a client of its own
    intake = igrpc.IntakeServiceStub(portal)
    health = health_pb2_grpc.HealthStub(portal)
    consoles = Consoles(channels, n)
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in consoles.ready)), 60)
    await asyncio.sleep(0.5)
    request_seq = 0

    def request(i: int) -> ipb.StartSessionRequest:
        nonlocal request_seq
        request_seq += 1
        return ipb.StartSessionRequest(
            request_id=f"b{request_seq}", customer=pb.Customer(name="bench"), issue_type_id=f"i{i}"
        )

    async def start(i: int) -> None:
        await intake.StartSession(request(i), metadata=auth(INTAKE))

    # warm-up
    for _ in range(200):
        await health.Check(health_pb2.HealthCheckRequest())
    for i in range(20):
        await start(i)
        await consoles.answer(i, await consoles.offers[i].get())

    samples = 500 if quick else 3000
    floor = []
    for _ in range(samples):
        t0 = time.perf_counter()
        await health.Check(health_pb2.HealthCheckRequest())
        floor.append(time.perf_counter() - t0)

    # The server's CPU for an empty unary call (health Check, 64 in flight): the
    # machine's floor, against which the CPU per lifecycle is also given.
    checks = 0
    stop_checks = time.perf_counter() + (2.0 if quick else 5.0)

    async def checker() -> None:
        nonlocal checks
        while time.perf_counter() < stop_checks:
            await health.Check(health_pb2.HealthCheckRequest())
            checks += 1

    cpu0 = cpu_seconds(server_pid)
    await asyncio.gather(*(checker() for _ in range(64)))
    floor_cpu = (cpu_seconds(server_pid) - cpu0) / checks

    calls = await call_table(target, port, server_pid, quick, health)

    offer_lat = []
    for k in range(samples // 2):
        i = (k * 7919) % n
        t0 = time.perf_counter()
        send = asyncio.create_task(start(i))
        offer = await consoles.offers[i].get()
        offer_lat.append(time.perf_counter() - t0)
        await send
        await consoles.answer(i, offer)

    # sustained lifecycles: each worker owns a disjoint set of reps
    duration = 8.0 if quick else 20.0
    workers = 64

    async def sustained(drive: Consoles | StreamConsoles | SdkConsoles, begin: Any = start) -> dict:
        done = 0
        stop_at = time.perf_counter() + duration

        async def worker(w: int) -> None:
            nonlocal done
            mine = list(range(w, n, workers))
            k = 0
            while time.perf_counter() < stop_at:
                i = mine[k % len(mine)]
                k += 1
                await begin(i)
                await drive.answer(i, await drive.offers[i].get())
                done += 1

        size0, entries0 = journal_size(desk_file)
        server0, client0 = cpu_seconds(server_pid), cpu_seconds(os.getpid())
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(workers)))
        elapsed = time.perf_counter() - t0
        server_cpu = cpu_seconds(server_pid) - server0
        client_cpu = cpu_seconds(os.getpid()) - client0
        size1, entries1 = journal_size(desk_file)
        return {
            "done": done,
            "lifecycles_per_s": round(done / elapsed, 1),
            "server_cpu_ms": round(server_cpu / done * 1e3, 3),
            "client_cpu_ms": round(client_cpu / done * 1e3, 3),
            "bytes": round((size1 - size0) / done, 1) if size1 else None,
            "entries": round((entries1 - entries0) / done, 2) if size1 else None,
        }

    unary = await sustained(consoles)
    for task in consoles.tasks:
        task.cancel()
    await asyncio.sleep(0.5)  # the Subscribe streams end before Connect streams open
    streams = StreamConsoles(channels, n)
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in streams.ready)), 60)
    stream = await sustained(streams)
    # All on streams: the starts on one Intake stream, the consoles on Connect.
    portal_stream = IntakeDriver(intake)

    async def start_on_stream(i: int) -> None:
        await portal_stream.start(request(i))

    stream_offer_lat = []
    for k in range(samples // 2):
        i = (k * 7919) % n
        t0 = time.perf_counter()
        send = asyncio.create_task(start_on_stream(i))
        offer = await streams.offers[i].get()
        stream_offer_lat.append(time.perf_counter() - t0)
        await send
        await streams.answer(i, offer)
    all_stream = await sustained(streams, start_on_stream)
    await portal_stream.close()
    await streams.close()
    await asyncio.sleep(0.5)
    # The same stream path driven through the Python client, on connections of its own.
    connections = [
        Connection(target, options=own_connection, leader_wait=60) for _ in range(CHANNELS)
    ]
    sdk_drive = SdkConsoles(connections, n)
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in sdk_drive.ready)), 120)
    sdk = await sustained(sdk_drive)
    await sdk_drive.close()
    for conn in connections:
        await conn.close()
    for ch in [*channels, portal]:
        await ch.close()
    done = unary["done"]
    p50 = statistics.median
    return {
        "reps_streaming": n,
        "team_queues": n,
        "floor_p50_us": round(p50(floor) * 1e6, 1),
        "floor_p99_us": round(percentile(floor, 99) * 1e6, 1),
        "floor_p999_us": round(percentile(floor, 99.9) * 1e6, 1),
        "floor_server_cpu_us_per_call": round(floor_cpu * 1e6, 1),
        "per_call_server_cpu_us": calls,
        "offer_p50_us": round(p50(offer_lat) * 1e6, 1),
        "offer_p99_us": round(percentile(offer_lat, 99) * 1e6, 1),
        "offer_p999_us": round(percentile(offer_lat, 99.9) * 1e6, 1),
        "server_cpu_ms_per_lifecycle": unary["server_cpu_ms"],
        "client_cpu_ms_per_lifecycle": unary["client_cpu_ms"],
        "stream_lifecycles_per_s": stream["lifecycles_per_s"],
        "stream_server_cpu_ms_per_lifecycle": stream["server_cpu_ms"],
        "stream_client_cpu_ms_per_lifecycle": stream["client_cpu_ms"],
        "sdk_lifecycles_per_s": sdk["lifecycles_per_s"],
        "sdk_server_cpu_ms_per_lifecycle": sdk["server_cpu_ms"],
        "sdk_client_cpu_ms_per_lifecycle": sdk["client_cpu_ms"],
        # The Python client's cost over the raw stubs on the same stream path, client
        # CPU per lifecycle (the portal's calls, the same in both, included).
        "sdk_to_raw_client_cpu": round(sdk["client_cpu_ms"] / stream["client_cpu_ms"], 2),
        "stream_server_cpu_in_floor_calls": round(stream["server_cpu_ms"] / 1e3 / floor_cpu, 2),
        "stream_to_unary_lifecycles": round(
            stream["lifecycles_per_s"] / unary["lifecycles_per_s"], 2
        ),
        "offer_to_floor_p50_ratio": round(p50(offer_lat) / p50(floor), 2),
        # The all-stream path: starts on the Intake stream, consoles on Connect.
        "all_stream_lifecycles_per_s": all_stream["lifecycles_per_s"],
        "all_stream_server_cpu_ms_per_lifecycle": all_stream["server_cpu_ms"],
        "all_stream_client_cpu_ms_per_lifecycle": all_stream["client_cpu_ms"],
        "all_stream_server_cpu_in_bare_unary_calls": round(
            all_stream["server_cpu_ms"] * 1e3 / calls["us"]["bare_unary"], 2
        ),
        "all_stream_to_unary_lifecycles": round(
            all_stream["lifecycles_per_s"] / unary["lifecycles_per_s"], 2
        ),
        "all_stream_offer_p50_us": round(p50(stream_offer_lat) * 1e6, 1),
        "all_stream_offer_p99_us": round(percentile(stream_offer_lat, 99) * 1e6, 1),
        "all_stream_offer_p999_us": round(percentile(stream_offer_lat, 99.9) * 1e6, 1),
        "all_stream_offer_to_floor_p50": round(p50(stream_offer_lat) / p50(floor), 2),
        "all_stream_offer_p999_to_p50": round(
            percentile(stream_offer_lat, 99.9) / p50(stream_offer_lat), 2
        ),
        "fsync_p50_us": round(fsync_p50(desk_file.parent) * 1e6, 1),
        "lifecycles_per_s": unary["lifecycles_per_s"],
        "lifecycles_in_flight": workers,
        "samples": {"floor": len(floor), "offer": len(offer_lat), "lifecycles": done},
        "journal_bytes_per_lifecycle": unary["bytes"],
        "journal_entries_per_lifecycle": unary["entries"],
    }


class Scraper(threading.Thread):
    """Fetches the metrics every SCRAPE_EVERY seconds while the benchmark runs."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.times, self.stopped = url, [], threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(SCRAPE_EVERY):
            t0 = time.perf_counter()
            with urllib.request.urlopen(self.url, timeout=30) as response:
                response.read()
            self.times.append(time.perf_counter() - t0)


async def calls_only(port: int, quick: bool, server_pid: int) -> dict:
    target = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(target)
    health = health_pb2_grpc.HealthStub(channel)
    await health.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True)
    result = await call_table(target, port, server_pid, quick, health)
    await channel.close()
    return result


def serve(
    tmp: str, reps: int, journal: bool, quick: bool, operations: bool = True, calls: bool = False
) -> dict:
    """Starts a server with the journal on or off (and statistics and metrics on or
    off), measures, stops it."""
    name = f"bench-desk-{'on' if journal else 'off'}-{'ops' if operations else 'bare'}"
    config = Path(tmp) / f"{name}.toml"
    config.write_text(desk(reps, journal, operations))
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "assigncore_server.cli",
            "serve",
            "--config",
            str(config),
            "--listen",
            "127.0.0.1:0",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "ASSIGNCORE_ADMIN_TOKEN": "bench-admin-token-0123456789"},
    )
    try:
        port = metrics = None
        deadline = time.monotonic() + 120
        while (port is None or (operations and metrics is None)) and time.monotonic() < deadline:
            line = server.stderr.readline()
            if not line and server.poll() is not None:
                sys.exit("the server exited before listening")
            found = re.search(r"listening on [\d.]+:(\d+)", line)
            port = int(found.group(1)) if found else port
            found = re.search(r"metrics on (http://[\d.]+:\d+/metrics)", line)
            metrics = found.group(1) if found else metrics
        if port is None or (operations and metrics is None):
            sys.exit("the server did not start in time")
        threading.Thread(target=server.stderr.read, daemon=True).start()  # never blocks
        desk_file = config.with_suffix(".sqlite3")
        scraper = Scraper(metrics) if metrics else None
        if scraper is not None:
            scraper.start()
        budget = 300 if quick else 900  # seconds: a hang becomes an error, not a stuck run
        work = (
            calls_only(port, quick, server.pid)
            if calls
            else run(port, reps, quick, desk_file, server.pid)
        )
        result = asyncio.run(asyncio.wait_for(work, budget))
        if scraper is not None:
            scraper.stopped.set()
            scraper.join()
            result["scrapes"] = len(scraper.times)
            result["scrape_ms_p50"] = round(statistics.median(scraper.times) * 1e3, 1)
        return result
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


def measure(tmp: str, reps: int, journal: bool, quick: bool, operations: bool = True) -> dict:
    """`serve` in a fresh process of its own, with a desk file of its own (a server
    given the file of an earlier one recovers that desk: sessions still open and reps
    still busy, which no offer reaches)."""
    args = [sys.executable, __file__, "--one", tempfile.mkdtemp(dir=tmp), "--reps", str(reps)]
    args += ["--journal"] * journal + ["--quick"] * quick + ["--bare"] * (not operations)
    done = subprocess.run(args, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="fewer samples, under 90 s")
    parser.add_argument("--reps", type=int, default=1000)
    parser.add_argument(
        "--pairs",
        type=int,
        default=2,
        help="servers with statistics and metrics off, then on, this many times in turn",
    )
    parser.add_argument("--one", metavar="TMP", help=argparse.SUPPRESS)  # see measure()
    parser.add_argument("--journal", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--calls-only",
        action="store_true",
        help="only the per-call table, on one server with the journal on",
    )
    args = parser.parse_args()
    if args.bare_server:
        bare_server()
        return
    if args.calls_only:
        with tempfile.TemporaryDirectory() as tmp:
            table = serve(tmp, args.reps, True, args.quick, operations=False, calls=True)
        print(json.dumps(table, indent=2))
        return
    if args.one:
        one = serve(args.one, args.reps, args.journal, args.quick, operations=not args.bare)
        print(json.dumps(one))
        return
    t0 = time.perf_counter()
    # Where a lifecycle's cost lies without gRPC: benchmarks/layers.py, in a process of
    # its own, before any server runs.
    layers = [sys.executable, str(Path(__file__).with_name("layers.py")), "--json"]
    layers += ["--reps", str(args.reps)]
    layers += ["--rounds", "1", "--lifecycles", "1280"] if args.quick else []
    in_process = json.loads(
        subprocess.run(layers, stdout=subprocess.PIPE, text=True, check=True).stdout
    )
    with tempfile.TemporaryDirectory() as tmp:
        off = measure(tmp, args.reps, journal=False, quick=args.quick)
        pairs = []
        for _ in range(max(1, args.pairs)):
            bare = measure(tmp, args.reps, journal=True, quick=args.quick, operations=False)
            pairs.append((bare, measure(tmp, args.reps, journal=True, quick=args.quick)))
    bare, on = pairs[0]
    for part in (off, on, bare):
        part.pop("reps_streaming"), part.pop("team_queues")
    off.pop("journal_bytes_per_lifecycle"), off.pop("journal_entries_per_lifecycle")

    def cost(key: str) -> dict:
        """The share of lifecycles/s that statistics and metrics cost (journal on): over
        all pairs (their sums), and pair by pair. Servers of a pair run back to back, and
        the pairs alternate, so a shared machine's drift falls on both alike."""
        total = 1 - sum(o[key] for _, o in pairs) / sum(b[key] for b, _ in pairs)
        return {
            "all_pairs": round(total, 3),
            "per_pair": [round(1 - o[key] / b[key], 3) for b, o in pairs],
        }

    result = {
        "reps_streaming": args.reps,
        "team_queues": args.reps,
        "in_process_layers": in_process,
        "journal_off": off,
        "journal_on": on,
        "journal_on_statistics_and_metrics_off": bare,
        "pairs_lifecycles_per_s": [
            {
                kind: {"unary": r["lifecycles_per_s"], "stream": r["stream_lifecycles_per_s"]}
                for kind, r in (("off", b), ("on", o))
            }
            for b, o in pairs
        ],
        "statistics_and_metrics_cost_unary": cost("lifecycles_per_s"),
        "statistics_and_metrics_cost_stream": cost("stream_lifecycles_per_s"),
        "journal_on_to_off_lifecycles": round(on["lifecycles_per_s"] / off["lifecycles_per_s"], 2),
        "journal_on_to_off_offer_p50": round(on["offer_p50_us"] / off["offer_p50_us"], 2),
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
