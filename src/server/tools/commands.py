"""The `assigncore simulate` command line.

    assigncore simulate DESK.toml TRAFFIC.toml [--seed 1] [--target 0.8]
                        [--json REPORT.json] [--plot REPORT.png] [--staff]
    assigncore simulate --check [--quick] [--json CHECK.json]

DESK.toml is a server configuration (its desk: teams, reps, issue types); TRAFFIC.toml
the traffic model (see tools/traffic.py). The report is printed as a table; --json
and --plot write it too. --staff prints, per team and interval, the fewest reps that
meet --target. --check compares the engine with Erlang C and Erlang A (tools/check.py)
and exits 1 if a figure is off by more than its tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .. import config
from . import check, report, staffing
from .simulate import Simulation
from .traffic import TrafficError
from .traffic import load as load_traffic


def add_simulate_parser(sub: Any) -> None:
    p = sub.add_parser(
        "simulate", help="what-if runs of a desk on the engine, faster than real time"
    )
    p.add_argument("desk", nargs="?", help="the desk: a server TOML")
    p.add_argument("traffic", nargs="?", help="the traffic model (TOML)")
    p.add_argument("--seed", type=int, default=1, help="random seed (the same seed, the same run)")
    p.add_argument("--target", type=float, default=0.8, help="service level target, 0-1")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    p.add_argument("--plot", metavar="FILE", help="write the report as a PNG")
    p.add_argument("--staff", action="store_true", help="the fewest reps per team and interval")
    p.add_argument("--check", action="store_true", help="compare the engine with queueing theory")
    p.add_argument("--quick", action="store_true", help="with --check: fewer customers")
    p.add_argument(
        "--compare",
        metavar="DESK2",
        action="append",
        default=[],
        help="run another desk under the same customers (traffic and seed) and compare "
        "them; repeat for more desks",
    )


def simulate_command(args: argparse.Namespace) -> int:
    if not 0 < args.target <= 1:
        print("assigncore simulate: --target is 0-1", file=sys.stderr)
        return 2
    if args.check:
        return _check(args)
    if not args.desk or not args.traffic:
        print("assigncore simulate: give DESK.toml and TRAFFIC.toml (or --check)", file=sys.stderr)
        return 2
    try:
        settings = config.load(args.desk)
        traffic = load_traffic(args.traffic)
    except (config.ConfigError, TrafficError, OSError) as exc:
        print(f"assigncore simulate: {exc}", file=sys.stderr)
        return 2
    others = []
    try:
        for path in args.compare:
            others.append((path, config.load(path)))
    except (config.ConfigError, OSError) as exc:
        print(f"assigncore simulate: {exc}", file=sys.stderr)
        return 2
    started = time.process_time()
    result = Simulation(settings, traffic, seed=args.seed).run()
    cpu = time.process_time() - started
    if others:
        runs = [(args.desk, result)]
        runs += [(path, Simulation(s, traffic, seed=args.seed).run()) for path, s in others]
        print(f"the same customers ({args.traffic}, seed {args.seed}) on {len(runs)} desks\n")
        print(report.compare([(Path(path).stem, r) for path, r in runs]))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({path: r.as_dict() for path, r in runs}, f, indent=2)
        return 0
    print(report.table(result, args.target))
    speed = result.simulated_customers / cpu if cpu else 0.0
    print(
        f"\n{result.simulated_customers} customers over {traffic.duration / 3600:.1f} h "
        f"simulated in {cpu:.1f} s of CPU ({speed:,.0f} customers/s)"
    )
    out: dict[str, Any] = result.as_dict()
    out["cpu_s"] = round(cpu, 3)
    if args.staff:
        needs = staffing.staff(settings, traffic, args.target, seed=args.seed)
        out["staffing"] = {"target": args.target, "reps": needs}
        print(f"\nfewest reps for a {args.target:.0%} service level within {traffic.threshold:g} s")
        print(f"{'interval':<9}" + "".join(f"{team[:12]:>13}" for team in needs))
        for i in range(traffic.intervals):
            print(f"{traffic.label(i):<9}" + "".join(f"{n[i]:>13}" for n in needs.values()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    if args.plot:
        report.plot(result, args.plot, args.target)
    return 0


def _check(args: argparse.Namespace) -> int:
    result = check.run(quick=args.quick, seed=args.seed)
    print(check.table(result["rows"]))
    print(
        f"\n{result['simulated_customers']} customers simulated in {result['cpu_s']} s of CPU "
        f"({result['customers_per_cpu_s']:,} customers/s)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**result, "rows": [r.as_dict() for r in result["rows"]]}, f, indent=2)
    if not result["passed"]:
        print("assigncore simulate --check: the engine is off theory", file=sys.stderr)
        return 1
    return 0
