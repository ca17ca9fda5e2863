"""Synthetic desks shared by benchmarks/kernel.py and the pytest-benchmark files."""

from __future__ import annotations

import numpy as np

from assigncore.columns import FLAG_LOCKED, NO_CAP, RepTable, SessionTable, TeamTable
from assigncore.kernel import Kernel
from assigncore.model import Algorithm

N_SKILLS = 16


def rep_table(kernel: Kernel, n_reps: int, eligible_share: float, seed: int = 1) -> RepTable:
    """Reps with loads 0-3 of max 5, `eligible_share` of them eligible, available_since
    spread over an hour, 16 skills at levels 0-10."""
    rng = np.random.default_rng(seed)
    reps = RepTable(kernel, capacity=n_reps, skill_capacity=N_SKILLS)
    for _ in range(N_SKILLS):
        reps.add_skill_column()
    for _ in range(n_reps):
        reps.add()
    n = n_reps
    reps.load[:n] = rng.integers(0, 4, n)
    reps.cap[:n] = 5
    reps.flags[:n] = np.where(rng.random(n) < eligible_share, 0, FLAG_LOCKED)
    reps.avail[:n] = rng.integers(0, 3600 * 10**6, n)  # within an hour, in microseconds
    reps.skills[:n, :N_SKILLS] = rng.choice([0, 0, 0, 2, 4, 6, 8, 10], (n, N_SKILLS))
    reps.refresh_all()
    return reps


def candidates(n_reps: int, n: int, seed: int = 2) -> np.ndarray:
    """A team's member list: sorted ordinals, as the CSR holds them."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_reps, n, replace=False)).astype(np.int32)


class BatchDesk:
    """5,000 team queues, 20,000 reps each in 1-4 teams, 50,000 waiting sessions and
    2,000 eligible reps (by default), on one kernel implementation."""

    def __init__(
        self,
        implementation: str,
        n_teams: int = 5000,
        n_reps: int = 20000,
        n_sessions: int = 50000,
        n_eligible: int = 2000,
        seed: int = 3,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.kernel = Kernel(implementation)
        self.reps = rep_table(self.kernel, n_reps, 0.0, seed)
        eligible = rng.choice(n_reps, n_eligible, replace=False)
        self.reps.flags[eligible] = 0
        self.reps.cap[:n_reps] = NO_CAP
        self.reps.refresh_all()
        self.teams = TeamTable(self.kernel)
        algorithms = [
            Algorithm.LEAST_BUSY,
            Algorithm.SKILLS_MATCH_LEAST_BUSY,
            Algorithm.BEST_SKILLS,
        ]
        for t in range(n_teams):
            self.teams.add(int(algorithms[t % 3]))
        for r in range(n_reps):
            for t in rng.choice(n_teams, int(rng.integers(1, 5)), replace=False):
                self.teams.add_member(int(t), r)
        self.teams.ensure_bound()
        self.sessions = SessionTable(self.kernel, capacity=n_sessions)
        for i in range(n_sessions):
            k = int(rng.integers(0, 4))
            skills = rng.choice(N_SKILLS, k, replace=False).tolist()
            slot = self.sessions.alloc(
                int(rng.integers(0, 3)), i, skills, rng.integers(1, 8, k).tolist()
            )
            self.sessions.team[slot] = int(rng.integers(0, n_teams))
        self.pool = np.zeros(0, dtype=np.int32)
        self.log_slot, self.log_seq = self.sessions.rule4_log()
        self._flags = self.reps.flags.copy()
        self._rank_key = self.reps.rank_key.copy()
        self._n_eligible = self.reps.n_eligible

    def reset(self) -> None:
        """Undo the pending offers a pass made."""
        self.reps.flags[:] = self._flags
        self.reps.rank_key[:] = self._rank_key
        self.reps.n_eligible = self._n_eligible

    def full_pass(self) -> int:
        """One kernel call over every waiting session of every queue in rule-4 order
        (the engine hands it only the queue heads that can matter; this is the worst
        case: a pass that must look at everything)."""
        slots = self.kernel.assign_batch(
            self.log_slot,
            self.log_seq,
            self.pool,
            min(len(self.log_slot), self.reps.n_eligible),
            self.reps.n_eligible,
        ).slots
        self.reps.offers_made(len(slots))
        return len(slots)
