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
    key = reps.rank_key[cand]  # load, then available_since, folded into one int64
    if len(declined):
        key = np.where(np.isin(cand, np.asarray(declined, dtype=np.int32)), INELIGIBLE, key)
    best = key.min()
    if best == INELIGIBLE:
        return -1
    return int(cand[key == best].min())
