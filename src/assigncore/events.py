"""Domain events. Every command returns the events it caused, in order; the engine also
hands every event (including those fired by timers) to its listener. A journal of these
is enough to rebuild routing state later (state = fold(events))."""

from __future__ import annotations

from dataclasses import dataclass

from .model import (
    EndReason,
    IneligibleReason,
    Origin,
    QueueRef,
    RescindReason,
)


@dataclass(frozen=True, slots=True)
class Event:
    time: float


@dataclass(frozen=True, slots=True)
class SessionQueued(Event):
    """A session entered a queue (new, transferred, moved by a rule, returned)."""

    session_id: str
    queue: QueueRef
    origin: Origin


@dataclass(frozen=True, slots=True)
class SessionDequeued(Event):
    """A session left a queue (accepted, moved, ended)."""

    session_id: str
    queue: QueueRef


@dataclass(frozen=True, slots=True)
class OfferMade(Event):
    offer_id: str
    session_id: str
    rep_id: str
    queue: QueueRef
    deadline: float
    audible: bool


@dataclass(frozen=True, slots=True)
class StepChanged(Event):
    """A waiting session moved to routing step `step` (0-based) of `steps`, passing
    over `skipped` steps that nobody signed in could match."""

    session_id: str
    queue: QueueRef
    step: int
    steps: int
    skipped: int


@dataclass(frozen=True, slots=True)
class OfferDeclined(Event):
    offer_id: str
    session_id: str
    rep_id: str
    timed_out: bool


@dataclass(frozen=True, slots=True)
class OfferRescinded(Event):
    offer_id: str
    session_id: str
    rep_id: str
    reason: RescindReason


@dataclass(frozen=True, slots=True)
class SessionAccepted(Event):
    session_id: str
    rep_id: str
    queue: QueueRef
    via_offer: bool


@dataclass(frozen=True, slots=True)
class SessionEnded(Event):
    session_id: str
    reason: EndReason


@dataclass(frozen=True, slots=True)
class SessionOverdue(Event):
    session_id: str
    queue: QueueRef
    rule_moves_exhausted: bool


@dataclass(frozen=True, slots=True)
class OwnershipChanged(Event):
    """Ownership passed to a participant (owner left, or lost their connection)."""

    session_id: str
    from_rep: str
    to_rep: str
    by_fallback: bool


@dataclass(frozen=True, slots=True)
class OwnerReleased(Event):
    """The owner let go of a session that ended or moved to a queue (not passed on to a
    participant: that is OwnershipChanged)."""

    session_id: str
    rep_id: str


@dataclass(frozen=True, slots=True)
class ParticipantJoined(Event):
    session_id: str
    rep_id: str


@dataclass(frozen=True, slots=True)
class ParticipantLeft(Event):
    session_id: str
    rep_id: str


@dataclass(frozen=True, slots=True)
class InvitationCreated(Event):
    invitation_id: str
    session_id: str
    inviter: str
    queue: QueueRef


@dataclass(frozen=True, slots=True)
class InvitationRemoved(Event):
    invitation_id: str
    session_id: str
    queue: QueueRef
    accepted_by: str | None


@dataclass(frozen=True, slots=True)
class EligibilityChanged(Event):
    rep_id: str
    eligible: bool
    reasons: frozenset[IneligibleReason]


@dataclass(frozen=True, slots=True)
class RepSettingsChanged(Event):
    rep_id: str
    auto_assign: bool
    audible_alerts: bool


@dataclass(frozen=True, slots=True)
class PresenceChanged(Event):
    rep_id: str
    connected: bool
    locked: bool
    idle: bool


@dataclass(frozen=True, slots=True)
class ChatMessagePosted(Event):
    team_id: str
    seq: int
    rep_id: str
    text: str


@dataclass(frozen=True, slots=True)
class DirectoryChanged(Event):
    """A directory record was created, updated or deleted (kind: rep, team, ...)."""

    kind: str
    ident: str
    change: str
