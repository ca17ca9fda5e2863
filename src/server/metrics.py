"""Prometheus metrics over HTTP on a port of their own (`[metrics] listen`).

Measured as things happen (histograms, observed on the event loop or the journal's
writer thread):

- `grpc_server_handling_seconds{grpc_type, grpc_service, grpc_method, grpc_code}`:
  every call, from its headers to its status (a stream: its whole life). The names of
  go-grpc-prometheus, so existing gRPC dashboards read them; `_count` by code is the
  call count.
- `assigncore_engine_command_seconds{command}`: each engine command (`advance` is a
  pass of timers), its assignment passes included, its fan-out not.
- `assigncore_engine_assignment_pass_seconds`: each assignment pass.
- `assigncore_journal_commit_seconds` and `assigncore_journal_commit_records`: each
  group commit's write and fsync, and how many records it made durable.

Read from the desk when scraped (computed on the event loop, so they are consistent
with each other and never race a command):

- per queue (teams' queues, the general queue, and every personal queue added up as
  `queue="personal"`): sessions waiting, the longest current wait, sessions by outcome
  since midnight in the desk's time zone (a counter that resets at midnight, which
  `rate()` handles like a restart), service level, average speed of answer and handle
  time over 15 min, 1 h and today;
- reps by state, and per team reps staffed, available and busy;
- console streams open and the depths of their outboxes (a histogram over streams);
- whether this process leads the desk (holds its file and serves it), the journal's
  position, records and commits, and authenticated calls in flight.

With `[server] statistics = false` the queue, rep and team series are absent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from assigncore.stats import ALL_PERSONAL, Counts, QueueStatistics, summary

from .config import split_listen

if TYPE_CHECKING:
    from .runtime import Runtime

RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
ENGINE_BUCKETS = (
    1e-5,
    2.5e-5,
    5e-5,
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    1e-2,
    2.5e-2,
    0.1,
    0.5,
)
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
OUTBOX_BUCKETS = (0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)
SCRAPE_TIMEOUT = 5.0  # seconds a scrape waits for the event loop

OUTCOMES = ("arrived", "offered", "accepted", "rejected", "timed_out", "abandoned", "moved")
WINDOWS = (("15m", "last_15_minutes"), ("1h", "last_hour"), ("today", "today"))


class Metrics:
    """The server's registry, the histograms it observes, and the HTTP endpoint.
    Passed to the engine as its `timings` and to the journal as its `on_commit`."""

    def __init__(self, runtime: Runtime) -> None:
        disable_created_metrics()  # no `_created` series: they double what is scraped
        self.registry = CollectorRegistry(auto_describe=False)
        registry = self.registry
        self.rpc = Histogram(
            "grpc_server_handling_seconds",
            "gRPC calls, from their headers to their status (streams: their whole life)",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            buckets=RPC_BUCKETS,
            registry=registry,
        )
        self.commands = Histogram(
            "assigncore_engine_command_seconds",
            "Engine commands, their assignment passes included (advance: a pass of timers)",
            ["command"],
            buckets=ENGINE_BUCKETS,
            registry=registry,
        )
        self.assignment_pass = Histogram(
            "assigncore_engine_assignment_pass_seconds",
            "Assignment passes",
            buckets=ENGINE_BUCKETS,
            registry=registry,
        )
        self.commit = Histogram(
            "assigncore_journal_commit_seconds",
            "Journal group commits: writing their records and the fsync",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self.batch = Histogram(
            "assigncore_journal_commit_records",
            "Records made durable per journal commit",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self._rpc: dict[tuple[tuple[str, str, str], str], Any] = {}
        self._commands: dict[str, Any] = {}
        self._collector = DeskCollector(runtime)
        registry.register(self._collector)
        self._httpd: Any = None
        self.port = 0

    # ------------------------------------------------------------- observing

    def rpc_done(self, method: tuple[str, str, str], code: str, seconds: float) -> None:
        child = self._rpc.get((method, code))
        if child is None:
            child = self._rpc[method, code] = self.rpc.labels(*method, code)
        child.observe(seconds)

    def command(self, name: str, seconds: float) -> None:
        child = self._commands.get(name)
        if child is None:
            child = self._commands[name] = self.commands.labels(name)
        child.observe(seconds)

    def assignment(self, seconds: float) -> None:
        self.assignment_pass.observe(seconds)

    def journal_commit(self, seconds: float, records: int) -> None:
        self.commit.observe(seconds)
        self.batch.observe(records)

    # ------------------------------------------------------------- serving

    def serve(self, listen: str) -> int:
        """Starts the HTTP endpoint (a thread); returns its port (port 0 picks one)."""
        self._collector.loop = asyncio.get_running_loop()
        host, port = split_listen(listen)
        self._httpd, _ = start_http_server(port, host, registry=self.registry)
        self.port = self._httpd.server_port
        return self.port

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


class DeskCollector(Collector):
    """The series read from the desk at each scrape (see the module's docstring)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.loop: asyncio.AbstractEventLoop | None = None

    def describe(self) -> Iterable[Any]:
        return ()  # nothing to check for clashes at registration: computed per scrape

    def collect(self) -> Iterator[Any]:
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            yield from self.gather()
            return

        async def gather() -> list[Any]:
            return self.gather()

        future = asyncio.run_coroutine_threadsafe(gather(), loop)
        try:
            families = future.result(SCRAPE_TIMEOUT)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            future.cancel()  # the loop is stuck or stopping: this scrape has no desk series
            return
        yield from families

    def gather(self) -> list[Any]:
        """Every desk series, now (on the event loop)."""
        rt = self.runtime
        families: list[Any] = []
        st = rt.engine.state
        if st.stats.enabled:
            families += _desk_families(summary(st))
        families += self._streams(rt)
        desk = os.path.basename(rt.storage.path) if rt.storage is not None else "memory"
        leader = GaugeMetricFamily(
            "assigncore_desk_leader",
            "1 while this process holds the desk and serves it (0: refusing calls while "
            "its journal cannot be written)",
            labels=["desk"],
        )
        leader.add_metric([desk], 0.0 if rt.failed else 1.0)
        families.append(leader)
        if rt.storage is not None:
            journal = rt.storage.journal
            families.append(
                GaugeMetricFamily(
                    "assigncore_journal_position",
                    "Position of the last durable journal record",
                    value=journal.last_position,
                )
            )
            families.append(
                CounterMetricFamily(
                    "assigncore_journal_records",
                    "Records made durable since the start",
                    value=journal.stats.records,
                )
            )
            families.append(
                CounterMetricFamily(
                    "assigncore_journal_commits",
                    "Journal commits (fsyncs) since the start",
                    value=journal.stats.commits,
                )
            )
        if rt.gate is not None:
            families.append(
                GaugeMetricFamily(
                    "assigncore_rpcs_in_flight",
                    "Authenticated calls in flight, console streams included",
                    value=rt.gate.authenticated,
                )
            )
        return families

    @staticmethod
    def _streams(rt: Runtime) -> list[Any]:
        hub = rt.hub
        depths = sorted(len(f.stream.outbox) for f in hub.feeds.values() if f.stream is not None)
        buckets, i = [], 0
        for bound in OUTBOX_BUCKETS:
            while i < len(depths) and depths[i] <= bound:
                i += 1
            buckets.append((floatToGoString(bound), i))
        buckets.append(("+Inf", len(depths)))
        outbox = HistogramMetricFamily(
            "assigncore_console_outbox_events",
            "Events waiting in each open console stream's outbox (a histogram over streams)",
            buckets=buckets,
            sum_value=sum(depths),
        )
        streams = GaugeMetricFamily(
            "assigncore_console_streams", "Console streams open", value=len(depths)
        )
        limit = GaugeMetricFamily(
            "assigncore_console_outbox_limit",
            "Events an outbox holds before its stream ends (RESOURCE_EXHAUSTED)",
            value=hub.outbox_limit,
        )
        return [streams, outbox, limit]


def _queue_label(q: QueueStatistics) -> str:
    return "personal" if q.queue == ALL_PERSONAL else str(q.queue)


def _desk_families(desk: Any) -> list[Any]:
    waiting = GaugeMetricFamily(
        "assigncore_queue_waiting_sessions", "Sessions waiting in the queue", labels=["queue"]
    )
    longest = GaugeMetricFamily(
        "assigncore_queue_longest_wait_seconds",
        "How long the longest waiting session has waited in the queue",
        labels=["queue"],
    )
    outcomes = CounterMetricFamily(
        "assigncore_queue_sessions",
        "Sessions by outcome since midnight in the desk's time zone (resets then)",
        labels=["queue", "outcome"],
    )
    level = GaugeMetricFamily(
        "assigncore_queue_service_level_ratio",
        "Share of the sessions answered or abandoned that were answered within the "
        "queue's threshold",
        labels=["queue", "window"],
    )
    answer = GaugeMetricFamily(
        "assigncore_queue_speed_of_answer_seconds",
        "Average wait of the sessions answered",
        labels=["queue", "window"],
    )
    handle = GaugeMetricFamily(
        "assigncore_queue_handle_time_seconds",
        "Average handle time of the sessions whose handling ended",
        labels=["queue", "window"],
    )
    for q in desk.queues:
        name = _queue_label(q)
        waiting.add_metric([name], q.waiting)
        longest.add_metric([name], q.longest_wait)
        today: Counts = q.today
        for outcome in OUTCOMES:
            outcomes.add_metric([name, outcome], getattr(today, outcome))
        for window, field in WINDOWS:
            counts: Counts = getattr(q, field)
            for family, value in (
                (level, counts.service_level),
                (answer, counts.average_speed_of_answer),
                (handle, counts.average_handle_time),
            ):
                if value is not None:
                    family.add_metric([name, window], value)
    reps = GaugeMetricFamily("assigncore_reps", "Reps by state", labels=["state"])
    for state, count in desk.reps.items():
        reps.add_metric([state.value.lower()], count)
    teams = GaugeMetricFamily(
        "assigncore_team_reps",
        "Team members signed in (staffed), available, and handling sessions (busy)",
        labels=["team", "state"],
    )
    for t in desk.teams:
        teams.add_metric([t.team_id, "staffed"], t.staffed)
        teams.add_metric([t.team_id, "available"], t.available)
        teams.add_metric([t.team_id, "busy"], t.busy)
    return [waiting, longest, outcomes, level, answer, handle, reps, teams]
