from __future__ import annotations

import os

# gRPC's fork handlers, run in a child forked while other threads are inside gRPC, can
# crash that child before it execs (SIGSEGV or SIGABRT: seen in CI as pg_ctl dying when
# the PostgreSQL server started beside a running channel). Nothing here uses gRPC across
# a fork; the variable must be set before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import random  # noqa: E402

import pytest
from hypothesis import HealthCheck, settings

from assigncore.engine import Engine, EngineConfig
from assigncore.events import Event
from assigncore.kernel import Kernel
from assigncore.model import Algorithm, Customer, QueueSettings

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "dev", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

T0 = 1_000_000.0


class ManualClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def tick(self, seconds: float) -> None:
        self.t += seconds


class Desk:
    """An engine on a manual clock, recording every event it emits."""

    def __init__(self, config: EngineConfig | None = None, kernel: Kernel | None = None) -> None:
        self.clock = ManualClock()
        self.events: list[Event] = []
        self.engine = Engine(
            self.clock, config, listener=self.events.append, kernel=kernel, rng=random.Random(7)
        )

    def team(self, team_id: str, algorithm: Algorithm = Algorithm.LEAST_BUSY, **kw) -> None:
        self.engine.create_team(
            team_id, team_id.title(), settings=QueueSettings(algorithm=algorithm, **kw)
        )

    def rep(self, rep_id: str, teams=(), connect: bool = True, **kw) -> None:
        self.engine.create_rep(rep_id, rep_id.title(), teams=list(teams), **kw)
        if connect:
            self.engine.connect(rep_id)

    def later(self, seconds: float) -> list[Event]:
        self.clock.tick(seconds)
        return self.engine.advance().events

    def of(self, kind: type, **match) -> list:
        return [
            e
            for e in self.events
            if isinstance(e, kind) and all(getattr(e, k) == val for k, val in match.items())
        ]

    def pending_offer(self, session_id: str):
        s = self.engine.session(session_id)
        return None if s.offer is None else self.engine.offer(s.offer)


def customer(name: str = "Carol") -> Customer:
    return Customer(name, "ACME", "printer on fire")


@pytest.fixture
def desk() -> Desk:
    return Desk()
