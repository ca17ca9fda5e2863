"""`assigncore top`: the wallboard driven headless (Textual's pilot) against a real
server, and its one-shot text capture."""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys

import grpc
import pytest
from assigncore_server.cli import add_top_arguments
from assigncore_server.ops.top import Wallboard, print_once
from textual.widgets import DataTable, Sparkline, Static

from assigncore.v1 import admin_service_pb2 as apb
from assigncore.v1 import console_service_pb2 as cpb

from .server_harness import ADMIN, auth, live_server, until


@pytest.fixture
async def live():
    server = await live_server()
    yield server
    await server.close()


def cells(table: DataTable, key: str) -> dict[str, object]:
    """A row's cells by column name."""
    names = [str(c.label) for c in table.columns.values()]
    return dict(zip(names, table.get_row(key), strict=True))


async def test_the_board_follows_the_statistics_stream(live):
    ann = await live.console("ann")
    await live.start(issue_type_id="manual-help")  # waits in the manual team's queue
    await live.advance(90)  # past the 20 s threshold: its longest wait shows red
    app = Wallboard(f"127.0.0.1:{live.port}", ADMIN, interval=1.0, min_interval=0.1)
    async with app.run_test(size=(160, 50)) as pilot:
        await until(lambda: app.updates >= 1)
        queues = app.query_one("#queues", DataTable)
        manual = cells(queues, "team/manual")
        assert str(manual["Waiting"]) == "1"
        assert str(manual["Longest"]) == "1:30" and "red" in str(manual["Longest"].style)
        assert str(manual["SL 15m"]) == "-"  # nothing answered or abandoned yet
        # a session answered at once: support's service level is 100%, in green
        await live.start(issue_type_id="general-help")
        offer = await ann.next("offer_made")
        await ann.rpc("AnswerOffer", cpb.AnswerOfferRequest(offer_id=offer.offer_id, accept=True))
        await until(lambda: str(cells(queues, "team/support")["Accepted"]) == "1")
        support = cells(queues, "team/support")
        assert str(support["SL 15m"]) == "100%" and "green" in str(support["SL 15m"].style)
        assert str(support["Offered"]) == "1"
        reps = str(app.query_one("#reps", Static).render())
        assert "Busy 1" in reps and "Offline 3" in reps
        assert cells(app.query_one("#rep-list", DataTable), "ann")["State"].plain == "Busy"
        teams = app.query_one("#teams", DataTable)
        assert [str(c) for c in teams.get_row("support")][1:] == ["1", "0", "1"]
        spark = app.query_one("#arrivals", Sparkline)
        assert list(spark.data)[-3:] in ([0, 0, 2], [0, 1, 1], [1, 0, 1])  # two arrivals
        assert sum(spark.data) == 2
        await pilot.press("q")
    assert app.final is None


async def test_the_board_stops_on_a_refused_token_and_says_why(live):
    app = Wallboard(f"127.0.0.1:{live.port}", "not-a-token", interval=1.0)
    async with app.run_test(size=(120, 40)):
        await until(lambda: app.final is not None)
        assert app.final == grpc.StatusCode.UNAUTHENTICATED
        assert "UNAUTHENTICATED" in str(app.query_one("#status", Static).render())


async def test_the_board_reconnects_after_the_server_comes_back():
    first = await live_server()
    port, path = first.port, first.server.runtime.settings.storage_path
    app = Wallboard(f"127.0.0.1:{port}", ADMIN, interval=1.0, min_interval=0.1)
    async with app.run_test(size=(120, 40)):
        await until(lambda: app.updates >= 1)
        await first.server.stop(0.1)
        await until(lambda: "reconnecting" in str(app.query_one("#status", Static).render()))
        seen = app.updates
        second = await live_server(storage_path=path, listen=f"127.0.0.1:{port}")
        try:
            await until(lambda: app.updates > seen, 30)
        finally:
            await second.close()
    await first.channel.close()


async def test_once_prints_a_text_capture(live):
    await live.start(issue_type_id="manual-help")
    await live.advance(5)
    parser = argparse.ArgumentParser()
    add_top_arguments(parser)
    args = parser.parse_args(["--server", f"127.0.0.1:{live.port}", "--token", ADMIN, "--once"])
    out = io.StringIO()
    assert await print_once(args, None, out) == 0
    text = out.getvalue()
    assert "Queues" in text and "team/manual" in text and "Teams" in text
    manual = next(line for line in text.splitlines() if "team/manual" in line)
    assert manual.split()[1:3] == ["1", "0:05"]
    assert "Arrivals, last hour" in text and "1 in all" in text
    # a supervisor's scope applies
    issued = await live.admin.IssueAccessToken(
        apb.IssueAccessTokenRequest(kind=apb.PRINCIPAL_KIND_SUPERVISOR, team_ids=["support"]),
        metadata=auth(ADMIN),
    )
    args.token = issued.secret
    out = io.StringIO()
    assert await print_once(args, None, out) == 0
    assert "team/support" in out.getvalue() and "team/manual" not in out.getvalue()


async def test_the_command_line(live):
    """`assigncore top --once` as a user runs it, and its refusals."""

    async def top(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "assigncore_server.cli",
            "top",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={k: v for k, v in os.environ.items() if k != "ASSIGNCORE_TOKEN"},
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode, out.decode(), err.decode()

    server = f"127.0.0.1:{live.port}"
    code, out, _ = await top("--server", server, "--token", ADMIN, "--once")
    assert code == 0 and "team/support" in out and "Reps" in out
    code, _, err = await top("--server", server, "--token", "wrong-token", "--once")
    assert code == 1 and "UNAUTHENTICATED" in err
    code, _, err = await top("--server", server, "--once")
    assert code == 2 and "--token" in err
