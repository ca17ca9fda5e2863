"""The server factory: `await create_server(settings) -> (server, port)`."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from assigncore.v1 import (
    admin_service_pb2,
    console_service_pb2,
    intake_service_pb2,
    supervisor_service_pb2,
)
from assigncore.v1 import admin_service_pb2_grpc as agrpc
from assigncore.v1 import console_service_pb2_grpc as cgrpc
from assigncore.v1 import intake_service_pb2_grpc as igrpc
from assigncore.v1 import supervisor_service_pb2_grpc as sgrpc

from .api import reflection_v1
from .api.admin import AdminServicer
from .api.auth import Guard, Limits, Routes
from .api.calls import Calls
from .api.console import ConsoleServicer
from .api.intake import IntakeServicer
from .api.supervisor import SupervisorServicer
from .config import ConfigError, Settings, split_listen
from .desk.host import Host
from .desk.runtime import Runtime
from .ops.metrics import Metrics

log = logging.getLogger("assigncore.server")

SERVICES = [
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (console_service_pb2, "RepConsoleService"),
        (intake_service_pb2, "IntakeService"),
        (admin_service_pb2, "AdminService"),
        (supervisor_service_pb2, "SupervisorService"),
    )
]


class Server:
    """A running assigncore server: the gRPC server plus the desks behind it."""

    def __init__(
        self,
        grpc_server: grpc.aio.Server,
        host: Host,
        health_servicer: health.aio.HealthServicer,
        metrics: Metrics | None,
        address: str,
    ) -> None:
        self.grpc = grpc_server
        self.host = host
        self.health = health_servicer
        self.metrics = metrics
        self.address = address  # HOST:PORT clients are sent to (a standby's answers)
        self._health_tasks: set[asyncio.Task[None]] = set()  # held until done
        self._serving_now: bool | None = None

    @property
    def runtime(self) -> Runtime:
        """The first desk's runtime (the only one, without [[desks]])."""
        return self.host.runtimes[0]

    @property
    def metrics_port(self) -> int:
        """The metrics endpoint's port, once started (0: no metrics served)."""
        return self.metrics.port if self.metrics is not None else 0

    async def start(self) -> None:
        """Serves health at once (NOT_SERVING) and the metrics, then loads the desks
        (calls other than health are refused with UNAVAILABLE meanwhile), then serves.
        On PostgreSQL a desk is led or stood by for, as its lease goes; health says
        SERVING while this process leads at least one desk."""
        for name in ["", *SERVICES]:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.grpc.start()
        listen = self.runtime.settings.metrics_listen
        metrics = self.metrics
        runtimes = self.host.runtimes
        try:
            if metrics is not None and listen is not None:
                try:
                    metrics.serve(listen)
                except OSError as exc:
                    raise OSError(
                        f"cannot listen for metrics ([metrics] listen) on {listen}: "
                        f"{exc.strerror or exc}"
                    ) from None
            for rt in runtimes:
                rt.address = rt.address or self.address
            await asyncio.gather(*(rt.open_async() for rt in runtimes if not rt.ready))
        except BaseException:
            for rt in runtimes:
                rt.close_storage()
            await self.grpc.stop(None)
            if metrics is not None:
                metrics.stop()
            raise
        for rt in runtimes:
            rt.start()
        await self._serving(self.host.leads_any())
        for rt in runtimes:
            rt.on_serving = self._tell_serving

    def _tell_serving(self, serving: bool) -> None:
        """A desk's journal failed or recovered, or its leadership changed: health says
        whether this process serves any desk now."""
        task = asyncio.get_running_loop().create_task(self._serving(self.host.leads_any()))
        self._health_tasks.add(task)  # a task nobody holds may be collected mid-way
        task.add_done_callback(self._health_tasks.discard)

    async def _serving(self, serving: bool) -> None:
        if serving == self._serving_now:
            return
        self._serving_now = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *SERVICES]:
            await self.health.set(name, status)

    async def stop(self, grace: float | None = None, snapshot: bool = True) -> None:
        """Graceful stop: health says NOT_SERVING, console streams are told the server is
        draining and end, then RPCs in flight get `grace` seconds to finish; the last
        records are made durable, (with `snapshot`) a snapshot is written, and leases
        are given up so that a standby takes over at once."""
        grace = self.runtime.settings.shutdown_grace if grace is None else grace
        runtimes = self.host.runtimes
        for rt in runtimes:
            rt.on_serving = None
        await self.health.enter_graceful_shutdown()
        for rt in runtimes:
            if rt.loaded:
                rt.hub.drain()
        await asyncio.sleep(0)  # let the streams send their last event
        await self.grpc.stop(grace)
        if self.metrics is not None:
            self.metrics.stop()
        for rt in runtimes:
            await rt.stop()
            await rt.close(snapshot)

    async def wait_for_termination(self) -> None:
        await self.grpc.wait_for_termination()


async def create_server(settings: Settings, runtime: Runtime | None = None) -> tuple[Server, int]:
    """Build (not start) a server listening on `settings.listen` (port 0 picks a free
    port, returned), for the desks of `settings` (its [[desks]], or itself). The desks
    are loaded (or created) by `await server.start()`, once the port is bound: a port in
    use stops the start before any desk file is created."""
    if runtime is not None:
        runtimes, metrics = [runtime], runtime.metrics
    else:
        metrics = None
        if settings.metrics_listen:
            holder: list[Runtime] = []
            metrics = Metrics(lambda: holder)
        runtimes = [
            Runtime(desk, open=False, metrics=metrics) for desk in settings.desks or [settings]
        ]
        if metrics is not None:
            holder.extend(runtimes)
    host = Host(runtimes)
    try:
        return _build(settings, host, metrics)
    except BaseException:
        for rt in runtimes:
            rt.close_storage()
        raise


def advertised(settings: Settings, port: int) -> str:
    """The address clients are sent to: [ha] advertise, else the listen address with
    the bound port (and this host's name for a wildcard host)."""
    if settings.advertise:
        return settings.advertise
    host, _ = split_listen(settings.listen)
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_free(listen: str, listener: str) -> None:
    """OSError naming the address and the listener if something listens on it already
    (asked before gRPC tries, whose own failure says less, and says it on stderr)."""
    host, port = split_listen(listen)
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise OSError(f"cannot listen for {listener} on {listen}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise OSError(
                f"cannot listen for {listener} on {listen}: {exc.strerror or exc}"
            ) from None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS for the gRPC port ([tls]): the server's certificate chain and key, and with
    a client CA, mutual TLS (a client without a certificate that CA signed is refused
    in the handshake). The files are checked here, so a bad one fails at start with its
    name, not at a client's first handshake."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    files = {"cert": settings.tls_cert, "key": settings.tls_key}
    if settings.tls_client_ca is not None:
        files["client_ca"] = settings.tls_client_ca
    pem = {}
    for name, path in files.items():
        try:
            pem[name] = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"[tls] {name}: cannot read {path}: {exc.strerror}") from None
    check = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        check.load_cert_chain(files["cert"], files["key"])
    except ssl.SSLError as exc:
        raise ConfigError(
            f"[tls] cert {files['cert']} and key {files['key']} are not a PEM certificate "
            f"chain and its private key ({exc.reason})"
        ) from None
    if "client_ca" in files:
        try:
            check.load_verify_locations(files["client_ca"])
        except ssl.SSLError as exc:
            raise ConfigError(
                f"[tls] client_ca {files['client_ca']} is not PEM certificates ({exc.reason})"
            ) from None
    return grpc.ssl_server_credentials(
        [(pem["key"], pem["cert"])],
        root_certificates=pem.get("client_ca"),
        require_client_auth="client_ca" in pem,
    )


def _build(settings: Settings, host: Host, metrics: Metrics | None) -> tuple[Server, int]:
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", 4 * settings.max_message_bytes),
        ("grpc.keepalive_time_ms", settings.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", settings.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", settings.min_client_ping_interval_ms),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_connection_age_ms", settings.max_connection_age_ms),
        ("grpc.max_connection_age_grace_ms", settings.max_connection_age_grace_ms),
        ("grpc.so_reuseport", 0),
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
    ]
    # No grpc-level maximum_concurrent_rpcs: it cannot spare health checks. The guard
    # keeps budgets per class of call instead (see auth.py). Every service is served
    # through the guard; only the hot unary methods are registered with grpc itself,
    # each checking its own calls (see auth.py: the accept loop).
    routes = Routes()
    cgrpc.add_RepConsoleServiceServicer_to_server(ConsoleServicer(), routes)  # type: ignore[arg-type]
    igrpc.add_IntakeServiceServicer_to_server(IntakeServicer(), routes)  # type: ignore[arg-type]
    agrpc.add_AdminServiceServicer_to_server(AdminServicer(), routes)  # type: ignore[arg-type]
    sgrpc.add_SupervisorServiceServicer_to_server(SupervisorServicer(), routes)  # type: ignore[arg-type]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, routes)  # type: ignore[arg-type]
    reflection_v1.enable(
        [*SERVICES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name], routes
    )
    guard = Guard(
        host,
        routes,
        Limits(
            message_timeout=settings.message_timeout,
            max_concurrent_rpcs=settings.max_concurrent_rpcs,
            max_open_streams=settings.max_open_streams,
        ),
        Calls(metrics, settings.access_log, settings.tls_client_ca is not None),
    )
    for rt in host.runtimes:
        rt.gate = guard.gate
    server = grpc.aio.server(handlers=[guard], options=options)
    for service, handlers in guard.registered().items():
        server.add_registered_method_handlers(service, handlers)
    credentials = server_credentials(settings)
    check_free(settings.listen, "gRPC ([server] listen)")
    try:
        if credentials is None:
            port = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"cannot listen for gRPC ([server] listen) on {settings.listen}")
    return Server(server, host, health_servicer, metrics, advertised(settings, port)), port
