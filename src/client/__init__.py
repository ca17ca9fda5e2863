"""assigncore's Python client: the console protocol, intake, admin and supervisor calls.

    from assigncore.client import Connection, Console, OfferMade

    async with Connection("127.0.0.1:50051", token=REP_TOKEN) as conn:
        async with Console(conn) as console:
            async for event in console:
                if isinstance(event, OfferMade):
                    session = await console.answer(event.offer_id)

It imports the generated code (`assigncore.v1`) and grpc, never the server or the
engine. See README.md, "Writing a console".
"""

from .connection import Backoff, Connection, Keepalive, Tls, load_client_config
from .console import Console, QueueView
from .errors import (
    Aborted,
    AlreadyExists,
    AssignCoreError,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    NotLeader,
    OutcomeUnknown,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from .events import (
    ChatMessage,
    EligibilityChanged,
    Event,
    InvitationReceived,
    OfferMade,
    OfferRescinded,
    QueueItemAdded,
    QueueItemChanged,
    QueueItemRemoved,
    ResyncRequired,
    SessionChanged,
    SessionHandedOver,
    SessionOverdue,
    SettingsChanged,
)
from .services import Admin, Disconnected, IntakeStream, Portal, Supervisor

__all__ = [
    "Aborted",
    "Admin",
    "AlreadyExists",
    "AssignCoreError",
    "Backoff",
    "Cancelled",
    "ChatMessage",
    "Connection",
    "Console",
    "DeadlineExceeded",
    "Disconnected",
    "EligibilityChanged",
    "Event",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "InvitationReceived",
    "Keepalive",
    "NotFound",
    "NotLeader",
    "OfferMade",
    "OfferRescinded",
    "OutcomeUnknown",
    "PermissionDenied",
    "IntakeStream",
    "Portal",
    "QueueItemAdded",
    "QueueItemChanged",
    "QueueItemRemoved",
    "QueueView",
    "ResourceExhausted",
    "ResyncRequired",
    "SessionChanged",
    "SessionHandedOver",
    "SessionOverdue",
    "SettingsChanged",
    "Supervisor",
    "Tls",
    "Unauthenticated",
    "Unavailable",
    "load_client_config",
]
