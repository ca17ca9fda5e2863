"""What the wallboard shows, from one `Statistics` message: rows of Rich text with
their colours, and the alerts. Shared by `assigncore top` (Textual, live) and
`assigncore top --once` (one capture, printed).

Words as contact centers use them: "offered" counts the contacts that entered a queue
(not the offers made to reps), "answered" those taken by a rep, the abandon rate is
abandoned over offered, "missed" counts the offers reps rejected or let time out, and
occupancy is the share of a team's working reps (available or busy) who are busy now.
Counts are per interval (the last 15 minutes) and for today.

Colours: a queue's service level is green at or above the target (default 80%),
yellow within 20 points under it, red below that; its longest wait is yellow past half
of the queue's service-level threshold and red past the threshold; waiting sessions
are bold when any wait.

Alerts: a service level under target, a longest wait past the threshold or past the
queue's waiting rule, sessions moved to overflow by a waiting rule, sessions waiting
where no member is available, and reps whose automatic assignment the server switched
off after missed offers.
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
    "Reps",
    "Waiting",
    "Longest",
    "SL 15m",
    "SL today",
    "ASA 15m",
    "AHT 1h",
    "Offered 15m",
    "Answered 15m",
    "Aband. 15m",
    "Aband.% 15m",
    "Missed 15m",
    "Transf. 15m",
    "Offered today",
    "Aband.% today",
    "Arrivals 15m",
)
TEAM_COLUMNS = ("Team", "Staffed", "Available", "Busy", "Occupancy", "Channels")
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


def rate(part: int, whole: int, bad: float | None = None) -> Text:
    """part/whole as a percentage ("-" when whole is 0); red from `bad` up."""
    if not whole:
        return Text("-", style="dim", justify="right")
    value = part / whole
    style = "red" if bad is not None and value >= bad else ""
    return Text(f"{value:.0%}", style=style, justify="right")


def reps_cell(q: spb.QueueStatistics, teams: dict[str, spb.TeamStatistics]) -> Text:
    """Available/staffed members of a team's queue."""
    team = teams.get(q.queue.owner_id) if q.queue.kind == pb.QUEUE_KIND_TEAM else None
    if team is None:
        return Text("-", style="dim", justify="right")
    style = "red" if q.waiting and not team.available else ""
    return Text(f"{team.available}/{team.staffed}", style=style, justify="right")


def queue_rows(stats: spb.Statistics, thresholds: Thresholds) -> list[tuple[str, list[Text]]]:
    """(key, cells) per queue: teams' queues, the general queue, then personal ones."""
    order = {pb.QUEUE_KIND_TEAM: 0, pb.QUEUE_KIND_GENERAL: 1, pb.QUEUE_KIND_PERSONAL: 2}
    teams = {t.team_id: t for t in stats.teams}
    rows = []
    for q in sorted(stats.queues, key=lambda q: (order.get(q.queue.kind, 3), q.queue.owner_id)):
        name = queue_name(q.queue)
        fifteen, hour, today = q.last_15_minutes, q.last_hour, q.today
        rows.append(
            (
                name,
                [
                    Text(name),
                    reps_cell(q, teams),
                    num(q.waiting, "bold" if q.waiting else ""),
                    thresholds.wait(q),
                    thresholds.level(fifteen),
                    thresholds.level(today),
                    average(
                        fifteen.average_speed_of_answer,
                        fifteen.HasField("average_speed_of_answer"),
                    ),
                    average(hour.average_handle_time, hour.HasField("average_handle_time")),
                    num(fifteen.arrived),
                    num(fifteen.accepted),
                    num(fifteen.abandoned, "red" if fifteen.abandoned else ""),
                    rate(fifteen.abandoned, fifteen.arrived, ABANDON_ALERT),
                    num(fifteen.rejected + fifteen.timed_out),
                    num(fifteen.transferred),
                    num(today.arrived),
                    rate(today.abandoned, today.arrived, ABANDON_ALERT),
                    Text(spark(list(q.arrivals_per_minute)[-15:]), style="cyan"),
                ],
            )
        )
    return rows


ABANDON_ALERT = 0.1  # an abandon rate from 10% shows red


def alerts(stats: spb.Statistics, thresholds: Thresholds) -> list[Text]:
    """What needs a supervisor now, worst first."""
    teams = {t.team_id: t for t in stats.teams}
    red: list[Text] = []
    yellow: list[Text] = []
    for q in stats.queues:
        name = queue_name(q.queue)
        wait, limit = seconds_of(q.longest_wait), seconds_of(q.service_level_threshold)
        fifteen = q.last_15_minutes
        if fifteen.HasField("service_level") and fifteen.service_level < thresholds.target:
            level = fifteen.service_level
            (red if level < thresholds.target - 0.2 else yellow).append(
                Text(
                    f"{name}: service level {level:.0%} over 15 min, target {thresholds.target:.0%}"
                )
            )
        if q.HasField("overdue_after") and q.waiting and wait > seconds_of(q.overdue_after):
            red.append(
                Text(
                    f"{name}: waiting rule broken, a session has waited {clock(wait)} "
                    f"(rule {clock(seconds_of(q.overdue_after))})"
                )
            )
        elif q.waiting and wait > limit:
            red.append(
                Text(
                    f"{name}: a session has waited {clock(wait)}, past the "
                    f"{clock(limit)} service-level threshold"
                )
            )
        if fifteen.moved:
            yellow.append(
                Text(f"{name}: {fifteen.moved} moved to overflow by the waiting rule in 15 min")
            )
        team = teams.get(q.queue.owner_id) if q.queue.kind == pb.QUEUE_KIND_TEAM else None
        if team is not None and q.waiting and not team.available:
            yellow.append(Text(f"{name}: {q.waiting} waiting and no member available"))
    for r in stats.reps:
        if r.state == spb.REP_STATE_AWAY and r.reason == "MISSED_OFFERS":
            yellow.append(
                Text(f"{r.display_name or r.rep_id}: automatic assignment off after missed offers")
            )
    for line in red:
        line.stylize("bold red")
    for line in yellow:
        line.stylize("yellow")
    return red + yellow


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
                rate(t.busy, t.busy + t.available),
                Text(channel_use(t)),
            ],
        )
        for t in stats.teams
    ]


def channel_use(t: spb.TeamStatistics) -> str:
    """Sessions in hand per service channel; with capacity profiles, the share of the
    units signed in that they use: "chat 3 · voice 1 · 5/12u 42%"."""
    if not t.capacity_units and all(not c.channel for c in t.channels):
        return ""  # a desk without channels: nothing to tell apart
    parts = [f"{c.channel or 'default'} {c.sessions}" for c in t.channels]
    if t.capacity_units:
        used = sum(c.units for c in t.channels)
        parts.append(f"{used}/{t.capacity_units}u {100 * used // t.capacity_units}%")
    return " · ".join(parts)


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
    warnings = alerts(stats, thresholds)
    return Group(
        Text(title, style="bold"),
        _table("Queues", QUEUE_COLUMNS, queue_rows(stats, thresholds)),
        Text.assemble(("Alerts  ", "bold"), "none" if not warnings else ""),
        *warnings,
        Text.assemble(("Reps  ", "bold"), rep_summary(stats)),
        Text.assemble(
            ("Arrivals, last hour  ", "bold"), (spark(waves), "cyan"), f"  {sum(waves)} in all"
        ),
        _table("Teams", TEAM_COLUMNS, team_rows(stats)),
    )
