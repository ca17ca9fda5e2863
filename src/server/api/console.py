"""RepConsoleService: thin translation between console messages and engine commands."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.rpc import code_pb2

from assigncore import validation as v
from assigncore.errors import DomainError, InvalidArgument, PermissionDenied, shown
from assigncore.model import QueueRef, TeamKind
from assigncore.v1 import console_service_pb2 as cpb
from assigncore.v1 import console_service_pb2_grpc as cgrpc

from ..desk.hub import ConsoleStream, Numbered, StreamEnd, stream_end_status
from . import convert, wire
from .auth import MalformedRequest
from .calls import OnDesk, current_principal
from .errors import abort, abort_with, rpc


def me() -> str:
    return current_principal.get().rep_id


# The actions a console may send on Connect: the ConnectRequest field, and the RPC it
# runs as.
ACTIONS = {
    "accept_session": "AcceptSession",
    "answer_offer": "AnswerOffer",
    "get_next_session": "GetNextSession",
    "transfer_session": "TransferSession",
    "end_session": "EndSession",
    "leave_session": "LeaveSession",
    "invite_to_session": "InviteToSession",
    "accept_invitation": "AcceptInvitation",
    "generate_session_key": "GenerateSessionKey",
    "report_presence": "ReportPresence",
    "update_my_settings": "UpdateMySettings",
    "set_favorite_team": "SetFavoriteTeam",
    "send_team_chat_message": "SendTeamChatMessage",
    "mark_team_chat_read": "MarkTeamChatRead",
}


def target_checked(request: Any) -> QueueRef:
    """A transfer's or an invitation's target and session id, every violation of both
    reported before anything is looked up."""
    c = v.Checks()
    c(v.ident, "session_id", request.session_id)
    target = c(convert.target_queue, "target", request.target)
    if target is not None:
        c(v.ident, f"target.{request.target.WhichOneof('target')}", target.owner)
    c.done()
    return target


class ConsoleServicer(OnDesk, cgrpc.RepConsoleServiceServicer):
    # ------------------------------------------------------------- the feed

    async def Subscribe(
        self, request: cpb.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        # Console streams write bytes (wire.py): events are encoded once for everyone.
        async for item in self._feed(request, context, None):
            yield item.data if type(item) is Numbered else item.SerializeToString()

    async def Connect(self, requests: Any, context: grpc.aio.ServicerContext) -> Any:
        """The feed, with the console's actions on the same stream (see the proto)."""
        first = await anext(requests, None)
        if first is None or first.WhichOneof("action") != "subscribe":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first message on Connect must be subscribe",
            )
            return
        async for item in self._feed(first.subscribe, context, requests):
            if type(item) is Numbered:
                yield wire.connect_event(item.data)
            elif type(item) is cpb.ActionResult:
                yield wire.connect_result(item)
            else:
                yield wire.connect_event(item.SerializeToString())

    async def _act(self, request: cpb.ConnectRequest) -> cpb.ActionResult:
        """One action from the console stream, run as its unary RPC runs."""
        result = cpb.ActionResult(action_id=request.action_id)
        kind = request.WhichOneof("action") or ""
        method = ACTIONS.get(kind)
        if method is None:
            why = "subscribe is the first message only" if kind else "no action given"
            result.status.code, result.status.message = code_pb2.INVALID_ARGUMENT, why
            return result
        reply, status = await getattr(ConsoleServicer, method).invoke(
            self,
            getattr(request, kind),
            None,  # type: ignore[arg-type]
        )
        if status is None:
            getattr(result, kind).CopyFrom(reply)  # type: ignore[arg-type]
        else:
            result.status.ParseFromString(status.SerializeToString())
        return result

    async def _run_actions(self, requests: Any, stream: ConsoleStream) -> None:
        """Reads the console's actions and runs them one at a time, in order; each
        result joins the stream's outbox after the events its action caused."""
        try:
            async for request in requests:
                result = await self._act(request)
                if stream.ended is not None:
                    return
                self.rt.hub.push(stream, result)
        except asyncio.CancelledError:
            raise
        except MalformedRequest:  # bytes that are not a ConnectRequest
            stream.end(StreamEnd.MALFORMED)

    async def _feed(
        self, request: cpb.SubscribeRequest, context: grpc.aio.ServicerContext, actions: Any
    ) -> Any:
        principal = current_principal.get()
        rep_id, hub = principal.rep_id, self.rt.hub
        if hub.draining or self.rt.failed:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        try:
            self.engine.rep(rep_id)
        except DomainError as exc:
            await abort(context, exc)
        feed = hub.feed(rep_id)
        # What the console missed is taken now (released events only); everything
        # released from here on goes to the stream's outbox with higher sequence
        # numbers, so the two never overlap.
        missed = feed.since(request.resume_after) if request.resume_after else []
        attached_at = feed.released
        stream = hub.attach(rep_id, principal.token_id)
        reader = None
        try:
            if not self.engine.rep(rep_id).connected:
                self.rt.command(self.engine.connect, rep_id)
            now = convert.timestamp(self.rt.clock())
            resumed = bool(request.resume_after) and missed is not None
            yield cpb.SubscribeResponse(
                # where the events that follow continue from
                sequence=request.resume_after if resumed else attached_at,
                time=now,
                welcome=cpb.Welcome(rep_id=rep_id, resumed=resumed),
            )
            if missed is None:
                oldest = feed.buffer[0].sequence if feed.buffer else attached_at
                yield cpb.SubscribeResponse(
                    sequence=attached_at,
                    time=now,
                    resync_required=cpb.ResyncRequired(oldest_held=oldest),
                )
            else:
                for msg in missed:
                    yield msg
            if actions is not None:
                reader = asyncio.get_running_loop().create_task(self._run_actions(actions, stream))
            while True:
                item = await stream.next()
                if type(item) is Numbered or type(item) is cpb.ActionResult:
                    yield item
                elif item is StreamEnd.SIGNED_OUT:
                    return
                elif item is StreamEnd.MALFORMED:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed request")
                elif item is StreamEnd.DRAINING:
                    yield cpb.SubscribeResponse(
                        sequence=feed.released,
                        time=convert.timestamp(self.rt.clock()),
                        server_draining=cpb.ServerDraining(),
                    )
                    return
                else:
                    await abort_with(context, stream_end_status(item, feed, hub.not_leader))
        finally:
            if reader is not None:
                reader.cancel()
            if hub.detach(stream) and hub is self.rt.hub:
                self.rt.lost(rep_id)

    @rpc
    async def SignOut(self, request: cpb.SignOutRequest, context: Any) -> cpb.SignOutResponse:
        self.rt.command(self.engine.disconnect, me(), signed_out=True)
        stream = self.rt.hub.stream_of(me())
        if stream is not None:
            self.rt.hub.end(stream, StreamEnd.SIGNED_OUT, lost=False)
        return cpb.SignOutResponse()

    # ------------------------------------------------------------- queues and sessions

    def _seq(self) -> int:
        """The feed sequence a read reflects: the loop runs one thing at a time, so the
        state read now includes exactly the events numbered up to here."""
        feed = self.rt.hub.feeds.get(me())
        return 0 if feed is None else feed.seq

    @rpc
    async def GetMyProfile(self, request: Any, context: Any) -> cpb.GetMyProfileResponse:
        rep = self.engine.rep(me())
        teams = self.engine.rep_teams(rep.id)
        return cpb.GetMyProfileResponse(
            profile=cpb.MyProfile(
                rep_id=rep.id,
                display_name=rep.name,
                teams=[
                    cpb.MyTeam(
                        team_id=t.id,
                        display_name=t.name,
                        embassy=t.kind is TeamKind.EMBASSY,
                        favorite=t.id in rep.favourites,
                    )
                    for t in teams
                ],
                skills=dict(rep.skills),
                auto_assign=rep.auto_assign,
                audible_alerts=rep.audible_alerts,
                permissions=convert.permissions_out(rep.permissions),
            ),
            feed_sequence=self._seq(),
        )

    @rpc
    async def ListMyQueues(self, request: Any, context: Any) -> cpb.ListMyQueuesResponse:
        return cpb.ListMyQueuesResponse(
            feed_sequence=self._seq(),
            queues=[
                cpb.QueueSummary(
                    queue=convert.queue_out(q.queue),
                    display_name=q.name,
                    waiting_sessions=q.sessions,
                    invitations=q.invitations,
                    favorite=q.favourite,
                    unread_chat=q.unread_chat,
                )
                for q in self.engine.rep_queues(me())
            ],
        )

    @rpc
    async def ListQueueItems(
        self, request: cpb.ListQueueItemsRequest, context: Any
    ) -> cpb.ListQueueItemsResponse:
        c = v.Checks()
        queue = None
        if not request.HasField("queue"):
            c.add("queue", "required")
        else:
            queue = c(convert.queue_in, "queue", request.queue)
            if queue is not None and queue.owner:
                c(v.ident, "queue.owner_id", queue.owner)
        size = c(convert.page_limit, "page_size", request.page_size)
        after = c(convert.cursor_in, "page_token", request.page_token)
        c.done()
        assert queue is not None and size is not None
        items, cursor = self.engine.queue_page(queue, after, size)  # NOT_FOUND first
        if not self.engine.can_see(self.engine.rep(me()), queue):
            raise PermissionDenied(f"you cannot see queue {queue}")
        return cpb.ListQueueItemsResponse(
            items=[convert.item_out(i) for i in items],
            next_page_token=convert.cursor_out(cursor),
            feed_sequence=self._seq(),
        )

    def _visible_session(self, session_id: str) -> Any:
        s = self.engine.session(session_id)
        if not self.engine.can_see_session(me(), s):
            raise PermissionDenied(f"you cannot see session {shown(session_id)}")
        return s

    @rpc
    async def ListMySessions(
        self, request: cpb.ListMySessionsRequest, context: Any
    ) -> cpb.ListMySessionsResponse:
        rep = self.engine.rep(me())
        sessions = [self.engine.session(i) for i in (*rep.owned, *rep.participating)]
        sessions.sort(key=lambda s: s.seq)
        return cpb.ListMySessionsResponse(
            sessions=[self.rt.session_message(s) for s in sessions],
            feed_sequence=self._seq(),
        )

    @rpc
    async def GetSession(
        self, request: cpb.GetSessionRequest, context: Any
    ) -> cpb.GetSessionResponse:
        return cpb.GetSessionResponse(
            session=self.rt.session_message(self._visible_session(request.session_id)),
            feed_sequence=self._seq(),
        )

    @rpc
    async def AcceptSession(
        self, request: cpb.AcceptSessionRequest, context: Any
    ) -> cpb.AcceptSessionResponse:
        self.rt.command(self.engine.accept_session, me(), request.session_id)
        return cpb.AcceptSessionResponse(
            session=self.rt.session_message(self.engine.session(request.session_id))
        )

    @rpc
    async def AnswerOffer(
        self, request: cpb.AnswerOfferRequest, context: Any
    ) -> cpb.AnswerOfferResponse:
        offer = self.engine.find_offer(request.offer_id)
        self.rt.command(self.engine.answer_offer, me(), request.offer_id, request.accept)
        assert offer is not None  # answer_offer raised otherwise
        return cpb.AnswerOfferResponse(
            session=self.rt.session_message(self.engine.session(offer.session_id))
        )

    @rpc
    async def GetNextSession(self, request: Any, context: Any) -> cpb.GetNextSessionResponse:
        taken = self.rt.command(self.engine.get_next, me()).value
        if taken is None:
            return cpb.GetNextSessionResponse()
        return cpb.GetNextSessionResponse(session=self.rt.session_message(taken))

    @rpc
    async def TransferSession(
        self, request: cpb.TransferSessionRequest, context: Any
    ) -> cpb.TransferSessionResponse:
        target = target_checked(request)
        self.rt.command(self.engine.transfer_session, me(), request.session_id, target)
        return cpb.TransferSessionResponse(
            session=self.rt.session_message(self.engine.session(request.session_id))
        )

    @rpc
    async def EndSession(
        self, request: cpb.EndSessionRequest, context: Any
    ) -> cpb.EndSessionResponse:
        self.rt.command(self.engine.end_session, me(), request.session_id)
        return cpb.EndSessionResponse()

    @rpc
    async def LeaveSession(
        self, request: cpb.LeaveSessionRequest, context: Any
    ) -> cpb.LeaveSessionResponse:
        self.rt.command(self.engine.leave_session, me(), request.session_id)
        return cpb.LeaveSessionResponse()

    @rpc
    async def InviteToSession(
        self, request: cpb.InviteToSessionRequest, context: Any
    ) -> cpb.InviteToSessionResponse:
        target = target_checked(request)
        inv = self.rt.command(self.engine.invite, me(), request.session_id, target).value
        return cpb.InviteToSessionResponse(invitation=convert.invitation_out(inv))

    @rpc
    async def AcceptInvitation(
        self, request: cpb.AcceptInvitationRequest, context: Any
    ) -> cpb.AcceptInvitationResponse:
        session_id = self.engine.invitation(request.invitation_id).session_id
        self.rt.command(self.engine.accept_invitation, me(), request.invitation_id)
        return cpb.AcceptInvitationResponse(
            session=self.rt.session_message(self.engine.session(session_id))
        )

    @rpc
    async def GenerateSessionKey(
        self, request: cpb.GenerateSessionKeyRequest, context: Any
    ) -> cpb.GenerateSessionKeyResponse:
        ttl = convert.seconds_of(request.ttl) if request.HasField("ttl") else None
        key = self.rt.command(self.engine.generate_session_key, me(), ttl).value
        expires = self.engine.session_key_expiry(key)
        return cpb.GenerateSessionKeyResponse(
            session_key=key, expire_time=convert.timestamp(expires)
        )

    # ------------------------------------------------------------- presence, settings

    @rpc
    async def ReportPresence(
        self, request: cpb.ReportPresenceRequest, context: Any
    ) -> cpb.ReportPresenceResponse:
        action = request.action
        if action == cpb.PRESENCE_ACTION_LOCK:
            self.rt.command(self.engine.set_locked, me(), True)
        elif action == cpb.PRESENCE_ACTION_UNLOCK:
            self.rt.command(self.engine.set_locked, me(), False)
        elif action == cpb.PRESENCE_ACTION_ACTIVITY:
            self.rt.command(self.engine.report_activity, me())
        else:
            raise InvalidArgument("action", "LOCK, UNLOCK or ACTIVITY")
        return cpb.ReportPresenceResponse()

    @rpc
    async def UpdateMySettings(
        self, request: cpb.UpdateMySettingsRequest, context: Any
    ) -> cpb.UpdateMySettingsResponse:
        rep = self.rt.command(
            self.engine.update_settings,
            me(),
            auto_assign=request.auto_assign if request.HasField("auto_assign") else None,
            audible_alerts=(request.audible_alerts if request.HasField("audible_alerts") else None),
        ).value
        return cpb.UpdateMySettingsResponse(
            settings=cpb.SettingsChanged(
                auto_assign=rep.auto_assign, audible_alerts=rep.audible_alerts
            )
        )

    @rpc
    async def SetFavoriteTeam(
        self, request: cpb.SetFavoriteTeamRequest, context: Any
    ) -> cpb.SetFavoriteTeamResponse:
        self.rt.command(self.engine.set_favourite, me(), request.team_id, request.favorite)
        return cpb.SetFavoriteTeamResponse()

    # ------------------------------------------------------------- chat, search

    @rpc
    async def SendTeamChatMessage(
        self, request: cpb.SendTeamChatMessageRequest, context: Any
    ) -> cpb.SendTeamChatMessageResponse:
        msg = self.rt.command(self.engine.post_chat, me(), request.team_id, request.text).value
        return cpb.SendTeamChatMessageResponse(
            message=convert.chat_out(request.team_id, msg.seq, msg.rep_id, msg.text, msg.time)
        )

    @rpc
    async def ListTeamChatMessages(
        self, request: cpb.ListTeamChatMessagesRequest, context: Any
    ) -> cpb.ListTeamChatMessagesResponse:
        messages = self.engine.chat_messages(me(), request.team_id, 0, 1000)
        chunk, token = convert.page("", messages, request.page_size, request.page_token, 100)
        return cpb.ListTeamChatMessagesResponse(
            messages=[
                convert.chat_out(request.team_id, m.seq, m.rep_id, m.text, m.time) for m in chunk
            ],
            next_page_token=token,
            feed_sequence=self._seq(),
        )

    @rpc
    async def MarkTeamChatRead(
        self, request: cpb.MarkTeamChatReadRequest, context: Any
    ) -> cpb.MarkTeamChatReadResponse:
        self.rt.command(self.engine.mark_chat_read, me(), request.team_id)
        return cpb.MarkTeamChatReadResponse()

    @rpc
    async def SearchTransferTargets(
        self, request: cpb.SearchTransferTargetsRequest, context: Any
    ) -> cpb.SearchTransferTargetsResponse:
        teams = self.engine.search_teams(request.query)
        reps = [r for r in self.engine.search_reps(request.query) if r.id != me()]
        standard = [t for t in teams if t.kind is TeamKind.STANDARD]
        embassies = [t for t in teams if t.kind is TeamKind.EMBASSY]
        longest = max(len(standard), len(embassies), len(reps))
        window, token = convert.page(
            "", list(range(longest)), request.page_size, request.page_token
        )
        lo, hi = (window[0], window[-1] + 1) if window else (0, 0)

        def targets(items: list[Any]) -> list[cpb.TransferTarget]:
            return [cpb.TransferTarget(id=x.id, display_name=x.name) for x in items[lo:hi]]

        return cpb.SearchTransferTargetsResponse(
            teams=targets(standard),
            embassies=targets(embassies),
            reps=targets(reps),
            next_page_token=token,
        )
