"""The simulator's traffic model: arrivals per issue type per interval, handle times,
customer patience, how reps answer offers, and rep schedules. Read from TOML:

    interval = 900                 # seconds per interval (default 15 minutes)
    intervals = 32                 # how many (default: the longest arrivals list)
    start = "08:00"                # the first interval's clock time (reports only)
    service_level_threshold = 60   # seconds, for the service level (default: 60)

    [[arrivals]]                   # one per issue type (or "general" for undesignated)
    issue_type = "printer-jam"
    per_interval = [4, 6, 9, 12, 12, 10]   # expected arrivals in each interval
    handle_time = { distribution = "lognormal", mean = 420, sd = 240 }
    patience = { distribution = "exponential", mean = 180 }   # optional: abandonment

    [behaviour]                    # how reps answer offers (default: accept at once)
    accept = 0.95                  # probability of accepting an offer
    reject = 0.03                  # of rejecting it; the rest let it time out
    think_time = { distribution = "uniform", low = 1, high = 6 }
    get_next_every = 30            # a free rep takes the best waiting session with Get
                                   # Next this often (seconds; 0: never): how queues
                                   # without automatic assignment get served

    [[schedules]]                  # reps not listed work every interval
    rep = "ann"
    shifts = [["08:00", "12:00"], ["12:30", "16:00"]]   # signed in
    breaks = [["10:00", "10:15"]]                       # device locked

Distributions: `constant` (value), `exponential` (mean), `uniform` (low, high),
`lognormal` (mean, sd of the value itself), `gamma` (mean, sd). A number alone is a
constant.
"""

from __future__ import annotations

import math
import random
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class TrafficError(ValueError):
    """A traffic model that cannot be used; the message says where."""


@dataclass(frozen=True)
class Dist:
    """A non-negative random duration or count."""

    kind: str
    a: float = 0.0
    b: float = 0.0

    @property
    def mean(self) -> float:
        if self.kind == "uniform":
            return (self.a + self.b) / 2
        return self.a

    def sample(self, rng: random.Random) -> float:
        if self.kind == "constant":
            return self.a
        if self.kind == "exponential":
            return rng.expovariate(1 / self.a) if self.a > 0 else 0.0
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        if self.kind == "lognormal":
            sigma2 = math.log(1 + (self.b / self.a) ** 2)
            return rng.lognormvariate(math.log(self.a) - sigma2 / 2, math.sqrt(sigma2))
        if self.kind == "gamma":
            shape = (self.a / self.b) ** 2
            return rng.gammavariate(shape, self.a / shape)
        raise AssertionError(self.kind)


def dist(spec: Any, where: str) -> Dist:
    """A distribution from its TOML form."""
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        if spec < 0:
            raise TrafficError(f"{where}: must not be negative")
        return Dist("constant", float(spec))
    if not isinstance(spec, dict) or "distribution" not in spec:
        raise TrafficError(f"{where}: a number or a table with a distribution")
    kind = spec["distribution"]
    keys = {
        "constant": ("value",),
        "exponential": ("mean",),
        "uniform": ("low", "high"),
        "lognormal": ("mean", "sd"),
        "gamma": ("mean", "sd"),
    }
    if kind not in keys:
        raise TrafficError(f"{where}: distribution is one of {sorted(keys)}")
    unknown = set(spec) - {"distribution", *keys[kind]}
    if unknown:
        raise TrafficError(f"{where}: unknown keys {sorted(unknown)}")
    try:
        values = [float(spec[k]) for k in keys[kind]]
    except (KeyError, TypeError, ValueError):
        raise TrafficError(f"{where}: {kind} needs {', '.join(keys[kind])}") from None
    if any(v < 0 or math.isnan(v) or math.isinf(v) for v in values):
        raise TrafficError(f"{where}: values must be finite and not negative")
    if kind == "uniform" and values[0] > values[1]:
        raise TrafficError(f"{where}: low must not exceed high")
    if kind in ("lognormal", "gamma") and (values[0] <= 0 or values[1] <= 0):
        raise TrafficError(f"{where}: {kind} needs a positive mean and sd")
    return Dist(kind, *values)


@dataclass(frozen=True)
class Arrivals:
    issue_type: str  # "general": undesignated sessions, to the general queue
    per_interval: tuple[float, ...]
    handle_time: Dist
    patience: Dist | None = None


@dataclass(frozen=True)
class Behaviour:
    accept: float = 1.0
    reject: float = 0.0
    think_time: Dist = Dist("constant", 0.0)
    get_next_every: float = 0.0  # seconds; 0: reps never use Get Next


@dataclass
class Traffic:
    interval: float = 900.0
    intervals: int = 1
    start: float = 0.0  # seconds after midnight, for reports
    threshold: float = 60.0
    arrivals: list[Arrivals] = field(default_factory=list)
    behaviour: Behaviour = field(default_factory=Behaviour)
    # rep -> (shifts, breaks), each a list of (start, end) in seconds from the start
    schedules: dict[str, tuple[list[tuple[float, float]], list[tuple[float, float]]]] = field(
        default_factory=dict
    )

    @property
    def duration(self) -> float:
        return self.interval * self.intervals

    def label(self, i: int) -> str:
        """The clock time interval `i` starts at."""
        t = int(self.start + i * self.interval) % 86400
        return f"{t // 3600:02d}:{t % 3600 // 60:02d}"


def clock_time(value: Any, where: str) -> float:
    """Seconds after midnight of "HH:MM"."""
    try:
        hours, minutes = str(value).split(":")
        h, m = int(hours), int(minutes)
    except ValueError:
        raise TrafficError(f"{where}: a time is HH:MM, not {value!r}") from None
    if not (0 <= h <= 24 and 0 <= m < 60):
        raise TrafficError(f"{where}: {value!r} is not a time of day")
    return h * 3600.0 + m * 60.0


def _spans(value: Any, start: float, where: str) -> list[tuple[float, float]]:
    if not isinstance(value, list):
        raise TrafficError(f"{where}: a list of [start, end] pairs")
    out = []
    for i, pair in enumerate(value):
        if not isinstance(pair, list) or len(pair) != 2:
            raise TrafficError(f"{where}[{i}]: a [start, end] pair of HH:MM")
        a, b = (clock_time(x, f"{where}[{i}]") - start for x in pair)
        if b <= a:
            raise TrafficError(f"{where}[{i}]: ends before it starts")
        out.append((a, b))
    return out


def parse(data: dict[str, Any], source: str = "traffic") -> Traffic:
    known = {"interval", "intervals", "start", "service_level_threshold", "arrivals",
             "behaviour", "schedules"}  # fmt: skip
    unknown = set(data) - known
    if unknown:
        raise TrafficError(f"{source}: unknown keys {sorted(unknown)}")
    interval = float(data.get("interval", 900))
    if not 1 <= interval <= 86400:
        raise TrafficError(f"{source}: interval is 1 to 86400 seconds")
    start = clock_time(data.get("start", "00:00"), f"{source}: start")
    threshold = float(data.get("service_level_threshold", 60))
    if not 0 < threshold <= 86400:
        raise TrafficError(f"{source}: service_level_threshold is 1 to 86400 seconds")
    arrivals = []
    for i, entry in enumerate(data.get("arrivals", [])):
        where = f"{source}: arrivals[{i}]"
        if not isinstance(entry, dict) or "issue_type" not in entry:
            raise TrafficError(f"{where}: needs issue_type")
        extra = set(entry) - {"issue_type", "per_interval", "handle_time", "patience"}
        if extra:
            raise TrafficError(f"{where}: unknown keys {sorted(extra)}")
        counts = entry.get("per_interval")
        if not isinstance(counts, list) or not counts:
            raise TrafficError(f"{where}: per_interval is a list of expected arrivals")
        if any(not isinstance(c, int | float) or c < 0 for c in counts):
            raise TrafficError(f"{where}: per_interval holds numbers, none negative")
        if "handle_time" not in entry:
            raise TrafficError(f"{where}: needs handle_time")
        patience = entry.get("patience")
        arrivals.append(
            Arrivals(
                str(entry["issue_type"]),
                tuple(float(c) for c in counts),
                dist(entry["handle_time"], f"{where}.handle_time"),
                None if patience is None else dist(patience, f"{where}.patience"),
            )
        )
    if not arrivals:
        raise TrafficError(f"{source}: no [[arrivals]]")
    intervals = int(data.get("intervals", max(len(a.per_interval) for a in arrivals)))
    if not 1 <= intervals <= 10_000:
        raise TrafficError(f"{source}: intervals is 1 to 10000")
    b = data.get("behaviour", {})
    if not isinstance(b, dict) or set(b) - {"accept", "reject", "think_time", "get_next_every"}:
        raise TrafficError(
            f"{source}: [behaviour] has accept, reject, think_time and get_next_every"
        )
    get_next_every = float(b.get("get_next_every", 0))
    if not 0 <= get_next_every <= 86400:
        raise TrafficError(f"{source}: [behaviour] get_next_every is 0 to 86400 seconds")
    accept, reject = float(b.get("accept", 1.0)), float(b.get("reject", 0.0))
    if accept < 0 or reject < 0 or accept + reject > 1:
        raise TrafficError(f"{source}: [behaviour] accept + reject is at most 1")
    behaviour = Behaviour(
        accept,
        reject,
        dist(b.get("think_time", 0), f"{source}: behaviour.think_time"),
        get_next_every,
    )
    schedules = {}
    for i, entry in enumerate(data.get("schedules", [])):
        where = f"{source}: schedules[{i}]"
        if not isinstance(entry, dict) or "rep" not in entry:
            raise TrafficError(f"{where}: needs rep")
        shifts = _spans(entry.get("shifts", []), start, f"{where}.shifts")
        breaks = _spans(entry.get("breaks", []), start, f"{where}.breaks")
        schedules[str(entry["rep"])] = (shifts, breaks)
    return Traffic(interval, intervals, start, threshold, arrivals, behaviour, schedules)


def load(path: str | Path) -> Traffic:
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise TrafficError(f"{path}: {exc}") from None
    return parse(data, str(path))
