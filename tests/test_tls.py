"""TLS and mutual TLS on the gRPC port, with certificates made here (cryptography)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from assigncore.v1 import admin_service_pb2 as apb
from assigncore.v1 import admin_service_pb2_grpc as agrpc
from assigncore_server import config
from assigncore_server.app import create_server

from .server_harness import ADMIN, DESK, auth, free_port

NOW = datetime.datetime.now(datetime.UTC)


class Issuer:
    """A certificate authority; `issue` makes a key and a certificate it signed."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            self._builder(self.name, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def _builder(self, subject: x509.Name, public_key) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(minutes=5))
            .not_valid_after(NOW + datetime.timedelta(days=1))
        )

    def issue(self, common_name: str, server: bool = False) -> tuple[bytes, bytes]:
        """(key PEM, certificate PEM)."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = self._builder(subject, key.public_key())
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return key_pem, cert.public_bytes(serialization.Encoding.PEM)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict:
    """A server CA and its server certificate; a client CA, a client it signed, and a
    stranger signed by another CA."""
    folder = tmp_path_factory.mktemp("pki")
    server_ca, client_ca, other_ca = Issuer("server CA"), Issuer("client CA"), Issuer("other")
    files = {"ca.pem": server_ca.pem, "clients.pem": client_ca.pem}
    files["server.key"], files["server.pem"] = server_ca.issue("localhost", server=True)
    files["client.key"], files["client.pem"] = client_ca.issue("ops-console")
    files["stranger.key"], files["stranger.pem"] = other_ca.issue("stranger")
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {"dir": folder, **files}


def tls_desk(folder: Path, client_ca: bool) -> str:
    extra = '\nclient_ca = "clients.pem"' if client_ca else ""
    return DESK + f'\n[tls]\ncert = "server.pem"\nkey = "server.key"{extra}\n'


async def serve(pki, client_ca: bool):
    path = pki["dir"] / "desk.toml"
    path.write_text(tls_desk(pki["dir"], client_ca))
    settings = config.parse(path.read_text(), str(path), path)
    settings.storage_mode = "memory"
    server, port = await create_server(settings)
    await server.start()
    return server, port


async def health(channel: grpc.aio.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    return reply.status


async def test_tls_serves_clients_that_trust_its_ca_and_refuses_plaintext(pki):
    server, port = await serve(pki, client_ca=False)
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=pki["ca.pem"])
        async with grpc.aio.secure_channel(f"localhost:{port}", creds) as channel:
            assert await health(channel) == health_pb2.HealthCheckResponse.SERVING
            rep = await agrpc.AdminServiceStub(channel).GetRep(
                apb.GetRepRequest(rep_id="ann"), metadata=auth(ADMIN)
            )
            assert rep.rep.display_name == "Ann"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await health(plain)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0.1)


async def test_mutual_tls_requires_a_client_certificate_from_the_client_ca(pki):
    server, port = await serve(pki, client_ca=True)
    try:
        target = f"localhost:{port}"
        good = grpc.ssl_channel_credentials(pki["ca.pem"], pki["client.key"], pki["client.pem"])
        async with grpc.aio.secure_channel(target, good) as channel:
            assert await health(channel) == health_pb2.HealthCheckResponse.SERVING
            admin = agrpc.AdminServiceStub(channel)
            await admin.IssueAccessToken(
                apb.IssueAccessTokenRequest(kind=apb.PRINCIPAL_KIND_INTAKE), metadata=auth(ADMIN)
            )
            entries = await admin.ListAuditEntries(
                apb.ListAuditEntriesRequest(), metadata=auth(ADMIN)
            )
            # the audit trail says which certificate the admin came with
            assert any("CN=ops-console" in e.peer for e in entries.entries)
        for creds in (
            grpc.ssl_channel_credentials(pki["ca.pem"]),  # no client certificate
            grpc.ssl_channel_credentials(pki["ca.pem"], pki["stranger.key"], pki["stranger.pem"]),
        ):
            async with grpc.aio.secure_channel(target, creds) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await health(channel)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0.1)


async def test_tls_files_are_checked_at_start(pki):
    async def start(tls: str) -> str:
        path = pki["dir"] / "bad.toml"
        path.write_text(f"[storage]\nmode = 'memory'\n[tls]\n{tls}\n")
        with pytest.raises(config.ConfigError) as err:
            await create_server(config.parse(path.read_text(), str(path), path))
        return str(err.value)

    assert "needs both cert and key" in await start('cert = "server.pem"')
    assert "cannot read" in await start('cert = "missing.pem"\nkey = "server.key"')
    wrong_key = 'cert = "server.pem"\nkey = "client.key"'
    assert "not a PEM certificate chain" in await start(wrong_key)
    not_a_ca = 'cert = "server.pem"\nkey = "server.key"\nclient_ca = "server.key"'
    assert "client_ca" in await start(not_a_ca)
    assert "unknown [tls] keys" in await start('cert = "a"\nkey = "b"\nciphers = "c"')


def test_grpc_core_lines_join_the_json_log(pki, tmp_path):
    """gRPC's C core writes a failed handshake to descriptor 2 itself: with JSON logs
    it arrives as a JSON record (logger "grpc"), and stderr stays JSON lines."""
    import json
    import socket
    import subprocess
    import sys
    import time

    port = free_port()
    path = pki["dir"] / "json-desk.toml"
    desk = tls_desk(pki["dir"], client_ca=False).replace(
        'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"'
    )
    path.write_text(desk + '\n[storage]\nmode = "memory"\n[logging]\nformat = "json"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "assigncore_server.cli", "serve", "--config", str(path)],
        stderr=subprocess.PIPE,
        text=True,
        env={**__import__("os").environ, "GRPC_VERBOSITY": "INFO", "PYTHONFAULTHANDLER": "1"},
    )
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as plain:
                    plain.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00" * 64)
                    plain.recv(100)
                break
            except OSError:
                time.sleep(0.2)
        time.sleep(1.0)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    lines = [line for line in err.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is JSON
    assert any(r["logger"] == "grpc" for r in records), lines[:20]


async def test_the_python_client_over_mutual_tls_and_its_tls_settings(pki):
    """The client's Tls: the server CA and the client's certificate and key from files
    (a server name for an IP address); a console and a portal work over mutual TLS, and
    a client without its certificate is refused."""
    from assigncore.client import Connection, Console, OfferMade, Portal, Tls, Unavailable
    from assigncore.v1 import common_pb2 as pb

    from .server_harness import INTAKE, rep_token

    server, port = await serve(pki, client_ca=True)
    d = pki["dir"]
    tls = Tls.from_files(d / "ca.pem", d / "client.pem", d / "client.key", "localhost")
    try:
        conn = Connection(f"127.0.0.1:{port}", token=rep_token("ann"), tls=tls)
        async with conn, Console(conn) as ann:
            portal = Portal(Connection(f"127.0.0.1:{port}", token=INTAKE, tls=tls))
            started = await portal.start(pb.Customer(name="Carol"), issue_type="general-help")
            async for event in ann:
                if isinstance(event, OfferMade):
                    assert event.session.id == started.session.id
                    assert (await ann.answer(event.offer_id)).owner_rep_id == "ann"
                    break
            await portal.connection.close()
        bare = Tls.from_files(d / "ca.pem", server_name="localhost")  # no client certificate
        async with Connection(f"127.0.0.1:{port}", token=INTAKE, tls=bare, leader_wait=1) as c:
            with pytest.raises(Unavailable):
                await Portal(c, attempts=1).status("ses_any")
        with pytest.raises(ValueError, match="both"):
            Tls.from_files(d / "ca.pem", cert=d / "client.pem")
    finally:
        await server.stop(0.1)
