"""`assigncore simulate --check`: the simulator (the production engine) against queueing
theory.

Two desks of one team whose reps take one session at a time and accept every offer at
once, so the engine must behave as the textbook queue:

- M/M/c: Poisson arrivals, exponential handle times, nobody leaves; P(wait), the
  service level and the average speed of answer against Erlang C;
- M/M/c+M: the same with exponential patience; P(wait) and abandonment against
  Erlang A.

Each is one long run. The first tenth of the customers is a warm-up and is dropped;
the rest, in arrival order, make 20 batches, whose means give each estimate and its
95% confidence interval (batch means, Student's t). A figure passes when it is within
1 percentage point of theory (the ASA: within 5% of it).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

from .. import config
from . import erlang
from .simulate import Record, Simulation
from .traffic import Arrivals, Dist, Traffic

BATCHES = 20
T_975 = 2.093  # Student's t, 19 degrees of freedom
THRESHOLD = 60.0  # seconds, for the service level


@dataclass(frozen=True)
class Scenario:
    name: str
    reps: int
    load: float  # offered load in Erlangs (arrival rate x mean handle time)
    handle: float  # mean handle time, seconds
    patience: float | None  # mean patience, seconds (None: nobody abandons)


SCENARIOS = (
    Scenario("M/M/c (Erlang C)", reps=8, load=6.4, handle=300.0, patience=None),
    Scenario("M/M/c+M (Erlang A)", reps=8, load=8.0, handle=300.0, patience=300.0),
)


@dataclass(frozen=True)
class Row:
    scenario: str
    figure: str
    theory: float
    simulated: float
    half_width: float  # of the 95% confidence interval
    tolerance: float
    unit: str  # "%" or "s"

    @property
    def passed(self) -> bool:
        return abs(self.simulated - self.theory) <= self.tolerance

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "figure": self.figure,
            "theory": round(self.theory, 4),
            "simulated": round(self.simulated, 4),
            "ci95_half_width": round(self.half_width, 4),
            "tolerance": round(self.tolerance, 4),
            "unit": self.unit,
            "passed": self.passed,
        }


def desk(s: Scenario) -> config.Settings:
    reps = "".join(
        f'[[reps]]\nid = "r{i}"\nteams = ["q"]\npermissions = {{ max_concurrent_sessions = 1 }}\n'
        for i in range(s.reps)
    )
    text = (
        "[server]\nstatistics = false\n"
        '[[teams]]\nid = "q"\nalgorithm = "LEAST_BUSY"\noffer_timeout = 3600\n'
        f"service_level_threshold = {THRESHOLD:g}\n"
        '[[issue_types]]\nid = "it"\nteam = "q"\n' + reps
    )
    return config.parse(text, "check desk")


def batches(values: list[float]) -> tuple[float, float]:
    """The mean of `values` and the half width of its 95% confidence interval, from
    BATCHES consecutive batches."""
    size = len(values) // BATCHES
    means = [statistics.fmean(values[i * size : (i + 1) * size]) for i in range(BATCHES)]
    return statistics.fmean(means), T_975 * statistics.stdev(means) / math.sqrt(BATCHES)


def run_scenario(s: Scenario, customers: int, seed: int) -> tuple[list[Row], int, float]:
    lam = s.load / s.handle
    duration = customers / lam
    traffic = Traffic(
        interval=duration,
        intervals=1,
        threshold=THRESHOLD,
        arrivals=[
            Arrivals(
                "it",
                (float(customers),),
                Dist("exponential", s.handle),
                None if s.patience is None else Dist("exponential", s.patience),
            )
        ],
    )
    started = time.process_time()
    report = Simulation(desk(s), traffic, seed=seed).run()
    cpu = time.process_time() - started
    done: list[Record] = sorted(report.customers, key=lambda r: r.arrived)
    done = done[len(done) // 10 :]
    waited = [1.0 if (r.answered is None or (r.wait or 0.0) > 0) else 0.0 for r in done]
    rows = []
    mu = 1 / s.handle
    if s.patience is None:
        theory = erlang.mmc(lam, mu, s.reps, THRESHOLD)
        answered = [r for r in done if r.answered is not None]
        within = [1.0 if (r.wait or 0.0) <= THRESHOLD else 0.0 for r in answered]
        waits = [r.wait or 0.0 for r in answered]
        for figure, value, values, tolerance, unit in (
            ("P(wait)", theory.p_wait, waited, 0.01, "%"),
            (f"service level ({THRESHOLD:g} s)", theory.service_level, within, 0.01, "%"),
            ("average speed of answer", theory.asa, waits, 0.05 * theory.asa, "s"),
        ):
            mean, half = batches(values)
            rows.append(Row(s.name, figure, value, mean, half, tolerance, unit))
    else:
        theory_a = erlang.erlang_a(lam, mu, s.reps, 1 / s.patience)
        abandoned = [1.0 if r.abandoned else 0.0 for r in done]
        for figure, value, values in (
            ("P(wait)", theory_a.p_wait, waited),
            ("abandonment", theory_a.p_abandon, abandoned),
        ):
            mean, half = batches(values)
            rows.append(Row(s.name, figure, value, mean, half, 0.01, "%"))
    return rows, report.simulated_customers, cpu


def run(quick: bool = False, seed: int = 1) -> dict[str, Any]:
    """Every scenario; the rows, the customers simulated and the CPU they took."""
    customers = 150_000 if quick else 600_000
    rows: list[Row] = []
    simulated, cpu = 0, 0.0
    for i, scenario in enumerate(SCENARIOS):
        got, n, seconds = run_scenario(scenario, customers, seed + i)
        rows += got
        simulated += n
        cpu += seconds
    return {
        "rows": rows,
        "passed": all(r.passed for r in rows),
        "simulated_customers": simulated,
        "cpu_s": round(cpu, 2),
        "customers_per_cpu_s": round(simulated / cpu) if cpu else None,
    }


def table(rows: list[Row]) -> str:
    """The check as a Markdown table."""

    def shown(value: float, unit: str) -> str:
        return f"{value * 100:.2f}%" if unit == "%" else f"{value:.1f} s"

    lines = [
        "| model | figure | theory | simulated (95% CI) | within |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        sim = f"{shown(r.simulated, r.unit)} ± {shown(r.half_width, r.unit)}"
        tol = "1 pt" if r.unit == "%" else "5%"
        lines.append(
            f"| {r.scenario} | {r.figure} | {shown(r.theory, r.unit)} | {sim} | "
            f"{'yes' if r.passed else 'NO'} ({tol}) |"
        )
    return "\n".join(lines)
