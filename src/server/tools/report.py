"""A simulation's report as a text table and as PNG plots (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .simulate import Report


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    whole = int(round(value))
    return f"{whole // 60}:{whole % 60:02d}"


def table(report: Report, target: float | None = None) -> str:
    """Per queue and interval, then occupancy per team and interval."""
    t = report.traffic
    out: list[str] = []
    header = (
        f"{'interval':<9}{'arrived':>8}{'answered':>9}{'aband.':>7}{'SL':>6}{'ASA':>7}"
        f"{'longest':>9}{'offers/ans':>11}{'rejected':>9}{'timed out':>10}"
    )
    for name in sorted(report.queues):
        per = report.queues[name]
        if not any(c.arrived or c.answered or c.abandoned for c in per):
            continue
        total = report.totals(name)
        out.append(f"{name}  (service level within {t.threshold:g} s)")
        out.append(header)
        rows = [(t.label(i), c) for i, c in enumerate(per)] + [("total", total)]
        for label, c in rows:
            level = c.service_level
            mark = "" if target is None or level is None or level >= target else " !"
            offers = f"{c.offers / c.answered:.2f}" if c.answered else "-"
            out.append(
                f"{label:<9}{c.arrived:>8}{c.answered:>9}{c.abandoned:>7}"
                f"{_pct(level) + mark:>6}{_secs(c.asa):>7}{_secs(c.longest):>9}"
                f"{offers:>11}{c.rejected:>9}{c.timed_out:>10}"
            )
        out.append("")
    if report.issue_types:
        out.append("by issue type, whole day (waits from the customer's arrival)")
        out.append(f"{'issue type':<18}" + header[9:])
        for name in sorted(report.issue_types):
            c = report.issue_totals(name)
            level = c.service_level
            mark = "" if target is None or level is None or level >= target else " !"
            offers = f"{c.offers / c.answered:.2f}" if c.answered else "-"
            out.append(
                f"{name[:17]:<18}{c.arrived:>8}{c.answered:>9}{c.abandoned:>7}"
                f"{_pct(level) + mark:>6}{_secs(c.asa):>7}{_secs(c.longest):>9}"
                f"{offers:>11}{c.rejected:>9}{c.timed_out:>10}"
            )
        out.append("")
    teams = [team for team in sorted(report.staffed) if any(report.staffed[team])]
    if teams:
        out.append("occupancy (busy time over signed-in time, breaks excluded)")
        out.append(f"{'interval':<9}" + "".join(f"{team[:12]:>13}" for team in teams))
        for i in range(t.intervals):
            out.append(
                f"{t.label(i):<9}"
                + "".join(f"{_pct(report.occupancy(team, i)):>13}" for team in teams)
            )
    return "\n".join(out)


def _worst(per: list[Any]) -> float | None:
    levels = [c.service_level for c in per if c.service_level is not None]
    return min(levels) if levels else None


def _concurrency(r: Report, team: str) -> str:
    value = r.concurrency(team)
    return "-" if value is None else f"{value:.2f}"


def compare(runs: list[tuple[str, Report]]) -> str:
    """Desks under the same traffic, side by side: per issue type (waits from the
    customer's arrival) and per team, the whole day and the worst interval."""
    width = max(10, *(len(label) for label, _ in runs))
    rows = [f"{'':<22}" + "  ".join(f"{label:>{width}}" for label, _ in runs)]

    def line(name: str, values: list[str]) -> None:
        rows.append(f"{name:<22}" + "  ".join(f"{v:>{width}}" for v in values))

    def cells(name: str, measure: Any, fmt: Any) -> list[str]:
        return [
            fmt(measure(r.issue_totals(name))) if name in r.issue_types else "-" for _, r in runs
        ]

    issue_types = sorted({name for _, r in runs for name in r.issue_types})
    for name in issue_types:
        rows.append(f"issue type {name}")
        line("  service level", cells(name, lambda c: c.service_level, _pct))
        line(
            "  worst interval SL",
            [_pct(_worst(r.issue_types[name])) if name in r.issue_types else "-" for _, r in runs],
        )
        line("  average wait", cells(name, lambda c: c.asa, _secs))
        line("  longest wait", cells(name, lambda c: c.longest, _secs))
        line("  abandoned", cells(name, lambda c: c.abandon_rate, _pct))
    teams = sorted(set.intersection(*(set(r.staffed) for _, r in runs)))
    for team in teams:
        if any(any(r.staffed[team]) for _, r in runs):
            rows.append(f"team {team}")
            line("  occupancy", [_pct(r.occupancy(team)) for _, r in runs])
            line("  sessions in hand", [_concurrency(r, team) for _, r in runs])
    return "\n".join(rows)


def plot(report: Report, path: str | Path, target: float | None = None) -> None:
    """Service level, average speed of answer and abandonment per queue, and
    occupancy per team, over the intervals: one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = report.traffic
    labels = [t.label(i) for i in range(t.intervals)]
    x = list(range(t.intervals))
    queues = [
        name
        for name in sorted(report.queues)
        if any(c.answered or c.abandoned for c in report.queues[name])
    ]
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharex=True)
    panels: list[tuple[Any, str, Any]] = [
        (axes[0][0], "service level", lambda c: c.service_level),
        (axes[0][1], "average speed of answer (s)", lambda c: c.asa),
        (axes[1][0], "abandoned", lambda c: c.abandon_rate),
    ]
    for ax, title, value in panels:
        for name in queues:
            ys = [value(c) for c in report.queues[name]]
            ax.plot(x, [float("nan") if y is None else y for y in ys], marker=".", label=name)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    if target is not None:
        axes[0][0].axhline(target, color="grey", linestyle="--", label=f"target {target:.0%}")
    axes[0][0].set_ylim(0, 1.05)
    axes[0][0].legend(fontsize="small")
    ax = axes[1][1]
    for team in sorted(report.staffed):
        if any(report.staffed[team]):
            ys = [report.occupancy(team, i) for i in x]
            ax.plot(x, [float("nan") if y is None else y for y in ys], marker=".", label=team)
    ax.set_title("occupancy")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    step = max(1, len(x) // 8)
    for row in axes:
        for a in row:
            a.set_xticks(x[::step], labels[::step])
    fig.suptitle(f"assigncore simulate: {report.simulated_customers} customers")
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)
