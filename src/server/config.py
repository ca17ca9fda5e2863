"""Server settings and the desk described by one TOML file.

    [server]                      # all optional
    listen = "127.0.0.1:50051"
    admin_token = "..."           # else $ASSIGNCORE_ADMIN_TOKEN, else one is generated
    max_message_bytes = 1048576
    max_concurrent_rpcs = 20000   # authenticated calls in flight, console streams too
    max_streams_per_connection = 1000
    message_timeout = 10.0        # seconds a request message may take to arrive
    max_open_streams = 100        # health Watch and reflection streams (no token)
    event_buffer = 1000           # events held per rep for resume_after
    outbox_limit = 500            # events queued for a console that is not reading
    shutdown_grace = 5.0          # seconds
    event_loop = "uvloop"         # or "asyncio" (the standard library's loop)
    reconnect_grace = 30.0        # rule 11
    max_rule_moves = 10           # rule 8
    general_queue = true
    ended_retention = 3600        # seconds an ended session stays queryable
    key_failures_per_address = 10 # wrong session keys per customer address per minute
    key_failures_per_portal = 1000  # ... and per intake portal per minute
    time_zone = "UTC"             # where the statistics' day starts (an IANA zone name)
    service_level_threshold = 20  # seconds; personal queues and the general queue
    statistics = true             # false: no statistics kept (to measure what they cost)

    [metrics]
    listen = "127.0.0.1:9464"     # Prometheus metrics over HTTP (default: none served)

    [tls]                         # TLS on the gRPC port (default: plaintext)
    cert = "server.pem"           # the server's certificate chain (PEM), relative to
    key = "server.key"            #   this file; and its private key
    client_ca = "clients.pem"     # optional: clients must present a certificate it signed

    [logging]
    format = "auto"               # "json" (JSON lines), "text", or auto: text on a terminal
    level = "INFO"
    access_log = "errors"         # a line per call: "all", "errors" (not OK), or "off"

    [storage]
    mode = "file"                 # or "memory": nothing survives a stop (tests, demos)
    path = "desk.sqlite3"         # default: next to this file, named after it
    url = "postgresql://..."      # instead of a file: PostgreSQL (high availability);
                                  #   default $ASSIGNCORE_DATABASE_URL if no path is set
    desk = "default"              # the desk's id (PostgreSQL holds many desks)
    snapshot_every = 100000       # journal entries between snapshots (0: at shutdown only)

    [ha]                          # PostgreSQL only: the lease on the desk
    lease_ttl = 2.0               # seconds a leader's lease lasts unless renewed
    renew_every = 0.5             # seconds between renewals (at most lease_ttl / 3)
    poll_every = 0.25             # seconds between a standby's looks at the lease
    advertise = "10.0.0.5:50051"  # the address clients are sent to (default: listen,
                                  #   with this host's name for a wildcard host)

    [[desks]]                     # several desks in one process, instead of the above:
    id = "berlin"                 # each with its id, its storage and its desk: a
    url = "postgresql://..."      # PostgreSQL URL or a file path, and the desk's TOML
    config = "berlin.toml"        # (its [server] routing keys, teams, reps, tokens...),
                                  #   or the desk inline: [[desks.teams]], [[desks.reps]]...
    prefer = "leader"             # or "standby": take the desk only if no other process
                                  #   has led it for a lease period (placement)

    [[teams]]
    id = "printers"  name = "Printers"  kind = "STANDARD"   # or EMBASSY
    algorithm = "SKILLS_MATCH_LEAST_BUSY"  offer_timeout = 30  wrap_up = 0
    service_level_threshold = 20  # seconds: answered within it counts as served
    max_missed_offers = 3
    waiting_rule = { overdue_after = 120, action = "TRANSFER", overflow = "team:helpdesk" }

    [[reps]]
    id = "ann"  name = "Ann"  teams = ["printers"]  skills = { printers = 7 }
    permissions = { max_concurrent_sessions = 3, idle_timeout = 600, may_opt_out = true }

    [[issue_types]]   id, name, team, priority, required_skills = [["printers", 5]]
    [[support_buttons]] / [[help_links]]   id, name, and rep = "..." or team = "..."
    [[tokens]]        kind = "rep" | "intake" | "admin", rep = "ann", secret = "..."
    [[tokens]]        kind = "supervisor", teams = ["printers"], rep = "sue" (optional), secret

Every value is checked by the engine's own validation when the desk is loaded; a bad
file fails at start with the offending entry named.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
import tomllib
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from assigncore.engine import EngineConfig

DEFAULT_DESK_FILE = "assigncore-desk.sqlite3"  # in the working directory, without a config
STORAGE_KEYS = {"mode", "path", "url", "desk", "snapshot_every"}
HA_KEYS = {"lease_ttl", "renew_every", "poll_every", "advertise"}
DESK_ENTRY_KEYS = {"id", "url", "path", "config", "admin_token", "snapshot_every", "prefer"}
DATABASE_URL = "ASSIGNCORE_DATABASE_URL"


@dataclass
class LeaseSettings:
    """[ha]: a desk's lease on PostgreSQL. A leader renews every `renew_every` and stops
    serving `MARGIN` of `ttl` before its lease could lapse; a standby looks at the lease
    every `poll_every` and takes it once it lapsed. A takeover after a crash takes about
    ttl - renew_every/2 + poll_every/2; a shorter ttl is a faster takeover and more
    renewals, and a leader stalled for longer than ttl loses the desk."""

    ttl: float = 2.0
    renew_every: float = 0.5
    poll_every: float = 0.25


@dataclass
class Settings:
    listen: str = "127.0.0.1:50051"
    admin_token: str | None = None
    max_message_bytes: int = 1024 * 1024
    max_concurrent_rpcs: int = 20000
    max_streams_per_connection: int = 1000
    message_timeout: float = 10.0
    max_open_streams: int = 100
    event_buffer: int = 1000
    # Events waiting to be written to one console stream. A console that stops reading
    # fills it; its stream then ends (RESOURCE_EXHAUSTED, resume from the feed buffer),
    # so it must not exceed event_buffer.
    outbox_limit: int = 500
    shutdown_grace: float = 5.0
    # The event loop `assigncore serve` runs on: uvloop (faster stream writes and
    # callbacks) or the standard library's.
    event_loop: str = "uvloop"
    idempotency_ttl: float = 24 * 3600.0
    # Keepalive suited to mobile consoles: the server pings an idle connection every
    # 60 s and drops it if no answer comes within 20 s; clients may ping every 30 s.
    keepalive_time_ms: int = 60_000
    keepalive_timeout_ms: int = 20_000
    min_client_ping_interval_ms: int = 30_000
    # Connections are recycled hourly (load balancing); streams get 5 minutes to finish,
    # after which consoles reconnect with resume_after and miss nothing.
    max_connection_age_ms: int = 3_600_000
    max_connection_age_grace_ms: int = 300_000
    engine: EngineConfig = field(default_factory=EngineConfig)
    desk: dict[str, Any] = field(default_factory=dict)
    # Where time comes from. A manual clock (tests) sets manual_clock: timers then fire
    # only when the runtime is told the time moved.
    clock: Callable[[], float] = time.time
    manual_clock: bool = False
    # The desk's file: journal and snapshots (DESIGN.md 4.2); "memory" keeps nothing.
    storage_mode: str = "file"
    storage_path: str = DEFAULT_DESK_FILE
    snapshot_every: int = 100_000  # journal entries; 0: snapshots at shutdown only
    storage_url: str | None = None  # storage_mode "postgresql": the database
    desk_id: str = "default"  # the desk's id in its storage, metrics and logs
    lease: LeaseSettings = field(default_factory=LeaseSettings)
    advertise: str = ""  # HOST:PORT clients are sent to; "": from listen
    # [[desks]] prefer = "standby": a free lease is left to the others for a lease period
    prefer_standby: bool = False
    # [[desks]]: the desks this process serves, each its own Settings (empty: just this)
    desks: list[Settings] = field(default_factory=list)
    source: str | None = None  # the config file these came from
    # Statistics off: nothing is counted (to measure what they cost); GetStatistics and
    # WatchStatistics answer FAILED_PRECONDITION.
    statistics: bool = True
    metrics_listen: str | None = None  # [metrics] listen; None: no metrics served
    tls_cert: str | None = None  # [tls]: PEM files
    tls_key: str | None = None
    tls_client_ca: str | None = None
    log_format: str = "auto"  # [logging]
    log_level: str = "INFO"
    access_log: str = "errors"


SERVER_KEYS = {
    "listen",
    "admin_token",
    "max_message_bytes",
    "max_concurrent_rpcs",
    "max_streams_per_connection",
    "message_timeout",
    "max_open_streams",
    "event_buffer",
    "outbox_limit",
    "shutdown_grace",
    "event_loop",
    "statistics",
}
ENGINE_KEYS = {
    "reconnect_grace": "reconnect_grace",
    "max_rule_moves": "max_rule_moves",
    "general_queue": "general_queue_enabled",
    "session_key_ttl": "session_key_ttl",
    "ended_retention": "ended_retention",
    "key_failures_per_address": "key_failures_allowed",
    "key_failures_per_portal": "key_failures_per_portal",
    "time_zone": "time_zone",
    "service_level_threshold": "service_level_threshold",
}
DESK_KEYS = {
    "channels",
    "teams",
    "reps",
    "issue_types",
    "support_buttons",
    "help_links",
    "tokens",
}
# [client] is read by the client commands (`assigncore top`, `token`), not the server.
SECTIONS = {"server", "storage", "metrics", "tls", "logging", "ha", "desks", "client"}
LOG_FORMATS = ("auto", "json", "text")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ACCESS_LOGS = ("all", "errors", "off")


class ConfigError(ValueError):
    pass


def parse(text: str, source: str = "config", path: Path | None = None) -> Settings:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    unknown = set(data) - DESK_KEYS - SECTIONS
    if unknown:
        raise ConfigError(f"{source}: unknown sections {sorted(unknown)}")
    server = data.get("server", {})
    unknown = set(server) - SERVER_KEYS - set(ENGINE_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown [server] keys {sorted(unknown)}")
    settings = Settings(**{k: server[k] for k in SERVER_KEYS if k in server})
    if "outbox_limit" not in server and isinstance(settings.event_buffer, int):
        settings.outbox_limit = min(settings.outbox_limit, settings.event_buffer)
    check(settings, source)
    engine_args = {ENGINE_KEYS[k]: server[k] for k in ENGINE_KEYS if k in server}
    defaults = {f.name: getattr(settings.engine, f.name) for f in fields(EngineConfig)}
    settings.engine = EngineConfig(**{**defaults, **engine_args})
    statistics(settings.engine, source)
    settings.desk = {k: data.get(k, []) for k in DESK_KEYS}
    storage(settings, data.get("storage", {}), path, source)
    operations(settings, data, path, source)
    high_availability(settings, data.get("ha", {}), source)
    several_desks(settings, data.get("desks"), path, source)
    return settings


def high_availability(settings: Settings, table: Any, source: str) -> None:
    """[ha]: the lease's timing and the address clients are sent to."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [ha] must be a table")
    unknown = set(table) - HA_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown [ha] keys {sorted(unknown)}")
    lease = settings.lease
    for key, attr in (
        ("lease_ttl", "ttl"),
        ("renew_every", "renew_every"),
        ("poll_every", "poll_every"),
    ):
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"{source}: [ha] {key} must be a positive number of seconds")
            setattr(lease, attr, float(value))
    if lease.renew_every > lease.ttl / 3:
        raise ConfigError(
            f"{source}: [ha] renew_every must be at most a third of lease_ttl (a renewal "
            "may fail and be retried before the lease runs out)"
        )
    if lease.poll_every > lease.ttl:
        raise ConfigError(f"{source}: [ha] poll_every must not exceed lease_ttl")
    if "advertise" in table:
        check_listen(table["advertise"], "[ha] advertise", source)
        settings.advertise = table["advertise"]


def several_desks(settings: Settings, entries: Any, path: Path | None, source: str) -> None:
    """[[desks]]: each entry a desk of its own (id, storage, desk TOML), sharing this
    file's [server] limits, [tls], [metrics], [logging] and [ha]."""
    if entries is None:
        return
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source}: [[desks]] must be a list of tables")
    if any(settings.desk.get(k) for k in DESK_KEYS):
        raise ConfigError(
            f"{source}: with [[desks]], teams, reps and tokens go in each desk's config"
        )
    base = path.resolve().parent if path is not None else Path.cwd()
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{source}: [[desks]] entry {i + 1}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table")
        unknown = set(entry) - DESK_ENTRY_KEYS - DESK_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
        desk_id = entry.get("id")
        if not isinstance(desk_id, str) or not DESK_ID.fullmatch(desk_id):
            raise ConfigError(f"{where}: id must be 1-64 letters, digits, '.', '_' or '-'")
        if desk_id in seen:
            raise ConfigError(f"{where}: desk {desk_id!r} is listed twice")
        seen.add(desk_id)
        own = Settings()
        if "config" in entry:
            file = base / str(entry["config"])
            try:
                text = file.read_text()
            except OSError as exc:
                raise ConfigError(f"{where}: cannot read {file}: {exc.strerror}") from None
            own = parse(text, str(file), file)
            if own.desks:
                raise ConfigError(f"{file}: a desk's config cannot list [[desks]]")
            if set(entry) & DESK_KEYS:
                raise ConfigError(f"{where}: the desk is in its config file or here, not both")
        else:  # the desk's sections inline: [[desks.teams]], [[desks.reps]], ...
            own.desk = {k: entry.get(k, []) for k in DESK_KEYS}
        desk = dataclasses.replace(
            settings,
            desk=own.desk,
            engine=own.engine,
            statistics=own.statistics,
            admin_token=entry.get("admin_token", own.admin_token),
            desk_id=desk_id,
            desks=[],
            snapshot_every=entry.get("snapshot_every", settings.snapshot_every),
            lease=dataclasses.replace(settings.lease),
        )
        prefer = entry.get("prefer", "leader")
        if prefer not in ("leader", "standby"):
            raise ConfigError(f'{where}: prefer is "leader" or "standby"')
        desk.prefer_standby = prefer == "standby"
        if "url" in entry:
            url = entry["url"]
            if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
                raise ConfigError(f"{where}: url must be a postgresql:// URL")
            desk.storage_mode, desk.storage_url = "postgresql", url
        elif "path" in entry:
            desk.storage_mode, desk.storage_path = "file", str(base / str(entry["path"]))
        else:
            raise ConfigError(f"{where}: needs url (PostgreSQL) or path (a desk file)")
        settings.desks.append(desk)


DESK_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _table(data: dict[str, Any], name: str, keys: set[str], source: str) -> dict[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{name}] must be a table")
    unknown = set(table) - keys
    if unknown:
        raise ConfigError(f"{source}: unknown [{name}] keys {sorted(unknown)}")
    for key, value in table.items():
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{source}: [{name}] {key} must be a non-empty string")
    return table


def operations(settings: Settings, data: dict[str, Any], path: Path | None, source: str) -> None:
    """[metrics], [tls] and [logging]. TLS files are relative to the config file."""
    metrics = _table(data, "metrics", {"listen"}, source)
    if "listen" in metrics:
        settings.metrics_listen = metrics["listen"]
        check_listen(metrics["listen"], "[metrics] listen", source)
    tls = _table(data, "tls", {"cert", "key", "client_ca"}, source)
    if tls and not {"cert", "key"} <= set(tls):
        raise ConfigError(f"{source}: [tls] needs both cert and key")
    base = path.resolve().parent if path is not None else Path.cwd()
    settings.tls_cert, settings.tls_key, settings.tls_client_ca = (
        str(base / tls[k]) if k in tls else None for k in ("cert", "key", "client_ca")
    )
    logs = _table(data, "logging", {"format", "level", "access_log"}, source)
    settings.log_format = logs.get("format", settings.log_format)
    settings.log_level = logs.get("level", settings.log_level).upper()
    settings.access_log = logs.get("access_log", settings.access_log)
    for key, value, allowed in (
        ("format", settings.log_format, LOG_FORMATS),
        ("level", settings.log_level, LOG_LEVELS),
        ("access_log", settings.access_log, ACCESS_LOGS),
    ):
        if value not in allowed:
            raise ConfigError(f"{source}: [logging] {key} is one of {', '.join(allowed)}")


def split_listen(listen: str) -> tuple[str, int]:
    """ "HOST:PORT" (an IPv6 host in brackets) as (host, port); ValueError if it is not."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{listen!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def check_listen(listen: str, what: str, source: str) -> None:
    try:
        split_listen(listen)
    except ValueError:
        raise ConfigError(f"{source}: {what} must be HOST:PORT, not {listen!r}") from None


def storage(settings: Settings, table: Any, path: Path | None, source: str) -> None:
    """[storage]: where the desk's file is. A relative path is relative to the config
    file; without one, the file is next to the config, named after it."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [storage] must be a table")
    unknown = set(table) - STORAGE_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown [storage] keys {sorted(unknown)}")
    mode = table.get("mode", "file")
    if mode not in ("file", "memory"):
        raise ConfigError(f'{source}: [storage] mode is "file" or "memory", not {mode!r}')
    every = table.get("snapshot_every", settings.snapshot_every)
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ConfigError(f"{source}: [storage] snapshot_every must be a whole number >= 0")
    file = table.get("path")
    if file is not None and (not isinstance(file, str) or not file):
        raise ConfigError(f"{source}: [storage] path must be a file name")
    desk_id = table.get("desk", "default")
    if not isinstance(desk_id, str) or not DESK_ID.fullmatch(desk_id):
        raise ConfigError(f"{source}: [storage] desk must be 1-64 letters, digits, '.', '_', '-'")
    settings.desk_id = desk_id
    url = table.get("url")
    if url is None and file is None and "mode" not in table:
        url = os.environ.get(DATABASE_URL) or None
    if url is not None:
        if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"{source}: [storage] url must be a postgresql:// URL")
        if file is not None or "mode" in table:
            raise ConfigError(f"{source}: [storage] url replaces path and mode: give one")
        settings.storage_mode, settings.storage_url = "postgresql", url
        settings.snapshot_every = every
        if path is not None:
            settings.source = str(path)
        return
    if path is not None:
        base = path.resolve().parent
        file = str(base / file) if file else str(base / (path.stem + ".sqlite3"))
        settings.source = str(path)
    settings.storage_mode, settings.snapshot_every = mode, every
    settings.storage_path = file or DEFAULT_DESK_FILE


_POSITIVE_INTS = (
    "max_message_bytes",
    "max_concurrent_rpcs",
    "max_streams_per_connection",
    "max_open_streams",
    "event_buffer",
    "outbox_limit",
)


def statistics(engine: EngineConfig, source: str) -> None:
    """The desk's time zone must be one the zone database knows; the threshold a
    number of seconds from 1 s to a day."""
    try:
        zoneinfo.ZoneInfo(engine.time_zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigError(
            f"{source}: [server] time_zone {engine.time_zone!r} is not a known time zone "
            '(an IANA name such as "Europe/Berlin")'
        ) from None
    threshold = engine.service_level_threshold
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise ConfigError(f"{source}: [server] service_level_threshold must be a number")
    if not 1 <= threshold <= 86400:
        raise ConfigError(f"{source}: [server] service_level_threshold must be 1 to 86400 s")


def check(settings: Settings, source: str = "config") -> None:
    """Server limits must be positive numbers, and a console's outbox must fit in its
    resume buffer (what overflows the outbox is resumed from the buffer)."""
    for name in _POSITIVE_INTS:
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{source}: [server] {name} must be a positive integer")
    for name in ("message_timeout", "shutdown_grace"):
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{source}: [server] {name} must be a positive number")
    if not isinstance(settings.statistics, bool):
        raise ConfigError(f"{source}: [server] statistics must be true or false")
    if settings.event_loop not in ("uvloop", "asyncio"):
        raise ConfigError(f'{source}: [server] event_loop is "uvloop" or "asyncio"')
    if settings.outbox_limit > settings.event_buffer:
        raise ConfigError(f"{source}: [server] outbox_limit must not exceed event_buffer")


def load(path: str | os.PathLike[str] | None) -> Settings:
    """The settings from `path`, or the embedded defaults (a small demo desk)."""
    if path is None:
        text = resources.files("assigncore_server").joinpath("default_desk.toml").read_text()
        return parse(text, "embedded defaults")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    return parse(text, str(path), Path(path))
