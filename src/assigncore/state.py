"""The one state object of a desk's engine.

Every concern of the engine (directory, intake, presence, routing, queue order, waiting
rules, sharing, chat, read views) is a module of functions over this object; `engine.py`
is the facade that runs them as commands. Nothing here reads the wall clock or draws
randomness except through `now` (set by the facade from its clock) and `entropy`.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import validation as v
from .columns import RepTable, SessionTable, TeamTable
from .errors import InvalidArgument, NotFound, ResourceExhausted
from .events import Event
from .kernel import Kernel
from .model import (
    GENERAL_QUEUE,
    HelpLink,
    IneligibleReason,
    Invitation,
    IssueType,
    Offer,
    QueueKind,
    QueueRef,
    Rep,
    Session,
    SessionKey,
    SupportButton,
    Team,
)
from .queue_order import QueueIndex
from .stats import Statistics
from .timers import Timers

# Ids that leave the engine (sessions, offers, invitations): a kind prefix and 100 random
# bits in hex, so they cannot be guessed and are never reused, across restarts included.
# Order never comes from an id (sessions and invitations carry a seq for that).
ID_BITS = 100  # 25 hex digits
ID_PREFIX = {"session": "ses_", "offer": "off_", "invitation": "inv_"}


@dataclass(frozen=True, slots=True)
class EngineConfig:
    reconnect_grace: float = 30.0
    max_rule_moves: int = 10
    session_key_ttl: float = 7200.0
    session_key_length: int = 8  # 32**8 ~ 1.1e12 keys
    key_failures_allowed: int = 10  # failed redemptions per customer address per window
    key_failures_per_portal: int = 1000  # failed redemptions per intake portal per window
    key_failure_window: float = 60.0
    general_queue_enabled: bool = True
    chat_history: int = 500
    ended_retention: float = 3600.0  # an ended session is forgotten this long after
    time_zone: str = "UTC"  # where the desk's day starts (statistics' "today")
    service_level_threshold: float = 20.0  # seconds; personal queues and the general one


class KeyGuard:
    """Failed session-key redemptions, counted per customer address (behind a portal)
    and per portal, to make guessing impractical without letting one guesser lock out
    everyone behind the same portal.

    Security accounting, not routing state: a refused redemption is recorded here (that
    is its purpose), and this is the one thing a refused command may change."""

    def __init__(self, per_address: int, per_portal: int, window: float) -> None:
        self.per_address, self.per_portal, self.window = per_address, per_portal, window
        self.failures: dict[tuple[str, str], deque[float]] = {}

    def _count(self, who: tuple[str, str], now: float) -> int:
        log = self.failures.get(who)
        if log is None:
            return 0
        while log and log[0] <= now - self.window:
            log.popleft()
        if not log:
            del self.failures[who]
        return len(log)

    def check(self, portal: str, address: str, now: float) -> None:
        if (
            self._count((portal, address), now) >= self.per_address
            or self._count((portal, ""), now) >= self.per_portal
        ):
            raise ResourceExhausted("too many invalid session keys; try again later")

    def fail(self, portal: str, address: str, now: float) -> None:
        self.failures.setdefault((portal, address), deque()).append(now)
        if address:
            self.failures.setdefault((portal, ""), deque()).append(now)


class Entropy:
    """The one source of every unguessable value the engine hands out (ids, session keys).

    Each value is a keyed BLAKE2b of a counter under the desk's secret: unpredictable to
    anyone without the secret, never repeated (the counter only grows and is part of the
    state), and a pure function of (secret, counter). The secret is an input, drawn once
    by whoever creates the desk; so replaying the same commands at the same times gives
    the same values, whether a command or a timer (an offer after a timeout) takes them.
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the desk's secret must have at least 128 bits")
        self.secret = secret
        self.counter = 0

    def bits(self, n: int) -> int:
        """The next unguessable integer of `n` bits (n <= 256)."""
        self.counter += 1
        digest = hashlib.blake2b(
            self.counter.to_bytes(8, "big"), key=self.secret[:64], digest_size=32
        ).digest()
        return int.from_bytes(digest, "big") >> (256 - n)


class State:
    """All of a desk's routing state; mutated only by the engine's commands."""

    def __init__(
        self,
        now: float,
        config: EngineConfig,
        kernel: Kernel,
        secret: bytes,
        listener: Callable[[Event], None] | None,
    ) -> None:
        self.now = now
        self.epoch = now  # available_since is counted from here, in microseconds
        self.config = config
        self.kernel = kernel
        self.entropy = Entropy(secret)
        self.listener = listener
        self.events: list[Event] = []  # the running command's events
        # directory
        self.reps: dict[str, Rep] = {}
        self.rep_by_ord: list[Rep | None] = []
        self.teams: dict[str, Team] = {}
        self.team_by_ord: list[Team | None] = []
        self.skills: dict[str, int] = {}
        self.issue_types: dict[str, IssueType] = {}
        self.buttons: dict[str, SupportButton] = {}
        self.links: dict[str, HelpLink] = {}
        self.keys: dict[str, SessionKey] = {}
        self.key_guard = KeyGuard(
            config.key_failures_allowed, config.key_failures_per_portal, config.key_failure_window
        )
        # routing
        self.sessions: dict[str, Session] = {}
        self.session_by_slot: list[Session | None] = []
        self.offers: dict[str, Offer] = {}
        # Offers no longer pending, by closing time: answering one is FAILED_PRECONDITION
        # (stale), not NOT_FOUND, for as long as ended sessions are kept.
        self.closed_offers: dict[str, float] = {}
        self.invitations: dict[str, Invitation] = {}
        self.reported: dict[str, frozenset[IneligibleReason]] = {}
        self.stats = Statistics(config.time_zone)  # fed by emit, kept in snapshots
        # queue order
        self.queues: dict[QueueRef, QueueIndex] = {GENERAL_QUEUE: QueueIndex(GENERAL_QUEUE)}
        self.team_index: list[QueueIndex | None] = []  # by team ordinal
        self.team_eligible: list[int] = []  # eligible members, by team ordinal
        # Teams where an offer may have become possible since the last pass: a session
        # became ready there, or the team gained an eligible member (rule 5). Nowhere
        # else can a pass make an offer, since the previous pass left none possible.
        self.dirty: set[tuple[int, Any]] = set()  # (team ordinal, pool key)
        # Step FIFOs by (queue, duration): sessions waiting out a routing step.
        self.step_fifos: dict[tuple, Any] = {}
        # Service channels by name: bit numbers of the room masks; "" is the default.
        self.channels: dict[str, int] = {"": 0}
        self.profiles: dict[Any, Any] = {}  # CapacityProfile -> its compiled form
        self.profiled: set[str] = set()  # reps with a capacity profile
        # steps.could_match's answers by (team, channel, skills), with the team's version
        # they were given at; a team's version moves when its members' sign-in, skills,
        # capacity or membership change.
        self.team_version: list[int] = []
        self.match_cache: dict[tuple, tuple[int, bool]] = {}
        self.inv_by_key: dict[int, str] = {}
        # Arrival order of sessions and invitations (rule 4): one sequence for both.
        self.counters = {"seq": 0}
        # columns and timers
        self.reps_table = RepTable(kernel)
        self.teams_table = TeamTable(kernel)
        self.sessions_table = SessionTable(kernel)
        self.timers = Timers()

    def __getstate__(self) -> dict[str, Any]:
        # For snapshots (assigncore.snapshot): no listener, no running command.
        return {**self.__dict__, "listener": None, "events": []}

    def emit(self, event: Event) -> None:
        self.events.append(event)
        self.stats.observe(self, event)
        if self.listener is not None:
            self.listener(event)

    def next_seq(self) -> int:
        self.counters["seq"] += 1
        return self.counters["seq"]

    def next_id(self, kind: str) -> str:
        while True:
            ident = ID_PREFIX[kind] + format(self.entropy.bits(ID_BITS), "025x")
            if (
                ident not in self.sessions
                and ident not in self.offers
                and ident not in self.closed_offers
                and ident not in self.invitations
            ):
                return ident

    # ------------------------------------------------------------- checked lookups

    def rep(self, rep_id: Any, field_name: str = "rep_id") -> Rep:
        rep = self.reps.get(v.ident(field_name, rep_id))
        if rep is None:
            raise NotFound("rep", rep_id)
        return rep

    def team(self, team_id: Any, field_name: str = "team_id") -> Team:
        team = self.teams.get(v.ident(field_name, team_id))
        if team is None:
            raise NotFound("team", team_id)
        return team

    def session(self, session_id: Any) -> Session:
        s = self.sessions.get(v.ident("session_id", session_id))
        if s is None:
            raise NotFound("session", session_id)
        return s

    def queue_ref(self, field_name: str, queue: Any) -> QueueRef:
        if not isinstance(queue, QueueRef) or not isinstance(queue.kind, QueueKind):
            raise InvalidArgument(field_name, "must be a queue reference")
        if queue.kind is QueueKind.GENERAL:
            return GENERAL_QUEUE
        if queue.kind is QueueKind.TEAM:
            self.team(queue.owner, f"{field_name}.team_id")
        else:
            self.rep(queue.owner, f"{field_name}.rep_id")
        return queue

    def can_see(self, rep: Rep, queue: QueueRef) -> bool:
        if queue.kind is QueueKind.PERSONAL:
            return queue.owner == rep.id
        if queue.kind is QueueKind.TEAM:
            return queue.owner in rep.teams
        return rep.permissions.may_use_general_queue and self.config.general_queue_enabled
