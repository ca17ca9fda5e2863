"""`Portal` (intake), `Admin` and `Supervisor`: typed wrappers of the unary services.

Each takes a `Connection`, so calls carry its token, follow the leader and raise the
typed errors of `assigncore.client.errors`. The most used calls have methods of their
own; every RPC of the service is reachable with `call("MethodName", request)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import duration_pb2

from assigncore.v1 import admin_service_pb2 as apb
from assigncore.v1 import admin_service_pb2_grpc as agrpc
from assigncore.v1 import common_pb2 as pb
from assigncore.v1 import intake_service_pb2 as ipb
from assigncore.v1 import intake_service_pb2_grpc as igrpc
from assigncore.v1 import supervisor_service_pb2 as spb
from assigncore.v1 import supervisor_service_pb2_grpc as sgrpc

from .connection import Backoff, Connection
from .errors import (
    AssignCoreError,
    Cancelled,
    DeadlineExceeded,
    NotLeader,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
    from_status,
)

# Reads are safe to retry on another server; so are writes with a request_id.
READ_PREFIXES = ("Get", "List", "Search", "Inspect", "Explain")


def duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


class _Service:
    stub: Callable[[Any], Any]

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    async def call(self, method: str, request: Any, *, timeout: float | None = None) -> Any:
        """Calls any RPC of the service by name; reads are retried across servers."""
        return await self.connection.call(
            self.stub,
            method,
            request,
            timeout=timeout,
            idempotent=method.startswith(READ_PREFIXES),
        )

    async def _pages(self, method: str, request: Any, field: str) -> AsyncIterator[Any]:
        request.page_size = request.page_size or 500
        while True:
            reply = await self.call(method, request)
            for item in getattr(reply, field):
                yield item
            if not reply.next_page_token:
                return
            request.page_token = reply.next_page_token


# ------------------------------------------------------------------- intake


class Portal(_Service):
    """The customer-facing portal's calls: start, cancel and follow sessions.

    Every start and cancel carries an idempotency `request_id` made here and reused on
    every retry, so a reply lost on the way (a dropped connection, a deadline) is
    retried without starting a second session."""

    stub = igrpc.IntakeServiceStub

    def __init__(self, connection: Connection, *, attempts: int = 5) -> None:
        super().__init__(connection)
        self.attempts = attempts

    async def _idempotent(self, method: str, request: Any) -> Any:
        backoff = Backoff(initial=0.1, maximum=2.0)
        for attempt in range(1, self.attempts + 1):
            try:
                return await self.connection.call(self.stub, method, request, idempotent=True)
            except (Unavailable, DeadlineExceeded) as exc:
                if attempt == self.attempts or isinstance(exc, NotLeader):
                    raise
            await asyncio.sleep(backoff.delay())
        raise AssertionError("unreachable")

    async def start(
        self,
        customer: pb.Customer,
        *,
        issue_type: str | None = None,
        session_key: str | None = None,
        public_rep: str | None = None,
        support_button: str | None = None,
        help_link: str | None = None,
        customer_address: str = "",
        service_channel: str = "",
        preferred_rep: str = "",
        request_id: str | None = None,
    ) -> ipb.StartSessionResponse:
        """Starts a session: through at most one of issue_type, session_key, public_rep,
        support_button or help_link; with none, in the general queue. `service_channel`
        (a channel the desk declared; default: the issue type's) and `preferred_rep` (for
        a PREFERRED_REP routing step) steer its routing."""
        request = start_request(
            customer,
            issue_type=issue_type,
            session_key=session_key,
            public_rep=public_rep,
            support_button=support_button,
            help_link=help_link,
            customer_address=customer_address,
            service_channel=service_channel,
            preferred_rep=preferred_rep,
            request_id=request_id,
        )
        return await self._idempotent("StartSession", request)

    def stream(self) -> IntakeStream:
        """The same starts and cancels on one long-lived `Intake` stream (for a portal
        or gateway that starts sessions all day): `async with portal.stream() as s:
        await s.start(...)`."""
        return IntakeStream(self.connection)

    async def cancel(self, session_id: str, *, request_id: str | None = None) -> pb.Session:
        """The customer left: the session ends as abandoned."""
        request = ipb.CancelSessionRequest(
            request_id=request_id or uuid.uuid4().hex, session_id=session_id
        )
        return (await self._idempotent("CancelSession", request)).session

    async def status(self, session_id: str) -> ipb.GetSessionStatusResponse:
        return await self.call(
            "GetSessionStatus", ipb.GetSessionStatusRequest(session_id=session_id)
        )

    async def follow(
        self, session_id: str, *, every: float = 1.0
    ) -> AsyncIterator[ipb.GetSessionStatusResponse]:
        """Yields the session's status each time it changes (its state, queue or
        position), polling every `every` seconds, until the session ends."""
        last = None
        while True:
            status = await self.status(session_id)
            if status != last:
                yield status
                last = status
            if status.state == pb.SESSION_STATE_ENDED:
                return
            await asyncio.sleep(every)


def start_request(
    customer: pb.Customer,
    *,
    issue_type: str | None = None,
    session_key: str | None = None,
    public_rep: str | None = None,
    support_button: str | None = None,
    help_link: str | None = None,
    customer_address: str = "",
    service_channel: str = "",
    preferred_rep: str = "",
    request_id: str | None = None,
) -> ipb.StartSessionRequest:
    """A StartSession request (see Portal.start), with a new request id if none."""
    via = {
        "issue_type_id": issue_type,
        "session_key": session_key,
        "public_rep_id": public_rep,
        "support_button_id": support_button,
        "help_link_id": help_link,
    }
    chosen = {k: v for k, v in via.items() if v is not None}
    if len(chosen) > 1:
        raise ValueError(f"start a session one way, not {sorted(chosen)}")
    request = ipb.StartSessionRequest(
        request_id=request_id or uuid.uuid4().hex,
        customer=customer,
        customer_address=customer_address,
        service_channel=service_channel,
        preferred_rep_id=preferred_rep,
    )
    for name, value in chosen.items():
        setattr(request, name, value)
    if not chosen:
        request.undesignated.SetInParent()
    return request


class IntakeStream:
    """Starts and cancels on one `Intake` stream, many in flight: each call waits for
    the result that carries its request id. When the stream breaks (the server went
    away, another one took the desk over), it is opened again, at the leader, and every
    call without a result is sent again: the request ids make that safe (the server
    answers a call it already applied with its first result). A call's own error is
    raised to its caller; a refusal of the stream itself (a revoked token) to every
    caller waiting."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        # request id -> (the call, its caller's future), in the order sent
        self._pending: dict[str, tuple[ipb.IntakeRequest, asyncio.Future[Any]]] = {}
        self._outbox: asyncio.Queue[ipb.IntakeRequest] | None = None
        self._task: asyncio.Task[None] | None = None
        self._error: AssignCoreError | None = None
        self._closed = False

    async def __aenter__(self) -> IntakeStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, customer: pb.Customer, **how: Any) -> ipb.StartSessionResponse:
        """As Portal.start, on the stream."""
        request = start_request(customer, **how)
        return await self._call(ipb.IntakeRequest(start_session=request), "start_session")

    async def cancel(self, session_id: str, *, request_id: str | None = None) -> pb.Session:
        """As Portal.cancel, on the stream."""
        request = ipb.CancelSessionRequest(
            request_id=request_id or uuid.uuid4().hex, session_id=session_id
        )
        reply = await self._call(ipb.IntakeRequest(cancel_session=request), "cancel_session")
        return reply.session

    async def close(self) -> None:
        """Stops the stream; calls still waiting raise Cancelled."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._fail(Cancelled("the intake stream was closed"))

    async def _call(self, message: ipb.IntakeRequest, field: str) -> Any:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise Cancelled("the intake stream was closed")
        request_id = getattr(message, field).request_id
        if request_id in self._pending:
            raise ValueError(f"request id {request_id!r} is already waiting for its result")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (message, future)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        elif self._outbox is not None:
            self._outbox.put_nowait(message)
        return await future

    def _fail(self, error: AssignCoreError) -> None:
        pending, self._pending = self._pending, {}
        for _, future in pending.values():
            if not future.done():
                future.set_exception(error)

    async def _run(self) -> None:
        """Opens the stream at the leader, sends every call without a result (again),
        and reads results until the stream ends; then opens it again, unless it was
        refused for good."""

        async def attempt(channel: Any) -> None:
            outbox: asyncio.Queue[ipb.IntakeRequest] = asyncio.Queue()
            for message, _ in self._pending.values():
                outbox.put_nowait(message)
            self._outbox = outbox

            async def requests() -> AsyncIterator[ipb.IntakeRequest]:
                while True:
                    yield await outbox.get()

            stub = igrpc.IntakeServiceStub(channel)
            call = stub.Intake(requests(), metadata=self.connection.metadata())
            try:
                async for result in call:
                    self._result(result)
            finally:
                self._outbox = None
                call.cancel()
            if self._pending:  # ended cleanly with calls unanswered: open it again
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.aio.Metadata(),
                    grpc.aio.Metadata(),
                    "the intake stream ended with calls unanswered",
                )

        try:
            while self._pending and not self._closed:
                try:
                    await self.connection.at_leader(attempt, idempotent=True)
                except (Unavailable, DeadlineExceeded):
                    await asyncio.sleep(0.1)  # at_leader waited out its leader_wait
        except AssignCoreError as error:  # refused for good: every caller is told
            self._error = error
            self._fail(error)
        finally:
            self._task = None

    def _result(self, result: ipb.IntakeResponse) -> None:
        entry = self._pending.pop(result.request_id, None)
        if entry is None:
            return  # no caller waits (a result sent again after a reconnect)
        _, future = entry
        if future.done():
            return
        if result.status.code != 0:
            future.set_exception(from_status(result.status))
        else:
            future.set_result(getattr(result, result.WhichOneof("response") or "start_session"))


# ------------------------------------------------------------------- admin


class Admin(_Service):
    """The desk's directory and its tokens (an admin token)."""

    stub = agrpc.AdminServiceStub

    async def create_rep(self, rep: apb.Rep) -> apb.Rep:
        return (await self.call("CreateRep", apb.CreateRepRequest(rep=rep))).rep

    async def get_rep(self, rep_id: str) -> apb.Rep:
        return (await self.call("GetRep", apb.GetRepRequest(rep_id=rep_id))).rep

    def reps(self) -> AsyncIterator[apb.Rep]:
        return self._pages("ListReps", apb.ListRepsRequest(), "reps")

    async def delete_rep(self, rep_id: str) -> None:
        await self.call("DeleteRep", apb.DeleteRepRequest(rep_id=rep_id))

    async def create_team(self, team: apb.Team) -> apb.Team:
        return (await self.call("CreateTeam", apb.CreateTeamRequest(team=team))).team

    def teams(self) -> AsyncIterator[apb.Team]:
        return self._pages("ListTeams", apb.ListTeamsRequest(), "teams")

    async def create_issue_type(self, issue_type: apb.IssueType) -> apb.IssueType:
        request = apb.CreateIssueTypeRequest(issue_type=issue_type)
        reply = await self.call("CreateIssueType", request)
        return reply.issue_type

    # tokens

    async def issue_token(
        self,
        kind: str,
        *,
        rep_id: str = "",
        team_ids: Iterable[str] = (),
        description: str = "",
        ttl: float | None = None,
    ) -> apb.IssueAccessTokenResponse:
        """Issues a token of `kind` ("rep", "intake", "admin" or "supervisor"); the
        response's `secret` is shown only here."""
        request = apb.IssueAccessTokenRequest(
            kind=principal_kind(kind),  # type: ignore[arg-type]
            rep_id=rep_id,
            team_ids=list(team_ids),
            description=description,
        )
        if ttl is not None:
            request.ttl.CopyFrom(duration(ttl))
        return await self.call("IssueAccessToken", request)

    def tokens(self) -> AsyncIterator[apb.AccessToken]:
        return self._pages("ListAccessTokens", apb.ListAccessTokensRequest(), "access_tokens")

    async def revoke_token(self, token_id: str) -> None:
        await self.call("RevokeAccessToken", apb.RevokeAccessTokenRequest(token_id=token_id))

    async def rotate_token(
        self, token_id: str, *, overlap: float | None = None, ttl: float | None = None
    ) -> apb.RotateAccessTokenResponse:
        """Replaces a token; the old one stays accepted for `overlap` seconds (None:
        revoked at once). The response's `secret` is shown only here."""
        request = apb.RotateAccessTokenRequest(token_id=token_id)
        if overlap is not None:
            request.overlap.CopyFrom(duration(overlap))
        if ttl is not None:
            request.ttl.CopyFrom(duration(ttl))
        return await self.call("RotateAccessToken", request)


def principal_kind(kind: str) -> int:
    try:
        return int(apb.PrincipalKind.Value(f"PRINCIPAL_KIND_{kind.upper()}"))
    except ValueError:
        names = [n.removeprefix("PRINCIPAL_KIND_").lower() for n in apb.PrincipalKind.keys()]  # noqa: SIM118
        raise ValueError(f"a token kind is one of {names[1:]}") from None


# ------------------------------------------------------------------- supervisor


@dataclass(frozen=True)
class Disconnected:
    """Yielded by `Supervisor.watch_statistics` when its stream is lost: what was shown
    is stale from now on. It retries after `retry_in` seconds."""

    error: AssignCoreError | None
    retry_in: float


# Refusals that retrying cannot mend.
_FINAL = (Unauthenticated, PermissionDenied)


class Supervisor(_Service):
    """Statistics and interventions (a supervisor's or an admin's token)."""

    stub = sgrpc.SupervisorServiceStub

    async def statistics(self, team_ids: Iterable[str] = ()) -> spb.Statistics:
        reply = await self.call("GetStatistics", spb.GetStatisticsRequest(team_ids=list(team_ids)))
        return reply.statistics

    async def explain_routing(
        self, session_id: str, max_candidates: int = 0
    ) -> spb.ExplainRoutingResponse:
        """Why the session is, or is not, offered to each rep of its team (a read): at
        most `max_candidates` reps listed (0: the server's 200), every member counted."""
        request = spb.ExplainRoutingRequest(session_id=session_id, max_candidates=max_candidates)
        return await self.call("ExplainRouting", request)

    async def watch_statistics(
        self,
        team_ids: Iterable[str] = (),
        *,
        interval: float = 5.0,
        min_interval: float = 0.5,
        backoff: Backoff | None = None,
    ) -> AsyncIterator[spb.Statistics | Disconnected]:
        """Follows WatchStatistics: yields each push, and `Disconnected` as soon as the
        stream is lost, then reconnects with backoff (following the leader). Raises on
        a refusal that retrying cannot mend (token, scope, bad request)."""
        request = spb.WatchStatisticsRequest(
            team_ids=list(team_ids),
            interval=duration(interval),
            min_interval=duration(min(min_interval, interval)),
        )
        backoff = backoff or Backoff(initial=0.5, maximum=30.0)
        while True:
            error: AssignCoreError | None = None
            try:
                stub = self.stub(self.connection.channel())
                call = stub.WatchStatistics(request, metadata=self.connection.metadata())
                async for reply in call:
                    backoff.reset()
                    yield reply.statistics
            except Exception as exc:  # grpc.RpcError, mapped below
                if not hasattr(exc, "code"):
                    raise
                error = from_rpc_error(exc)
            if isinstance(error, NotLeader) and self.connection.follow(error):
                yield Disconnected(error, 0.0)
                continue
            if error is not None and (
                isinstance(error, _FINAL) or error.code.name in ("INVALID_ARGUMENT", "NOT_FOUND")
            ):
                raise error
            if len(self.connection.addresses) > 1:
                self.connection.rotate()
            delay = backoff.delay()
            yield Disconnected(error, delay)
            await asyncio.sleep(delay)

    def sessions(
        self,
        *,
        states: Iterable[int] = (),
        queue: pb.QueueRef | None = None,
        rep_id: str = "",
        waiting_longer_than: float | None = None,
    ) -> AsyncIterator[pb.Session]:
        request = spb.ListSessionsRequest(states=list(states), rep_id=rep_id)  # type: ignore[arg-type]
        if queue is not None:
            request.queue.CopyFrom(queue)
        if waiting_longer_than is not None:
            request.waiting_longer_than.CopyFrom(duration(waiting_longer_than))
        return self._pages("ListSessions", request, "sessions")

    async def inspect(self, session_id: str) -> spb.InspectSessionResponse:
        return await self.call("InspectSession", spb.InspectSessionRequest(session_id=session_id))

    async def pull(self, session_id: str) -> pb.Session:
        reply = await self.call("PullSession", spb.PullSessionRequest(session_id=session_id))
        return reply.session

    async def force_transfer(self, session_id: str, target: pb.QueueRef) -> pb.Session:
        reply = await self.call(
            "ForceTransferSession",
            spb.ForceTransferSessionRequest(session_id=session_id, target=target),
        )
        return reply.session

    async def sign_out_rep(self, rep_id: str) -> None:
        await self.call("SignOutRep", spb.SignOutRepRequest(rep_id=rep_id))

    async def set_auto_assign(self, rep_id: str, auto_assign: bool) -> None:
        await self.call(
            "SetRepAutoAssign", spb.SetRepAutoAssignRequest(rep_id=rep_id, auto_assign=auto_assign)
        )


__all__ = ["Admin", "Disconnected", "Portal", "Supervisor", "from_rpc_error"]
