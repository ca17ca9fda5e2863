"""The domain model: plain data, no behaviour beyond small derived properties."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import TYPE_CHECKING

from .constants import ALG_BEST_SKILLS, ALG_LEAST_BUSY, ALG_NONE, ALG_SKILLS_MATCH_LEAST_BUSY

if TYPE_CHECKING:
    from .timers import Timer


class Algorithm(IntEnum):
    """Team-queue routing algorithm. Values index the policy tables of the kernel and the
    reference; adding one means a new member here plus one policy in each."""

    NONE = ALG_NONE
    LEAST_BUSY = ALG_LEAST_BUSY
    SKILLS_MATCH_LEAST_BUSY = ALG_SKILLS_MATCH_LEAST_BUSY
    BEST_SKILLS = ALG_BEST_SKILLS


class TeamKind(Enum):
    STANDARD = "STANDARD"
    EMBASSY = "EMBASSY"


class QueueKind(Enum):
    PERSONAL = "PERSONAL"
    TEAM = "TEAM"
    GENERAL = "GENERAL"


class Channel(Enum):
    FULL_CLIENT = "FULL_CLIENT"
    BROWSER_SHARING = "BROWSER_SHARING"


class Origin(Enum):
    SESSION_KEY = "SESSION_KEY"
    PUBLIC_SITE = "PUBLIC_SITE"
    SUPPORT_BUTTON = "SUPPORT_BUTTON"
    ISSUE_FORM = "ISSUE_FORM"
    HELP_LINK = "HELP_LINK"
    UNDESIGNATED = "UNDESIGNATED"
    TRANSFER = "TRANSFER"
    WAITING_RULE = "WAITING_RULE"
    CONNECTION_LOST = "CONNECTION_LOST"


class SessionState(Enum):
    WAITING = "WAITING"
    OFFERED = "OFFERED"
    ACTIVE = "ACTIVE"
    ENDED = "ENDED"


class EndReason(Enum):
    COMPLETED = "COMPLETED"
    ABANDONED = "ABANDONED"
    NO_FALLBACK = "NO_FALLBACK"


class RuleAction(Enum):
    ALERT = "ALERT"
    TRANSFER = "TRANSFER"


class IneligibleReason(Enum):
    """Why a rep is not offered sessions (a pending offer is not reported: the console
    already knows it has one)."""

    OFFLINE = "OFFLINE"
    LOCKED = "LOCKED"
    IDLE = "IDLE"
    OPTED_OUT = "OPTED_OUT"
    MISSED_OFFERS = "MISSED_OFFERS"
    WRAP_UP = "WRAP_UP"
    AT_MAX_LOAD = "AT_MAX_LOAD"


class RescindReason(Enum):
    """Why a pending offer was withdrawn. None of these counts as a decline, except
    TIMED_OUT, which is announced to the rep as well as counted."""

    ACCEPTED_BY_OTHER = "ACCEPTED_BY_OTHER"
    SESSION_ENDED = "SESSION_ENDED"  # ended for another reason than a customer's cancel
    SESSION_MOVED = "SESSION_MOVED"  # moved by a waiting rule
    CONNECTION_LOST = "CONNECTION_LOST"
    SIGNED_OUT = "SIGNED_OUT"
    LEFT_TEAM = "LEFT_TEAM"
    TIMED_OUT = "TIMED_OUT"
    LOCKED = "LOCKED"
    IDLE = "IDLE"
    TRANSFERRED = "TRANSFERRED"  # moved by a manual transfer
    CANCELLED = "CANCELLED"  # the customer cancelled
    SERVER_RESTARTED = "SERVER_RESTARTED"  # the server stopped and is back


@dataclass(frozen=True, slots=True)
class QueueRef:
    kind: QueueKind
    owner: str = ""  # rep id for PERSONAL, team id for TEAM, "" for GENERAL

    def __str__(self) -> str:
        return (
            "general"
            if self.kind is QueueKind.GENERAL
            else f"{self.kind.value.lower()}/{self.owner}"
        )


GENERAL_QUEUE = QueueRef(QueueKind.GENERAL)


def team_queue(team_id: str) -> QueueRef:
    return QueueRef(QueueKind.TEAM, team_id)


def personal_queue(rep_id: str) -> QueueRef:
    return QueueRef(QueueKind.PERSONAL, rep_id)


class StepKind(Enum):
    """Who a routing step lets take a session (rules 13-15)."""

    ANY = "ANY"  # any member, ranked by the session's own requirements (rule 2)
    SKILLS = "SKILLS"  # members holding every one of the step's skills at its level
    PREFERRED_REP = "PREFERRED_REP"  # the rep named at intake, if a member


@dataclass(frozen=True, slots=True)
class RoutingStep:
    kind: StepKind = StepKind.ANY
    skills: tuple[tuple[str, int], ...] = ()  # SKILLS: required, most important first
    duration: float = 0.0  # seconds before the next step; the last step never expires


@dataclass(frozen=True, slots=True)
class CapacityProfile:
    """A rep's capacity by service channel (rule 16): `total` units; a session of
    channel c costs cost[c] units (a channel without a cost is never offered); at most
    limit[c] sessions of channel c at once (no entry: as many as the units allow)."""

    total: int
    cost: tuple[tuple[str, int], ...]
    limit: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Permissions:
    max_concurrent_sessions: int = 0  # 0 = no limit
    idle_timeout: float = 0.0  # seconds; 0 = never idle
    may_get_next: bool = True
    may_opt_out: bool = False
    may_transfer: bool = True
    may_use_general_queue: bool = False
    shown_on_public_site: bool = False
    capacity: CapacityProfile | None = None  # replaces max_concurrent_sessions if set


@dataclass(frozen=True, slots=True)
class WaitingRule:
    overdue_after: float
    action: RuleAction
    overflow: QueueRef | None = None  # TRANSFER target: a team queue or the general queue


@dataclass(frozen=True, slots=True)
class QueueSettings:
    algorithm: Algorithm = Algorithm.LEAST_BUSY
    offer_timeout: float = 30.0
    waiting_rule: WaitingRule | None = None
    wrap_up: float = 0.0
    max_missed_offers: int = 0  # 0 = never switch auto-assign off
    service_level_threshold: float = 20.0  # seconds: answered within it counts as served
    steps: tuple[RoutingStep, ...] = ()  # routing steps of sessions without their own


@dataclass(frozen=True, slots=True)
class Customer:
    name: str
    company: str = ""
    details: str = ""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a support button or help link sends sessions: a rep or a team."""

    rep_id: str = ""
    team_id: str = ""

    @property
    def queue(self) -> QueueRef:
        return personal_queue(self.rep_id) if self.rep_id else team_queue(self.team_id)


@dataclass(slots=True)
class Rep:
    id: str
    name: str
    ordinal: int
    skills: dict[str, int]
    permissions: Permissions
    auto_assign: bool = True
    audible_alerts: bool = True
    teams: set[str] = field(default_factory=set)
    # Frozensets: empty for most reps, and the empty one is shared (100k reps on a desk).
    favourites: frozenset[str] = frozenset()
    chat_read: dict[str, int] = field(default_factory=dict)  # team -> last message seq read
    connected: bool = False
    locked: bool = False
    idle: bool = False
    last_activity: float = 0.0
    opted_out_by_missed_offers: bool = False
    missed_offers: int = 0
    owned: frozenset[str] = frozenset()
    participating: frozenset[str] = frozenset()
    offer: str | None = None  # pending offer id
    eligible: bool = False  # as last synced into the columns (see Engine._sync_rep)
    grace_timer: Timer | None = None
    idle_timer: Timer | None = None
    wrap_up_timer: Timer | None = None

    @property
    def load(self) -> int:
        return len(self.owned) + len(self.participating)


@dataclass(slots=True)
class ChatMessage:
    seq: int
    rep_id: str
    text: str
    time: float


@dataclass(slots=True)
class Team:
    id: str
    name: str
    kind: TeamKind
    ordinal: int
    settings: QueueSettings
    members: set[str] = field(default_factory=set)
    chat: list[ChatMessage] = field(default_factory=list)
    chat_seq: int = 0


@dataclass(frozen=True, slots=True)
class IssueType:
    id: str
    name: str
    team_id: str
    required_skills: tuple[tuple[str, int], ...] = ()  # most important first
    priority: int = 0
    steps: tuple[RoutingStep, ...] = ()  # () = the team queue's steps, or one ANY step
    channel: str = ""  # the service channel of its sessions ("" = the default one)


@dataclass(frozen=True, slots=True)
class SupportButton:
    id: str
    name: str
    target: Target


@dataclass(frozen=True, slots=True)
class HelpLink:
    id: str
    name: str
    target: Target


@dataclass(slots=True)
class SessionKey:
    key: str
    rep_id: str
    expires_at: float
    timer: Timer | None = None


@dataclass(frozen=True, slots=True)
class Move:
    queue: QueueRef
    time: float
    cause: Origin


@dataclass(frozen=True, slots=True)
class Decline:
    """A rep let an offer of the session go: rejected it, or let it time out."""

    rep_id: str
    time: float
    timed_out: bool
    queue: QueueRef


@dataclass(frozen=True, slots=True)
class StepChange:
    """A waiting session moved to routing step `step` (0-based) of its queue's list."""

    time: float
    step: int
    skipped: int  # steps passed over at once: nobody signed in could match them


@dataclass(frozen=True, slots=True)
class Decision:
    """Why an offer went where it did, kept with the offer (ExplainRouting)."""

    step: int  # the session's routing step (0-based)
    candidates: int  # eligible members the step allowed, declined ones excluded
    major: int  # the winner's policy score (smaller ranks first)
    load: int  # its load (sessions, or 1/1024ths of its capacity)
    available_since: float  # when it became available (seconds since the epoch)


@dataclass(slots=True)
class Session:
    id: str
    seq: int
    slot: int
    customer: Customer
    channel: Channel
    origin: Origin
    issue_type_id: str
    required_skills: tuple[tuple[str, int], ...]
    priority: int
    created_time: float
    queued_time: float
    state: SessionState = SessionState.WAITING
    end_reason: EndReason | None = None
    queue: QueueRef | None = None
    accepted_from: QueueRef | None = None
    owner: str | None = None
    # Tuples, not lists or sets: most sessions never share or are declined, and an empty
    # tuple is one shared object (a million waiting sessions are a storm's normal).
    participants: tuple[str, ...] = ()  # in order of joining
    declined_by: tuple[str, ...] = ()  # in order of declining
    # History: the first entry is implied by first_queue, created_time and first_origin,
    # so a session that never moved stores no Move at all; `history` puts them together.
    moves: tuple[Move, ...] = ()  # entries after the first
    offer: str | None = None
    entry_seq: int = 0  # bumped on every queue entry; scopes waiting-rule timers
    rule_moves: int = 0
    overdue_alerted: bool = False
    invitations: tuple[str, ...] = ()  # in order of creation
    rule_timer: Timer | None = None
    declines: tuple[Decline, ...] = ()  # every decline, in order (kept across transfers)
    portal: str = ""  # the intake portal that started it ("" if none): only it may see it
    first_queue: QueueRef | None = None
    first_origin: Origin | None = None
    key: int = 0  # its rule-4 order key in whatever queue it is in (queue_order.rule4_key)
    pool: int = 0  # NOT_READY, READY or PARKED in its team queue (queue_order)
    service_channel: str = ""  # what it costs a rep's capacity ("" = the default channel)
    preferred_rep: str = ""  # named at intake, for a PREFERRED_REP step
    steps: tuple[RoutingStep, ...] = ()  # the list of its current team queue entry
    step: int = 0  # its current step in `steps`
    step_changes: tuple[StepChange, ...] = ()  # in its current queue entry
    step_fifo: tuple | None = None  # (queue, duration): the FIFO it waits in to expire
    pool_key: tuple = ()  # its candidate pool in its team queue (queue_order)
    decision: Decision | None = None  # of the offer it was accepted from, if any

    @property
    def history(self) -> tuple[Move, ...]:
        """Every queue entry, in order: (queue, time, cause)."""
        if self.first_queue is None or self.first_origin is None:
            return self.moves
        return (Move(self.first_queue, self.created_time, self.first_origin), *self.moves)


@dataclass(slots=True)
class Offer:
    id: str
    session_id: str
    rep_id: str
    deadline: float
    audible: bool
    timer: Timer | None = None
    decision: Decision | None = None


@dataclass(slots=True)
class Invitation:
    id: str
    session_id: str
    inviter: str
    queue: QueueRef
    created_time: float
    key: int = 0  # its order key in its queue (queue_order.rule4_key)
