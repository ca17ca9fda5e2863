"""Columnar state the kernel ranks over: reps, team membership, assignable sessions.

Each table owns growable numpy arrays indexed by a dense ordinal and rebinds the kernel
whenever an array is reallocated, so the kernel's memoryviews are always current and a
ranking call has no set-up cost. The engine updates these columns in place.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .constants import (  # noqa: F401  (the flags are part of this module's interface)
    ALL_CHANNELS,
    FLAG_IDLE,
    FLAG_LOCKED,
    FLAG_OFFLINE,
    FLAG_OPTED_OUT,
    FLAG_PENDING_OFFER,
    FLAG_REMOVED,
    FLAG_WRAP_UP,
    INELIGIBLE,
    LOAD_SHIFT,
    MAX_REQUIRED_SKILLS,
)

NO_CAP = np.iinfo(np.int32).max
MAX_AVAIL_TICKS = (1 << LOAD_SHIFT) - 1  # ~8.9 years after the epoch
MAX_RANKED_LOAD = (1 << 14) - 1  # higher loads rank as this (far above any real cap)


def _grow(arr: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows,) + arr.shape[1:], dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    return out


class _Bound:
    """Columns the kernel is bound to: a restored table (snapshot) binds again."""

    def _bind(self) -> None:
        raise NotImplementedError

    def __getstate__(self) -> dict[str, Any]:
        # Views are rebuilt by _bind (and a memoryview cannot be pickled).
        return {k: v for k, v in self.__dict__.items() if not isinstance(v, memoryview)}

    def __setstate__(self, saved: dict[str, Any]) -> None:
        self.__dict__.update(saved)
        self._bind()


class RepTable(_Bound):
    """Per-rep columns: load, cap (max concurrent sessions), flags, available_since
    (integer microseconds since the epoch; a rep that has been available longer has a
    smaller value), skill levels (rep x skill matrix, 0 = skill absent).

    room: a bit per service channel the rep has room for now (all bits for a rep
    without a capacity profile, whose room is `load < cap`).

    rank_key is derived: load << 48 | available_since for an eligible rep (flags == 0,
    load < cap and some room), else INELIGIBLE. Least-busy ranking is then the smallest rank_key,
    one int64 per candidate. It is only ever written through the methods below, which
    keep it in step.
    """

    def __init__(self, kernel, capacity: int = 64, skill_capacity: int = 8) -> None:
        self.kernel = kernel
        self.n = 0
        self.load = np.zeros(capacity, dtype=np.int32)
        self.cap = np.full(capacity, NO_CAP, dtype=np.int32)
        self.flags = np.zeros(capacity, dtype=np.uint8)
        self.avail = np.zeros(capacity, dtype=np.int64)
        self.rank_key = np.full(capacity, INELIGIBLE, dtype=np.int64)
        self.skills = np.zeros((capacity, skill_capacity), dtype=np.uint8)
        self.marks = np.zeros(capacity, dtype=np.uint8)
        self.room = np.full(capacity, ALL_CHANNELS, dtype=np.uint16)
        self.serves = np.full(capacity, ALL_CHANNELS, dtype=np.uint16)  # ever has room
        self.narrow = np.zeros(1, dtype=np.int64)  # reps whose room is not ALL_CHANNELS
        self.n_skills = 0
        self.n_eligible = 0  # reps whose rank_key is not INELIGIBLE, kept by refresh()
        self._bind()

    def _bind(self) -> None:
        self._bind_kernel()
        self._views()

    def _bind_kernel(self) -> None:
        self.kernel.bind_reps(
            self.rank_key, self.flags, self.skills, self.marks, self.room, self.narrow, self.n
        )

    def _views(self) -> None:
        # One rep's columns are read and written from Python on every command, through
        # memoryviews: a read costs ~25 ns there against ~125 ns through numpy (and
        # gives a Python int). Rebuilt with every reallocation, as the kernel's binding.
        self.load_v = self.load.data
        self.cap_v = self.cap.data
        self.flags_v = self.flags.data
        self.avail_v = self.avail.data
        self.key_v = self.rank_key.data
        self.room_v = self.room.data
        self.serves_v = self.serves.data
        self.skills_v = self.skills.data  # [rep, skill]

    def add(self) -> int:
        """A new rep ordinal (offline, no load, no skills). Ordinals are never reused."""
        if self.n == len(self.load):
            size = 2 * len(self.load)
            for name in (
                "load",
                "cap",
                "flags",
                "avail",
                "rank_key",
                "skills",
                "marks",
                "room",
                "serves",
            ):
                setattr(self, name, _grow(getattr(self, name), size))
            self._views()
        ordinal = self.n
        self.n += 1
        self.load_v[ordinal] = 0
        self.cap_v[ordinal] = NO_CAP
        self.flags_v[ordinal] = FLAG_OFFLINE
        self.avail_v[ordinal] = 0
        self.key_v[ordinal] = INELIGIBLE
        self.room_v[ordinal] = self.serves_v[ordinal] = ALL_CHANNELS
        self._bind_kernel()  # (the count changed; the views stay unless reallocated)
        return ordinal

    def add_skill_column(self) -> int:
        if self.n_skills == self.skills.shape[1]:
            wider = np.zeros((self.skills.shape[0], 2 * self.skills.shape[1]), dtype=np.uint8)
            wider[:, : self.n_skills] = self.skills[:, : self.n_skills]
            self.skills = wider
            self._bind()
        self.n_skills += 1
        return self.n_skills - 1

    def eligible(self, rep: int) -> bool:
        load = self.load_v[rep]
        return not self.flags_v[rep] and load < self.cap_v[rep] and self.room_v[rep] != 0

    def refresh(self, rep: int) -> None:
        was = self.key_v[rep] != INELIGIBLE
        if self.eligible(rep):
            load = min(self.load_v[rep], MAX_RANKED_LOAD)
            self.key_v[rep] = (load << LOAD_SHIFT) | self.avail_v[rep]
            self.n_eligible += not was
        else:
            self.key_v[rep] = INELIGIBLE
            self.n_eligible -= was

    def offers_made(self, count: int) -> None:
        """The kernel's pass set INELIGIBLE on `count` reps (their new pending offers)."""
        self.n_eligible -= count

    def set_room(self, rep: int, room: int, serves: int) -> None:
        """The channels the rep has room for now, and could ever have (rule 16)."""
        self.narrow[0] += (room != ALL_CHANNELS) - (self.room_v[rep] != ALL_CHANNELS)
        self.room_v[rep], self.serves_v[rep] = room, serves

    def set_flag(self, rep: int, flag: int, on: bool) -> None:
        current = self.flags_v[rep]
        self.flags_v[rep] = (current | flag) if on else (current & ~flag & 0xFF)
        self.refresh(rep)

    def set_load(self, rep: int, load: int) -> None:
        self.load_v[rep] = load
        self.refresh(rep)

    def set_cap(self, rep: int, cap: int) -> None:
        self.cap_v[rep] = cap
        self.refresh(rep)

    def set_available(self, rep: int, ticks: int) -> None:
        if not 0 <= ticks <= MAX_AVAIL_TICKS:
            raise ValueError("available_since is outside the table's range")
        self.avail_v[rep] = ticks
        self.refresh(rep)

    def refresh_all(self) -> None:
        """Recompute rank_key after writing columns directly (tests, bulk loads)."""
        n = self.n
        if ((self.avail[:n] < 0) | (self.avail[:n] > MAX_AVAIL_TICKS)).any():
            raise ValueError("available_since is outside the table's range")
        ok = (self.flags[:n] == 0) & (self.load[:n] < self.cap[:n]) & (self.room[:n] != 0)
        self.narrow[0] = int((self.room[:n] != ALL_CHANNELS).sum())
        load = np.minimum(self.load[:n], MAX_RANKED_LOAD).astype(np.int64)
        self.rank_key[:n] = np.where(ok, (load << LOAD_SHIFT) | self.avail[:n], INELIGIBLE)
        self.n_eligible = int(ok.sum())

    def rebase(self) -> int:
        """Shift the epoch forward to the earliest available_since, keeping the order;
        returns the shift in ticks. Needed only after years of uptime."""
        shift = int(self.avail[: self.n].min()) if self.n else 0
        self.avail[: self.n] -= shift
        self.refresh_all()
        return shift


class TeamTable(_Bound):
    """Per-team algorithm and members. Each team owns a region of one member array,
    members[start[t]:end[t]], with room up to limit[t]: a join writes one slot (a full
    region first moves to the end of the array with twice the room), a leave moves the
    last member into the hole. So a membership change costs O(1) amortised (a leave,
    O(team size) to find the member), never a rebuild of every team. The kernel is bound
    to the arrays' whole capacity (unused teams are empty and never assigned) and is
    rebound only when an array is reallocated."""

    def __init__(self, kernel, capacity: int = 16) -> None:
        self.kernel = kernel
        self.n = 0
        self.alg = np.zeros(capacity, dtype=np.int8)
        self.start = np.zeros(capacity, dtype=np.int32)
        self.end = np.zeros(capacity, dtype=np.int32)
        self.limit = np.zeros(capacity, dtype=np.int32)
        self.flat = np.zeros(64, dtype=np.int32)
        self.used = 0  # high-water mark of regions in flat
        self.live = 0  # members over all teams
        self._bind()

    def _bind(self) -> None:
        self.kernel.bind_teams(self.start, self.end, self.flat, self.alg, len(self.alg))

    def add(self, algorithm: int) -> int:
        if self.n == len(self.alg):
            size = 2 * len(self.alg)
            for name in ("alg", "start", "end", "limit"):
                setattr(self, name, _grow(getattr(self, name), size))
            self._bind()
        ordinal = self.n
        self.n += 1
        self.alg[ordinal] = algorithm
        return ordinal

    def set_algorithm(self, ordinal: int, algorithm: int) -> None:
        self.alg[ordinal] = algorithm

    def members(self, team: int) -> np.ndarray:
        return self.flat[self.start[team] : self.end[team]]

    def add_member(self, team: int, rep: int) -> None:
        if self.end[team] == self.limit[team]:
            self._relocate(team, max(4, 2 * int(self.end[team] - self.start[team])))
        self.flat[self.end[team]] = rep
        self.end[team] += 1
        self.live += 1

    def remove_member(self, team: int, rep: int) -> None:
        start, end = int(self.start[team]), int(self.end[team])
        hits = np.flatnonzero(self.flat[start:end] == rep)
        if len(hits):
            self.flat[start + int(hits[0])] = self.flat[end - 1]
            self.end[team] = end - 1
            self.live -= 1

    def _relocate(self, team: int, room: int) -> None:
        if self.used + room > len(self.flat):
            if self.used > 2 * self.live + 1024:
                self._compact()
            if self.used + room > len(self.flat):
                self.flat = _grow(self.flat, max(2 * len(self.flat), self.used + room))
                self._bind()
        start, end = int(self.start[team]), int(self.end[team])
        count = end - start
        self.flat[self.used : self.used + count] = self.flat[start:end]
        self.start[team], self.end[team] = self.used, self.used + count
        self.limit[team] = self.used + room
        self.used += room

    def _compact(self) -> None:
        """Drops the holes that moved regions left behind (amortised over the moves)."""
        flat = np.zeros(len(self.flat), dtype=np.int32)
        used = 0
        for t in range(self.n):
            start, end, limit = int(self.start[t]), int(self.end[t]), int(self.limit[t])
            room = limit - start
            flat[used : used + end - start] = self.flat[start:end]
            self.start[t], self.end[t], self.limit[t] = used, used + end - start, used + room
            used += room
        self.flat, self.used = flat, used
        self._bind()

    def ensure_bound(self) -> None:
        """Binds the kernel (tests and tools that wrote the arrays directly)."""
        self._bind()


class SessionTable(_Bound):
    """Per-slot columns of sessions the kernel may offer: the team ordinal of the
    auto-assigning queue it waits in without an offer (-1 otherwise), its ranked
    requirements and the location of its declined list in the per-pass pool. Slots are
    recycled through a free list.

    The order sessions are offered in (rule 4) is kept per queue by the engine
    (queue_order.py); `rule4_log` computes it for the whole table, for tests and tools.
    """

    def __init__(self, kernel, capacity: int = 64) -> None:
        self.kernel = kernel
        self.n = 0
        self.free: list[int] = []
        self.last_seq = -1
        self.team = np.full(capacity, -1, dtype=np.int32)
        self.priority = np.zeros(capacity, dtype=np.int32)
        self.seq = np.full(capacity, -1, dtype=np.int64)
        self.nreq = np.zeros(capacity, dtype=np.uint8)
        self.req_skill = np.zeros((capacity, MAX_REQUIRED_SKILLS), dtype=np.int32)
        self.req_level = np.zeros((capacity, MAX_REQUIRED_SKILLS), dtype=np.uint8)
        self.decl_off = np.zeros(capacity, dtype=np.int32)
        self.decl_cnt = np.zeros(capacity, dtype=np.int32)
        self.chan = np.ones(capacity, dtype=np.uint16)
        self.strict = np.zeros(capacity, dtype=np.uint8)
        self.only = np.full(capacity, -1, dtype=np.int32)
        self._bind()

    def _bind(self) -> None:
        # Bound against the capacity, so only a reallocation needs a new binding; slots
        # past n hold team -1 and are never offered.
        self.kernel.bind_sessions(
            self.team,
            self.seq,
            self.nreq,
            self.req_skill,
            self.req_level,
            self.decl_off,
            self.decl_cnt,
            self.chan,
            self.strict,
            self.only,
            len(self.team),
        )
        # Python's per-slot reads and writes go through memoryviews (see RepTable).
        self.team_v = self.team.data
        self.priority_v = self.priority.data
        self.seq_v = self.seq.data
        self.nreq_v = self.nreq.data
        self.req_skill_v = self.req_skill.data
        self.req_level_v = self.req_level.data
        self.decl_cnt_v = self.decl_cnt.data
        self.chan_v = self.chan.data
        self.strict_v = self.strict.data
        self.only_v = self.only.data

    def _requirements(self, slot: int, req_skill: list[int], req_level: list[int]) -> None:
        skill, level = self.req_skill_v, self.req_level_v
        for j, (k, lv) in enumerate(zip(req_skill, req_level, strict=True)):
            skill[slot, j] = k
            level[slot, j] = lv
        self.nreq_v[slot] = len(req_skill)

    def alloc(self, priority: int, seq: int, req_skill: list[int], req_level: list[int]) -> int:
        """A slot for a new session. `seq` must grow with every call (creation order)."""
        if seq <= self.last_seq:
            raise ValueError("session seqs must be handed out in increasing order")
        if len(req_skill) != len(req_level) or len(req_skill) > MAX_REQUIRED_SKILLS:
            raise ValueError("bad requirement lists")
        if self.free:
            slot = self.free.pop()
        else:
            if self.n == len(self.team):
                size = 2 * len(self.team)
                for name, fill in (("team", -1), ("seq", -1), ("only", -1), ("chan", 1)):
                    col = np.full(size, fill, dtype=getattr(self, name).dtype)
                    col[: self.n] = getattr(self, name)[: self.n]
                    setattr(self, name, col)
                for name in (
                    "priority",
                    "nreq",
                    "req_skill",
                    "req_level",
                    "decl_off",
                    "decl_cnt",
                    "strict",
                ):
                    setattr(self, name, _grow(getattr(self, name), size))
                self._bind()
            slot = self.n
            self.n += 1
        self.last_seq = seq
        self.team_v[slot] = -1
        self.priority_v[slot] = priority
        self.seq_v[slot] = seq
        self._requirements(slot, req_skill, req_level)
        self.decl_cnt_v[slot] = 0
        self.chan_v[slot] = 1
        self.strict_v[slot] = 0
        self.only_v[slot] = -1
        return slot

    def set_requirements(
        self, slot: int, req_skill: list[int], req_level: list[int], strict: bool, only: int
    ) -> None:
        """The requirements its current routing step ranks by: `strict` when a rep must
        hold all of them, `only` the one rep the step allows (-1: any member)."""
        if len(req_skill) != len(req_level) or len(req_skill) > MAX_REQUIRED_SKILLS:
            raise ValueError("bad requirement lists")
        self._requirements(slot, req_skill, req_level)
        self.strict_v[slot] = len(req_skill) if strict else 0
        self.only_v[slot] = only

    def release(self, slot: int) -> None:
        self.team_v[slot] = -1
        self.decl_cnt_v[slot] = 0
        self.seq_v[slot] = -1
        self.free.append(slot)

    def rule4_log(self) -> tuple[np.ndarray, np.ndarray]:
        """(slots, seqs) of every live session, higher priority first, then in arrival
        order: a log for `Kernel.assign_batch` over the whole table (tests, tools)."""
        live = np.flatnonzero(self.seq[: self.n] >= 0)
        order = np.lexsort((self.seq[live], -self.priority[live].astype(np.int64)))
        slots = live[order].astype(np.int64)
        return slots, self.seq[slots]

    def pass_order(self, team_open: np.ndarray | None = None) -> np.ndarray:
        """The slots a whole-table pass considers, in its order (for tests and tools):
        waiting for an offer and, with `team_open` (bool per team ordinal), only those
        teams'."""
        slots, _ = self.rule4_log()
        team = self.team[slots]
        keep = team >= 0
        if team_open is not None:
            keep &= np.append(team_open, False)[team]
        return slots[keep]
