"""`Console`: a rep's console on the `Connect` stream, with the protocol handled.

    async with Console(Connection("127.0.0.1:50051", token=REP_TOKEN)) as console:
        async for event in console:
            if isinstance(event, OfferMade):
                session = await console.answer(event.offer_id)   # accept
                ...
                await console.end(session.id)

What it does for the caller:

- Events come as typed objects (`assigncore.client.events`), each exactly once and in
  feed order, across dropped connections, server restarts, failovers and token changes:
  it reconnects with backoff and full jitter and resumes with `resume_after` set to the
  last event it received.
- When the server no longer holds the missed events, it reloads the rep's queues and
  sessions, then yields `ResyncRequired`: `console.queues` and `console.sessions` are
  current again and the caller only redraws.
- Actions (`answer`, `accept`, `end`, `transfer`, `get_next`, `set_presence`, ...) are
  sent on the stream with an action id and matched with their results by id. They may
  be pipelined from many tasks. Each returns the unary RPC's response (or its main
  field) or raises the typed error (`assigncore.client.errors`) with the status code
  and decoded details of the unary RPC. An action sent before a connection dropped and
  not answered raises `OutcomeUnknown`; one made while disconnected waits and is sent
  once the console is connected again.
- It follows the leader after a takeover (NOT_LEADER), and a token assigned with
  `use_token` switches the stream over without losing an event.

`console.sessions` (the sessions the rep is in), `console.queues` (the queues it sees
with their items) and `console.offers` (offers pending for it) are kept up to date
from events and results, and reloaded on every reconnect where events may be missing.
Read events promptly: they are held in memory until the caller takes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import duration_pb2

from assigncore.v1 import common_pb2 as pb
from assigncore.v1 import console_service_pb2 as cpb
from assigncore.v1 import console_service_pb2_grpc as cgrpc

from . import events as ev
from .connection import Backoff, Connection
from .errors import (
    AssignCoreError,
    Cancelled,
    NotLeader,
    OutcomeUnknown,
    Unauthenticated,
    from_rpc_error,
    from_status,
)

# Statuses that end a console for good: reconnecting cannot mend them.
FINAL = {
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ABORTED,  # a newer console of the same rep took over
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
PRESENCE = {
    "lock": cpb.PRESENCE_ACTION_LOCK,
    "unlock": cpb.PRESENCE_ACTION_UNLOCK,
    "activity": cpb.PRESENCE_ACTION_ACTIVITY,
}


@dataclass
class QueueView:
    """A queue the rep sees, with its items by id in arrival order."""

    summary: cpb.QueueSummary
    items: dict[str, pb.QueueItem] = field(default_factory=dict)
    as_of: int = 0  # the feed sequence the last reload reflects


class _End:
    """Put on the events queue when the console ends; `error` is why, if not closed."""

    def __init__(self, error: AssignCoreError | None) -> None:
        self.error = error


@dataclass
class _Action:
    field: str
    message: cpb.ConnectRequest
    future: asyncio.Future[Any]
    sent: bool = False


def target(team_id: str | None = None, rep_id: str | None = None) -> pb.Target:
    """A transfer or invitation target: a team's queue or a rep's personal queue."""
    if (team_id is None) == (rep_id is None):
        raise ValueError("name exactly one of team_id and rep_id")
    if team_id is not None:
        return pb.Target(team_id=team_id)
    return pb.Target(rep_id=rep_id or "")


class Console:
    """A rep's console; see the module's documentation."""

    def __init__(
        self,
        connection: Connection,
        *,
        token: str | None = None,
        resume_after: int = 0,
        backoff: Backoff | None = None,
    ) -> None:
        """`token` is the rep's, if not the connection's: a gateway serving many reps'
        consoles shares one connection between them."""
        self.connection = connection
        self.token = token
        self.backoff = backoff or Backoff()
        # The last event received (yielded, or waiting to be): where a resume starts.
        self.last_sequence = resume_after
        self.rep_id = ""
        self.connected = False
        self.reconnects = 0  # streams opened after the first
        self.sessions: dict[str, pb.Session] = {}
        self.queues: dict[tuple[int, str], QueueView] = {}
        self.offers: dict[str, ev.OfferMade] = {}
        self._sessions_as_of = 0
        self._loaded = False
        self._events: asyncio.Queue[ev.Event | _End] = asyncio.Queue()
        self._actions: dict[str, _Action] = {}
        self._ids = itertools.count(1)
        self._requests: asyncio.Queue[cpb.ConnectRequest | None] | None = None
        self._call: Any = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()  # open for actions
        self._switching = False  # a reconnect was asked for: drain, then reconnect
        self._closing = False
        self._error: AssignCoreError | None = None
        self._ended = False

    # ---------------------------------------------------------------- life

    async def start(self) -> Console:
        """Opens the stream and returns once the console is connected and loaded (or
        raises why it cannot connect)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        await self._until_ready()
        return self

    async def _until_ready(self) -> None:
        """Waits until the console is open for actions; raises why it ended, if it
        ends first."""
        assert self._task is not None
        ready = asyncio.ensure_future(self._ready.wait())
        done, _ = await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
        if self._error is not None and not self._ready.is_set():
            raise self._error

    async def close(self, *, sign_out: bool = False) -> None:
        """Ends the console. With `sign_out`, the rep signs out first (its sessions are
        handed on at once); without, the server treats it as a dropped connection and
        keeps the rep's sessions for the reconnect grace period."""
        if sign_out and self.connected:
            with contextlib.suppress(AssignCoreError):
                await self.connection.call(
                    cgrpc.RepConsoleServiceStub, "SignOut", cpb.SignOutRequest(), token=self.token
                )
        self._closing = True
        self._stop_stream()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._finish(None)

    async def __aenter__(self) -> Console:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[ev.Event]:
        return self

    async def __anext__(self) -> ev.Event:
        if self._ended and self._events.empty():
            raise StopAsyncIteration
        item = await self._events.get()
        if isinstance(item, _End):
            self._ended = True
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item

    async def use_token(self, token: str) -> None:
        """Switches to a new (rotated) token: the stream reconnects with it and resumes,
        after the actions in flight are answered; no event is lost."""
        if self.token is not None:
            self.token = token
        else:
            self.connection.token = token
        await self.reconnect()

    def _token(self) -> str | None:
        return self.token or self.connection.token

    async def reconnect(self) -> None:
        """Reopens the stream (after the actions in flight got their results) and
        resumes it; returns once connected again."""
        if self._task is None:
            raise Cancelled("the console is not started")
        self._switching = True
        self._ready.clear()
        self._maybe_switch()
        await self._until_ready()

    # ---------------------------------------------------------------- the stream

    async def _run(self) -> None:
        error: AssignCoreError | None = None
        try:
            while not self._closing:
                immediate = False
                token = self._token()
                try:
                    await self._stream()
                    error = None
                except grpc.RpcError as exc:
                    error = from_rpc_error(exc)
                except AssignCoreError as exc:  # a reload call failed
                    error = exc
                self._disconnected()
                if self._closing:
                    return
                if self._switching:
                    self._switching, immediate = False, True
                elif isinstance(error, NotLeader):
                    immediate = self.connection.follow(error)
                elif isinstance(error, Unauthenticated):
                    if self._token() == token:
                        self._finish(error)
                        return
                    immediate = True
                elif error is not None and error.code in FINAL:
                    self._finish(error)
                    return
                elif len(self.connection.addresses) > 1:
                    self.connection.rotate()
                if not immediate:
                    await asyncio.sleep(self.backoff.delay())
                self.reconnects += 1
        except asyncio.CancelledError:
            if not self._closing:
                raise
        except Exception as exc:  # a bug here must not leave callers waiting forever
            self._finish(AssignCoreError(f"console failed: {exc!r}"))
            raise

    async def _stream(self) -> None:
        # A reconnect asked for before now is done by opening this stream; one asked
        # for while it is open ends it (_maybe_switch).
        self._switching = False
        requests: asyncio.Queue[cpb.ConnectRequest | None] = asyncio.Queue()
        requests.put_nowait(
            cpb.ConnectRequest(subscribe=cpb.SubscribeRequest(resume_after=self.last_sequence))
        )

        async def outgoing() -> AsyncIterator[cpb.ConnectRequest]:
            while True:
                message = await requests.get()
                if message is None:
                    return
                yield message

        stub = cgrpc.RepConsoleServiceStub(self.connection.channel())
        call = stub.Connect(outgoing(), metadata=self.connection.metadata(self.token))
        self._call = call
        try:
            await self._receive(call, requests)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the console itself is being closed
            # else the call was cancelled here, to reconnect: the stream just ends

    async def _receive(self, call: Any, requests: asyncio.Queue[cpb.ConnectRequest | None]) -> None:
        resync_pending = False
        async for response in call:
            if response.WhichOneof("message") == "result":
                self._result(response.result)
                continue
            msg = response.event
            kind = msg.WhichOneof("event")
            if kind == "welcome":
                self.rep_id = msg.welcome.rep_id
                self.connected = True
                self.backoff.reset()
                resync_pending = bool(self.last_sequence) and not msg.welcome.resumed
                if not resync_pending:
                    self.last_sequence = max(self.last_sequence, msg.sequence)
                    await self._reload(queues=not self._loaded)
                    self._open(requests)
                continue
            if kind == "resync_required":
                self.last_sequence = msg.sequence
                self.offers.clear()  # offers pending before the gap were all withdrawn
                await self._reload(queues=True)
                event = ev.event_from(msg)
                assert event is not None
                self._events.put_nowait(event)
                if resync_pending:
                    resync_pending = False
                    self._open(requests)
                continue
            if kind == "server_draining" or msg.sequence <= self.last_sequence:
                continue  # the stream ends next / already received
            event = ev.event_from(msg)
            self.last_sequence = msg.sequence
            if event is None:
                continue
            self._apply(event)
            self._events.put_nowait(event)

    def _open(self, requests: asyncio.Queue[cpb.ConnectRequest | None]) -> None:
        """The stream is ready: actions go out on it, first those that waited."""
        self._requests = requests
        for action in self._actions.values():
            if not action.sent:
                action.sent = True
                requests.put_nowait(action.message)
        if not self._switching:
            self._ready.set()

    def _stop_stream(self) -> None:
        if self._requests is not None:
            self._requests.put_nowait(None)
        if self._call is not None:
            self._call.cancel()

    def _disconnected(self) -> None:
        """The stream ended: what was sent and not answered may or may not have been
        applied; what was not sent waits for the next stream."""
        self.connected = False
        self._ready.clear()
        if self._requests is not None:
            self._requests.put_nowait(None)
        self._requests, self._call = None, None
        for action_id, action in list(self._actions.items()):
            if action.sent:
                del self._actions[action_id]
                if not action.future.done():
                    action.future.set_exception(
                        OutcomeUnknown(
                            f"the connection dropped before the result of {action.field}"
                        )
                    )

    def _finish(self, error: AssignCoreError | None) -> None:
        """The console ends: waiting actions fail, the event iterator stops."""
        if self._error is None:
            self._error = error
        self.connected = False
        for action in self._actions.values():
            if not action.future.done():
                action.future.set_exception(error or Cancelled("the console was closed"))
        self._actions.clear()
        self._events.put_nowait(_End(error))

    def _maybe_switch(self) -> None:
        """A reconnect was asked for: once nothing sent waits for a result, end the
        stream (the run loop reopens it at once)."""
        idle = not any(a.sent for a in self._actions.values())
        if self._switching and idle and self._call is not None:
            self._requests = None  # hold new actions for the next stream
            self._call.cancel()

    # ---------------------------------------------------------------- state

    async def _reload(self, *, queues: bool) -> None:
        """Reloads the rep's sessions (and queues): each part remembers the feed
        sequence it reflects, and events up to it do not change it again."""
        call = functools.partial(self.connection.call, token=self.token)
        stub = cgrpc.RepConsoleServiceStub
        mine = await call(stub, "ListMySessions", cpb.ListMySessionsRequest(), idempotent=True)
        self.sessions = {s.id: s for s in mine.sessions}
        self._sessions_as_of = mine.feed_sequence
        if queues:
            listed = await call(stub, "ListMyQueues", cpb.ListMyQueuesRequest(), idempotent=True)
            views: dict[tuple[int, str], QueueView] = {}
            for summary in listed.queues:
                view = QueueView(summary)
                token = ""
                while True:
                    page = await call(
                        stub,
                        "ListQueueItems",
                        cpb.ListQueueItemsRequest(
                            queue=summary.queue, page_size=500, page_token=token
                        ),
                        idempotent=True,
                    )
                    for item in page.items:
                        view.items[ev.item_id(item)] = item
                    view.as_of = max(view.as_of, page.feed_sequence)
                    token = page.next_page_token
                    if not token:
                        break
                views[ev.queue_key(summary.queue)] = view
            self.queues = views
            self._loaded = True

    def _queue(self, queue: pb.QueueRef) -> QueueView:
        key = ev.queue_key(queue)
        view = self.queues.get(key)
        if view is None:
            view = self.queues[key] = QueueView(cpb.QueueSummary(queue=queue))
        return view

    def _apply(self, event: ev.Event) -> None:
        if isinstance(event, ev.QueueItemAdded | ev.QueueItemChanged):
            view = self._queue(event.queue)
            if event.sequence > view.as_of:
                view.items[ev.item_id(event.item)] = event.item
        elif isinstance(event, ev.QueueItemRemoved):
            view = self._queue(event.queue)
            if event.sequence > view.as_of:
                view.items.pop(event.item_id, None)
        elif isinstance(event, ev.OfferMade):
            self.offers[event.offer_id] = event
        elif isinstance(event, ev.OfferRescinded):
            self.offers.pop(event.offer_id, None)
        elif (
            isinstance(event, ev.SessionHandedOver | ev.SessionChanged)
            and event.sequence > self._sessions_as_of
        ):
            self._mine(event.session)

    def _mine(self, session: pb.Session) -> None:
        mine = session.owner_rep_id == self.rep_id or self.rep_id in session.participant_rep_ids
        if session.id and session.state == pb.SESSION_STATE_ACTIVE and mine:
            self.sessions[session.id] = session
            return
        self.sessions.pop(session.id, None)

    def _result(self, result: cpb.ActionResult) -> None:
        action = self._actions.pop(result.action_id, None)
        if action is None:
            return  # not ours (a stale id): nothing waits for it
        if result.status.code != 0:
            error: AssignCoreError | None = from_status(result.status)
            outcome: Any = None
        else:
            error, outcome = None, getattr(result, action.field)
            self._learn(action, outcome)
        if not action.future.done():
            if error is not None:
                action.future.set_exception(error)
            else:
                action.future.set_result(outcome)
        self._maybe_switch()

    def _learn(self, action: _Action, response: Any) -> None:
        """What a successful action tells about the rep's sessions and offers."""
        request = getattr(action.message, action.field)
        name = action.field
        if name == "answer_offer":
            self.offers.pop(request.offer_id, None)
        if name in ("accept_session", "answer_offer", "get_next_session", "accept_invitation"):
            if response.HasField("session"):
                self._mine(response.session)
        elif name in ("end_session", "leave_session", "transfer_session"):
            self.sessions.pop(request.session_id, None)

    # ---------------------------------------------------------------- actions

    async def act(self, name: str, request: Any) -> Any:
        """Sends the action `name` (a ConnectRequest field, as "end_session") and returns
        its response message, or raises its typed error."""
        if self._error is not None:
            raise self._error
        if self._closing:
            raise Cancelled("the console was closed")
        action_id = str(next(self._ids))
        message = cpb.ConnectRequest(action_id=action_id, **{name: request})
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        action = _Action(name, message, future)
        self._actions[action_id] = action
        if self._requests is not None and not self._switching:
            action.sent = True
            self._requests.put_nowait(message)
        return await future

    async def answer(self, offer_id: str, accept: bool = True) -> pb.Session | None:
        """Accepts (or rejects) an offer; the accepted session, or None on a rejection."""
        reply = await self.act(
            "answer_offer", cpb.AnswerOfferRequest(offer_id=offer_id, accept=accept)
        )
        return reply.session if reply.HasField("session") else None

    async def reject(self, offer_id: str) -> None:
        await self.answer(offer_id, accept=False)

    async def accept(self, session_id: str) -> pb.Session:
        """Takes a waiting session from one of the rep's queues."""
        reply = await self.act("accept_session", cpb.AcceptSessionRequest(session_id=session_id))
        return reply.session

    async def get_next(self) -> pb.Session | None:
        """Takes the best waiting session of the rep's queues; None if none waits."""
        reply = await self.act("get_next_session", cpb.GetNextSessionRequest())
        return reply.session if reply.HasField("session") else None

    async def end(self, session_id: str) -> None:
        await self.act("end_session", cpb.EndSessionRequest(session_id=session_id))

    async def leave(self, session_id: str) -> None:
        await self.act("leave_session", cpb.LeaveSessionRequest(session_id=session_id))

    async def transfer(
        self, session_id: str, *, team_id: str | None = None, rep_id: str | None = None
    ) -> pb.Session:
        """Moves a session to a team's queue or a rep's personal queue."""
        reply = await self.act(
            "transfer_session",
            cpb.TransferSessionRequest(session_id=session_id, target=target(team_id, rep_id)),
        )
        return reply.session

    async def invite(
        self, session_id: str, *, team_id: str | None = None, rep_id: str | None = None
    ) -> pb.Invitation:
        reply = await self.act(
            "invite_to_session",
            cpb.InviteToSessionRequest(session_id=session_id, target=target(team_id, rep_id)),
        )
        return reply.invitation

    async def accept_invitation(self, invitation_id: str) -> pb.Session:
        reply = await self.act(
            "accept_invitation", cpb.AcceptInvitationRequest(invitation_id=invitation_id)
        )
        return reply.session

    async def generate_session_key(
        self, ttl_seconds: float | None = None
    ) -> cpb.GenerateSessionKeyResponse:
        request = cpb.GenerateSessionKeyRequest()
        if ttl_seconds is not None:
            request.ttl.CopyFrom(duration_pb2.Duration(seconds=int(ttl_seconds)))
        result: cpb.GenerateSessionKeyResponse = await self.act("generate_session_key", request)
        return result

    async def set_presence(self, action: str) -> None:
        """ "lock", "unlock" or "activity" (resets the idle timer)."""
        try:
            value = PRESENCE[action]
        except KeyError:
            raise ValueError(f"presence is one of {sorted(PRESENCE)}") from None
        await self.act("report_presence", cpb.ReportPresenceRequest(action=value))

    async def update_settings(
        self, *, auto_assign: bool | None = None, audible_alerts: bool | None = None
    ) -> cpb.SettingsChanged:
        request = cpb.UpdateMySettingsRequest()
        if auto_assign is not None:
            request.auto_assign = auto_assign
        if audible_alerts is not None:
            request.audible_alerts = audible_alerts
        reply = await self.act("update_my_settings", request)
        return reply.settings

    async def set_favorite(self, team_id: str, favorite: bool = True) -> None:
        await self.act(
            "set_favorite_team", cpb.SetFavoriteTeamRequest(team_id=team_id, favorite=favorite)
        )

    async def send_chat(self, team_id: str, text: str) -> cpb.ChatMessage:
        reply = await self.act(
            "send_team_chat_message", cpb.SendTeamChatMessageRequest(team_id=team_id, text=text)
        )
        return reply.message

    async def mark_chat_read(self, team_id: str) -> None:
        await self.act("mark_team_chat_read", cpb.MarkTeamChatReadRequest(team_id=team_id))

    # ---------------------------------------------------------------- reads (unary)

    async def _read(self, method: str, request: Any) -> Any:
        return await self.connection.call(
            cgrpc.RepConsoleServiceStub, method, request, idempotent=True, token=self.token
        )

    async def profile(self) -> cpb.MyProfile:
        return (await self._read("GetMyProfile", cpb.GetMyProfileRequest())).profile

    async def get_session(self, session_id: str) -> pb.Session:
        reply = await self._read("GetSession", cpb.GetSessionRequest(session_id=session_id))
        return reply.session

    async def search_targets(self, query: str) -> cpb.SearchTransferTargetsResponse:
        return await self._read(
            "SearchTransferTargets", cpb.SearchTransferTargetsRequest(query=query)
        )

    async def chat_messages(self, team_id: str) -> list[cpb.ChatMessage]:
        """The team's chat messages the server keeps, oldest first."""
        out: list[cpb.ChatMessage] = []
        token = ""
        while True:
            reply = await self._read(
                "ListTeamChatMessages",
                cpb.ListTeamChatMessagesRequest(team_id=team_id, page_size=500, page_token=token),
            )
            out.extend(reply.messages)
            token = reply.next_page_token
            if not token:
                return out
