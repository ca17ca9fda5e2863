"""A connection to an assigncore desk: its addresses, TLS, token and channel options.

    conn = Connection("127.0.0.1:50051", token="...")          # plaintext
    conn = Connection(["db1:50051", "db2:50051"], token="...",  # a desk with standbys
                      tls=Tls.from_files("ca.pem"))             # TLS (mTLS: cert, key)
    conn = Connection.from_env()  # ASSIGNCORE_SERVER, ASSIGNCORE_TOKEN, ASSIGNCORE_TLS_*

One `Connection` is shared by the `Console`, `Portal`, `Admin` and `Supervisor` made on
it. Every call carries `authorization: Bearer <token>`; assign `conn.token` to switch to a
rotated token, and the next call (and the console's next reconnect) uses it.

The channel carries the desk's service config (protos/assigncore/v1/service_config.json,
shipped as `assigncore.v1.SERVICE_CONFIG`), so unary calls time out after 10 s, but
without its retry policy: the connection retries by itself, and better, since it reads
the status details (below). Pass `service_config=SERVICE_CONFIG` to use gRPC's own
retries instead, for example behind one DNS name that resolves to every server.
Keepalive pings every 30 s, the most often the server permits, so a dead peer is noticed
within 40 s even on an idle stream.

High availability. A call that reaches a process that does not lead the desk fails
with `NotLeader`, carrying the leader's address: the connection switches to it and
retries, and while a takeover is under way (no leader yet) it tries the other addresses
with backoff, for up to `leader_wait` seconds. Nothing of a refused call was applied,
so this is safe for every call.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import tomllib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from assigncore.v1 import SERVICE_CONFIG

from .errors import AssignCoreError, NotLeader, Unavailable, from_rpc_error

T = TypeVar("T")

ENV_SERVER = "ASSIGNCORE_SERVER"
ENV_TOKEN = "ASSIGNCORE_TOKEN"
ENV_TLS_CA = "ASSIGNCORE_TLS_CA"
ENV_TLS_CERT = "ASSIGNCORE_TLS_CERT"
ENV_TLS_KEY = "ASSIGNCORE_TLS_KEY"
DEFAULT_SERVER = "127.0.0.1:50051"


@dataclass(frozen=True)
class Tls:
    """TLS to the server: the CA that signed its certificate (None: the system's
    roots), and for mutual TLS the client's certificate chain and key (PEM bytes)."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    # The name to check the server's certificate against, when it differs from the host
    # in the address (an IP address, a load balancer).
    server_name: str | None = None

    @classmethod
    def from_files(
        cls,
        ca: str | os.PathLike[str] | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        server_name: str | None = None,
    ) -> Tls:
        def read(path: str | os.PathLike[str] | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        if (cert is None) != (key is None):
            raise ValueError("mutual TLS needs both a certificate and its key")
        return cls(read(ca), read(cert), read(key), server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)


@dataclass(frozen=True)
class Keepalive:
    """HTTP/2 keepalive. The server permits a client ping every 30 s at most; pinging
    more often gets the connection closed (GOAWAY ENHANCE_YOUR_CALM)."""

    time_ms: int = 30_000
    timeout_ms: int = 10_000
    without_calls: bool = False


@dataclass
class Backoff:
    """Exponential backoff with full jitter (each wait is uniform in [0, cap])."""

    initial: float = 0.2
    maximum: float = 10.0
    multiplier: float = 2.0
    _next: float = field(default=0.0, init=False, repr=False)

    def reset(self) -> None:
        self._next = 0.0

    def delay(self, rng: random.Random | None = None) -> float:
        self._next = (
            self.initial if self._next == 0 else min(self._next * self.multiplier, self.maximum)
        )
        return (rng or random).uniform(0, self._next)


# The environment variable of each connection setting.
ENV = {
    "server": ENV_SERVER,
    "token": ENV_TOKEN,
    "tls_ca": ENV_TLS_CA,
    "tls_cert": ENV_TLS_CERT,
    "tls_key": ENV_TLS_KEY,
}


def env_settings() -> dict[str, str]:
    """The connection settings the environment gives (see ENV)."""
    return {key: os.environ[name] for key, name in ENV.items() if os.environ.get(name)}


class Connection:
    """Channels to one desk's servers, with the token its calls carry."""

    def __init__(
        self,
        address: str | Sequence[str] = DEFAULT_SERVER,
        *,
        token: str | None = None,
        tls: Tls | None = None,
        keepalive: Keepalive | None = None,
        service_config: dict[str, Any] | None = None,
        leader_wait: float = 15.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        addresses = [address] if isinstance(address, str) else list(address)
        addresses = [a.strip() for a in addresses for a in a.split(",") if a.strip()]
        if not addresses:
            raise ValueError("give at least one server address")
        self.addresses = addresses
        self.token = token
        self.tls = tls
        self.keepalive = keepalive or Keepalive()
        self.service_config = (
            without_retries(SERVICE_CONFIG) if service_config is None else service_config
        )
        self.leader_wait = leader_wait
        self.extra_options = list(options)
        self._current = addresses[0]
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[tuple[Any, grpc.aio.Channel], Any] = {}

    # ------------------------------------------------------------ construction

    @classmethod
    def from_env(cls, **overrides: Any) -> Connection:
        """From ASSIGNCORE_SERVER (one address or several, comma-separated),
        ASSIGNCORE_TOKEN and ASSIGNCORE_TLS_CA / _CERT / _KEY (PEM file paths)."""
        return cls.from_settings(**(env_settings() | overrides))

    @classmethod
    def from_settings(
        cls,
        *,
        server: str | None = None,
        token: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_server_name: str | None = None,
        **kw: Any,
    ) -> Connection:
        tls = None
        if tls_ca or tls_cert or tls_server_name:
            tls = Tls.from_files(tls_ca, tls_cert, tls_key, tls_server_name)
        return cls(server or DEFAULT_SERVER, token=token, tls=tls, **kw)

    # ------------------------------------------------------------ channels

    @property
    def address(self) -> str:
        """The address calls go to now (the leader's, once one answered)."""
        return self._current

    def _options(self) -> list[tuple[str, Any]]:
        options: list[tuple[str, Any]] = [
            ("grpc.service_config", json.dumps(self.service_config)),
            ("grpc.enable_retries", 1),
            ("grpc.keepalive_time_ms", self.keepalive.time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive.timeout_ms),
            ("grpc.keepalive_permit_without_calls", int(self.keepalive.without_calls)),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ]
        if self.tls is not None and self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return options + self.extra_options

    def channel(self, address: str | None = None) -> grpc.aio.Channel:
        """The channel to `address` (default: the current one), opened once."""
        address = address or self._current
        channel = self._channels.get(address)
        if channel is None:
            if self.tls is None:
                channel = grpc.aio.insecure_channel(address, options=self._options())
            else:
                channel = grpc.aio.secure_channel(
                    address, self.tls.credentials(), options=self._options()
                )
            self._channels[address] = channel
        return channel

    def metadata(self, token: str | None = None) -> tuple[tuple[str, str], ...]:
        """The call metadata: `token` (default: the connection's) as a bearer token."""
        token = token or self.token
        return () if not token else (("authorization", f"Bearer {token}"),)

    def follow(self, error: NotLeader) -> bool:
        """Switches to the leader `error` names; False if it names none (a takeover is
        under way) and the next address is tried instead."""
        leader = error.leader
        if leader:
            if leader not in self.addresses:
                self.addresses.append(leader)
            self._current = leader
            return True
        self.rotate()
        return False

    def rotate(self) -> None:
        """Moves on to the next address (after a refusal or a dead server)."""
        i = self.addresses.index(self._current) if self._current in self.addresses else -1
        self._current = self.addresses[(i + 1) % len(self.addresses)]

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        self._stubs.clear()
        for channel in channels:
            await channel.close()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ calls

    async def call(
        self,
        stub_class: Callable[[grpc.aio.Channel], Any],
        method: str,
        request: Any,
        *,
        timeout: float | None = None,
        idempotent: bool = False,
        token: str | None = None,
    ) -> Any:
        """Calls `method` of the service whose stub is `stub_class`, at the leader, with
        `token` (default: the connection's).

        Raises the typed `AssignCoreError` of the status. A NotLeader refusal is followed
        (nothing was applied); a server that cannot be reached is retried at the other
        addresses only for an `idempotent` call (reads, and intake calls with a
        request_id), since a connection lost mid-call may have applied it."""

        async def once(channel: grpc.aio.Channel) -> Any:
            stub = self._stubs.get((stub_class, channel))
            if stub is None:  # made once per channel: a stub builds every method's callable
                stub = self._stubs[(stub_class, channel)] = stub_class(channel)
            return await getattr(stub, method)(
                request, metadata=self.metadata(token), timeout=timeout
            )

        return await self.at_leader(once, idempotent=idempotent)

    async def at_leader(
        self, attempt: Callable[[grpc.aio.Channel], Awaitable[T]], *, idempotent: bool = False
    ) -> T:
        """Runs `attempt` on the current channel, following NotLeader (and, if
        `idempotent`, an unreachable server) to other addresses for up to
        `leader_wait` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.leader_wait
        backoff = Backoff(initial=0.1, maximum=1.0)
        while True:
            try:
                return await attempt(self.channel())
            except grpc.RpcError as exc:
                error: AssignCoreError = from_rpc_error(exc)
            if isinstance(error, NotLeader):
                if self.follow(error):
                    continue  # straight to the leader it named
            elif not (isinstance(error, Unavailable) and idempotent):
                raise error
            elif len(self.addresses) > 1:
                self.rotate()
            delay = backoff.delay()
            if loop.time() + delay > deadline:
                raise error
            await asyncio.sleep(delay)


def without_retries(config: dict[str, Any]) -> dict[str, Any]:
    """`config` without its retry policies (the connection retries by itself)."""
    out = dict(config)
    out["methodConfig"] = [
        {k: v for k, v in method.items() if k != "retryPolicy"}
        for method in config.get("methodConfig", [])
    ]
    return out


def load_client_config(path: str | os.PathLike[str]) -> dict[str, str]:
    """The `[client]` table of a TOML file (`server`, `token` or `token_file`, `tls_ca`,
    `tls_cert`, `tls_key`, `tls_server_name`; paths relative to the file). A server's
    own TOML works too: without `[client]`, its `[server] listen` address is used."""
    path = Path(path)
    with path.open("rb") as f:
        data = tomllib.load(f)
    client = data.get("client")
    if client is None:
        listen = data.get("server", {}).get("listen")
        if not listen:
            return {}
        host, _, port = str(listen).rpartition(":")
        if host in ("0.0.0.0", "[::]", "::", ""):
            host = "127.0.0.1"
        return {"server": f"{host}:{port}"}
    if not isinstance(client, dict):
        raise ValueError(f"{path}: [client] must be a table")
    known = {"server", "token", "token_file", "tls_ca", "tls_cert", "tls_key", "tls_server_name"}
    unknown = set(client) - known
    if unknown:
        raise ValueError(f"{path}: unknown [client] keys {sorted(unknown)}")
    out = {k: str(v) for k, v in client.items()}
    for key in ("token_file", "tls_ca", "tls_cert", "tls_key"):
        if key in out:
            out[key] = str(path.parent / out[key])
    if "token_file" in out:
        out["token"] = Path(out.pop("token_file")).read_text().strip()
    return out
