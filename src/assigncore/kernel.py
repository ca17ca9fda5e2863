"""The one entry point to the ranking kernel.

Chooses the compiled Cython kernel, or the pure-Python reference when
ASSIGNCORE_PURE_PYTHON=1. A normal install must have the compiled kernel: if it is
missing, importing this module fails loudly instead of silently running 100x slower.
This wrapper checks dtypes and shapes; the kernel checks ordinals are in range.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import reference

PURE_PYTHON = os.environ.get("ASSIGNCORE_PURE_PYTHON", "") not in ("", "0")
IMPLEMENTATION = "reference" if PURE_PYTHON else "cython"

if not PURE_PYTHON:
    try:
        from . import _kernel  # noqa: F401  (imported to fail loudly here)
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "assigncore's compiled kernel (assigncore._kernel) is missing: install the "
            "package with `pip install .` so the Cython extension is built, or set "
            "ASSIGNCORE_PURE_PYTHON=1 to run on the (much slower) pure-Python reference"
        ) from exc


def _implementation(name: str) -> Any:
    if name == "reference":
        return reference.RankKernel
    if name == "cython":
        from ._kernel import RankKernel

        return RankKernel
    raise ValueError(f"unknown kernel implementation {name!r}")


_I32, _I64, _U8 = np.dtype(np.int32), np.dtype(np.int64), np.dtype(np.uint8)
_NO_REPS = np.zeros(0, dtype=_I32)
_NO_LEVELS = np.zeros(0, dtype=_U8)
_NO_REPS.flags.writeable = _NO_LEVELS.flags.writeable = False


def _as(arr, dtype: np.dtype, name: str) -> np.ndarray:
    # Fast path for the common case (builtin dtypes are singletons, so `is` is exact).
    if type(arr) is np.ndarray and arr.dtype is dtype and arr.ndim == 1 and arr.flags.c_contiguous:
        return arr
    out = np.ascontiguousarray(arr, dtype=dtype)
    if out.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {out.shape}")
    return out


class Batch:
    """The offers of one assignment pass, one row each: session slot, rep ordinal, and
    the decision as the kernel made it (the winner's major score and rank key, and how
    many members of its team were eligible). One array, so a pass allocates once."""

    __slots__ = ("rows",)

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows  # (offers, 5)

    @property
    def slots(self) -> np.ndarray:
        return self.rows[:, 0]

    @property
    def reps(self) -> np.ndarray:
        return self.rows[:, 1]

    @property
    def majors(self) -> np.ndarray:
        return self.rows[:, 2]

    @property
    def keys(self) -> np.ndarray:
        return self.rows[:, 3]

    @property
    def eligible(self) -> np.ndarray:
        return self.rows[:, 4]

    def __len__(self) -> int:
        return len(self.rows)


class Kernel:
    """Ranking over the engine's columns, on the selected implementation."""

    def __init__(self, implementation: str | None = None) -> None:
        self.implementation = implementation or IMPLEMENTATION
        self.impl = _implementation(self.implementation)()
        self.bind_reps = self.impl.bind_reps
        self.bind_teams = self.impl.bind_teams
        self.bind_sessions = self.impl.bind_sessions

    def __reduce__(self) -> tuple[Any, ...]:
        # A snapshot holds no kernel: the restored tables bind a fresh one of this
        # process's implementation.
        return (Kernel, ())

    def best_candidate(
        self,
        candidates,
        algorithm: int,
        req_skill=_NO_REPS,
        req_level=_NO_LEVELS,
        declined=_NO_REPS,
        chan: int = 0xFFFF,
        strict: int = 0,
        only: int = -1,
    ) -> int:
        """The best eligible, undeclined rep among `candidates` (rep ordinals), or -1;
        with a channel bit, a number of requirements every candidate must hold, and the
        one rep allowed (-1: any), as a routing step and capacity by channel narrow it."""
        return int(
            self.impl.best_candidate(
                _as(candidates, _I32, "candidates"),
                int(algorithm),
                _as(req_skill, _I32, "req_skill"),
                _as(req_level, _U8, "req_level"),
                _as(declined, _I32, "declined"),
                int(chan),
                int(strict),
                int(only),
            )
        )

    def assign_batch(
        self,
        log_slot: np.ndarray,
        log_seq: np.ndarray,
        decl_pool: np.ndarray,
        max_offers: int,
        remaining: int,
    ) -> Batch:
        """One pass over a log of (slot, seq) entries in rule-4 order; returns the offers
        made, with each decision. `remaining` is the number of eligible reps. The reps'
        rank keys and pending-offer flags are already updated."""
        out = np.empty((5, max_offers), dtype=_I64)
        made = self.impl.assign_batch(
            _as(log_slot, _I64, "log_slot"),
            _as(log_seq, _I64, "log_seq"),
            _as(decl_pool, _I32, "decl_pool"),
            out,
            int(remaining),
        )
        return Batch(out[:, :made].T)

    def explain(
        self, slot: int, declined, members: int
    ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """For a session waiting for an offer in a team queue of `members` members: the
        rep the ranking picks (-1: none), and per member (in the team's member order)
        the WHY_* bits, major scores and rank keys the ranking compared."""
        why = np.zeros(members, dtype=np.uint8)
        major = np.zeros(members, dtype=np.int64)
        key = np.zeros(members, dtype=np.int64)
        best = self.impl.explain(int(slot), _as(declined, _I32, "declined"), why, major, key)
        return int(best), why, major, key
