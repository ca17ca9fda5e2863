"""Capacity by service channel (rule 16).

A desk declares its service channels (`remote_support`, `chat`, `voice`, ...); each is a
bit of the reps' room masks, and "" (sessions that name none) is bit 0. A rep with a
capacity profile has `total` units; a session of channel c costs cost[c] units, and at
most limit[c] of them run at once. The rep has room for c when both hold with one more;
its load, for "least busy", is the share of its units in use, in 1/1024ths. A rep
without a profile keeps `max_concurrent_sessions` (room for every channel while under it,
load in sessions), so desks without profiles route exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import validation as v
from .columns import MAX_RANKED_LOAD
from .constants import MAX_CHANNELS
from .errors import InvalidArgument
from .events import DirectoryChanged
from .model import CapacityProfile, Rep

if TYPE_CHECKING:
    from .state import State

LOAD_SCALE = 1024  # a profiled rep's load: units in use / total, in 1/1024ths
MAX_UNITS = 1000


@dataclass(frozen=True, slots=True)
class Compiled:
    total: int
    cost: dict[int, int]  # channel number -> units
    limit: dict[int, int]  # channel number -> sessions at once
    serves: int  # channels it can ever take: their cost fits and their limit is not 0


def define_channels(st: State, names: list[str]) -> list[str]:
    """Declares service channels (those already declared are kept; none is ever
    removed, so sessions and profiles that name one stay valid). Returns the desk's
    channels in declaration order."""
    c = v.Checks()
    if not isinstance(names, list | tuple):
        raise InvalidArgument("channels", "must be a list of channel names")
    for i, name in enumerate(names):
        c(v.ident, f"channels[{i}]", name)
    c.done()
    new = [n for n in dict.fromkeys(names) if n not in st.channels]
    if len(st.channels) + len(new) > MAX_CHANNELS:
        raise InvalidArgument("channels", f"a desk has at most {MAX_CHANNELS - 1} service channels")
    for name in new:
        st.channels[name] = len(st.channels)
        st.emit(DirectoryChanged(st.now, "channel", name, "created"))
    return [n for n in st.channels if n]


def check_channel(st: State, field_name: str, name: object) -> str:
    if name == "":
        return ""
    v.ident(field_name, name)
    if name not in st.channels:
        raise InvalidArgument(field_name, f"{name!r} is not one of the desk's channels")
    assert isinstance(name, str)
    return name


def check_profile(st: State, field_name: str, profile: object) -> None:
    """A profile's fields and channels, before anything changes."""
    if not isinstance(profile, CapacityProfile):
        raise InvalidArgument(field_name, "must be a capacity profile")
    c = v.Checks()
    if not isinstance(profile.total, int) or not 1 <= profile.total <= MAX_UNITS:
        c.add(f"{field_name}.total", f"must be 1-{MAX_UNITS} units")
    for part in ("cost", "limit"):
        pairs = getattr(profile, part)
        if not isinstance(pairs, tuple):
            c.add(f"{field_name}.{part}", "must be (channel, number) pairs")
            continue
        seen = set()
        for i, pair in enumerate(pairs):
            where = f"{field_name}.{part}[{i}]"
            if not (isinstance(pair, tuple) and len(pair) == 2):
                c.add(where, "must be a (channel, number) pair")
                continue
            name, number = pair
            if not isinstance(name, str) or (name != "" and name not in st.channels):
                c.add(where, f"{name!r} is not one of the desk's channels")
            elif name in seen:
                c.add(where, f"channel {name!r} is listed twice")
            seen.add(name)
            low = 1 if part == "cost" else 0
            if (
                not isinstance(number, int)
                or isinstance(number, bool)
                or not low <= number <= MAX_UNITS
            ):
                c.add(where, f"must be {low}-{MAX_UNITS}")
    if not profile.cost:
        c.add(f"{field_name}.cost", "must give a cost for at least one channel")
    c.done()


PROFILES_KEPT = 1024  # compiled profiles cached; more are compiled again when used


def compiled(st: State, profile: CapacityProfile) -> Compiled:
    got = st.profiles.get(profile)
    if got is None:
        if len(st.profiles) >= PROFILES_KEPT:  # profiles replaced over and over: start again
            st.profiles.clear()
        cost = {st.channels[n]: units for n, units in profile.cost}
        limit = {st.channels[n]: count for n, count in profile.limit}
        serves = 0
        for ch, units in cost.items():
            if units <= profile.total and limit.get(ch, 1) > 0:
                serves |= 1 << ch
        got = st.profiles[profile] = Compiled(profile.total, cost, limit, serves)
    return got


def usage(st: State, rep: Rep, profile: CapacityProfile) -> tuple[int, int, int]:
    """(load in 1/1024ths of the units, room mask, serves mask) of a profiled rep. A
    session of a channel the profile gives no cost (taken by hand) uses every unit."""
    p = compiled(st, profile)
    units = 0
    counts: dict[int, int] = {}
    for sid in rep.owned | rep.participating:
        ch = st.channels[st.sessions[sid].service_channel]
        counts[ch] = counts.get(ch, 0) + 1
        units += p.cost.get(ch, p.total)
    room = 0
    for ch, cost in p.cost.items():
        if units + cost <= p.total and counts.get(ch, 0) < p.limit.get(ch, MAX_UNITS + 1):
            room |= 1 << ch
    load = min(units * LOAD_SCALE // p.total, MAX_RANKED_LOAD)
    return load, room & p.serves, p.serves


def in_use(st: State, rep: Rep) -> dict[str, tuple[int, int]]:
    """Per channel of a profiled rep: (sessions, units) in use (statistics, views)."""
    profile = rep.permissions.capacity
    if profile is None:
        return {}
    p = compiled(st, profile)
    names = {i: n for n, i in st.channels.items()}
    out: dict[str, tuple[int, int]] = {}
    for sid in rep.owned | rep.participating:
        ch = st.channels[st.sessions[sid].service_channel]
        count, units = out.get(names[ch], (0, 0))
        out[names[ch]] = (count + 1, units + p.cost.get(ch, p.total))
    return out
