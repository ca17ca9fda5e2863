"""`assigncore top`: a terminal wallboard on the statistics stream.

    assigncore top --server HOST:PORT --token TOKEN [--team ID ...] [--target 0.8]
                   [--tls-ca CA.pem [--tls-cert CERT.pem --tls-key KEY.pem]] [--once]

It follows SupervisorService.WatchStatistics (a supervisor's token shows its teams, an
admin's the whole desk) and redraws on every push: queues with waiting sessions,
longest wait and service level in colour (see server/ops/board.py), reps by state, a
sparkline of arrivals per minute over the last hour, and the teams. A lost connection
is retried with backoff (the status line says so); a refused token or scope ends it.
`--once` prints the board a single time (GetStatistics) and exits, for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2
from rich.console import Console
from rich.text import Text
from textual.app import App, ComposeResult
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Header, Label, Sparkline, Static

from assigncore.v1 import supervisor_service_pb2 as spb
from assigncore.v1 import supervisor_service_pb2_grpc as sgrpc

from . import board

# Refusals that retrying cannot mend: the board says why and stops following.
FINAL = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
}
MAX_BACKOFF = 30.0


def open_channel(server: str, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    if credentials is None:
        return grpc.aio.insecure_channel(server)
    return grpc.aio.secure_channel(server, credentials)


class Wallboard(App[None]):
    """The live board. `updates` counts the statistics shown so far."""

    TITLE = "assigncore top"
    CSS = """
    #status { height: 1; padding: 0 1; }
    #queues { height: auto; max-height: 60%; }
    #reps { height: 1; padding: 0 1; margin-top: 1; }
    #arrivals-label { padding: 0 1; margin-top: 1; }
    #arrivals { height: 3; margin: 0 1; }
    #lower { height: 1fr; margin-top: 1; }
    #teams { width: 52; }
    """
    BINDINGS = [("q", "quit", "Quit")]

    def __init__(
        self,
        server: str,
        token: str,
        *,
        teams: Sequence[str] = (),
        interval: float = 5.0,
        min_interval: float = 0.5,
        thresholds: board.Thresholds | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        super().__init__()
        self.server, self.token, self.teams = server, token, list(teams)
        self.interval, self.min_interval = interval, min_interval
        self.thresholds = thresholds or board.Thresholds()
        self.credentials = credentials
        self.updates = 0
        self.final: grpc.StatusCode | None = None  # why the board stopped following

    def compose(self) -> ComposeResult:
        yield Header(show_clock=True)
        yield Static(f"connecting to {self.server} ...", id="status")
        yield DataTable(id="queues", zebra_stripes=True, cursor_type="none")
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

    def status(self, text: str, style: str = "") -> None:
        self.query_one("#status", Static).update(Text(text, style=style))

    async def follow(self) -> None:
        """Follows the statistics stream, reconnecting with backoff."""
        request = spb.WatchStatisticsRequest(
            team_ids=self.teams,
            interval=duration_from(self.interval),
            min_interval=duration_from(min(self.min_interval, self.interval)),
        )
        metadata = (("authorization", f"Bearer {self.token}"),)
        delay = 1.0
        while True:
            try:
                async with open_channel(self.server, self.credentials) as channel:
                    stub = sgrpc.SupervisorServiceStub(channel)
                    async for reply in stub.WatchStatistics(request, metadata=metadata):
                        delay = 1.0
                        self.show(reply.statistics)
                why = "the server ended the stream"
            except grpc.aio.AioRpcError as exc:
                if exc.code() in FINAL:
                    self.final = exc.code()
                    self.status(f"{exc.code().name}: {exc.details()}", "bold red")
                    return
                why = f"{exc.code().name}: {exc.details()}"
            self.status(f"{why}; reconnecting in {delay:.0f} s", "yellow")
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    def show(self, stats: spb.Statistics) -> None:
        fill(self.query_one("#queues", DataTable), board.queue_rows(stats, self.thresholds))
        fill(self.query_one("#teams", DataTable), board.team_rows(stats))
        fill(self.query_one("#rep-list", DataTable), board.rep_rows(stats))
        self.query_one("#reps", Static).update(
            Text.assemble(("Reps  ", "bold"), board.rep_summary(stats))
        )
        self.query_one("#arrivals", Sparkline).data = board.arrivals(stats)
        desk_time = stats.time.ToDatetime().strftime("%H:%M:%S")
        self.status(
            f"{self.server} · desk time {desk_time} UTC · {len(stats.queues)} queues, "
            f"{len(stats.reps)} reps",
            "green",
        )
        self.updates += 1


def duration_from(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


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


def credentials_of(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    if not args.tls_ca:
        return None

    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return grpc.ssl_channel_credentials(read(args.tls_ca), read(args.tls_key), read(args.tls_cert))


async def print_once(args: argparse.Namespace, credentials: Any, out: Any = None) -> int:
    async with open_channel(args.server, credentials) as channel:
        stub = sgrpc.SupervisorServiceStub(channel)
        try:
            reply = await stub.GetStatistics(
                spb.GetStatisticsRequest(team_ids=args.team),
                metadata=(("authorization", f"Bearer {args.token}"),),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            print(f"assigncore top: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    stats = reply.statistics
    title = f"assigncore top · {args.server} · {stats.time.ToDatetime():%Y-%m-%d %H:%M:%S} UTC"
    Console(file=out, width=None if out is None else 132).print(
        board.render(stats, board.Thresholds(args.target), title)
    )
    return 0


def run(args: argparse.Namespace) -> int:
    if not args.token:
        print("assigncore top: give --token (or set ASSIGNCORE_TOKEN)", file=sys.stderr)
        return 2
    if not 0 < args.target <= 1 or args.interval < 1:
        print("assigncore top: --target is 0-1, --interval at least 1 s", file=sys.stderr)
        return 2
    try:
        credentials = credentials_of(args)
    except OSError as exc:
        print(f"assigncore top: {exc}", file=sys.stderr)
        return 2
    if args.once:
        return asyncio.run(print_once(args, credentials))
    app = Wallboard(
        args.server,
        args.token,
        teams=args.team,
        interval=args.interval,
        thresholds=board.Thresholds(args.target),
        credentials=credentials,
    )
    app.run()
    return 1 if app.final is not None else 0
