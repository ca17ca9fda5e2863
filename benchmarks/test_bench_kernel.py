"""pytest-benchmark: the Cython kernel, the NumPy-vectorised ranking and the pure-Python
reference on the same data, grouped so their rows sit side by side.

    pytest benchmarks --benchmark-group-by=group
"""

from __future__ import annotations

import pytest
from _data import BatchDesk, candidates, rep_table

from assigncore.kernel import Kernel
from assigncore.model import Algorithm
from assigncore.vectorized import best_candidate_numpy

N_REPS = 100_000


@pytest.fixture(scope="module")
def tables():
    kernels = {name: Kernel(name) for name in ("cython", "reference")}
    return {name: (k, rep_table(k, N_REPS, eligible_share=0.5)) for name, k in kernels.items()}


@pytest.mark.parametrize("size", [1_000, 10_000, 100_000])
@pytest.mark.parametrize("implementation", ["cython", "numpy", "reference"])
def test_rank_one_least_busy(benchmark, tables, implementation, size):
    benchmark.group = f"rank_one LEAST_BUSY {size} candidates"
    cand = candidates(N_REPS, size)
    kernel, reps = tables["reference" if implementation == "reference" else "cython"]
    if implementation == "numpy":
        best = benchmark(best_candidate_numpy, reps, cand)
    else:
        best = benchmark(kernel.best_candidate, cand, Algorithm.LEAST_BUSY)
    assert best == tables["reference"][0].best_candidate(cand, Algorithm.LEAST_BUSY)


@pytest.mark.parametrize("implementation", ["cython", "reference"])
def test_rank_one_best_skills(benchmark, tables, implementation):
    benchmark.group = "rank_one BEST_SKILLS 10000 candidates"
    cand = candidates(N_REPS, 10_000)
    kernel, _ = tables[implementation]
    best = benchmark(kernel.best_candidate, cand, Algorithm.BEST_SKILLS, [3, 7, 11], [4, 4, 2])
    assert best == tables["reference"][0].best_candidate(
        cand, Algorithm.BEST_SKILLS, [3, 7, 11], [4, 4, 2]
    )


@pytest.fixture(scope="module")
def batch_desks():
    return {name: BatchDesk(name) for name in ("cython", "reference")}


@pytest.mark.parametrize("implementation", ["cython", "reference"])
def test_assign_batch(benchmark, batch_desks, implementation):
    benchmark.group = "batch: 5k teams, 20k reps, 50k sessions, 2k eligible"
    desk = batch_desks[implementation]
    rounds = 20 if implementation == "cython" else 3
    made = benchmark.pedantic(desk.full_pass, setup=desk.reset, rounds=rounds, iterations=1)
    assert made == 2000
