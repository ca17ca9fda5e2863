"""The compiled kernel and the pure-Python reference make exactly the same choices."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from assigncore import reference
from assigncore.columns import (
    ALL_CHANNELS,
    FLAG_IDLE,
    FLAG_LOCKED,
    FLAG_OFFLINE,
    FLAG_OPTED_OUT,
    FLAG_PENDING_OFFER,
    FLAG_WRAP_UP,
    INELIGIBLE,
    LOAD_SHIFT,
    MAX_AVAIL_TICKS,
    NO_CAP,
    RepTable,
    SessionTable,
    TeamTable,
)
from assigncore.kernel import Kernel
from assigncore.model import Algorithm
from assigncore.vectorized import best_candidate_numpy

N_SKILLS = 4


def build(world: dict, implementation: str):
    """The same columns, bound to one implementation."""
    kernel = Kernel(implementation)
    reps = RepTable(kernel, capacity=8, skill_capacity=2)
    for _ in range(N_SKILLS):
        reps.add_skill_column()
    for _ in range(world["n_reps"]):
        reps.add()
    n = world["n_reps"]
    reps.load[:n], reps.cap[:n] = world["load"], world["cap"]
    reps.flags[:n], reps.avail[:n] = world["flags"], world["avail"]
    reps.skills[:n, :N_SKILLS] = world["skills"]
    reps.room[:n] = world.get("room", [ALL_CHANNELS] * n)
    reps.refresh_all()
    teams = TeamTable(kernel)
    for alg, members in zip(world["team_alg"], world["members"], strict=True):
        t = teams.add(alg)
        for r in members:
            teams.add_member(t, r)
    teams.ensure_bound()
    sessions = SessionTable(kernel, capacity=4)
    pool: list[int] = []
    by_slot = {}
    entries = []  # (priority, seq, slot) of every session, the ended ones too
    for i, s in enumerate(world["sessions"]):
        slot = sessions.alloc(
            s["priority"], i, [k for k, _ in s["req"]], [lv for _, lv in s["req"]]
        )
        entries.append((-s["priority"], i, slot))
        if s.get("gone"):  # ended: its slot is reused, its log entry goes stale
            sessions.release(slot)
            continue
        sessions.team[slot] = s["team"]
        sessions.chan[slot] = s.get("chan", 1)
        sessions.strict[slot] = len(s["req"]) if s.get("strict") else 0
        sessions.only[slot] = s.get("only", -1)
        sessions.decl_off[slot], sessions.decl_cnt[slot] = len(pool), len(s["declined"])
        pool.extend(s["declined"])
        by_slot[slot] = s
    world["by_slot"] = by_slot
    entries.sort()
    world["log"] = (
        np.asarray([slot for _, _, slot in entries], dtype=np.int64),
        np.asarray([seq for _, seq, _ in entries], dtype=np.int64),
    )
    return kernel, reps, sessions, np.asarray(pool, dtype=np.int32)


@st.composite
def worlds(draw, max_reps: int = 40):
    """Small rosters with few distinct values, so that ties are everywhere."""
    n = draw(st.integers(1, max_reps))
    ints = lambda lo, hi: st.lists(st.integers(lo, hi), min_size=n, max_size=n)  # noqa: E731
    caps = draw(st.lists(st.sampled_from([1, 2, 3, NO_CAP]), min_size=n, max_size=n))
    flag_choices = [
        0,
        0,
        0,
        FLAG_OFFLINE,
        FLAG_LOCKED,
        FLAG_IDLE,
        FLAG_OPTED_OUT,
        FLAG_WRAP_UP,
        FLAG_PENDING_OFFER,
        FLAG_LOCKED | FLAG_IDLE,
    ]
    world = {
        "n_reps": n,
        "load": draw(ints(0, 3)),
        "cap": caps,
        "flags": draw(st.lists(st.sampled_from(flag_choices), min_size=n, max_size=n)),
        "avail": draw(ints(0, 3)),
        # capacity by channel: room for channels 0 and 1, one of them, or none
        "room": draw(st.lists(st.sampled_from([ALL_CHANNELS, 1, 2, 3, 0]), min_size=n, max_size=n)),
        "skills": draw(
            st.lists(
                st.lists(
                    st.sampled_from([0, 0, 3, 5, 7, 10]), min_size=N_SKILLS, max_size=N_SKILLS
                ),
                min_size=n,
                max_size=n,
            )
        ),
    }
    n_teams = draw(st.integers(1, 4))
    world["team_alg"] = draw(
        st.lists(st.sampled_from(list(Algorithm)), min_size=n_teams, max_size=n_teams)
    )
    world["members"] = [draw(st.sets(st.integers(0, n - 1), max_size=n)) for _ in range(n_teams)]
    world["sessions"] = [draw(sessions_for(n, n_teams)) for _ in range(draw(st.integers(0, 12)))]
    return world


@st.composite
def sessions_for(draw, n_reps: int, n_teams: int):
    skills = draw(st.lists(st.integers(0, N_SKILLS - 1), unique=True, max_size=3))
    return {
        "team": draw(st.integers(-1, n_teams - 1)),
        "priority": draw(st.integers(0, 2)),
        "req": [(k, draw(st.sampled_from([1, 3, 5, 8, 10]))) for k in skills],
        "declined": sorted(draw(st.sets(st.integers(0, n_reps - 1), max_size=n_reps))),
        "gone": draw(st.booleans()),
        # routing steps and channels: the session's channel bit, a SKILLS step (every
        # requirement held), a PREFERRED_REP step (one rep)
        "chan": draw(st.sampled_from([1, 1, 2, 4])),
        "strict": draw(st.booleans()),
        "only": draw(st.sampled_from([-1, -1, -1, *range(n_reps)])),
    }


def large_world(seed: int, n: int) -> dict:
    rng = np.random.default_rng(seed)
    n_teams = int(rng.integers(1, 20))
    return {
        "n_reps": n,
        "load": rng.integers(0, 4, n).tolist(),
        "cap": rng.choice([2, 3, 5, NO_CAP], n).tolist(),
        "flags": rng.choice([0, 0, 0, FLAG_LOCKED, FLAG_OFFLINE], n).tolist(),
        "avail": rng.integers(0, 50, n).tolist(),
        "skills": rng.choice([0, 0, 2, 5, 9], (n, N_SKILLS)).tolist(),
        "team_alg": rng.choice(list(Algorithm), n_teams).tolist(),
        "members": [
            set(rng.choice(n, int(rng.integers(0, n + 1)), replace=False).tolist())
            for _ in range(n_teams)
        ],
        "room": rng.choice([ALL_CHANNELS, ALL_CHANNELS, 1, 2, 0], n).tolist(),
        "sessions": [
            {
                "team": int(rng.integers(-1, n_teams)),
                "priority": int(rng.integers(0, 3)),
                "req": [
                    (int(k), int(rng.integers(1, 11)))
                    for k in rng.choice(N_SKILLS, int(rng.integers(0, 4)), replace=False)
                ],
                "declined": sorted(set(rng.integers(0, n, int(rng.integers(0, 30))).tolist())),
                "gone": bool(rng.random() < 0.2),
                "chan": int(rng.choice([1, 1, 2])),
                "strict": bool(rng.random() < 0.3),
                "only": int(rng.integers(0, n)) if rng.random() < 0.1 else -1,
            }
            for _ in range(int(rng.integers(0, 200)))
        ],
    }


def check_rank_one(world: dict) -> None:
    ck, creps, _, _ = build(world, "cython")
    rk, _, _, _ = build(world, "reference")
    n = world["n_reps"]
    cands = [np.arange(n, dtype=np.int32), np.zeros(0, dtype=np.int32)]
    cands += [np.asarray(sorted(m), dtype=np.int32) for m in world["members"]]
    cands.append(np.arange(n, dtype=np.int32)[::-1].copy())  # unsorted candidates
    for s in world["sessions"] or [{"req": [], "declined": []}]:
        req_skill = [k for k, _ in s["req"]]
        req_level = [lv for _, lv in s["req"]]
        narrow = (s.get("chan", 1), len(req_skill) if s.get("strict") else 0, s.get("only", -1))
        for cand in cands:
            for alg in Algorithm:
                args = (cand, alg, req_skill, req_level, s["declined"], *narrow)
                expected = rk.best_candidate(*args)
                got = ck.best_candidate(*args)
                assert got == expected, (alg, cand.tolist(), s)
                plain = narrow == (1, 0, -1) and "room" not in world
                if alg is Algorithm.LEAST_BUSY and plain:
                    vec = best_candidate_numpy(creps, cand, s["declined"])
                    assert vec == expected
    # ranking never writes
    assert (creps.marks == 0).all()
    assert (creps.rank_key[:n] == build(world, "cython")[1].rank_key[:n]).all()


def check_batch(world: dict) -> None:
    results = []
    for impl in ("cython", "reference"):
        kernel, reps, sessions, pool = build(world, impl)
        log_slot, log_seq = world["log"]  # stale entries of ended sessions included
        waiting = sessions.pass_order().tolist()
        batch = kernel.assign_batch(log_slot, log_seq, pool, max(1, len(log_slot)), reps.n_eligible)
        slots, chosen = batch.slots, batch.reps
        results.append(
            (
                slots.tolist(),
                chosen.tolist(),
                batch.majors.tolist(),
                batch.keys.tolist(),
                batch.eligible.tolist(),
                reps.flags[: reps.n].tolist(),
                reps.rank_key[: reps.n].tolist(),
            )
        )
        # offers follow rule-4 order, each to an eligible, undeclined member of the team
        assert slots.tolist() == [s for s in waiting if s in set(slots.tolist())]
        for slot, r in zip(slots.tolist(), chosen.tolist(), strict=True):
            s = world["by_slot"][slot]
            assert r in world["members"][s["team"]]
            assert r not in s["declined"]
            assert world["flags"][r] == 0 and world["load"][r] < world["cap"][r]
            assert world["team_alg"][s["team"]] != Algorithm.NONE
            assert world.get("room", [ALL_CHANNELS] * (r + 1))[r] & s.get("chan", 1)
            assert s.get("only", -1) in (-1, r)
            if s.get("strict"):
                assert all(world["skills"][r][k] >= lv for k, lv in s["req"])
        assert len(set(chosen.tolist())) == len(chosen)
    assert results[0] == results[1]


def check_explain(world: dict) -> None:
    """For every session waiting in a team: the explanation is the same in both
    implementations; its best candidate is the one member with no WHY bit that ranks
    first by the keys it shows; and it is the rep a pass offers the session to."""
    build(world, "cython")  # numbers the slots (world["by_slot"])
    for slot, s in list(world["by_slot"].items()):
        if s["team"] < 0:
            continue
        members = sorted(world["members"][s["team"]])
        outs = []
        for impl in ("cython", "reference"):
            kernel, _, sessions, _ = build(world, impl)
            best, why, major, key = kernel.explain(slot, s["declined"], len(members))
            order = kernel_members(kernel, sessions, s["team"], world)
            rows = zip(why.tolist(), major.tolist(), key.tolist(), strict=True)
            outs.append((best, dict(zip(order, rows, strict=True))))
            # the pass with this session alone picks the explained best
            log = (np.asarray([slot], dtype=np.int64), sessions.seq[[slot]].astype(np.int64))
            pool = np.asarray(s["declined"], dtype=np.int32)
            sessions.decl_off[slot], sessions.decl_cnt[slot] = 0, len(pool)
            batch = kernel.assign_batch(*log, pool, 1, 1 << 30)
            assert batch.reps.tolist() == ([] if best < 0 else [best])
        assert outs[0] == outs[1]
        best, rows = outs[0]
        open_ = sorted((m, k, r) for r, (w, m, k) in rows.items() if w == 0)
        alg_none = world["team_alg"][s["team"]] == Algorithm.NONE
        assert best == (-1 if alg_none or not open_ else open_[0][2])


def kernel_members(kernel, sessions, team: int, world: dict) -> list[int]:
    """The team's members in the order the kernel holds them (explain's row order):
    build() adds them in the set's iteration order, and the regions keep it."""
    return list(world["members"][team])


@given(worlds())
def test_explain_matches_the_pass(world):
    check_explain(world)


@given(worlds())
def test_rank_one_kernel_matches_reference(world):
    check_rank_one(world)


@given(worlds())
def test_assign_batch_kernel_matches_reference(world):
    check_batch(world)


@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 2, 17, 300, 1000, 5000]))
def test_large_rosters_kernel_matches_reference(seed, n):
    world = large_world(seed, n)
    check_batch(world)
    world["sessions"] = world["sessions"][:3]
    check_rank_one(world)


def test_everyone_declined_and_nobody_eligible_give_no_candidate():
    world = large_world(1, 50)
    kernel, reps, _, _ = build(world, "cython")
    everyone = np.arange(50, dtype=np.int32)
    assert kernel.best_candidate(everyone, Algorithm.LEAST_BUSY, (), (), everyone) == -1
    reps.flags[:50] = FLAG_LOCKED
    reps.refresh_all()
    assert kernel.best_candidate(everyone, Algorithm.BEST_SKILLS, (), (), ()) == -1


def test_rank_key_tracks_flags_load_cap_and_availability():
    kernel = Kernel()
    reps = RepTable(kernel, capacity=2)
    r = reps.add()
    assert reps.rank_key[r] == INELIGIBLE  # new reps are offline
    reps.set_flag(r, FLAG_OFFLINE, False)
    assert reps.rank_key[r] == 0
    reps.set_available(r, 1234)
    reps.set_cap(r, 2)
    reps.set_load(r, 2)
    assert reps.rank_key[r] == INELIGIBLE
    reps.set_load(r, 1)
    assert reps.rank_key[r] == (1 << LOAD_SHIFT) | 1234
    for _ in range(5):  # growth rebinds the kernel
        reps.add()
    assert kernel.best_candidate([r, 3], Algorithm.LEAST_BUSY) == r
    with pytest.raises(ValueError):
        reps.set_available(r, MAX_AVAIL_TICKS + 1)


def test_rebase_keeps_the_order():
    kernel = Kernel()
    reps = RepTable(kernel, capacity=4)
    for ticks in (MAX_AVAIL_TICKS - 5, MAX_AVAIL_TICKS - 9, MAX_AVAIL_TICKS - 7):
        r = reps.add()
        reps.set_flag(r, FLAG_OFFLINE, False)
        reps.set_available(r, ticks)
    before = kernel.best_candidate([0, 1, 2], Algorithm.LEAST_BUSY)
    assert reps.rebase() == MAX_AVAIL_TICKS - 9
    assert reps.avail[:3].tolist() == [4, 0, 2]
    assert kernel.best_candidate([0, 1, 2], Algorithm.LEAST_BUSY) == before == 1


@pytest.mark.parametrize("implementation", ["cython", "reference"])
def test_out_of_range_ordinals_are_refused(implementation):
    kernel = Kernel(implementation)
    reps = RepTable(kernel, capacity=4)
    reps.add()
    with pytest.raises(IndexError):
        kernel.best_candidate([0, 7], Algorithm.LEAST_BUSY)
    with pytest.raises(IndexError):
        kernel.best_candidate([0], Algorithm.LEAST_BUSY, declined=[-1])
    with pytest.raises(IndexError):
        kernel.best_candidate([0], Algorithm.BEST_SKILLS, [99], [1])
    with pytest.raises(ValueError):
        kernel.best_candidate([0], 9)
    with pytest.raises(ValueError):
        kernel.best_candidate([[0]], Algorithm.LEAST_BUSY)


def test_policy_tables_agree():
    from assigncore import _kernel

    assert _kernel.ALGORITHM_COUNT == reference.ALGORITHM_COUNT == len(Algorithm)


def test_a_missing_compiled_kernel_fails_loudly():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['assigncore._kernel'] = None\n"
        "try:\n import assigncore.kernel\nexcept ImportError as e: print(e)"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "ASSIGNCORE_PURE_PYTHON"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert "compiled kernel" in out.stdout and "ASSIGNCORE_PURE_PYTHON=1" in out.stdout


def test_normal_install_runs_the_compiled_kernel():
    import os

    from assigncore import kernel

    if os.environ.get("ASSIGNCORE_PURE_PYTHON") == "1":
        assert kernel.IMPLEMENTATION == "reference"
    else:
        assert kernel.IMPLEMENTATION == "cython"
        assert Kernel().impl.__class__.__module__ == "assigncore._kernel"
