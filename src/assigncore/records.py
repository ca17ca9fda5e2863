"""Command records: a command as plain data, with a stable, versioned encoding.

A record names an engine command, the time it ran at, and its arguments. Arguments are
plain values (None, booleans, numbers, strings, lists, tuples, string-keyed dicts) or
the model's own dataclasses and enums, by name. The encoding is canonical JSON (sorted
keys, no spaces; floats round-trip exactly), never pickle: a journal written today is
read by the next version, and nothing in a record can run code when it is decoded.

`Engine.apply(record)` runs a record at its time; applying a desk's records in order on a
fresh engine with the desk's secret rebuilds the desk (DESIGN.md 4.2).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, is_dataclass
from enum import Enum
from typing import Any

from .model import (
    Algorithm,
    Customer,
    HelpLink,
    IssueType,
    Permissions,
    QueueKind,
    QueueRef,
    QueueSettings,
    RuleAction,
    SupportButton,
    Target,
    TeamKind,
    WaitingRule,
)

RECORD_VERSION = 1

# The only classes a record may name: the model's argument types.
_CLASSES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        Customer,
        HelpLink,
        IssueType,
        Permissions,
        QueueRef,
        QueueSettings,
        SupportButton,
        Target,
        WaitingRule,
    )
}
_ENUMS: dict[str, type[Enum]] = {
    cls.__name__: cls for cls in (Algorithm, QueueKind, RuleAction, TeamKind)
}


class RecordError(ValueError):
    """Bytes that are not a record this version can read."""


@dataclass(frozen=True, slots=True)
class CommandRecord:
    command: str  # an engine command's name
    time: float  # the engine's clock when it ran
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] | None = None


def _enc(x: Any) -> Any:
    if isinstance(x, Enum):  # before int: IntEnums are ints too
        name = type(x).__name__
        if name not in _ENUMS:
            raise RecordError(f"{name} is not a record type")
        return {"$e": name, "v": x.name}
    if x is None or isinstance(x, bool | int | str):
        return x
    if isinstance(x, float):
        if not math.isfinite(x):
            raise RecordError("a record holds only finite numbers")
        return x
    if is_dataclass(x) and not isinstance(x, type):
        name = type(x).__name__
        if name not in _CLASSES:
            raise RecordError(f"{name} is not a record type")
        return {"$c": name, "f": {f.name: _enc(getattr(x, f.name)) for f in fields(x)}}
    if isinstance(x, tuple):
        return {"$t": [_enc(i) for i in x]}
    if isinstance(x, list):
        return [_enc(i) for i in x]
    if isinstance(x, dict):
        if not all(isinstance(k, str) for k in x):
            raise RecordError("a record's maps have string keys")
        return {"$d": {k: _enc(v) for k, v in x.items()}}
    raise RecordError(f"{type(x).__name__} is not a record type")


def _dec(x: Any) -> Any:
    if x is None or isinstance(x, bool | int | float | str):
        return x
    if isinstance(x, list):
        return [_dec(i) for i in x]
    if not isinstance(x, dict) or len(x) not in (1, 2):
        raise RecordError("not a record value")
    if "$t" in x and isinstance(x["$t"], list):
        return tuple(_dec(i) for i in x["$t"])
    if "$d" in x and isinstance(x["$d"], dict):
        return {k: _dec(v) for k, v in x["$d"].items()}
    if "$e" in x:
        enum = _ENUMS.get(x["$e"])
        if enum is None or x.get("v") not in enum.__members__:
            raise RecordError("an unknown enum value")
        return enum[x["v"]]
    if "$c" in x:
        cls = _CLASSES.get(x["$c"])
        values = x.get("f")
        if cls is None or not isinstance(values, dict):
            raise RecordError("an unknown record type")
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        if set(values) - names:
            raise RecordError(f"unknown fields of {x['$c']}")
        return cls(**{k: _dec(v) for k, v in values.items()})
    raise RecordError("not a record value")


def to_plain(record: CommandRecord) -> dict[str, Any]:
    """The record as JSON-ready data (what `encode` writes)."""
    return {
        "v": RECORD_VERSION,
        "c": record.command,
        "t": _enc(float(record.time)),
        "a": [_enc(a) for a in record.args],
        "k": {k: _enc(v) for k, v in (record.kwargs or {}).items()},
    }


def dumps(value: Any) -> bytes:
    """Canonical JSON: sorted keys, no spaces (the same data gives the same bytes)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def encode(record: CommandRecord) -> bytes:
    return dumps(to_plain(record))


def decode(data: bytes) -> CommandRecord:
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise RecordError("not a record: not JSON") from None
    return from_plain(body)


def from_plain(body: Any) -> CommandRecord:
    """The inverse of `to_plain`."""
    if not isinstance(body, dict) or set(body) != {"v", "c", "t", "a", "k"}:
        raise RecordError("not a record")
    if body["v"] != RECORD_VERSION:
        raise RecordError(f"record version {body['v']!r}; this build reads {RECORD_VERSION}")
    command, time, args, kwargs = body["c"], body["t"], body["a"], body["k"]
    if not isinstance(command, str) or not isinstance(time, int | float):
        raise RecordError("not a record")
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise RecordError("not a record")
    return CommandRecord(
        command, float(time), tuple(_dec(a) for a in args), {k: _dec(v) for k, v in kwargs.items()}
    )
