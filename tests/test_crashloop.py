"""The kill -9 loop in CI (tests/crashloop.py; benchmarks/soak.py runs it longer)."""

from __future__ import annotations

import os

import pytest

from . import postgres
from .crashloop import run

CYCLES = int(os.environ.get("ASSIGNCORE_CRASH_CYCLES", "30"))
FAILOVERS = int(os.environ.get("ASSIGNCORE_FAILOVER_CYCLES", "30"))


@pytest.mark.timeout(900)
async def test_every_acknowledged_command_survives_kill_9(tmp_path):
    result = await run(tmp_path, CYCLES, seed=11, snapshot_every=150)
    assert result["cycles"] == CYCLES
    # The load really ran: work was acknowledged and checked across the kills.
    assert result["acknowledged_starts"] > CYCLES
    assert result["acknowledged_accepts"] > 0 and result["revoked"] > 0
    # Sharing and the rest of the console's state ran under the kills too.
    assert min(result["transfers"], result["invitations"], result["chat_messages"]) > 0
    assert result["session_keys"] == 0  # every acknowledged key was redeemed in a check


@pytest.mark.timeout(900)
async def test_every_acknowledged_command_survives_failovers_on_postgresql(tmp_path):
    """The same loop with the desk on PostgreSQL and two processes: each cycle kills
    the leader with SIGKILL, checks everything through the standby that took over, and
    starts the killed one again as a standby."""
    result = await run(
        tmp_path, FAILOVERS, seed=12, snapshot_every=150, database_url=postgres.fresh_database()
    )
    assert result["cycles"] == FAILOVERS
    assert result["acknowledged_starts"] > FAILOVERS
    assert result["acknowledged_accepts"] > 0 and result["revoked"] > 0
    assert min(result["transfers"], result["invitations"], result["chat_messages"]) > 0
    assert result["session_keys"] == 0
