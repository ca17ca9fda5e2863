# Shared C typedefs and small inline helpers of the ranking kernel.
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t

ctypedef int32_t ord_t        # dense rep / team / session-slot ordinal
ctypedef uint8_t level_t      # skill proficiency 0 (absent) .. 10
ctypedef uint8_t flags_t      # ineligibility bits, 0 = eligible

# A policy maps (a rep's skill row, the session's ranked requirements) to its "major"
# score: smaller is better, compared before load and availability. NULL means every
# candidate scores 0 (pure least-busy), which lets the kernel take a tighter loop.
ctypedef int64_t (*policy_fn)(const level_t* skill_row, const int32_t* req_skill,
                              const level_t* req_level, int nreq) noexcept nogil


cdef inline int matched_prefix(const level_t* skill_row, const int32_t* req_skill,
                               const level_t* req_level, int nreq) noexcept nogil:
    """How many of the most important required skills the rep holds, in order, at their
    minimum level. Peeling the least important skill until someone qualifies keeps exactly
    the candidates whose prefix equals the best prefix among them."""
    cdef int j = 0
    while j < nreq and skill_row[req_skill[j]] >= req_level[j]:
        j += 1
    return j


cdef inline bint ranks_before(int64_t major, int64_t key, ord_t rep,
                              int64_t best_major, int64_t best_key, ord_t best) noexcept nogil:
    """Lexicographic (major, rank key = load then available_since, ordinal); the final
    tie goes to the lowest ordinal. Non-short-circuit operators: gcc emits no branches."""
    return (major < best_major) | ((major == best_major) & (
        (key < best_key) | ((key == best_key) & (rep < best))))

