"""IntakeService: the customer-facing portal's calls, idempotent by request_id."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from assigncore.errors import InvalidArgument

from . import convert
from .errors import rpc
from .gen.assigncore.v1 import intake_service_pb2 as ipb
from .gen.assigncore.v1 import intake_service_pb2_grpc as igrpc
from .runtime import Runtime


def peer_host(peer: str | None) -> str:
    """'ipv4:10.0.0.7:51234' -> 'ipv4:10.0.0.7': failed session keys are counted per host,
    so reconnecting does not reset the count."""
    return (peer or "").rpartition(":")[0] or (peer or "")


class IntakeServicer(igrpc.IntakeServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.engine = runtime.engine

    def _once(self, request: Any, produce: Callable[[], Any]) -> Any:
        """Run a mutating call once per request_id; a retry gets the first result."""
        done = self.rt.idempotency.lookup(request.request_id, request)
        if done is None:
            done = produce()
            self.rt.idempotency.store(request.request_id, request, done)
        return done

    @rpc
    async def StartSession(
        self, request: ipb.StartSessionRequest, context: Any
    ) -> ipb.StartSessionResponse:
        return self._once(request, lambda: self._start(request, peer_host(context.peer())))

    def _start(self, request: ipb.StartSessionRequest, peer: str) -> ipb.StartSessionResponse:
        customer = convert.customer_in(request.customer, request.HasField("customer"))
        via = request.WhichOneof("via")
        e = self.engine
        if via == "session_key":
            # Failed keys are counted per calling portal connection.
            outcome = self.rt.command(e.start_with_key, request.session_key, customer, source=peer)
        elif via == "public_rep_id":
            outcome = self.rt.command(e.start_with_rep, request.public_rep_id, customer)
        elif via == "support_button_id":
            outcome = self.rt.command(e.start_from_button, request.support_button_id, customer)
        elif via == "issue_type_id":
            outcome = self.rt.command(e.start_from_issue, request.issue_type_id, customer)
        elif via == "help_link_id":
            outcome = self.rt.command(e.start_from_help_link, request.help_link_id, customer)
        elif via == "undesignated":
            outcome = self.rt.command(e.start_undesignated, customer)
        else:
            raise InvalidArgument("via", "name how the session starts")
        session = outcome.value
        return ipb.StartSessionResponse(
            session=convert.session_out(session), position=self.engine.queue_position(session.id)
        )

    @rpc
    async def CancelSession(
        self, request: ipb.CancelSessionRequest, context: Any
    ) -> ipb.CancelSessionResponse:
        def cancel() -> ipb.CancelSessionResponse:
            self.rt.command(self.engine.cancel_session, request.session_id)
            return ipb.CancelSessionResponse(
                session=convert.session_out(self.engine.session(request.session_id))
            )

        return self._once(request, cancel)

    @rpc
    async def GetSessionStatus(
        self, request: ipb.GetSessionStatusRequest, context: Any
    ) -> ipb.GetSessionStatusResponse:
        s = self.engine.session(request.session_id)
        out = convert.session_out(s)
        return ipb.GetSessionStatusResponse(
            state=out.state,
            queue=convert.queue_out(s.queue),
            position=self.engine.queue_position(s.id),
            end_reason=out.end_reason,
        )
