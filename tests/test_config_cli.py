"""The shipped desks load; bad files fail clearly; `assigncore serve` starts, answers
health checks and drains on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from assigncore_server import config
from assigncore_server.desk.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]


def test_server_section_reaches_the_engine():
    settings = config.parse("[server]\nended_retention = 60\nreconnect_grace = 5\n")
    assert settings.engine.ended_retention == 60 and settings.engine.reconnect_grace == 5


def in_memory(settings: config.Settings) -> config.Settings:
    settings.storage_mode = "memory"
    return settings


def test_embedded_defaults_and_example_desk_load():
    rt = Runtime(in_memory(config.load(None)))
    assert {t.id for t in rt.engine.teams()} >= {"support", "partners"}
    example = Runtime(in_memory(config.load(ROOT / "examples" / "demo-desk.toml")))
    kinds = {t.kind.value for t in example.engine.teams()}
    assert len(example.engine.reps()) >= 24 and kinds == {"STANDARD", "EMBASSY"}
    rules = [t.settings.waiting_rule for t in example.engine.teams() if t.settings.waiting_rule]
    assert any(r.action.value == "TRANSFER" for r in rules)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[teams]]\nid = 'a'\nalgorithm = 'FASTEST'\n", "unknown value 'FASTEST'"),
        (
            "[[reps]]\nid = 'r'\nskills = { x = 11 }\n",
            "reps[0] (r): skills['x']: must be between 1 and 10",
        ),
        ("[[reps]]\nid = 'r'\nteams = ['ghost']\n", "team 'ghost' not found"),
        ("[server]\nlisten = 1\nbogus = 2\n", "unknown [server] keys ['bogus']"),
        ("[[tokens]]\nkind = 'admin'\nsecret = 'short'\n", "at least 16 characters"),
        ("not toml at all [", "config"),
        ("[metrics]\nlisten = 'nope'\n", "[metrics] listen must be HOST:PORT"),
        ("[metrics]\nport = 9464\n", "unknown [metrics] keys ['port']"),
        ("[logging]\nformat = 'xml'\n", "[logging] format is one of auto, json, text"),
        ("[logging]\naccess_log = 'some'\n", "[logging] access_log is one of"),
        ("[server]\nstatistics = 1\n", "statistics must be true or false"),
    ],
)
def test_bad_config_fails_with_the_entry_named(text, message):
    with pytest.raises(config.ConfigError) as exc:
        Runtime(in_memory(config.parse(text)))
    assert message in str(exc.value)


def test_cli_serves_and_drains_on_sigterm(tmp_path):
    desk = tmp_path / "desk.toml"
    desk.write_text(
        "[server]\nshutdown_grace = 1\n[metrics]\nlisten = '127.0.0.1:0'\n[[teams]]\nid = 't'\n"
    )
    env = {**os.environ, "ASSIGNCORE_ADMIN_TOKEN": "cli-admin-token-0123456789"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "assigncore_server.cli",
            "serve",
            "--config",
            str(desk),
            "--listen",
            "127.0.0.1:0",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        port = metrics = None
        deadline = time.monotonic() + 20
        while metrics is None and time.monotonic() < deadline:
            line = json.loads(proc.stderr.readline())  # not a terminal: JSON lines
            assert {"time", "level", "logger", "message"} <= set(line)
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line["message"])
            port = int(found.group(1)) if found else port
            found = re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", line["message"])
            metrics = found.group(1) if found else None
        assert port and metrics, "the server never said where it listens"
        with urllib.request.urlopen(metrics, timeout=10) as response:
            assert b"assigncore_desk_leader" in response.read()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_hardening_limits_are_configurable_and_checked():
    from assigncore_server import config

    settings = config.parse(
        "[server]\nkey_failures_per_address = 3\nkey_failures_per_portal = 50\n"
        "message_timeout = 2.5\nmax_streams_per_connection = 64\noutbox_limit = 20\n",
        "t",
    )
    assert settings.engine.key_failures_allowed == 3
    assert settings.engine.key_failures_per_portal == 50
    assert (settings.message_timeout, settings.max_streams_per_connection) == (2.5, 64)
    assert settings.outbox_limit == 20
    for bad in (
        "outbox_limit = 2000",  # larger than the resume buffer: overflow could lose events
        "message_timeout = 0",
        "max_streams_per_connection = -1",
        "max_open_streams = true",
    ):
        with pytest.raises(config.ConfigError):
            config.parse(f"[server]\n{bad}\n", "t")


def test_the_event_loop_is_uvloop_unless_configured_otherwise():
    import uvloop

    from assigncore_server import cli, config

    assert config.parse("", "t").event_loop == "uvloop"
    assert cli._loop_factory(config.parse("", "t")) is uvloop.new_event_loop
    plain = config.parse('[server]\nevent_loop = "asyncio"\n', "t")
    assert cli._loop_factory(plain) is None
    with pytest.raises(config.ConfigError, match="event_loop"):
        config.parse('[server]\nevent_loop = "tokio"\n', "t")


def test_gc_is_tuned_for_a_long_running_server():
    import gc

    from assigncore_server import cli

    before = gc.get_threshold()
    try:
        cli.tune_gc()
        assert gc.get_threshold() == cli.GC_THRESHOLDS
        assert gc.get_freeze_count() > 0  # what was loaded is out of every collection
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_a_token_seen_before_is_one_lookup_and_revoking_it_takes_effect_at_once():
    from assigncore_server.desk.tokens import Principal, PrincipalKind, TokenStore

    store = TokenStore()
    record, secret = store.issue(Principal(PrincipalKind.REP, "ann"))
    other, other_secret = store.issue(Principal(PrincipalKind.REP, "bob"))
    assert store.principal(secret).rep_id == "ann"
    assert store.principal(secret) is store.principal(secret)  # remembered
    assert store.principal("not-a-token") is None
    store.revoke(record.token_id)
    assert store.principal(secret) is None  # even though it was remembered
    assert store.principal(other_secret).rep_id == "bob"


def test_several_desks_each_with_its_storage_and_desk(tmp_path):
    """[[desks]]: ids, storage (a PostgreSQL URL or a file), the desk from its own TOML
    or inline; shared [server], [ha]; mistakes named."""
    from assigncore_server import config

    (tmp_path / "berlin.toml").write_text(
        '[server]\nreconnect_grace = 12\n[[teams]]\nid = "b"\nalgorithm = "NONE"\n'
    )
    text = """
[server]
listen = "127.0.0.1:0"
[ha]
lease_ttl = 3
renew_every = 1
[[desks]]
id = "berlin"
url = "postgresql://u@db/assigncore"
config = "berlin.toml"
[[desks]]
id = "lisbon"
path = "lisbon.sqlite3"
prefer = "standby"
[[desks.teams]]
id = "l"
algorithm = "LEAST_BUSY"
"""
    settings = config.parse(text, "multi.toml", tmp_path / "multi.toml")
    berlin, lisbon = settings.desks
    assert (berlin.desk_id, berlin.storage_mode) == ("berlin", "postgresql")
    assert berlin.engine.reconnect_grace == 12 and berlin.desk["teams"][0]["id"] == "b"
    assert (lisbon.storage_mode, lisbon.storage_path) == ("file", str(tmp_path / "lisbon.sqlite3"))
    assert lisbon.prefer_standby and not berlin.prefer_standby
    assert lisbon.desk["teams"][0]["id"] == "l" and lisbon.lease.ttl == 3.0
    mistakes = {
        '[[desks]]\nid = "a"\nurl = "mysql://x"\n': "postgresql:// URL",
        '[[desks]]\nid = "a"\n': "needs url",
        '[[desks]]\nid = "a"\npath = "a"\n[[desks]]\nid = "a"\npath = "b"\n': "listed twice",
        '[[desks]]\nid = "a b"\npath = "a"\n': "id must be",
        '[[desks]]\nid = "a"\npath = "a"\ncolour = 1\n': "unknown keys",
        '[[desks]]\nid = "a"\npath = "a"\nprefer = "never"\n': "prefer is",
        "[ha]\nlease_ttl = 1\nrenew_every = 0.5\n": "a third of lease_ttl",
        '[storage]\nurl = "postgresql://x/y"\npath = "z"\n': "replaces path",
    }
    for bad, why in mistakes.items():
        with pytest.raises(config.ConfigError, match=why):
            config.parse(bad, "bad.toml", tmp_path / "bad.toml")


def test_the_database_url_comes_from_the_environment_when_the_config_names_no_storage(
    monkeypatch, tmp_path
):
    from assigncore_server import config

    monkeypatch.setenv("ASSIGNCORE_DATABASE_URL", "postgresql://u@db/assigncore")
    defaults = config.load(None)  # `assigncore serve` with no config
    assert (defaults.storage_mode, defaults.storage_url) == (
        "postgresql",
        "postgresql://u@db/assigncore",
    )
    named = config.parse('[storage]\npath = "x.sqlite3"\n', "c.toml", tmp_path / "c.toml")
    assert named.storage_mode == "file"  # a config that names its storage keeps it
    monkeypatch.delenv("ASSIGNCORE_DATABASE_URL")
    assert config.load(None).storage_mode == "file"  # the embedded default: SQLite
