"""`assigncore top`: a terminal wallboard on the statistics stream, built on the Python
client (`assigncore.client.Supervisor`).

    assigncore top [--server HOST:PORT] [--token TOKEN] [--config FILE] [--team ID ...]
                   [--target 0.8] [--tls-ca CA.pem [--tls-cert CERT.pem --tls-key KEY.pem]]
                   [--once]

It follows SupervisorService.WatchStatistics (a supervisor's token shows its teams, an
admin's the whole desk) and redraws on every push: queues with their reps, waiting
sessions, longest wait, service level in colour, per-interval and daily counts (see
server/ops/board.py for what each word means), alerts, reps by state, a sparkline of
arrivals per minute over the last hour, and the teams with their occupancy.

When the connection is lost, what is shown is marked STALE at once (dimmed, with the
time it was last live) until a push arrives again; the client reconnects with backoff
and follows the leader. A refused token or scope ends it. `--once` prints the board a
single time (GetStatistics) and exits, at full width when piped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from rich.console import Console
from rich.text import Text
from textual.app import App, ComposeResult
from textual.containers import Horizontal
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Header, Label, Sparkline, Static

from assigncore.client import AssignCoreError, Connection, Disconnected, Supervisor
from assigncore.v1 import supervisor_service_pb2 as spb

from . import board
from .remote import connection_of


class Wallboard(App[None]):
    """The live board. `updates` counts the statistics shown so far; `stale` is set
    while what is shown is not live."""

    TITLE = "assigncore top"
    CSS = """
    #status { height: 1; padding: 0 1; }
    #queues { height: auto; max-height: 50%; }
    #alerts { height: auto; max-height: 6; padding: 0 1; }
    #reps { height: 1; padding: 0 1; margin-top: 1; }
    #arrivals-label { padding: 0 1; margin-top: 1; }
    #arrivals { height: 3; margin: 0 1; }
    #lower { height: 1fr; margin-top: 1; }
    #teams { width: 64; }
    .stale DataTable, .stale #alerts, .stale #reps, .stale Sparkline { text-opacity: 40%; }
    """
    BINDINGS = [("q", "quit", "Quit")]

    def __init__(
        self,
        connection: Connection,
        *,
        teams: Sequence[str] = (),
        interval: float = 5.0,
        min_interval: float = 0.5,
        thresholds: board.Thresholds | None = None,
    ) -> None:
        super().__init__()
        self.connection = connection
        self.supervisor = Supervisor(connection)
        self.teams = list(teams)
        self.interval, self.min_interval = interval, min_interval
        self.thresholds = thresholds or board.Thresholds()
        self.updates = 0
        self.stale = True  # nothing live shown yet
        self.last_live: datetime | None = None
        self.final: grpc.StatusCode | None = None  # why the board stopped following

    def compose(self) -> ComposeResult:
        yield Header(show_clock=True)
        yield Static(f"connecting to {self.connection.address} ...", id="status")
        yield DataTable(id="queues", zebra_stripes=True, cursor_type="none")
        yield Static(id="alerts")
        yield Static(id="reps")
        yield Label("Arrivals per minute, last hour", id="arrivals-label")
        yield Sparkline([0] * 60, id="arrivals", summary_function=max)
        with Horizontal(id="lower"):
            yield DataTable(id="teams", cursor_type="none")
            yield DataTable(id="rep-list", zebra_stripes=True, cursor_type="none")
        yield Footer()

    def on_mount(self) -> None:
        for table_id, columns in (
            ("#queues", board.QUEUE_COLUMNS),
            ("#teams", board.TEAM_COLUMNS),
            ("#rep-list", board.REP_COLUMNS),
        ):
            table = self.query_one(table_id, DataTable)
            for column in columns:
                table.add_column(column, key=column)
        self.run_worker(self.follow(), exclusive=True, name="statistics")

    async def on_unmount(self) -> None:
        self.workers.cancel_all()  # the stream stops before its widgets go
        await self.connection.close()

    def status(self, text: str, style: str = "") -> None:
        with contextlib.suppress(NoMatches):  # the board is closing
            self.query_one("#status", Static).update(Text(text, style=style))

    async def follow(self) -> None:
        """Follows the statistics stream; the client reconnects with backoff."""
        try:
            async for item in self.supervisor.watch_statistics(
                self.teams, interval=self.interval, min_interval=self.min_interval
            ):
                if isinstance(item, Disconnected):
                    self.went_stale(item)
                else:
                    self.show(item)
        except AssignCoreError as exc:
            self.final = exc.code
            self.went_stale(None)
            self.status(f"{exc.code.name}: {exc.message}", "bold red")

    def went_stale(self, lost: Disconnected | None) -> None:
        self.stale = True
        if not self.is_running:
            return
        self.screen.add_class("stale")
        if lost is None:
            return
        why = "the server ended the stream" if lost.error is None else str(lost.error)
        since = "" if self.last_live is None else f" since {self.last_live:%H:%M:%S} UTC"
        self.status(
            f"STALE{since}: {why}; reconnecting in {lost.retry_in:.1f} s", "bold white on red"
        )

    def show(self, stats: spb.Statistics) -> None:
        fill(self.query_one("#queues", DataTable), board.queue_rows(stats, self.thresholds))
        fill(self.query_one("#teams", DataTable), board.team_rows(stats))
        fill(self.query_one("#rep-list", DataTable), board.rep_rows(stats))
        warnings = board.alerts(stats, self.thresholds)
        self.query_one("#alerts", Static).update(
            Text("\n").join(warnings) if warnings else Text("No alerts", style="green")
        )
        self.query_one("#reps", Static).update(
            Text.assemble(("Reps  ", "bold"), board.rep_summary(stats))
        )
        self.query_one("#arrivals", Sparkline).data = board.arrivals(stats)
        desk_time = stats.time.ToDatetime().strftime("%H:%M:%S")
        self.stale = False
        self.last_live = datetime.now(UTC)
        self.screen.remove_class("stale")
        self.status(
            f"{self.connection.address} · live · desk time {desk_time} UTC · "
            f"{len(stats.queues)} queues, {len(stats.reps)} reps",
            "green",
        )
        self.updates += 1


def fill(table: DataTable[Any], rows: list[tuple[str, list[Text]]]) -> None:
    """Shows `rows` in `table`: cells updated in place while the rows stay the same
    (the cursor and scroll stay put), else the table is rebuilt."""
    keys = [key for key, _ in rows]
    if [k.value for k in table.rows] == keys:
        columns = list(table.columns)
        for key, cells in rows:
            for column, cell in zip(columns, cells, strict=True):
                table.update_cell(key, column, cell)
        return
    table.clear()
    for key, cells in rows:
        table.add_row(*cells, key=key)


# ----------------------------------------------------------------- the command


async def print_once(args: argparse.Namespace, out: Any = None) -> int:
    """One capture of the board. Piped (or into `out`), it is as wide as the board
    needs, never cut to 80 columns."""
    try:
        async with connection_of(args) as conn:
            stats = await Supervisor(conn).statistics(args.team)
            server = conn.address
    except AssignCoreError as exc:
        print(f"assigncore top: {exc.code.name}: {exc.message}", file=sys.stderr)
        return 1
    title = f"assigncore top · {server} · {stats.time.ToDatetime():%Y-%m-%d %H:%M:%S} UTC"
    renderable = board.render(stats, board.Thresholds(args.target), title)
    if out is None and sys.stdout.isatty():
        Console().print(renderable)
        return 0
    # Piped (or captured): as wide as the board needs, without trailing blanks.
    capture = Console(file=io.StringIO(), width=1000, soft_wrap=True)
    capture.width = min(1000, capture.measure(renderable).maximum)
    with capture.capture() as taken:
        capture.print(renderable)
    text = "\n".join(line.rstrip() for line in taken.get().splitlines())
    (out or sys.stdout).write(text + "\n")
    return 0


def run(args: argparse.Namespace) -> int:
    if not 0 < args.target <= 1 or args.interval < 1:
        print("assigncore top: --target is 0-1, --interval at least 1 s", file=sys.stderr)
        return 2
    try:
        connection = connection_of(args)
    except (OSError, ValueError) as exc:
        print(f"assigncore top: {exc}", file=sys.stderr)
        return 2
    if not connection.token:
        print(
            "assigncore top: give --token (or set ASSIGNCORE_TOKEN, or [client] token in --config)",
            file=sys.stderr,
        )
        return 2
    if args.once:
        return asyncio.run(print_once(args))
    app = Wallboard(
        connection,
        teams=args.team,
        interval=args.interval,
        thresholds=board.Thresholds(args.target),
    )
    app.run()
    return 1 if app.final is not None else 0
