"""`assigncore bench` against a real server on a loopback port: a synthetic desk made
through the admin API, every arrival's lifecycle measured, rejections and timeouts,
several client processes, the server's own share from its metrics, and `compare`."""

from __future__ import annotations

import asyncio
import json
import random
import sys

import pytest

from assigncore_server.tools.bench import arrival_process

from .server_harness import ADMIN, live_server

pytestmark = pytest.mark.timeout(300)


async def bench(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "assigncore_server.cli", "bench", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 240)
    return proc.returncode or 0, out.decode(), err.decode()


def test_arrival_processes() -> None:
    rng = random.Random(1)
    assert arrival_process("constant:4").times(2.0, rng) == [
        0,
        0.25,
        0.5,
        0.75,
        1.0,
        1.25,
        1.5,
        1.75,
    ]
    poisson = arrival_process("poisson:50").times(100.0, rng)
    assert 4500 < len(poisson) < 5500 and poisson == sorted(poisson)
    ramp = arrival_process("ramp:0,100").times(10.0, rng)
    assert sum(1 for t in ramp if t < 5) < sum(1 for t in ramp if t >= 5) / 2
    burst = arrival_process("burst:0,2,10").times(7.0, rng)
    assert burst == [2.0] * 10 + [4.0] * 10 + [6.0] * 10
    for bad in ("poisson", "poisson:-1", "burst:1,2", "weird:3", "constant:x"):
        with pytest.raises(ValueError):
            arrival_process(bad)


async def test_a_run_measures_every_lifecycle_and_the_servers_share(tmp_path) -> None:
    live = await live_server(metrics_listen="127.0.0.1:0")
    metrics = f"127.0.0.1:{live.server.metrics_port}"
    out = tmp_path / "a.json"
    try:
        code, text, err = await bench(
            "--server", f"127.0.0.1:{live.port}", "--token", ADMIN, "--reps", "5",
            "--arrivals", "constant:20", "--duration", "2", "--json", str(out),
            "--plot", str(tmp_path / "a.png"), "--metrics", f"http://{metrics}/metrics",
        )  # fmt: skip
        assert code == 0, err
        result = json.loads(out.read_text())
        assert result["arrivals"] == result["lifecycles"] == 40 and not result["errors"]
        for name in ("enqueue_to_offer", "offer_to_answer", "StartSession", "EndSession"):
            assert result["latency_us"][name]["count"] == 40
        latency = result["latency_us"]["enqueue_to_offer"]
        assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
        assert result["server"]["start_commands"] == 40
        assert 0 < result["server"]["engine_us_per_start"] < latency["p50"]
        assert result["client_cpu_ms_per_lifecycle"] > 0
        assert "lifecycles/s" in text and (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"

        # Two client processes, each with its own team; offers rejected are offered
        # to another rep. A session every rep of its team rejected is never offered
        # again (rule 3): it counts as an error after --drain.
        second = tmp_path / "b.json"
        code, text, err = await bench(
            "--server", f"127.0.0.1:{live.port}", "--token", ADMIN, "--reps", "3",
            "--arrivals", "poisson:20", "--duration", "2", "--processes", "2",
            "--accept", "0.5", "--reject", "0.5", "--drain", "3", "--json", str(second),
        )  # fmt: skip
        assert code == 0, err
        b = json.loads(second.read_text())
        assert b["config"]["processes"] == 2 and b["lifecycles"] > 10
        assert b["lifecycles"] + b["errors"].get("NO_OFFER_ANSWERED", 0) == b["arrivals"]
        assert b["errors"].get("NO_OFFER_ANSWERED", 0) > 0  # 1 in 8 is rejected by all 3
        assert b["latency_us"]["AnswerOffer"]["count"] > b["lifecycles"]  # rejections too
        code, text, _ = await bench("compare", str(out), str(second))
        assert code == 0 and "lifecycles/s" in text and "B/A" in text
    finally:
        await live.close()


async def test_refusals_are_clear() -> None:
    live = await live_server()
    try:
        server = f"127.0.0.1:{live.port}"
        code, _, err = await bench("--server", server, "--token", "wrong", "--duration", "1")
        assert code == 1 and "UNAUTHENTICATED" in err
        code, _, err = await bench("--server", server, "--token", ADMIN, "--arrivals", "x:1")
        assert code == 2 and "--arrivals" in err
        code, _, err = await bench("--server", server, "--accept", "0.8", "--reject", "0.5")
        assert code == 2 and "at most 1" in err
        code, _, err = await bench("compare", "only-one.json")
        assert code == 2
    finally:
        await live.close()


async def test_a_run_on_the_desks_own_issue_type_and_reps(tmp_path) -> None:
    from .server_harness import INTAKE, rep_token

    live = await live_server()
    tokens = tmp_path / "reps.txt"
    tokens.write_text(f"# the support team\n{rep_token('ann')}\n{rep_token('bob')}\n")
    out = tmp_path / "own.json"
    try:
        code, _, err = await bench(
            "--server", f"127.0.0.1:{live.port}", "--issue-type", "general-help",
            "--rep-tokens", str(tokens), "--intake-token", INTAKE, "--arrivals", "constant:5",
            "--duration", "2", "--json", str(out),
        )  # fmt: skip
        assert code == 0, err
        result = json.loads(out.read_text())
        assert result["lifecycles"] == result["arrivals"] == 10 and not result["errors"]
        assert result["config"]["reps_per_process"] == 2
        code, _, err = await bench(
            "--server", f"127.0.0.1:{live.port}", "--issue-type", "general-help",
            "--rep-tokens", str(tokens), "--intake-token", INTAKE, "--processes", "2",
        )  # fmt: skip
        assert code == 2 and "one process" in err
    finally:
        await live.close()


async def test_a_closed_loop_keeps_its_workers_busy(tmp_path) -> None:
    live = await live_server()
    out = tmp_path / "closed.json"
    try:
        code, _, err = await bench(
            "--server", f"127.0.0.1:{live.port}", "--token", ADMIN, "--reps", "4",
            "--team-size", "1", "--closed-loop", "4", "--duration", "2", "--json", str(out),
        )  # fmt: skip
        assert code == 0, err
        result = json.loads(out.read_text())
        assert result["closed_loop"] == 4 and not result["errors"]
        assert result["lifecycles"] == result["arrivals"] > 8  # each worker went round
        code, _, err = await bench("--server", f"127.0.0.1:{live.port}", "--closed-loop", "-1")
        assert code == 2 and "--closed-loop" in err
    finally:
        await live.close()
