"""Operating a server: the Prometheus endpoint (scraped and parsed), request ids in
trailers, JSON-lines logs, and statistics switched off."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

from assigncore.v1 import admin_service_pb2 as apb
from assigncore.v1 import common_pb2 as pb
from assigncore.v1 import console_service_pb2 as cpb
from assigncore.v1 import intake_service_pb2 as ipb
from assigncore.v1 import supervisor_service_pb2 as spb
from assigncore.v1 import supervisor_service_pb2_grpc as sgrpc
from assigncore_server.ops import logs

from .server_harness import ADMIN, INTAKE, auth, live_server

ROOT = Path(__file__).resolve().parents[1]


async def scrape(live) -> dict[str, list]:
    """The endpoint's text, fetched by a thread (the server answers from this loop),
    parsed: family name -> samples."""
    url = f"http://127.0.0.1:{live.server.metrics_port}/metrics"

    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            return response.read().decode()

    text = await asyncio.to_thread(fetch)
    families = list(text_string_to_metric_families(text))
    untyped = [f.name for f in families if f.type == "unknown"]
    assert not untyped, f"families without a TYPE line of their own: {untyped}"
    return {f.name: f.samples for f in families}


def value(families: dict[str, list], sample: str, **labels: str) -> float:
    family = next(name for name in families if sample.startswith(name))
    found = [
        s.value
        for s in families[family]
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (sample, labels, found)
    return found[0]


async def test_metrics_endpoint_reports_calls_queues_reps_engine_and_journal():
    live = await live_server(metrics_listen="127.0.0.1:0", access_log="off")
    try:
        assert live.server.metrics_port > 0
        ann = await live.console("ann")
        await live.start(issue_type_id="manual-help")  # waits: the manual team never offers
        await live.start(issue_type_id="general-help")  # offered to ann or bob (ann: online)
        offer = await ann.next("offer_made")
        await ann.rpc("AnswerOffer", cpb.AnswerOfferRequest(offer_id=offer.offer_id, accept=True))
        await live.advance(10)
        await ann.rpc("EndSession", cpb.EndSessionRequest(session_id=offer.session.id))
        with pytest.raises(grpc.aio.AioRpcError) as err:  # a refused call is counted too
            await live.intake.GetSessionStatus(
                ipb.GetSessionStatusRequest(session_id="nope"), metadata=auth("wrong-token")
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await live.admin.GetRep(apb.GetRepRequest(rep_id="nobody"), metadata=auth(ADMIN))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        m = await scrape(live)
        calls = "grpc_server_handling_seconds_count"
        intake = "assigncore.v1.IntakeService"
        assert value(m, calls, grpc_service=intake, grpc_method="StartSession", grpc_code="OK") == 2
        assert (
            value(
                m,
                calls,
                grpc_method="GetSessionStatus",
                grpc_code="UNAUTHENTICATED",
                grpc_type="unary",
            )
            == 1
        )
        assert value(m, calls, grpc_method="GetRep", grpc_code="NOT_FOUND") == 1
        assert value(m, calls, grpc_method="AnswerOffer", grpc_code="OK") == 1
        # queues: the manual team's session has waited 10 s; the support team's was
        # answered from the queue
        assert value(m, "assigncore_queue_waiting_sessions", queue="team/manual") == 1
        assert value(m, "assigncore_queue_longest_wait_seconds", queue="team/manual") == 10
        assert value(m, "assigncore_queue_waiting_sessions", queue="team/support") == 0
        outcomes = "assigncore_queue_sessions_total"
        assert value(m, outcomes, queue="team/manual", outcome="arrived") == 1
        assert value(m, outcomes, queue="team/support", outcome="offered") == 1
        assert value(m, outcomes, queue="team/support", outcome="accepted") == 1
        assert value(m, outcomes, queue="personal", outcome="arrived") == 0
        within = "assigncore_queue_answered_within_threshold_total"
        assert value(m, within, queue="team/support") == 1  # answered at once
        assert value(m, "assigncore_queue_wait_seconds_total", queue="team/support") == 0
        assert value(m, "assigncore_queue_handled_sessions_total", queue="team/support") == 1
        assert value(m, "assigncore_queue_handle_seconds_total", queue="team/support") == 10
        threshold = "assigncore_queue_service_level_threshold_seconds"
        assert value(m, threshold, queue="team/support") == 20
        # reps: ann handled the session and is free again, the others have no console
        assert value(m, "assigncore_reps", state="available") == 1
        assert value(m, "assigncore_reps", state="busy") == 0
        assert value(m, "assigncore_reps", state="offline") == 3
        assert value(m, "assigncore_team_reps", team="support", state="staffed") == 1
        assert value(m, "assigncore_team_reps", team="support", state="available") == 1
        assert value(m, "assigncore_team_reps", team="manual", state="staffed") == 0
        # the engine's commands and passes, the journal's commits
        command = "assigncore_engine_command_seconds_count"
        assert value(m, command, command="start_from_issue") == 2
        assert value(m, command, command="answer_offer") == 1
        assert value(m, "assigncore_engine_assignment_pass_seconds_count") >= 2
        commits = value(m, "assigncore_journal_commit_seconds_count")
        assert commits >= 1
        assert value(m, "assigncore_journal_commit_records_count") == commits
        assert value(m, "assigncore_journal_commits_total") >= commits
        assert value(m, "assigncore_journal_records_total") == value(
            m, "assigncore_journal_commit_records_sum"
        )
        assert value(m, "assigncore_journal_position") >= value(
            m, "assigncore_journal_records_total"
        )
        # console streams and their outboxes; this process leads its desk
        assert value(m, "assigncore_console_streams") == 1
        assert value(m, "assigncore_console_outbox_events_count") == 1
        assert value(m, "assigncore_console_outbox_events_bucket", le="+Inf") == 1
        assert value(m, "assigncore_console_outbox_limit") == 500
        assert value(m, "assigncore_desk_leader", desk="default") == 1
        assert (
            value(m, "assigncore_queue_waiting_sessions", desk="default", queue="team/manual") == 1
        )
        assert value(m, "assigncore_rpcs_in_flight") == 1  # ann's stream
        # the example Grafana dashboard only asks for series this server exports
        exported = {sample.name for samples in m.values() for sample in samples}
        dashboard = json.loads((ROOT / "examples" / "grafana-dashboard.json").read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
        asked = {n for e in exprs for n in re.findall(r"\b(?:assigncore|grpc_server)_\w+", e)}
        assert len(exprs) >= 20 and asked and asked <= exported, asked - exported
    finally:
        await live.close()


async def test_no_metrics_endpoint_unless_configured():
    live = await live_server()
    try:
        assert live.server.metrics_port == 0
        assert live.server.runtime.metrics is None
        assert live.server.runtime.engine.timings is None
    finally:
        await live.close()


async def test_request_id_comes_back_in_the_trailers_and_goes_to_the_audit_trail():
    live = await live_server()
    try:
        # the client's own id
        call = live.admin.GetRep(
            apb.GetRepRequest(rep_id="ann"), metadata=(*auth(ADMIN), ("x-request-id", "req-42"))
        )
        await call
        assert dict(await call.trailing_metadata())["x-request-id"] == "req-42"
        # one made up by the server, on a failed call too, next to the status details
        call = live.admin.DeleteRep(apb.DeleteRepRequest(rep_id="nobody"), metadata=auth(ADMIN))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        trailers = dict(err.value.trailing_metadata())
        generated = trailers["x-request-id"]
        assert len(generated) == 16 and int(generated, 16) >= 0
        assert rpc_status.from_call(err.value).message == err.value.details()
        # a call refused before its handler ran (an unknown token)
        call = live.admin.GetRep(
            apb.GetRepRequest(rep_id="ann"), metadata=(*auth("nope"), ("x-request-id", "r-1"))
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert dict(err.value.trailing_metadata())["x-request-id"] == "r-1"
        # the audit trail keeps the generated id with the failed call
        entries = await live.admin.ListAuditEntries(
            apb.ListAuditEntriesRequest(), metadata=auth(ADMIN)
        )
        [entry] = [e for e in entries.entries if e.method.endswith("/DeleteRep")]
        assert entry.request_id == generated
    finally:
        await live.close()


@pytest.fixture
def captured_logs():
    """The server's logging set up as `serve` does (JSON lines), into a buffer."""
    stream = io.StringIO()
    root = logging.getLogger()
    kept = (list(root.handlers), root.level)
    logs.configure("json", "INFO", stream)
    yield stream
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in kept[0]:
        root.addHandler(h)
    root.setLevel(kept[1])


async def test_json_log_lines_carry_request_ids_and_no_customer_details(captured_logs):
    live = await live_server(access_log="all")
    try:
        call = live.intake.StartSession(
            ipb.StartSessionRequest(
                request_id="r1",
                customer=pb.Customer(name="Zebediah Quux", company="Secret Corp"),
                undesignated=ipb.Undesignated(),
            ),
            metadata=(*auth(INTAKE), ("x-request-id", "start-1")),
        )
        await call
        with pytest.raises(grpc.aio.AioRpcError):
            await live.admin.GetRep(apb.GetRepRequest(rep_id="nobody"), metadata=auth(ADMIN))
    finally:
        await live.close()
    lines = [json.loads(line) for line in captured_logs.getvalue().splitlines()]
    calls = [line for line in lines if line["logger"] == "assigncore.access"]
    [start] = [c for c in calls if c["method"] == "assigncore.v1.IntakeService/StartSession"]
    assert start["code"] == "OK" and start["level"] == "INFO"
    assert start["request_id"] == "start-1" and start["principal"] == "INTAKE"
    assert start["duration_ms"] >= 0 and start["peer"].startswith("ipv")
    assert start["time"].endswith("+00:00")
    [failed] = [c for c in calls if c["method"] == "assigncore.v1.AdminService/GetRep"]
    assert failed["code"] == "NOT_FOUND" and len(failed["request_id"]) == 16
    assert "nobody" not in json.dumps(failed)  # a status message may quote the caller
    text = captured_logs.getvalue()
    assert "Zebediah" not in text and "Secret Corp" not in text and "Carol" not in text


async def test_access_log_errors_only_by_default(captured_logs):
    live = await live_server()
    try:
        await live.start(issue_type_id="general-help")
        with pytest.raises(grpc.aio.AioRpcError):
            await live.admin.GetRep(apb.GetRepRequest(rep_id="nobody"), metadata=auth(ADMIN))
    finally:
        await live.close()
    lines = [json.loads(line) for line in captured_logs.getvalue().splitlines()]
    methods = [line["method"] for line in lines if line["logger"] == "assigncore.access"]
    assert methods == ["assigncore.v1.AdminService/GetRep"]


async def test_statistics_off():
    live = await live_server(statistics=False, metrics_listen="127.0.0.1:0")
    try:
        await live.start(issue_type_id="manual-help")
        sup = sgrpc.SupervisorServiceStub(live.channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await sup.GetStatistics(spb.GetStatisticsRequest(), metadata=auth(ADMIN))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "statistics = false" in err.value.details()
        stats = live.server.runtime.engine.state.stats
        assert not stats.queues and not stats.waiting
        m = await scrape(live)
        assert "assigncore_queue_waiting_sessions" not in m
        assert value(m, "grpc_server_handling_seconds_count", grpc_method="StartSession") == 1
    finally:
        await live.close()


async def test_a_scrape_while_the_loop_is_busy_waits_for_it():
    """The desk's series are read on the event loop: a scrape waits for the command in
    progress, and never sees a half-applied one."""
    live = await live_server(metrics_listen="127.0.0.1:0")
    try:
        scraping = asyncio.ensure_future(scrape(live))
        for _ in range(5):
            await live.start(issue_type_id="manual-help")
        m = await scraping
        waiting = value(m, "assigncore_queue_waiting_sessions", queue="team/manual")
        assert (
            value(m, "assigncore_queue_sessions_total", queue="team/manual", outcome="arrived")
            == waiting
        )
    finally:
        await live.close()
