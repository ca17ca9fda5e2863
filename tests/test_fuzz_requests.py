"""The request fuzzer: for every RPC of every service, request messages built from the
descriptors by hypothesis (ids of things that exist and of things that do not, empty,
huge and hostile strings, extreme integers, unknown enum numbers, out-of-range
Durations and Timestamps, deep and bogus field masks), sent over a real channel to a
server with a desk file. For every reply:

- it is never UNKNOWN, and its message never names an exception class;
- a refused call leaves the desk as it was (routing state, tokens, idempotency
  entries: compared before and after);
- a changing AdminService or SupervisorService call that succeeds leaves exactly one
  audit entry, and a read leaves none.

The server runs on a loop in a thread of its own; the fuzzer calls it with the
blocking client. Streams: Subscribe and WatchStatistics are read for their first
message; a Connect stream gets a fuzzed action after its subscribe and must answer it.
"""

from __future__ import annotations

import asyncio
import collections
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assigncore.v1 import (
    admin_service_pb2,
    console_service_pb2,
    intake_service_pb2,
    supervisor_service_pb2,
)
from assigncore.v1 import console_service_pb2 as cpb
from assigncore.v1 import intake_service_pb2 as ipb
from assigncore_server import config
from assigncore_server.app import create_server

from .conftest import ManualClock
from .server_harness import ADMIN, DESK, INTAKE, auth, rep_token

F = FieldDescriptor
SERVICES = [
    (console_service_pb2, "RepConsoleService"),
    (intake_service_pb2, "IntakeService"),
    (admin_service_pb2, "AdminService"),
    (supervisor_service_pb2, "SupervisorService"),
]
TOKEN = {
    "RepConsoleService": rep_token("bob"),
    "IntakeService": INTAKE,
    "AdminService": ADMIN,
    "SupervisorService": ADMIN,
}
READS = re.compile(r"^(Get|List|Search|Watch|Inspect|Explain)")
# An exception's class name in a status message: an internal error leaked.
LEAK = re.compile(r"\b\w*(Error|Exception|Traceback)\b|object has no attribute|\bNoneType\b")

EXISTING = ["ann", "bob", "cat", "gil", "support", "skills", "manual", "front", "partner"]
EXISTING += ["general-help", "win", "manual-help", "btn-ann", "btn-support", "link-support"]
# Ids by what a field names, for tame requests (sessions are added once they exist).
TAME_IDS: dict[str, list[str]] = {
    "team_id": ["support", "skills", "manual", "front", "partner"],
    "team_ids": ["support", "skills", "manual", "front", "partner"],
    "rep_id": ["ann", "bob", "cat", "gil"],
    "rep_ids": ["ann", "bob", "cat", "gil"],
    "issue_type_id": ["general-help", "win", "manual-help"],
    "support_button_id": ["btn-ann", "btn-support"],
    "help_link_id": ["link-support"],
    "session_id": [],
    "owner_id": ["support", "ann"],
}
SKILL_NAMES = [f"skill-{i}" for i in range(30)] + ["windows"]
HOSTILE = [
    "",
    " ",
    "x" * 10_000,
    "\u202e<b>evil</b>",
    "a/b/../c",
    "\x00\x01",
    "ses_" + "0" * 25,
    "off_" + "f" * 25,
    "inv_" + "a" * 25,
    "tok_" + "0" * 24,
    "10.0.0.1",
    "::1",
    "😀" * 50,
]
INT32 = [0, 1, -1, 2, 5, 10, 100, 1000, 2**31 - 1, -(2**31)]
INT64 = INT32 + [2**63 - 1, -(2**63), 10**12]
UINT = [0, 1, 2, 5, 100, 2**32 - 1]
UINT64 = UINT + [2**64 - 1, 10**12]


def fresh_id() -> st.SearchStrategy[str]:
    return st.from_regex(r"[a-z][a-z0-9-]{0,11}", fullmatch=True)


def strings(field: FieldDescriptor) -> st.SearchStrategy[str]:
    """Mostly plausible (ids that exist or could, short names), often hostile."""
    name = field.name
    pools: list[st.SearchStrategy[str]] = [st.sampled_from(HOSTILE), st.text(max_size=40)]
    if name == "id" or name.endswith(("_id", "_ids")) or name in ("key", "query"):
        pools += [st.sampled_from(EXISTING)] * 3 + [fresh_id()] * 3
    if name in ("display_name", "name", "text", "description", "company", "details"):
        pools += [st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)] * 4
    if name == "paths":
        pools += [
            st.sampled_from(
                ["display_name", "skills", "permissions", "team_ids", "queue_settings", "team"]
            ),
            st.lists(fresh_id(), min_size=2, max_size=40).map(".".join),  # deep
        ]
    if name == "skill":
        pools.append(st.sampled_from(SKILL_NAMES))
    return st.one_of(*pools)


def tame(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    """A value a well-meaning client would send: ids that exist or could, short names,
    small numbers, known enum values."""
    t, name = field.type, field.name
    if t == F.TYPE_STRING:
        for suffix, pool in TAME_IDS.items():
            if name.endswith(suffix):
                return st.sampled_from(pool) | fresh_id() if pool else fresh_id()
        if name == "id" or name.endswith(("_id", "_ids")) or name == "key":
            return st.one_of(st.sampled_from(EXISTING), fresh_id())
        if name == "paths":
            return st.sampled_from(["display_name", "skills", "permissions", "team_ids"])
        if name == "customer_address":
            return st.sampled_from(["10.0.0.7", "2001:db8::1"])
        if name in ("page_token", "request_id"):
            return st.just("") if name == "page_token" else fresh_id()
        return st.text("abcdefgh ", min_size=1, max_size=12).filter(str.strip)
    if t == F.TYPE_BOOL:
        return st.booleans()
    if t == F.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values if v.number])
    if t in (F.TYPE_STRING, F.TYPE_BYTES, F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return scalar(field)
    return st.integers(1, 5)


def scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return strings(field)
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        valid = st.sampled_from(numbers)
        return st.one_of(valid, valid, valid, st.sampled_from([99, -3, 2**31 - 1]))
    if t in (
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
    ):
        return st.one_of(st.sampled_from(INT32), st.integers(-(2**31), 2**31 - 1))
    if t in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return st.one_of(st.sampled_from(INT64), st.integers(-(2**63), 2**63 - 1))
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.sampled_from(UINT)
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.sampled_from(UINT64)
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    raise AssertionError(f"no strategy for {field.full_name}")


def time_value(kind: str) -> st.SearchStrategy[tuple[int, int]]:
    """(seconds, nanos) of a Duration or Timestamp: sensible, edge and out of range."""
    sensible = st.sampled_from([1, 5, 30, 60, 600, 3600])
    seconds = st.one_of(
        sensible,
        sensible,
        st.sampled_from([0, 86400, -1, 10**12, 2**63 - 1, -(2**63)]),
        st.integers(-(10**6), 10**6),
        st.just(1_800_000_000) if kind == "Timestamp" else st.just(315_576_000_001),
    )
    nanos = st.one_of(
        st.just(0),
        st.just(0),
        st.sampled_from([1, 999_999_999, 2 * 10**9, -1, -(10**9), 2**31 - 1]),
    )
    return st.tuples(seconds, nanos)


@st.composite
def message(draw: st.DrawFn, desc: Any) -> Any:
    """A request: tame throughout (so that calls also succeed and the success paths
    are checked), wild throughout, tame with a wild value here and there (None: a
    request that passes most checks and fails one late), or tame with its Durations and
    Timestamps but one (TIME)."""
    msg = _class(desc)()
    mode = draw(st.sampled_from([False, True, None, TIME]))
    fill(draw, msg, 0, wild=False if mode == TIME else mode)
    if mode == TIME:
        times = list(time_values(msg))
        if times:
            chosen = draw(st.sampled_from(times))
            chosen.seconds, chosen.nanos = draw(st.sampled_from(OUT_OF_RANGE))
    return msg


def time_values(msg: Any) -> Iterator[Any]:
    """Every Duration and Timestamp set in `msg`, at any depth."""
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            values = list(value.values()) if field.message_type.fields[1].message_type else []
        else:
            values = list(value) if field.is_repeated else [value]
        for v in values:
            if v.DESCRIPTOR.full_name in ("google.protobuf.Duration", "google.protobuf.Timestamp"):
                yield v
            else:
                yield from time_values(v)


TIME = "time"  # a mode: tame, but one Duration or Timestamp out of its type's range
OUT_OF_RANGE = [(1, 2 * 10**9), (2**63 - 1, 0), (10**12, 0), (5, -3), (-(2**63), 0), (0, -1)]


def _class(desc: Any) -> Any:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(desc)


def fill(draw: st.DrawFn, msg: Any, depth: int, wild: bool | str | None) -> None:
    desc = msg.DESCRIPTOR
    if desc.full_name in ("google.protobuf.Duration", "google.protobuf.Timestamp"):
        if wild or (wild is None and draw(st.integers(0, 2)) == 0):
            msg.seconds, msg.nanos = draw(time_value(desc.name))
        else:
            base = 1_000_000 if desc.name == "Timestamp" else 0  # the tests' manual clock
            msg.seconds, msg.nanos = base + draw(st.sampled_from([1, 5, 30, 60, 600])), 0
        return
    for field in desc.fields:
        if (
            field.containing_oneof is not None
            or draw(st.integers(0, 3 if wild is True else 7)) == 0
        ):
            continue  # most fields set: a request missing what it needs is one case
        set_field(draw, msg, field, depth, wild)
    for oneof in desc.oneofs:  # at most one member, as a client would send
        choice = draw(st.sampled_from([None, *oneof.fields]))
        if choice is not None:
            set_field(draw, msg, choice, depth, wild)


def set_field(
    draw: st.DrawFn, msg: Any, field: FieldDescriptor, depth: int, wild: bool | str | None
) -> None:
    if wild is None:
        value = scalar if draw(st.integers(0, 4)) == 0 else tame
    else:
        value = scalar if wild else tame
    name = field.name
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key_field, value_field = field.message_type.fields
        target = getattr(msg, name)
        for _ in range(draw(st.integers(0, 3))):
            key = draw(st.sampled_from(SKILL_NAMES) | value(key_field))
            if value_field.message_type is None:
                target[key] = draw(value(value_field))
            else:
                fill(draw, target[key], depth + 1, wild)
        return
    if field.message_type is not None:
        if depth > 4:
            return
        if field.is_repeated:
            for _ in range(draw(st.integers(0, 3))):
                fill(draw, getattr(msg, name).add(), depth + 1, wild)
        else:
            child = getattr(msg, name)
            child.SetInParent()
            fill(draw, child, depth + 1, wild)
        return
    if field.is_repeated:
        getattr(msg, name).extend(draw(st.lists(value(field), max_size=4, unique=not wild)))
    else:
        setattr(msg, name, draw(value(field)))


# ----------------------------------------------------------------- the server


class ServerThread:
    """A live server (manual clock, desk file) on a loop in its own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.scratch = tempfile.TemporaryDirectory(prefix="assigncore-fuzz-")
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(30), "the fuzz server did not start"
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            settings = config.parse(DESK, "fuzz desk")
            settings.storage_path = f"{self.scratch.name}/desk.sqlite3"
            settings.clock, settings.manual_clock = ManualClock(), True
            settings.shutdown_grace = 0.1
            config.check(settings)
            self.server, self.port = await create_server(settings)
            await self.server.start()
            ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def on_loop(self, fn: Any) -> Any:
        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def state(self) -> Any:
        """What a refused call must not change: the routing state, the tokens, the
        idempotency entries (not the audit trail: refusals are audited too)."""

        def read() -> Any:
            rt = self.server.runtime
            tokens = [(r.token_id, r.expires, r.description) for r in rt.tokens.records()]
            return (
                rt.engine.snapshot(),
                tokens,
                sorted(rt.idempotency.entries),
            )

        return self.on_loop(read)

    def settled(self) -> None:
        """Until the server has seen a cancelled console stream end (and handled the
        lost connection): the next example's before and after are not raced by it."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.on_loop(lambda: self.server.runtime.hub.stream_of("bob") is None):
                time.sleep(0.01)  # the connection-lost command is scheduled with call_soon
                self.on_loop(lambda: None)
                return
            time.sleep(0.005)
        raise AssertionError("bob's console stream did not end")

    def audit_seq(self) -> int:
        return self.on_loop(lambda: self.server.runtime.audit.seq)

    def prepare(self) -> None:
        """A few sessions, offers and an active session for the ids to find."""
        intake = _stub(self.channel, intake_service_pb2, "IntakeService")
        for i in range(4):
            intake.StartSession(
                ipb.StartSessionRequest(
                    request_id=f"seed-{i}",
                    customer=_customer(),
                    issue_type_id=["general-help", "manual-help"][i % 2],
                ),
                metadata=auth(INTAKE),
            )
        sessions = self.on_loop(lambda: [s.id for s in self.server.runtime.engine.sessions()])
        EXISTING.extend(s for s in sessions if s not in EXISTING)
        TAME_IDS["session_id"][:] = sessions

    def close(self) -> None:
        self.channel.close()
        asyncio.run_coroutine_threadsafe(self.server.stop(0.1), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.scratch.cleanup()


def _customer() -> Any:
    from assigncore.v1 import common_pb2

    return common_pb2.Customer(name="Carol")


def _stub(channel: grpc.Channel, module: Any, service: str) -> Any:
    grpc_module = __import__(module.__name__ + "_grpc", fromlist=["x"])
    return getattr(grpc_module, f"{service}Stub")(channel)


def methods() -> Iterator[Any]:
    for module, service in SERVICES:
        for method in module.DESCRIPTOR.services_by_name[service].methods:
            yield pytest.param(module, service, method, id=f"{service}.{method.name}")


@pytest.fixture(scope="module")
def live() -> Iterator[ServerThread]:
    server = ServerThread()
    server.prepare()
    yield server
    server.close()
    every = {f"{service}.{m.name}" for _, service, m in (p.values for p in methods())}
    if set(CODES) == every:
        # The whole fuzzer ran: the desk said yes as well as no to most RPCs, so the
        # checks were tried on both paths.
        ok = [name for name, codes in CODES.items() if codes["OK"]]
        refused = [name for name, codes in CODES.items() if sum(codes.values()) > codes["OK"]]
        assert len(ok) >= 0.6 * len(every), sorted(every - set(ok))
        assert len(refused) >= 0.8 * len(every), sorted(every - set(refused))
        print(
            f"\nfuzzer: {EXAMPLES} requests over {len(CODES)} RPCs, {len(ok)} of them answered OK"
        )


def check_status(code: grpc.StatusCode, details: str, where: str) -> None:
    assert code != grpc.StatusCode.UNKNOWN, f"{where}: UNKNOWN {details!r}"
    assert not LEAK.search(details or ""), f"{where}: leaked {details!r}"


def call(live: ServerThread, module: Any, service: str, method: Any, request: Any) -> Any:
    """Sends `request`; (status code, details)."""
    stub = _stub(live.channel, module, service)
    rpc = getattr(stub, method.name)
    md = auth(TOKEN[service])
    try:
        if method.client_streaming and method.name == "Intake":  # one call, its result
            replies = rpc(iter([request]), metadata=md, timeout=10)
            for result in replies:
                check_status(
                    grpc.StatusCode(_code(result.status.code)),
                    result.status.message,
                    f"{service}.{method.name} call",
                )
                replies.cancel()
                if result.status.code:
                    return grpc.StatusCode(_code(result.status.code)), result.status.message
                return grpc.StatusCode.OK, ""
            return grpc.StatusCode.OK, ""
        if method.client_streaming:  # Connect: subscribe, then the fuzzed action
            request.action_id = request.action_id or "fuzz"
            if request.WhichOneof("action") is None:
                request.subscribe.SetInParent()
            replies = rpc(
                iter([cpb.ConnectRequest(subscribe=cpb.SubscribeRequest()), request]),
                metadata=md,
                timeout=10,
            )
            for reply in replies:
                if reply.WhichOneof("message") == "result":
                    result = reply.result
                    if result.action_id == request.action_id:
                        check_status(
                            grpc.StatusCode(_code(result.status.code)),
                            result.status.message,
                            f"{service}.{method.name} action",
                        )
                        replies.cancel()
                        return grpc.StatusCode.OK, ""
            return grpc.StatusCode.OK, ""
        if method.server_streaming:
            replies = rpc(request, metadata=md, timeout=10)
            next(replies)
            replies.cancel()
            return grpc.StatusCode.OK, ""
        rpc(request, metadata=md, timeout=10)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
        if method.server_streaming and code == grpc.StatusCode.CANCELLED:
            return grpc.StatusCode.OK, ""  # we cancelled it after its first message
        return code, details
    finally:
        if method.server_streaming:
            live.settled()


def _code(number: int) -> tuple[int, str]:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code.value
    raise AssertionError(f"not a status code: {number}")


EXAMPLES = 0
CHANGING_EXAMPLES = 100  # per changing AdminService and SupervisorService RPC
CODES: collections.defaultdict[str, collections.Counter[str]] = collections.defaultdict(
    collections.Counter
)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("module,service,method", list(methods()))
def test_fuzzed_requests(live: ServerThread, module: Any, service: str, method: Any) -> None:
    changing = service in ("AdminService", "SupervisorService") and not READS.match(method.name)
    examples = settings().max_examples
    if changing:  # where a call applied and then failed would do the most harm
        examples = max(examples, CHANGING_EXAMPLES)

    @settings(
        suppress_health_check=list(HealthCheck),
        deadline=None,
        derandomize=True,
        max_examples=examples,
    )
    @given(request=message(method.input_type))
    def fuzz(request: Any) -> None:
        global EXAMPLES
        EXAMPLES += 1
        before, seq = live.state(), live.audit_seq()
        code, details = call(live, module, service, method, request)
        CODES[f"{service}.{method.name}"][code.name] += 1
        where = f"{service}.{method.name}({request})"[:2000]
        check_status(code, details, where)
        after, seq_after = live.state(), live.audit_seq()
        if code != grpc.StatusCode.OK:
            key_tried = method.name == "StartSession" and request.WhichOneof("via") == (
                "session_key"
            )
            if not key_tried:  # a failed session key is counted, by design (rate limit)
                assert after == before, f"{where} failed with {code} and changed the desk"
        if changing:
            assert seq_after == seq + 1, f"{where} -> {code}: {seq_after - seq} audit entries"
        elif service in ("AdminService", "SupervisorService"):
            assert seq_after == seq, f"{where}: a read was audited"

    fuzz()
