"""`assigncore top`: the wallboard driven headless (Textual's pilot) against a real
server, and its one-shot text capture."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys

import grpc
import pytest
from textual.widgets import DataTable, Sparkline, Static

from assigncore.client import Connection
from assigncore.v1 import admin_service_pb2 as apb
from assigncore.v1 import console_service_pb2 as cpb
from assigncore_server.cli import add_top_arguments
from assigncore_server.ops.top import Wallboard, print_once

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
    app = Wallboard(board(live.port, ADMIN), interval=1.0, min_interval=0.1)
    async with app.run_test(size=(200, 50)) as pilot:
        await until(lambda: app.updates >= 1)
        queues = app.query_one("#queues", DataTable)
        manual = cells(queues, "team/manual")
        assert str(manual["Waiting"]) == "1"
        assert str(manual["Longest"]) == "1:30" and "red" in str(manual["Longest"].style)
        assert str(manual["SL 15m"]) == "-"  # nothing answered or abandoned yet
        assert str(manual["Reps"]) == "0/0"  # nobody of the team signed in
        alerts = str(app.query_one("#alerts", Static).render())
        assert "team/manual: waiting rule broken" in alerts  # overdue after 60 s
        assert not app.stale
        # a session answered at once: support's service level is 100%, in green
        await live.start(issue_type_id="general-help")
        offer = await ann.next("offer_made")
        await ann.rpc("AnswerOffer", cpb.AnswerOfferRequest(offer_id=offer.offer_id, accept=True))
        await until(lambda: str(cells(queues, "team/support")["Answered 15m"]) == "1")
        support = cells(queues, "team/support")
        assert str(support["SL 15m"]) == "100%" and "green" in str(support["SL 15m"].style)
        # "offered" as contact centers say it: contacts that entered the queue
        assert str(support["Offered 15m"]) == str(support["Offered today"]) == "1"
        assert str(support["Aband.% 15m"]) == "0%" and str(support["Reps"]) == "0/1"
        reps = str(app.query_one("#reps", Static).render())
        assert "Busy 1" in reps and "Offline 3" in reps
        assert cells(app.query_one("#rep-list", DataTable), "ann")["State"].plain == "Busy"
        teams = app.query_one("#teams", DataTable)
        assert [str(c) for c in teams.get_row("support")][1:] == ["1", "0", "1", "100%", ""]
        spark = app.query_one("#arrivals", Sparkline)
        assert list(spark.data)[-3:] in ([0, 0, 2], [0, 1, 1], [1, 0, 1])  # two arrivals
        assert sum(spark.data) == 2
        await pilot.press("q")
    assert app.final is None


def board(port: int, token: str) -> Connection:
    return Connection(f"127.0.0.1:{port}", token=token)


async def test_the_board_stops_on_a_refused_token_and_says_why(live):
    app = Wallboard(board(live.port, "not-a-token"), interval=1.0)
    async with app.run_test(size=(120, 40)):
        await until(lambda: app.final is not None)
        assert app.final == grpc.StatusCode.UNAUTHENTICATED
        assert "UNAUTHENTICATED" in str(app.query_one("#status", Static).render())


async def test_the_board_reconnects_after_the_server_comes_back():
    first = await live_server()
    port, path = first.port, first.server.runtime.settings.storage_path
    app = Wallboard(board(port, ADMIN), interval=1.0, min_interval=0.1)
    async with app.run_test(size=(120, 40)):
        await until(lambda: app.updates >= 1)
        assert not app.stale and not app.screen.has_class("stale")
        await first.server.stop(0.1)
        # What is shown is marked stale at once, not left looking live.
        await until(lambda: app.stale)
        status = str(app.query_one("#status", Static).render())
        assert status.startswith("STALE since") and "reconnecting" in status
        assert app.screen.has_class("stale")
        seen = app.updates
        second = await live_server(storage_path=path, listen=f"127.0.0.1:{port}")
        try:
            await until(lambda: app.updates > seen, 30)
            assert not app.stale and not app.screen.has_class("stale")
            assert "live" in str(app.query_one("#status", Static).render())
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
    assert await print_once(args, out) == 0
    text = out.getvalue()
    assert "Queues" in text and "team/manual" in text and "Teams" in text
    manual = next(line for line in text.splitlines() if "team/manual" in line)
    assert manual.split()[1:4] == ["0/0", "1", "0:05"]
    # Full width: every column is there, none cut to fit 80 columns.
    header = next(line for line in text.splitlines() if "Queue" in line and "Waiting" in line)
    assert "Arrivals 15m" in header and "Aband.% today" in header and len(header) > 150
    assert "team/manual: 1 waiting and no member available" in text
    assert "Arrivals, last hour" in text and "1 in all" in text
    # a supervisor's scope applies
    issued = await live.admin.IssueAccessToken(
        apb.IssueAccessTokenRequest(kind=apb.PRINCIPAL_KIND_SUPERVISOR, team_ids=["support"]),
        metadata=auth(ADMIN),
    )
    args.token = issued.secret
    out = io.StringIO()
    assert await print_once(args, out) == 0
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
    # piped: full width, not cut to the 80 columns of a terminal that is not there
    assert max(len(line) for line in out.splitlines()) > 150
    code, _, err = await top("--server", server, "--token", "wrong-token", "--once")
    assert code == 1 and "UNAUTHENTICATED" in err
    code, _, err = await top("--server", server, "--once")
    assert code == 2 and "--token" in err


async def test_token_commands_and_the_client_config(live, tmp_path):
    """`assigncore token issue|list|rotate|revoke` on the admin API, reading the server's
    address and the admin's token from --config; `top` reading them from the environment."""

    async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "assigncore_server.cli",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={k: v for k, v in os.environ.items() if not k.startswith("ASSIGNCORE_")}
            | (env or {}),
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode, out.decode(), err.decode()

    (tmp_path / "admin.token").write_text(ADMIN + "\n")
    config = tmp_path / "client.toml"
    config.write_text(f'[client]\nserver = "127.0.0.1:{live.port}"\ntoken_file = "admin.token"\n')
    code, out, err = await cli(
        "token", "issue", "--kind", "supervisor", "--team", "support", "--json",
        "--description", "wallboard", "--config", str(config),
    )  # fmt: skip
    assert code == 0, err
    issued = json.loads(out)
    token_id, secret = issued["access_token"]["token_id"], issued["secret"]
    assert issued["access_token"]["team_ids"] == ["support"]

    code, out, _ = await cli("token", "list", "--json", "--config", str(config))
    assert code == 0 and token_id in [t["token_id"] for t in json.loads(out)]
    code, out, _ = await cli("token", "list", "--config", str(config))
    assert code == 0 and "wallboard" in out and "PRINCIPAL_KIND_SUPERVISOR" in out

    # The supervisor's board, with the address and token from the environment.
    env = {"ASSIGNCORE_SERVER": f"127.0.0.1:{live.port}", "ASSIGNCORE_TOKEN": secret}
    code, out, err = await cli("top", "--once", env=env)
    assert code == 0, err
    assert "team/support" in out and "team/manual" not in out

    code, out, _ = await cli("token", "rotate", token_id, "--overlap", "0", "--json",
                             "--config", str(config))  # fmt: skip
    assert code == 0
    rotated = json.loads(out)
    code, _, err = await cli("top", "--once", env=env)  # the old secret is gone
    assert code == 1 and "UNAUTHENTICATED" in err
    env["ASSIGNCORE_TOKEN"] = rotated["secret"]
    assert (await cli("top", "--once", env=env))[0] == 0

    new_id = rotated["access_token"]["token_id"]
    code, out, _ = await cli("token", "revoke", new_id, "--config", str(config))
    assert code == 0 and f"revoked {new_id}" in out
    assert (await cli("top", "--once", env=env))[0] == 1
    # Refusals: an unknown token id, and no admin token at all.
    code, _, err = await cli("token", "revoke", "tok_nope", "--config", str(config))
    assert code == 1 and "NOT_FOUND" in err
    code, _, err = await cli("token", "list", "--server", f"127.0.0.1:{live.port}")
    assert code == 1 and "UNAUTHENTICATED" in err


def test_channel_use_per_team_on_the_board():
    from assigncore.v1 import supervisor_service_pb2 as spb
    from assigncore_server.ops.board import channel_use

    plain = spb.TeamStatistics(channels=[spb.ChannelUse(channel="", sessions=4)])
    assert channel_use(plain) == ""  # no channels declared: the column stays empty
    blended = spb.TeamStatistics(
        capacity_units=12,
        channels=[
            spb.ChannelUse(channel="chat", sessions=3, units=3),
            spb.ChannelUse(channel="voice", sessions=1, units=2),
        ],
    )
    assert channel_use(blended) == "chat 3 · voice 1 · 5/12u 41%"
