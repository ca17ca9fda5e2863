"""Chaos: a real `assigncore serve` (default configuration, PYTHONFAULTHANDLER=1) under a
normal lifecycle load, while other clients misbehave beside it:

- consoles that open Subscribe or Connect and cancel at random moments (some after
  accepting an offer, some with Connect actions still on their way);
- unary calls cancelled in flight;
- HTTP/2 streams that send their headers and half a message, then hang or reset;
- connections reset with RST (SO_LINGER 0), slow readers, and garbage bytes.

At the end the process must be alive and its health SERVING, its RSS growth within
the bound below, and, after the load quiesces, the desk's invariants must hold through
the API: every rep's load is the number of active sessions it owns or shares, no
session is listed twice or owned by two reps, and every start the portal was told of
is there. Every seed is fixed, so a failing run can be run again.

    python benchmarks/chaos.py --minutes 10      # longer than CI's minute
    python benchmarks/chaos.py --json             # the figures as JSON

Run by tests/test_chaos.py for about 60 s in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from assigncore.v1 import admin_service_pb2 as apb
from assigncore.v1 import admin_service_pb2_grpc as agrpc
from assigncore.v1 import common_pb2 as pb
from assigncore.v1 import console_service_pb2 as cpb
from assigncore.v1 import console_service_pb2_grpc as cgrpc
from assigncore.v1 import intake_service_pb2 as ipb
from assigncore.v1 import intake_service_pb2_grpc as igrpc
from assigncore.v1 import supervisor_service_pb2 as spb
from assigncore.v1 import supervisor_service_pb2_grpc as sgrpc

ADMIN = "demo-admin-token-change-me"  # the embedded default desk's demo tokens
INTAKE = "demo-intake-token-change-me"
GOOD_REPS = 6  # consoles that behave
CHAOS_REPS = 8  # consoles that drop their streams
START_RATE = 40.0  # sessions a second from the portal
# RSS may grow by this much after the warm-up, plus a little per session started (ended
# sessions stay queryable for an hour).
RSS_BOUND_BYTES = 96 << 20
RSS_PER_SESSION = 16 << 10


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclass
class Figures:
    seed: int
    seconds: float = 0.0
    streams_opened: int = 0
    streams_dropped: int = 0
    connect_actions: int = 0
    calls: int = 0
    calls_cancelled: int = 0
    half_messages: int = 0
    resets: int = 0
    garbage: int = 0
    slow_readers: int = 0
    sessions_started: int = 0
    sessions_ended: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    rss_start: int = 0
    rss_end: int = 0
    violations: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["codes"] = dict(self.codes)
        return out


class Chaos:
    def __init__(self, port: int, seed: int, figures: Figures) -> None:
        self.port, self.seed, self.f = port, seed, figures
        self.address = f"127.0.0.1:{port}"
        self.acknowledged: set[str] = set()
        self.last_started = ""
        self.tokens: dict[str, str] = {}
        self.stopping = asyncio.Event()

    # ------------------------------------------------------------- set-up

    async def setup(self, channel: grpc.aio.Channel) -> None:
        admin = agrpc.AdminServiceStub(channel)
        reps = [f"good-{i}" for i in range(GOOD_REPS)] + [f"chaos-{i}" for i in range(CHAOS_REPS)]
        for rep_id in reps:
            await admin.CreateRep(
                apb.CreateRepRequest(
                    rep=apb.Rep(
                        id=rep_id,
                        display_name=rep_id,
                        team_ids=["support"],
                        skills={"printers": 5},
                        permissions=pb.PermissionProfile(max_concurrent_sessions=4),
                    )
                ),
                metadata=bearer(ADMIN),
            )
            issued = await admin.IssueAccessToken(
                apb.IssueAccessTokenRequest(kind=apb.PRINCIPAL_KIND_REP, rep_id=rep_id),
                metadata=bearer(ADMIN),
            )
            self.tokens[rep_id] = issued.secret

    def note(self, exc: BaseException) -> None:
        if isinstance(exc, grpc.aio.AioRpcError):
            code = exc.code().name
            self.f.codes[code] += 1
            details = exc.details() or ""
            if code == "UNKNOWN" or "Traceback" in details or "Error:" in details:
                self.f.violations.append(f"a reply {code}: {details[:200]}")

    # ------------------------------------------------------------- the normal load

    async def portal(self, channel: grpc.aio.Channel, rng: random.Random) -> None:
        intake = igrpc.IntakeServiceStub(channel)
        n = 0
        while not self.stopping.is_set():
            n += 1
            request = ipb.StartSessionRequest(
                request_id=f"chaos-{self.seed}-{n}",
                customer=pb.Customer(name=f"Customer {n}", company="Chaos Ltd"),
                issue_type_id="printer-jam",
            )
            try:
                reply = await intake.StartSession(request, metadata=bearer(INTAKE), timeout=10)
                self.acknowledged.add(reply.session.id)
                self.last_started = reply.session.id
                self.f.sessions_started += 1
                self.f.calls += 1
            except grpc.aio.AioRpcError as exc:
                self.note(exc)
            await asyncio.sleep(rng.expovariate(START_RATE))

    async def good_console(
        self, channel: grpc.aio.Channel, rep_id: str, rng: random.Random
    ) -> None:
        stub = cgrpc.RepConsoleServiceStub(channel)
        md = bearer(self.tokens[rep_id])
        while not self.stopping.is_set():
            feed = stub.Subscribe(cpb.SubscribeRequest(), metadata=md)
            self.f.streams_opened += 1
            try:
                async for event in feed:
                    if self.stopping.is_set():
                        break
                    if event.WhichOneof("event") != "offer_made":
                        continue
                    offer = event.offer_made
                    try:
                        await stub.AnswerOffer(
                            cpb.AnswerOfferRequest(offer_id=offer.offer_id, accept=True),
                            metadata=md,
                            timeout=10,
                        )
                        self.f.calls += 1
                    except grpc.aio.AioRpcError as exc:
                        self.note(exc)  # rescinded meanwhile: FAILED_PRECONDITION, fine
                        continue
                    asyncio.get_running_loop().create_task(
                        self.end_later(stub, md, offer.session.id, rng.uniform(0.05, 0.5))
                    )
            except grpc.aio.AioRpcError as exc:
                self.note(exc)
            finally:
                feed.cancel()
            await asyncio.sleep(0.1)

    async def end_later(self, stub: Any, md: Any, session_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await stub.EndSession(cpb.EndSessionRequest(session_id=session_id), metadata=md)
            self.f.sessions_ended += 1
            self.f.calls += 1
        except grpc.aio.AioRpcError as exc:
            self.note(exc)

    # ------------------------------------------------------------- misbehaving clients

    async def dropping_console(
        self, channel: grpc.aio.Channel, rep_id: str, rng: random.Random
    ) -> None:
        """Opens Subscribe or Connect, perhaps accepts an offer or sends an action, and
        cancels at a random moment."""
        stub = cgrpc.RepConsoleServiceStub(channel)
        md = bearer(self.tokens[rep_id])
        while not self.stopping.is_set():
            connect = rng.random() < 0.5
            life = rng.choice((0.0, 0.001, 0.01, 0.05, 0.2, 1.0))
            call = (
                stub.Connect(metadata=md)
                if connect
                else stub.Subscribe(
                    cpb.SubscribeRequest(resume_after=rng.choice((0, 0, 5, 10**6))), metadata=md
                )
            )
            self.f.streams_opened += 1
            try:
                async with asyncio.timeout(life):
                    if connect:
                        await call.write(cpb.ConnectRequest(subscribe=cpb.SubscribeRequest()))
                        for _ in range(rng.randrange(4)):  # actions, then maybe gone
                            await call.write(self.random_action(rng))
                            self.f.connect_actions += 1
                    async for message in call:
                        event = message.event if connect else message
                        if event.WhichOneof("event") != "offer_made" or rng.random() < 0.5:
                            continue
                        answer = cpb.AnswerOfferRequest(
                            offer_id=event.offer_made.offer_id, accept=rng.random() < 0.7
                        )
                        if connect:
                            await call.write(
                                cpb.ConnectRequest(action_id=str(rng.random()), answer_offer=answer)
                            )
                            self.f.connect_actions += 1
                        else:
                            answering = stub.AnswerOffer(answer, metadata=md)
                            if rng.random() < 0.3:
                                await asyncio.sleep(rng.random() * 0.002)
                                answering.cancel()
                                self.f.calls_cancelled += 1
                            else:
                                with contextlib.suppress(grpc.aio.AioRpcError):
                                    await answering
                            self.f.calls += 1
            except TimeoutError:
                pass
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                self.note(exc)
            call.cancel()
            self.f.streams_dropped += 1
            await asyncio.sleep(rng.random() * 0.05)

    @staticmethod
    def random_action(rng: random.Random) -> cpb.ConnectRequest:
        """A console action on Connect: presence, Get Next, chat, or one on a session
        that may not exist."""
        action_id = f"a{rng.random():.6f}"
        kind = rng.randrange(5)
        if kind == 0:
            presence = rng.choice([1, 2, 3])  # lock, unlock, activity
            return cpb.ConnectRequest(
                action_id=action_id, report_presence=cpb.ReportPresenceRequest(action=presence)
            )
        if kind == 1:
            return cpb.ConnectRequest(
                action_id=action_id, get_next_session=cpb.GetNextSessionRequest()
            )
        if kind == 2:
            return cpb.ConnectRequest(
                action_id=action_id,
                send_team_chat_message=cpb.SendTeamChatMessageRequest(
                    team_id="support", text="chaos"
                ),
            )
        session_id = "ses_" + "0" * 25
        if kind == 3:
            return cpb.ConnectRequest(
                action_id=action_id, end_session=cpb.EndSessionRequest(session_id=session_id)
            )
        return cpb.ConnectRequest(
            action_id=action_id, accept_session=cpb.AcceptSessionRequest(session_id=session_id)
        )

    async def cancelled_calls(self, channel: grpc.aio.Channel, rng: random.Random) -> None:
        intake = igrpc.IntakeServiceStub(channel)
        admin = agrpc.AdminServiceStub(channel)
        sup = sgrpc.SupervisorServiceStub(channel)
        n = 0
        while not self.stopping.is_set():
            n += 1
            if rng.random() < 0.3:  # an explanation, asked for and dropped, some bounds bad
                request = spb.ExplainRoutingRequest(
                    session_id=self.last_started, max_candidates=rng.choice([0, 1, -1, 9999])
                )
                call = sup.ExplainRouting(request, metadata=bearer(ADMIN))
                if rng.random() < 0.5:
                    try:
                        await call
                    except grpc.aio.AioRpcError as exc:
                        self.note(exc)
                    self.f.calls += 1
                    continue
            elif rng.random() < 0.5:
                call = intake.StartSession(
                    ipb.StartSessionRequest(
                        request_id=f"cancelled-{self.seed}-{n}",
                        customer=pb.Customer(name="Gone"),
                        support_button_id="support-button",
                    ),
                    metadata=bearer(INTAKE),
                )
            else:
                call = admin.ListReps(apb.ListRepsRequest(page_size=100), metadata=bearer(ADMIN))
            await asyncio.sleep(rng.random() * 0.003)
            call.cancel()
            self.f.calls_cancelled += 1
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await call
            await asyncio.sleep(rng.random() * 0.02)

    async def slow_reader(self, channel: grpc.aio.Channel, rng: random.Random) -> None:
        """A supervisor's statistics feed and a rep's feed read once a few seconds."""
        stub = cgrpc.RepConsoleServiceStub(channel)
        rep_id = f"chaos-{rng.randrange(CHAOS_REPS)}"
        while not self.stopping.is_set():
            feed = stub.Subscribe(cpb.SubscribeRequest(), metadata=bearer(self.tokens[rep_id]))
            self.f.slow_readers += 1
            self.f.streams_opened += 1
            try:
                async with asyncio.timeout(rng.uniform(2, 6)):
                    async for _ in feed:
                        await asyncio.sleep(rng.uniform(0.5, 2))
            except TimeoutError:
                pass
            except grpc.aio.AioRpcError as exc:
                self.note(exc)
                await asyncio.sleep(0.5)
            feed.cancel()
            self.f.streams_dropped += 1

    def raw_clients(self, rng: random.Random) -> None:
        """In a thread: half-sent messages, RST, garbage (blocking sockets)."""
        while not self.stopping.is_set():
            kind = rng.choice(("half", "half", "reset", "garbage"))
            try:
                if kind == "half":
                    self.half_message(rng)
                    self.f.half_messages += 1
                elif kind == "reset":
                    self.reset_connection(rng)
                    self.f.resets += 1
                else:
                    self.garbage_bytes(rng)
                    self.f.garbage += 1
            except OSError:
                pass  # the server closed first: that is its right
            time.sleep(rng.random() * 0.05)

    def _socket(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.settimeout(0.5)
        return sock

    @staticmethod
    def _rst(sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def half_message(self, rng: random.Random) -> None:
        import h2.config
        import h2.connection

        sock = self._socket()
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        method, token = rng.choice(
            (
                ("/assigncore.v1.IntakeService/StartSession", INTAKE),
                ("/assigncore.v1.AdminService/CreateTeam", ADMIN),
                ("/assigncore.v1.RepConsoleService/Connect", self.tokens["chaos-0"]),
            )
        )
        conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", method),
                (":authority", "127.0.0.1"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("authorization", f"Bearer {token}"),
            ],
        )
        claimed = rng.randrange(20, 5000)
        conn.send_data(sid, b"\x00" + struct.pack(">I", claimed) + os.urandom(claimed // 3))
        sock.sendall(conn.data_to_send())
        with contextlib.suppress(OSError):
            sock.recv(65536)
        time.sleep(rng.choice((0.0, 0.05, 0.3)))
        if rng.random() < 0.5:
            self._rst(sock)
        else:
            sock.close()

    def reset_connection(self, rng: random.Random) -> None:
        sock = self._socket()
        if rng.random() < 0.7:
            sock.sendall(
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
            )
            with contextlib.suppress(OSError):
                sock.recv(65536)
        self._rst(sock)

    def garbage_bytes(self, rng: random.Random) -> None:
        sock = self._socket()
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" if rng.random() < 0.5 else b""
        sock.sendall(preface + os.urandom(rng.randrange(1, 4096)))
        with contextlib.suppress(OSError):
            sock.recv(65536)
        sock.close()

    # ------------------------------------------------------------- the end

    async def check(self, channel: grpc.aio.Channel) -> None:
        """The invariants, through the API, once the load has quiesced."""
        health = health_pb2_grpc.HealthStub(channel)
        status = (await health.Check(health_pb2.HealthCheckRequest(), timeout=10)).status
        if status != health_pb2.HealthCheckResponse.SERVING:
            self.f.violations.append(f"health is {status}, not SERVING")
        admin = agrpc.AdminServiceStub(channel)
        sup = sgrpc.SupervisorServiceStub(channel)
        loads: dict[str, int] = {}
        token = ""
        while True:
            page = await admin.ListReps(
                apb.ListRepsRequest(page_size=500, page_token=token), metadata=bearer(ADMIN)
            )
            loads.update({r.id: r.load for r in page.reps})
            token = page.next_page_token
            if not token:
                break
        seen: set[str] = set()
        expected: Counter[str] = Counter()
        token = ""
        while True:
            page = await sup.ListSessions(
                spb.ListSessionsRequest(
                    states=[pb.SESSION_STATE_ACTIVE], page_size=500, page_token=token
                ),
                metadata=bearer(ADMIN),
            )
            for s in page.sessions:
                if s.id in seen:
                    self.f.violations.append(f"session {s.id} listed twice")
                seen.add(s.id)
                if not s.owner_rep_id or s.owner_rep_id in s.participant_rep_ids:
                    self.f.violations.append(f"session {s.id}: owner {s.owner_rep_id!r} twice")
                for rep_id in {s.owner_rep_id, *s.participant_rep_ids}:
                    expected[rep_id] += 1
            token = page.next_page_token
            if not token:
                break
        for rep_id, load in loads.items():
            if load != expected.get(rep_id, 0):
                self.f.violations.append(
                    f"rep {rep_id}: load {load}, but {expected.get(rep_id, 0)} active sessions"
                )
        intake = igrpc.IntakeServiceStub(channel)
        missing = 0
        for session_id in sorted(self.acknowledged):
            try:
                await intake.GetSessionStatus(
                    ipb.GetSessionStatusRequest(session_id=session_id), metadata=bearer(INTAKE)
                )
            except grpc.aio.AioRpcError as exc:
                missing += 1
                if missing <= 5:
                    self.f.violations.append(f"acknowledged {session_id}: {exc.code().name}")
        if missing > 5:
            self.f.violations.append(f"{missing} acknowledged starts missing in all")


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_serving(address: str, proc: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode} while starting")
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError("the server did not become SERVING")


async def drive(port: int, seed: int, seconds: float, proc: subprocess.Popen[bytes]) -> Figures:
    f = Figures(seed)
    chaos = Chaos(port, seed, f)
    await wait_serving(chaos.address, proc)
    started = time.monotonic()
    async with grpc.aio.insecure_channel(chaos.address) as channel:
        await chaos.setup(channel)
        rng = random.Random(seed)
        tasks = [asyncio.create_task(chaos.portal(channel, random.Random(rng.random())))]
        tasks += [
            asyncio.create_task(
                chaos.good_console(channel, f"good-{i}", random.Random(rng.random()))
            )
            for i in range(GOOD_REPS)
        ]
        # Misbehaving consoles: each on a channel of its own, so a dropped connection
        # is a real one.
        side = [grpc.aio.insecure_channel(chaos.address) for _ in range(4)]
        tasks += [
            asyncio.create_task(
                chaos.dropping_console(side[i % 4], f"chaos-{i}", random.Random(rng.random()))
            )
            for i in range(CHAOS_REPS - 1)
        ]
        tasks += [
            asyncio.create_task(chaos.cancelled_calls(side[i], random.Random(rng.random())))
            for i in range(2)
        ]
        tasks.append(asyncio.create_task(chaos.slow_reader(side[3], random.Random(rng.random()))))
        raw = [
            threading.Thread(
                target=chaos.raw_clients, args=(random.Random(rng.random()),), daemon=True
            )
            for _ in range(2)
        ]
        for thread in raw:
            thread.start()
        await asyncio.sleep(min(10.0, seconds * 0.15))  # warm-up: the desk is populated
        f.rss_start = rss(proc.pid)
        await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
        chaos.stopping.set()
        await asyncio.to_thread(lambda: [t.join(10) for t in raw])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in side:
            await c.close()
        await asyncio.sleep(2.0)  # the server sees every stream end
        f.seconds = round(time.monotonic() - started, 1)
        if proc.poll() is not None:
            f.violations.append(f"the server exited with {proc.returncode}")
            return f
        f.rss_end = rss(proc.pid)
        bound = RSS_BOUND_BYTES + RSS_PER_SESSION * f.sessions_started
        if f.rss_end - f.rss_start > bound:
            f.violations.append(
                f"RSS grew by {(f.rss_end - f.rss_start) >> 20} MiB (bound {bound >> 20} MiB)"
            )
        await chaos.check(channel)
    return f


def run(seconds: float, seed: int = 1) -> tuple[Figures, str]:
    """Runs the server and the chaos for `seconds`; the figures, and the server's
    stderr (where a crash report would be)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="assigncore-chaos-") as folder:
        env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
        log_path = os.path.join(folder, "server.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "assigncore_server.cli",
                    "serve",
                    "--listen",
                    f"127.0.0.1:{port}",
                ],
                cwd=folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                figures = asyncio.run(drive(port, seed, seconds, proc))
            finally:
                alive = proc.poll() is None
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        with open(log_path, errors="replace") as log:
            output = log.read()
    if not alive and not any("exited" in v for v in figures.violations):
        figures.violations.append(f"the server exited with {proc.returncode}")
    if "Fatal Python error" in output or "Segmentation fault" in output:
        figures.violations.append("the server crashed (see its stderr)")
    return figures, output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    figures, output = run(args.minutes * 60, args.seed)
    if args.json:
        print(json.dumps(figures.as_dict(), indent=2, sort_keys=True))
    else:
        for key, value in figures.as_dict().items():
            print(f"{key:>18}: {value}")
    if figures.violations:
        print("\n".join(output.splitlines()[-40:]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
