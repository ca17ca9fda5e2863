"""IntakeService: the customer-facing portal's calls, idempotent by request_id."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

import grpc
from google.rpc import code_pb2, status_pb2

from assigncore import validation as v
from assigncore.errors import InvalidArgument, NotFound
from assigncore.intake import check_customer
from assigncore.v1 import intake_service_pb2 as ipb
from assigncore.v1 import intake_service_pb2_grpc as igrpc

from ..desk.durable import MAX_REQUEST_ID
from ..desk.hub import IntakeStream, StreamEnd, stream_end_status
from ..desk.tokens import PrincipalKind
from ..storage.journal import JournalError
from . import convert
from .auth import MalformedRequest
from .calls import OnDesk, current_peer, current_principal
from .errors import abort_with, rpc, unavailable


def peer_host(peer: str | None) -> str:
    """'ipv4:10.0.0.7:51234' -> 'ipv4:10.0.0.7': a portal that passes no customer address
    is counted per host, so reconnecting does not reset the count."""
    return (peer or "").rpartition(":")[0] or (peer or "")


def portal() -> str:
    """The portal a call comes from: its intake token; '' for an admin (sees all)."""
    principal = current_principal.get()
    return principal.token_id if principal.kind is PrincipalKind.INTAKE else ""


log = logging.getLogger("assigncore.server")

MAX_CUSTOMER_ADDRESS = 100
# Calls an Intake stream reads ahead of the results its portal has taken: then it stops
# reading, and HTTP/2 flow control holds the portal back.
INTAKE_READ_AHEAD = 256
# How each way of starting names its id, and the rule for it.
VIA_FIELDS = ("public_rep_id", "support_button_id", "issue_type_id", "help_link_id")


def check_start(request: ipb.StartSessionRequest) -> None:
    """Every field of a StartSession request, all violations together, before the
    request id or anything else is looked up."""
    c = v.Checks()
    if not request.request_id or len(request.request_id) > MAX_REQUEST_ID:
        c.add("request_id", f"required, at most {MAX_REQUEST_ID} characters")
    check_customer(convert.customer_in(request.customer, request.HasField("customer")), c)
    address = request.customer_address
    if address:
        if len(address) > MAX_CUSTOMER_ADDRESS:
            c.add("customer_address", f"at most {MAX_CUSTOMER_ADDRESS} characters")
        else:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                c.add("customer_address", "must be an IPv4 or IPv6 address")
    via = request.WhichOneof("via")
    if via is None:
        c.add("via", "name how the session starts")
    elif via in VIA_FIELDS:
        c(v.ident, via, getattr(request, via))
    elif via == "session_key" and len(request.session_key) > v.MAX_SESSION_KEY_LEN:
        c.add("session_key", f"at most {v.MAX_SESSION_KEY_LEN} characters")
    if request.service_channel:
        c(v.ident, "service_channel", request.service_channel)
    if request.preferred_rep_id:
        c(v.ident, "preferred_rep_id", request.preferred_rep_id)
    c.done()


class IntakeServicer(OnDesk, igrpc.IntakeServiceServicer):
    def _once(self, request: Any, produce: Callable[[], Any]) -> Any:
        """Run a mutating call once per (portal, request_id); a retry gets the first
        result. Two portals may choose the same request_id."""
        key = (portal(), request.request_id)
        done = self.rt.idempotency.lookup(key, request)
        if done is None:
            done = produce()
            self.rt.idempotency.store(key, request, done)
        return done

    def _session(self, session_id: str) -> Any:
        """A session this portal started (any session for an admin); NOT_FOUND for the
        others, exactly as for an id that does not exist."""
        s = self.engine.session(session_id)
        mine = portal()
        if mine and s.portal != mine:
            raise NotFound("session", session_id)
        return s

    @rpc(
        fields={
            "key": "session_key",
            "address": "customer_address",
            "rep_id": "public_rep_id",
            "button_id": "support_button_id",
            "link_id": "help_link_id",
        }
    )
    async def StartSession(
        self, request: ipb.StartSessionRequest, context: Any
    ) -> ipb.StartSessionResponse:
        check_start(request)
        return self._once(request, lambda: self._start(request, peer_host(current_peer.get())))

    def _start(self, request: ipb.StartSessionRequest, peer: str) -> ipb.StartSessionResponse:
        customer = convert.customer_in(request.customer, request.HasField("customer"))
        via = request.WhichOneof("via")
        e, mine = self.engine, portal()
        channel = request.service_channel or None  # unset: the issue type's, or none
        prefer = request.preferred_rep_id
        if via == "session_key":
            address = request.customer_address or peer
            outcome = self.rt.command(
                e.start_with_key, request.session_key, customer, mine, address, channel
            )
        elif via == "public_rep_id":
            outcome = self.rt.command(
                e.start_with_rep, request.public_rep_id, customer, mine, channel
            )
        elif via == "support_button_id":
            outcome = self.rt.command(
                e.start_from_button, request.support_button_id, customer, mine, channel, prefer
            )
        elif via == "issue_type_id":
            outcome = self.rt.command(
                e.start_from_issue, request.issue_type_id, customer, mine, channel, prefer
            )
        elif via == "help_link_id":
            outcome = self.rt.command(
                e.start_from_help_link, request.help_link_id, customer, mine, channel, prefer
            )
        elif via == "undesignated":
            outcome = self.rt.command(e.start_undesignated, customer, mine, channel)
        else:
            raise InvalidArgument("via", "name how the session starts")
        session = outcome.value
        return ipb.StartSessionResponse(
            session=self.rt.session_message(session),
            position=self.engine.queue_position(session.id),
        )

    @rpc
    async def CancelSession(
        self, request: ipb.CancelSessionRequest, context: Any
    ) -> ipb.CancelSessionResponse:
        def cancel() -> ipb.CancelSessionResponse:
            self._session(request.session_id)
            self.rt.command(self.engine.cancel_session, request.session_id)
            return ipb.CancelSessionResponse(
                session=self.rt.session_message(self.engine.session(request.session_id))
            )

        return self._once(request, cancel)

    @rpc
    async def GetSessionStatus(
        self, request: ipb.GetSessionStatusRequest, context: Any
    ) -> ipb.GetSessionStatusResponse:
        s = self._session(request.session_id)
        out = self.rt.session_message(s)
        return ipb.GetSessionStatusResponse(
            state=out.state,
            queue=convert.queue_out(s.queue),
            position=self.engine.queue_position(s.id),
            end_reason=out.end_reason,
        )

    # ------------------------------------------------------------- the Intake stream

    async def Intake(self, requests: Any, context: grpc.aio.ServicerContext) -> Any:
        """StartSession and CancelSession calls on one stream (see the proto). A reader
        task applies the calls in order; this generator sends their results in the same
        order, each once its journal entry is durable, so that later calls are applied
        while earlier ones wait for the disk."""
        rt, hub = self.rt, self.rt.hub
        if hub.draining or rt.failed:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        stream = IntakeStream(current_principal.get().token_id, INTAKE_READ_AHEAD)
        hub.intakes.add(stream)
        reader = asyncio.get_running_loop().create_task(self._read_intake(requests, stream))
        try:
            while True:
                if stream.results:
                    request_id, kind, reply, status, point = stream.take()
                    if point is not None:
                        try:
                            await rt.durable_at(point)
                        except JournalError:
                            reply, status = None, unavailable(rt)
                    result = ipb.IntakeResponse(request_id=request_id)
                    if status is None:
                        getattr(result, kind).CopyFrom(reply)
                    else:
                        result.status.ParseFromString(status.SerializeToString())
                    yield result
                    continue
                why = stream.ended
                if why is StreamEnd.CLOSED:
                    return
                if why is StreamEnd.MALFORMED:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed request")
                if why is StreamEnd.FAILED:
                    await context.abort(grpc.StatusCode.INTERNAL, "internal error; reconnect")
                if why is StreamEnd.DRAINING:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
                if why is not None:
                    await abort_with(context, stream_end_status(why, None, hub.not_leader))
                stream.wake.clear()
                await stream.wake.wait()
        finally:
            reader.cancel()
            hub.intakes.discard(stream)

    async def _read_intake(self, requests: Any, stream: IntakeStream) -> None:
        """Reads the portal's calls and applies each, in order, while the stream is
        open; a call read after the stream ended is not applied."""
        try:
            async for request in requests:
                while not stream.room.is_set():
                    await stream.room.wait()
                if stream.ended is not None:
                    return
                stream.push(await self._intake_call(request))
            stream.end(StreamEnd.CLOSED)
        except asyncio.CancelledError:
            raise
        except MalformedRequest:  # bytes that are not an IntakeRequest
            stream.end(StreamEnd.MALFORMED)
        except Exception:  # never leave the writer waiting on a reader that died
            log.exception("the Intake stream's reader failed")
            stream.end(StreamEnd.FAILED)

    async def _intake_call(self, request: ipb.IntakeRequest) -> tuple[Any, ...]:
        """One call of the stream, applied as its unary RPC applies it: (request id,
        response field, reply, status, what the result waits for to be durable)."""
        kind = request.WhichOneof("call")
        if kind is None:
            return "", "", None, _no_call(), None
        call = getattr(request, kind)
        method = INTAKE_CALLS[kind]
        reply, status, wait = await method.apply(self, call, None)  # type: ignore[attr-defined]
        return call.request_id, kind, reply, status, self.rt.durable_point() if wait else None


INTAKE_CALLS = {
    "start_session": IntakeServicer.StartSession,
    "cancel_session": IntakeServicer.CancelSession,
}


def _no_call() -> status_pb2.Status:
    return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="no call given")
