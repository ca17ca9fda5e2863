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
    CapacityProfile,
    Customer,
    HelpLink,
    IssueType,
    Permissions,
    QueueKind,
    QueueRef,
    QueueSettings,
    RoutingStep,
    RuleAction,
    StepKind,
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
        CapacityProfile,
        RoutingStep,
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
    cls.__name__: cls for cls in (Algorithm, QueueKind, RuleAction, StepKind, TeamKind)
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
        return {"$d": [[k, _enc(v)] for k, v in sorted(x.items())]}
    raise RecordError(f"{type(x).__name__} is not a record type")


_FIELDS = {name: frozenset(f.name for f in fields(cls)) for name, cls in _CLASSES.items()}  # type: ignore[arg-type]


def _hook(x: dict[str, Any]) -> Any:
    """Turns a tagged JSON object into its value while the JSON is parsed (bottom-up:
    its contents are done already). Untagged objects (a record, its keyword arguments,
    a dataclass's fields) are left as they are; a map is tagged and held as pairs, so
    no map a caller passed can be mistaken for a tag."""
    if len(x) == 1:
        if "$t" in x:
            items = x["$t"]
            if type(items) is list:
                return tuple(items)
        elif "$d" in x:
            pairs = x["$d"]
            if type(pairs) is list and all(
                type(p) is list and len(p) == 2 and type(p[0]) is str for p in pairs
            ):
                return dict(pairs)
        else:
            return x
        raise RecordError("not a record value")
    if len(x) == 2:
        if "$e" in x:
            enum = _ENUMS.get(x["$e"])
            if enum is None or x.get("v") not in enum.__members__:
                raise RecordError("an unknown enum value")
            return enum[x["v"]]
        if "$c" in x:
            name, values = x["$c"], x.get("f")
            cls = _CLASSES.get(name) if type(name) is str else None
            if cls is None or type(values) is not dict:
                raise RecordError("an unknown record type")
            if not _FIELDS[name].issuperset(values):
                raise RecordError(f"unknown fields of {name}")
            return cls(**values)
    return x


def encode(record: CommandRecord) -> bytes:
    """The record as canonical JSON: sorted keys, no spaces (the same record, the same
    bytes)."""
    body = {
        "v": RECORD_VERSION,
        "c": record.command,
        "t": _enc(float(record.time)),
        "a": [_enc(a) for a in record.args],
        "k": {k: _enc(v) for k, v in (record.kwargs or {}).items()},
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def decode(data: bytes) -> CommandRecord:
    records = decode_many(b"[" + data + b"]")
    if len(records) != 1:
        raise RecordError("not a record")
    return records[0]


def decode_many(data: bytes) -> list[CommandRecord]:
    """The records of a JSON list of them (a journal entry)."""
    try:
        body = json.loads(data, object_hook=_hook)
    except (ValueError, UnicodeDecodeError):
        raise RecordError("not a record: not JSON") from None
    except TypeError:  # a dataclass given fields it does not take in that form
        raise RecordError("not a record value") from None
    if not isinstance(body, list):
        raise RecordError("a list of records")
    return [_record(item) for item in body]


def _record(body: Any) -> CommandRecord:
    if not isinstance(body, dict) or set(body) != {"v", "c", "t", "a", "k"}:
        raise RecordError("not a record")
    if body["v"] != RECORD_VERSION:
        raise RecordError(f"record version {body['v']!r}; this build reads {RECORD_VERSION}")
    command, time, args, kwargs = body["c"], body["t"], body["a"], body["k"]
    if not isinstance(command, str) or not isinstance(time, int | float) or isinstance(time, bool):
        raise RecordError("not a record")
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise RecordError("not a record")
    return CommandRecord(command, float(time), tuple(args), kwargs)
