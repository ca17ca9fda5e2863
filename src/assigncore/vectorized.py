"""A NumPy-vectorised least-busy ranking: the baseline the Cython kernel is measured
against in benchmarks/, and checked against the reference in the tests."""

from __future__ import annotations

import numpy as np

from .columns import INELIGIBLE, RepTable


def best_candidate_numpy(reps: RepTable, candidates, declined=()) -> int:
    """LEAST_BUSY over `candidates`: lowest load, then earliest available_since, then
    lowest ordinal; -1 if nobody eligible and undeclined."""
    cand = np.asarray(candidates, dtype=np.int32)
    if cand.size == 0:
        return -1
    load = reps.rank_load[cand]
    if len(declined):
        load = np.where(np.isin(cand, np.asarray(declined, dtype=np.int32)), INELIGIBLE, load)
    lowest = load.min()
    if lowest == INELIGIBLE:
        return -1
    tied = cand[load == lowest]
    avail = reps.avail[tied]
    return int(tied[avail == avail.min()].min())
