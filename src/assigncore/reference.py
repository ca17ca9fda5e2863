"""Pure-Python twin of the Cython kernel (`_kernel.pyx`), with identical semantics.

It is the oracle of the differential tests and the implementation the engine runs on
when ASSIGNCORE_PURE_PYTHON=1. It reads the same numpy columns, converted to Python lists
at each call, and writes pending offers back into the same flags column.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .constants import (
    ALG_NONE,
    FLAG_PENDING_OFFER,
    INELIGIBLE,
    N_ALGORITHMS,
    WHY_DECLINED,
    WHY_INELIGIBLE,
    WHY_MISSING_SKILL,
    WHY_NO_ROOM,
    WHY_NOT_PREFERRED,
)

# (skill row, required skill ordinals, required minimum levels) -> major score; smaller
# ranks first. None means every candidate scores 0 (pure least-busy).
Policy = Callable[[Sequence[int], Sequence[int], Sequence[int]], int] | None


def matched_prefix(row: Sequence[int], req_skill: Sequence[int], req_level: Sequence[int]) -> int:
    """How many of the most important requirements the rep meets, in order."""
    kept = 0
    for skill, level in zip(req_skill, req_level, strict=True):
        if row[skill] < level:
            break
        kept += 1
    return kept


def _skills_match(row: Sequence[int], req_skill: Sequence[int], req_level: Sequence[int]) -> int:
    return -matched_prefix(row, req_skill, req_level)


def _best_skills(row: Sequence[int], req_skill: Sequence[int], req_level: Sequence[int]) -> int:
    kept = matched_prefix(row, req_skill, req_level)
    total = sum(int(row[req_skill[j]]) for j in range(kept))
    return -((kept << 20) + total)


# Indexed by Algorithm value; must match POLICIES in _kernel.pyx.
POLICIES: tuple[Policy, ...] = (None, None, _skills_match, _best_skills)
ALGORITHM_COUNT = N_ALGORITHMS
assert len(POLICIES) == N_ALGORITHMS, "one policy per algorithm"


@dataclass(frozen=True, slots=True)
class Filter:
    """What narrows a session's candidates beyond eligibility (the kernel's Filter)."""

    chan: int = 0xFFFF
    only: int = -1
    strict: int = 0
    declined: frozenset[int] = frozenset()


def excluded(r: int, f: Filter, room: Sequence[int], row, req_skill, req_level) -> int:
    """WHY_* bits of what keeps an eligible rep from the session; 0 = a candidate."""
    why = 0
    if r in f.declined:
        why |= WHY_DECLINED
    if not room[r] & f.chan:
        why |= WHY_NO_ROOM
    if f.only >= 0 and r != f.only:
        why |= WHY_NOT_PREFERRED
    if f.strict and matched_prefix(row, req_skill[: f.strict], req_level[: f.strict]) < f.strict:
        why |= WHY_MISSING_SKILL
    return why


class RankKernel:
    """Same interface and results as `_kernel.RankKernel`."""

    def __init__(self) -> None:
        self.n_reps = 0
        self.n_teams = 0
        self.n_slots = 0

    def bind_reps(self, rank_key, flags, skills, marks, room, narrow, n_reps: int) -> None:
        if min(len(rank_key), len(flags), len(skills), len(marks), len(room)) < n_reps:
            raise ValueError("rep columns are shorter than n_reps")
        self.rank_key, self.flags = rank_key, flags
        self.skills, self.room, self.n_reps = skills, room, n_reps

    def bind_teams(self, start, end, members, alg, n_teams: int) -> None:
        if min(len(start), len(end), len(alg)) < n_teams:
            raise ValueError("team columns are shorter than n_teams")
        for t in range(n_teams):
            if not 0 <= start[t] <= end[t] <= len(members):
                raise ValueError(f"team {t}'s member region is outside the member list")
            used = members[start[t] : end[t]]
            if len(used) and (used.min() < 0 or used.max() >= self.n_reps):
                raise IndexError("team member ordinal out of range")
        if n_teams and (alg[:n_teams].min() < 0 or alg[:n_teams].max() >= ALGORITHM_COUNT):
            raise ValueError("unknown algorithm")
        self.team_start, self.team_end, self.team_members = start, end, members
        self.team_alg = alg
        self.n_teams = n_teams

    def bind_sessions(
        self, team, seq, nreq, req_skill, req_level, decl_off, decl_cnt, chan, strict, only, n_slots
    ):
        if (
            min(
                len(team),
                len(seq),
                len(nreq),
                len(req_skill),
                len(req_level),
                len(decl_off),
                len(decl_cnt),
                len(chan),
                len(strict),
                len(only),
            )
            < n_slots
            or req_skill.shape[1] != req_level.shape[1]
        ):
            raise ValueError("session columns are shorter than n_slots")
        self.s_team, self.s_seq, self.s_nreq = team, seq, nreq
        self.s_req_skill, self.s_req_level = req_skill, req_level
        self.s_decl_off, self.s_decl_cnt, self.n_slots = decl_off, decl_cnt, n_slots
        self.s_chan, self.s_strict, self.s_only = chan, strict, only

    def _rank(self, cand, algorithm, req_skill, req_level, f: Filter, rank_key) -> tuple[int, int]:
        policy = POLICIES[algorithm]
        best = -1
        best_key: tuple[int, int, int] | None = None
        eligible = 0
        room = self.room
        for r in cand:
            if rank_key[r] == INELIGIBLE:
                continue
            eligible += 1
            if excluded(r, f, room, self.skills[r], req_skill, req_level):
                continue
            major = 0 if policy is None else policy(self.skills[r], req_skill, req_level)
            key = (major, rank_key[r], r)  # rank_key: load, then available_since
            if best_key is None or key < best_key:
                best, best_key = r, key
        return best, eligible

    def _columns(self) -> list[int]:
        return self.rank_key[: self.n_reps].tolist()

    def best_candidate(
        self,
        candidates,
        algorithm: int,
        req_skill,
        req_level,
        declined,
        chan: int = 0xFFFF,
        strict: int = 0,
        only: int = -1,
    ) -> int:
        if not 0 <= algorithm < ALGORITHM_COUNT:
            raise ValueError(f"unknown algorithm {algorithm}")
        if len(req_skill) != len(req_level):
            raise ValueError("req_skill and req_level differ in length")
        if not 0 <= strict <= len(req_skill):
            raise ValueError("strict is outside the requirements")
        ncols = self.skills.shape[1] if self.n_reps else 0
        for s in req_skill:
            if not 0 <= s < ncols:
                raise IndexError(f"skill ordinal {s} out of range")
        if algorithm == ALG_NONE or len(candidates) == 0:
            return -1
        cand = [int(c) for c in candidates]
        decl = {int(d) for d in declined}
        if any(not 0 <= r < self.n_reps for r in cand) or any(
            not 0 <= r < self.n_reps for r in decl
        ):
            raise IndexError("rep ordinal out of range")
        f = Filter(chan, only, strict, frozenset(decl))
        best, _ = self._rank(cand, algorithm, list(req_skill), list(req_level), f, self._columns())
        return best

    def assign_batch(self, log_slot, log_seq, decl_pool, out, remaining) -> int:
        if out.shape[0] != 5 or len(log_seq) != len(log_slot):
            raise ValueError("log_seq or out has the wrong shape")
        out_slot, out_rep, out_major, out_key, out_eligible = out
        if len(log_slot) == 0 or self.n_reps == 0 or self.n_teams == 0:
            return 0
        pool = [int(d) for d in decl_pool]
        entries = []
        for s, seq in zip(log_slot.tolist(), log_seq.tolist(), strict=True):
            if not 0 <= s < self.n_slots:
                raise IndexError(f"session slot {s} out of range")
            if self.s_seq[s] != seq or self.s_team[s] < 0:
                continue  # an ended session's entry, or not waiting for an offer
            if self.s_team[s] >= self.n_teams:
                raise IndexError(f"team ordinal {self.s_team[s]} out of range")
            cnt = self.s_decl_cnt[s]
            if cnt and (self.s_decl_off[s] < 0 or self.s_decl_off[s] + cnt > len(pool)):
                raise IndexError(f"declined list of slot {s} is outside the pool")
            self._check_slot(s)
            entries.append(s)
        if any(not 0 <= r < self.n_reps for r in pool):
            raise IndexError("declined rep ordinal out of range")
        rank_key = self._columns()
        starts = self.team_start[: self.n_teams].tolist()
        ends = self.team_end[: self.n_teams].tolist()
        members = self.team_members.tolist()
        algs = self.team_alg[: self.n_teams].tolist()
        team_done = [False] * self.n_teams
        made = 0
        for s in entries:
            if remaining == 0 or made == len(out_slot):
                break
            t = int(self.s_team[s])
            if team_done[t] or algs[t] == ALG_NONE:
                continue
            off, cnt = int(self.s_decl_off[s]), int(self.s_decl_cnt[s])
            nreq = int(self.s_nreq[s])
            best, eligible = self._rank(
                members[starts[t] : ends[t]],
                algs[t],
                self.s_req_skill[s, :nreq].tolist(),
                self.s_req_level[s, :nreq].tolist(),
                self._filter(s, pool[off : off + cnt] if cnt else ()),
                rank_key,
            )
            if eligible == 0:
                team_done[t] = True
            if best < 0:
                continue
            policy = POLICIES[algs[t]]
            out_major[made] = (
                0
                if policy is None
                else policy(
                    self.skills[best],
                    self.s_req_skill[s, :nreq].tolist(),
                    self.s_req_level[s, :nreq].tolist(),
                )
            )
            out_key[made] = rank_key[best]
            out_eligible[made] = eligible
            rank_key[best] = INELIGIBLE
            self.rank_key[best] = INELIGIBLE
            self.flags[best] |= FLAG_PENDING_OFFER
            remaining -= 1
            out_slot[made] = s
            out_rep[made] = best
            made += 1
        return made

    def _filter(self, s: int, declined) -> Filter:
        return Filter(
            int(self.s_chan[s]), int(self.s_only[s]), int(self.s_strict[s]), frozenset(declined)
        )

    def _check_slot(self, s: int) -> None:
        nreq = int(self.s_nreq[s])
        if self.s_strict[s] > nreq or nreq > self.s_req_skill.shape[1]:
            raise ValueError(f"slot {s} needs more skills than it lists")
        if not -1 <= self.s_only[s] < self.n_reps:
            raise IndexError(f"preferred rep ordinal {self.s_only[s]} out of range")
        ncols = self.skills.shape[1]
        for j in range(nreq):
            if not 0 <= self.s_req_skill[s, j] < ncols:
                raise IndexError(f"skill ordinal {self.s_req_skill[s, j]} out of range")

    def explain(self, s: int, declined, out_why, out_major, out_key) -> int:
        if not 0 <= s < self.n_slots:
            raise IndexError(f"session slot {s} out of range")
        t = int(self.s_team[s])
        if not 0 <= t < self.n_teams:
            raise ValueError(f"slot {s} is not waiting for an offer in a team queue")
        self._check_slot(s)
        members = self.team_members[self.team_start[t] : self.team_end[t]].tolist()
        if min(len(out_why), len(out_major), len(out_key)) < len(members):
            raise ValueError("output arrays are shorter than the team")
        decl = [int(d) for d in declined]
        if any(not 0 <= r < self.n_reps for r in decl):
            raise IndexError("declined rep ordinal out of range")
        f = self._filter(s, decl)
        alg = int(self.team_alg[t])
        policy = POLICIES[alg]
        nreq = int(self.s_nreq[s])
        req_skill = self.s_req_skill[s, :nreq].tolist()
        req_level = self.s_req_level[s, :nreq].tolist()
        rank_key = self._columns()
        for i, r in enumerate(members):
            row = self.skills[r]
            out_key[i] = rank_key[r]
            out_why[i] = (WHY_INELIGIBLE if rank_key[r] == INELIGIBLE else 0) | excluded(
                r, f, self.room, row, req_skill, req_level
            )
            out_major[i] = 0 if policy is None else policy(row, req_skill, req_level)
        if alg == ALG_NONE or not members:
            return -1
        return self._rank(members, alg, req_skill, req_level, f, rank_key)[0]


__all__ = ["ALGORITHM_COUNT", "FLAG_PENDING_OFFER", "POLICIES", "RankKernel", "matched_prefix"]
