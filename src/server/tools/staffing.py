"""Staffing mode of `assigncore simulate`: the fewest reps per team that meet a
service-level target, interval by interval.

For each team and interval, the team's own traffic (the issue types routed to it) runs
at that interval's rates, in steady state, on the engine with n interchangeable reps
of the team (taking one session at a time, answering offers as the traffic model
says). The search starts from Erlang C's answer for the mean handle time and moves up
until the simulated service level meets the target, then down while it still does.
Each team is staffed on its own: reps shared between teams, and overflow between
queues, are not modelled here (the full simulation shows their effect).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from ..config import Settings
from . import erlang
from .simulate import Simulation
from .traffic import Arrivals, Traffic

MAX_REPS = 500


def _team_of(settings: Settings, issue_type: str) -> str | None:
    for entry in settings.desk.get("issue_types", []):
        if entry.get("id") == issue_type:
            team = entry.get("team")
            return str(team) if team else None
    return None


def _desk(settings: Settings, team: str, issue_types: set[str], reps: int) -> Settings:
    desk: dict[str, Any] = {
        "teams": [copy.deepcopy(t) for t in settings.desk.get("teams", []) if t.get("id") == team],
        "issue_types": [
            copy.deepcopy(i)
            for i in settings.desk.get("issue_types", [])
            if i.get("id") in issue_types
        ],
        "reps": [
            {
                "id": f"staff-{k}",
                "name": f"Staff {k}",
                "teams": [team],
                "permissions": {"max_concurrent_sessions": 1},
            }
            for k in range(reps)
        ],
    }
    for t in desk["teams"]:  # an overflow target outside this team does not exist here
        rule = t.get("waiting_rule")
        if isinstance(rule, dict) and rule.get("action", "").upper() == "TRANSFER":
            t.pop("waiting_rule")
    return replace(settings, desk=desk)


def service_level(
    settings: Settings,
    streams: list[Arrivals],
    traffic: Traffic,
    interval: int,
    reps: int,
    customers: int,
    seed: int,
) -> float:
    """The steady-state service level of the team with `reps` reps at the interval's
    rates (the first tenth of the customers is a warm-up)."""
    rate = sum(s.per_interval[interval] for s in streams if interval < len(s.per_interval))
    rate /= traffic.interval
    duration = customers / rate
    steady = [
        replace(s, per_interval=(s.per_interval[interval] / traffic.interval * duration,))
        for s in streams
        if interval < len(s.per_interval) and s.per_interval[interval] > 0
    ]
    team = _team_of(settings, streams[0].issue_type)
    assert team is not None
    run = Traffic(
        interval=duration,
        intervals=1,
        threshold=traffic.threshold,
        arrivals=steady,
        behaviour=traffic.behaviour,
    )
    desk = _desk(settings, team, {s.issue_type for s in streams}, reps)
    report = Simulation(desk, run, seed=seed).run()
    records = sorted(report.customers, key=lambda r: r.arrived)
    records = records[len(records) // 10 :]
    served = [r for r in records if r.answered is not None or r.abandoned]
    if not served:
        return 0.0
    within = sum(1 for r in served if r.answered is not None and (r.wait or 0) <= traffic.threshold)
    return within / len(served)


def staff(
    settings: Settings, traffic: Traffic, target: float, customers: int = 4000, seed: int = 1
) -> dict[str, list[int]]:
    """Per team, per interval, the fewest reps that meet `target`."""
    by_team: dict[str, list[Arrivals]] = {}
    for stream in traffic.arrivals:
        team = _team_of(settings, stream.issue_type)
        if team is not None:
            by_team.setdefault(team, []).append(stream)
    out: dict[str, list[int]] = {}
    for team, streams in sorted(by_team.items()):
        needs = []
        for i in range(traffic.intervals):
            counts = [s.per_interval[i] if i < len(s.per_interval) else 0.0 for s in streams]
            total = sum(counts)
            if total <= 0:
                needs.append(0)
                continue
            lam = total / traffic.interval
            handle = sum(c * s.handle_time.mean for c, s in zip(counts, streams, strict=True))
            handle /= total
            n = _erlang_guess(lam, handle, traffic.threshold, target)

            def meets(reps: int, i: int = i, streams: list[Arrivals] = streams) -> bool:
                level = service_level(settings, streams, traffic, i, reps, customers, seed)
                return level >= target

            while n < MAX_REPS and not meets(n):
                n += 1
            while n > 1 and meets(n - 1):
                n -= 1
            needs.append(n)
        out[team] = needs
    return out


def _erlang_guess(lam: float, handle: float, threshold: float, target: float) -> int:
    if handle <= 0:
        return 1
    load = lam * handle
    c = max(1, int(load) + 1)
    while c < MAX_REPS and erlang.mmc(lam, 1 / handle, c, threshold).service_level < target:
        c += 1
    return c
