"""The routing engine: single-writer owner of one desk's routing state.

Every public command validates its whole input first, then applies, then runs the
assignment pass if anything it did can change the pass's result (rule 5), and returns
an `Outcome` with the events it caused. A command that raises a `DomainError` has
changed nothing. Timers (offer deadlines, waiting rules, idle, wrap-up, reconnect
grace, key expiry) live in one heap; `advance()` fires what is due in deadline order,
and every command first catches up with the clock the same way.

The engine never reads the wall clock: time comes from the injected `clock` callable.
It is not thread-safe: call it from one thread (the server's event loop).

This module is the facade. The state is one `State` object; each concern is a module of
functions over it: `directory`, `intake`, `presence` (and fallback), `routing` (the pass
and offers), `queue_order`, `waiting_rules`, `sharing`, `chat`, and `views` (reads). A
command here is that function run by `command`: clock catch-up, events, the pass.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar

from . import (
    capacity,
    chat,
    directory,
    explain,
    intake,
    presence,
    routing,
    sharing,
    stats,
    steps,
    supervision,
    views,
    waiting_rules,
)
from . import validation as v
from .columns import RepTable, SessionTable, TeamTable
from .errors import DomainError
from .events import Event
from .kernel import Kernel
from .model import QueueRef, Rep
from .records import CommandRecord, RecordError
from .state import EngineConfig, State
from .timers import TimerKind
from .views import QueueItem, QueueSummary

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(slots=True)
class Outcome(Generic[T]):
    """What a command did: the events it caused (in order) and its result."""

    events: list[Event]
    value: T


# Every engine command by name: what a command record may name (records.py).
COMMANDS: dict[str, Callable[..., Any]] = {}
# Commands that run before the timers due by their time fire (see Engine._run).
BEFORE_TIMERS: set[Callable[..., Any]] = set()
# The record of time passing: the timers due by its time fire.
ADVANCE = "advance"


def command(fn: Callable[Concatenate[State, P], T]) -> Callable[Concatenate[Engine, P], Outcome[T]]:
    """A concern's function as an engine command (typed: mypy checks every call)."""

    @wraps(fn)
    def run(engine: Engine, /, *args: P.args, **kwargs: P.kwargs) -> Outcome[T]:
        return engine._run(fn, None, True, *args, **kwargs)

    COMMANDS[fn.__name__] = fn
    return run


def query(fn: Callable[Concatenate[State, P], T]) -> Callable[Concatenate[Engine, P], T]:
    """A read view as an engine method: no clock, no events, no pass."""

    @wraps(fn)
    def read(engine: Engine, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return fn(engine.state, *args, **kwargs)

    return read


# What each kind of timer does when it fires.
TIMER_HANDLERS: dict[TimerKind, Callable[[State, Any], None]] = {
    TimerKind.OFFER_DEADLINE: routing.on_offer_deadline,
    TimerKind.WAITING_RULE: waiting_rules.on_waiting_rule,
    TimerKind.IDLE: presence.on_idle,
    TimerKind.WRAP_UP_END: presence.on_wrap_up_end,
    TimerKind.RECONNECT_GRACE: presence.on_reconnect_grace,
    TimerKind.FORGET_SESSION: routing.on_forget_session,
    TimerKind.KEY_EXPIRY: intake.on_key_expiry,
    TimerKind.STEP_EXPIRY: steps.on_expiry,
}


class Timings(Protocol):
    """Told how long each command and each assignment pass took (the server's
    metrics); the engine only measures while one is set."""

    def command(self, name: str, seconds: float) -> None: ...

    def assignment(self, seconds: float) -> None: ...


class Engine:
    def __init__(
        self,
        clock: Callable[[], float],
        config: EngineConfig | None = None,
        listener: Callable[[Event], None] | None = None,
        kernel: Kernel | None = None,
        rng: random.Random | None = None,
        secret: bytes | None = None,
        start: float | None = None,
    ) -> None:
        """`secret` keys every id and session key the desk hands out (an input: the same
        secret and the same commands at the same times give the same desk). Without
        one, it is drawn from `rng` (tests) or the operating system. `start` is the
        desk's creation time (default: the clock now), also an input."""
        self._clock = clock
        if secret is None:
            secret = rng.getrandbits(256).to_bytes(32, "big") if rng else secrets.token_bytes(32)
        now = float(clock() if start is None else start)
        self.state = State(now, config or EngineConfig(), kernel or Kernel(), secret, listener)
        self._busy = False
        # Told of every command that succeeded, as a record (the journal's input); not
        # told of replayed records.
        self.on_command: Callable[[CommandRecord], None] | None = None
        # Called when a command or timer pass is over, replayed or not, refused or not:
        # the listener has heard all of its events (the server's fan-out sends them as
        # one batch, with what changed more than once in it merged).
        self.on_settled: Callable[[], None] | None = None
        self.timings: Timings | None = None

    @classmethod
    def restored(cls, clock: Callable[[], float], state: State) -> Engine:
        """An engine over a state restored from a snapshot (assigncore.snapshot)."""
        engine = cls.__new__(cls)
        engine._clock, engine.state, engine._busy = clock, state, False
        engine.on_command = engine.on_settled = engine.timings = None
        return engine

    # ------------------------------------------------------------------ plumbing

    def apply(self, record: CommandRecord) -> Outcome[Any]:
        """Runs a command record at its time (a journal's replay): timers due before it
        fire first, exactly as when it ran."""
        if record.command == ADVANCE:
            return self._advance(record.time, record=False)
        fn = COMMANDS.get(record.command)
        if fn is None:
            raise RecordError(f"{record.command!r} is not an engine command")
        return self._run(fn, record.time, False, *record.args, **(record.kwargs or {}))

    def _run(
        self,
        fn: Callable[..., T],
        at: float | None,
        record_it: bool,
        *args: Any,
        **kwargs: Any,
    ) -> Outcome[T]:
        if self._busy:
            raise RuntimeError("engine commands must not be re-entered (single writer)")
        self._busy = True
        st = self.state
        timings = self.timings
        started = time.perf_counter() if timings is not None else 0.0
        when = float(self._clock() if at is None else at)
        fired = 0
        try:
            if fn in BEFORE_TIMERS:
                # Runs at its time before the timers due by then fire (a restart: they
                # were due while nobody could act on them).
                st.now = max(st.now, when)
                events: list[Event] = []
                st.events = events
                value = fn(st, *args, **kwargs)
                self._catch_up(when)
            else:
                # Timers due before this command fire first; their events reach the
                # listener but are not this command's.
                fired = self._catch_up(when)
                events = []
                st.events = events
                value = fn(st, *args, **kwargs)
            if st.dirty:
                self._assign()
        except BaseException:
            # Refused: the command changed nothing, but timers it caught up with did:
            # that is recorded as time passing.
            if record_it and fired and self.on_command is not None:
                self.on_command(CommandRecord(ADVANCE, when))
            raise
        finally:
            self._busy = False
            st.events = []
            st.stats.settle(st)
            if timings is not None:
                timings.command(fn.__name__, time.perf_counter() - started)
            if self.on_settled is not None:
                self.on_settled()
        if record_it and self.on_command is not None:
            self.on_command(CommandRecord(fn.__name__, when, args, kwargs or None))
        return Outcome(events, value)

    def _assign(self) -> None:
        timings = self.timings
        if timings is None:
            routing.assign(self.state)
            return
        started = time.perf_counter()
        routing.assign(self.state)
        timings.assignment(time.perf_counter() - started)

    def _catch_up(self, now: float) -> int:
        """Fires the timers due by `now`, in deadline order; returns how many fired."""
        st, now = self.state, float(now)
        fired = 0
        while (timer := st.timers.pop_due(now)) is not None:
            fired += 1
            st.now = max(st.now, timer.deadline)
            TIMER_HANDLERS[timer.kind](st, timer.payload)
            if st.dirty:
                self._assign()
        st.now = max(st.now, now)
        return fired

    @property
    def now(self) -> float:
        return self.state.now

    @property
    def config(self) -> EngineConfig:
        return self.state.config

    @property
    def kernel(self) -> Kernel:
        return self.state.kernel

    @property
    def reps_table(self) -> RepTable:
        return self.state.reps_table

    @property
    def teams_table(self) -> TeamTable:
        return self.state.teams_table

    @property
    def sessions_table(self) -> SessionTable:
        return self.state.sessions_table

    def next_deadline(self) -> float | None:
        """When the next timer is due (for the server's loop to sleep until)."""
        return self.state.timers.next_deadline()

    def advance(self, now: float | None = None) -> Outcome[None]:
        """Fire every timer due at or before `now` (default: the clock), in deadline
        order, running the assignment pass after each; returns the events fired."""
        until = self._clock() if now is None else v.seconds("now", now, -1e18, 1e18)
        return self._advance(float(until), record=True)

    def _advance(self, until: float, record: bool) -> Outcome[None]:
        if self._busy:
            raise RuntimeError("engine commands must not be re-entered (single writer)")
        self._busy = True
        st = self.state
        timings = self.timings
        started = time.perf_counter() if timings is not None else 0.0
        events: list[Event] = []
        st.events = events
        try:
            fired = self._catch_up(until)
            if st.dirty:
                self._assign()
        finally:
            self._busy = False
            st.events = []
            st.stats.settle(st)
            if timings is not None:
                timings.command(ADVANCE, time.perf_counter() - started)
            if self.on_settled is not None:
                self.on_settled()
        # Timers follow from state and time, but when they fire is an input: a pass
        # that fired any is recorded, so a replay fires them at the same point between
        # commands (a restart's command, which runs before due timers, depends on it).
        if record and fired and self.on_command is not None:
            self.on_command(CommandRecord(ADVANCE, until))
        return Outcome(events, None)

    def can_see(self, rep: Rep, queue: QueueRef) -> bool:
        return self.state.can_see(rep, queue)

    def channels(self) -> list[str]:
        """The desk's service channels, in declaration order."""
        return [name for name in self.state.channels if name]

    def explain_routing(
        self, session_id: str, limit: int = explain.DEFAULT_LISTED
    ) -> explain.Explanation:
        """Why the session is or is not offered to each rep (ExplainRouting): at most
        `limit` reps listed, every member counted."""
        return explain.explain(self.state, session_id, limit)

    # ------------------------------------------------------------------ directory

    define_channels = command(capacity.define_channels)
    create_team = command(directory.create_team)
    update_team = command(directory.update_team)
    delete_team = command(directory.delete_team)
    create_rep = command(directory.create_rep)
    update_rep = command(directory.update_rep)
    add_team_member = command(directory.add_team_member)
    remove_team_member = command(directory.remove_team_member)
    delete_rep = command(directory.delete_rep)
    create_issue_type = command(directory.create_issue_type)
    update_issue_type = command(directory.update_issue_type)
    delete_issue_type = command(directory.delete_issue_type)
    create_support_button = command(directory.create_support_button)
    update_support_button = command(directory.update_support_button)
    delete_support_button = command(directory.delete_support_button)
    create_help_link = command(directory.create_help_link)
    update_help_link = command(directory.update_help_link)
    delete_help_link = command(directory.delete_help_link)

    # ------------------------------------------------------------------ intake

    start_with_key = command(intake.start_with_key)
    start_with_rep = command(intake.start_with_rep)
    start_from_button = command(intake.start_from_button)
    start_from_issue = command(intake.start_from_issue)
    start_from_help_link = command(intake.start_from_help_link)
    start_undesignated = command(intake.start_undesignated)
    cancel_session = command(intake.cancel_session)
    generate_session_key = command(intake.generate_session_key)

    # ------------------------------------------------------------------ presence

    connect = command(presence.connect)
    disconnect = command(presence.disconnect)
    set_locked = command(presence.set_locked)
    report_activity = command(presence.report_activity)
    update_settings = command(presence.update_settings)
    server_restarted = command(presence.server_restarted)

    # ------------------------------------------------------------------ routing, sharing

    answer_offer = command(routing.answer_offer)
    accept_session = command(routing.accept_session)
    get_next = command(routing.get_next)
    transfer_session = command(routing.transfer_session)
    end_session = command(routing.end_session)
    leave_session = command(sharing.leave_session)
    invite = command(sharing.invite)

    # ------------------------------------------------------------------ supervision

    force_transfer = command(supervision.force_transfer)
    pull_session = command(supervision.pull_session)
    switch_auto_assign = command(supervision.switch_auto_assign)
    accept_invitation = command(sharing.accept_invitation)

    # ------------------------------------------------------------------ chat, favourites

    set_favourite = command(chat.set_favourite)
    post_chat = command(chat.post_chat)
    mark_chat_read = command(chat.mark_chat_read)
    chat_messages = query(chat.chat_messages)

    # ------------------------------------------------------------------ read views

    rep = query(views.rep)
    team = query(views.team)
    session = query(views.session)
    offer = query(views.offer)
    find_rep = query(views.find_rep)
    find_offer = query(views.find_offer)
    find_session = query(views.find_session)
    session_key_expiry = query(views.session_key_expiry)
    invitation = query(views.invitation)
    invitations = query(views.invitations)
    offers = query(views.offers)
    queue_audience = query(views.queue_audience)
    can_see_session = query(views.can_see_session)
    reps = query(views.reps)
    teams = query(views.teams)
    issue_type = query(views.issue_type)
    support_button = query(views.support_button)
    help_link = query(views.help_link)
    issue_types = query(views.issue_types)
    support_buttons = query(views.support_buttons)
    help_links = query(views.help_links)
    sessions = query(views.sessions)
    eligible = query(views.eligible)
    queue_items = query(views.queue_items)
    queue_page = query(views.queue_page)
    queue_position = query(views.queue_position)
    rep_teams = query(views.rep_teams)
    rep_queues = query(views.rep_queues)
    search_teams = query(views.search_teams)
    search_reps = query(views.search_reps)
    snapshot = query(views.snapshot)
    statistics = query(stats.statistics)


BEFORE_TIMERS.add(presence.server_restarted)

__all__ = [
    "DomainError",
    "Engine",
    "EngineConfig",
    "COMMANDS",
    "Outcome",
    "QueueItem",
    "QueueSummary",
    "command",
    "query",
]
