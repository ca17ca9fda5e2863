"""A real server on a loopback port (port 0), a manual clock, and console helpers."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
from typing import Any

import grpc

from assigncore.v1 import admin_service_pb2_grpc as agrpc
from assigncore.v1 import common_pb2 as pb
from assigncore.v1 import console_service_pb2 as cpb
from assigncore.v1 import console_service_pb2_grpc as cgrpc
from assigncore.v1 import intake_service_pb2 as ipb
from assigncore.v1 import intake_service_pb2_grpc as igrpc
from assigncore_server import config
from assigncore_server.app import create_server

from .conftest import ManualClock

DESK = """
[server]
listen = "127.0.0.1:0"
reconnect_grace = 30
max_rule_moves = 3

[[teams]]
id = "support"
name = "Support"
algorithm = "LEAST_BUSY"
offer_timeout = 30

[[teams]]
id = "skills"
name = "Skills"
algorithm = "SKILLS_MATCH_LEAST_BUSY"

[[teams]]
id = "manual"
name = "Manual"
algorithm = "NONE"
waiting_rule = { overdue_after = 60, action = "ALERT" }

[[teams]]
id = "front"
name = "Front"
algorithm = "NONE"
waiting_rule = { overdue_after = 100, action = "TRANSFER", overflow = "team:support" }

[[teams]]
id = "partner"
name = "Partner"
kind = "EMBASSY"
algorithm = "NONE"

[[reps]]
id = "ann"
name = "Ann"
teams = ["support", "skills", "front"]
skills = { windows = 3 }
permissions = { may_opt_out = true, shown_on_public_site = true }

[[reps]]
id = "bob"
name = "Bob"
teams = ["support", "skills", "manual"]
skills = { windows = 8 }

[[reps]]
id = "cat"
name = "Cat"
teams = ["manual"]
permissions = { may_get_next = false, may_transfer = false }

[[reps]]
id = "gil"
name = "Gil"
teams = ["partner"]
permissions = { may_use_general_queue = true }

[[issue_types]]
id = "general-help"
name = "General help"
team = "support"

[[issue_types]]
id = "win"
name = "Windows"
team = "skills"
required_skills = [["windows", 5]]
priority = 2

[[issue_types]]
id = "manual-help"
name = "Manual"
team = "manual"

[[issue_types]]
id = "front-help"
name = "Front"
team = "front"

[[support_buttons]]
id = "btn-ann"
rep = "ann"

[[support_buttons]]
id = "btn-support"
team = "support"

[[help_links]]
id = "link-support"
team = "support"

[[tokens]]
kind = "admin"
secret = "test-admin-token-0123456789"

[[tokens]]
kind = "intake"
secret = "test-intake-token-0123456789"
""" + "".join(
    f"""
[[tokens]]
kind = "rep"
rep = "{r}"
secret = "test-{r}-token-0123456789"
"""
    for r in ("ann", "bob", "cat", "gil")
)

ADMIN = "test-admin-token-0123456789"
INTAKE = "test-intake-token-0123456789"


def rep_token(rep: str) -> str:
    return f"test-{rep}-token-0123456789"


def free_port() -> int:
    """A loopback port nobody listens on now (for a server in another process)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def until(condition: Any, seconds: float = 20.0) -> None:
    """Waits for a state of the server (the server runs on this loop), not for a time."""
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.002)


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


class Console:
    """A rep's console: an open Subscribe stream collecting events."""

    def __init__(
        self, live: Live, rep: str, resume_after: int = 0, token: str | None = None
    ) -> None:
        self.live, self.rep = live, rep
        self.token = token or rep_token(rep)
        self.stub = cgrpc.RepConsoleServiceStub(live.channel)
        self.events: asyncio.Queue[cpb.SubscribeResponse] = asyncio.Queue()
        self.seen: list[cpb.SubscribeResponse] = []
        self.call = self.stub.Subscribe(
            cpb.SubscribeRequest(resume_after=resume_after), metadata=auth(self.token)
        )
        self.task = asyncio.get_running_loop().create_task(self._pump())
        self.ended: grpc.StatusCode | None = None

    async def _pump(self) -> None:
        try:
            async for msg in self.call:
                self.seen.append(msg)
                await self.events.put(msg)
        except grpc.aio.AioRpcError as exc:
            self.ended = exc.code()
        except asyncio.CancelledError:
            pass

    async def next(self, kind: str, timeout: float = 5.0, **match: Any) -> Any:
        """The next event of this kind (others are skipped); its payload."""

        async def find() -> Any:
            while True:
                msg = await self.events.get()
                if msg.WhichOneof("event") == kind:
                    payload = getattr(msg, kind)
                    if all(getattr(payload, k) == val for k, val in match.items()):
                        return payload

        return await asyncio.wait_for(find(), timeout)

    async def welcome(self) -> cpb.Welcome:
        return await self.next("welcome")

    def rpc(self, method: str, request: Any) -> Any:
        return getattr(self.stub, method)(request, metadata=auth(self.token))

    async def drop(self) -> None:
        """The connection goes away without signing out; returns once the server has
        seen the stream end."""
        self.call.cancel()
        hub = self.live.server.runtime.hub
        await until(lambda: hub.stream_of(self.rep) is None)


class Live:
    def __init__(self, server: Any, port: int, clock: ManualClock) -> None:
        self.server, self.port, self.clock = server, port, clock
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.intake = igrpc.IntakeServiceStub(self.channel)
        self.admin = agrpc.AdminServiceStub(self.channel)
        self.consoles: list[Console] = []
        self._request = 0
        self.scratch: str | None = None  # a temporary directory removed on close

    async def console(self, rep: str, resume_after: int = 0, token: str | None = None) -> Console:
        c = Console(self, rep, resume_after, token)
        self.consoles.append(c)
        await c.welcome()
        return c

    async def advance(self, seconds: float) -> None:
        """Moves the manual clock and fires what is due; the events are in the feeds when
        this returns (tests then wait for them on their consoles)."""
        self.clock.tick(seconds)
        self.server.runtime.tick()

    async def start(self, token: str = INTAKE, **via: Any) -> pb.Session:
        self._request += 1
        customer = via.pop("customer", pb.Customer(name="Carol", company="ACME"))
        if not via:
            via = {"undesignated": ipb.Undesignated()}
        response = await self.intake.StartSession(
            ipb.StartSessionRequest(request_id=f"req-{self._request}", customer=customer, **via),
            metadata=auth(token),
        )
        return response.session

    async def close(self, snapshot: bool = True) -> None:
        for c in self.consoles:
            c.task.cancel()
        await self.channel.close()
        await self.server.stop(0.2, snapshot=snapshot)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


async def live_server(desk: str = DESK, clock: ManualClock | None = None, **overrides: Any) -> Live:
    """A server on a loopback port with a manual clock and a desk file in a new
    temporary directory (pass `storage_path` to reopen one, or storage_mode="memory");
    `overrides` set Settings values."""
    settings = config.parse(desk, "test desk")
    scratch = None
    if "storage_path" not in overrides:
        scratch = tempfile.mkdtemp(prefix="assigncore-test-")
        settings.storage_path = os.path.join(scratch, "desk.sqlite3")
    clock = clock or ManualClock()
    settings.clock, settings.manual_clock = clock, True
    settings.shutdown_grace = 0.2
    for name, value in overrides.items():
        setattr(settings, name, value)
    config.check(settings)
    server, port = await create_server(settings)
    await server.start()
    live = Live(server, port, clock)
    live.scratch = scratch
    return live
