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
    ) -> int:
        """The best eligible, undeclined rep among `candidates` (rep ordinals), or -1."""
        return int(
            self.impl.best_candidate(
                _as(candidates, _I32, "candidates"),
                int(algorithm),
                _as(req_skill, _I32, "req_skill"),
                _as(req_level, _U8, "req_level"),
                _as(declined, _I32, "declined"),
            )
        )

    def assign_batch(
        self,
        log_slot: np.ndarray,
        log_seq: np.ndarray,
        decl_pool: np.ndarray,
        max_offers: int,
        remaining: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One pass over a log of (slot, seq) entries in rule-4 order; returns the offers
        made as (slots, rep ordinals). `remaining` is the number of eligible reps. The
        reps' rank keys and pending-offer flags are already updated."""
        out_slot = np.empty(max_offers, dtype=np.int32)
        out_rep = np.empty(max_offers, dtype=np.int32)
        made = self.impl.assign_batch(
            _as(log_slot, _I64, "log_slot"),
            _as(log_seq, _I64, "log_seq"),
            _as(decl_pool, _I32, "decl_pool"),
            out_slot,
            out_rep,
            int(remaining),
        )
        return out_slot[:made], out_rep[:made]
