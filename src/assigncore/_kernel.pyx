"""Cython ranking kernel: picks the best rep for a session, and runs a whole assignment
pass over every waiting session, on the engine's columnar arrays.

The kernel holds typed memoryviews of the arrays owned by `columns.RepTable` and
`columns.SessionTable` (rebound whenever those grow), so a call sets nothing up.
Semantics are identical to `reference.py`, which is the test oracle.

Compiler directives (boundscheck etc.) come from setup.py, so that a debug build can
turn the checks back on with ASSIGNCORE_DEBUG_BUILD=1.
"""

cimport cython
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, INT64_MAX

import numpy as np

# FLAG_PENDING_OFFER, LOAD_SHIFT, ALG_NONE, N_ALGORITHMS, MAX_REQUIRED_SKILLS and
# PREFETCH_AHEAD: a cdef enum that setup.py generates from constants.py.
include "_kernel_constants.pxi"

# What narrows a session's candidates beyond eligibility (routing steps, capacity by
# channel, declines). `excluded` is the one place these are tested, for ranking and for
# explaining alike.
# The columns it reads travel in the struct, so a ranking loop keeps one pointer live
# for the rare call instead of six (the loop's registers are its speed).
cdef struct Filter:
    uint16_t chan      # the session's channel bit; a rep needs it in its room mask
    int32_t only       # the one rep the session's step allows, or -1
    int strict         # how many of the requirements a rep must hold (a skills step)
    bint any_declined  # declined reps are marked in the marks column
    bint check_room    # some rep lacks room for some channel (else every room is full)
    const uint8_t* marks
    const uint16_t* room
    const level_t* skills      # the rep x skill matrix, `row` levels per rep
    Py_ssize_t row
    const int32_t* req_skill   # the session's requirements, most important first
    const level_t* req_level


cdef inline uint8_t excluded(ord_t r, const Filter* f) noexcept nogil:
    """WHY_* bits of what keeps an eligible rep `r` from the session; 0 = a candidate."""
    cdef uint8_t why = 0
    if f.any_declined and f.marks[r]:
        why |= WHY_DECLINED
    if f.check_room and not (f.room[r] & f.chan):
        why |= WHY_NO_ROOM
    if f.only >= 0 and r != f.only:
        why |= WHY_NOT_PREFERRED
    if f.strict and matched_prefix(f.skills + r * f.row, f.req_skill, f.req_level,
                                   f.strict) < f.strict:
        why |= WHY_MISSING_SKILL
    return why


cdef extern from *:
    """
    #define AC_UNLIKELY(x) __builtin_expect(!!(x), 0)
    #define AC_PREFETCH(p) __builtin_prefetch((const void*)(p), 0, 0)
    #define AC_INELIGIBLE INT64_MAX
    """
    bint AC_UNLIKELY(bint) noexcept nogil
    void AC_PREFETCH(const void*) noexcept nogil
    # rank_key of a rep that is not eligible: constants.INELIGIBLE, checked at import.
    const int64_t INELIGIBLE "AC_INELIGIBLE"
    # Set by setup.py: 1 in a debug build (ASSIGNCORE_DEBUG_BUILD=1).
    const int ASSIGNCORE_BOUNDS_CHECKED

# True when this module was compiled with bounds checking (a debug build).
BOUNDS_CHECKED = bool(ASSIGNCORE_BOUNDS_CHECKED)

# --- policies -------------------------------------------------------------------------
# One definition per routing algorithm. Adding a fifth = one function here, one entry in
# POLICIES below, and its twin in reference.py.

cdef int64_t _skills_match(const level_t* skill_row, const int32_t* req_skill,
                           const level_t* req_level, int nreq) noexcept nogil:
    return -matched_prefix(skill_row, req_skill, req_level, nreq)


cdef int64_t _best_skills(const level_t* skill_row, const int32_t* req_skill,
                          const level_t* req_level, int nreq) noexcept nogil:
    cdef int kept = matched_prefix(skill_row, req_skill, req_level, nreq)
    cdef int64_t total = 0
    cdef int j
    for j in range(kept):
        total += skill_row[req_skill[j]]
    # Prefix first (qualification), then the proficiency sum over the kept skills.
    return -((<int64_t>kept << 20) + total)


cdef policy_fn POLICIES[N_ALGORITHMS]
POLICIES[0] = NULL            # NONE: never auto-assigned, handled before ranking
POLICIES[1] = NULL            # LEAST_BUSY
POLICIES[2] = _skills_match   # SKILLS_MATCH_LEAST_BUSY
POLICIES[3] = _best_skills    # BEST_SKILLS

ALGORITHM_COUNT = N_ALGORITHMS
from . import constants as _constants
if _constants.INELIGIBLE != INELIGIBLE:  # pragma: no cover - a build from other sources
    raise ImportError("the kernel's INELIGIBLE differs from constants.INELIGIBLE")


cdef inline ord_t _least_busy(const int32_t* cand, Py_ssize_t n, const int64_t* rank_key,
                              uint32_t n_reps, const Filter* f, bint filtered,
                              Py_ssize_t* n_eligible) noexcept nogil:
    """Lowest rank key (load, then available since), then lowest ordinal."""
    cdef ord_t best = -1, r
    cdef int64_t k
    cdef int64_t fast_best = INELIGIBLE - 1
    cdef Py_ssize_t i, ok = 0
    for i in range(n):
        r = cand[i]
        if AC_UNLIKELY(<uint32_t>r >= n_reps):
            n_eligible[0] = -1
            return -1
        if i + PREFETCH_AHEAD < n:
            # Members are spread over the table: fetch a later one's key now.
            AC_PREFETCH(rank_key + <uint32_t>cand[i + PREFETCH_AHEAD])  # never faults
        k = rank_key[r]
        ok += k != INELIGIBLE
        # fast_best starts below INELIGIBLE (every real key is below 2**62), so an
        # ineligible rep never enters this branch, and no test for INELIGIBLE is
        # left for the compiler to put first: with half the reps eligible that
        # test is a coin toss for the branch predictor (5x slower when it was).
        if AC_UNLIKELY(k <= fast_best):
            if (k < fast_best) | (r < best):
                if filtered and excluded(r, f):
                    continue
                best, fast_best = r, k
    n_eligible[0] = ok
    return best


cdef inline ord_t _by_policy(const int32_t* cand, Py_ssize_t n, const int64_t* rank_key,
                             uint32_t n_reps, policy_fn policy, int nreq, const Filter* f,
                             bint filtered, Py_ssize_t* n_eligible) noexcept nogil:
    """The policy's major score (smaller first), then the rank key, then the ordinal."""
    cdef ord_t best = -1, r
    cdef int64_t best_key = INELIGIBLE, k
    cdef int64_t best_major = INT64_MAX, major
    cdef Py_ssize_t i, ok = 0
    for i in range(n):
        r = cand[i]
        if AC_UNLIKELY(<uint32_t>r >= n_reps):
            n_eligible[0] = -1
            return -1
        k = rank_key[r]
        if k == INELIGIBLE:
            continue
        ok += 1
        if filtered and excluded(r, f):
            continue
        major = policy(f.skills + r * f.row, f.req_skill, f.req_level, nreq)
        if ranks_before(major, k, r, best_major, best_key, best):
            best, best_major, best_key = r, major, k
    n_eligible[0] = ok
    return best


cdef uint8_t _EMPTY_U8[1]
cdef int32_t _EMPTY_I32[1]


@cython.final
cdef class RankKernel:
    """Ranking over the engine's columns. Not thread-safe (the engine is single-writer)."""

    # rep columns
    cdef int64_t[::1] rank_key     # load << 48 | available_since, or INELIGIBLE
    cdef uint8_t[::1] flags
    cdef uint8_t[:, ::1] skills
    cdef uint8_t[::1] marks        # scratch: declined reps of the session being ranked
    cdef uint16_t[::1] room        # bit c: room for a session of service channel c
    cdef int64_t[::1] narrow       # [0]: reps whose room is not every channel
    cdef Py_ssize_t n_reps
    # team columns: team t's members are team_members[team_start[t]:team_end[t]]
    cdef int32_t[::1] team_start
    cdef int32_t[::1] team_end
    cdef int32_t[::1] team_members
    cdef int8_t[::1] team_alg
    cdef uint8_t[::1] team_done    # scratch of assign_batch, all zero between calls
    cdef Py_ssize_t team_done_size
    cdef Py_ssize_t n_teams
    # session columns
    cdef int32_t[::1] s_team
    cdef int64_t[::1] s_seq
    cdef uint8_t[::1] s_nreq
    cdef int32_t[:, ::1] s_req_skill
    cdef uint8_t[:, ::1] s_req_level
    cdef int32_t[::1] s_decl_off
    cdef int32_t[::1] s_decl_cnt
    cdef uint16_t[::1] s_chan      # 1 << the session's service channel
    cdef uint8_t[::1] s_strict     # matched prefix a candidate needs (a skills step)
    cdef int32_t[::1] s_only       # the one rep its step allows (-1: any member)
    cdef Py_ssize_t n_slots

    def __init__(self):
        self.n_reps = 0
        self.n_teams = 0
        self.team_done_size = 0
        self.n_slots = 0

    def bind_reps(self, int64_t[::1] rank_key, uint8_t[::1] flags,
                  uint8_t[:, ::1] skills, uint8_t[::1] marks, uint16_t[::1] room,
                  int64_t[::1] narrow, Py_ssize_t n_reps):
        if not (rank_key.shape[0] >= n_reps and flags.shape[0] >= n_reps
                and skills.shape[0] >= n_reps and marks.shape[0] >= n_reps
                and room.shape[0] >= n_reps and skills.shape[1] >= 1
                and narrow.shape[0] == 1):
            raise ValueError("rep columns are shorter than n_reps")
        self.rank_key, self.flags = rank_key, flags
        self.skills, self.marks, self.room, self.n_reps = skills, marks, room, n_reps
        self.narrow = narrow

    def bind_teams(self, int32_t[::1] start, int32_t[::1] end, int32_t[::1] members,
                   int8_t[::1] alg, Py_ssize_t n_teams):
        """Team t's members are members[start[t]:end[t]] (each team has a region of its
        own, so a membership change touches one team). Checked here, once per binding."""
        if start.shape[0] < n_teams or end.shape[0] < n_teams or alg.shape[0] < n_teams:
            raise ValueError("team columns are shorter than n_teams")
        cdef Py_ssize_t i, t
        for t in range(n_teams):
            if start[t] < 0 or end[t] < start[t] or end[t] > members.shape[0]:
                raise ValueError(f"team {t}'s member region is outside the member list")
            for i in range(start[t], end[t]):
                if members[i] < 0 or members[i] >= self.n_reps:
                    raise IndexError(f"team member ordinal {members[i]} out of range")
            if alg[t] < 0 or alg[t] >= N_ALGORITHMS:
                raise ValueError(f"unknown algorithm {alg[t]}")
        self.team_start, self.team_end, self.team_members = start, end, members
        self.team_alg = alg
        if self.team_done_size < n_teams:
            self.team_done = np.zeros(max(n_teams, 1), dtype=np.uint8)
            self.team_done_size = max(n_teams, 1)
        self.n_teams = n_teams

    def bind_sessions(self, int32_t[::1] team, int64_t[::1] seq, uint8_t[::1] nreq,
                      int32_t[:, ::1] req_skill, uint8_t[:, ::1] req_level,
                      int32_t[::1] decl_off, int32_t[::1] decl_cnt, uint16_t[::1] chan,
                      uint8_t[::1] strict, int32_t[::1] only, Py_ssize_t n_slots):
        if not (team.shape[0] >= n_slots and seq.shape[0] >= n_slots
                and nreq.shape[0] >= n_slots
                and req_skill.shape[0] >= n_slots and req_level.shape[0] >= n_slots
                and req_skill.shape[1] == req_level.shape[1]
                and decl_off.shape[0] >= n_slots and decl_cnt.shape[0] >= n_slots
                and chan.shape[0] >= n_slots and strict.shape[0] >= n_slots
                and only.shape[0] >= n_slots):
            raise ValueError("session columns are shorter than n_slots")
        self.s_team, self.s_seq, self.s_nreq = team, seq, nreq
        self.s_req_skill, self.s_req_level = req_skill, req_level
        self.s_decl_off, self.s_decl_cnt, self.n_slots = decl_off, decl_cnt, n_slots
        self.s_chan, self.s_strict, self.s_only = chan, strict, only

    # --- ranking core -----------------------------------------------------------------

    cdef ord_t _rank(self, const int32_t* cand, Py_ssize_t n, int algorithm,
                     const int32_t* req_skill, const level_t* req_level, int nreq,
                     Filter* f, Py_ssize_t* n_eligible) noexcept nogil:
        """Best eligible candidate that `f` lets through, or -1. Reads one rank_key per
        candidate (load, then available_since, folded into an int64; INELIGIBLE if not
        eligible). The filter (declines, channel room, a step's one rep or its skills)
        is applied by `excluded`, only to a would-be winner on the least-busy path.
        Counts eligible candidates (filtered or not) into n_eligible, or sets it to -1
        and returns -1 if a candidate ordinal is out of range (checked before use)."""
        cdef const int64_t* rank_key = &self.rank_key[0]
        cdef policy_fn policy = POLICIES[algorithm]
        cdef uint32_t n_reps = <uint32_t>self.n_reps
        f.req_skill, f.req_level = req_skill, req_level
        # Most sessions on most desks have no filter at all. Each scan is compiled twice
        # (`filtered` is a constant where it is inlined): without a filter, the loop
        # reads nothing but the rank key and the skill row, and all it needs stays in
        # registers (with the filter's call inlined into the one loop, the loop's
        # counter went to the stack: 1.0 -> 1.3 ns a candidate).
        if f.any_declined | (f.only >= 0) | (f.strict != 0) | f.check_room:
            if policy == NULL:
                return _least_busy(cand, n, rank_key, n_reps, f, True, n_eligible)
            return _by_policy(cand, n, rank_key, n_reps, policy, nreq, f, True, n_eligible)
        if policy == NULL:
            return _least_busy(cand, n, rank_key, n_reps, f, False, n_eligible)
        return _by_policy(cand, n, rank_key, n_reps, policy, nreq, f, False, n_eligible)

    cdef inline void _columns(self, Filter* f) noexcept nogil:
        """The columns a filter reads: set once per call into the kernel (`_rank` sets
        the session's requirements)."""
        f.marks, f.room = &self.marks[0], &self.room[0]
        f.check_room = self.narrow[0] != 0
        f.chan = 0xFFFF
        f.skills, f.row = &self.skills[0, 0], self.skills.shape[1]

    cdef inline void _slot_filter(self, Py_ssize_t s, Filter* f) noexcept nogil:
        if f.check_room:  # (else every rep has room for every channel)
            f.chan = self.s_chan[s]
        f.only = self.s_only[s]
        # Never past the requirement row (the table keeps strict <= nreq <= the width;
        # the clamp keeps a damaged column from reading outside it, at no cost).
        f.strict = min(self.s_strict[s], self.s_req_skill.shape[1])
        f.any_declined = self.s_decl_cnt[s] > 0

    cdef inline void _mark(self, const int32_t* reps, Py_ssize_t n, uint8_t value) noexcept nogil:
        cdef Py_ssize_t i
        for i in range(n):
            self.marks[reps[i]] = value

    def best_candidate(self, const int32_t[::1] candidates, int algorithm,
                       const int32_t[::1] req_skill, const uint8_t[::1] req_level,
                       const int32_t[::1] declined, uint16_t chan=0xFFFF, int strict=0,
                       int32_t only=-1):
        """Best rep among `candidates` for a session with the given ranked requirements,
        or -1. `algorithm` NONE returns -1 (never auto-assigned). `chan` is the session's
        channel bit, `strict` how many of the requirements a candidate must hold, `only`
        the one rep allowed (-1: any)."""
        cdef Filter f
        if algorithm < 0 or algorithm >= N_ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm}")
        if req_skill.shape[0] != req_level.shape[0]:
            raise ValueError("req_skill and req_level differ in length")
        if strict < 0 or strict > req_skill.shape[0]:
            raise ValueError("strict is outside the requirements")
        cdef Py_ssize_t n = candidates.shape[0], nd = declined.shape[0], i, ok = 0
        cdef Py_ssize_t nreq = req_skill.shape[0], n_reps = self.n_reps
        cdef Py_ssize_t ncols = self.skills.shape[1] if n_reps else 0
        cdef ord_t best
        for i in range(nreq):
            if req_skill[i] < 0 or req_skill[i] >= ncols:
                raise IndexError(f"skill ordinal {req_skill[i]} out of range")
        if algorithm == ALG_NONE or n == 0:
            return -1
        for i in range(nd):
            if <size_t>declined[i] >= <size_t>n_reps:
                raise IndexError(f"declined rep ordinal {declined[i]} out of range")
        self._columns(&f)
        f.chan, f.only, f.strict, f.any_declined = chan, only, strict, nd > 0
        with nogil:
            self._mark(&declined[0] if nd else _EMPTY_I32, nd, 1)
            best = self._rank(&candidates[0], n, algorithm,
                              &req_skill[0] if nreq else _EMPTY_I32,
                              &req_level[0] if nreq else _EMPTY_U8, <int>nreq, &f, &ok)
            self._mark(&declined[0] if nd else _EMPTY_I32, nd, 0)
        if ok < 0:
            raise IndexError("candidate rep ordinal out of range")
        return best

    def assign_batch(self, const int64_t[::1] log_slot, const int64_t[::1] log_seq,
                     const int32_t[::1] decl_pool, int64_t[:, ::1] out,
                     Py_ssize_t remaining):
        """One assignment pass over the arrival log: (slot, seq) entries in rule-4 order
        (priority, then arrival). An entry counts if its slot still holds that session
        (same seq) and the session waits without an offer in a team queue. Each such
        session whose team auto-assigns is offered to its best eligible, undeclined
        member; that rep's rank_key becomes INELIGIBLE and FLAG_PENDING_OFFER is set at
        once, so later sessions see it taken. Teams found with no eligible member are
        skipped for the rest of the pass; the pass stops when no rep is left. Writes the
        offers to the columns of `out` (rows: session slot, rep, and the decision: the
        winner's major score and rank key, and how many members were eligible), and
        returns how many were made. `remaining` is the number of eligible reps (kept by
        the caller, so a pass never counts the table)."""
        cdef Py_ssize_t n = log_slot.shape[0], k, made = 0, ok, start, end, nd
        cdef Py_ssize_t n_reps = self.n_reps, n_teams = self.n_teams
        cdef Py_ssize_t n_slots = self.n_slots, cap_out = out.shape[1]
        cdef Py_ssize_t pool_n = decl_pool.shape[0]
        cdef int64_t s
        cdef int32_t t
        cdef int nreq
        cdef ord_t best
        cdef Filter f
        cdef policy_fn policy
        if out.shape[0] != 5 or log_seq.shape[0] != n:
            raise ValueError("log_seq or out has the wrong shape")
        if n == 0 or n_reps == 0 or n_teams == 0:
            return 0
        cdef uint8_t[::1] team_done = self.team_done
        for k in range(n):
            s = log_slot[k]
            if s < 0 or s >= n_slots:
                raise IndexError(f"session slot {s} out of range")
            if self.s_seq[s] != log_seq[k] or self.s_team[s] < 0:
                continue
            if self.s_team[s] >= n_teams:
                raise IndexError(f"team ordinal {self.s_team[s]} out of range")
            if self.s_decl_cnt[s] and (self.s_decl_off[s] < 0
                                       or self.s_decl_off[s] + self.s_decl_cnt[s] > pool_n):
                raise IndexError(f"declined list of slot {s} is outside the pool")
        for k in range(pool_n):
            if decl_pool[k] < 0 or decl_pool[k] >= n_reps:
                raise IndexError(f"declined rep ordinal {decl_pool[k]} out of range")
        with nogil:
            self._columns(&f)
            for k in range(n):
                if remaining == 0 or made == cap_out:
                    break
                s = log_slot[k]
                t = self.s_team[s]
                if t < 0 or self.s_seq[s] != log_seq[k] or team_done[t] \
                        or self.team_alg[t] == ALG_NONE:
                    continue
                start = self.team_start[t]
                end = self.team_end[t]
                nd = self.s_decl_cnt[s]
                nreq = self.s_nreq[s]
                self._slot_filter(s, &f)
                if nd:
                    self._mark(&decl_pool[self.s_decl_off[s]], nd, 1)
                best = self._rank(&self.team_members[start] if end > start else _EMPTY_I32,
                                  end - start, self.team_alg[t],
                                  &self.s_req_skill[s, 0], &self.s_req_level[s, 0], nreq,
                                  &f, &ok)
                if nd:
                    self._mark(&decl_pool[self.s_decl_off[s]], nd, 0)
                if ok <= 0:
                    # Nobody in this team is eligible; nobody will become so in this pass.
                    team_done[t] = 1
                if best < 0:
                    continue
                policy = POLICIES[self.team_alg[t]]
                out[2, made] = 0 if policy == NULL else policy(
                    &self.skills[best, 0], &self.s_req_skill[s, 0], &self.s_req_level[s, 0],
                    nreq)
                out[3, made] = self.rank_key[best]
                out[4, made] = ok
                self.flags[best] |= FLAG_PENDING_OFFER
                self.rank_key[best] = INELIGIBLE
                remaining -= 1
                out[0, made] = s
                out[1, made] = best
                made += 1
            for k in range(n):  # leave the scratch all zero for the next pass
                t = self.s_team[log_slot[k]]
                if t >= 0:
                    team_done[t] = 0
        return made

    cdef _check_slot(self, Py_ssize_t s):
        if self.s_strict[s] > self.s_nreq[s] or self.s_nreq[s] > self.s_req_skill.shape[1]:
            raise ValueError(f"slot {s} needs more skills than it lists")
        if self.s_only[s] >= self.n_reps or self.s_only[s] < -1:
            raise IndexError(f"preferred rep ordinal {self.s_only[s]} out of range")
        cdef Py_ssize_t j, ncols = self.skills.shape[1]
        for j in range(self.s_nreq[s]):
            if self.s_req_skill[s, j] < 0 or self.s_req_skill[s, j] >= ncols:
                raise IndexError(f"skill ordinal {self.s_req_skill[s, j]} out of range")

    def explain(self, Py_ssize_t s, const int32_t[::1] declined, uint8_t[::1] out_why,
                int64_t[::1] out_major, int64_t[::1] out_key):
        """Why each member of slot `s`'s team is or is not its best candidate, computed
        by the ranking code itself: out_why gets WHY_* bits per member (0: could be
        offered it now), out_major and out_key the keys the ranking compares (the
        policy's major score, then load and availability). Returns the rep `_rank`
        picks for it (-1: none), with `declined` as its declined reps."""
        cdef Filter f
        cdef Py_ssize_t i, n, start, end, nd = declined.shape[0], ok = 0
        cdef int32_t t
        cdef ord_t r, best
        cdef policy_fn policy
        cdef Py_ssize_t row = self.skills.shape[1]
        if s < 0 or s >= self.n_slots:
            raise IndexError(f"session slot {s} out of range")
        t = self.s_team[s]
        if t < 0 or t >= self.n_teams:
            raise ValueError(f"slot {s} is not waiting for an offer in a team queue")
        self._check_slot(s)
        start, end = self.team_start[t], self.team_end[t]
        n = end - start
        if out_why.shape[0] < n or out_major.shape[0] < n or out_key.shape[0] < n:
            raise ValueError("output arrays are shorter than the team")
        for i in range(nd):
            if <size_t>declined[i] >= <size_t>self.n_reps:
                raise IndexError(f"declined rep ordinal {declined[i]} out of range")
        self._columns(&f)
        self._slot_filter(s, &f)
        f.any_declined = nd > 0
        f.req_skill, f.req_level = &self.s_req_skill[s, 0], &self.s_req_level[s, 0]
        policy = POLICIES[self.team_alg[t]]
        cdef const int32_t* req_skill = &self.s_req_skill[s, 0]
        cdef const level_t* req_level = &self.s_req_level[s, 0]
        cdef int nreq = self.s_nreq[s]
        self._mark(&declined[0] if nd else _EMPTY_I32, nd, 1)
        try:
            for i in range(n):
                r = self.team_members[start + i]
                out_key[i] = self.rank_key[r]
                out_why[i] = (WHY_INELIGIBLE if out_key[i] == INELIGIBLE else 0) | excluded(
                    r, &f)
                out_major[i] = 0 if policy == NULL else policy(&self.skills[r, 0], req_skill,
                                                               req_level, nreq)
            if self.team_alg[t] == ALG_NONE or n == 0:
                return -1
            best = self._rank(&self.team_members[start], n, self.team_alg[t], req_skill,
                              req_level, nreq, &f, &ok)
        finally:
            self._mark(&declined[0] if nd else _EMPTY_I32, nd, 0)
        return best
