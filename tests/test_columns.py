"""The session table's rule-4 order without sorting equals a brute-force sort."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from assigncore.columns import SessionTable
from assigncore.kernel import Kernel


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["alloc", "alloc", "release", "wait", "unwait"]),
            st.integers(0, 3),
            st.integers(0, 400),
        ),
        max_size=400,
    ),
    st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_pass_order_is_priority_then_arrival(ops, team_open):
    table = SessionTable(Kernel(), capacity=2)
    alive: dict[int, tuple[int, int]] = {}  # slot -> (priority, seq)
    seq = 0
    for op, priority, pick in ops:
        if op == "alloc":
            seq += 1
            slot = table.alloc(priority, seq, [], [])
            alive[slot] = (priority, seq)
        elif alive:
            slot = sorted(alive)[pick % len(alive)]
            if op == "release":
                table.release(slot)
                del alive[slot]
            else:
                table.team[slot] = pick % 3 if op == "wait" else -1
    waiting = [s for s in alive if table.team[s] >= 0]
    expected = sorted(waiting, key=lambda s: (-alive[s][0], alive[s][1]))
    assert table.pass_order().tolist() == expected
    mask = np.asarray(team_open)
    assert table.pass_order(mask).tolist() == [s for s in expected if team_open[table.team[s]]]


def test_seqs_must_grow():
    table = SessionTable(Kernel())
    table.alloc(0, 5, [], [])
    try:
        table.alloc(0, 5, [], [])
    except ValueError:
        return
    raise AssertionError("a repeated seq was accepted")
