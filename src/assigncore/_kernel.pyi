import numpy as np
import numpy.typing as npt

ALGORITHM_COUNT: int
BOUNDS_CHECKED: bool

class RankKernel:
    def __init__(self) -> None: ...
    def bind_reps(
        self,
        rank_key: npt.NDArray[np.int64],
        flags: npt.NDArray[np.uint8],
        skills: npt.NDArray[np.uint8],
        marks: npt.NDArray[np.uint8],
        n_reps: int,
    ) -> None: ...
    def bind_teams(
        self,
        start: npt.NDArray[np.int32],
        end: npt.NDArray[np.int32],
        members: npt.NDArray[np.int32],
        alg: npt.NDArray[np.int8],
        n_teams: int,
    ) -> None: ...
    def bind_sessions(
        self,
        team: npt.NDArray[np.int32],
        seq: npt.NDArray[np.int64],
        nreq: npt.NDArray[np.uint8],
        req_skill: npt.NDArray[np.int32],
        req_level: npt.NDArray[np.uint8],
        decl_off: npt.NDArray[np.int32],
        decl_cnt: npt.NDArray[np.int32],
        n_slots: int,
    ) -> None: ...
    def best_candidate(
        self,
        candidates: npt.NDArray[np.int32],
        algorithm: int,
        req_skill: npt.NDArray[np.int32],
        req_level: npt.NDArray[np.uint8],
        declined: npt.NDArray[np.int32],
    ) -> int: ...
    def assign_batch(
        self,
        log_slot: npt.NDArray[np.int64],
        log_seq: npt.NDArray[np.int64],
        decl_pool: npt.NDArray[np.int32],
        out_slot: npt.NDArray[np.int32],
        out_rep: npt.NDArray[np.int32],
        remaining: int,
    ) -> int: ...
