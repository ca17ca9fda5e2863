"""`assigncore simulate`: what-if runs of a desk on the production engine, with a
manual clock, much faster than real time.

The desk is the server's own TOML (teams, reps, issue types, queue settings); the
traffic model is described in `traffic.py`. The simulator is a discrete-event loop
around the engine: customers arrive (a Poisson process per issue type, its rate
constant within each interval), the engine queues and offers their sessions as it
would in production, simulated reps accept, reject or let offers time out after a
think time, handle sessions for a sampled time and end them; waiting customers
abandon when their patience runs out; reps sign in and out and take breaks on their
schedules. The engine's own timers (offer deadlines, waiting rules, wrap-up) fire as
the clock reaches them. Reps do not go idle in a simulation (idle timeouts are off).
With `get_next_every`, free reps also take sessions with Get Next (what serves queues
without automatic assignment).

What it measures, per queue and interval (outcomes count in the interval they happen
in, as contact centers report them): arrivals, answered, abandoned, the service level
(answered within the threshold over answered and abandoned), the average speed of
answer and the longest wait (both measured from entering the queue), offers per
answered session, rejections and timeouts; per team, occupancy (the time its signed-in
reps not on a break spent with a session, over that time).
"""

from __future__ import annotations

import copy
import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from assigncore import events as ev
from assigncore.engine import Engine
from assigncore.errors import DomainError
from assigncore.model import Customer, EndReason, QueueKind, QueueRef

from ..config import Settings
from ..desk.seed import load_desk
from ..desk.tokens import TokenStore
from .traffic import Traffic

T0 = 1_000_000_000.0  # the simulated clock's origin (any fixed time)
CUSTOMER = Customer("simulated customer")


def queue_name(queue: QueueRef) -> str:
    if queue.kind is QueueKind.GENERAL:
        return "general"
    return f"{'team' if queue.kind is QueueKind.TEAM else 'personal'}/{queue.owner}"


@dataclass
class Counts:
    """One queue's counts in one interval."""

    arrived: int = 0
    answered: int = 0
    abandoned: int = 0
    within: int = 0  # answered within the threshold
    wait_sum: float = 0.0  # of the answered
    longest: float = 0.0  # the longest wait that ended (answered or abandoned)
    offers: int = 0
    rejected: int = 0
    timed_out: int = 0

    def add(self, other: Counts) -> None:
        for name in ("arrived", "answered", "abandoned", "within", "wait_sum",
                     "offers", "rejected", "timed_out"):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.longest = max(self.longest, other.longest)

    @property
    def service_level(self) -> float | None:
        served = self.answered + self.abandoned
        return self.within / served if served else None

    @property
    def asa(self) -> float | None:
        return self.wait_sum / self.answered if self.answered else None

    @property
    def abandon_rate(self) -> float | None:
        return (
            self.abandoned / (self.answered + self.abandoned)
            if self.answered or self.abandoned
            else None
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "arrived": self.arrived,
            "answered": self.answered,
            "abandoned": self.abandoned,
            "service_level": _round(self.service_level, 4),
            "asa_s": _round(self.asa, 2),
            "longest_wait_s": round(self.longest, 1),
            "abandon_rate": _round(self.abandon_rate, 4),
            "offers_per_answered": _round(
                self.offers / self.answered if self.answered else None, 3
            ),
            "rejected": self.rejected,
            "timed_out": self.timed_out,
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class Record:
    """What the simulator knows of one session."""

    arrived: float
    handle: float
    queue: QueueRef | None = None
    entered: float = 0.0
    answered: float | None = None
    wait: float | None = None  # from entering its last queue to the answer
    abandoned: bool = False
    issue_type: str = ""  # the arrival stream's


@dataclass
class RepClock:
    """A rep's time, split by state, for occupancy."""

    teams: list[str]
    signed_in: bool = False
    on_break: bool = False
    busy: int = 0
    since: float = 0.0


@dataclass
class Report:
    traffic: Traffic
    queues: dict[str, list[Counts]]
    staffed: dict[str, list[float]]  # team -> seconds of staffed rep time per interval
    busy: dict[str, list[float]]  # team -> seconds of busy rep time per interval
    # By arrival stream (issue type): waits from the customer's arrival, whatever the
    # queues it went through.
    issue_types: dict[str, list[Counts]] = field(default_factory=dict)
    held: dict[str, list[float]] = field(default_factory=dict)  # team -> session-seconds
    customers: list[Record] = field(default_factory=list, repr=False)
    events: int = 0
    simulated_customers: int = 0

    def occupancy(self, team: str, i: int | None = None) -> float | None:
        """Busy time over signed-in time (breaks excluded): in interval i, or all day."""
        staffed = sum(self.staffed[team]) if i is None else self.staffed[team][i]
        busy = sum(self.busy[team]) if i is None else self.busy[team][i]
        return busy / staffed if staffed else None

    def concurrency(self, team: str, i: int | None = None) -> float | None:
        """Sessions in hand on average over signed-in time: above 1, reps work several
        sessions at once (capacity by channel)."""
        staffed = sum(self.staffed[team]) if i is None else self.staffed[team][i]
        held = self.held.get(team)
        if not staffed or held is None:
            return None
        return (sum(held) if i is None else held[i]) / staffed

    def issue_totals(self, issue_type: str) -> Counts:
        total = Counts()
        for c in self.issue_types[issue_type]:
            total.add(c)
        return total

    def totals(self, queue: str) -> Counts:
        total = Counts()
        for c in self.queues[queue]:
            total.add(c)
        return total

    def as_dict(self) -> dict[str, Any]:
        t = self.traffic
        return {
            "interval_s": t.interval,
            "intervals": [t.label(i) for i in range(t.intervals)],
            "service_level_threshold_s": t.threshold,
            "queues": {
                name: {
                    "total": self.totals(name).as_dict(),
                    "per_interval": [c.as_dict() for c in counts],
                }
                for name, counts in sorted(self.queues.items())
            },
            "issue_types": {
                name: {
                    "total": self.issue_totals(name).as_dict(),
                    "per_interval": [c.as_dict() for c in counts],
                }
                for name, counts in sorted(self.issue_types.items())
            },
            "occupancy": {
                team: [_round(self.occupancy(team, i), 4) for i in range(t.intervals)]
                for team in sorted(self.staffed)
            },
            "concurrency": {
                team: [_round(self.concurrency(team, i), 4) for i in range(t.intervals)]
                for team in sorted(self.staffed)
            },
            "simulated_customers": self.simulated_customers,
        }


class Simulation:
    """One run of a desk under a traffic model (see the module's documentation)."""

    def __init__(self, settings: Settings, traffic: Traffic, seed: int = 1) -> None:
        self.traffic = traffic
        self.rng = random.Random(seed)  # reps' behaviour
        # Each arrival stream draws its customers (arrival times, handle times,
        # patience) from a generator of its own, so two desks run under the same
        # traffic and seed meet the very same customers (common random numbers).
        self.stream_rngs = {
            id(stream): random.Random(f"{seed}:{i}:{stream.issue_type}")
            for i, stream in enumerate(traffic.arrivals)
        }
        self.now = T0
        self.events = 0
        self._handlers: dict[type, Callable[[Any], None]] = {}
        desk = copy.deepcopy(settings.desk)
        for rep in desk.get("reps", []):  # reps do not go idle in a simulation
            permissions = rep.get("permissions")
            if isinstance(permissions, dict):
                permissions.pop("idle_timeout", None)
        self.engine = Engine(
            lambda: self.now,
            settings.engine,
            listener=self._on_event,
            rng=random.Random(seed),
            secret=seed.to_bytes(8, "big") * 4,
            start=T0,
        )
        # The simulator counts for itself; the engine's live statistics would only cost.
        self.engine.state.stats.enabled = False
        load_desk(self.engine, TokenStore(lambda: self.now), desk)
        self.heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self.seq = 0
        self.customers: dict[str, Record] = {}
        self.done: list[Record] = []
        self.queues: dict[str, list[Counts]] = {}
        teams = [t.id for t in self.engine.state.teams.values()]
        n = traffic.intervals
        self.staffed = {t: [0.0] * n for t in teams}
        self.busy = {t: [0.0] * n for t in teams}
        self.held = {t: [0.0] * n for t in teams}
        self.issue_types: dict[str, list[Counts]] = {}
        self.reps: dict[str, RepClock] = {}
        for rep in self.engine.state.reps.values():
            self.reps[rep.id] = RepClock([t.id for t in self.engine.rep_teams(rep.id)])
        self._handlers = {
            ev.SessionQueued: self._queued,
            ev.OfferMade: self._offered,
            ev.OfferDeclined: self._declined,
            ev.SessionAccepted: self._accepted,
            ev.SessionEnded: self._ended,
            ev.OwnerReleased: self._released,
        }

    # ------------------------------------------------------------ the loop

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, fn, args))

    def run(self) -> Report:
        traffic = self.traffic
        end = T0 + traffic.duration
        for stream in traffic.arrivals:
            self._next_arrival(stream, T0)
        for rep_id in self.reps:
            shifts, breaks = traffic.schedules.get(rep_id, ([(0.0, traffic.duration)], []))
            for a, b in shifts:
                self.at(T0 + a, self._sign_in, rep_id)
                self.at(T0 + b, self._sign_out, rep_id)
            for a, b in breaks:
                self.at(T0 + a, self._lock, rep_id, True)
                self.at(T0 + b, self._lock, rep_id, False)
            every = traffic.behaviour.get_next_every
            if every > 0:  # each rep on a phase of its own
                self.at(T0 + self.rng.uniform(0, every), self._get_next, rep_id)
        engine, heap = self.engine, self.heap
        while True:
            t_heap = heap[0][0] if heap else math.inf
            deadline = engine.next_deadline()
            t_engine = math.inf if deadline is None else deadline
            t = min(t_heap, t_engine)
            if t >= end:
                break
            self.now = max(self.now, t)
            if t_engine <= t_heap:
                engine.advance()
                continue
            _, _, fn, args = heapq.heappop(heap)
            fn(*args)
        self.now = end
        for rep_id in self.reps:
            self._account(rep_id)
        return Report(
            traffic,
            self.queues,
            self.staffed,
            self.busy,
            issue_types=self.issue_types,
            held=self.held,
            customers=self.done,
            events=self.events,
            simulated_customers=len(self.done) + len(self.customers),
        )

    def _interval(self) -> int:
        i = int((self.now - T0) // self.traffic.interval)
        return min(max(i, 0), self.traffic.intervals - 1)

    def _issue_counts(self, issue_type: str) -> Counts:
        per = self.issue_types.get(issue_type)
        if per is None:
            per = self.issue_types[issue_type] = [Counts() for _ in range(self.traffic.intervals)]
        return per[self._interval()]

    def _counts(self, queue: QueueRef) -> Counts:
        name = queue_name(queue)
        per = self.queues.get(name)
        if per is None:
            per = self.queues[name] = [Counts() for _ in range(self.traffic.intervals)]
        return per[self._interval()]

    def _try(self, command: Callable[..., Any], *args: Any) -> Any:
        try:
            return command(*args)
        except DomainError:
            return None  # the state moved on (an offer withdrawn, a session ended)

    # ------------------------------------------------------------ customers

    def _next_arrival(self, stream: Any, t: float) -> None:
        """The next arrival of a stream after time t (Poisson, its rate constant within
        each interval)."""
        traffic = self.traffic
        while True:
            i = int((t - T0) // traffic.interval)
            if i >= traffic.intervals:
                return
            count = stream.per_interval[i] if i < len(stream.per_interval) else 0.0
            boundary = T0 + (i + 1) * traffic.interval
            if count <= 0:
                t = boundary
                continue
            t += self.stream_rngs[id(stream)].expovariate(count / traffic.interval)
            if t < boundary:
                self.at(t, self._arrive, stream)
                return
            t = boundary  # memoryless: start again at the next interval's rate

    def _arrive(self, stream: Any) -> None:
        if stream.issue_type == "general":
            outcome = self._try(self.engine.start_undesignated, CUSTOMER)
        else:
            outcome = self._try(self.engine.start_from_issue, stream.issue_type, CUSTOMER)
        rng = self.stream_rngs[id(stream)]
        handle = stream.handle_time.sample(rng)  # drawn whatever the desk does with it
        patience = None if stream.patience is None else stream.patience.sample(rng)
        if outcome is not None:
            session = outcome.value
            customer = self.customers.get(session.id)
            if customer is not None:
                customer.issue_type = stream.issue_type
                self._issue_counts(stream.issue_type).arrived += 1
                customer.handle = handle
                if patience is not None:
                    self.at(self.now + patience, self._give_up, session.id)
        self._next_arrival(stream, self.now)

    def _give_up(self, session_id: str) -> None:
        customer = self.customers.get(session_id)
        if customer is not None and customer.answered is None:
            self._try(self.engine.cancel_session, session_id)

    # ------------------------------------------------------------ reps

    def _account(self, rep_id: str) -> None:
        """Adds the rep's time since its last change to its teams' intervals."""
        clock = self.reps[rep_id]
        start, end = clock.since - T0, self.now - T0
        clock.since = self.now
        if end <= start or not clock.signed_in or clock.on_break:
            return
        size = self.traffic.interval
        while start < end:
            i = int(start // size)
            if i >= self.traffic.intervals:
                break
            piece = min(end, (i + 1) * size) - start
            for team in clock.teams:
                self.staffed[team][i] += piece
                if clock.busy:
                    self.busy[team][i] += piece
                    self.held[team][i] += piece * clock.busy
            start += piece

    def _sign_in(self, rep_id: str) -> None:
        self._account(rep_id)
        self.reps[rep_id].signed_in = True
        self._try(self.engine.connect, rep_id)

    def _sign_out(self, rep_id: str) -> None:
        self._account(rep_id)
        self.reps[rep_id].signed_in = False
        self._try(self.engine.disconnect, rep_id, True)

    def _lock(self, rep_id: str, locked: bool) -> None:
        self._account(rep_id)
        self.reps[rep_id].on_break = locked
        self._try(self.engine.set_locked, rep_id, locked)

    def _get_next(self, rep_id: str) -> None:
        """A free rep, signed in and not on a break, takes the best waiting session."""
        clock = self.reps[rep_id]
        if clock.signed_in and not clock.on_break and not clock.busy:
            self._try(self.engine.get_next, rep_id)
        self.at(self.now + self.traffic.behaviour.get_next_every, self._get_next, rep_id)

    def _answer(self, rep_id: str, offer_id: str, accept: bool) -> None:
        self._try(self.engine.answer_offer, rep_id, offer_id, accept)

    def _finish(self, rep_id: str, session_id: str) -> None:
        self._try(self.engine.end_session, rep_id, session_id)

    # ------------------------------------------------------------ engine events

    def _on_event(self, event: ev.Event) -> None:
        self.events += 1
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def _queued(self, e: ev.SessionQueued) -> None:
        customer = self.customers.get(e.session_id)
        if customer is None:
            customer = self.customers[e.session_id] = Record(self.now, 0.0)
        customer.queue, customer.entered = e.queue, self.now
        self._counts(e.queue).arrived += 1

    def _offered(self, e: ev.OfferMade) -> None:
        self._counts(e.queue).offers += 1
        b = self.traffic.behaviour
        draw = self.rng.random()
        if draw < b.accept + b.reject:
            think = b.think_time.sample(self.rng)
            self.at(self.now + think, self._answer, e.rep_id, e.offer_id, draw < b.accept)
        # else: the rep lets it time out (the engine's offer deadline)

    def _declined(self, e: ev.OfferDeclined) -> None:
        customer = self.customers.get(e.session_id)
        if customer is not None and customer.queue is not None:
            counts = self._counts(customer.queue)
            if e.timed_out:
                counts.timed_out += 1
            else:
                counts.rejected += 1

    def _accepted(self, e: ev.SessionAccepted) -> None:
        customer = self.customers.get(e.session_id)
        if customer is None:
            return
        wait = self.now - customer.entered
        counts = self._counts(e.queue)
        counts.answered += 1
        counts.wait_sum += wait
        counts.longest = max(counts.longest, wait)
        if wait <= self.traffic.threshold:
            counts.within += 1
        if customer.answered is None:
            customer.answered, customer.wait = self.now, wait
            if customer.issue_type:
                self._issue_answered(customer)
        self._account(e.rep_id)
        self.reps[e.rep_id].busy += 1
        self.at(self.now + customer.handle, self._finish, e.rep_id, e.session_id)

    def _issue_answered(self, customer: Record) -> None:
        assert customer.answered is not None and customer.issue_type
        counts = self._issue_counts(customer.issue_type)
        wait = customer.answered - customer.arrived
        counts.answered += 1
        counts.wait_sum += wait
        counts.longest = max(counts.longest, wait)
        counts.within += wait <= self.traffic.threshold

    def _released(self, e: ev.OwnerReleased) -> None:
        clock = self.reps.get(e.rep_id)
        if clock is not None and clock.busy:
            self._account(e.rep_id)
            clock.busy -= 1

    def _ended(self, e: ev.SessionEnded) -> None:
        customer = self.customers.pop(e.session_id, None)
        if customer is None:
            return
        if e.reason is EndReason.ABANDONED and customer.answered is None:
            customer.abandoned = True
            if customer.queue is not None:
                counts = self._counts(customer.queue)
                counts.abandoned += 1
                counts.longest = max(counts.longest, self.now - customer.entered)
            if customer.issue_type:
                counts = self._issue_counts(customer.issue_type)
                counts.abandoned += 1
                counts.longest = max(counts.longest, self.now - customer.arrived)
        self.done.append(customer)
