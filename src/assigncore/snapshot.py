"""Snapshots: a desk's whole engine state as bytes, and back (`restore(dump(s))` is `s`).

A snapshot only bounds recovery time; the journal stays the desk's record. So the format
is the fastest exact one Python has, pickle, fenced on three sides:

- a header names the format and the build's state layout (a digest of every state
  class's fields): a snapshot written by a build with another layout is refused as
  unreadable, and recovery falls back to an older snapshot or the journal from its start;
- loading resolves only the classes on an allow-list (the engine's own, numpy arrays,
  sorted lists, a few builtins), so the bytes cannot name anything that runs code;
- the caller stores a checksum with the bytes (server/storage/files.py).

Objects shared across the state stay shared (a timer held by a rep and by the heap is
one timer after a restore). The kernel is not saved: the restored tables bind to a new
one. The queue index's shared empty list is saved as a marker and restored as the
shared list it was.
"""

from __future__ import annotations

import contextlib
import copyreg
import gc
import hashlib
import io
import operator
import pickle
from collections.abc import Iterator
from dataclasses import fields, is_dataclass
from typing import Any

from . import capacity, columns, model, queue_order, state, stats, steps, timers
from .state import State

FORMAT = b"assigncore-snapshot/1\n"


def _layout() -> bytes:
    """A digest of the state's shape: the fields of every class a snapshot holds."""
    parts = []
    for module in (model, state, timers, columns, queue_order, stats, steps, capacity):
        for name in sorted(vars(module)):
            cls = getattr(module, name)
            if not isinstance(cls, type) or cls.__module__ != module.__name__:
                continue
            if is_dataclass(cls):
                names = [f.name for f in fields(cls)]
            else:
                names = sorted(getattr(cls, "__slots__", ()) or getattr(cls, "__annotations__", ()))
            parts.append(f"{module.__name__}.{name}:{','.join(names)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32].encode()


LAYOUT = _layout()

# What a snapshot may name on loading: module -> class or function names (None: any of
# the engine's own module's classes).
_ALLOWED: dict[str, set[str] | None] = {
    "assigncore.model": None,
    "assigncore.state": None,
    "assigncore.timers": None,
    "assigncore.columns": None,
    "assigncore.queue_order": None,
    "assigncore.stats": None,
    "assigncore.steps": {"StepFifo"},
    "assigncore.capacity": {"Compiled"},
    "assigncore.kernel": {"Kernel"},
    "builtins": {"set", "frozenset", "dict", "list", "tuple", "bytearray", "object"},
    "collections": {"deque", "OrderedDict"},
    "copyreg": {"_reconstructor"},
    "sortedcontainers.sortedlist": {"SortedList"},
    "numpy": {"dtype", "ndarray"},
    "numpy.core.multiarray": {"_reconstruct", "scalar"},
    "numpy._core.multiarray": {"_reconstruct", "scalar"},
    "numpy.core.numeric": {"_frombuffer"},
    "numpy._core.numeric": {"_frombuffer"},
}


def _dispatch_table() -> dict[type, Any]:
    """The state's dataclasses are saved as (class, field values) and rebuilt by their
    own constructor. That is half the size and twice as fast both ways as the generic
    slot state (a dict per object), and dataclasses' own pickling of frozen classes
    looked the fields up again for every object. (No dataclass of the state refers back
    to its holder, so nothing needs the object before its fields.)"""
    table: dict[type, Any] = dict(copyreg.dispatch_table)
    for module in (model, timers, state, capacity):
        for cls in vars(module).values():
            if not isinstance(cls, type) or cls.__module__ != module.__name__:
                continue
            kind: type = cls
            if not is_dataclass(kind):
                continue
            names = [f.name for f in fields(cls)]
            if hasattr(cls, "__post_init__") or not all(f.init for f in fields(cls)):
                continue
            getter = operator.attrgetter(*names)
            if len(names) == 1:
                table[kind] = lambda obj, cls=cls, get=getter: (cls, (get(obj),))
            else:
                table[kind] = lambda obj, cls=cls, get=getter: (cls, get(obj))
    return table


_DISPATCH = _dispatch_table()


class SnapshotError(ValueError):
    """Bytes that are not a snapshot this build can restore."""


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get(module, set())
        if (allowed is None and not name.startswith("_")) or (allowed and name in allowed):
            return super().find_class(module, name)
        raise SnapshotError(f"a snapshot may not name {module}.{name}")


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """The cyclic collector paused: building millions of objects at once otherwise sets
    off collections that walk everything built so far, again and again (a restore ran
    2.5 times slower with it on)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def dump(st: State) -> bytes:
    """The state as bytes (the running command's events and the listener are not part
    of it; there is none between commands)."""
    buf = io.BytesIO()
    buf.write(FORMAT)
    buf.write(LAYOUT + b"\n")
    pickler = pickle.Pickler(buf, protocol=5)
    pickler.dispatch_table = _DISPATCH
    with no_gc():
        pickler.dump(st)
    return buf.getvalue()


def restore(data: bytes, start: int = 0) -> State:
    """The state `dump` wrote (at `start` in `data`: read in place, never copied);
    SnapshotError if it is not one this build can read."""
    head = start + len(FORMAT)
    if data[start:head] != FORMAT:
        raise SnapshotError("not an assigncore snapshot")
    if data[head : head + len(LAYOUT) + 1] != LAYOUT + b"\n":
        raise SnapshotError("written by a build with another state layout")
    stream = io.BytesIO(data)  # shares the bytes
    stream.seek(head + len(LAYOUT) + 1)
    try:
        with no_gc():
            st = _Unpickler(stream).load()
    except SnapshotError:
        raise
    except Exception as exc:
        raise SnapshotError(f"unreadable snapshot: {exc}") from None
    if not isinstance(st, State):
        raise SnapshotError("not an assigncore snapshot")
    return st
