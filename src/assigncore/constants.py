"""The numbers the columns (columns.py), the ranking kernel (_kernel.pyx), its pure-Python
twin (reference.py) and the model share, defined here and nowhere else.

setup.py writes the integer ones into `_kernel_constants.pxi` as a Cython `cdef enum` at
build time, which the kernel includes; so a kernel can never be built with other values
than the Python side uses.
"""

# Ineligibility bits of RepTable.flags; 0 means eligible (load < cap is checked apart).
FLAG_OFFLINE = 1
FLAG_LOCKED = 2
FLAG_IDLE = 4
FLAG_OPTED_OUT = 8
FLAG_WRAP_UP = 16
FLAG_PENDING_OFFER = 32
FLAG_REMOVED = 64

# rank_key = load << LOAD_SHIFT | available_since (microseconds since the epoch) for an
# eligible rep, INELIGIBLE (the largest int64) otherwise.
LOAD_SHIFT = 48
INELIGIBLE = (1 << 63) - 1

# Routing algorithms, by the number the team columns store (model.Algorithm names them;
# each has one policy in _kernel.pyx and one in reference.py).
ALG_NONE = 0
ALG_LEAST_BUSY = 1
ALG_SKILLS_MATCH_LEAST_BUSY = 2
ALG_BEST_SKILLS = 3
N_ALGORITHMS = 4

# Why an eligible team member is not a candidate for a session (kernel `excluded`, and
# `explain`, which also sets WHY_INELIGIBLE for a rep whose rank_key is INELIGIBLE).
WHY_INELIGIBLE = 1
WHY_DECLINED = 2
WHY_NO_ROOM = 4  # no room for the session's channel
WHY_NOT_PREFERRED = 8  # the session's step allows one other rep
WHY_MISSING_SKILL = 16  # the session's step requires a skill the rep lacks

MAX_CHANNELS = 16  # service channels: bits of a rep's room mask
ALL_CHANNELS = (1 << MAX_CHANNELS) - 1

MAX_REQUIRED_SKILLS = 8  # a session's ranked requirements, most important first
PREFETCH_AHEAD = 16  # candidates the kernel fetches ahead of the one it ranks

# What goes into the kernel's cdef enum (C ints; INELIGIBLE is C's INT64_MAX there).
KERNEL_ENUM = (
    "FLAG_PENDING_OFFER",
    "LOAD_SHIFT",
    "ALG_NONE",
    "N_ALGORITHMS",
    "MAX_REQUIRED_SKILLS",
    "PREFETCH_AHEAD",
    "WHY_INELIGIBLE",
    "WHY_DECLINED",
    "WHY_NO_ROOM",
    "WHY_NOT_PREFERRED",
    "WHY_MISSING_SKILL",
)
