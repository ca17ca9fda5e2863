"""Where a session's lifecycle (start -> offer -> accept -> end) costs, layer by layer,
in one process and without gRPC, on the desk of benchmarks/e2e.py (1,000 team queues,
1,000 reps; statistics on):

- engine: the engine's commands alone (no consoles, no journal);
- + fan-out: every rep has a console stream attached; each command's events are
  built, encoded once and put in the outboxes (taken away after each lifecycle, as the
  streams' writers would);
- + journal: the commands through the desk's runtime, each followed by the wait for its
  journal entry (SQLite, synchronous=FULL), as a reply waits: 64 lifecycles in flight;
- + servicers: the same through the servicers' handlers (StartSession, AnswerOffer,
  EndSession) with their checks, idempotency, conversions and reply messages.

Each figure is CPU time of the process (all its threads) per lifecycle, the median of
`--rounds` rounds that alternate the layers. With the journal, the wait from a command
to its entry being durable is also given at one lifecycle in flight (the hand-off to the
writer thread, the commit, the hand-off back), beside the disk's own fsync.

    python benchmarks/layers.py --json           # about a minute
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from assigncore.model import Customer
from assigncore.v1 import common_pb2 as pb
from assigncore.v1 import console_service_pb2 as cpb
from assigncore.v1 import intake_service_pb2 as ipb
from assigncore_server import config
from assigncore_server.api import calls
from assigncore_server.api.console import ConsoleServicer
from assigncore_server.api.intake import IntakeServicer
from assigncore_server.desk.runtime import Runtime

sys.path.insert(0, str(Path(__file__).parent))
from e2e import INTAKE, desk, fsync_p50, rep_token  # noqa: E402

CUSTOMER = Customer("bench")
IN_FLIGHT = 64


class Context:
    """What a unary handler asks of its call's context, outside gRPC."""

    def __init__(self) -> None:
        self.trailers: tuple[Any, ...] = ()

    def trailing_metadata(self) -> tuple[Any, ...]:
        return self.trailers

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailers = tuple(metadata)

    async def abort(self, code: Any, details: str = "", trailers: Any = ()) -> None:
        raise RuntimeError(f"{code}: {details}")


def runtime(tmp: str, n: int, journal: bool) -> Runtime:
    settings = config.parse(desk(n, journal, operations=False), "layers desk")
    settings.storage_path = str(Path(tempfile.mkdtemp(dir=tmp)) / "desk.sqlite3")
    settings.snapshot_every = 0
    config.check(settings)
    rt = Runtime(settings)
    for i in range(n):  # signed in, as their consoles would
        rt.command(rt.engine.connect, f"r{i}")
    return rt


def engine_lifecycle(rt: Runtime, i: int) -> None:
    e = rt.engine
    s = e.start_from_issue(f"i{i}", CUSTOMER).value
    offer = e.offer(e.session(s.id).offer)
    e.answer_offer(offer.rep_id, offer.id, True)
    e.end_session(offer.rep_id, s.id)


def cpu_per(fn: Any, count: int) -> float:
    t0 = time.process_time()
    fn(count)
    return (time.process_time() - t0) / count * 1e6


def engine_alone(rt: Runtime, n: int, count: int) -> float:
    engine = rt.engine
    engine.state.listener = None  # no consoles: events go nowhere
    engine.on_settled = None
    engine.on_command = None  # nothing recorded

    def run(k: int) -> None:
        for j in range(k):
            engine_lifecycle(rt, j % n)

    return cpu_per(run, count)


def attach(rt: Runtime, n: int) -> list[Any]:
    """A console stream for every rep, as their consoles would have."""
    return [rt.hub.attach(f"r{i}", f"t{i}") for i in range(n)]


def with_fan_out(rt: Runtime, n: int, count: int) -> float:
    streams = attach(rt, n)

    def run(k: int) -> None:
        for j in range(k):
            engine_lifecycle(rt, j % n)
            if j % 100 == 99:  # the writers' part, taken out of the count below
                for s in streams:
                    s.outbox.clear()

    return cpu_per(run, count)


async def with_journal(rt: Runtime, n: int, count: int) -> tuple[float, float]:
    """CPU per lifecycle with IN_FLIGHT in flight; the median wait for durability of a
    start at one in flight."""
    e = rt.engine

    async def lifecycle(i: int) -> None:
        s = rt.command(e.start_from_issue, f"i{i}", CUSTOMER).value
        await rt.durable()
        offer = e.offer(e.session(s.id).offer)
        rt.command(e.answer_offer, offer.rep_id, offer.id, True)
        await rt.durable()
        rt.command(e.end_session, offer.rep_id, s.id)
        await rt.durable()

    async def worker(w: int, k: int) -> None:
        mine = range(w, n, IN_FLIGHT)  # each worker its own reps
        for j in range(k):
            await lifecycle(mine[j % len(mine)])

    per = count // IN_FLIGHT
    t0 = time.process_time()
    await asyncio.gather(*(worker(w, per) for w in range(IN_FLIGHT)))
    cpu = (time.process_time() - t0) / (per * IN_FLIGHT) * 1e6
    waits = []
    for j in range(300):
        s = rt.command(e.start_from_issue, f"i{j % n}", CUSTOMER).value
        t0 = time.perf_counter()
        await rt.durable()
        waits.append(time.perf_counter() - t0)
        rt.command(e.cancel_session, s.id)
        await rt.durable()
    return cpu, statistics.median(waits) * 1e6


async def with_servicers(rt: Runtime, n: int, count: int) -> float:
    intake, console = IntakeServicer(), ConsoleServicer()
    portal = rt.principal(INTAKE)
    reps = [rt.principal(rep_token(i)) for i in range(n)]
    calls.current_runtime.set(rt)
    calls.current_peer.set("ipv4:127.0.0.1:1")
    seq = 0

    async def lifecycle(i: int) -> None:
        nonlocal seq
        seq += 1
        calls.current_principal.set(portal)  # type: ignore[arg-type]
        started = await intake.StartSession(
            ipb.StartSessionRequest(
                request_id=f"l{seq}", customer=pb.Customer(name="bench"), issue_type_id=f"i{i}"
            ),
            Context(),
        )
        session = rt.engine.session(started.session.id)
        calls.current_principal.set(reps[i])  # type: ignore[arg-type]
        await console.AnswerOffer(
            cpb.AnswerOfferRequest(offer_id=session.offer, accept=True), Context()
        )
        await console.EndSession(cpb.EndSessionRequest(session_id=session.id), Context())

    async def worker(w: int, k: int) -> None:
        mine = range(w, n, IN_FLIGHT)  # each worker its own reps
        for j in range(k):
            # each lifecycle a task with a context of its own, as each call has
            await asyncio.create_task(lifecycle(mine[j % len(mine)]))

    per = count // IN_FLIGHT
    t0 = time.process_time()
    await asyncio.gather(*(worker(w, per) for w in range(IN_FLIGHT)))
    return (time.process_time() - t0) / (per * IN_FLIGHT) * 1e6


async def measure(n: int, count: int, rounds: int) -> dict[str, Any]:
    figures: dict[str, list[float]] = {
        "engine": [],
        "fan_out": [],
        "journal": [],
        "servicers": [],
        "durable_wait": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        fsync = fsync_p50(Path(tmp)) * 1e6
        for _ in range(rounds):
            rt = runtime(tmp, n, journal=False)
            figures["engine"].append(engine_alone(rt, n, count))
            rt.close_storage()
            rt = runtime(tmp, n, journal=False)
            figures["fan_out"].append(with_fan_out(rt, n, count))
            rt.close_storage()
            rt = runtime(tmp, n, journal=True)
            attach(rt, n)  # the consoles attached, as above
            cpu, wait = await with_journal(rt, n, count)
            figures["journal"].append(cpu)
            figures["durable_wait"].append(wait)
            await asyncio.sleep(0.1)
            rt.close_storage()
            rt = runtime(tmp, n, journal=True)
            attach(rt, n)
            figures["servicers"].append(await with_servicers(rt, n, count))
            await asyncio.sleep(0.1)
            rt.close_storage()
    med = {k: round(statistics.median(v), 1) for k, v in figures.items()}
    return {
        "cpu_us_per_lifecycle": {
            "engine": med["engine"],
            "engine+fan_out": med["fan_out"],
            "engine+fan_out+journal": med["journal"],
            "engine+fan_out+journal+servicers": med["servicers"],
        },
        "added_by": {
            "fan_out": round(med["fan_out"] - med["engine"], 1),
            "journal": round(med["journal"] - med["fan_out"], 1),
            "servicers": round(med["servicers"] - med["journal"], 1),
        },
        "durable_wait_p50_us": med["durable_wait"],
        "fsync_p50_us": round(fsync, 1),
        "rounds": rounds,
        "lifecycles_per_round": count,
    }


def main() -> None:
    logging.getLogger("assigncore").setLevel(logging.ERROR)  # the memory-mode warning
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--reps", type=int, default=1000)
    parser.add_argument("--lifecycles", type=int, default=6400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    result = asyncio.run(measure(args.reps, args.lifecycles, args.rounds))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
