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

Read from the desk when scraped (on the event loop, so they are consistent with each
other and never race a command):

- per queue (teams' queues, the general queue, and every personal queue added up as
  `queue="personal"`): sessions waiting, the longest current wait and the service-level
  threshold (gauges); since midnight in the desk's time zone (counters that reset at
  midnight, which `rate()` and `increase()` handle like a restart): sessions by outcome
  (arrived, offered, accepted, rejected, timed_out, abandoned, moved), those answered
  within the threshold, the waits of those answered and the handle times of those
  handled, added up. Any window's service level, average speed of answer and handle
  time follow from these, e.g. over 15 minutes:

      sum by (queue) (increase(assigncore_queue_answered_within_threshold_total[15m]))
        / sum by (queue) (increase(
            assigncore_queue_sessions_total{outcome=~"accepted|abandoned"}[15m]))

- reps by state, and per team reps staffed, available and busy;
- console streams open and the depths of their outboxes (a histogram over streams);
- whether this process leads the desk (holds its file and serves it), the journal's
  position, records and commits, and authenticated calls in flight.

With `[server] statistics = false` the queue, rep and team series are absent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.utils import floatToGoString

from assigncore import stats
from assigncore.stats import summary

from ..config import split_listen

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

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


class Metrics:
    """The server's registry, the histograms it observes, and the HTTP endpoint.
    Passed to the engine as its `timings` and to the journal as its `on_commit`."""

    def __init__(self, desks: Callable[[], Sequence[Any]]) -> None:
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
            ["desk", "command"],
            buckets=ENGINE_BUCKETS,
            registry=registry,
        )
        self.assignment_pass = Histogram(
            "assigncore_engine_assignment_pass_seconds",
            "Assignment passes",
            ["desk"],
            buckets=ENGINE_BUCKETS,
            registry=registry,
        )
        self.commit = Histogram(
            "assigncore_journal_commit_seconds",
            "Journal group commits: writing their records and the fsync",
            ["desk"],
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self.batch = Histogram(
            "assigncore_journal_commit_records",
            "Records made durable per journal commit",
            ["desk"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self._rpc: dict[tuple[tuple[str, str, str], str], Any] = {}
        self.desk = DeskCollector(desks)
        self._httpd: ThreadingHTTPServer | None = None
        self.port = 0

    # ------------------------------------------------------------- observing

    def rpc_done(self, method: tuple[str, str, str], code: str, seconds: float) -> None:
        child = self._rpc.get((method, code))
        if child is None:
            child = self._rpc[method, code] = self.rpc.labels(*method, code)
        child.observe(seconds)

    def for_desk(self, desk: str) -> DeskTimings:
        """What one desk's engine and journal observe, labelled with the desk."""
        return DeskTimings(self, desk)

    # ------------------------------------------------------------- serving

    def exposition(self) -> bytes:
        """Everything, as one scrape returns it: the histograms, then the desk."""
        return generate_latest(self.registry) + self.desk.text()

    def serve(self, listen: str) -> int:
        """Starts the HTTP endpoint (a thread); returns its port (port 0 picks one)."""
        self.desk.loop = asyncio.get_running_loop()
        host, port = split_listen(listen)
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404, "the metrics are at /metrics")
                    return
                body = metrics.exposition()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                if "gzip" in self.headers.get("Accept-Encoding", ""):
                    body = gzip.compress(body, compresslevel=1)
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a scrape every few seconds is not news

        self._httpd = ThreadingHTTPServer((host or "0.0.0.0", port), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, name="metrics", daemon=True).start()
        self.port = self._httpd.server_address[1]
        return self.port

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


class DeskTimings:
    """The engine's `timings` and the journal's `on_commit` of one desk."""

    def __init__(self, metrics: Metrics, desk: str) -> None:
        self.desk = desk
        self._commands: dict[str, Any] = {}
        self._commands_family = metrics.commands
        self._pass = metrics.assignment_pass.labels(desk)
        self._commit = metrics.commit.labels(desk)
        self._batch = metrics.batch.labels(desk)

    def command(self, name: str, seconds: float) -> None:
        child = self._commands.get(name)
        if child is None:
            child = self._commands[name] = self._commands_family.labels(self.desk, name)
        child.observe(seconds)

    def assignment(self, seconds: float) -> None:
        self._pass.observe(seconds)

    def journal_commit(self, seconds: float, records: int) -> None:
        self._commit.observe(seconds)
        self._batch.observe(records)


class DeskCollector:
    """The series read from the desk at each scrape (see the module's docstring),
    written as exposition text directly: a desk of thousands of queues has tens of
    thousands of them, and prometheus_client's generic writer would spend ~30 µs of
    the event loop's interpreter on each."""

    def __init__(self, desks: Callable[[], Sequence[Any]]) -> None:
        self.desks = desks
        self.loop: asyncio.AbstractEventLoop | None = None

    def text(self) -> bytes:
        """The desk's series, read on the event loop (from another thread: waits for
        it, at most SCRAPE_TIMEOUT); empty if the loop is gone or stuck."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return b""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return self.gather()
        future = asyncio.run_coroutine_threadsafe(self.gather_async(), loop)
        try:
            return future.result(SCRAPE_TIMEOUT)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            future.cancel()  # the loop is stuck or stopping: this scrape has no desk series
            return b""

    def gather(self) -> bytes:
        """Every desk series, now (on the event loop), each labelled with its desk."""
        out = Exposition()
        for _ in self._gather(out):
            pass
        return out.bytes()

    async def gather_async(self) -> bytes:
        """As gather, yielding the loop between slices of the series (a desk of
        thousands of queues has tens of thousands of samples), so that a scrape never
        holds a reply for the whole of it. Each desk's figures are taken at once (one
        summary), and the slices only write them out."""
        out = Exposition()
        for _ in self._gather(out):
            await asyncio.sleep(0)
        return out.bytes()

    def _gather(self, out: Exposition) -> Iterator[None]:
        gate = None
        for rt in self.desks():
            gate = gate or rt.gate
            out.desk = rt.desk_id
            out.family(
                "assigncore_desk_leader",
                "gauge",
                "1 while this process leads the desk and serves it (0: standing by, "
                "loading, or refusing calls while its journal cannot be written)",
            )
            out.sample("assigncore_desk_leader", "", 1 if rt.serving else 0)
            if rt.storage is not None:
                journal = rt.storage.journal
                out.single(
                    "assigncore_journal_position",
                    "gauge",
                    "Position of the last journal record this process holds (applied, on a "
                    "standby)",
                    rt.position,
                )
                if journal is not None:
                    out.single(
                        "assigncore_journal_records_total",
                        "counter",
                        "Records made durable by this process since its start",
                        journal.stats.records,
                    )
                    out.single(
                        "assigncore_journal_commits_total",
                        "counter",
                        "Journal commits (fsyncs) by this process since its start",
                        journal.stats.commits,
                    )
            if rt.ha:
                out.single(
                    "assigncore_desk_epoch",
                    "gauge",
                    "The desk's leadership term as this process last saw it",
                    rt.epoch,
                )
                out.single(
                    "assigncore_standby_lag_records",
                    "gauge",
                    "Records the leader has made durable that this standby has not applied "
                    "yet (0 on the leader)",
                    rt.lag,
                )
            if not rt.serving:
                continue
            st = rt.engine.state
            streams = Exposition()
            streams.desk = rt.desk_id
            _stream_series(streams, rt)  # taken now, with the desk's figures
            if st.stats.enabled:
                desk = summary(st)
                thresholds = [stats.Statistics.threshold(st, q.queue) for q in desk.queues]
                yield  # the figures are taken: the rest only writes them out
                yield from _desk_series(out, desk, thresholds)
            out.merge(streams)
        out.desk = ""
        if gate is not None:
            out.single(
                "assigncore_rpcs_in_flight",
                "gauge",
                "Authenticated calls in flight, console streams included",
                gate.authenticated,
            )


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Exposition:
    """Prometheus text format 0.0.4. Samples are grouped by family, so the desks of one
    process (each labelled `desk`) share one HELP and TYPE per family."""

    def __init__(self) -> None:
        self.families: dict[str, list[str]] = {}
        self._current: list[str] = []
        self.desk = ""  # the desk label every sample gets from here on ("": none)

    @staticmethod
    def labels(**labels: str) -> str:
        return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"

    def family(self, name: str, kind: str, help: str) -> None:
        """HELP and TYPE of `name`, the samples' name (a counter's ends in _total: the
        text format names a family as its samples, OpenMetrics without the suffix)."""
        current = self.families.get(name)
        if current is None:
            current = self.families[name] = [f"# HELP {name} {help}\n# TYPE {name} {kind}\n"]
        self._current = current

    def sample(self, name: str, labels: str, value: float) -> None:
        if self.desk:
            desk = f'desk="{_escape(self.desk)}"'
            labels = f"{{{desk}}}" if not labels else f"{{{desk},{labels[1:]}"
        self._current.append(f"{name}{labels} {value!r}\n")  # finite ints and floats only

    def single(self, name: str, kind: str, help: str, value: float) -> None:
        self.family(name, kind, help)
        self.sample(name, "", value)

    def merge(self, other: Exposition) -> None:
        """Adds the samples of `other` (its families' HELP and TYPE once)."""
        for name, lines in other.families.items():
            mine = self.families.get(name)
            if mine is None:
                self.families[name] = list(lines)
            else:
                mine.extend(lines[1:])

    def bytes(self) -> bytes:
        return "".join(line for lines in self.families.values() for line in lines).encode()


def _stream_series(out: Exposition, rt: Any) -> None:
    hub = rt.hub
    depths = sorted(len(f.stream.outbox) for f in hub.feeds.values() if f.stream is not None)
    out.single("assigncore_console_streams", "gauge", "Console streams open", len(depths))
    name = "assigncore_console_outbox_events"
    out.family(
        name,
        "histogram",
        "Events waiting in each open console stream's outbox (a histogram over streams)",
    )
    i = 0
    for bound in OUTBOX_BUCKETS:
        while i < len(depths) and depths[i] <= bound:
            i += 1
        out.sample(f"{name}_bucket", f'{{le="{floatToGoString(bound)}"}}', i)
    out.sample(f"{name}_bucket", '{le="+Inf"}', len(depths))
    out.sample(f"{name}_sum", "", sum(depths))
    out.sample(f"{name}_count", "", len(depths))
    out.single(
        "assigncore_console_outbox_limit",
        "gauge",
        "Events an outbox holds before its stream ends (RESOURCE_EXHAUSTED)",
        hub.outbox_limit,
    )


# Per queue, since midnight in the desk's time zone (counters that reset then):
# (series, help, slot), and the outcomes of assigncore_queue_sessions_total.
OUTCOMES = (
    ("arrived", stats.ARRIVED),
    ("offered", stats.OFFERED),
    ("accepted", stats.ACCEPTED),
    ("rejected", stats.REJECTED),
    ("timed_out", stats.TIMED_OUT),
    ("abandoned", stats.ABANDONED),
    ("moved", stats.MOVED),
)
QUEUE_COUNTERS = (
    (
        "assigncore_queue_answered_within_threshold_total",
        "Sessions answered within the queue's service-level threshold",
        stats.WITHIN_THRESHOLD,
    ),
    (
        "assigncore_queue_wait_seconds_total",
        "Waits of the sessions answered, added up (over accepted: the average speed of answer)",
        stats.WAIT_SUM,
    ),
    (
        "assigncore_queue_handled_sessions_total",
        "Sessions whose handling ended (ended, transferred away, returned to a queue)",
        stats.HANDLED,
    ),
    (
        "assigncore_queue_handle_seconds_total",
        "Handle times of the sessions handled, added up (over handled: the average handle time)",
        stats.HANDLE_SUM,
    ),
)
TODAY = " since midnight in the desk's time zone (resets then)"


SLICE = 500  # samples written between two yields of the loop


def _desk_series(
    out: Exposition, desk: stats.DeskSummary, thresholds: list[float]
) -> Iterator[None]:
    """Writes the desk's series from its summary; yields every SLICE samples or so."""
    yield
    queues = [
        (q, out.labels(queue="personal" if q.queue == stats.ALL_PERSONAL else str(q.queue)))
        for q in desk.queues
    ]
    out.family("assigncore_queue_waiting_sessions", "gauge", "Sessions waiting in the queue")
    for i, (q, labels) in enumerate(queues):
        out.sample("assigncore_queue_waiting_sessions", labels, q.waiting)
        if i % SLICE == SLICE - 1:
            yield
    name = "assigncore_queue_longest_wait_seconds"
    out.family(name, "gauge", "How long the longest waiting session has waited in the queue")
    for i, (q, labels) in enumerate(queues):
        out.sample(name, labels, q.longest_wait)
        if i % SLICE == SLICE - 1:
            yield
    name = "assigncore_queue_service_level_threshold_seconds"
    out.family(name, "gauge", "Answered within this counts toward the service level")
    for i, ((_, labels), threshold) in enumerate(zip(queues, thresholds, strict=True)):
        out.sample(name, labels, threshold)
        if i % SLICE == SLICE - 1:
            yield
    out.family("assigncore_queue_sessions_total", "counter", "Sessions by outcome" + TODAY)
    for i, (q, labels) in enumerate(queues):
        head = labels[:-1]
        for outcome, slot in OUTCOMES:
            out.sample(
                "assigncore_queue_sessions_total", f'{head},outcome="{outcome}"}}', q.today[slot]
            )
        if i % (SLICE // len(OUTCOMES)) == 0:
            yield
    for name, help, slot in QUEUE_COUNTERS:
        out.family(name, "counter", help + TODAY)
        for i, (q, labels) in enumerate(queues):
            out.sample(name, labels, q.today[slot])
            if i % SLICE == SLICE - 1:
                yield
    out.family("assigncore_reps", "gauge", "Reps by state")
    for state, count in desk.reps.items():
        out.sample("assigncore_reps", out.labels(state=state.value.lower()), count)
    name = "assigncore_team_reps"
    out.family(
        name, "gauge", "Team members signed in (staffed), available, and handling sessions (busy)"
    )
    for team_id, (staffed, available, busy) in desk.teams.items():
        head = out.labels(team=team_id)[:-1]
        out.sample(name, f'{head},state="staffed"}}', staffed)
        out.sample(name, f'{head},state="available"}}', available)
        out.sample(name, f'{head},state="busy"}}', busy)
