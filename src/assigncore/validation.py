"""Input limits and checks shared by every engine command. Each check raises
InvalidArgument naming the offending field; none of them mutates anything."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .columns import MAX_REQUIRED_SKILLS
from .errors import InvalidArgument, shown

MAX_ID_LEN = 64
MAX_NAME_LEN = 200
MAX_TEXT_LEN = 4000
MAX_SKILLS_PER_REP = 64
MAX_TEAMS_PER_REP = 256
MAX_SKILL_LEVEL = 10
MIN_PRIORITY, MAX_PRIORITY = 0, 100
MAX_CONCURRENT_SESSIONS = 1000
MAX_SECONDS = 7 * 24 * 3600.0
MAX_MISSED_OFFERS = 1000
MAX_SESSION_KEY_LEN = 32
MAX_ADDRESS_LEN = 100  # a customer's network address, as an intake portal reports it

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*\Z")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class Checks:
    """Runs field checks and collects every violation, so a request learns all that is
    wrong with it at once; `done()` raises them together. Checks run before lookups."""

    __slots__ = ("violations",)

    def __init__(self) -> None:
        self.violations: list[tuple[str, str]] = []

    def __call__(self, check: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return check(*args, **kwargs)
        except InvalidArgument as exc:
            self.violations.extend(exc.violations)
            return None

    def add(self, field: str, description: str) -> None:
        self.violations.append((field, description))

    def done(self) -> None:
        if self.violations:
            raise InvalidArgument.of(self.violations)


def ident(field: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(field, "required")
    if len(value) > MAX_ID_LEN:
        raise InvalidArgument(field, f"at most {MAX_ID_LEN} characters")
    if not _ID.match(value):
        raise InvalidArgument(
            field, "letters, digits and . _ : @ - only, starting with a letter or digit"
        )
    return value


def text(field: str, value: Any, max_len: int = MAX_NAME_LEN, required: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(field, "must be a string")
    if required and not value.strip():
        raise InvalidArgument(field, "required")
    if len(value) > max_len:
        raise InvalidArgument(field, f"at most {max_len} characters")
    if _CONTROL.search(value):
        raise InvalidArgument(field, "control characters are not allowed")
    return value


def integer(field: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(field, "must be an integer")
    if not lo <= value <= hi:
        raise InvalidArgument(field, f"must be between {lo} and {hi}")
    return value


def seconds(field: str, value: Any, lo: float, hi: float = MAX_SECONDS) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument(field, "must be a finite number of seconds")
    if not lo <= value <= hi:
        raise InvalidArgument(field, f"must be between {lo:g} and {hi:g} seconds")
    return float(value)


def flag(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(field, "must be true or false")
    return value


def skill_levels(field: str, value: Any) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise InvalidArgument(field, "must map skill names to levels")
    if len(value) > MAX_SKILLS_PER_REP:
        raise InvalidArgument(field, f"at most {MAX_SKILLS_PER_REP} skills")
    levels = {
        ident(f"{field}[{shown(name)}]", name): integer(
            f"{field}[{shown(name)}]", level, 1, MAX_SKILL_LEVEL
        )
        for name, level in value.items()
    }
    # By name: a new skill's column must not depend on the order a caller listed them
    # in (a journal's canonical encoding sorts maps).
    return dict(sorted(levels.items()))


def required_skills(field: str, value: Any) -> tuple[tuple[str, int], ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InvalidArgument(field, "must be a list of (skill, minimum level)")
    if len(value) > MAX_REQUIRED_SKILLS:
        raise InvalidArgument(field, f"at most {MAX_REQUIRED_SKILLS} required skills")
    out: list[tuple[str, int]] = []
    for i, item in enumerate(value):
        if not isinstance(item, Sequence) or isinstance(item, str) or len(item) != 2:
            raise InvalidArgument(f"{field}[{i}]", "must be (skill, minimum level)")
        out.append(
            (
                ident(f"{field}[{i}].skill", item[0]),
                integer(f"{field}[{i}].min_level", item[1], 1, MAX_SKILL_LEVEL),
            )
        )
    if len({name for name, _ in out}) != len(out):
        raise InvalidArgument(field, "a skill is listed twice")
    return tuple(out)


def id_list(field: str, value: Any, max_len: int) -> list[str]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | set | frozenset):
        raise InvalidArgument(field, "must be a list of ids")
    if len(value) > max_len:
        raise InvalidArgument(field, f"at most {max_len} entries")
    items = [ident(f"{field}[{i}]", v) for i, v in enumerate(value)]
    if len(set(items)) != len(items):
        raise InvalidArgument(field, "an id is listed twice")
    return items
