"""Ranking-kernel benchmark: Cython vs NumPy vs the pure-Python reference, measured in
one run on the same data, plus the memory of a large engine.

    python benchmarks/kernel.py --json           # full run (a few minutes)
    python benchmarks/kernel.py --json --quick   # under 60 s, smaller RSS desk

Prints one JSON object (see README.md for the fields). Timings are medians of repeated
runs; ratios compare implementations measured back to back in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _data import BatchDesk, candidates, rep_table  # noqa: E402

from assigncore.columns import INELIGIBLE  # noqa: E402
from assigncore.kernel import Kernel  # noqa: E402
from assigncore.model import Algorithm  # noqa: E402
from assigncore.vectorized import best_candidate_numpy  # noqa: E402


def median_seconds(fn, repeats: int, budget: float, setup=None) -> float:
    """Median time of one call of `fn`: each repeat runs it enough times to fill
    `budget` seconds (at least once)."""
    if setup:
        setup()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(budget / once)) if setup is None else 1
    samples = []
    for _ in range(repeats):
        if setup:
            setup()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples)


def bench_rank_one(quick: bool) -> dict:
    n_reps = 100_000
    out = {}
    impls = {name: Kernel(name) for name in ("cython", "reference")}
    tables = {name: rep_table(k, n_reps, eligible_share=0.5) for name, k in impls.items()}
    for size in (1_000, 10_000, 100_000):
        cand = candidates(n_reps, size)
        c, r = impls["cython"], impls["reference"]
        assert (
            c.best_candidate(cand, Algorithm.LEAST_BUSY)
            == r.best_candidate(cand, Algorithm.LEAST_BUSY)
            == best_candidate_numpy(tables["cython"], cand)
        )
        cy = median_seconds(
            lambda: c.best_candidate(cand, Algorithm.LEAST_BUSY),  # noqa: B023
            repeats=5 if quick else 9,
            budget=0.05 if quick else 0.2,
        )
        npy = median_seconds(
            lambda: best_candidate_numpy(tables["cython"], cand),  # noqa: B023
            repeats=5 if quick else 9,
            budget=0.05 if quick else 0.2,
        )
        ref = median_seconds(
            lambda: r.best_candidate(cand, Algorithm.LEAST_BUSY),  # noqa: B023
            repeats=3,
            budget=0.05 if quick else 0.3,
        )
        skills = median_seconds(
            lambda: c.best_candidate(cand, Algorithm.BEST_SKILLS, [3, 7, 11], [4, 4, 2]),  # noqa: B023
            repeats=5,
            budget=0.05,
        )
        out[f"{size // 1000}k"] = {
            "candidates": size,
            "cython_ns_per_candidate": round(cy / size * 1e9, 3),
            "numpy_ns_per_candidate": round(npy / size * 1e9, 3),
            "reference_ns_per_candidate": round(ref / size * 1e9, 3),
            "speedup_vs_reference": round(ref / cy, 1),
            "speedup_vs_numpy": round(npy / cy, 2),
            "cython_best_skills_ns_per_candidate": round(skills / size * 1e9, 3),
        }
    return out


def bench_batch(quick: bool) -> dict:
    desks = {name: BatchDesk(name) for name in ("cython", "reference")}
    made = {}
    for name, desk in desks.items():
        desk.reset()
        made[name] = desk.full_pass()
    assert made["cython"] == made["reference"], made
    cy = desks["cython"]
    ref = desks["reference"]
    cy_s = median_seconds(cy.full_pass, repeats=7 if quick else 15, budget=0, setup=cy.reset)
    ref_s = median_seconds(ref.full_pass, repeats=1 if quick else 3, budget=0, setup=ref.reset)
    return {
        "teams": 5000,
        "reps": 20000,
        "waiting_sessions": 50000,
        "eligible_reps": int((cy._rank_key[: cy.reps.n] != INELIGIBLE).sum()),
        "cython_ms": round(cy_s * 1e3, 3),
        "reference_ms": round(ref_s * 1e3, 1),
        "speedup_vs_reference": round(ref_s / cy_s, 1),
        "offers_made": made["cython"],
    }


def bench_rss(quick: bool) -> dict:
    """A fresh process builds an engine through its commands and reports its RSS."""
    sizes = (100_000, 10_000, 100_000 if quick else 1_000_000)
    code = f"""
import resource, time
from assigncore.engine import Engine
from assigncore.model import Customer, IssueType, QueueSettings, Algorithm
reps, teams, sessions = {sizes}
e = Engine(lambda: 1.7e9)
t0 = time.perf_counter()
for t in range(teams):
    e.create_team(f"t{{t}}", f"Team {{t}}", settings=QueueSettings(Algorithm.LEAST_BUSY))
    e.create_issue_type(IssueType(f"i{{t}}", "Issue", f"t{{t}}", ((f"s{{t % 40}}", 3),), t % 3))
for r in range(reps):
    e.create_rep(f"r{{r}}", f"Rep {{r}}", skills={{f"s{{r % 40}}": 5, f"s{{(r + 1) % 40}}": 7}},
                 teams=[f"t{{r % teams}}"])
c = Customer("Customer", "Company", "Details of the request")
for i in range(sessions):
    e.start_from_issue(f"i{{i % teams}}", c)
build = time.perf_counter() - t0
rss = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
print(rss, build)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"RSS benchmark failed:\n{res.stderr}")
    rss, build = map(float, res.stdout.split())
    return {
        "reps": sizes[0],
        "queues": sizes[1],
        "waiting_sessions": sizes[2],
        "rss_mb": round(rss, 1),
        "build_s": round(build, 1),
        "intake_us_per_session": round(build / sizes[2] * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="smaller run, under 60 s")
    args = parser.parse_args()
    t0 = time.perf_counter()
    from assigncore import kernel

    if kernel.IMPLEMENTATION != "cython":
        sys.exit("benchmarks/kernel.py needs the compiled kernel (unset ASSIGNCORE_PURE_PYTHON)")
    rss = bench_rss(args.quick)
    result = {
        "quick": args.quick,
        "cpu_count": os.cpu_count(),
        "rank_one": bench_rank_one(args.quick),
        "batch": bench_batch(args.quick),
        "rss": rss,
        "rss_mb": rss["rss_mb"],
    }
    result["elapsed_s"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for section, values in result.items():
            print(f"{section}: {values}")


if __name__ == "__main__":
    main()
