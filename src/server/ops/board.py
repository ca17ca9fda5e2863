"""What the wallboard shows, from one `Statistics` message: rows of Rich text with
their colours. Shared by `assigncore top` (Textual, live) and `assigncore top --once`
(one capture, printed).

Colours: a queue's service level is green at or above the target (default 80%),
yellow within 20 points under it, red below that; its longest wait is yellow past half
of the queue's service-level threshold and red past the threshold; waiting sessions
are bold when any wait.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from assigncore.v1 import common_pb2 as pb
from assigncore.v1 import supervisor_service_pb2 as spb

REP_STATES = (
    ("AVAILABLE", "Available", "green"),
    ("OFFERED", "Offered", "cyan"),
    ("BUSY", "Busy", "yellow"),
    ("WRAP_UP", "Wrap-up", "magenta"),
    ("AWAY", "Away", "bright_black"),
    ("OFFLINE", "Offline", "dim"),
)
QUEUE_COLUMNS = (
    "Queue",
    "Waiting",
    "Longest",
    "SL 15m",
    "SL today",
    "ASA 15m",
    "AHT 1h",
    "Offered",
    "Accepted",
    "Abandoned",
    "Arrivals 15m",
)
TEAM_COLUMNS = ("Team", "Staffed", "Available", "Busy")
REP_COLUMNS = ("Rep", "State", "For", "Load", "Teams")
SPARK = "▁▂▃▄▅▆▇█"


def seconds_of(d: object) -> float:
    return d.seconds + d.nanos / 1e9  # type: ignore[attr-defined]


def clock(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def queue_name(ref: pb.QueueRef) -> str:
    if ref.kind == pb.QUEUE_KIND_GENERAL:
        return "general"
    kind = "team" if ref.kind == pb.QUEUE_KIND_TEAM else "personal"
    return f"{kind}/{ref.owner_id}"


def spark(values: list[int]) -> str:
    """A one-line sparkline (blank for no arrivals)."""
    top = max(values, default=0)
    if not top:
        return " " * len(values)
    return "".join(SPARK[round(v / top * (len(SPARK) - 1))] for v in values)


@dataclass(frozen=True)
class Thresholds:
    target: float = 0.8  # service level goal

    def level(self, counts: spb.WindowCounts) -> Text:
        if not counts.HasField("service_level"):
            return Text("-", style="dim", justify="right")
        value = counts.service_level
        style = (
            "bold green"
            if value >= self.target
            else "bold yellow"
            if value >= self.target - 0.2
            else "bold red"
        )
        return Text(f"{value:.0%}", style=style, justify="right")

    @staticmethod
    def wait(q: spb.QueueStatistics) -> Text:
        wait, limit = seconds_of(q.longest_wait), seconds_of(q.service_level_threshold)
        if not q.waiting:
            return Text("-", style="dim", justify="right")
        style = "bold red" if wait > limit else "yellow" if wait > limit / 2 else "green"
        return Text(clock(wait), style=style, justify="right")


def num(value: object, style: str = "") -> Text:
    """A number's cell, right-aligned."""
    return Text(str(value), style=style, justify="right")


def average(d: object, present: bool) -> Text:
    if not present:
        return Text("-", style="dim", justify="right")
    return Text(clock(seconds_of(d)), justify="right")


def queue_rows(stats: spb.Statistics, thresholds: Thresholds) -> list[tuple[str, list[Text]]]:
    """(key, cells) per queue: teams' queues, the general queue, then personal ones."""
    order = {pb.QUEUE_KIND_TEAM: 0, pb.QUEUE_KIND_GENERAL: 1, pb.QUEUE_KIND_PERSONAL: 2}
    rows = []
    for q in sorted(stats.queues, key=lambda q: (order.get(q.queue.kind, 3), q.queue.owner_id)):
        name = queue_name(q.queue)
        fifteen, hour, today = q.last_15_minutes, q.last_hour, q.today
        rows.append(
            (
                name,
                [
                    Text(name),
                    num(q.waiting, "bold" if q.waiting else ""),
                    thresholds.wait(q),
                    thresholds.level(fifteen),
                    thresholds.level(today),
                    average(
                        fifteen.average_speed_of_answer,
                        fifteen.HasField("average_speed_of_answer"),
                    ),
                    average(hour.average_handle_time, hour.HasField("average_handle_time")),
                    num(today.offered),
                    num(today.accepted),
                    num(today.abandoned, "red" if today.abandoned else ""),
                    Text(spark(list(q.arrivals_per_minute)[-15:]), style="cyan"),
                ],
            )
        )
    return rows


def rep_counts(stats: spb.Statistics) -> dict[str, int]:
    counts = dict.fromkeys((s for s, _, _ in REP_STATES), 0)
    for r in stats.reps:
        name = spb.RepState.Name(r.state).removeprefix("REP_STATE_")
        if name in counts:
            counts[name] += 1
    return counts


def rep_summary(stats: spb.Statistics) -> Text:
    counts = rep_counts(stats)
    text = Text()
    for state, label, style in REP_STATES:
        text.append(f"{label} ", style=style)
        text.append(f"{counts[state]}", style=f"bold {style}")
        text.append("   ")
    return text


def rep_rows(stats: spb.Statistics) -> list[tuple[str, list[Text]]]:
    """The reps signed in, by state (as REP_STATES orders them), longest in it first."""
    rank = {s: i for i, (s, _, _) in enumerate(REP_STATES)}
    style = {s: st for s, _, st in REP_STATES}
    now = stats.time.seconds + stats.time.nanos / 1e9
    rows = []
    for r in stats.reps:
        state = spb.RepState.Name(r.state).removeprefix("REP_STATE_")
        if state == "OFFLINE":
            continue
        since = r.since.seconds + r.since.nanos / 1e9
        label = state.replace("_", "-").capitalize() + (
            f" ({r.reason.lower()})" if r.reason else ""
        )
        rows.append(
            (
                (rank.get(state, 9), since, r.rep_id),
                r.rep_id,
                [
                    Text(r.display_name or r.rep_id),
                    Text(label, style=style.get(state, "")),
                    Text(clock(now - since), justify="right"),
                    num(r.load),
                    Text(", ".join(r.team_ids), style="dim"),
                ],
            )
        )
    rows.sort(key=lambda row: row[0])
    return [(key, cells) for _, key, cells in rows]


def team_rows(stats: spb.Statistics) -> list[tuple[str, list[Text]]]:
    return [
        (
            t.team_id,
            [
                Text(t.display_name or t.team_id),
                num(t.staffed),
                num(t.available, "green" if t.available else "red"),
                num(t.busy),
            ],
        )
        for t in stats.teams
    ]


def arrivals(stats: spb.Statistics) -> list[int]:
    """Arrivals per minute over the last hour, all queues shown added up."""
    total = [0] * 60
    for q in stats.queues:
        for i, n in enumerate(list(q.arrivals_per_minute)[-60:]):
            total[i] += n
    return total


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[str, list[Text]]]) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    widest = max((len(cells[0]) for _, cells in rows), default=0)
    for i, name in enumerate(columns):
        if i == 0:
            table.add_column(name, no_wrap=True, min_width=widest)
        else:
            table.add_column(name, justify="right", no_wrap=True)
    for _, cells in rows:
        table.add_row(*cells)
    return table


def render(stats: spb.Statistics, thresholds: Thresholds, title: str) -> RenderableType:
    """The whole board as one Rich renderable (`assigncore top --once`)."""
    waves = arrivals(stats)
    return Group(
        Text(title, style="bold"),
        _table("Queues", QUEUE_COLUMNS, queue_rows(stats, thresholds)),
        Text.assemble(("Reps  ", "bold"), rep_summary(stats)),
        Text.assemble(
            ("Arrivals, last hour  ", "bold"), (spark(waves), "cyan"), f"  {sum(waves)} in all"
        ),
        _table("Teams", TEAM_COLUMNS, team_rows(stats)),
    )
