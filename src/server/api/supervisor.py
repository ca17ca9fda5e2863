"""SupervisorService: statistics, sessions and interventions within a token's teams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc

from assigncore import explain
from assigncore import stats as st
from assigncore import validation as v
from assigncore.engine import Engine
from assigncore.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound
from assigncore.explain import Candidate
from assigncore.model import QueueKind, QueueRef, Session, SessionState
from assigncore.v1 import common_pb2 as pb
from assigncore.v1 import supervisor_service_pb2 as spb
from assigncore.v1 import supervisor_service_pb2_grpc as sgrpc

from ..desk.hub import StreamEnd
from ..desk.tokens import Principal, PrincipalKind
from . import convert
from .calls import OnDesk, current_principal
from .errors import abort, rpc

LIVE = (SessionState.WAITING, SessionState.OFFERED, SessionState.ACTIVE)


def counts_out(c: st.Counts) -> spb.WindowCounts:
    out = spb.WindowCounts(
        arrived=c.arrived,
        offered=c.offered,
        accepted=c.accepted,
        rejected=c.rejected,
        timed_out=c.timed_out,
        abandoned=c.abandoned,
        moved=c.moved,
        transferred=c.transferred,
    )
    if c.service_level is not None:
        out.service_level = c.service_level
    if c.average_speed_of_answer is not None:
        out.average_speed_of_answer.CopyFrom(convert.duration(c.average_speed_of_answer))
    if c.average_handle_time is not None:
        out.average_handle_time.CopyFrom(convert.duration(c.average_handle_time))
    return out


def statistics_out(s: st.DeskStatistics) -> spb.Statistics:
    return spb.Statistics(
        time=convert.timestamp(s.time),
        day_start=convert.timestamp(s.day_start),
        queues=[
            spb.QueueStatistics(
                queue=convert.queue_out(q.queue),
                waiting=q.waiting,
                longest_wait=convert.duration(q.longest_wait),
                service_level_threshold=convert.duration(q.threshold),
                last_15_minutes=counts_out(q.last_15_minutes),
                last_hour=counts_out(q.last_hour),
                today=counts_out(q.today),
                arrivals_per_minute=q.arrivals,
                overdue_after=(
                    None if q.overdue_after is None else convert.duration(q.overdue_after)
                ),
            )
            for q in s.queues
        ],
        reps=[
            spb.RepStatistics(
                rep_id=r.rep_id,
                display_name=r.name,
                state=spb.RepState.Value("REP_STATE_" + r.state.value),
                reason=r.reason,
                since=convert.timestamp(r.since),
                load=r.load,
                team_ids=r.teams,
            )
            for r in s.reps
        ],
        teams=[
            spb.TeamStatistics(
                team_id=t.team_id,
                display_name=t.name,
                staffed=t.staffed,
                available=t.available,
                busy=t.busy,
                capacity_units=t.capacity_units,
                channels=[
                    spb.ChannelUse(channel=c.channel, sessions=c.sessions, units=c.units)
                    for c in t.channels
                ],
            )
            for t in s.teams
        ],
    )


class Scope:
    """What a principal may supervise: its teams (None: everything, an admin)."""

    def __init__(self, engine: Engine, principal: Principal) -> None:
        self.engine = engine
        self.teams = None if principal.kind is PrincipalKind.ADMIN else principal.teams

    def narrowed(self, team_ids: Iterable[str]) -> frozenset[str] | None:
        """The request's teams (each in scope), or the whole scope if it names none."""
        wanted = frozenset(team_ids)
        if not wanted:
            return self.teams
        for team_id in sorted(wanted):
            self.team(team_id)
        return wanted

    def team(self, team_id: str) -> None:
        if self.teams is not None and team_id not in self.teams:
            raise NotFound("team", team_id)
        self.engine.team(team_id)

    def rep(self, rep_id: str) -> str:
        rep = self.engine.rep(rep_id)
        if self.teams is not None and self.teams.isdisjoint(rep.teams):
            raise NotFound("rep", rep_id)
        return rep.id

    def has_rep(self, rep_id: str | None) -> bool:
        if rep_id is None:
            return False
        if self.teams is None:
            return True
        rep = self.engine.state.reps.get(rep_id)
        return rep is not None and not self.teams.isdisjoint(rep.teams)

    def has_queue(self, q: QueueRef | None) -> bool:
        if q is None:
            return False
        if self.teams is None:
            return True
        if q.kind is QueueKind.TEAM:
            return q.owner in self.teams
        return q.kind is QueueKind.PERSONAL and self.has_rep(q.owner)

    def has_session(self, s: Session) -> bool:
        """In scope: an admin sees every session; a supervisor one that is, or was, in
        a queue of its teams, or is with one of its reps (an ended session has no queue
        and no owner any more: its history still says where it was)."""
        if self.teams is None:
            return True
        return (
            self.has_queue(s.queue)
            or self.has_rep(s.owner)
            or any(self.has_rep(r) for r in s.participants)
            or any(self.has_queue(m.queue) for m in s.history)
        )

    def session(self, session_id: str) -> Session:
        s = self.engine.session(session_id)
        if not self.has_session(s):
            raise NotFound("session", session_id)
        return s


def candidate_out(c: Candidate) -> spb.RoutingCandidate:
    out = spb.RoutingCandidate(
        rep_id=c.rep_id,
        reasons=[
            convert.enum_out(spb.NotOfferedReason, "NOT_OFFERED_REASON_", r) for r in c.reasons
        ],
        score=c.major,
        load=c.load,
    )
    if c.missing_skill is not None:
        skill, level = c.missing_skill
        out.missing_skill.CopyFrom(pb.RequiredSkill(skill=skill, min_level=level))
    if not c.reasons:
        out.available_since.CopyFrom(convert.timestamp(c.available_since))
    return out


class SupervisorServicer(OnDesk, sgrpc.SupervisorServiceServicer):
    SERVICE = "assigncore.v1.SupervisorService"

    def _scope(self) -> Scope:
        return Scope(self.engine, current_principal.get())

    def _scope_of_statistics(self, team_ids: Any) -> frozenset[str] | None:
        if not self.rt.settings.statistics:
            raise FailedPrecondition(
                "statistics are off on this server ([server] statistics = false)"
            )
        return self._scope().narrowed(team_ids)

    def _statistics(self, teams: frozenset[str] | None) -> spb.Statistics:
        self.rt.tick()  # timers due by now fire first: waits are as of now
        return statistics_out(self.engine.statistics(teams))

    @rpc
    async def GetStatistics(self, request: spb.GetStatisticsRequest, context: Any) -> Any:
        teams = self._scope_of_statistics(request.team_ids)
        return spb.GetStatisticsResponse(statistics=self._statistics(teams))

    async def WatchStatistics(
        self, request: spb.WatchStatisticsRequest, context: Any
    ) -> AsyncIterator[spb.WatchStatisticsResponse]:
        principal = current_principal.get()
        try:
            convert.check_times(request)
            c = v.Checks()
            interval = c(self._interval, request, "interval", 5.0, 1.0, 3600.0) or 5.0
            least = c(self._interval, request, "min_interval", 1.0, 0.1, interval)
            c.done()
            teams = self._scope_of_statistics(request.team_ids)
        except DomainError as exc:
            await abort(context, exc)
            return
        loop = asyncio.get_running_loop()
        while True:
            await self._alive(principal, context)
            yield spb.WatchStatisticsResponse(statistics=self._statistics(teams))
            sent = loop.time()
            changed = self.rt.hub.changed()
            await asyncio.sleep(least)
            await self._alive(principal, context)
            if not changed.done():
                try:
                    async with asyncio.timeout(max(0.0, sent + interval - loop.time())):
                        await asyncio.shield(changed)
                except TimeoutError:
                    pass

    @staticmethod
    def _interval(request: Any, field: str, default: float, low: float, high: float) -> float:
        if not request.HasField(field):
            return min(default, high)
        value = convert.seconds_of(getattr(request, field))
        if not low <= value <= high:
            raise InvalidArgument(field, f"must be {low:g} s to {high:g} s")
        return value

    async def _alive(self, principal: Principal, context: Any) -> None:
        """Ends the stream as console streams end: the token revoked or expired, the
        server stopping."""
        if self.rt.hub.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        record = self.rt.tokens.get(principal.token_id)
        if record is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the access token was revoked")
        elif record.expires is not None and self.rt.settings.clock() >= record.expires:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the access token expired")

    @rpc
    async def ListSessions(self, request: spb.ListSessionsRequest, context: Any) -> Any:
        scope = self._scope()
        states = {
            convert.enum_in(f"states[{i}]", pb.SessionState, "SESSION_STATE_", SessionState, x)
            for i, x in enumerate(request.states)
        } or set(LIVE)
        queue = convert.queue_in("queue", request.queue) if request.HasField("queue") else None
        rep_id = request.rep_id
        longer = None
        if request.HasField("waiting_longer_than"):
            longer = convert.seconds_of(request.waiting_longer_than)
            if longer < 0:
                raise InvalidArgument("waiting_longer_than", "must not be negative")
        size = convert.page_limit("page_size", request.page_size)
        after = convert.cursor_in("page_token", request.page_token) or 0
        now = self.engine.now
        found: list[Session] = []
        for s in sorted(self.engine.sessions(), key=lambda s: s.seq):
            if s.seq <= after or s.state not in states or not scope.has_session(s):
                continue
            if queue is not None and s.queue != queue:
                continue
            if rep_id and s.owner != rep_id and rep_id not in s.participants:
                continue
            if longer is not None and (s.queue is None or now - s.queued_time <= longer):
                continue
            if len(found) == size:
                return spb.ListSessionsResponse(
                    sessions=[self.rt.session_message(x) for x in found],
                    next_page_token=convert.cursor_out(found[-1].seq),
                )
            found.append(s)
        return spb.ListSessionsResponse(sessions=[self.rt.session_message(x) for x in found])

    @rpc
    async def InspectSession(self, request: spb.InspectSessionRequest, context: Any) -> Any:
        s = self._scope().session(request.session_id)
        return spb.InspectSessionResponse(
            session=self.rt.session_message(s),
            declines=[
                spb.Decline(
                    rep_id=d.rep_id,
                    time=convert.timestamp(d.time),
                    timed_out=d.timed_out,
                    queue=convert.queue_out(d.queue),
                )
                for d in s.declines
            ],
        )

    @rpc
    async def ExplainRouting(self, request: spb.ExplainRoutingRequest, context: Any) -> Any:
        limit = request.max_candidates or explain.DEFAULT_LISTED
        v.integer("max_candidates", limit, 1, explain.MAX_LISTED)  # before any lookup
        s = self._scope().session(request.session_id)
        self.rt.tick()  # timers due by now fire first: the step is the current one
        x = self.engine.explain_routing(s.id, limit)
        out = spb.ExplainRoutingResponse(
            session=self.rt.session_message(self.engine.session(s.id)),
            routed=x.routed,
            next_rep_id=x.best_rep_id,
            offered_to_rep_id=x.offered_to,
            candidates=[candidate_out(c) for c in x.candidates],
            members=x.members,
            eligible_candidates=x.eligible,
            reason_counts=[
                spb.ReasonCount(
                    reason=convert.enum_out(spb.NotOfferedReason, "NOT_OFFERED_REASON_", r),
                    reps=n,
                )
                for r, n in x.reason_counts
            ],
        )
        if x.decision is not None:
            d = x.decision
            out.decision.CopyFrom(
                spb.RoutingDecision(
                    step=d.step,
                    eligible_members=d.candidates,
                    score=d.major,
                    load=d.load,
                    available_since=convert.timestamp(d.available_since),
                )
            )
        return out

    @rpc(audited=True)
    async def PullSession(self, request: spb.PullSessionRequest, context: Any) -> Any:
        s = self._scope().session(request.session_id)
        me = current_principal.get().rep_id
        if not me:
            raise FailedPrecondition("this supervisor token names no rep to hand sessions to")
        self.rt.command(self.engine.pull_session, me, s.id)
        return spb.PullSessionResponse(session=self.rt.session_message(self.engine.session(s.id)))

    @rpc(audited=True)
    async def ForceTransferSession(
        self, request: spb.ForceTransferSessionRequest, context: Any
    ) -> Any:
        scope = self._scope()
        s = scope.session(request.session_id)
        target = convert.queue_in("target", request.target)
        if target.kind is QueueKind.TEAM:
            scope.team(target.owner)
        elif target.kind is QueueKind.PERSONAL:
            scope.rep(target.owner)
        self.rt.command(self.engine.force_transfer, s.id, target)
        return spb.ForceTransferSessionResponse(
            session=self.rt.session_message(self.engine.session(s.id))
        )

    @rpc(audited=True)
    async def SignOutRep(self, request: spb.SignOutRepRequest, context: Any) -> Any:
        rep_id = self._scope().rep(request.rep_id)
        self.rt.command(self.engine.disconnect, rep_id, signed_out=True)
        stream = self.rt.hub.stream_of(rep_id)
        if stream is not None:
            self.rt.hub.end(stream, StreamEnd.SIGNED_OUT, lost=False)
        return spb.SignOutRepResponse()

    @rpc(audited=True)
    async def SetRepAutoAssign(self, request: spb.SetRepAutoAssignRequest, context: Any) -> Any:
        rep_id = self._scope().rep(request.rep_id)
        self.rt.command(self.engine.switch_auto_assign, rep_id, request.auto_assign)
        return spb.SetRepAutoAssignResponse()
