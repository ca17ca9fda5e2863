"""Does any engine command's cost grow with the backlog or the desk? (DESIGN.md 4.1)

    python benchmarks/scale.py --json            # small and large desk, full samples
    python benchmarks/scale.py --json --quick    # fewer samples and a 200k backlog
    python benchmarks/scale.py --json --steps    # every issue type with three routing steps

Each desk is built through engine commands, in a process of its own (so its RSS is its
own), on a manual clock:

- small: 100 teams, 1,000 reps, 1,000 sessions waiting (enough to measure Get Next,
  positions and pages; the issue's "nothing waiting" desk plus those);
- large: 10,000 teams, 100,000 reps, 1,000,000 sessions waiting, almost all of them in
  ten backlogged "storm" queues whose members are offline.

With --steps, every issue type has three routing steps (a skill at level 6, at level
2, then anyone), and the storm teams' members are signed in but locked, so every
backlogged session waits out its first step in a step FIFO (steps of 3 h: no measured
command fires their expiries). `step_expiry` times one session moving on when its
step expires, beside that backlog.

Both desks have the same probes: 20 probe teams of connected reps with no backlog of
their own, where lifecycles run (one rep per lifecycle), and a storm queue for Get Next,
positions and pages. The same commands are timed on both, and the large/small ratio of
each p50 is reported. Targets (2-core machine, same run): every ratio <= 2, large-desk
lifecycle p50 <= 150 us, RSS < 1 GB, large desk built in < 60 s.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from assigncore.engine import Engine, EngineConfig
from assigncore.model import (
    Algorithm,
    Customer,
    HelpLink,
    IssueType,
    Permissions,
    QueueSettings,
    RoutingStep,
    StepKind,
    SupportButton,
    Target,
    team_queue,
)

DESKS = {
    "small": {"teams": 100, "reps": 1_000, "waiting": 1_000},
    "large": {"teams": 10_000, "reps": 100_000, "waiting": 1_000_000},
}
QUICK_WAITING = 200_000
N_STORMS = 10
N_PROBES = 20
PROBE_REPS = 5  # connected reps per probe team
CUSTOMER = Customer("Carol", "ACME", "printer on fire")
THREE_STEPS = (
    RoutingStep(StepKind.SKILLS, (("storage", 6),), 30.0),
    RoutingStep(StepKind.SKILLS, (("storage", 2),), 60.0),
    RoutingStep(),
)
# The backlog's steps outlast the run (building a 1M backlog takes 100 s of desk time,
# the run 2,000 s more): every command is timed beside a million sessions waiting out
# a step, and no measured command fires their expiries, which `step_expiry` times.
STORM_STEPS = (
    RoutingStep(StepKind.SKILLS, (("storage", 6),), 3 * 3600.0),
    RoutingStep(StepKind.SKILLS, (("storage", 2),), 3 * 3600.0),
    RoutingStep(),
)
# The expiry probe: a session in a storm queue waits out a 1 s step.
EXPIRY_STEPS = (
    RoutingStep(StepKind.SKILLS, (("storage", 6),), 1.0),
    RoutingStep(StepKind.SKILLS, (("storage", 2),), 1.0),
    RoutingStep(),
)


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        self.t += 1e-4  # time moves a little with every command, as on a real desk
        return self.t


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build(n_teams: int, n_reps: int, steps: bool = False) -> Engine:
    """The directory: teams, reps (connected, but for the storm teams'), issue types,
    buttons and links. With `steps`, issue types have three routing steps and the storm
    teams' members are connected and locked (they could match, so nobody skips)."""
    listed = THREE_STEPS if steps else ()
    clock = Clock()
    e = Engine(clock, EngineConfig(ended_retention=60.0))
    e.bench_clock = clock  # type: ignore[attr-defined]  (the expiry probe moves it)
    for t in range(n_teams):
        e.create_team(f"t{t}", f"Team {t}", settings=QueueSettings(Algorithm.LEAST_BUSY))
    perms = Permissions(may_get_next=True, shown_on_public_site=True)
    probe_reps = N_PROBES * PROBE_REPS
    for r in range(n_reps):
        if r < N_STORMS:  # one offline member per storm team: its queue only grows
            teams = [f"t{r}"]
        elif r < N_STORMS + probe_reps:
            teams = [f"t{N_STORMS + (r - N_STORMS) // PROBE_REPS}"]
        else:  # everyone else: one or two regular teams
            base = N_STORMS + N_PROBES
            first = base + r % (n_teams - base)
            teams = [f"t{first}"] + ([f"t{base + (r * 7) % (n_teams - base)}"] if r % 2 else [])
            teams = list(dict.fromkeys(teams))
        skills = {"storage": 7} if steps else None
        e.create_rep(f"r{r}", f"Rep {r}", skills=skills, permissions=perms, teams=teams)
        if r >= N_STORMS:
            e.connect(f"r{r}")
        elif steps:
            e.connect(f"r{r}")
            e.set_locked(f"r{r}", True)
    for t in range(N_STORMS):
        storm_steps = STORM_STEPS if steps else ()
        e.create_issue_type(IssueType(f"storm{t}", "Storm", f"t{t}", steps=storm_steps))
    if steps:
        e.create_issue_type(IssueType("expiry", "Expiry", "t1", steps=EXPIRY_STEPS))
    for p in range(N_PROBES):
        team = f"t{N_STORMS + p}"
        e.create_issue_type(IssueType(f"probe{p}", "Probe", team, steps=listed))
        e.create_support_button(SupportButton(f"btn{p}", "Button", Target(team_id=team)))
        e.create_help_link(HelpLink(f"link{p}", "Link", Target(team_id=team)))
    return e


def backlog(e: Engine, n_waiting: int) -> None:
    """Sessions that wait: spread over the storm queues, whose members are offline."""
    for i in range(n_waiting):
        e.start_from_issue(f"storm{i % N_STORMS}", CUSTOMER)


def percentiles(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "p50_us": round(samples[len(samples) // 2] * 1e6, 1),
        "p99_us": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e6, 1),
    }


def measure(
    e: Engine, samples: int, times: dict[str, list[float]], first: int = 0, steps: bool = False
) -> None:
    """Times `samples` rounds of every command into `times` (sample numbers from
    `first`, so reps created here get new ids)."""
    clock = time.perf_counter

    def timed(name: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        t0 = clock()
        out = fn(*args, **kw)
        times.setdefault(name, []).append(clock() - t0)
        return out

    # Every pass the engine runs is timed where it runs.
    real_assign = e._assign

    def assign() -> None:
        t0 = clock()
        real_assign()
        times.setdefault("assignment_pass", []).append(clock() - t0)

    e._assign = assign  # type: ignore[method-assign]

    def offered(session_id: str) -> Any:
        s = e.session(session_id)
        assert s.offer is not None, "a probe session was not offered"
        return e.offer(s.offer)

    storm = team_queue("t0")
    storm_rep = "r0"
    for i in range(first, first + samples):
        p = i % N_PROBES
        team = f"t{N_STORMS + p}"
        # starts by each origin (then cancelled, untimed, so the desk stays as it is)
        key = e.generate_session_key(f"r{N_STORMS + p * PROBE_REPS}").value
        for name, fn, args in (
            ("start_session_key", e.start_with_key, (key, CUSTOMER)),
            ("start_public_site", e.start_with_rep, (f"r{N_STORMS + p * PROBE_REPS}", CUSTOMER)),
            ("start_button", e.start_from_button, (f"btn{p}", CUSTOMER)),
            ("start_issue_form", e.start_from_issue, (f"probe{p}", CUSTOMER)),
            ("start_help_link", e.start_from_help_link, (f"link{p}", CUSTOMER)),
            ("start_undesignated", e.start_undesignated, (CUSTOMER,)),
        ):
            e.cancel_session(timed(name, fn, *args).value.id)
        # a full lifecycle: start, offer, accept, end
        t0 = clock()
        s = e.start_from_issue(f"probe{p}", CUSTOMER).value
        offer = offered(s.id)
        e.answer_offer(offer.rep_id, offer.id, True)
        e.end_session(offer.rep_id, s.id)
        times.setdefault("lifecycle", []).append(clock() - t0)
        # answers, end and transfer, each on its own
        s = e.start_from_issue(f"probe{p}", CUSTOMER).value
        offer = offered(s.id)
        timed("answer_reject", e.answer_offer, offer.rep_id, offer.id, False)
        offer = offered(s.id)
        timed("answer_accept", e.answer_offer, offer.rep_id, offer.id, True)
        other = team_queue(f"t{N_STORMS + (p + 1) % N_PROBES}")
        timed("transfer", e.transfer_session, offer.rep_id, s.id, other)
        offer = offered(s.id)
        e.answer_offer(offer.rep_id, offer.id, True)
        timed("end", e.end_session, offer.rep_id, s.id)
        # presence
        rep = f"r{N_STORMS + p * PROBE_REPS + 1}"
        timed("disconnect", e.disconnect, rep, signed_out=True)
        timed("connect", e.connect, rep)
        # the backlog: Get Next, a position in the middle, a page from the middle
        taken = timed("get_next", e.get_next, storm_rep).value
        e.end_session(storm_rep, taken.id)
        e.start_from_issue("storm0", CUSTOMER)  # the backlog keeps its size
        middle = e.state.queues[storm].sessions[len(e.state.queues[storm].sessions) // 2]
        sid = e.state.session_by_slot[middle & ((1 << 32) - 1)].id
        timed("queue_position", e.queue_position, sid)
        timed("queue_page_50", e.queue_page, storm, middle, 50)
        # the directory
        timed("add_team_member", e.add_team_member, f"t{N_STORMS + (p + 3) % N_PROBES}", rep)
        e.remove_team_member(f"t{N_STORMS + (p + 3) % N_PROBES}", rep)
        timed("create_rep", e.create_rep, f"new{i}", "New", teams=[team])
        if steps:
            # A session moves to its next step when its step expires: what else falls
            # due first is fired untimed, then the expiry alone is timed (the timer
            # pass, the FIFO's head, the step's columns and pool, its event and pass).
            desk_clock = e.bench_clock  # type: ignore[attr-defined]
            s = e.start_from_issue("expiry", CUSTOMER).value
            desk_clock.t += 0.999
            e.advance()
            desk_clock.t += 0.002
            timed("step_expiry", e.advance)
            assert e.session(s.id).step == 1, "the expiry probe did not move on"
            e.cancel_session(s.id)
    e._assign = real_assign  # type: ignore[method-assign]


def child(desk: str, quick: bool, steps: bool) -> None:
    """One desk, driven over stdin by the parent: `round N` times N samples of every
    command; `report` prints the figures. Rounds of the two desks alternate, so drift on
    a shared machine falls on both alike."""
    size = dict(DESKS[desk])
    if quick and desk == "large":
        size["waiting"] = QUICK_WAITING
    gc.disable()  # building: nothing to collect, and the collector's walks grow with the heap
    t0 = time.perf_counter()
    engine = build(size["teams"], size["reps"], steps)
    directory_rss = rss_mb()
    backlog(engine, size["waiting"])
    built = time.perf_counter() - t0
    gc.enable()
    gc.freeze()  # what a long-running server does after loading its desk
    rss = rss_mb()
    result: dict[str, Any] = {
        "desk": desk,
        "steps": steps,
        **size,
        "build_s": round(built, 1),
        "rss_mb": round(rss, 1),
        "directory_rss_mb": round(directory_rss, 1),
        "bytes_per_waiting_session": round((rss - directory_rss) * 2**20 / size["waiting"]),
    }
    print("ready", flush=True)
    times: dict[str, list[float]] = {}
    done = 0
    for line in sys.stdin:
        word, _, arg = line.strip().partition(" ")
        if word == "round":
            measure(engine, int(arg), times, done, steps)
            done += int(arg)
            print("done", flush=True)
        elif word == "report":
            result["commands"] = {name: percentiles(v) for name, v in sorted(times.items())}
            print(json.dumps(result), flush=True)
            return


ROUNDS = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="fewer samples, 200k backlog")
    parser.add_argument("--steps", action="store_true", help="three routing steps everywhere")
    parser.add_argument("--desk", choices=sorted(DESKS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    samples = 200 if args.quick else 2000
    if args.desk:  # a child: one desk
        child(args.desk, args.quick, args.steps)
        return
    children = {}
    for desk in ("small", "large"):  # built one after the other, each in its own process
        cmd = [sys.executable, __file__, "--desk", desk] + (["--quick"] if args.quick else [])
        cmd += ["--steps"] if args.steps else []
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdin is not None
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"the {desk} desk did not build")
        children[desk] = proc

    def ask(desk: str, line: str) -> str:
        proc = children[desk]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        return proc.stdout.readline()

    for _ in range(ROUNDS):  # alternating, so the machine's drift falls on both desks
        for desk in ("small", "large"):
            if ask(desk, f"round {samples // ROUNDS}").strip() != "done":
                raise SystemExit(f"the {desk} desk failed")
    results = {desk: json.loads(ask(desk, "report")) for desk in ("small", "large")}
    for proc in children.values():
        proc.wait()
    small, large = results["small"]["commands"], results["large"]["commands"]
    ratios = {
        name: round(large[name]["p50_us"] / small[name]["p50_us"], 2)
        for name in small
        if name in large and small[name]["p50_us"] > 0
    }
    report = {
        "quick": args.quick,
        "steps": args.steps,
        "small": results["small"],
        "large": results["large"],
        "large_over_small_p50": ratios,
        "worst_ratio": max(ratios.values()),
        "bytes_per_waiting_session": results["large"]["bytes_per_waiting_session"],
        "targets": {
            "every_ratio_le_2": max(ratios.values()) <= 2,
            "large_lifecycle_p50_le_150us": large["lifecycle"]["p50_us"] <= 150,
            "large_rss_lt_1gb": results["large"]["rss_mb"] < 1024,
            "large_build_lt_60s": results["large"]["build_s"] < 60,
        },
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name in sorted(ratios):
            print(
                f"{name:22s} small {small[name]['p50_us']:9.1f} us  large "
                f"{large[name]['p50_us']:9.1f} us  x{ratios[name]}"
            )
        print(json.dumps({k: report[k] for k in ("bytes_per_waiting_session", "targets")}))


if __name__ == "__main__":
    main()
