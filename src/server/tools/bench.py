"""`assigncore bench`: a load generator against any running server, on the Python client.

    assigncore bench --server HOST:PORT --token ADMIN_TOKEN [--reps 50]
                     [--arrivals poisson:20] [--duration 30 | --sessions 5000]
                     [--concurrency 64] [--accept 1 --reject 0 --think 0 --handle 0]
                     [--processes 2] [--metrics http://HOST:PORT/metrics]
                     [--json result.json] [--plot result.png]
    assigncore bench compare A.json B.json [--plot compare.png]

It creates a synthetic desk through the admin API: per client process, `--reps` reps
in teams of `--team-size` (least busy), an issue type routed to each team (arrivals go
round robin over them), the reps signed in on consoles (the Python client's
`Console`, sharing connections, each with its own token), and an intake token. Every
console hears of its team's queue, so the team size sets the fan-out per session.
Or it drives the desk's own shape: `--issue-type` with `--rep-tokens` (a file,
one rep token a line; those reps' consoles) and `--intake-token`, from one process.
A portal starts sessions by the arrival process:

- `poisson:R`: R arrivals per second at random; `constant:R`: evenly spaced;
- `burst:R,EVERY,SIZE`: Poisson at R, and SIZE more at once every EVERY seconds;
- `ramp:FROM,TO`: a Poisson rate rising (or falling) linearly over the run;
- or `--closed-loop W`: W workers, each starting a session when its last one ended
  (a closed load, which finds the most a server does).

At most `--concurrency` lifecycles are in flight; an arrival that finds them all busy
waits (and the wait counts in its latency: the load is open, as a real portal's).
Each console answers an offer after `--think` seconds: accepts with probability
`--accept`, rejects with `--reject`, else lets it time out; an accepted session is
handled for `--handle` seconds (a number, or exp:MEAN) and ended.

Measured, in HDR histograms (microseconds): enqueue to offer (StartSession sent to the
offer on the console), offer to answer (the offer to its accepted result), and each
call's latency (StartSession; AnswerOffer and EndSession, sent on the console's
stream). Also lifecycles per second, errors by status code, a time series per second,
and the generator's own CPU per lifecycle (it must not be the bottleneck: spread it
over `--processes`). With `--metrics`, the server's own decision latency: its engine
time for the start command (the assignment pass included) and its journal commits,
from the histograms it exports, so the network and gRPC's share can be told apart.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from assigncore.client import (
    Admin,
    AssignCoreError,
    Connection,
    Console,
    OfferMade,
    Portal,
)
from assigncore.v1 import admin_service_pb2 as apb
from assigncore.v1 import common_pb2 as pb

from ..ops.remote import add_connection_arguments, client_settings

LOWEST, HIGHEST = 1, 120_000_000  # microseconds a histogram holds
CUSTOMER = pb.Customer(name="bench")
HISTOGRAMS = ("enqueue_to_offer", "offer_to_answer", "StartSession", "AnswerOffer", "EndSession")


def histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST, HIGHEST, 3)


# ----------------------------------------------------------------------- arrivals


@dataclass(frozen=True)
class ArrivalProcess:
    kind: str
    rate: float
    to_rate: float = 0.0
    every: float = 0.0
    size: int = 0

    def times(self, duration: float, rng: random.Random) -> list[float]:
        """Arrival offsets in [0, duration), in order."""
        out: list[float] = []
        if self.kind == "constant":
            n = int(duration * self.rate)
            return [i / self.rate for i in range(n)]
        top = max(self.rate, self.to_rate)
        t = 0.0
        while top > 0:
            t += rng.expovariate(top)
            if t >= duration:
                break
            rate = self.rate
            if self.kind == "ramp":
                rate = self.rate + (self.to_rate - self.rate) * t / duration
            if rng.random() * top <= rate:  # thinning
                out.append(t)
        if self.kind == "burst" and self.every > 0:
            k = 1
            while k * self.every < duration:
                out += [k * self.every] * self.size
                k += 1
            out.sort()
        return out


def arrival_process(spec: str) -> ArrivalProcess:
    kind, _, rest = spec.partition(":")
    try:
        values = [float(v) for v in rest.split(",")] if rest else []
    except ValueError:
        raise ValueError(f"--arrivals {spec!r}: numbers after the colon") from None
    shapes = {"poisson": 1, "constant": 1, "burst": 3, "ramp": 2}
    if kind not in shapes or len(values) != shapes[kind] or any(v < 0 for v in values):
        raise ValueError(
            "--arrivals is poisson:RATE, constant:RATE, burst:RATE,EVERY,SIZE or ramp:FROM,TO"
        )
    if kind == "burst":
        return ArrivalProcess(kind, values[0], every=values[1], size=int(values[2]))
    if kind == "ramp":
        return ArrivalProcess(kind, values[0], to_rate=values[1])
    if values[0] <= 0:
        raise ValueError("--arrivals: the rate must be positive")
    return ArrivalProcess(kind, values[0])


def duration_sampler(spec: str) -> Any:
    """`--handle`/`--think`: a number of seconds, or exp:MEAN."""
    if spec.startswith("exp:"):
        mean = float(spec[4:])
        return lambda rng: rng.expovariate(1 / mean) if mean > 0 else 0.0
    value = float(spec)
    if value < 0:
        raise ValueError("durations must not be negative")
    return lambda rng: value


# ----------------------------------------------------------------------- the desk


async def create_desk(admin: Admin, parts: int, reps: int, team_size: int) -> list[dict[str, Any]]:
    """Per client part: teams of `team_size` reps (the last one may be smaller), an
    issue type routed to each, the reps' tokens; and one intake token."""
    run = uuid.uuid4().hex[:8]
    desks = []
    intake = (await admin.issue_token("intake", description=f"bench {run}")).secret
    for k in range(parts):
        issue_types, tokens = [], []
        for first in range(0, reps, team_size):
            team = f"bench-{run}-{k}-{first // team_size}"
            settings = apb.QueueSettings(algorithm=apb.ALGORITHM_LEAST_BUSY)
            settings.offer_timeout.FromSeconds(30)
            await admin.create_team(apb.Team(id=team, display_name=team, queue_settings=settings))
            await admin.create_issue_type(apb.IssueType(id=team, display_name=team, team_id=team))
            issue_types.append(team)
            for i in range(first, min(reps, first + team_size)):
                rep = f"bench-{run}-{k}-r{i}"
                await admin.create_rep(
                    apb.Rep(id=rep, display_name=rep, team_ids=[team], auto_assign=True)
                )
                tokens.append((await admin.issue_token("rep", rep_id=rep)).secret)
        desks.append({"issue_types": issue_types, "intake": intake, "reps": tokens})
    return desks


# ----------------------------------------------------------------------- one client part


class Part:
    """One process's share: its consoles, its portal and what they measured."""

    def __init__(self, args: argparse.Namespace, desk: dict[str, Any], index: int) -> None:
        self.args, self.desk = args, desk
        self.rng = random.Random(args.seed * 1000 + index)
        self.hist = {name: histogram() for name in HISTOGRAMS}
        self.errors: Counter[str] = Counter()
        self.started: dict[str, float] = {}  # session -> when its start was sent
        self.offered: dict[str, float] = {}  # session -> when its offer arrived (early)
        self.done_at: list[float] = []  # when each lifecycle ended (offsets)
        self.offer_series: dict[int, HdrHistogram] = {}  # second -> enqueue to offer
        self.t0 = 0.0
        self.in_flight: asyncio.Semaphore | None = None
        self.pending: dict[str, asyncio.Future[None]] = {}
        self.answering: set[asyncio.Task[None]] = set()
        self.think = duration_sampler(args.think)
        self.handle = duration_sampler(args.handle)

    def _record(self, name: str, seconds: float) -> None:
        self.hist[name].record_value(max(LOWEST, min(HIGHEST, int(seconds * 1e6))))

    def _error(self, exc: AssignCoreError) -> None:
        self.errors[exc.code.name] += 1

    async def run(self) -> dict[str, Any]:
        args = self.args
        settings = client_settings(args)
        settings.pop("token", None)
        options = [("grpc.use_local_subchannel_pool", 1)]
        # The consoles share connections, 50 streams to each (servers take 100).
        count = max(1, math.ceil(len(self.desk["reps"]) / 50))
        connections = [Connection.from_settings(**settings, options=options) for _ in range(count)]
        portal_conn = Connection.from_settings(**settings, token=self.desk["intake"])
        consoles = [
            Console(connections[i % len(connections)], token=secret)
            for i, secret in enumerate(self.desk["reps"])
        ]
        await asyncio.gather(*(c.start() for c in consoles))
        readers = [asyncio.create_task(self._console(c)) for c in consoles]
        portal = Portal(portal_conn)
        self.in_flight = asyncio.Semaphore(args.concurrency)
        share = args.processes
        process = arrival_process(args.arrivals)
        process = ArrivalProcess(
            process.kind, process.rate / share, process.to_rate / share, process.every,
            max(1, process.size // share) if process.size else 0,
        )  # fmt: skip
        duration = args.duration
        issue_types = self.desk["issue_types"]
        closed = getattr(args, "closed_loop", 0)
        times = [] if closed else process.times(duration, self.rng)
        if args.sessions and not closed:
            times = times[: max(1, args.sessions // share)]
        cpu0, self.t0 = time.process_time(), time.perf_counter()
        lifecycles: list[asyncio.Task[None]] = []
        started = 0
        if closed:
            # A closed loop: each worker starts its next session once its last one
            # ended, for the duration (what saturates a server).

            async def worker(w: int) -> None:
                nonlocal started
                k = w
                while time.perf_counter() - self.t0 < duration:
                    started += 1
                    now = time.perf_counter() - self.t0
                    await self._lifecycle(portal, now, issue_types[k % len(issue_types)])
                    k += closed

            lifecycles = [asyncio.create_task(worker(w)) for w in range(closed)]
        for at in times:
            delay = self.t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            issue_type = issue_types[len(lifecycles) % len(issue_types)]
            lifecycles.append(asyncio.create_task(self._lifecycle(portal, at, issue_type)))
        try:
            # each lifecycle gives up after --drain; this only guards against a hang
            await asyncio.wait_for(asyncio.gather(*lifecycles), args.drain + 30)
        except TimeoutError:
            self.errors["NOT_FINISHED"] += sum(1 for t in lifecycles if not t.done())
        elapsed = time.perf_counter() - self.t0
        cpu = time.process_time() - cpu0
        for task in readers:
            task.cancel()
        await asyncio.gather(*(c.close() for c in consoles), return_exceptions=True)
        for conn in [*connections, portal_conn]:
            await conn.close()
        return {
            "elapsed_s": elapsed,
            "lifecycles": len(self.done_at),
            "arrivals": started if closed else len(times),
            "client_cpu_s": cpu,
            "errors": dict(self.errors),
            "done_at": self.done_at,
            "histograms": {n: base64.b64encode(h.encode()).decode() for n, h in self.hist.items()},
            "offer_series": {
                str(s): base64.b64encode(h.encode()).decode()
                for s, h in sorted(self.offer_series.items())
            },
        }

    async def _lifecycle(self, portal: Portal, at: float, issue_type: str) -> None:
        assert self.in_flight is not None
        async with self.in_flight:
            sent = time.perf_counter()
            try:
                reply = await portal.start(CUSTOMER, issue_type=issue_type)
            except AssignCoreError as exc:
                self._error(exc)
                return
            # The open load: latency counts from when the arrival was due.
            due = self.t0 + at
            self._record("StartSession", time.perf_counter() - sent)
            session = reply.session.id
            finished = asyncio.get_running_loop().create_future()
            self.pending[session] = finished
            early = self.offered.pop(session, None)
            if early is not None:
                self._offered(session, early, due)
            else:
                self.started[session] = due
            try:
                await asyncio.wait_for(finished, self.args.drain)
            except TimeoutError:
                self.errors["NO_OFFER_ANSWERED"] += 1
            finally:
                self.pending.pop(session, None)

    def _offered(self, session: str, when: float, due: float) -> None:
        latency = when - due
        self._record("enqueue_to_offer", latency)
        second = int(when - self.t0)
        series = self.offer_series.get(second)
        if series is None:
            series = self.offer_series[second] = histogram()
        series.record_value(max(LOWEST, min(HIGHEST, int(latency * 1e6))))

    async def _console(self, console: Console) -> None:
        try:
            async for event in console:
                if isinstance(event, OfferMade):
                    now = time.perf_counter()
                    session = event.session.id
                    due = self.started.pop(session, None)
                    if due is None:
                        self.offered[session] = now  # the start's reply is not back yet
                    else:
                        self._offered(session, now, due)
                    task = asyncio.get_running_loop().create_task(self._answer(console, event, now))
                    self.answering.add(task)  # held until done (the loop keeps weak ones)
                    task.add_done_callback(self.answering.discard)
        except AssignCoreError as exc:
            self._error(exc)

    async def _answer(self, console: Console, offer: OfferMade, seen: float) -> None:
        args = self.args
        await asyncio.sleep(self.think(self.rng))
        draw = self.rng.random()
        if draw >= args.accept + args.reject:
            return  # let it time out: the server offers it to someone else
        sent = time.perf_counter()
        try:
            session = await console.answer(offer.offer_id, accept=draw < args.accept)
        except AssignCoreError as exc:
            self._error(exc)
            return
        now = time.perf_counter()
        self._record("AnswerOffer", now - sent)
        if session is None:
            return
        self._record("offer_to_answer", now - seen)
        await asyncio.sleep(self.handle(self.rng))
        sent = time.perf_counter()
        try:
            await console.end(session.id)
        except AssignCoreError as exc:
            self._error(exc)
            return
        self._record("EndSession", time.perf_counter() - sent)
        self.done_at.append(time.perf_counter() - self.t0)
        finished = self.pending.get(session.id)
        if finished is not None and not finished.done():
            finished.set_result(None)


# ----------------------------------------------------------------------- server metrics


def scrape(url: str) -> dict[str, float]:
    """The metric samples of a Prometheus text page, by name and labels."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                continue
    return out


def server_share(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """The server's own time per start command and per journal commit over the run."""

    def delta(name: str, label: str = "") -> float:
        return sum(
            value - before.get(key, 0.0)
            for key, value in after.items()
            if key.split("{")[0] == name and label in key
        )

    command = "assigncore_engine_command_seconds"
    starts = delta(f"{command}_count", 'command="start_from_issue"')
    start_sum = delta(f"{command}_sum", 'command="start_from_issue"')
    commits = delta("assigncore_journal_commit_seconds_count")
    commit_sum = delta("assigncore_journal_commit_seconds_sum")
    return {
        "start_commands": int(starts),
        "engine_us_per_start": round(start_sum / starts * 1e6, 1) if starts else None,
        "journal_commits": int(commits),
        "journal_commit_us_mean": round(commit_sum / commits * 1e6, 1) if commits else None,
    }


# ----------------------------------------------------------------------- the run


def merge(parts: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    hists = {name: histogram() for name in HISTOGRAMS}
    series: dict[int, HdrHistogram] = {}
    errors: Counter[str] = Counter()
    done_at: list[float] = []
    for part in parts:
        for name, data in part["histograms"].items():
            hists[name].add(HdrHistogram.decode(base64.b64decode(data)))
        for second, data in part["offer_series"].items():
            series.setdefault(int(second), histogram()).add(
                HdrHistogram.decode(base64.b64decode(data))
            )
        errors.update(part["errors"])
        done_at += part["done_at"]
    lifecycles = sum(p["lifecycles"] for p in parts)
    elapsed = max(p["elapsed_s"] for p in parts)
    cpu = sum(p["client_cpu_s"] for p in parts)
    window = max(1e-3, min(elapsed, args.duration))
    seconds = int(math.ceil(elapsed))
    per_second = [0] * max(1, seconds)
    for t in done_at:
        per_second[min(int(t), len(per_second) - 1)] += 1
    return {
        "config": {
            "arrivals": args.arrivals,
            "duration_s": args.duration,
            "sessions": args.sessions,
            "reps_per_process": args.reps,
            "team_size": args.team_size,
            "processes": args.processes,
            "concurrency": args.concurrency,
            "accept": args.accept,
            "reject": args.reject,
            "think": args.think,
            "handle": args.handle,
        },
        "arrivals": sum(p["arrivals"] for p in parts),
        "lifecycles": lifecycles,
        "elapsed_s": round(elapsed, 3),
        # over the arrivals' window (stragglers after it, waiting for an offer to time
        # out, would dilute the rate)
        "lifecycles_per_s": round(sum(1 for t in done_at if t <= window) / window, 1),
        "closed_loop": getattr(args, "closed_loop", 0),
        "errors": dict(errors),
        "client_cpu_ms_per_lifecycle": round(cpu / lifecycles * 1e3, 3) if lifecycles else None,
        "latency_us": {name: summary(h) for name, h in hists.items()},
        "series": {
            "lifecycles_per_s": per_second,
            "enqueue_to_offer_p50_us": [
                series[s].get_value_at_percentile(50) if s in series else None
                for s in range(len(per_second))
            ],
            "enqueue_to_offer_p99_us": [
                series[s].get_value_at_percentile(99) if s in series else None
                for s in range(len(per_second))
            ],
        },
        "histograms": {n: base64.b64encode(h.encode()).decode() for n, h in hists.items()},
    }


def summary(h: HdrHistogram) -> dict[str, Any]:
    if not h.get_total_count():
        return {"count": 0}
    return {
        "count": h.get_total_count(),
        "p50": h.get_value_at_percentile(50),
        "p90": h.get_value_at_percentile(90),
        "p99": h.get_value_at_percentile(99),
        "p999": h.get_value_at_percentile(99.9),
        "max": h.get_max_value(),
    }


async def _setup(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.issue_type:  # the desk's own shape: its issue type, reps and portal token
        reps = [line.strip() for line in Path(args.rep_tokens).read_text().splitlines()]
        reps = [r for r in reps if r and not r.startswith("#")]
        if not reps:
            raise ValueError(f"{args.rep_tokens}: no rep tokens")
        args.reps = len(reps)
        return [{"issue_types": [args.issue_type], "intake": args.intake_token, "reps": reps}]
    async with Connection.from_settings(**client_settings(args)) as conn:
        return await create_desk(Admin(conn), args.processes, args.reps, args.team_size)


def run(args: argparse.Namespace) -> dict[str, Any]:
    desks = asyncio.run(_setup(args))
    before = scrape(args.metrics) if args.metrics else None
    if args.processes == 1:
        parts = [asyncio.run(Part(args, desks[0], 0).run())]
    else:
        parts = _run_processes(args, desks)
    result = merge(parts, args)
    if before is not None:
        result["server"] = server_share(before, scrape(args.metrics))
    return result


def _run_processes(args: argparse.Namespace, desks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for k, desk in enumerate(desks):
            spec = os.path.join(tmp, f"part-{k}.json")
            with open(spec, "w") as f:
                json.dump({"args": vars(args), "desk": desk, "index": k}, f)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "assigncore_server.tools.bench", spec],
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        return [json.loads(p.communicate()[0]) for p in procs]


def _part_main(spec_path: str) -> None:
    """A child process: one part, its result as JSON on stdout."""
    with open(spec_path) as f:
        spec = json.load(f)
    args = argparse.Namespace(**spec["args"])
    print(json.dumps(asyncio.run(Part(args, spec["desk"], spec["index"]).run())))


# ----------------------------------------------------------------------- output


def text(result: dict[str, Any]) -> str:
    lines = [
        f"{result['lifecycles']} lifecycles of {result['arrivals']} arrivals in "
        f"{result['elapsed_s']:.1f} s: {result['lifecycles_per_s']} lifecycles/s",
        f"load generator CPU: {result['client_cpu_ms_per_lifecycle']} ms per lifecycle",
        "",
        f"{'latency (ms)':<18}{'count':>8}{'p50':>9}{'p90':>9}{'p99':>9}{'p99.9':>9}{'max':>9}",
    ]
    for name, s in result["latency_us"].items():
        if not s.get("count"):
            continue
        cells = "".join(f"{s[k] / 1000:>9.2f}" for k in ("p50", "p90", "p99", "p999", "max"))
        lines.append(f"{name:<18}{s['count']:>8}{cells}")
    if result["errors"]:
        lines += ["", "errors: " + ", ".join(f"{k} {v}" for k, v in result["errors"].items())]
    server = result.get("server")
    if server and server.get("engine_us_per_start") is not None:
        offer = result["latency_us"]["enqueue_to_offer"].get("p50")
        lines += [
            "",
            f"server: {server['engine_us_per_start']} us of engine time per start (its "
            f"assignment pass included), journal commits {server['journal_commit_us_mean']} "
            f"us on average; enqueue to offer p50 {offer} us end to end",
        ]
    return "\n".join(lines)


def plot(results: list[tuple[str, dict[str, Any]]], path: str) -> None:
    """Latency percentiles over time, the latency CDF and throughput over time; one
    column per result (compare puts two side by side)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, len(results), figsize=(6 * len(results), 9), squeeze=False)
    for col, (label, result) in enumerate(results):
        series = result["series"]
        x = list(range(len(series["lifecycles_per_s"])))
        ax = axes[0][col]
        for key, name in (("enqueue_to_offer_p50_us", "p50"), ("enqueue_to_offer_p99_us", "p99")):
            ys = [float("nan") if v is None else v / 1000 for v in series[key]]
            ax.plot(x, ys, label=name)
        ax.set_title(f"{label}: enqueue to offer (ms) over time")
        ax.legend()
        ax.grid(alpha=0.3)
        ax = axes[1][col]
        for name in ("enqueue_to_offer", "offer_to_answer", "StartSession", "AnswerOffer"):
            data = result["histograms"].get(name)
            if not data:
                continue
            h = HdrHistogram.decode(base64.b64decode(data))
            if not h.get_total_count():
                continue
            points = [(i.value_iterated_to / 1000, i.percentile / 100) for i in
                      h.get_percentile_iterator(5)]  # fmt: skip
            ax.plot([p[0] for p in points], [p[1] for p in points], label=name)
        ax.set_xscale("log")
        ax.set_title("latency CDF (ms)")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        ax = axes[2][col]
        ax.plot(x, series["lifecycles_per_s"])
        ax.set_title("lifecycles per second")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def compare(a: dict[str, Any], b: dict[str, Any]) -> str:
    rows = [("lifecycles/s", a["lifecycles_per_s"], b["lifecycles_per_s"])]
    cpu = "client_cpu_ms_per_lifecycle"
    rows.append(("client CPU ms/lifecycle", a[cpu], b[cpu]))
    for name in HISTOGRAMS:
        for p in ("p50", "p99"):
            va, vb = a["latency_us"][name].get(p), b["latency_us"][name].get(p)
            rows.append((f"{name} {p} (us)", va, vb))
    lines = [f"{'':<28}{'A':>12}{'B':>12}{'B/A':>8}"]
    for label, va, vb in rows:
        ratio = f"{vb / va:.2f}" if va and vb is not None else "-"
        shown_a = "-" if va is None else va
        shown_b = "-" if vb is None else vb
        lines.append(f"{label:<28}{shown_a:>12}{shown_b:>12}{ratio:>8}")
    return "\n".join(lines)


def add_bench_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="a load generator against a running server")
    p.add_argument("what", nargs="*", help="`compare A.json B.json` to compare two runs")
    add_connection_arguments(p, "an admin's")
    p.add_argument("--reps", type=int, default=50, help="consoles per client process")
    p.add_argument(
        "--team-size", type=int, default=10,
        help="reps per synthetic team (each rep's console hears of its team's queue)",
    )  # fmt: skip
    p.add_argument("--arrivals", default="poisson:20", help="poisson:R, constant:R, ...")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals")
    p.add_argument("--sessions", type=int, default=0, help="stop after this many arrivals")
    p.add_argument("--concurrency", type=int, default=64, help="lifecycles in flight")
    p.add_argument(
        "--closed-loop", type=int, default=0, metavar="WORKERS",
        help="instead of --arrivals: WORKERS each start a session when their last ended",
    )  # fmt: skip
    p.add_argument("--accept", type=float, default=1.0, help="probability of accepting")
    p.add_argument("--reject", type=float, default=0.0, help="probability of rejecting")
    p.add_argument("--think", default="0", help="seconds before answering (or exp:MEAN)")
    p.add_argument("--handle", default="0", help="seconds a session is handled (or exp:MEAN)")
    p.add_argument("--processes", type=int, default=1, help="client processes")
    p.add_argument("--metrics", help="the server's /metrics URL, for its decision latency")
    p.add_argument("--issue-type", help="drive this issue type of the desk (no synthetic desk)")
    p.add_argument("--rep-tokens", help="with --issue-type: a file of rep tokens, one a line")
    p.add_argument("--intake-token", help="with --issue-type: the portal's token")
    p.add_argument("--drain", type=float, default=60.0, help="seconds to wait for stragglers")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", metavar="FILE", help="write the result as JSON")
    p.add_argument("--plot", metavar="FILE", help="write the plots as a PNG")


def bench_command(args: argparse.Namespace) -> int:
    if args.what:
        if len(args.what) != 3 or args.what[0] != "compare":
            print("assigncore bench: `bench compare A.json B.json`", file=sys.stderr)
            return 2
        try:
            results = [(path, json.loads(Path(path).read_text())) for path in args.what[1:]]
        except (OSError, ValueError) as exc:
            print(f"assigncore bench: {exc}", file=sys.stderr)
            return 2
        print(compare(results[0][1], results[1][1]))
        if args.plot:
            plot(results, args.plot)
        return 0
    try:
        arrival_process(args.arrivals)
        duration_sampler(args.think), duration_sampler(args.handle)
        if not (args.accept >= 0 and args.reject >= 0 and args.accept + args.reject <= 1):
            raise ValueError("--accept + --reject is at most 1")
        if min(args.reps, args.processes, args.concurrency, args.team_size) < 1 or (
            args.duration <= 0
        ):
            raise ValueError(
                "--reps, --team-size, --processes, --concurrency and --duration are positive"
            )
        if args.closed_loop < 0:
            raise ValueError("--closed-loop is a number of workers")
        if args.issue_type and not (args.rep_tokens and args.intake_token):
            raise ValueError("--issue-type needs --rep-tokens and --intake-token")
        if args.issue_type and args.processes != 1:
            # offers for one process's sessions could reach another's consoles
            raise ValueError("an existing desk is driven from one process")
        result = run(args)
    except (ValueError, OSError) as exc:
        print(f"assigncore bench: {exc}", file=sys.stderr)
        return 2
    except AssignCoreError as exc:
        print(f"assigncore bench: {exc.code.name}: {exc.message}", file=sys.stderr)
        return 1
    print(text(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if args.plot:
        plot([("run", result)], args.plot)
    return 0 if result["lifecycles"] else 1


if __name__ == "__main__":
    _part_main(sys.argv[1])
