"""The console's events as typed objects.

Each event of a rep's feed (`SubscribeResponse`) becomes one of the classes below, with
its feed `sequence`, the server's `time` and the fields of its payload; the protobuf
payload itself is in `raw`. `ResyncRequired` is yielded after the console has reloaded
its queues and sessions, so the caller only redraws.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from assigncore.v1 import common_pb2 as pb
from assigncore.v1 import console_service_pb2 as cpb


def _time(ts: Any) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def queue_key(queue: pb.QueueRef) -> tuple[int, str]:
    """A hashable key of a queue reference: (kind, owner id)."""
    return (queue.kind, queue.owner_id)


@dataclass(frozen=True, slots=True)
class Event:
    """One event of the rep's feed."""

    sequence: int
    time: datetime
    raw: Any = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class OfferMade(Event):
    """A session is offered to this rep: answer with `Console.answer(offer_id)`."""

    offer_id: str
    session: pb.Session
    deadline: datetime
    audible: bool


@dataclass(frozen=True, slots=True)
class OfferRescinded(Event):
    """An offer to this rep was withdrawn; `reason` is the RescindReason name without
    its prefix ("TIMED_OUT", "ACCEPTED_BY_OTHER", "LOCKED", ...)."""

    offer_id: str
    session_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class QueueItemAdded(Event):
    queue: pb.QueueRef
    item: pb.QueueItem


@dataclass(frozen=True, slots=True)
class QueueItemChanged(Event):
    queue: pb.QueueRef
    item: pb.QueueItem


@dataclass(frozen=True, slots=True)
class QueueItemRemoved(Event):
    queue: pb.QueueRef
    item_id: str


@dataclass(frozen=True, slots=True)
class SessionOverdue(Event):
    session_id: str
    queue: pb.QueueRef
    rule_moves_exhausted: bool


@dataclass(frozen=True, slots=True)
class InvitationReceived(Event):
    invitation: pb.Invitation


@dataclass(frozen=True, slots=True)
class ChatMessage(Event):
    team_id: str
    chat_sequence: int
    rep_id: str
    text: str
    posted: datetime


@dataclass(frozen=True, slots=True)
class EligibilityChanged(Event):
    """`reasons` are IneligibleReason names without their prefix ("LOCKED", ...)."""

    eligible: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SessionHandedOver(Event):
    """A session became this rep's (its owner left or was lost)."""

    session: pb.Session
    from_rep_id: str
    by_fallback: bool


@dataclass(frozen=True, slots=True)
class SessionChanged(Event):
    """A session this rep is in, or was in until now, changed (ended, moved, passed on,
    joined or left); `session` is as it is now."""

    session: pb.Session


@dataclass(frozen=True, slots=True)
class SettingsChanged(Event):
    auto_assign: bool
    audible_alerts: bool


@dataclass(frozen=True, slots=True)
class ResyncRequired(Event):
    """Events were missed and are no longer held: the console has reloaded its queues
    and sessions (`Console.queues`, `Console.sessions`) before yielding this."""

    oldest_held: int


def _name(enum: Any, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix)


def event_from(msg: cpb.SubscribeResponse) -> Event | None:
    """The typed event of a feed message; None for `welcome` and `server_draining`,
    which the console handles itself."""
    kind = msg.WhichOneof("event")
    if kind is None or kind in ("welcome", "server_draining"):
        return None
    seq, time = msg.sequence, _time(msg.time)
    p: Any = getattr(msg, kind)
    if kind == "offer_made":
        return OfferMade(seq, time, p, p.offer_id, p.session, _time(p.deadline_time), p.audible)
    if kind == "offer_rescinded":
        reason = _name(cpb.RescindReason, p.reason, "RESCIND_REASON_")
        return OfferRescinded(seq, time, p, p.offer_id, p.session_id, reason)
    if kind == "queue_item_added":
        return QueueItemAdded(seq, time, p, p.queue, p.item)
    if kind == "queue_item_changed":
        return QueueItemChanged(seq, time, p, p.queue, p.item)
    if kind == "queue_item_removed":
        return QueueItemRemoved(seq, time, p, p.queue, p.item_id)
    if kind == "session_overdue":
        return SessionOverdue(seq, time, p, p.session_id, p.queue, p.rule_moves_exhausted)
    if kind == "invitation_received":
        return InvitationReceived(seq, time, p, p.invitation)
    if kind == "chat_message":
        return ChatMessage(seq, time, p, p.team_id, p.sequence, p.rep_id, p.text, _time(p.time))
    if kind == "eligibility_changed":
        reasons = tuple(_name(cpb.IneligibleReason, r, "INELIGIBLE_REASON_") for r in p.reasons)
        return EligibilityChanged(seq, time, p, p.eligible, reasons)
    if kind == "session_handed_over":
        return SessionHandedOver(seq, time, p, p.session, p.from_rep_id, p.by_fallback)
    if kind == "session_changed":
        return SessionChanged(seq, time, p, p.session)
    if kind == "settings_changed":
        return SettingsChanged(seq, time, p, p.auto_assign, p.audible_alerts)
    if kind == "resync_required":
        return ResyncRequired(seq, time, p, p.oldest_held)
    return None  # an event kind newer than this client: skipped


def item_id(item: pb.QueueItem) -> str:
    """The id of a queue item: its session's or its invitation's."""
    return item.session.id if item.WhichOneof("item") == "session" else item.invitation.id
