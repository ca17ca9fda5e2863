"""A hand-driven HTTP/2 client for transport tests: streams that send headers and half
a message, readers that never open their flow-control window. Blocking sockets; call it
through `asyncio.to_thread` when the server runs on the test's own loop."""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.settings


@dataclass
class StreamState:
    status: int | None = None  # grpc-status, once the stream ended with one
    message: str = ""
    reset: bool = False
    data: int = 0  # bytes of DATA received
    frames: list[bytes] = field(default_factory=list)

    @property
    def ended(self) -> bool:
        return self.status is not None or self.reset


def grpc_frame(body: bytes, claimed: int | None = None) -> bytes:
    """A length-prefixed gRPC message; `claimed` lies about the length."""
    return b"\x00" + struct.pack(">I", len(body) if claimed is None else claimed) + body


class RawConnection:
    def __init__(self, port: int, window: int | None = None, ack_data: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.settimeout(0.2)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        if window is not None:
            self.conn.local_settings = h2.settings.Settings(
                client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
            )
        self.ack_data = ack_data
        self.conn.initiate_connection()
        self.streams: dict[int, StreamState] = {}
        self.closed = False
        self.settings_received = False
        self._flush()

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def open(
        self,
        path: str,
        token: str | None = None,
        body: bytes = b"",
        end_stream: bool = False,
    ) -> int:
        """Sends HEADERS (with a bearer token if given) and `body` as DATA."""
        sid = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "127.0.0.1"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        if token is not None:
            headers.append(("authorization", f"Bearer {token}"))
        self.conn.send_headers(sid, headers, end_stream=not body and end_stream)
        if body:
            self.conn.send_data(sid, body, end_stream=end_stream)
        self.streams[sid] = StreamState()
        self._flush()
        return sid

    def max_concurrent_streams(self) -> int:
        return int(self.conn.remote_settings.max_concurrent_streams)

    def open_window(self, sid: int, amount: int = 1 << 20) -> None:
        self.conn.increment_flow_control_window(amount)
        self.conn.increment_flow_control_window(amount, stream_id=sid)
        self._flush()

    def pump(self, seconds: float) -> None:
        """Reads frames for up to `seconds` (answering pings and settings)."""
        until = time.monotonic() + seconds
        while time.monotonic() < until and not self.closed:
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                self.closed = True
                return
            if not data:
                self.closed = True
                return
            for event in self.conn.receive_data(data):
                self._on(event)
            self._flush()

    def pump_until(self, done, seconds: float = 20.0) -> bool:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            if done():
                return True
            self.pump(0.2)
            if self.closed:
                return done()
        return done()

    def wait_for_settings(self) -> None:
        """Until the server's SETTINGS arrived (h2 assumes defaults before that)."""
        if not self.pump_until(lambda: self.settings_received, 10):
            raise AssertionError("the server sent no SETTINGS")

    def _on(self, event: object) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings_received = True
        sid = getattr(event, "stream_id", 0)
        state = self.streams.get(sid)
        if state is None:
            return
        if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            for key, value in event.headers:
                if key == "grpc-status":
                    state.status = int(value)
                elif key == "grpc-message":
                    state.message = value
        elif isinstance(event, h2.events.DataReceived):
            state.data += len(event.data)
            state.frames.append(event.data)
            if self.ack_data:
                self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
        elif isinstance(event, h2.events.StreamReset):
            state.reset = True

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self._flush()
        except Exception:  # the server may have gone already
            pass
        self.sock.close()
