"""High availability with real processes and a real PostgreSQL: failover under load
(SIGKILL and SIGSTOP, through benchmarks/failover.py), and several desks in one process,
each led by one process and stood by for by another."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from assigncore.v1 import admin_service_pb2 as apb
from assigncore.v1 import admin_service_pb2_grpc as agrpc

from . import postgres
from .crashloop import FAST_LEASE
from .test_postgres import not_leader

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(600)
def test_failover_under_load_loses_nothing_and_consoles_resume_without_gaps() -> None:
    """A leader and two standbys under intake load and console streams: the leader is
    killed (SIGKILL) three times and frozen (SIGSTOP past its lease) once. A standby
    leads each time; every acknowledged start is there once; consoles resume on each
    new leader with no gap, no duplicate, no resync; the frozen leader, resumed, has
    appended nothing and stepped down, and every process ends with the same journal."""
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "failover.py"),
            "--json",
            "--pairs",
            "0",
            "--failovers",
            "3",
            "--pauses",
            "1",
            "--url",
            postgres.server_url(),
        ],
        capture_output=True,
        text=True,
        timeout=540,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["failovers_sigkill"] == 3 and result["failovers_sigstop"] == 1, result
    assert result["acknowledged_starts"] > 100
    assert result["commands_lost"] == 0 and result["commands_duplicated"] == 0, result
    assert result["console_events"] > 0 and result["console_resumes"] > 0, result
    assert result["console_gaps"] == result["console_duplicates"] == 0, result
    assert result["console_resyncs"] == 0, result
    assert result["paused_leaders_stepped_down"] == 1, result
    assert result["records_appended_by_paused_leaders"] == 0, result
    assert result["histories_agree"], result
    assert result["not_leader_redirects"] > 0  # clients followed the leader's address


DESK_A = """
[[teams]]
id = "alpha"
algorithm = "LEAST_BUSY"

[[tokens]]
kind = "admin"
secret = "admin-of-desk-a-0123456789"
"""
DESK_B = DESK_A.replace("alpha", "beta").replace("desk-a", "desk-b")
ADMIN_A, ADMIN_B = "admin-of-desk-a-0123456789", "admin-of-desk-b-0123456789"


def process_config(url: str, lead: str) -> str:
    """A process serving desks a and b, preferring to lead `lead`."""
    parts = ['[server]\nlisten = "127.0.0.1:0"\nshutdown_grace = 1\n', FAST_LEASE]
    for desk in ("a", "b"):
        prefer = "leader" if desk == lead else "standby"
        parts.append(
            f'[[desks]]\nid = "{desk}"\nurl = "{url}"\nconfig = "desk-{desk}.toml"\n'
            f'prefer = "{prefer}"\n'
        )
    return "\n".join(parts)


class Process:
    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "assigncore_server.cli", "serve", "--config", str(config)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self.address = ""

    async def started(self) -> None:
        assert self.proc.stderr is not None
        stream = self.proc.stderr

        def read() -> str:
            for line in stream:
                if "listening on" in line:
                    return line.split("listening on ")[1].split('"')[0].strip()
            raise RuntimeError(f"the server exited ({self.proc.wait()}) before listening")

        self.address = await asyncio.to_thread(read)
        asyncio.get_running_loop().run_in_executor(None, stream.read)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def holders(url: str) -> dict[str, int]:
    """desk -> pid of the process whose lease is live."""
    rows = postgres.execute(
        url, "SELECT desk, holder FROM assigncore.desks WHERE lease_expires > now()"
    )
    return {desk: int(holder.split(":")[1]) for desk, holder in rows}


async def teams(address: str, token: str) -> list[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await agrpc.AdminServiceStub(channel).ListTeams(
            apb.ListTeamsRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=5
        )
    return [t.id for t in reply.teams]


async def refused(address: str, token: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await teams(address, token)
    return caught.value


@pytest.mark.timeout(120)
async def test_two_processes_each_lead_one_desk_and_the_survivor_serves_both(tmp_path) -> None:
    url = postgres.fresh_database()
    (tmp_path / "desk-a.toml").write_text(DESK_A)
    (tmp_path / "desk-b.toml").write_text(DESK_B)
    for name, lead in (("one", "a"), ("two", "b")):
        (tmp_path / f"{name}.toml").write_text(process_config(url, lead))
    one, two = Process(tmp_path / "one.toml"), Process(tmp_path / "two.toml")
    try:
        await asyncio.gather(one.started(), two.started())
        async with asyncio.timeout(30):
            while holders(url) != {"a": one.proc.pid, "b": two.proc.pid}:
                await asyncio.sleep(0.1)
        # Each token belongs to its desk; each desk's data to its own.
        assert await teams(one.address, ADMIN_A) == ["alpha"]
        assert await teams(two.address, ADMIN_B) == ["beta"]
        # A call that reaches the standby of its desk is sent to the leader.
        assert not_leader(await refused(one.address, ADMIN_B))["leader"] == two.address
        meta = not_leader(await refused(two.address, ADMIN_A))
        assert meta == {"desk": "a", "leader": one.address, "epoch": "1"}
        unknown = await refused(one.address, "no-such-token-0123456789")
        assert unknown.code() is grpc.StatusCode.UNAUTHENTICATED

        os.kill(one.proc.pid, signal.SIGKILL)
        one.proc.wait()
        async with asyncio.timeout(30):
            while holders(url) != {"a": two.proc.pid, "b": two.proc.pid}:
                await asyncio.sleep(0.1)
        async with asyncio.timeout(10):  # health and calls follow the lease at once
            while True:
                try:
                    alpha = await teams(two.address, ADMIN_A)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.1)
        assert alpha == ["alpha"]
        assert await teams(two.address, ADMIN_B) == ["beta"]
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "assigncore_server.cli",
                "status",
                "--config",
                "two.toml",
                "--json",
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        report = {d["desk"]: d for d in json.loads(status.stdout)}
        assert report["a"]["epoch"] == 2 and report["b"]["epoch"] == 1
        assert report["a"]["leader"].split(":")[1] == str(two.proc.pid)
    finally:
        one.stop()
        two.stop()
