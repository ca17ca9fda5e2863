"""Commands are plain data and randomness is an input: replaying the commands a desk ran,
at the same times, on a fresh engine with the desk's secret gives the same state and the
same events, timers included (DESIGN.md 4.2)."""

from __future__ import annotations

import random

import pytest

from assigncore.engine import Engine, EngineConfig
from assigncore.model import Customer, IssueType, Permissions, QueueSettings, team_queue
from assigncore.records import CommandRecord, RecordError, decode, encode

from .conftest import ManualClock


def workload(seed: int) -> list[tuple[float, str, tuple, dict]]:
    """A busy desk's morning: directory, keys, every origin, offers answered both ways,
    transfers, shares, timeouts. The same seed gives the same commands."""
    r = random.Random(seed)
    steps: list[tuple[float, str, tuple, dict]] = [
        (0, "create_team", ("support", "Support"), {"settings": QueueSettings(offer_timeout=20)}),
        (0, "create_team", ("billing", "Billing"), {}),
        (0, "create_issue_type", (IssueType("it", "Issue", "support"),), {}),
    ]
    reps = [f"r{i}" for i in range(6)]
    for rep in reps:
        perms = Permissions(shown_on_public_site=True, may_use_general_queue=True)
        teams = ["support"] if rep < "r3" else ["support", "billing"]
        steps.append((0, "create_rep", (rep, rep.upper()), {"permissions": perms, "teams": teams}))
        steps.append((0, "connect", (rep,), {}))
    for i in range(60):
        t = r.choice([0, 0, 1, 5, 25])
        choice = r.random()
        if choice < 0.3:
            steps.append((t, "start_from_issue", ("it", Customer(f"c{i}")), {}))
        elif choice < 0.4:
            steps.append((t, "generate_session_key", (r.choice(reps),), {}))
        elif choice < 0.5:
            steps.append((t, "start_with_rep", (r.choice(reps), Customer(f"c{i}")), {}))
        elif choice < 0.6:
            steps.append((t, "start_undesignated", (Customer(f"c{i}"),), {}))
        else:
            steps.append((t, "act", (r.random(),), {}))  # answer, end, transfer or share
    return steps


def run(engine: Engine, clock: ManualClock, steps, record: list) -> list:
    """Runs `steps` live (`act` picks a console action from the engine's state) and
    records each accepted command with its time and its draws."""
    outcomes = []
    for dt, name, args, kwargs in steps:
        clock.tick(dt)
        if name == "act":
            picked = pick(engine, args[0])
            if picked is None:
                continue
            name, args, kwargs = picked
        try:
            outcome = getattr(engine, name)(*args, **kwargs)
        except Exception:  # a refused command changed nothing: not a journal record
            continue
        record.append((clock.t, name, args, kwargs))
        outcomes.append(outcome)
    outcomes.append(engine.advance())
    return outcomes


def replay(engine: Engine, clock: ManualClock, record: list, until: float) -> list:
    outcomes = []
    for t, name, args, kwargs in record:
        clock.t = t
        outcomes.append(getattr(engine, name)(*args, **kwargs))
    clock.t = until
    outcomes.append(engine.advance())
    return outcomes


def pick(engine: Engine, x: float):
    offers = sorted(engine.offers(), key=lambda o: o.id)
    active = sorted((s for s in engine.sessions() if s.state.value == "ACTIVE"), key=lambda s: s.id)
    if offers and x < 0.4:
        o = offers[int(x * 100) % len(offers)]
        return "answer_offer", (o.rep_id, o.id, x < 0.3), {}
    if active and x < 0.7:
        s = active[int(x * 100) % len(active)]
        return "end_session", (s.owner, s.id), {}
    if active and x < 0.85:
        s = active[int(x * 100) % len(active)]
        return "transfer_session", (s.owner, s.id, team_queue("billing")), {}
    if active:
        s = active[int(x * 100) % len(active)]
        return "invite", (s.owner, s.id, team_queue("support")), {}
    return None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_replaying_recorded_commands_reproduces_state_and_events(seed):
    secret = random.Random(seed).randbytes(32)
    clock_a, clock_b = ManualClock(), ManualClock()
    heard_a: list = []
    a = Engine(clock_a, secret=secret, listener=heard_a.append)
    record: list = []
    outcomes_a = run(a, clock_a, workload(seed), record)
    assert len(record) > 40
    timed_out = [e for e in heard_a if e.__class__.__name__ == "OfferDeclined" and e.timed_out]
    assert timed_out  # timers fired (and offered again) between the commands
    heard_b: list = []
    b = Engine(clock_b, secret=secret, listener=heard_b.append)
    outcomes_b = replay(b, clock_b, record, clock_a.t)
    assert heard_b == heard_a  # every event, those of timers too, in the same order
    assert [o.value for o in outcomes_b] == [o.value for o in outcomes_a]
    assert b.snapshot() == a.snapshot()


def test_another_secret_gives_other_ids_and_keys():
    a = Engine(ManualClock(), secret=b"a" * 32)
    b = Engine(ManualClock(), secret=b"b" * 32)
    for e in (a, b):
        e.create_team("t", "T")
        e.create_rep("ann", "Ann")
    assert (
        a.start_undesignated(Customer("c")).value.id != b.start_undesignated(Customer("c")).value.id
    )
    assert a.generate_session_key("ann").value != b.generate_session_key("ann").value


def test_a_secret_too_short_to_be_unguessable_is_refused():
    with pytest.raises(ValueError):
        Engine(ManualClock(), secret=b"short")


@pytest.mark.parametrize("seed", [4, 5])
def test_records_survive_their_encoding_and_rebuild_the_desk(seed):
    """Each accepted command becomes a record (bytes: canonical JSON, not pickle);
    applying the decoded records at their times rebuilds the same desk."""
    secret = random.Random(seed).randbytes(32)
    clock = ManualClock()
    heard_a: list = []
    a = Engine(clock, secret=secret, listener=heard_a.append)
    record: list = []
    run(a, clock, workload(seed), record)
    encoded = [
        encode(CommandRecord(name, t, tuple(args), dict(kwargs)))
        for t, name, args, kwargs in record
    ]
    assert all(isinstance(b, bytes) and b.startswith(b"{") for b in encoded)
    heard_b: list = []
    b = Engine(ManualClock(), secret=secret, listener=heard_b.append)
    for data in encoded:
        b.apply(decode(data))
    b.advance(clock.t)
    assert heard_b == heard_a
    assert b.snapshot() == a.snapshot()
    # the encoding is canonical: the same record, the same bytes
    assert [encode(decode(data)) for data in encoded] == encoded


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"v":1}',
        b'{"a":[],"c":"create_team","k":{},"t":0,"v":2}',  # another version
        b'{"a":[{"$c":"Engine","f":{}}],"c":"create_team","k":{},"t":0,"v":1}',
        b'{"a":[{"$e":"TeamKind","v":"NOPE"}],"c":"create_team","k":{},"t":0,"v":1}',
        b'{"a":[{"$c":"Customer","f":{"evil":1}}],"c":"create_team","k":{},"t":0,"v":1}',
    ],
)
def test_bytes_that_are_not_a_record_are_refused(data):
    with pytest.raises(RecordError):
        decode(data)


def test_a_record_names_only_engine_commands_and_record_types():
    e = Engine(ManualClock(), secret=b"s" * 32)
    with pytest.raises(RecordError):
        e.apply(CommandRecord("snapshot", 0.0))
    with pytest.raises(RecordError):
        encode(CommandRecord("create_team", 0.0, (object(),)))
    with pytest.raises(RecordError):
        encode(CommandRecord("create_team", float("nan")))
    assert e.snapshot()["teams"] == {}


_REPLAY_IN_A_PROCESS = """
import json, random, sys
sys.path.insert(0, {tests!r})
from tests.test_replay import workload, run
from tests.conftest import ManualClock
from assigncore.engine import Engine, EngineConfig
clock = ManualClock()
heard = []
engine = Engine(clock, secret=random.Random(9).randbytes(32), listener=heard.append)
run(engine, clock, workload(9), [])
print(json.dumps([engine.snapshot(), [repr(e) for e in heard]], sort_keys=True))
"""


def test_the_same_commands_give_the_same_bytes_whatever_the_hash_seed():
    """Nothing may depend on hash order: two processes with different PYTHONHASHSEED
    (so sets and string-keyed dicts iterate differently) end with identical snapshots
    and identical events, byte for byte."""
    import os
    import pathlib
    import subprocess
    import sys

    root = str(pathlib.Path(__file__).resolve().parent.parent)
    outputs = []
    for seed in ("1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", _REPLAY_IN_A_PROCESS.format(tests=root)],
            env=env,
            capture_output=True,
            timeout=120,
            check=True,
        )
        outputs.append(done.stdout)
    assert len(outputs[0]) > 10_000
    assert outputs[0] == outputs[1]


_REPLAY_JOURNALS = """
import json, sys
from dataclasses import astuple
sys.path.insert(0, {root!r})
from assigncore.engine import Engine, EngineConfig
from assigncore.records import decode
from tests.conftest import ManualClock
out = []
for journal, secret in json.load(open(sys.argv[1])):
    heard = []
    engine = Engine(ManualClock(), EngineConfig(reconnect_grace=20, max_rule_moves=3),
                    secret=bytes.fromhex(secret), listener=heard.append)
    for body in journal:
        engine.apply(decode(body.encode()))
    out.append([engine.snapshot(), [[type(e).__name__, *astuple(e)] for e in heard]])

def canonical(x):  # a set is written in sorted order, whatever order it iterates in
    return sorted(map(str, x)) if isinstance(x, (set, frozenset)) else str(x)

sys.stdout.write(json.dumps(out, sort_keys=True, default=canonical))
"""


def test_journals_of_the_stateful_test_replay_to_the_same_bytes_under_any_hash_seed(tmp_path):
    """The hypothesis state machine's runs, as journals (every accepted command, encoded),
    replayed in two fresh processes with different PYTHONHASHSEED: full snapshots and
    every event, byte for byte the same."""
    import json
    import os
    import pathlib
    import subprocess
    import sys

    from hypothesis import settings
    from hypothesis.stateful import run_state_machine_as_test

    from . import test_engine_stateful as machine

    machine.JOURNALS.clear()
    run_state_machine_as_test(
        machine.EngineMachine,
        settings=settings(
            max_examples=12, stateful_step_count=40, deadline=None, derandomize=True, database=None
        ),
    )
    journals = [([b.decode() for b in j], secret) for j, secret in machine.JOURNALS]
    assert sum(len(j) for j, _ in journals) > 12 * 40
    path = tmp_path / "journals.json"
    path.write_text(json.dumps(journals))
    root = str(pathlib.Path(__file__).resolve().parent.parent)
    outputs = []
    for seed in ("0", "987654"):
        done = subprocess.run(
            [sys.executable, "-c", _REPLAY_JOURNALS.format(root=root), str(path)],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            timeout=300,
            check=True,
        )
        outputs.append(done.stdout)
    assert len(outputs[0]) > 100_000
    assert outputs[0] == outputs[1]


def test_a_snapshot_restores_exactly_the_state_it_was_taken_of():
    """restore(dump(state)) is the state: the same snapshot view now, and the same events,
    values and state after the same further commands."""
    from assigncore.snapshot import dump, restore

    secret = random.Random(6).randbytes(32)
    clock = ManualClock()
    a = Engine(clock, secret=secret)
    steps = workload(6)
    record: list = []
    run(a, clock, steps[:40], record)
    b = Engine.restored(clock, restore(dump(a.state)))
    assert b.snapshot() == a.snapshot()
    heard_a: list = []
    heard_b: list = []
    a.state.listener, b.state.listener = heard_a.append, heard_b.append
    tail = steps[40:]
    for engine in (a, b):
        snap_clock = ManualClock(clock.t)
        engine._clock = snap_clock
        run(engine, snap_clock, tail, [])
    assert heard_a and heard_b == heard_a
    assert b.snapshot() == a.snapshot()
    # Empty queues share one read-only list; a restore keeps them from sharing a new one.
    from assigncore.queue_order import _EMPTY

    empty = [q for q in b.state.queues.values() if not q.sessions]
    assert empty and all(q.sessions is _EMPTY for q in empty)


def test_a_snapshot_names_only_the_engine_s_own_types():
    import pickle

    from assigncore.snapshot import FORMAT, LAYOUT, SnapshotError, restore

    class Boom:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    evil = FORMAT + LAYOUT + b"\n" + pickle.dumps(Boom())
    with pytest.raises(SnapshotError, match="may not name"):
        restore(evil)
    with pytest.raises(SnapshotError):
        restore(b"assigncore-snapshot/0\n...")
    with pytest.raises(SnapshotError, match="layout"):
        restore(FORMAT + b"0" * len(LAYOUT) + b"\n")


def test_timers_that_fire_silently_are_recorded_so_a_restart_replays_the_same():
    """Found by the state machine: a reconnect grace ran out with nothing to hand on
    (no event), then the server restarted. The restart's command runs before due timers,
    so the replay had to know the grace had already fired: every pass that fires a
    timer is a record."""
    clock = ManualClock()
    live = Engine(clock, EngineConfig(reconnect_grace=20), secret=b"r" * 32)
    journal: list[bytes] = []
    live.on_command = lambda record: journal.append(encode(record))
    live.create_team("t", "T")
    live.create_issue_type(IssueType("it", "Issue", "t"))
    live.create_rep("ann", "Ann", teams=["t"])
    live.connect("ann")
    s = live.start_from_issue("it", Customer("c")).value
    live.answer_offer("ann", live.rep("ann").offer, True)
    live.server_restarted()  # ann offline, grace running
    live.cancel_session(s.id)  # nothing left to hand on
    clock.tick(25)
    live.advance()  # the grace runs out: no event
    live.server_restarted()
    replayed = Engine(ManualClock(), EngineConfig(reconnect_grace=20), secret=b"r" * 32)
    for data in journal:
        replayed.apply(decode(data))
    assert replayed.snapshot() == live.snapshot()
