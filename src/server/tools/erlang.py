"""Queueing theory for the simulator's self-check: Erlang C (M/M/c) and Erlang A
(M/M/c+M), the formulas contact centers staff by.

M/M/c: Poisson arrivals at rate `lam`, `c` agents, exponential handling at rate `mu`
each, an unlimited queue served first come first served, nobody leaving. With offered
load A = lam/mu < c, the probability that an arrival waits is Erlang's C formula; the
wait of those who wait is exponential at rate c*mu - lam.

M/M/c+M (Erlang A): the same, and each waiting customer leaves after an exponential
patience at rate `theta`. The number in the system is a birth-death chain (births at
lam; deaths at n*mu up to c, then c*mu + (n - c)*theta), solved here numerically:
P(wait) is the chance an arrival finds all agents busy (PASTA), and the abandonment is
the rate of abandonments over the arrival rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def erlang_c(c: int, load: float) -> float:
    """P(an arrival waits) in M/M/c with offered load `load` (= lam/mu) < c."""
    if c <= 0 or load <= 0:
        raise ValueError("c and the load must be positive")
    if load >= c:
        return 1.0
    # Erlang B by its stable recursion, then C from B.
    b = 1.0
    for k in range(1, c + 1):
        b = load * b / (k + load * b)
    return c * b / (c - load * (1 - b))


@dataclass(frozen=True)
class MMc:
    """M/M/c figures: P(wait), the service level within `threshold`, and the average
    speed of answer (the mean wait over all arrivals)."""

    p_wait: float
    service_level: float
    asa: float


def mmc(lam: float, mu: float, c: int, threshold: float) -> MMc:
    load = lam / mu
    p_wait = erlang_c(c, load)
    drain = c * mu - lam
    if drain <= 0:
        return MMc(1.0, 0.0, math.inf)
    return MMc(p_wait, 1 - p_wait * math.exp(-drain * threshold), p_wait / drain)


@dataclass(frozen=True)
class MMcM:
    """Erlang A figures: P(wait) and the share of arrivals who abandon."""

    p_wait: float
    p_abandon: float


def erlang_a(lam: float, mu: float, c: int, theta: float, tail: float = 1e-12) -> MMcM:
    """M/M/c+M by its birth-death chain, truncated where the probabilities fall under
    `tail` of the largest (in logarithms, so large c and loads stay exact)."""
    if min(lam, mu, theta) <= 0 or c <= 0:
        raise ValueError("rates and c must be positive")
    logs = [0.0]
    n = 0
    while True:
        death = (n + 1) * mu if n + 1 <= c else c * mu + (n + 1 - c) * theta
        logs.append(logs[-1] + math.log(lam) - math.log(death))
        n += 1
        if n > c and logs[-1] < max(logs) + math.log(tail):
            break
    top = max(logs)
    weights = [math.exp(x - top) for x in logs]
    total = sum(weights)
    p = [w / total for w in weights]
    p_wait = sum(p[c:])
    abandoning = sum((k - c) * theta * p[k] for k in range(c + 1, len(p)))
    return MMcM(p_wait, abandoning / lam)
