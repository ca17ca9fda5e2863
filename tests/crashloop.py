"""The kill -9 loop: a real server process under a concurrent load of intake, console and
admin calls, killed with SIGKILL at random moments and started again on the same desk
file, then checked through the API: every acknowledged effect is there.

Used by tests/test_crashloop.py (a few dozen cycles in CI) and benchmarks/soak.py (as
many as asked for). Checked after each restart:

- every acknowledged StartSession is there: retrying its request_id returns the same
  session (none lost, none duplicated), and no session id ever names two sessions;
- every acknowledged accept left its session ACTIVE (or ENDED, if its end was
  acknowledged too), and every acknowledged end left it ENDED;
- no session is owned twice: the reps' loads add up to the active sessions;
- every acknowledged revocation holds; every acknowledged token works;
- every acknowledged transfer is in its session's history (a move by TRANSFER);
- every acknowledged invitation of a session still active is in the team's queue;
- every acknowledged team chat message is there, in its team's chat;
- every acknowledged session key still starts a session, in its rep's personal queue.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from assigncore.v1 import admin_service_pb2 as apb
from assigncore.v1 import admin_service_pb2_grpc as agrpc
from assigncore.v1 import common_pb2 as pb
from assigncore.v1 import console_service_pb2 as cpb
from assigncore.v1 import console_service_pb2_grpc as cgrpc
from assigncore.v1 import intake_service_pb2 as ipb
from assigncore.v1 import intake_service_pb2_grpc as igrpc

ADMIN = "crash-admin-token-0123456789"
INTAKE = "crash-intake-token-0123456789"
REPS = [f"r{i}" for i in range(4)]
MAX_LIVE = 30  # sessions not ended at once (so each check can read every one)
GRACE = 30  # seconds: the reps' reconnect grace (rule 11)


def rep_token(rep: str) -> str:
    return f"crash-{rep}-token-0123456789"


# The lease settings of the failover loop: the recommended TTL (a busy machine's pauses
# do not cost the leader its lease mid-check), a standby that looks often.
FAST_LEASE = "[ha]\nlease_ttl = 2.0\nrenew_every = 0.5\npoll_every = 0.1\n"


def desk_toml(snapshot_every: int, database_url: str | None = None) -> str:
    storage = f"[storage]\nsnapshot_every = {snapshot_every}\n"
    if database_url is not None:
        storage += f'url = "{database_url}"\n' + FAST_LEASE
    parts = [
        f'[server]\nlisten = "127.0.0.1:0"\nshutdown_grace = 1\nreconnect_grace = {GRACE}\n',
        storage,
        '[[teams]]\nid = "support"\nalgorithm = "LEAST_BUSY"\noffer_timeout = 5\n',
        '[[issue_types]]\nid = "help"\nteam = "support"\n',
        f'[[tokens]]\nkind = "admin"\nsecret = "{ADMIN}"\n',
        f'[[tokens]]\nkind = "intake"\nsecret = "{INTAKE}"\n',
    ]
    for rep in REPS:
        parts.append(
            f'[[reps]]\nid = "{rep}"\nteams = ["support"]\n'
            "permissions = { max_concurrent_sessions = 3 }\n"
        )
        parts.append(f'[[tokens]]\nkind = "rep"\nrep = "{rep}"\nsecret = "{rep_token(rep)}"\n')
    return "\n".join(parts)


def md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclass
class Acknowledged:
    """What the server acknowledged, over all cycles."""

    started: dict[str, str] = field(default_factory=dict)  # request id -> session id
    accepted: set[str] = field(default_factory=set)  # session ids
    ended: set[str] = field(default_factory=set)
    revoked: set[str] = field(default_factory=set)  # token secrets
    issued: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)  # request ids sent, reply not seen
    live: set[str] = field(default_factory=set)  # sessions not known to have ended
    transferred: set[str] = field(default_factory=set)  # sessions, transfer acknowledged
    moving: set[str] = field(default_factory=set)  # a transfer sent, outcome not known
    invited: dict[str, str] = field(default_factory=dict)  # invitation id -> session id
    chat: list[str] = field(default_factory=list)  # texts of acknowledged messages
    keys: dict[str, str] = field(default_factory=dict)  # session key -> its rep
    requests: int = 0  # request ids handed out (acknowledged or not)
    checked: int = 0  # acknowledged starts checked in full so far


class Server:
    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "assigncore_server.cli", "serve", "--config", str(self.config)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                break
        else:
            raise RuntimeError(f"the server exited ({self.proc.wait()}) before listening")
        # Keep reading its log so it never blocks on a full pipe.
        stream = self.proc.stderr
        asyncio.get_running_loop().run_in_executor(None, lambda: stream.read())

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    async def leads(self) -> bool:
        """Health says SERVING: this process leads the desk."""
        if self.proc is None or self.proc.poll() is not None or not self.port:
            return False
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            except grpc.aio.AioRpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def leader_of(servers: list[Server], timeout: float = 30.0) -> Server:
    """The server that leads the desk, once one does."""
    async with asyncio.timeout(timeout):
        while True:
            for server in servers:
                if await server.leads():
                    return server
            await asyncio.sleep(0.05)


def start_request(request_id: str) -> ipb.StartSessionRequest:
    return ipb.StartSessionRequest(
        request_id=request_id,
        customer=pb.Customer(name=f"customer {request_id}"),
        issue_type_id="help",
    )


async def load(port: int, acked: Acknowledged, rng: random.Random) -> None:
    """Runs until cancelled (or the server dies): customers arrive, consoles accept and
    end sessions, an admin issues and revokes tokens."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        intake = igrpc.IntakeServiceStub(channel)
        admin = agrpc.AdminServiceStub(channel)

        async def customers() -> None:
            while True:
                if len(acked.live) + len(acked.unknown) >= MAX_LIVE:
                    await asyncio.sleep(0.01)
                    continue
                acked.requests += 1
                request_id = f"q{acked.requests}"
                acked.unknown.add(request_id)
                reply = await intake.StartSession(start_request(request_id), metadata=md(INTAKE))
                acked.unknown.discard(request_id)
                acked.started[request_id] = reply.session.id
                acked.live.add(reply.session.id)
                await asyncio.sleep(rng.random() * 0.01)

        async def console(rep: str) -> None:
            stub = cgrpc.RepConsoleServiceStub(channel)
            feed = stub.Subscribe(cpb.SubscribeRequest(), metadata=md(rep_token(rep)))
            # As a console does when it comes back: it goes on with the sessions the rep
            # still owns (their handling died with the last server). Without this, the
            # sessions accepted before a kill stay ACTIVE for good, the reps stay full,
            # and after a few cycles nothing is offered, transferred or invited.
            mine = await stub.ListMySessions(
                cpb.ListMySessionsRequest(), metadata=md(rep_token(rep))
            )
            for session in mine.sessions:
                if session.owner_rep_id == rep and session.state == pb.SESSION_STATE_ACTIVE:
                    handling = asyncio.get_running_loop().create_task(
                        after_accept(stub, rep, session.id)
                    )
                    endings.add(handling)
                    handling.add_done_callback(endings.discard)
            async for event in feed:
                if event.WhichOneof("event") != "offer_made":
                    continue
                offer = event.offer_made
                await stub.AnswerOffer(
                    cpb.AnswerOfferRequest(offer_id=offer.offer_id, accept=True),
                    metadata=md(rep_token(rep)),
                )
                acked.accepted.add(offer.session.id)
                ending = asyncio.get_running_loop().create_task(
                    after_accept(stub, rep, offer.session.id)
                )
                endings.add(ending)
                ending.add_done_callback(endings.discard)

        async def after_accept(stub: cgrpc.RepConsoleServiceStub, rep: str, sid: str) -> None:
            """The owner transfers the session back to the team (1 in 5), or invites
            the team and then ends it (1 in 5), or ends it."""
            token = md(rep_token(rep))
            await asyncio.sleep(rng.random() * 0.3)  # some are still active at the kill
            roll = rng.random()
            try:
                if roll < 0.2:
                    acked.accepted.discard(sid)  # from now on it may be waiting again
                    acked.moving.add(sid)
                    await stub.TransferSession(
                        cpb.TransferSessionRequest(
                            session_id=sid, target=pb.Target(team_id="support")
                        ),
                        metadata=token,
                    )
                    acked.moving.discard(sid)
                    acked.transferred.add(sid)
                    return
                if roll < 0.4:
                    invited = await stub.InviteToSession(
                        cpb.InviteToSessionRequest(
                            session_id=sid, target=pb.Target(team_id="support")
                        ),
                        metadata=token,
                    )
                    acked.invited[invited.invitation.id] = sid
                    await asyncio.sleep(rng.random() * 0.3)
                await stub.EndSession(cpb.EndSessionRequest(session_id=sid), metadata=token)
            except grpc.aio.AioRpcError:
                return  # the server died (or the session moved): the outcome is unknown
            acked.ended.add(sid)
            acked.live.discard(sid)

        async def chat() -> None:
            stub = cgrpc.RepConsoleServiceStub(channel)
            while True:
                text = f"message {len(acked.chat)}-{rng.random():.6f}"
                await stub.SendTeamChatMessage(
                    cpb.SendTeamChatMessageRequest(team_id="support", text=text),
                    metadata=md(rep_token(rng.choice(REPS))),
                )
                acked.chat.append(text)
                await asyncio.sleep(0.02)

        async def keys() -> None:
            stub = cgrpc.RepConsoleServiceStub(channel)
            while True:
                rep = rng.choice(REPS)
                reply = await stub.GenerateSessionKey(
                    cpb.GenerateSessionKeyRequest(), metadata=md(rep_token(rep))
                )
                acked.keys[reply.session_key] = rep
                await asyncio.sleep(0.05)

        async def tokens() -> None:
            while True:
                issued = await admin.IssueAccessToken(
                    apb.IssueAccessTokenRequest(kind=apb.PRINCIPAL_KIND_INTAKE), metadata=md(ADMIN)
                )
                acked.issued.add(issued.secret)
                if rng.random() < 0.5:
                    acked.issued.discard(issued.secret)  # revoked or not: unknown till acked
                    await admin.RevokeAccessToken(
                        apb.RevokeAccessTokenRequest(token_id=issued.access_token.token_id),
                        metadata=md(ADMIN),
                    )
                    acked.revoked.add(issued.secret)
                await asyncio.sleep(0.02)

        endings: set[asyncio.Task[None]] = set()
        tasks = [customers(), customers(), tokens(), chat(), keys()]
        tasks += [console(r) for r in REPS]
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for ending in list(endings):
                ending.cancel()
            await asyncio.gather(*endings, return_exceptions=True)


def sample(acked: Acknowledged, rng: random.Random) -> list[tuple[str, str]]:
    """The starts acknowledged since the last check, and a sample of the older ones."""
    items = list(acked.started.items())
    new, old = items[acked.checked :], items[: acked.checked]
    acked.checked = len(items)
    return rng.sample(old, min(len(old), 200)) + new


async def check(
    port: int, acked: Acknowledged, rng: random.Random, killed: float = -1e9
) -> dict[str, int]:
    """Every acknowledged effect is present (see the module's docstring). `killed` is
    when the server was killed (loop time): the reps' consoles died with it, and once
    their reconnect grace may have run out, rule 11 hands their sessions on, so an
    accepted session is then allowed back in a queue (on a starved machine a check
    once took that long)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        intake = igrpc.IntakeServiceStub(channel)
        admin = agrpc.AdminServiceStub(channel)
        # A start whose reply was lost may or may not have happened: its retry says
        # which (the same session, or a new one), so every session is known from here.
        for request_id in sorted(acked.unknown):
            reply = await intake.StartSession(start_request(request_id), metadata=md(INTAKE))
            acked.started[request_id] = reply.session.id
            acked.live.add(reply.session.id)
        acked.unknown.clear()
        ids: dict[str, str] = {}
        for request_id, session_id in sample(acked, rng):
            again = await intake.StartSession(start_request(request_id), metadata=md(INTAKE))
            assert again.session.id == session_id, f"{request_id} lost or duplicated"
        for request_id, session_id in acked.started.items():
            assert ids.setdefault(session_id, request_id) == request_id, "an id was reused"
        states: dict[str, int] = {}
        read_at: dict[str, float] = {}
        for session_id in sorted(acked.live | (acked.accepted - acked.ended)):
            status = await intake.GetSessionStatus(
                ipb.GetSessionStatusRequest(session_id=session_id), metadata=md(INTAKE)
            )
            states[session_id] = status.state
            read_at[session_id] = asyncio.get_running_loop().time()
        for sid in acked.accepted - acked.ended - acked.moving:
            # ENDED: its end may have been applied without its reply getting out.
            allowed = {pb.SESSION_STATE_ACTIVE, pb.SESSION_STATE_ENDED}
            if read_at[sid] - killed >= GRACE:  # desk time runs no faster than wall time
                allowed.add(pb.SESSION_STATE_WAITING)
            assert states[sid] in allowed, f"accepted {sid} is {states[sid]}"
        for sid in sorted(acked.ended)[-50:]:
            status = await intake.GetSessionStatus(
                ipb.GetSessionStatusRequest(session_id=sid), metadata=md(INTAKE)
            )
            assert status.state == pb.SESSION_STATE_ENDED, f"ended {sid} came back"
        reps = await admin.ListReps(apb.ListRepsRequest(page_size=500), metadata=md(ADMIN))
        active = sum(1 for s in states.values() if s == pb.SESSION_STATE_ACTIVE)
        owned = sum(r.load for r in reps.reps)  # nothing is shared in this load
        assert owned == active, f"{active} active sessions, but reps own {owned}"
        acked.live -= {sid for sid, state in states.items() if state == pb.SESSION_STATE_ENDED}
        acked.accepted -= {sid for sid, st in states.items() if st == pb.SESSION_STATE_ENDED}
        for secret in acked.revoked:
            try:
                await intake.GetSessionStatus(
                    ipb.GetSessionStatusRequest(session_id="ses_0"), metadata=md(secret)
                )
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, "a revocation was lost"
            else:
                raise AssertionError("a revoked token works again")
        for secret in list(acked.issued)[-20:]:
            try:
                await intake.GetSessionStatus(
                    ipb.GetSessionStatusRequest(session_id="ses_0"), metadata=md(secret)
                )
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND, f"issued token: {exc.details()}"
        await check_sharing(channel, acked, states)
        return {
            "sessions": len(acked.started),
            "active": active,
            "revoked": len(acked.revoked),
            "transfers": len(acked.transferred),
            "invitations": len(acked.invited),
            "chat_messages": len(acked.chat),
            "session_keys": len(acked.keys),
        }


async def check_sharing(channel: grpc.aio.Channel, acked: Acknowledged, states: dict) -> None:
    """Transfers, invitations, team chat and session keys (see the module's docstring)."""
    from assigncore.v1 import supervisor_service_pb2 as spb
    from assigncore.v1 import supervisor_service_pb2_grpc as sgrpc

    sup = sgrpc.SupervisorServiceStub(channel)
    for sid in sorted(acked.transferred)[-50:]:
        seen = await sup.InspectSession(
            spb.InspectSessionRequest(session_id=sid), metadata=md(ADMIN)
        )
        causes = [move.cause for move in seen.session.history]
        assert pb.ORIGIN_TRANSFER in causes, f"the transfer of {sid} was lost"
    console = cgrpc.RepConsoleServiceStub(channel)
    r0 = md(rep_token(REPS[0]))
    listed: set[str] = set()
    token = ""
    while True:
        page = await console.ListQueueItems(
            cpb.ListQueueItemsRequest(
                queue=pb.QueueRef(kind=pb.QUEUE_KIND_TEAM, owner_id="support"),
                page_size=500,
                page_token=token,
            ),
            metadata=r0,
        )
        listed |= {i.invitation.id for i in page.items if i.WhichOneof("item") == "invitation"}
        token = page.next_page_token
        if not token:
            break
    for invitation_id, sid in acked.invited.items():
        still = states.get(sid) == pb.SESSION_STATE_ACTIVE and sid not in acked.moving
        if still and sid not in acked.transferred:
            assert invitation_id in listed, f"invitation {invitation_id} of {sid} was lost"
    texts: set[str] = set()
    after = ""
    while True:
        page = await console.ListTeamChatMessages(
            cpb.ListTeamChatMessagesRequest(team_id="support", page_size=500, page_token=after),
            metadata=r0,
        )
        texts |= {m.text for m in page.messages}
        after = page.next_page_token
        if not after:
            break
    kept = acked.chat[-400:]  # the team keeps its newest 500
    assert set(kept) <= texts, f"{len(set(kept) - texts)} acknowledged chat messages lost"
    intake = igrpc.IntakeServiceStub(channel)
    for key, rep in sorted(acked.keys.items()):
        redeemed = await intake.StartSession(
            ipb.StartSessionRequest(
                request_id=f"key-{key}", customer=pb.Customer(name="keyed"), session_key=key
            ),
            metadata=md(INTAKE),
        )
        queue = redeemed.session.queue
        assert queue.kind == pb.QUEUE_KIND_PERSONAL and queue.owner_id == rep, key
        acked.live.add(redeemed.session.id)
    acked.keys.clear()


async def run(
    workdir: Path,
    cycles: int,
    seed: int = 1,
    snapshot_every: int = 200,
    database_url: str | None = None,
) -> dict:
    """`cycles` kill -9 cycles; returns what was checked. With `database_url` the desk
    is on PostgreSQL and served by two processes: each cycle kills the leader, the
    standby takes over (and is checked), and the killed one starts again as a standby."""
    rng = random.Random(seed)
    config = workdir / "crash-desk.toml"
    config.write_text(desk_toml(snapshot_every, database_url))
    servers = [Server(config)] + ([Server(config)] if database_url else [])
    acked = Acknowledged()
    checked: dict[str, int] = {}
    takeovers: list[float] = []
    try:
        for server in servers:
            server.start()
        leader = await leader_of(servers)
        for _ in range(cycles):
            work = asyncio.get_running_loop().create_task(load(leader.port, acked, rng))
            await asyncio.sleep(0.2 + rng.random() * 0.8)
            leader.kill()
            killed = asyncio.get_running_loop().time()
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            if database_url:
                dead = leader
                leader = await leader_of(servers)
                takeovers.append(asyncio.get_running_loop().time() - killed)
                assert leader is not dead
                dead.start()  # back, as a standby
            else:
                leader.start()
            checked = await check(leader.port, acked, rng, killed)
    finally:
        for server in servers:
            server.stop()
    if takeovers:
        takeovers.sort()
        checked["takeover_p50_s"] = round(takeovers[len(takeovers) // 2], 3)  # type: ignore[assignment]
        checked["takeover_max_s"] = round(takeovers[-1], 3)  # type: ignore[assignment]
    return {
        "cycles": cycles,
        "acknowledged_starts": len(acked.started),
        "acknowledged_accepts": len(acked.accepted),
        "acknowledged_ends": len(acked.ended),
        **checked,
    }


if __name__ == "__main__":  # pragma: no cover - see benchmarks/soak.py
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(asyncio.run(run(Path(tmp), int(os.environ.get("CYCLES", "3")))))
